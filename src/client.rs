//! A blocking client: connect and authenticate, then send requests (pipelined:
//! many may be sent before their replies are read) and read replies, each
//! within a timeout (for the whole reply, however the peer splits it).
//!
//! The shell client, the tests and the load generator use it; gateways use
//! the async client (`src/async_client.rs`), with its pool, automatic
//! batching and retries.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::inventory::SlotIndex;
use crate::protocol::body::{
    batch_flag, put_batch_header_with, put_batch_item, CompactAnswers, PersonQuery, RegionQuery, SiteQuery, Stats,
};
use crate::protocol::frame::flag;
use crate::protocol::handshake::{ClientHandshake, ClientHandshakeError, Role, PROOF_REQUEST_ID};
use crate::protocol::{
    decode_frame, encode_frame, opcode, Answer, CapacityAddition, FrameError, FrameHeader, FRAME_BODY_BYTES_MAX,
};
use crate::state::{BookingRequest, Refusal, RegionPage};

/// How long a call waits for its reply (and a write for room) by default.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting, and then each step of the handshake, may take by default.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer took longer than the timeout to answer (or to take a write):
    /// an engine stalled, or something that is not a yeyak engine.
    #[error("no answer within {0:?}: a stalled engine, or not a yeyak engine at that address")]
    TimedOut(Duration),
    #[error("the engine sent a bad frame: {0}")]
    Frame(FrameError),
    #[error("the engine closed the connection")]
    Closed,
    /// A read or write failed or timed out before: what the engine received
    /// or will still send is unknown, so the connection is not used again.
    #[error("the connection failed earlier and may be out of step with the engine: connect again")]
    Broken,
    #[error("the engine refused the request whole: {}", refused_whole(.0))]
    Refused(Answer),
    #[error("the engine's reply does not read: {0}")]
    BadReply(String),
    #[error("authentication failed: the engine does not accept this key")]
    Unauthenticated,
    #[error("no random bytes from the OS: {0}")]
    Random(getrandom::Error),
    #[error("the request is not valid and was not sent: {0}")]
    Invalid(crate::protocol::BodyError),
}

/// What an ERROR frame's answer says: the protocol's code by name (with its
/// limit), or the state machine's refusal in words.
pub(crate) fn refused_whole(answer: &Answer) -> String {
    let code = answer.code;
    if let Some(name) = crate::protocol::code::name(code) {
        let limit = if answer.value != 0 { format!(", limit {}", answer.value) } else { String::new() };
        return format!("{name} (code {code}{limit})");
    }
    match (answer.to_refusal(), crate::state::ResultCode::from_u8(code)) {
        (Some(refusal), _) => format!("{refusal} (code {code})"),
        // A code this client knows, with details it cannot read.
        (None, Some(known)) => format!("{} (code {code})", known.name()),
        (None, None) => format!("unknown code {code}"),
    }
}

impl From<ClientHandshakeError> for ClientError {
    fn from(error: ClientHandshakeError) -> ClientError {
        match error {
            ClientHandshakeError::Refused(answer) => ClientError::Refused(answer),
            ClientHandshakeError::Unauthenticated => ClientError::Unauthenticated,
            ClientHandshakeError::BadReply(reason) => ClientError::BadReply(reason),
        }
    }
}

pub struct Client {
    stream: TcpStream,
    /// The read and write timeout (`None`: wait forever).
    timeout: Option<Duration>,
    /// A read or write failed: every later call is refused with `Broken`.
    broken: bool,
    /// The socket's read (write) timeout was shortened to what was left of
    /// a deadline: the next read (write) sets it back to `timeout` first.
    read_timeout_shortened: bool,
    write_timeout_shortened: bool,
    buffer: ReadBuffer,
    /// Frames sent but not yet written: written together before the next read.
    unwritten: Vec<u8>,
    next_request_id: u64,
}

/// Bytes read from the socket and not yet taken as frames: the window
/// `start..end` of a buffer zeroed once, read into in place. Taking a frame
/// moves `start`; the unread rest is moved to the front only when the room
/// behind it runs short (not once a frame, which made reading many
/// pipelined replies quadratic).
#[derive(Default)]
struct ReadBuffer {
    bytes: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuffer {
    /// Reads ask for at least this much room.
    const READ_BYTES_MIN: usize = 64 * 1024;

    fn unread(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    fn consume(&mut self, count: usize) {
        self.start = (self.start + count).min(self.end);
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
    }

    /// Room to read into: at least `READ_BYTES_MIN` bytes after the unread ones.
    fn spare(&mut self) -> &mut [u8] {
        if self.bytes.len() - self.end < Self::READ_BYTES_MIN {
            self.bytes.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.bytes.len() - self.end < Self::READ_BYTES_MIN {
                self.bytes.resize(self.end + Self::READ_BYTES_MIN.max(self.bytes.len()), 0);
            }
        }
        &mut self.bytes[self.end..]
    }

    /// `count` bytes were read into `spare()`.
    fn filled(&mut self, count: usize) {
        self.end = (self.end + count).min(self.bytes.len());
    }
}

/// A socket timeout (`WouldBlock` from a read or write with a timeout set,
/// `TimedOut` from a connect) as `TimedOut`; any other error as `Io`.
fn timed_out(error: std::io::Error, timeout: Duration) -> ClientError {
    match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::TimedOut(timeout),
        _ => ClientError::Io(error),
    }
}

/// Which of the socket's timeouts to set.
enum Side {
    Read,
    Write,
}

/// A reply frame: its header and body.
pub type Reply = (FrameHeader, Vec<u8>);

/// SITE_AVAILABILITY's answer: the day's first slot and the seats left in each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteSeats {
    pub first_slot: SlotIndex,
    pub seats: Vec<u32>,
}

impl Client {
    /// Connects and proves to hold `key` for `role` and `key_id`, within
    /// `CONNECT_TIMEOUT`; calls then wait at most `CALL_TIMEOUT` for a reply.
    pub fn connect(address: SocketAddr, role: Role, key_id: u32, key: &[u8]) -> Result<Client, ClientError> {
        Self::connect_within(address, role, key_id, key, CONNECT_TIMEOUT, CALL_TIMEOUT)
    }

    /// `connect` with its own timeouts: for connecting, then for each step
    /// of the handshake (a write and a reply, twice), and then for each
    /// write of requests and each reply (`set_timeout`).
    pub fn connect_within(
        address: SocketAddr,
        role: Role,
        key_id: u32,
        key: &[u8],
        connect_timeout: Duration,
        call_timeout: Duration,
    ) -> Result<Client, ClientError> {
        let stream =
            TcpStream::connect_timeout(&address, connect_timeout).map_err(|e| timed_out(e, connect_timeout))?;
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            timeout: None,
            broken: false,
            read_timeout_shortened: false,
            write_timeout_shortened: false,
            buffer: ReadBuffer::default(),
            unwritten: Vec::new(),
            next_request_id: PROOF_REQUEST_ID + 1,
        };
        client.set_timeout(Some(connect_timeout))?;
        let handshake = ClientHandshake::new(role, key_id, key).map_err(ClientError::Random)?;
        handshake.hello_frame(&mut client.unwritten);
        let (header, body) = client.receive()?;
        handshake.proof_frame(header.opcode, &body, &mut client.unwritten)?;
        let (header, body) = client.receive()?;
        ClientHandshake::welcomed(header.opcode, &body)?;
        client.set_timeout(Some(call_timeout))?;
        Ok(client)
    }

    /// How long writing the queued requests may take, and reading one reply
    /// (`None`: forever); past it, the call fails with `TimedOut` and the
    /// client is broken. Each is timed whole: a peer that trickles bytes
    /// does not keep a call alive.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)?;
        self.timeout = timeout;
        self.read_timeout_shortened = false;
        self.write_timeout_shortened = false;
        Ok(())
    }

    /// Queues a request without waiting; returns its request id. Queued
    /// requests go out together (one write) at the next `flush` or `receive`,
    /// or once 64 KiB are queued.
    pub fn send(&mut self, opcode: u8, write_body: impl FnOnce(&mut Vec<u8>)) -> Result<u64, ClientError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        encode_frame(&mut self.unwritten, opcode, 0, request_id, write_body);
        if self.unwritten.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(request_id)
    }

    /// The authenticated socket, for load generators that read and write it
    /// from two threads. Queued requests are written first.
    pub fn into_stream(mut self) -> Result<TcpStream, ClientError> {
        self.flush()?;
        if !self.buffer.unread().is_empty() {
            return Err(ClientError::BadReply("unread replies".into()));
        }
        // The caller times its own reads and writes.
        self.set_timeout(None)?;
        Ok(self.stream)
    }

    /// Writes every queued request.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if self.broken {
            return Err(ClientError::Broken);
        }
        if !self.unwritten.is_empty() {
            // A failed write may have sent part of the bytes: resending them
            // would put the stream out of step, so the client is broken.
            self.restore_timeout(Side::Write)?;
            let deadline = self.deadline();
            let mut written = 0;
            while written < self.unwritten.len() {
                if written > 0 {
                    self.shorten_timeout(Side::Write, deadline)?;
                }
                match self.stream.write(&self.unwritten[written..]) {
                    Ok(0) => return Err(self.broken_by(std::io::ErrorKind::WriteZero.into())),
                    Ok(count) => written += count,
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(self.broken_by(error)),
                }
            }
            self.unwritten.clear();
        }
        Ok(())
    }

    /// Queues frames encoded beforehand, as `send` queues the frames it
    /// encodes (a load generator that prepares its requests): their request
    /// ids are the caller's, and must not collide with `send`'s.
    pub fn queue_encoded(&mut self, frames: &[u8]) -> Result<(), ClientError> {
        self.unwritten.extend_from_slice(frames);
        if self.unwritten.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends raw bytes (for tests of bad frames).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.flush()?;
        self.restore_timeout(Side::Write)?;
        self.stream.write_all(bytes).map_err(|e| self.broken_by(e))
    }

    /// A reply already read from the socket, if a whole one is there; never blocks.
    pub fn receive_buffered(&mut self) -> Result<Option<Reply>, ClientError> {
        match decode_frame(self.buffer.unread(), FRAME_BODY_BYTES_MAX) {
            Ok((header, body)) => {
                let reply = (header, body.to_vec());
                self.buffer.consume(crate::protocol::FRAME_HEADER_BYTES + reply.1.len());
                if header.flags & flag::REPLY == 0 {
                    return Err(ClientError::BadReply("a frame without the REPLY flag".into()));
                }
                Ok(Some(reply))
            }
            Err(FrameError::Incomplete { .. }) => Ok(None),
            Err(error) => Err(ClientError::Frame(error)),
        }
    }

    /// Reads the next reply frame, whatever request it answers (writing the
    /// queued requests first).
    pub fn receive(&mut self) -> Result<Reply, ClientError> {
        self.flush()?;
        self.restore_timeout(Side::Read)?;
        let deadline = self.deadline();
        let mut reads = 0;
        loop {
            if let Some(reply) = self.receive_buffered()? {
                return Ok(reply);
            }
            if reads > 0 {
                self.shorten_timeout(Side::Read, deadline)?;
            }
            reads += 1;
            let read = match self.stream.read(self.buffer.spare()) {
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(self.broken_by(error)),
            };
            if read == 0 {
                return Err(ClientError::Closed);
            }
            self.buffer.filled(read);
        }
    }

    /// When a write of the queued requests, or the read of a reply, starting now must end.
    /// (`None`: no timeout, or one too long to have an end.)
    fn deadline(&self) -> Option<Instant> {
        self.timeout.and_then(|timeout| Instant::now().checked_add(timeout))
    }

    /// Sets the socket's timeout for `side` to what is left before `deadline`
    /// (the next operation on that side sets it back: `restore_timeout`);
    /// past the deadline, the client is broken and the call `TimedOut`.
    fn shorten_timeout(&mut self, side: Side, deadline: Option<Instant>) -> Result<(), ClientError> {
        let Some(deadline) = deadline else { return Ok(()) };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.broken_by(std::io::ErrorKind::TimedOut.into()));
        }
        let set = match side {
            Side::Read => {
                self.read_timeout_shortened = true;
                self.stream.set_read_timeout(Some(left))
            }
            Side::Write => {
                self.write_timeout_shortened = true;
                self.stream.set_write_timeout(Some(left))
            }
        };
        set.map_err(|e| self.broken_by(e))
    }

    /// Sets the socket's timeout for `side` back to the whole `timeout` if a
    /// deadline shortened it (however the operation that did so ended).
    fn restore_timeout(&mut self, side: Side) -> Result<(), ClientError> {
        let set = match side {
            Side::Read if self.read_timeout_shortened => self.stream.set_read_timeout(self.timeout),
            Side::Write if self.write_timeout_shortened => self.stream.set_write_timeout(self.timeout),
            _ => return Ok(()),
        };
        set.map_err(|e| self.broken_by(e))?;
        match side {
            Side::Read => self.read_timeout_shortened = false,
            Side::Write => self.write_timeout_shortened = false,
        }
        Ok(())
    }

    /// An I/O error as the caller sees it; the client is broken from now on.
    fn broken_by(&mut self, error: std::io::Error) -> ClientError {
        self.broken = true;
        timed_out(error, self.timeout.unwrap_or_default())
    }

    /// Sends a request and waits for its reply; an ERROR frame becomes `Refused`.
    pub fn call(&mut self, opcode: u8, write_body: impl FnOnce(&mut Vec<u8>)) -> Result<Reply, ClientError> {
        let request_id = self.send(opcode, write_body)?;
        let (header, body) = self.receive()?;
        if header.opcode == opcode::ERROR {
            let (answer, _) = Answer::decode(&body).map_err(|e| ClientError::BadReply(e.to_string()))?;
            return Err(ClientError::Refused(answer));
        }
        if header.request_id != request_id {
            return Err(ClientError::BadReply(format!(
                "reply to request {} while waiting for {request_id}",
                header.request_id
            )));
        }
        Ok((header, body))
    }

    fn answer_of(
        &mut self,
        opcode: u8,
        write_body: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(Answer, Vec<u8>), ClientError> {
        let (_, body) = self.call(opcode, write_body)?;
        let (answer, rest) = Answer::decode(&body).map_err(|e| ClientError::BadReply(e.to_string()))?;
        Ok((answer, rest.to_vec()))
    }

    fn slot_result(answer: Answer) -> Result<Result<SlotIndex, Refusal>, ClientError> {
        Ok(answer.result().map_err(ClientError::Refused)?.map(SlotIndex))
    }

    pub fn reserve(&mut self, booking: &BookingRequest) -> Result<Result<SlotIndex, Refusal>, ClientError> {
        let body = booking.checked_bytes().map_err(ClientError::Invalid)?;
        let (answer, _) = self.answer_of(opcode::RESERVE, |out| out.extend_from_slice(&body))?;
        Self::slot_result(answer)
    }

    pub fn change(&mut self, booking: &BookingRequest) -> Result<Result<SlotIndex, Refusal>, ClientError> {
        let body = booking.checked_bytes().map_err(ClientError::Invalid)?;
        let (answer, _) = self.answer_of(opcode::CHANGE, |out| out.extend_from_slice(&body))?;
        Self::slot_result(answer)
    }

    pub fn cancel(&mut self, booking: &BookingRequest) -> Result<Result<SlotIndex, Refusal>, ClientError> {
        let body = booking.checked_bytes().map_err(ClientError::Invalid)?;
        let (answer, _) = self.answer_of(opcode::CANCEL, |out| out.extend_from_slice(&body))?;
        Self::slot_result(answer)
    }

    /// ADD_CAPACITY (an operator connection): moves the slot's capacity from
    /// `expected_capacity` to `expected_capacity + seats`; `Ok(capacity)` is the
    /// capacity after, `CapacityChanged` carries the capacity now.
    pub fn add_capacity(&mut self, addition: &CapacityAddition) -> Result<Result<u32, Refusal>, ClientError> {
        let (answer, _) = self.answer_of(opcode::ADD_CAPACITY, |out| addition.encode(out))?;
        answer.result().map_err(ClientError::Refused)
    }

    /// A slot's capacity, read by adding zero seats (an operator connection).
    pub fn capacity(&mut self, slot: SlotIndex) -> Result<Result<u32, Refusal>, ClientError> {
        self.add_capacity(&CapacityAddition { slot, seats: 0, expected_capacity: 0 })
    }

    /// The slot a person holds, if any.
    pub fn reservation(&mut self, query: &PersonQuery) -> Result<Result<Option<SlotIndex>, Refusal>, ClientError> {
        let (answer, _) = self.answer_of(opcode::GET_RESERVATION, |out| query.encode(out))?;
        Ok(answer.result().map_err(ClientError::Refused)?.map(|_| answer.held_slot()))
    }

    /// Seats left in each time slot of a site on a day: (first slot, seats per slot).
    pub fn site_availability(&mut self, query: &SiteQuery) -> Result<Result<SiteSeats, Refusal>, ClientError> {
        let (answer, rest) = self.answer_of(opcode::SITE_AVAILABILITY, |out| query.encode(out))?;
        if let Err(refusal) = answer.result().map_err(ClientError::Refused)? {
            return Ok(Err(refusal));
        }
        let bad = |e: crate::protocol::BodyError| ClientError::BadReply(e.to_string());
        let mut reader = crate::protocol::body::Reader::at_least(&rest, 8).map_err(bad)?;
        let first_slot = SlotIndex(reader.u32().map_err(bad)?);
        let count = reader.u16().map_err(bad)?;
        reader.zeros(2, "site seats reserved bytes").map_err(bad)?;
        let seats = (0..count).map(|_| reader.u32()).collect::<Result<Vec<u32>, _>>().map_err(bad)?;
        Ok(Ok(SiteSeats { first_slot, seats }))
    }

    /// One page of the sites of a region with seats left on a day.
    pub fn region_availability(&mut self, query: &RegionQuery) -> Result<Result<RegionPage, Refusal>, ClientError> {
        let (answer, rest) = self.answer_of(opcode::REGION_AVAILABILITY, |out| query.encode(out))?;
        if let Err(refusal) = answer.result().map_err(ClientError::Refused)? {
            return Ok(Err(refusal));
        }
        let bad = |e: crate::protocol::BodyError| ClientError::BadReply(e.to_string());
        let mut reader = crate::protocol::body::Reader::at_least(&rest, 8).map_err(bad)?;
        let next_cursor = reader.u32().map_err(bad)?;
        let count = reader.u32().map_err(bad)?;
        let sites = (0..count)
            .map(|_| Ok((reader.u32()?, reader.u32()?)))
            .collect::<Result<Vec<(u32, u32)>, crate::protocol::BodyError>>()
            .map_err(bad)?;
        Ok(Ok(RegionPage { sites, next_cursor: (next_cursor != u32::MAX).then_some(next_cursor) }))
    }

    /// Books many at once in one BATCH frame; answers in the same order.
    pub fn reserve_batch(&mut self, bookings: &[BookingRequest]) -> Result<Vec<Answer>, ClientError> {
        let count = u16::try_from(bookings.len()).map_err(|_| ClientError::BadReply("batch too large".into()))?;
        for booking in bookings {
            booking.check().map_err(ClientError::Invalid)?;
        }
        // Compact answers: a byte a booking, the whole answer where a byte is not enough.
        let (_, body) = self.call(opcode::BATCH, |out| {
            put_batch_header_with(out, count, batch_flag::COMPACT_ANSWERS);
            for booking in bookings {
                put_batch_item(out, opcode::RESERVE, |out| booking.encode(out));
            }
        })?;
        let asked = bookings.iter().map(|booking| (opcode::RESERVE, booking.slot.0));
        CompactAnswers::parse(&body)
            .and_then(|answers| answers.answers(asked))
            .map_err(|e| ClientError::BadReply(e.to_string()))
    }

    /// The STATS counters and the refusals by result code (docs/protocol.md, "Stats").
    pub fn stats(&mut self) -> Result<Stats, ClientError> {
        let (_, body) = self.call(opcode::STATS, |_| {})?;
        Stats::decode(&body).map_err(|e| ClientError::BadReply(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::{ClientError, ReadBuffer};
    use crate::protocol::{code, Answer};
    use crate::state::{LogUnavailable, Refusal};

    #[test]
    fn a_request_refused_whole_says_why_in_words() {
        let disk_full = ClientError::Refused(Answer::refusal(&Refusal::LogUnavailable(LogUnavailable::DiskFull)));
        assert_eq!(
            disk_full.to_string(),
            "the engine refused the request whole: the log cannot take records: the disk is full (free space, \
             then restart the engine); the change may or may not have been made (code 60)"
        );
        let overloaded =
            ClientError::Refused(Answer { code: code::TOO_MANY_IN_FLIGHT, value: 4096, ..Answer::default() });
        assert_eq!(
            overloaded.to_string(),
            "the engine refused the request whole: too many in flight (code 111, limit 4096)"
        );
        let unreadable = ClientError::Refused(Answer { code: 60, small: 9, ..Answer::default() });
        assert_eq!(unreadable.to_string(), "the engine refused the request whole: log unavailable (code 60)");
        let unknown = ClientError::Refused(Answer { code: 250, ..Answer::default() });
        assert_eq!(unknown.to_string(), "the engine refused the request whole: unknown code 250");
    }

    /// Reads `chunk` into the buffer as a socket read would.
    fn read(buffer: &mut ReadBuffer, chunk: &[u8]) {
        let spare = buffer.spare();
        assert!(spare.len() >= ReadBuffer::READ_BYTES_MIN, "a read always has room");
        spare[..chunk.len()].copy_from_slice(chunk);
        buffer.filled(chunk.len());
    }

    #[test]
    fn the_read_buffer_keeps_unread_bytes_in_order_across_compaction_and_growth() {
        let mut buffer = ReadBuffer::default();
        let mut expected = std::collections::VecDeque::new();
        let mut next = 0u8;
        // Reads of many sizes, frames taken in between of other sizes: the
        // unread window always equals what was read and not taken.
        for round in 0..400usize {
            let chunk: Vec<u8> = (0..(round * 7919) % 50_000)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            read(&mut buffer, &chunk);
            expected.extend(chunk);
            let take = ((round * 104_729) % 60_000).min(expected.len());
            assert!(buffer.unread().iter().eq(expected.iter()), "round {round}");
            buffer.consume(take);
            expected.drain(..take);
        }
        assert!(buffer.bytes.len() <= 4 * (50_000 + ReadBuffer::READ_BYTES_MIN), "bounded by what is unread");
        buffer.consume(usize::MAX);
        assert!(buffer.unread().is_empty());
        assert_eq!((buffer.start, buffer.end), (0, 0), "emptied, the window starts over");
    }
}
