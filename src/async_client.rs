//! The async client a gateway uses: a pool of authenticated connections that
//! packs concurrent calls into BATCH frames, pipelines them, reconnects with
//! backoff, and retries booking commands (they carry idempotency keys: the
//! engine answers a retry of a person's last command with its first answer,
//! so it never books twice; a retry that arrives after a later command for
//! the same person, from another connection say, is a new command).
//!
//! ```text
//! call ─┐                         ┌─ one connection task per pooled connection:
//! call ─┼─ mpsc (bounded) ───────►│  drain waiting calls (up to BATCH_COMMANDS_MAX)
//! call ─┘                         │  → one RESERVE/… frame, or one BATCH frame
//!                                 │  replies matched by request id → each call's oneshot
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::inventory::SlotIndex;
use crate::protocol::body::{batch_flag, put_batch_header_with, put_batch_item, CompactAnswers, PersonQuery};
use crate::protocol::frame::flag;
use crate::protocol::handshake::{ClientHandshake, ClientHandshakeError, Role};
use crate::protocol::{
    code, decode_frame, encode_frame, opcode, Answer, FrameError, BATCH_COMMANDS_MAX, FRAME_BODY_BYTES_MAX,
    FRAME_HEADER_BYTES,
};
use crate::state::{BookingRequest, Refusal};

/// Calls waiting for a connection, per connection: beyond it, callers wait (backpressure).
pub const CALLS_QUEUED_MAX: usize = 65_536;
/// How often a booking command is tried before its error is returned.
pub const ATTEMPTS_MAX: u32 = 5;
/// How long a call waits for its reply before it is failed (and retried), and
/// how long connecting and the handshake may take: as for the blocking client.
pub use crate::client::{CALL_TIMEOUT, CONNECT_TIMEOUT};
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How an `AsyncClient` connects, waits and retries. `Default` is what
/// `AsyncClient::connect` uses, with its number of connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncClientOptions {
    /// Connections in the pool, each with its own task (at least 1).
    pub connections: usize,
    /// How long connecting and the handshake may take.
    pub connect_timeout: Duration,
    /// How long a call waits to be queued, and then for its reply, before it
    /// fails as `TimedOut` (and is retried).
    pub call_timeout: Duration,
    /// How often a call is tried while its error is transient.
    pub attempts_max: u32,
}

impl Default for AsyncClientOptions {
    fn default() -> Self {
        AsyncClientOptions {
            connections: 1,
            connect_timeout: CONNECT_TIMEOUT,
            call_timeout: CALL_TIMEOUT,
            attempts_max: ATTEMPTS_MAX,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsyncClientError {
    #[error("the engine could not be reached: {0}")]
    Unreachable(String),
    #[error("the connection closed before the reply came")]
    Closed,
    #[error("the engine refused the request whole: {}", crate::client::refused_whole(.0))]
    Refused(Answer),
    #[error("authentication failed: the engine does not accept this key")]
    Unauthenticated,
    #[error("the engine's reply does not read: {0}")]
    BadReply(String),
    #[error("no reply within {0:?}")]
    TimedOut(Duration),
    /// Checked before queueing, so that one bad call never fails the batch
    /// frame it would have shared with others.
    #[error("the request is not valid and was not sent: {0}")]
    Invalid(String),
}

impl AsyncClientError {
    /// Worth another attempt with the same idempotency key.
    fn retryable(&self) -> bool {
        match self {
            // Booking commands carry idempotency keys: after a timeout, a retry
            // returns the first answer if the first attempt was applied.
            AsyncClientError::Unreachable(_) | AsyncClientError::Closed | AsyncClientError::TimedOut(_) => true,
            AsyncClientError::Refused(answer) => matches!(
                answer.code,
                code::OVERLOADED
                    | code::TOO_MANY_IN_FLIGHT
                    | code::SHUTTING_DOWN
                    | code::TOO_MANY_CONNECTIONS
                    | code::STARTING
            ),
            _ => false,
        }
    }
}

/// A command as it goes into a frame: opcode and fixed-size body.
#[derive(Clone, Copy)]
struct Call {
    opcode: u8,
    body: [u8; BookingRequest::BYTES],
    body_bytes: usize,
}

struct Pending {
    call: Call,
    reply: oneshot::Sender<Result<Answer, AsyncClientError>>,
}

/// Where to connect and with which key.
#[derive(Clone)]
struct Credentials {
    address: SocketAddr,
    role: Role,
    key_id: u32,
    key: Arc<Vec<u8>>,
    connect_timeout: Duration,
}

/// A pool of connections; clone it freely (it is a handle).
#[derive(Clone)]
pub struct AsyncClient {
    queues: Arc<Vec<mpsc::Sender<Pending>>>,
    next: Arc<AtomicUsize>,
    options: AsyncClientOptions,
}

impl AsyncClient {
    /// Opens `connections` connections (each authenticated) and their tasks
    /// on the current tokio runtime. Fails if the first connection fails.
    pub async fn connect(
        address: SocketAddr,
        role: Role,
        key_id: u32,
        key: &[u8],
        connections: usize,
    ) -> Result<AsyncClient, AsyncClientError> {
        let options = AsyncClientOptions { connections, ..AsyncClientOptions::default() };
        Self::connect_with(address, role, key_id, key, options).await
    }

    /// `connect` with every option named.
    pub async fn connect_with(
        address: SocketAddr,
        role: Role,
        key_id: u32,
        key: &[u8],
        options: AsyncClientOptions,
    ) -> Result<AsyncClient, AsyncClientError> {
        let connect_timeout = options.connect_timeout;
        let credentials = Credentials { address, role, key_id, key: Arc::new(key.to_vec()), connect_timeout };
        let mut queues = Vec::new();
        for _ in 0..options.connections.max(1) {
            let stream = open(&credentials).await?;
            let (sender, receiver) = mpsc::channel(CALLS_QUEUED_MAX);
            tokio::spawn(connection_task(credentials.clone(), Some(stream), receiver));
            queues.push(sender);
        }
        Ok(AsyncClient { queues: Arc::new(queues), next: Arc::new(AtomicUsize::new(0)), options })
    }

    async fn call_once(&self, call: Call) -> Result<Answer, AsyncClientError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        let (reply, answer) = oneshot::channel();
        let timeout = self.options.call_timeout;
        let queued = tokio::time::timeout(timeout, self.queues[index].send(Pending { call, reply }));
        queued.await.map_err(|_| AsyncClientError::TimedOut(timeout))?.map_err(|_| AsyncClientError::Closed)?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(answer) => answer.map_err(|_| AsyncClientError::Closed)?,
            Err(_) => Err(AsyncClientError::TimedOut(timeout)),
        }
    }

    /// Sends a call, retrying with backoff while the error is transient.
    async fn call(&self, call: Call) -> Result<Answer, AsyncClientError> {
        let mut backoff = BACKOFF_FIRST;
        let mut attempt = 1;
        loop {
            match self.call_once(call).await {
                Err(error) if error.retryable() && attempt < self.options.attempts_max => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn booking_call(opcode: u8, booking: &BookingRequest) -> Result<Call, AsyncClientError> {
        let body = booking.checked_bytes().map_err(|e| AsyncClientError::Invalid(e.to_string()))?;
        Ok(Call { opcode, body, body_bytes: BookingRequest::BYTES })
    }

    async fn slot_command(
        &self,
        opcode: u8,
        booking: &BookingRequest,
    ) -> Result<Result<SlotIndex, Refusal>, AsyncClientError> {
        let answer = self.call(Self::booking_call(opcode, booking)?).await?;
        Ok(answer.result().map_err(AsyncClientError::Refused)?.map(SlotIndex))
    }

    pub async fn reserve(&self, booking: &BookingRequest) -> Result<Result<SlotIndex, Refusal>, AsyncClientError> {
        self.slot_command(opcode::RESERVE, booking).await
    }

    pub async fn change(&self, booking: &BookingRequest) -> Result<Result<SlotIndex, Refusal>, AsyncClientError> {
        self.slot_command(opcode::CHANGE, booking).await
    }

    pub async fn cancel(&self, booking: &BookingRequest) -> Result<Result<SlotIndex, Refusal>, AsyncClientError> {
        self.slot_command(opcode::CANCEL, booking).await
    }

    pub async fn reservation(
        &self,
        query: &PersonQuery,
    ) -> Result<Result<Option<SlotIndex>, Refusal>, AsyncClientError> {
        let mut bytes = Vec::new();
        query.encode(&mut bytes);
        let mut body = [0; BookingRequest::BYTES];
        body[..bytes.len()].copy_from_slice(&bytes);
        let answer = self.call(Call { opcode: opcode::GET_RESERVATION, body, body_bytes: bytes.len() }).await?;
        Ok(answer.result().map_err(AsyncClientError::Refused)?.map(|_| answer.held_slot()))
    }
}

/// Connects and authenticates one connection, within the connect timeout.
async fn open(credentials: &Credentials) -> Result<TcpStream, AsyncClientError> {
    let timeout = credentials.connect_timeout;
    tokio::time::timeout(timeout, open_now(credentials)).await.unwrap_or(Err(AsyncClientError::TimedOut(timeout)))
}

async fn open_now(credentials: &Credentials) -> Result<TcpStream, AsyncClientError> {
    let unreachable = |e: std::io::Error| AsyncClientError::Unreachable(e.to_string());
    let mut stream = TcpStream::connect(credentials.address).await.map_err(unreachable)?;
    stream.set_nodelay(true).map_err(unreachable)?;
    let handshake = ClientHandshake::new(credentials.role, credentials.key_id, &credentials.key)
        .map_err(|e| AsyncClientError::Unreachable(e.to_string()))?;
    let mut buffer = Vec::new();
    let mut frame = Vec::new();
    handshake.hello_frame(&mut frame);
    stream.write_all(&frame).await.map_err(unreachable)?;
    let (opcode_seen, body) = read_frame(&mut stream, &mut buffer).await?;
    frame.clear();
    // A refusal (the connection cap, a shutdown) says which, so the caller can retry.
    handshake.proof_frame(opcode_seen, &body, &mut frame)?;
    stream.write_all(&frame).await.map_err(unreachable)?;
    let (opcode_seen, body) = read_frame(&mut stream, &mut buffer).await?;
    ClientHandshake::welcomed(opcode_seen, &body)?;
    Ok(stream)
}

impl From<ClientHandshakeError> for AsyncClientError {
    fn from(error: ClientHandshakeError) -> AsyncClientError {
        match error {
            ClientHandshakeError::Refused(answer) => AsyncClientError::Refused(answer),
            ClientHandshakeError::Unauthenticated => AsyncClientError::Unauthenticated,
            ClientHandshakeError::BadReply(reason) => AsyncClientError::BadReply(reason),
        }
    }
}

/// Reads one whole frame (the handshake's), returning its opcode and body.
async fn read_frame(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<(u8, Vec<u8>), AsyncClientError> {
    loop {
        match decode_frame(buffer, FRAME_BODY_BYTES_MAX) {
            Ok((header, body)) => {
                let result = (header.opcode, body.to_vec());
                buffer.drain(..FRAME_HEADER_BYTES + result.1.len());
                return Ok(result);
            }
            Err(FrameError::Incomplete { .. }) => {}
            Err(error) => return Err(AsyncClientError::BadReply(error.to_string())),
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(AsyncClientError::Closed),
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
}

type InFlight = Arc<Mutex<HashMap<u64, Vec<Awaited>>>>;

/// A call sent and not yet answered: what it asked (its opcode, and for
/// RESERVE and CHANGE its slot, which a compact batch answer may leave out)
/// and where its answer goes.
struct Awaited {
    asked: (u8, u32),
    reply: oneshot::Sender<Result<Answer, AsyncClientError>>,
}

impl Call {
    /// What a compact batch answer needs to rebuild this call's answer.
    fn asked(&self) -> (u8, u32) {
        crate::protocol::body::compact_asked(self.opcode, &self.body[..self.body_bytes])
    }
}

/// Runs one pooled connection: packs waiting calls into frames, and
/// reconnects (failing the calls in flight, which their callers retry).
async fn connection_task(credentials: Credentials, mut stream: Option<TcpStream>, mut calls: mpsc::Receiver<Pending>) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let current = match stream.take() {
            Some(stream) => stream,
            None => match open(&credentials).await {
                Ok(stream) => {
                    backoff = BACKOFF_FIRST;
                    stream
                }
                Err(error) => {
                    // Fail what waits, so callers see the outage and may retry.
                    while let Ok(pending) = calls.try_recv() {
                        let _ = pending.reply.send(Err(error.clone()));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    if calls.is_closed() {
                        return;
                    }
                    continue;
                }
            },
        };
        let in_flight: InFlight = Arc::new(Mutex::new(HashMap::new()));
        let (read, mut write) = current.into_split();
        let mut reader = tokio::spawn(read_replies(read, Arc::clone(&in_flight)));
        // Whichever ends first: the writer (client dropped, or a write failed)
        // or the reader (the engine closed the connection).
        let stopped = tokio::select! {
            stopped = write_calls(&mut write, &mut calls, &in_flight) => stopped,
            _ = &mut reader => false,
        };
        reader.abort();
        for (_, replies) in in_flight.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            for awaited in replies {
                let _ = awaited.reply.send(Err(AsyncClientError::Closed));
            }
        }
        if stopped {
            return;
        }
    }
}

/// Writes frames until the connection fails (`false`) or the client is dropped (`true`).
async fn write_calls(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    calls: &mut mpsc::Receiver<Pending>,
    in_flight: &InFlight,
) -> bool {
    // The handshake used the first ids.
    let mut request_id = crate::protocol::handshake::PROOF_REQUEST_ID;
    let mut frame = Vec::new();
    let mut batch = Vec::with_capacity(usize::from(BATCH_COMMANDS_MAX));
    loop {
        let Some(first) = calls.recv().await else {
            return true;
        };
        batch.push(first);
        while batch.len() < usize::from(BATCH_COMMANDS_MAX) {
            match calls.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        request_id += 1;
        frame.clear();
        if let [single] = batch.as_slice() {
            let call = single.call;
            encode_frame(&mut frame, call.opcode, 0, request_id, |out| {
                out.extend_from_slice(&call.body[..call.body_bytes])
            });
        } else {
            // Compact answers: a byte a call, the whole answer where a byte is not enough.
            encode_frame(&mut frame, opcode::BATCH, 0, request_id, |out| {
                put_batch_header_with(out, batch.len() as u16, batch_flag::COMPACT_ANSWERS);
                for pending in &batch {
                    let call = pending.call;
                    put_batch_item(out, call.opcode, |out| out.extend_from_slice(&call.body[..call.body_bytes]));
                }
            });
        }
        let replies =
            batch.drain(..).map(|pending| Awaited { asked: pending.call.asked(), reply: pending.reply }).collect();
        in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(request_id, replies);
        if write.write_all(&frame).await.is_err() {
            return false;
        }
    }
}

/// Reads reply frames and hands each answer to its caller.
async fn read_replies(mut read: tokio::net::tcp::OwnedReadHalf, in_flight: InFlight) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        loop {
            let (header, body) = match decode_frame(&buffer, FRAME_BODY_BYTES_MAX) {
                Ok(frame) => frame,
                Err(FrameError::Incomplete { .. }) => break,
                Err(_) => return,
            };
            let consumed = FRAME_HEADER_BYTES + body.len();
            let replies = in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&header.request_id);
            if let Some(replies) = replies {
                deliver(header.opcode, header.flags, body, replies);
            }
            buffer.drain(..consumed);
        }
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(count) => buffer.extend_from_slice(&chunk[..count]),
        }
    }
}

fn deliver(opcode_seen: u8, flags: u16, body: &[u8], replies: Vec<Awaited>) {
    let bad = |reason: String| AsyncClientError::BadReply(reason);
    let answers: Vec<Result<Answer, AsyncClientError>> = if flags & flag::REPLY == 0 {
        vec![Err(bad("a frame without the REPLY flag".into())); replies.len()]
    } else if opcode_seen == opcode::ERROR {
        let answer = Answer::decode(body).map(|(a, _)| a);
        vec![answer.map_err(|e| bad(e.to_string())).and_then(|a| Err(AsyncClientError::Refused(a))); replies.len()]
    } else if opcode_seen == opcode::BATCH {
        let asked = replies.iter().map(|awaited| awaited.asked);
        match CompactAnswers::parse(body).and_then(|answers| answers.answers(asked)) {
            Ok(answers) => answers.into_iter().map(Ok).collect(),
            Err(error) => {
                let reason = format!("a batch reply that does not match its batch: {error}");
                vec![Err(bad(reason)); replies.len()]
            }
        }
    } else {
        vec![Answer::decode(body).map(|(a, _)| a).map_err(|e| bad(e.to_string())); replies.len()]
    };
    for (awaited, answer) in replies.into_iter().zip(answers) {
        let _ = awaited.reply.send(answer);
    }
}
