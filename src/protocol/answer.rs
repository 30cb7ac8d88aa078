//! The 16-byte `Answer` every reply to a command starts with, and its mapping
//! to and from the state machine's results (docs/protocol.md, "Answer").

use crate::inventory::SlotIndex;
use crate::protocol::body::{BodyError, Reader};
use crate::protocol::code;
use crate::state::{LogUnavailable, Refusal, ResultCode};

pub mod answer_flag {
    /// The wide field holds a value (an absent time is this flag cleared).
    pub const WIDE_PRESENT: u8 = 1;
    /// GET_RESERVATION: the person holds the slot in `value`.
    pub const HOLDS: u8 = 2;
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub code: u8,
    pub flags: u8,
    pub small: u16,
    pub value: u32,
    pub wide: i64,
}

impl Answer {
    pub const BYTES: usize = 16;

    pub fn ok(value: u32) -> Answer {
        Answer { value, ..Answer::default() }
    }

    /// A protocol or server refusal (codes 100–127).
    pub fn protocol(code: u8, small: u16, value: u32) -> Answer {
        Answer { code, small, value, ..Answer::default() }
    }

    pub fn is_ok(&self) -> bool {
        self.code == code::OK
    }

    fn with_wide(mut self, wide: Option<i64>) -> Answer {
        if let Some(wide) = wide {
            self.flags |= answer_flag::WIDE_PRESENT;
            self.wide = wide;
        }
        self
    }

    fn wide(&self) -> Option<i64> {
        (self.flags & answer_flag::WIDE_PRESENT != 0).then_some(self.wide)
    }

    /// The answer of a command whose result is a slot.
    /// GET_RESERVATION's answer: OK, with the HOLDS flag and the slot when one is held.
    pub fn held(slot: Option<SlotIndex>) -> Answer {
        match slot {
            Some(slot) => Answer { flags: answer_flag::HOLDS, ..Answer::ok(slot.0) },
            None => Answer::ok(0),
        }
    }

    /// The slot an OK answer to GET_RESERVATION says is held.
    pub fn held_slot(&self) -> Option<SlotIndex> {
        (self.flags & answer_flag::HOLDS != 0).then_some(SlotIndex(self.value))
    }

    /// What a client makes of an answer: `Ok(Ok(value))` for OK,
    /// `Ok(Err(refusal))` for the state machine's codes, and `Err(self)` for
    /// the protocol's (the request was refused whole).
    pub fn result(self) -> Result<Result<u32, Refusal>, Answer> {
        if self.is_ok() {
            return Ok(Ok(self.value));
        }
        self.to_refusal().map(Err).ok_or(self)
    }

    pub fn of_slot(result: &Result<SlotIndex, Refusal>) -> Answer {
        match result {
            Ok(slot) => Answer::ok(slot.0),
            Err(refusal) => Answer::refusal(refusal),
        }
    }

    pub fn refusal(refusal: &Refusal) -> Answer {
        let base = Answer { code: refusal.code() as u8, ..Answer::default() };
        match *refusal {
            Refusal::InvalidPersonKey | Refusal::InvalidIdempotencyKey | Refusal::NoReservation => base,
            Refusal::NotEligible { birth_date } => base.with_wide(Some(i64::from(birth_date.days_since_epoch()))),
            Refusal::NotYourRotationDay { digit, your_turn_opens_ms } => {
                Answer { small: u16::from(digit), ..base }.with_wide(your_turn_opens_ms)
            }
            Refusal::WindowClosed { next_open_ms } => base.with_wide(next_open_ms),
            Refusal::ProxyBookingClosed { cutoff_ms } => base.with_wide(cutoff_ms),
            Refusal::UnknownSlot { slot } => Answer { value: slot, ..base },
            Refusal::UnknownSite { site_id } => Answer { value: site_id, ..base },
            Refusal::UnknownRegion { region_id } => Answer { small: region_id, ..base },
            Refusal::NotAServiceDay { date, first, days } => {
                Answer { small: days, value: first.days_since_epoch() as u32, ..base }
                    .with_wide(Some(i64::from(date.days_since_epoch())))
            }
            Refusal::SlotInPast { slot }
            | Refusal::SlotFull { slot }
            | Refusal::SameSlot { slot }
            | Refusal::AlreadyBooked { existing: slot } => Answer { value: slot.0, ..base },
            Refusal::IdempotencyKeyReused { idempotency_key } => base.with_wide(Some(idempotency_key as i64)),
            Refusal::PeopleTableFull { people_max } => base.with_wide(Some(people_max as i64)),
            Refusal::CapacityOverflow { slot, capacity } | Refusal::CapacityChanged { slot, capacity } => {
                Answer { value: slot.0, ..base }.with_wide(Some(i64::from(capacity)))
            }
            Refusal::PageTooLarge { requested, page_max } => {
                Answer { value: requested, ..base }.with_wide(Some(i64::from(page_max)))
            }
            Refusal::LogUnavailable(why) => Answer {
                small: match why {
                    LogUnavailable::DiskFull => 1,
                    LogUnavailable::IoFailed => 2,
                    LogUnavailable::Closed => 3,
                },
                ..base
            },
        }
    }

    /// The state machine's refusal this answer carries, for codes 1–99;
    /// `None` for OK, for protocol codes, and for fields that do not fit.
    pub fn to_refusal(&self) -> Option<Refusal> {
        let slot = SlotIndex(self.value);
        let date = || self.wide().and_then(|days| i32::try_from(days).ok()).and_then(super::body::date_from_wire);
        let code = ResultCode::from_u8(self.code)?;
        Some(match code {
            ResultCode::Ok => return None,
            ResultCode::InvalidPersonKey => Refusal::InvalidPersonKey,
            ResultCode::InvalidIdempotencyKey => Refusal::InvalidIdempotencyKey,
            ResultCode::NotEligible => Refusal::NotEligible { birth_date: date()? },
            ResultCode::NotYourRotationDay => {
                Refusal::NotYourRotationDay { digit: u8::try_from(self.small).ok()?, your_turn_opens_ms: self.wide() }
            }
            ResultCode::WindowClosed => Refusal::WindowClosed { next_open_ms: self.wide() },
            ResultCode::ProxyBookingClosed => Refusal::ProxyBookingClosed { cutoff_ms: self.wide() },
            ResultCode::UnknownSlot => Refusal::UnknownSlot { slot: self.value },
            ResultCode::UnknownSite => Refusal::UnknownSite { site_id: self.value },
            ResultCode::NotAServiceDay => {
                let first = super::body::date_from_wire(self.value as i32)?;
                Refusal::NotAServiceDay { date: date()?, first, days: self.small }
            }
            ResultCode::SlotInPast => Refusal::SlotInPast { slot },
            ResultCode::UnknownRegion => Refusal::UnknownRegion { region_id: self.small },
            ResultCode::SlotFull => Refusal::SlotFull { slot },
            ResultCode::AlreadyBooked => Refusal::AlreadyBooked { existing: slot },
            ResultCode::NoReservation => Refusal::NoReservation,
            ResultCode::SameSlot => Refusal::SameSlot { slot },
            ResultCode::IdempotencyKeyReused => Refusal::IdempotencyKeyReused { idempotency_key: self.wide()? as u64 },
            ResultCode::PeopleTableFull => Refusal::PeopleTableFull { people_max: self.wide()? as u64 },
            ResultCode::CapacityOverflow => {
                Refusal::CapacityOverflow { slot, capacity: u32::try_from(self.wide()?).ok()? }
            }
            ResultCode::CapacityChanged => {
                Refusal::CapacityChanged { slot, capacity: u32::try_from(self.wide()?).ok()? }
            }
            ResultCode::PageTooLarge => {
                Refusal::PageTooLarge { requested: self.value, page_max: u32::try_from(self.wide()?).ok()? }
            }
            ResultCode::LogUnavailable => Refusal::LogUnavailable(match self.small {
                1 => LogUnavailable::DiskFull,
                2 => LogUnavailable::IoFailed,
                3 => LogUnavailable::Closed,
                _ => return None,
            }),
        })
    }

    #[inline]
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut bytes = [0; Self::BYTES];
        bytes[0] = self.code;
        bytes[1] = self.flags;
        bytes[2..4].copy_from_slice(&self.small.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.value.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.wide.to_le_bytes());
        bytes
    }

    #[inline]
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }

    /// Reads the answer at the start of a reply body; the rest is returned.
    pub fn decode(bytes: &[u8]) -> Result<(Answer, &[u8]), BodyError> {
        let mut reader = Reader::at_least(bytes, Self::BYTES)?;
        let answer = Answer {
            code: reader.u8()?,
            flags: reader.u8()?,
            small: reader.u16()?,
            value: reader.u32()?,
            wide: reader.i64()?,
        };
        Ok((answer, reader.remaining()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::Date;

    #[test]
    fn every_refusal_survives_the_wire() {
        let date = Date::from_days_since_epoch(7439);
        let refusals = [
            Refusal::InvalidPersonKey,
            Refusal::InvalidIdempotencyKey,
            Refusal::NotEligible { birth_date: date },
            Refusal::NotYourRotationDay { digit: 7, your_turn_opens_ms: Some(1_628_506_800_000) },
            Refusal::NotYourRotationDay { digit: 0, your_turn_opens_ms: None },
            Refusal::WindowClosed { next_open_ms: Some(-5) },
            Refusal::WindowClosed { next_open_ms: None },
            Refusal::ProxyBookingClosed { cutoff_ms: None },
            Refusal::UnknownSlot { slot: u32::MAX },
            Refusal::UnknownSite { site_id: 4 },
            Refusal::UnknownRegion { region_id: 17 },
            Refusal::NotAServiceDay { date, first: Date::from_days_since_epoch(18_865), days: 30 },
            Refusal::SlotInPast { slot: SlotIndex(1) },
            Refusal::SlotFull { slot: SlotIndex(2) },
            Refusal::AlreadyBooked { existing: SlotIndex(3) },
            Refusal::NoReservation,
            Refusal::SameSlot { slot: SlotIndex(4) },
            Refusal::IdempotencyKeyReused { idempotency_key: u64::MAX },
            Refusal::PeopleTableFull { people_max: 20_000_000 },
            Refusal::CapacityOverflow { slot: SlotIndex(5), capacity: 16_000_000 },
            Refusal::CapacityChanged { slot: SlotIndex(6), capacity: 7 },
            Refusal::PageTooLarge { requested: 1000, page_max: 100 },
            Refusal::LogUnavailable(LogUnavailable::DiskFull),
            Refusal::LogUnavailable(LogUnavailable::IoFailed),
            Refusal::LogUnavailable(LogUnavailable::Closed),
        ];
        for refusal in refusals {
            let mut bytes = Vec::new();
            Answer::refusal(&refusal).encode(&mut bytes);
            assert_eq!(bytes.len(), Answer::BYTES);
            let (answer, rest) = Answer::decode(&bytes).unwrap();
            assert!(rest.is_empty());
            assert_eq!(answer.to_refusal(), Some(refusal), "{refusal:?}");
        }
        assert_eq!(Answer::ok(9).to_refusal(), None);
        assert_eq!(Answer::protocol(code::OVERLOADED, 0, 0).to_refusal(), None);
    }
}
