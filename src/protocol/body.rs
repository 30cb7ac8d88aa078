//! Request bodies: fixed-width fields, little-endian (docs/protocol.md, "Bodies").
//! Every `decode` checks the exact length and every field's range and never
//! panics; every `encode` writes exactly what `decode` reads.

use crate::calendar::Date;
use crate::inventory::SlotIndex;
use crate::protocol::answer::Answer;
use crate::rules::Channel;
use crate::state::{BookingRequest, CancelRequest, PersonKey};

/// Dates on the wire lie in 1900-01-01..=2099-12-31 (days since 1970-01-01).
pub const DATE_DAYS_MIN: i32 = -25_567;
pub const DATE_DAYS_MAX: i32 = 47_481;

/// Why a body is not what its opcode needs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body of {found} bytes; this command's body has {expected}")]
    Length { expected: usize, found: usize },
    #[error("{field}: {reason}")]
    Field { field: &'static str, reason: String },
    /// A batch of more commands than allowed (BATCH_TOO_LARGE, not MALFORMED).
    #[error("batch count: {count} commands; at most {max}")]
    BatchTooLarge { count: u16, max: u16 },
}

/// A cursor over a body: reads fixed-width little-endian fields.
pub struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    /// A reader over a body that must be exactly `expected` bytes long.
    pub fn exact(bytes: &'a [u8], expected: usize) -> Result<Reader<'a>, BodyError> {
        if bytes.len() != expected {
            return Err(BodyError::Length { expected, found: bytes.len() });
        }
        Ok(Reader { bytes, position: 0 })
    }

    /// A reader over a body of at least `minimum` bytes; the caller checks the rest.
    pub fn at_least(bytes: &'a [u8], minimum: usize) -> Result<Reader<'a>, BodyError> {
        if bytes.len() < minimum {
            return Err(BodyError::Length { expected: minimum, found: bytes.len() });
        }
        Ok(Reader { bytes, position: 0 })
    }

    pub fn take<const N: usize>(&mut self) -> Result<[u8; N], BodyError> {
        let end = self.position + N;
        let slice =
            self.bytes.get(self.position..end).ok_or(BodyError::Length { expected: end, found: self.bytes.len() })?;
        self.position = end;
        let mut array = [0; N];
        array.copy_from_slice(slice);
        Ok(array)
    }

    pub fn u8(&mut self) -> Result<u8, BodyError> {
        Ok(self.take::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, BodyError> {
        self.take().map(u16::from_le_bytes)
    }
    pub fn u32(&mut self) -> Result<u32, BodyError> {
        self.take().map(u32::from_le_bytes)
    }
    pub fn i32(&mut self) -> Result<i32, BodyError> {
        self.take().map(i32::from_le_bytes)
    }
    pub fn u64(&mut self) -> Result<u64, BodyError> {
        self.take().map(u64::from_le_bytes)
    }
    pub fn i64(&mut self) -> Result<i64, BodyError> {
        self.take().map(i64::from_le_bytes)
    }
    pub fn u128(&mut self) -> Result<u128, BodyError> {
        self.take().map(u128::from_le_bytes)
    }

    /// Reserved bytes must be zero.
    pub fn zeros(&mut self, count: usize, field: &'static str) -> Result<(), BodyError> {
        let end = self.position + count;
        let slice =
            self.bytes.get(self.position..end).ok_or(BodyError::Length { expected: end, found: self.bytes.len() })?;
        self.position = end;
        if slice.iter().any(|b| *b != 0) {
            return Err(field_error(field, "reserved bytes must be zero".into()));
        }
        Ok(())
    }

    pub fn date(&mut self, field: &'static str) -> Result<Date, BodyError> {
        wire_date(self.i32()?, field)
    }

    pub fn remaining(&self) -> &'a [u8] {
        &self.bytes[self.position..]
    }
}

fn field_error(field: &'static str, reason: String) -> BodyError {
    BodyError::Field { field, reason }
}

/// A date on the wire: days since 1970-01-01 within the protocol's range.
#[inline]
fn wire_date(days: i32, field: &'static str) -> Result<Date, BodyError> {
    if !(DATE_DAYS_MIN..=DATE_DAYS_MAX).contains(&days) {
        return Err(date_outside_range(days, field));
    }
    Ok(Date::from_days_since_epoch(days))
}

#[cold]
#[inline(never)]
fn date_outside_range(days: i32, field: &'static str) -> BodyError {
    field_error(field, format!("{days} days is outside 1900-01-01..=2099-12-31"))
}

/// Why a booking's channel and operator id do not go together.
#[cold]
#[inline(never)]
fn bad_channel(channel: u8, operator_id: u32) -> BodyError {
    match channel {
        0 | 1 => field_error("operator id", format!("{operator_id}: must be 0 unless the channel is 2 (operator)")),
        2 => field_error("operator id", "must not be 0 for the operator channel".into()),
        other => field_error("channel", format!("{other}; 0 person, 1 family proxy, 2 operator")),
    }
}

/// The `N` bytes at `offset` of a fixed-size body (offsets are constants:
/// the compiler checks nothing at run time).
#[inline(always)]
fn at<const N: usize, const LEN: usize>(bytes: &[u8; LEN], offset: usize) -> [u8; N] {
    let mut field = [0; N];
    field.copy_from_slice(&bytes[offset..offset + N]);
    field
}

fn put_date(out: &mut Vec<u8>, date: Date) {
    out.extend_from_slice(&date.days_since_epoch().to_le_bytes());
}

/// RESERVE, CHANGE and CANCEL carry a `BookingRequest` (40 bytes; CANCEL
/// with slot 0): the engine's own request type is the wire body, decoded
/// once, never converted.
impl BookingRequest {
    pub const BYTES: usize = 40;

    /// Reads a body of exactly `BYTES` bytes; the error says what is wrong
    /// with it.
    #[inline]
    pub fn decode(bytes: &[u8]) -> Result<BookingRequest, BodyError> {
        BookingRequest::read(bytes).ok_or_else(|| BookingRequest::defect(bytes))
    }

    /// Reads a body of exactly `BYTES` bytes, or `None` if it is not a valid
    /// booking (`decode` says why): the server's busiest decode, which only
    /// needs to know whether to answer MALFORMED. The fields sit at fixed
    /// offsets of a fixed-size array (no per-field bounds checks), and no
    /// error is built on the way (callgrind: the network thread's batch loop
    /// moved results carrying a `BodyError` about).
    #[inline(always)]
    pub fn read(bytes: &[u8]) -> Option<BookingRequest> {
        let bytes: &[u8; Self::BYTES] = bytes.try_into().ok()?;
        let days = i32::from_le_bytes(at(bytes, 16));
        if !(DATE_DAYS_MIN..=DATE_DAYS_MAX).contains(&days) || at::<3, { Self::BYTES }>(bytes, 33) != [0; 3] {
            return None;
        }
        let operator_id = u32::from_le_bytes(at(bytes, 36));
        let channel = match (bytes[32], operator_id) {
            (0, 0) => Channel::Person,
            (1, 0) => Channel::FamilyProxy,
            (2, operator_id) if operator_id != 0 => Channel::Operator { operator_id },
            _ => return None,
        };
        Some(BookingRequest {
            person: PersonKey(u128::from_le_bytes(at(bytes, 0))),
            birth_date: Date::from_days_since_epoch(days),
            slot: SlotIndex(u32::from_le_bytes(at(bytes, 20))),
            idempotency_key: u64::from_le_bytes(at(bytes, 24)),
            channel,
        })
    }

    /// What is wrong with a body `read` refused.
    #[cold]
    #[inline(never)]
    fn defect(bytes: &[u8]) -> BodyError {
        let Ok(bytes) = <&[u8; Self::BYTES]>::try_from(bytes) else {
            return BodyError::Length { expected: Self::BYTES, found: bytes.len() };
        };
        if let Err(error) = wire_date(i32::from_le_bytes(at(bytes, 16)), "birth date") {
            return error;
        }
        if at::<3, { Self::BYTES }>(bytes, 33) != [0; 3] {
            return field_error("booking reserved bytes", "reserved bytes must be zero".into());
        }
        bad_channel(bytes[32], u32::from_le_bytes(at(bytes, 36)))
    }

    /// Whether the engine will read this booking: its encoding decoded again
    /// (a birth date outside the protocol's range, or an operator channel
    /// with operator 0, would be refused as MALFORMED and close the
    /// connection). Clients check before sending.
    pub fn check(&self) -> Result<(), BodyError> {
        self.checked_bytes().map(|_| ())
    }

    /// The booking's body, once `check` has passed on exactly these bytes.
    pub fn checked_bytes(&self) -> Result<[u8; Self::BYTES], BodyError> {
        let mut bytes = Vec::with_capacity(Self::BYTES);
        self.encode(&mut bytes);
        BookingRequest::decode(&bytes)?;
        let mut body = [0; Self::BYTES];
        body.copy_from_slice(&bytes);
        Ok(body)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.person.0.to_le_bytes());
        put_date(out, self.birth_date);
        out.extend_from_slice(&self.slot.0.to_le_bytes());
        out.extend_from_slice(&self.idempotency_key.to_le_bytes());
        let (channel, operator_id) = match self.channel {
            Channel::Person => (0u8, 0u32),
            Channel::FamilyProxy => (1, 0),
            Channel::Operator { operator_id } => (2, operator_id),
        };
        out.extend_from_slice(&[channel, 0, 0, 0]);
        out.extend_from_slice(&operator_id.to_le_bytes());
    }

    pub fn cancel_request(&self) -> CancelRequest {
        CancelRequest {
            person: self.person,
            birth_date: self.birth_date,
            idempotency_key: self.idempotency_key,
            channel: self.channel,
        }
    }
}

/// GET_RESERVATION (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersonQuery {
    pub person: PersonKey,
}

impl PersonQuery {
    pub const BYTES: usize = 16;

    pub fn decode(bytes: &[u8]) -> Result<PersonQuery, BodyError> {
        let mut reader = Reader::exact(bytes, Self::BYTES)?;
        Ok(PersonQuery { person: PersonKey(reader.u128()?) })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.person.0.to_le_bytes());
    }
}

/// SITE_AVAILABILITY (8 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteQuery {
    pub site_id: u32,
    pub date: Date,
}

impl SiteQuery {
    pub const BYTES: usize = 8;

    pub fn decode(bytes: &[u8]) -> Result<SiteQuery, BodyError> {
        let mut reader = Reader::exact(bytes, Self::BYTES)?;
        Ok(SiteQuery { site_id: reader.u32()?, date: reader.date("date")? })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.site_id.to_le_bytes());
        put_date(out, self.date);
    }
}

/// REGION_AVAILABILITY (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionQuery {
    pub region_id: u16,
    pub date: Date,
    pub cursor: u32,
    pub limit: u32,
}

impl RegionQuery {
    pub const BYTES: usize = 16;

    pub fn decode(bytes: &[u8]) -> Result<RegionQuery, BodyError> {
        let mut reader = Reader::exact(bytes, Self::BYTES)?;
        let region_id = reader.u16()?;
        reader.zeros(2, "region query reserved bytes")?;
        Ok(RegionQuery { region_id, date: reader.date("date")?, cursor: reader.u32()?, limit: reader.u32()? })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.region_id.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        put_date(out, self.date);
        out.extend_from_slice(&self.cursor.to_le_bytes());
        out.extend_from_slice(&self.limit.to_le_bytes());
    }
}

/// ADD_CAPACITY (8 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapacityAddition {
    pub slot: SlotIndex,
    pub seats: u32,
    /// The capacity the operator saw: makes a retry safe (`Engine::add_capacity`).
    pub expected_capacity: u32,
}

impl CapacityAddition {
    pub const BYTES: usize = 16;

    pub fn decode(bytes: &[u8]) -> Result<CapacityAddition, BodyError> {
        let mut reader = Reader::exact(bytes, Self::BYTES)?;
        let addition =
            CapacityAddition { slot: SlotIndex(reader.u32()?), seats: reader.u32()?, expected_capacity: reader.u32()? };
        reader.zeros(4, "capacity addition reserved bytes")?;
        Ok(addition)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.slot.0.to_le_bytes());
        out.extend_from_slice(&self.seats.to_le_bytes());
        out.extend_from_slice(&self.expected_capacity.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
    }
}

/// One command of a BATCH, its body not yet decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchItem<'a> {
    pub opcode: u8,
    pub body: &'a [u8],
}

/// Splits a BATCH body into its items; refuses the whole batch if any item
/// cannot be read, if it has more than `commands_max` items, or if an item's
/// opcode may not be batched.
pub fn split_batch(bytes: &[u8], commands_max: u16) -> Result<Vec<BatchItem<'_>>, BodyError> {
    BatchItems::of_requests(bytes, commands_max)?.collect()
}

/// Splits a BatchReply body into its items (the client's side of `split_batch`).
pub fn split_reply_batch(bytes: &[u8]) -> Result<Vec<BatchItem<'_>>, BodyError> {
    BatchItems::of_replies(bytes)?.collect()
}

/// The items of a BATCH (or BatchReply) body, read one at a time where they
/// lie: the server decodes each into a command without a list of items in
/// between. The header is checked when this is made; each item as it is
/// reached; bytes after the last item are the last item's error.
pub struct BatchItems<'a> {
    reader: Reader<'a>,
    next_index: u16,
    count: u16,
    /// Request items: only batchable opcodes.
    requests: bool,
    finished: bool,
}

impl<'a> BatchItems<'a> {
    /// The items of a BATCH request body of at most `commands_max` items.
    pub fn of_requests(bytes: &'a [u8], commands_max: u16) -> Result<BatchItems<'a>, BodyError> {
        BatchItems::new(bytes, commands_max, true)
    }

    /// The items of a BatchReply body.
    pub fn of_replies(bytes: &'a [u8]) -> Result<BatchItems<'a>, BodyError> {
        BatchItems::new(bytes, crate::protocol::BATCH_COMMANDS_MAX, false)
    }

    fn new(bytes: &'a [u8], commands_max: u16, requests: bool) -> Result<BatchItems<'a>, BodyError> {
        let mut reader = Reader::at_least(bytes, 4)?;
        let count = reader.u16()?;
        reader.zeros(2, "batch reserved bytes")?;
        if count > commands_max {
            return Err(BodyError::BatchTooLarge { count, max: commands_max });
        }
        Ok(BatchItems { reader, next_index: 0, count, requests, finished: false })
    }

    /// How many items the header announces.
    pub fn announced(&self) -> u16 {
        self.count
    }

    #[inline]
    fn item(&mut self) -> Result<BatchItem<'a>, BodyError> {
        let rest = self.reader.remaining();
        if let Some((&[opcode, 0, length_low, length_high], after)) = rest.split_first_chunk::<4>() {
            let length = usize::from(u16::from_le_bytes([length_low, length_high]));
            if let Some(body) = after.get(..length) {
                if !self.requests || crate::protocol::opcode::batchable(opcode) {
                    self.reader.position += 4 + length;
                    return Ok(BatchItem { opcode, body });
                }
            }
        }
        Err(bad_item(self.next_index, rest, self.requests))
    }
}

/// Why the item at the front of `rest` cannot be read (cold: kept out of
/// the loop over a good batch).
#[cold]
#[inline(never)]
fn bad_item(index: u16, rest: &[u8], requests: bool) -> BodyError {
    let Some((&[opcode, reserved, length_low, length_high], after)) = rest.split_first_chunk::<4>() else {
        let found = rest.len();
        return field_error("batch item", format!("item {index}: {found} bytes left, 4 needed for its header"));
    };
    if reserved != 0 {
        return field_error("batch item reserved byte", "reserved bytes must be zero".into());
    }
    if requests && !crate::protocol::opcode::batchable(opcode) {
        return field_error("batch item opcode", format!("item {index}: opcode {opcode:#04x} cannot be batched"));
    }
    let length = u16::from_le_bytes([length_low, length_high]);
    field_error("batch item length", format!("item {index} says {length} bytes, {} remain", after.len()))
}

impl<'a> Iterator for BatchItems<'a> {
    type Item = Result<BatchItem<'a>, BodyError>;

    /// Inlined into the server's loop over a batch (callgrind: called, it
    /// cost 65 instructions an item).
    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        if self.next_index < self.count {
            let item = self.item();
            self.next_index += 1;
            // After an error the rest cannot be read: it is the last answer.
            if item.is_err() {
                self.next_index = self.count;
                self.finished = true;
            }
            return Some(item);
        }
        if self.finished {
            return None;
        }
        self.finished = true;
        let trailing = self.reader.remaining().len();
        (trailing > 0).then(|| Err(bytes_after_the_last_item(trailing)))
    }
}

#[cold]
#[inline(never)]
fn bytes_after_the_last_item(trailing: usize) -> BodyError {
    field_error("batch", format!("{trailing} bytes after the last item"))
}

/// Appends a BATCH (or BatchReply) header for `count` items.
pub fn put_batch_header(out: &mut Vec<u8>, count: u16) {
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
}

/// How many counters the STATS reply carries before its refusals by code.
pub const STATS_COUNTERS: usize = 21;

/// The names of the STATS reply's counters, in their order on the wire.
pub const STATS_COUNTER_NAMES: [&str; STATS_COUNTERS] = [
    "reservations",
    "cancellations",
    "changes",
    "refusals",
    "requests",
    "connections open",
    "connections refused",
    "ingress queue depth",
    "ingress queue capacity",
    "log next lsn",
    "log durable lsn",
    "log syncs",
    "sync p50 µs",
    "sync p99 µs",
    "sync p999 µs",
    "sync max µs",
    "snapshots taken",
    "uptime ms",
    "bad frames",
    "overloaded",
    "ingress queue commands",
];

/// The STATS reply body (docs/protocol.md, "Stats"): the counters, then
/// the refusals by result code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// In `STATS_COUNTER_NAMES`' order.
    pub counters: [u64; STATS_COUNTERS],
    /// (result code, refusals with it), codes ascending, only codes seen.
    pub refusals_by_code: Vec<(u8, u64)>,
}

impl Stats {
    const COUNTERS_BYTES: usize = STATS_COUNTERS * 8;
    const REFUSAL_BYTES: usize = 16;

    pub fn encode(&self, out: &mut Vec<u8>) {
        for value in self.counters {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&(self.refusals_by_code.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        for (code, count) in &self.refusals_by_code {
            out.extend_from_slice(&[*code, 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&count.to_le_bytes());
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Stats, BodyError> {
        let mut reader = Reader::at_least(bytes, Self::COUNTERS_BYTES + 8)?;
        let mut stats = Stats::default();
        for value in &mut stats.counters {
            *value = reader.u64()?;
        }
        let count = reader.u32()?;
        reader.zeros(4, "refusals_by_code")?;
        if count > 256 {
            return Err(field_error("refusals_by_code", format!("{count} entries; there are 256 codes")));
        }
        let expected = Self::COUNTERS_BYTES + 8 + count as usize * Self::REFUSAL_BYTES;
        if bytes.len() != expected {
            return Err(BodyError::Length { expected, found: bytes.len() });
        }
        for _ in 0..count {
            let code = reader.u8()?;
            reader.zeros(7, "refusals_by_code")?;
            let refusals = reader.u64()?;
            if stats.refusals_by_code.last().is_some_and(|(last, _)| *last >= code) {
                return Err(field_error("refusals_by_code", format!("code {code} out of order")));
            }
            stats.refusals_by_code.push((code, refusals));
        }
        Ok(stats)
    }

    /// A counter by its name in `STATS_COUNTER_NAMES`.
    pub fn counter(&self, name: &str) -> Option<u64> {
        STATS_COUNTER_NAMES.iter().position(|n| *n == name).map(|index| self.counters[index])
    }
}

/// A batch reply item holding one `Answer`: its 4-byte item header and the answer.
pub const BATCH_ANSWER_ITEM_BYTES: usize = 4 + Answer::BYTES;

/// Appends one batch reply item holding `answer`, in one write (the engine
/// thread's path for every batchable command). The same bytes as
/// `put_batch_item` with `answer.encode` as the body.
#[inline]
pub fn put_batch_answer(out: &mut Vec<u8>, opcode: u8, answer: &Answer) {
    let mut item = [0; BATCH_ANSWER_ITEM_BYTES];
    item[0] = opcode;
    item[2..4].copy_from_slice(&(Answer::BYTES as u16).to_le_bytes());
    item[4..].copy_from_slice(&answer.to_bytes());
    out.extend_from_slice(&item);
}

/// Appends one batch item, its body written by `write_body`.
pub fn put_batch_item(out: &mut Vec<u8>, opcode: u8, write_body: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(&[opcode, 0, 0, 0]);
    let start = out.len();
    write_body(out);
    let length = u16::try_from(out.len() - start).expect("batch item bodies are small and fixed-size");
    out[start - 2..start].copy_from_slice(&length.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_booking_body_says_what_is_wrong_with_it() {
        let mut good = Vec::new();
        booking(Channel::Person).encode(&mut good);
        let with = |offset: usize, bytes: &[u8]| {
            let mut body = good.clone();
            body[offset..offset + bytes.len()].copy_from_slice(bytes);
            body
        };
        let cases: [(Vec<u8>, &str); 6] = [
            (good[..39].to_vec(), "body of 39 bytes"),
            (with(16, &(DATE_DAYS_MAX + 1).to_le_bytes()), "birth date: 47482 days is outside"),
            (with(34, &[1]), "booking reserved bytes"),
            (with(32, &[3]), "channel: 3;"),
            (with(36, &[5, 0, 0, 0]), "operator id: 5: must be 0 unless"),
            (with(32, &[2]), "must not be 0 for the operator channel"),
        ];
        for (body, expected) in cases {
            assert_eq!(BookingRequest::read(&body), None, "{expected}");
            let error = BookingRequest::decode(&body).unwrap_err().to_string();
            assert!(error.contains(expected), "{error} should say {expected}");
        }
        assert_eq!(BookingRequest::read(&good), Some(booking(Channel::Person)));
    }

    proptest::proptest! {
        /// `read` (the server's path) and `decode` (the detailed one) agree
        /// on every body: the same booking, or both refuse.
        #[test]
        fn read_and_decode_agree_on_any_body(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 38..42),
                                             channel in 0u8..4, operator in 0u32..3) {
            let mut body = body;
            if body.len() == BookingRequest::BYTES {
                // Often valid, so that both sides of the answer are seen.
                body[32] = channel;
                body[33..36].fill(0);
                body[36..40].copy_from_slice(&operator.to_le_bytes());
                // The range's edges, and dates on both sides of it.
                let days = match body[16] % 8 {
                    0 => DATE_DAYS_MIN - 1,
                    1 => DATE_DAYS_MIN,
                    2 => DATE_DAYS_MAX,
                    3 => DATE_DAYS_MAX + 1,
                    _ => i32::from(body[17]) * 400 - 30_000,
                };
                body[16..20].copy_from_slice(&days.to_le_bytes());
            }
            proptest::prop_assert_eq!(BookingRequest::read(&body), BookingRequest::decode(&body).ok());
        }
    }

    fn booking(channel: Channel) -> BookingRequest {
        BookingRequest {
            person: PersonKey(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            birth_date: Date::from_days_since_epoch(7439),
            slot: SlotIndex(42),
            idempotency_key: 9,
            channel,
        }
    }

    #[test]
    fn bookings_round_trip_and_refuse_bad_channels() {
        for channel in [Channel::Person, Channel::FamilyProxy, Channel::Operator { operator_id: 5 }] {
            let mut bytes = Vec::new();
            booking(channel).encode(&mut bytes);
            assert_eq!(bytes.len(), BookingRequest::BYTES);
            assert_eq!(BookingRequest::decode(&bytes), Ok(booking(channel)));
        }
        let mut bytes = Vec::new();
        booking(Channel::Person).encode(&mut bytes);
        bytes[32] = 2; // operator channel with operator 0
        assert!(matches!(BookingRequest::decode(&bytes), Err(BodyError::Field { field: "operator id", .. })));
        bytes[32] = 3;
        assert!(matches!(BookingRequest::decode(&bytes), Err(BodyError::Field { field: "channel", .. })));
        assert_eq!(BookingRequest::decode(&bytes[..39]), Err(BodyError::Length { expected: 40, found: 39 }));
        bytes[32] = 0;
        bytes[16..20].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(matches!(BookingRequest::decode(&bytes), Err(BodyError::Field { field: "birth date", .. })));
    }

    #[test]
    fn batches_split_and_refuse_bad_items() {
        let mut body = Vec::new();
        put_batch_header(&mut body, 2);
        put_batch_item(&mut body, crate::protocol::opcode::RESERVE, |out| booking(Channel::Person).encode(out));
        put_batch_item(&mut body, crate::protocol::opcode::GET_RESERVATION, |out| {
            PersonQuery { person: PersonKey(3) }.encode(out)
        });
        let items = split_batch(&body, 4096).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(BookingRequest::decode(items[0].body), Ok(booking(Channel::Person)));
        assert_eq!(PersonQuery::decode(items[1].body), Ok(PersonQuery { person: PersonKey(3) }));
        assert!(split_batch(&body, 1).is_err(), "over the count limit");
        assert!(split_batch(&body[..body.len() - 1], 4096).is_err(), "cut short");
        let mut extra = body.clone();
        extra.push(0);
        assert!(split_batch(&extra, 4096).is_err(), "trailing bytes");
        let mut nested = body.clone();
        nested[4] = crate::protocol::opcode::BATCH;
        assert!(split_batch(&nested, 4096).is_err(), "a batch inside a batch");
    }

    #[test]
    fn stats_round_trip_and_reject_bad_bodies() {
        let mut counters = [0u64; STATS_COUNTERS];
        for (index, value) in counters.iter_mut().enumerate() {
            *value = index as u64 * 1000 + 7;
        }
        let stats = Stats { counters, refusals_by_code: vec![(5, 12), (12, 3), (200, 1)] };
        let mut body = Vec::new();
        stats.encode(&mut body);
        assert_eq!(body.len(), 168 + 8 + 3 * 16);
        assert_eq!(Stats::decode(&body), Ok(stats.clone()));
        assert_eq!(stats.counter("refusals"), Some(3007));
        assert_eq!(stats.counter("no such counter"), None);
        assert!(Stats::decode(&body[..body.len() - 1]).is_err(), "truncated");
        let mut longer = body.clone();
        longer.push(0);
        assert!(Stats::decode(&longer).is_err(), "trailing byte");
        let mut unordered = Vec::new();
        Stats { counters, refusals_by_code: vec![(12, 1), (5, 1)] }.encode(&mut unordered);
        assert!(Stats::decode(&unordered).is_err(), "codes out of order");
        let mut dirty = body.clone();
        dirty[168 + 8 + 1] = 1;
        assert!(Stats::decode(&dirty).is_err(), "reserved byte set");
        let mut huge = body[..168].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert!(Stats::decode(&huge).is_err(), "absurd count");
    }

    #[test]
    fn a_batch_answer_item_is_the_general_item_with_an_answer_body() {
        let answer = Answer { code: 41, flags: 1, small: 0x0203, value: 0x0405_0607, wide: -5 };
        let (mut fast, mut general) = (Vec::new(), Vec::new());
        put_batch_answer(&mut fast, 0x10, &answer);
        put_batch_item(&mut general, 0x10, |out| answer.encode(out));
        assert_eq!(fast, general);
        assert_eq!(fast.len(), BATCH_ANSWER_ITEM_BYTES);
        assert_eq!(&fast[..4], &[0x10, 0, 16, 0]);
    }
}
