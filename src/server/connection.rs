//! One client connection: the handshake, then a reader that decodes frames
//! into jobs for the engine thread, and a writer that sends what the engine
//! thread (or the reader, for refusals) puts into the connection's outbox.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::server::reactor::{ReadBytes, WriteBytes};

use crate::protocol::body::{BatchItems, BodyError, CapacityAddition, PersonQuery, RegionQuery, SiteQuery};
use crate::protocol::frame::{flag, PROTOCOL_VERSION};
use crate::protocol::handshake::{nonce, verify_proof, Challenge, Hello, Role, PROOF_BYTES};
use crate::protocol::{code, decode_frame, encode_frame, opcode, Answer, FrameError, FrameHeader, BATCH_COMMANDS_MAX};
use crate::server::apply::{AnswerForm, Command, Job, Work};
use crate::server::{handover, Shared, REPLY_BYTES_SHARE};
use crate::state::BookingRequest;

/// Bytes waiting to be written to one connection, and its requests in flight.
pub struct Outbox {
    bytes: Mutex<Vec<u8>>,
    /// Bytes queued and not yet written to the socket: those waiting in
    /// `bytes` and those the writer took and is writing (`OUTBOX_BYTES_MAX`).
    unsent: AtomicUsize,
    /// Every connection's `unsent` together (`Shared::reply_bytes_waiting`),
    /// moved with this one's.
    all_unsent: Arc<AtomicUsize>,
    ready: tokio::sync::Notify,
    in_flight: AtomicU32,
    closed: AtomicBool,
}

impl Outbox {
    /// An outbox whose waiting bytes count in `all_unsent` too.
    pub(crate) fn new(all_unsent: Arc<AtomicUsize>) -> Outbox {
        Outbox {
            bytes: Mutex::new(Vec::new()),
            unsent: AtomicUsize::new(0),
            all_unsent,
            ready: tokio::sync::Notify::new(),
            in_flight: AtomicU32::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// Queues a frame for writing (from any thread) and wakes the writer.
    pub fn push(&self, frame: &[u8]) {
        self.push_quietly(frame);
        self.wake();
    }

    /// Queues a frame without waking the writer: the engine thread queues a
    /// run of replies, then wakes each writer once (`wake`).
    pub fn push_quietly(&self, frame: &[u8]) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        // Counted before the writer can take the bytes (under the lock it
        // takes them with): its subtraction never comes first.
        self.unsent.fetch_add(frame.len(), Ordering::AcqRel);
        self.all_unsent.fetch_add(frame.len(), Ordering::AcqRel);
        bytes.extend_from_slice(frame);
    }

    /// `length` bytes were written to the socket.
    fn written(&self, length: usize) {
        self.unsent.fetch_sub(length, Ordering::AcqRel);
        self.all_unsent.fetch_sub(length, Ordering::AcqRel);
    }

    pub fn wake(&self) {
        self.ready.notify_one();
    }

    /// A request of this connection carrying `commands` commands has its reply.
    pub fn finish_request(&self, commands: u32) {
        self.in_flight.fetch_sub(commands, Ordering::AcqRel);
    }

    /// Bytes queued and not yet written, those being written included.
    fn unsent_bytes(&self) -> usize {
        self.unsent.load(Ordering::Acquire)
    }

    fn take(&self, into: &mut Vec<u8>) {
        into.clear();
        std::mem::swap(&mut *self.bytes.lock().unwrap_or_else(|p| p.into_inner()), into);
    }
}

impl Drop for Outbox {
    /// Bytes never written (the connection closed with replies waiting) no
    /// longer wait: the total of every connection lets them go.
    fn drop(&mut self) {
        self.all_unsent.fetch_sub(*self.unsent.get_mut(), Ordering::AcqRel);
    }
}

/// How long a peer has to complete the handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The largest body before the handshake completes (HELLO is 40 bytes, PROOF 32).
const HANDSHAKE_BODY_BYTES_MAX: u32 = 64;
/// Reply bytes a connection may have waiting to be written (queued, or being
/// written to a peer that does not read) before its reader pauses.
const OUTBOX_BYTES_MAX: usize = 4 << 20;
/// The writer's buffer, and the most it keeps between writes.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
const WRITE_BUFFER_KEPT_BYTES_MAX: usize = 1 << 20;

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The peer closed, or the server is shutting down.
    Closed,
    /// A protocol error was answered with an ERROR frame; the connection is closed.
    Refused,
}

/// Refuses a request (or the connection: request id 0) whole with an ERROR
/// frame, and counts the refusal by its code for STATS.
fn refuse(shared: &Shared, outbox: &Outbox, request_id: u64, answer: Answer) {
    shared.counters.protocol_refusals_by_code.add(answer.code, 1);
    outbox.push(&error_frame(request_id, answer));
}

/// An ERROR frame answering `request_id` (0: the connection) with `answer`.
pub(super) fn error_frame(request_id: u64, answer: Answer) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_frame(&mut frame, opcode::ERROR, flag::REPLY, request_id, |out| answer.encode(out));
    frame
}

fn reply_frame(opcode: u8, request_id: u64, write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_frame(&mut frame, opcode, flag::REPLY, request_id, write);
    frame
}

/// Reads frames from a socket into a buffer.
struct FrameReader<R> {
    read: R,
    shared: Arc<Shared>,
    buffer: Vec<u8>,
    start: usize,
    /// When the first bytes of the frame being read arrived (`None` while
    /// no frame is begun): the frame completion timeout runs from there,
    /// not from each partial read.
    frame_began: Option<tokio::time::Instant>,
}

impl<R: ReadBytes> FrameReader<R> {
    /// The next frame's header and where its body lies in the buffer
    /// (`body`), or why there is none. The body stays in place until the
    /// next call: decoded where it lies, never copied out.
    async fn next(&mut self, body_max: u32) -> Result<Option<(FrameHeader, Range<usize>)>, FrameError> {
        loop {
            match decode_frame(&self.buffer[self.start..], body_max) {
                Ok((header, body)) => {
                    let body_start = self.start + crate::protocol::FRAME_HEADER_BYTES;
                    let body = body_start..body_start + body.len();
                    self.start = body.end;
                    self.frame_began = None;
                    return Ok(Some((header, body)));
                }
                Err(FrameError::Incomplete { .. }) => {}
                Err(error) => return Err(error),
            }
            if self.start > 0 {
                self.buffer.drain(..self.start);
                self.start = 0;
            }
            // At shutdown, stop waiting for a peer that sends nothing.
            let stop = self.shared.stop_readers.notified();
            tokio::pin!(stop);
            stop.as_mut().enable();
            if self.shared.stopping.load(Ordering::Acquire) {
                return Ok(None);
            }
            // An idle connection may wait for ever (a gateway's pool keeps
            // them); one that began a frame has `frame_completion_timeout` to
            // finish it, so a stalled peer does not hold its buffer for ever.
            let started_a_frame = !self.buffer.is_empty();
            let timeout = self.shared.config.frame_completion_timeout;
            let began = match (started_a_frame, self.frame_began) {
                (false, _) => None,
                (true, None) => Some(tokio::time::Instant::now()),
                (true, began) => began,
            };
            self.frame_began = began;
            let deadline = tokio::time::sleep_until(began.unwrap_or_else(tokio::time::Instant::now) + timeout);
            tokio::pin!(deadline);
            tokio::select! {
                _ = stop => return Ok(None),
                _ = &mut deadline, if started_a_frame => {
                    return Err(FrameError::Stalled { seconds: timeout.as_secs() })
                }
                read = self.read.read_into(&mut self.buffer) => match read {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(_) => {}
                },
            }
        }
    }
}

/// Serves one connection until it closes, then releases its slot. Runs on a
/// single-threaded reactor (tokio's or tokio-uring's), inside a `LocalSet`.
pub(crate) async fn serve<R: ReadBytes + 'static, W: WriteBytes + 'static>(read: R, write: W, shared: Arc<Shared>) {
    let outbox = Arc::new(Outbox::new(Arc::clone(&shared.reply_bytes_waiting)));
    let writer = tokio::task::spawn_local(write_loop(write, Arc::clone(&outbox)));
    let mut reader = FrameReader {
        read,
        shared: Arc::clone(&shared),
        buffer: Vec::with_capacity(64 * 1024),
        start: 0,
        frame_began: None,
    };
    // A peer gets HANDSHAKE_TIMEOUT to prove its key: idle sockets do not hold slots.
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut reader, &outbox, &shared)).await;
    let end = match handshake {
        Ok(Ok(Some(operator_id))) => read_loop(&mut reader, &outbox, &shared, operator_id).await,
        Ok(Ok(None)) => End::Closed,
        Ok(Err(end)) => end,
        Err(_) => {
            refuse(&shared, &outbox, 0, Answer::protocol(code::UNAUTHENTICATED, 0, 0));
            End::Refused
        }
    };
    tracing::debug!(?end, "connection ends");
    // Requests already queued are answered (at shutdown too) before the writer stops.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while outbox.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    // A peer still talking to a stopping engine is told why the connection
    // ends, after its answers: frames it sent that were not read are not
    // answered, and may be sent again after the restart (same idempotency keys).
    // Only once every taken request is answered: the notice must be the last
    // frame, and the connection closes after it.
    let answered = outbox.in_flight.load(Ordering::Acquire) == 0;
    if matches!(end, End::Closed)
        && answered
        && shared.stopping.load(Ordering::Acquire)
        && !outbox.closed.load(Ordering::Acquire)
    {
        outbox.push(&error_frame(0, Answer::protocol(code::SHUTTING_DOWN, 0, 0)));
    }
    // Let the writer send what is queued (an ERROR frame, replies), then stop.
    outbox.closed.store(true, Ordering::Release);
    outbox.ready.notify_one();
    let _ = writer.await;
    shared.counters.connections_open.fetch_sub(1, Ordering::Relaxed);
}

async fn write_loop<W: WriteBytes>(mut write: W, outbox: Arc<Outbox>) {
    let mut bytes = Vec::with_capacity(WRITE_BUFFER_BYTES);
    loop {
        outbox.ready.notified().await;
        outbox.take(&mut bytes);
        if !bytes.is_empty() {
            let length = bytes.len();
            let (written, buffer) = write.write_bytes(bytes).await;
            bytes = buffer;
            if written.is_err() {
                outbox.closed.store(true, Ordering::Release);
                return;
            }
            outbox.written(length);
            // A slow reader's backlog grew this buffer: it is not kept (the
            // buffers swap with the outbox's, so both would stay that large).
            if bytes.capacity() > WRITE_BUFFER_KEPT_BYTES_MAX {
                bytes = Vec::with_capacity(WRITE_BUFFER_BYTES);
            }
        }
        if outbox.closed.load(Ordering::Acquire) {
            outbox.take(&mut bytes);
            let _ = write.write_bytes(bytes).await;
            write.finish().await;
            return;
        }
    }
}

/// HELLO → CHALLENGE → PROOF → WELCOME. Returns the operator id (0 for a
/// gateway) once the peer proved it holds a key; `Ok(None)` if it left.
async fn handshake<R: ReadBytes>(
    reader: &mut FrameReader<R>,
    outbox: &Outbox,
    shared: &Shared,
) -> Result<Option<u32>, End> {
    let refuse = |request_id: u64, code: u8, small: u16| {
        refuse(shared, outbox, request_id, Answer::protocol(code, small, 0));
        End::Refused
    };
    let Some((header, body)) = next_frame(reader, outbox, shared, HANDSHAKE_BODY_BYTES_MAX).await? else {
        return Ok(None);
    };
    let body = &reader.buffer[body];
    if header.opcode != opcode::HELLO {
        return Err(refuse(header.request_id, code::UNAUTHENTICATED, 0));
    }
    // A reply sent as a request is no request, in the handshake as after it.
    if header.flags & flag::REPLY != 0 {
        return Err(refuse(header.request_id, code::MALFORMED, 0));
    }
    let hello = Hello::decode(body).map_err(|_| refuse(header.request_id, code::MALFORMED, 0))?;
    if !(hello.version_min..=hello.version_max).contains(&PROTOCOL_VERSION) {
        return Err(refuse(header.request_id, code::UNSUPPORTED_VERSION, u16::from(PROTOCOL_VERSION)));
    }
    let server_nonce = nonce().map_err(|_| refuse(header.request_id, code::SHUTTING_DOWN, 0))?;
    let challenge = Challenge { version: PROTOCOL_VERSION, server_nonce };
    outbox.push(&reply_frame(opcode::HELLO, header.request_id, |out| challenge.encode(out)));
    let Some((header, body)) = next_frame(reader, outbox, shared, HANDSHAKE_BODY_BYTES_MAX).await? else {
        return Ok(None);
    };
    let body = &reader.buffer[body];
    if header.opcode == opcode::PROOF && header.flags & flag::REPLY != 0 {
        return Err(refuse(header.request_id, code::MALFORMED, 0));
    }
    let proven = header.opcode == opcode::PROOF
        && body.len() == PROOF_BYTES
        && shared.keys.key(hello.role, hello.key_id).is_some_and(|key| verify_proof(key, &hello, &server_nonce, body));
    if !proven {
        tracing::warn!(role = ?hello.role, key_id = hello.key_id, "a peer failed to authenticate");
        shared.counters.protocol_refusals_by_code.add(code::UNAUTHENTICATED, 1);
        outbox.push(&reply_frame(opcode::PROOF, header.request_id, |out| {
            Answer::protocol(code::UNAUTHENTICATED, 0, 0).encode(out)
        }));
        return Err(End::Refused);
    }
    outbox.push(&reply_frame(opcode::PROOF, header.request_id, |out| Answer::ok(0).encode(out)));
    Ok(Some(if hello.role == Role::Operator { hello.key_id } else { 0 }))
}

/// The next frame (its body: `reader.buffer[range]`); a frame error is
/// answered and ends the connection.
async fn next_frame<R: ReadBytes>(
    reader: &mut FrameReader<R>,
    outbox: &Outbox,
    shared: &Shared,
    body_bytes_max: u32,
) -> Result<Option<(FrameHeader, Range<usize>)>, End> {
    match reader.next(body_bytes_max).await {
        Ok(frame) => Ok(frame),
        Err(error) => {
            shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
            let code = error.code().unwrap_or(code::MALFORMED);
            let value = match error {
                FrameError::TooLarge { limit, .. } => limit,
                _ => 0,
            };
            let small = if code == code::UNSUPPORTED_VERSION { u16::from(PROTOCOL_VERSION) } else { 0 };
            refuse(shared, outbox, 0, Answer::protocol(code, small, value));
            Err(End::Refused)
        }
    }
}

async fn read_loop<R: ReadBytes>(
    reader: &mut FrameReader<R>,
    outbox: &Arc<Outbox>,
    shared: &Arc<Shared>,
    operator_id: u32,
) -> End {
    loop {
        if shared.stopping.load(Ordering::Acquire) {
            return End::Closed;
        }
        // A peer that does not read its replies is not read from either: its
        // outbox stays bounded, and so do all outboxes together (a peer with
        // a fair share waiting goes on while those that do not read pause).
        let reply_bytes_max = shared.config.reply_bytes_max;
        let over = || {
            let unsent = outbox.unsent_bytes();
            unsent > OUTBOX_BYTES_MAX
                || (unsent > REPLY_BYTES_SHARE && shared.reply_bytes_waiting.load(Ordering::Acquire) > reply_bytes_max)
        };
        if !pause_while(outbox, shared, over).await {
            return End::Closed;
        }
        let (header, body) = match next_frame(reader, outbox, shared, shared.config.frame_body_bytes_max).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return End::Closed,
            Err(end) => return end,
        };
        // Decoded where it lies in the read buffer: nothing awaits until the next frame.
        let body = &reader.buffer[body];
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        let request_id = header.request_id;
        // A reply sent as a request, or a body where the format has none, is
        // not a request this protocol knows: answered, and the connection closed.
        let bodiless = matches!(header.opcode, opcode::PING | opcode::STATS);
        if header.flags & flag::REPLY != 0 || (bodiless && !body.is_empty()) {
            shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
            refuse(shared, outbox, request_id, Answer::protocol(code::MALFORMED, 0, 0));
            return End::Refused;
        }
        let work = match header.opcode {
            opcode::PING => {
                outbox.push(&reply_frame(opcode::PING, request_id, |_| {}));
                continue;
            }
            opcode::STATS => {
                outbox.push(&reply_frame(opcode::STATS, request_id, |out| shared.counters.stats(shared).encode(out)));
                continue;
            }
            opcode::BATCH => match batch(body, operator_id) {
                Ok(work) => work,
                Err((code, value)) => {
                    refuse(shared, outbox, request_id, Answer::protocol(code, 0, value));
                    if code::closes_connection(code) {
                        return End::Refused;
                    }
                    continue;
                }
            },
            other => match command(other, body, operator_id) {
                Ok(command) => Work::One(command),
                Err(code) => {
                    let small = if code == code::UNKNOWN_OPCODE { u16::from(other) } else { 0 };
                    refuse(shared, outbox, request_id, Answer::protocol(code, small, 0));
                    if code::closes_connection(code) {
                        return End::Refused;
                    }
                    continue;
                }
            },
        };
        // In-flight counts commands, not frames: a batch of 4,096 weighs 4,096.
        let commands = work.commands();
        let in_flight = outbox.in_flight.load(Ordering::Acquire);
        if in_flight > 0 && in_flight + commands > shared.config.in_flight_max {
            let answer = Answer::protocol(code::TOO_MANY_IN_FLIGHT, 0, shared.config.in_flight_max);
            refuse(shared, outbox, request_id, answer);
            // Told once, the peer is not read from again until one of its
            // requests in flight is answered: one that keeps sending meets
            // TCP's backpressure rather than a refusal a frame, which would
            // cost the one network thread about what serving it does, and
            // everyone else would wait.
            if !pause_while(outbox, shared, || outbox.in_flight.load(Ordering::Acquire) >= in_flight).await {
                return End::Closed;
            }
            continue;
        }
        // The ingress queue is bounded in jobs and in commands.
        let weight = commands as usize;
        let queued = shared.ingress_commands.fetch_add(weight, Ordering::AcqRel);
        if queued > 0 && queued + weight > shared.config.ingress_queue_commands {
            shared.ingress_commands.fetch_sub(weight, Ordering::AcqRel);
            shared.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            refuse(shared, outbox, request_id, Answer::protocol(code::OVERLOADED, 0, 0));
            continue;
        }
        outbox.in_flight.fetch_add(commands, Ordering::AcqRel);
        let job = Job { outbox: Arc::clone(outbox), request_id, operator_id, work };
        if let Err(job) = shared.ingress.push(job) {
            shared.ingress_commands.fetch_sub(weight, Ordering::AcqRel);
            job.outbox.finish_request(commands);
            shared.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            refuse(shared, outbox, request_id, Answer::protocol(code::OVERLOADED, 0, 0));
            continue;
        }
        shared.engine_wake.wake();
    }
}

/// Stops reading a connection while `paused` holds, looking again after 1 ms,
/// then after twice as long each time up to `PAUSE_LOOK_MAX` (a thousand
/// paused peers do not wake the network thread a million times a second).
/// False if the connection closed or the server is stopping meanwhile.
async fn pause_while(outbox: &Outbox, shared: &Shared, paused: impl Fn() -> bool) -> bool {
    let mut wait = std::time::Duration::from_millis(1);
    while paused() {
        if outbox.closed.load(Ordering::Acquire) || shared.stopping.load(Ordering::Acquire) {
            return false;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(PAUSE_LOOK_MAX);
    }
    true
}

/// The longest a paused connection waits before it looks again.
const PAUSE_LOOK_MAX: std::time::Duration = std::time::Duration::from_millis(16);

/// Decodes one command; `Err` carries the result code to refuse it with.
/// Inlined into the loop over a batch's items.
#[inline(always)]
fn command(opcode_byte: u8, body: &[u8], operator_id: u32) -> Result<Command, u8> {
    let malformed = |_: BodyError| code::MALFORMED;
    Ok(match opcode_byte {
        opcode::RESERVE => Command::Reserve(booking(body, operator_id)?),
        opcode::CHANGE => Command::Change(booking(body, operator_id)?),
        opcode::CANCEL => Command::Cancel(booking(body, operator_id)?),
        opcode::GET_RESERVATION => Command::Get(PersonQuery::decode(body).map_err(malformed)?),
        opcode::SITE_AVAILABILITY => Command::Site(SiteQuery::decode(body).map_err(malformed)?),
        opcode::REGION_AVAILABILITY => Command::Region(RegionQuery::decode(body).map_err(malformed)?),
        opcode::ADD_CAPACITY if operator_id == 0 => return Err(code::NOT_ALLOWED),
        opcode::ADD_CAPACITY => Command::AddCapacity(CapacityAddition::decode(body).map_err(malformed)?),
        _ => return Err(code::UNKNOWN_OPCODE),
    })
}

/// A RESERVE, CHANGE or CANCEL body, on the channel this connection may use.
#[inline]
fn booking(body: &[u8], operator_id: u32) -> Result<BookingRequest, u8> {
    let booking = BookingRequest::read(body).ok_or(code::MALFORMED)?;
    let allowed = match booking.channel {
        // A gateway books for people it verified; only operators book as operators (R10).
        crate::rules::Channel::Operator { .. } if operator_id == 0 => false,
        // An operator's bookings carry the operator's own id.
        channel => operator_id == 0 || channel.operator_id() == operator_id,
    };
    if allowed {
        Ok(booking)
    } else {
        Err(code::NOT_ALLOWED)
    }
}

/// A BATCH body's commands, each decoded where it lies; the first bad item
/// refuses the whole batch. A batch of reservations only (what a gateway
/// sends in a crowd) becomes `Work::Reserves`, any other `Work::Batch`.
fn batch(body: &[u8], operator_id: u32) -> Result<Work, (u8, u32)> {
    let structure = |error| match error {
        BodyError::BatchTooLarge { max, .. } => (code::BATCH_TOO_LARGE, u32::from(max)),
        _ => (code::MALFORMED, 0),
    };
    let mut items = BatchItems::of_requests(body, BATCH_COMMANDS_MAX).map_err(structure)?;
    let announced = usize::from(items.announced());
    let form = if items.compact_answers() { AnswerForm::Compact } else { AnswerForm::Full };
    let mut reserves = Vec::with_capacity(announced);
    {
        // Written past this core's cache: the engine thread reads them on the other.
        // SAFETY: `streamed` is dropped (fenced) at the end of this block, or
        // on the early return below, before `reserves` is used again.
        let mut streamed = unsafe { handover::Streamed::new(&mut reserves) };
        while let Some(body) = items.next_fixed::<{ BookingRequest::BYTES }>(opcode::RESERVE) {
            streamed.push(booking(body, operator_id).map_err(|code| (code, 0))?);
        }
    }
    // Whatever is next (another command, a bad item, bytes after the last
    // item) is read in full: the reservations so far and the rest, in order,
    // become commands.
    let Some(item) = items.next() else { return Ok(Work::Reserves(reserves, form)) };
    let mut commands = Vec::with_capacity(announced);
    commands.extend(reserves.into_iter().map(Command::Reserve));
    for item in std::iter::once(item).chain(items) {
        let item = item.map_err(structure)?;
        commands.push(command(item.opcode, item.body, operator_id).map_err(|code| (code, 0))?);
    }
    Ok(Work::Batch(commands, form))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::body::{put_batch_header, put_batch_item};
    use crate::rules::Channel;
    use crate::state::PersonKey;

    fn booking(index: u8) -> BookingRequest {
        BookingRequest {
            person: PersonKey(u128::from(index) + 1),
            birth_date: crate::calendar::Date::parse("1990-05-15").unwrap(),
            slot: crate::inventory::SlotIndex(u32::from(index)),
            idempotency_key: 1,
            channel: Channel::Person,
        }
    }

    /// A batch item: opcode and body.
    type Item = (u8, Vec<u8>);

    /// A bad batch: what is wrong, its items, how many its header announces, the refusal.
    type Case = (&'static str, Vec<Item>, u16, (u8, u32));

    fn body_of(items: &[Item], announced: u16) -> Vec<u8> {
        let mut body = Vec::new();
        put_batch_header(&mut body, announced);
        for (item_opcode, item_body) in items {
            put_batch_item(&mut body, *item_opcode, |out| out.extend_from_slice(item_body));
        }
        body
    }

    fn reserve(request: BookingRequest) -> Item {
        let mut body = Vec::new();
        request.encode(&mut body);
        (opcode::RESERVE, body)
    }

    fn opcodes(work: &Work) -> Vec<u8> {
        match work {
            Work::One(command) => vec![command.opcode()],
            Work::Reserves(requests, _) => vec![opcode::RESERVE; requests.len()],
            Work::Batch(commands, _) => commands.iter().map(Command::opcode).collect(),
        }
    }

    #[test]
    fn a_batch_of_reservations_only_is_decoded_as_reservations_and_any_other_as_commands_in_order() {
        let reserves: Vec<_> = (0..5).map(|index| reserve(booking(index))).collect();
        let Ok(Work::Reserves(requests, AnswerForm::Full)) = batch(&body_of(&reserves, 5), 0) else {
            panic!("reservations only")
        };
        assert_eq!(requests, (0..5).map(booking).collect::<Vec<_>>());
        assert!(matches!(batch(&body_of(&[], 0), 0), Ok(Work::Reserves(requests, _)) if requests.is_empty()));
        // A GET in the middle, or at either end: every command, in order.
        let get = (opcode::GET_RESERVATION, 7u128.to_le_bytes().to_vec());
        for at in [0, 2, 5] {
            let mut items = reserves.clone();
            items.insert(at, get.clone());
            let work = batch(&body_of(&items, 6), 0).unwrap();
            assert!(matches!(work, Work::Batch(..)), "GET at {at}");
            let expected: Vec<u8> = items.iter().map(|(item_opcode, _)| *item_opcode).collect();
            assert_eq!(opcodes(&work), expected, "GET at {at}");
            let Work::Batch(commands, _) = work else { unreachable!() };
            let booked: Vec<BookingRequest> = commands
                .iter()
                .filter_map(|command| match command {
                    Command::Reserve(request) => Some(*request),
                    _ => None,
                })
                .collect();
            assert_eq!(booked, (0..5).map(booking).collect::<Vec<_>>(), "GET at {at}");
        }
    }

    #[test]
    fn a_bad_item_refuses_the_batch_wherever_the_reservations_stop() {
        let good = reserve(booking(1));
        let as_operator = reserve(BookingRequest { channel: Channel::Operator { operator_id: 9 }, ..booking(2) });
        let short = (opcode::RESERVE, good.1[..39].to_vec());
        let bad_date = {
            let mut item = good.clone();
            item.1[16..20].copy_from_slice(&i32::MAX.to_le_bytes());
            item
        };
        let cancel = (opcode::CANCEL, good.1.clone());
        let body_with = |items: &[Item], announced: u16, change: &dyn Fn(&mut Vec<u8>)| {
            let mut body = body_of(items, announced);
            change(&mut body);
            body
        };
        // Bytes a header cannot say: checked where the reservations stop too.
        let second_item = 4 + 4 + BookingRequest::BYTES;
        let raw_cases: [(&str, Vec<u8>); 4] = [
            ("a batch flag this version does not know", body_with(std::slice::from_ref(&good), 1, &|body| body[2] = 2)),
            (
                "a reserved byte set in a RESERVE item header",
                body_with(&[good.clone(), good.clone()], 2, &|body| body[second_item + 1] = 1),
            ),
            (
                "a RESERVE item cut short by the end",
                body_with(&[good.clone(), good.clone()], 2, &|body| body.truncate(body.len() - 1)),
            ),
            (
                "an opcode that cannot be batched after the reservations",
                body_with(&[good.clone(), good.clone()], 2, &|body| body[second_item] = opcode::STATS),
            ),
        ];
        for (case, body) in raw_cases {
            assert_eq!(batch(&body, 0).err(), Some((code::MALFORMED, 0)), "{case}");
        }
        let cases: [Case; 6] = [
            ("a gateway booking as an operator", vec![good.clone(), as_operator.clone()], 2, (code::NOT_ALLOWED, 0)),
            ("the same after a cancel", vec![cancel.clone(), as_operator], 2, (code::NOT_ALLOWED, 0)),
            ("a short reservation", vec![good.clone(), short], 2, (code::MALFORMED, 0)),
            ("a birth date out of range", vec![good.clone(), bad_date], 2, (code::MALFORMED, 0)),
            ("an item more than announced", vec![good.clone(), good.clone()], 1, (code::MALFORMED, 0)),
            ("an item fewer than announced", vec![good.clone()], 2, (code::MALFORMED, 0)),
        ];
        for (case, items, announced, refusal) in cases {
            assert_eq!(batch(&body_of(&items, announced), 0).err(), Some(refusal), "{case}");
        }
        let too_many = body_of(&[], BATCH_COMMANDS_MAX + 1);
        assert_eq!(batch(&too_many, 0).err(), Some((code::BATCH_TOO_LARGE, u32::from(BATCH_COMMANDS_MAX))));
        // An operator books as itself only, in a batch of reservations as anywhere.
        let own = reserve(BookingRequest { channel: Channel::Operator { operator_id: 9 }, ..booking(3) });
        assert!(matches!(batch(&body_of(&[own.clone(), own.clone()], 2), 9), Ok(Work::Reserves(r, _)) if r.len() == 2));
        // Compact answers are asked for in the header, for either kind of batch.
        let compact = |items: &[Item]| body_with(items, items.len() as u16, &|body| body[2] = 1);
        assert!(matches!(batch(&compact(std::slice::from_ref(&good)), 0), Ok(Work::Reserves(_, AnswerForm::Compact))));
        assert!(matches!(batch(&compact(&[good.clone(), cancel.clone()]), 0), Ok(Work::Batch(_, AnswerForm::Compact))));
        assert!(matches!(batch(&body_of(std::slice::from_ref(&cancel), 1), 0), Ok(Work::Batch(_, AnswerForm::Full))));
        assert_eq!(batch(&body_of(&[own, good], 2), 9).err(), Some((code::NOT_ALLOWED, 0)), "a person's booking");
    }
}
