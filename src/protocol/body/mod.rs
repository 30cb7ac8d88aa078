//! Request bodies: fixed-width fields, little-endian (docs/protocol.md, "Bodies").
//! Every `decode` checks the exact length and every field's range and never
//! panics; every `encode` writes exactly what `decode` reads.

use crate::calendar::Date;
use crate::inventory::SlotIndex;
use crate::rules::Channel;
use crate::state::{BookingRequest, CancelRequest, CapacityChange, PersonKey};

mod batch;
mod stats;

pub use batch::{
    batch_answer_item, batch_flag, compact_asked, put_batch_answer, put_batch_header, put_batch_header_with,
    put_batch_item, split_batch, split_reply_batch, BatchItem, BatchItems, CompactAnswerWriter, CompactAnswers,
    ANSWER_FOLLOWS, BATCH_ANSWER_ITEM_BYTES,
};
pub use stats::{Stats, STATS_COUNTERS, STATS_COUNTER_NAMES};

/// Dates on the wire lie in 1900-01-01..=2099-12-31 (days since 1970-01-01),
/// the dates campaign.toml may name.
pub use crate::calendar::{DATE_DAYS_MAX, DATE_DAYS_MIN};

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

/// The date `days` after 1970-01-01, if the protocol carries it.
#[inline]
pub fn date_from_wire(days: i32) -> Option<Date> {
    (DATE_DAYS_MIN..=DATE_DAYS_MAX).contains(&days).then(|| Date::from_days_since_epoch(days))
}

/// A date on the wire: days since 1970-01-01 within the protocol's range.
#[inline]
fn wire_date(days: i32, field: &'static str) -> Result<Date, BodyError> {
    date_from_wire(days).ok_or_else(|| date_outside_range(days, field))
}

#[cold]
#[inline(never)]
fn date_outside_range(days: i32, field: &'static str) -> BodyError {
    // Said as a date where the calendar can (it spans far more than the range).
    let date = if (-1_000_000..=1_000_000).contains(&days) {
        format!(" ({})", Date::from_days_since_epoch(days))
    } else {
        String::new()
    };
    field_error(field, format!("{days} days{date} is outside 1900-01-01..=2099-12-31"))
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

/// ADD_CAPACITY (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapacityAddition {
    pub slot: SlotIndex,
    pub seats: u32,
    /// The capacity the operator saw: makes a retry safe (`Engine::add_capacity`).
    pub expected_capacity: u32,
}

impl CapacityAddition {
    pub const BYTES: usize = 16;

    /// The state machine's change this asks for, made by `operator_id` (the
    /// key id of the operator connection it came on).
    pub fn change_by(&self, operator_id: u32) -> CapacityChange {
        CapacityChange { slot: self.slot, seats: self.seats, expected_capacity: self.expected_capacity, operator_id }
    }

    /// Whether it only reads the slot's capacity (`CapacityChange::only_reads`;
    /// which operator asks does not matter).
    pub fn only_reads(&self) -> bool {
        self.change_by(0).only_reads()
    }

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
            (with(16, &(DATE_DAYS_MAX + 1).to_le_bytes()), "birth date: 47482 days (2100-01-01) is outside"),
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

    pub(super) fn booking(channel: Channel) -> BookingRequest {
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
}
