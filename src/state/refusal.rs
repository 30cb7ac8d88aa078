//! Why a command was not carried out. A refusal is an answer, not a failure of
//! the engine: each carries what the person (or the gateway) needs to act on it.

use std::fmt;

use crate::calendar::Date;
use crate::inventory::SlotIndex;

/// Why the log cannot take records; every state-changing command is refused with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogUnavailable {
    /// The disk is full: free space, then restart; reads keep working meanwhile.
    DiskFull,
    /// A write or sync failed: the log stopped so that nothing unsafe is acknowledged.
    IoFailed,
    /// The engine is shutting down.
    Closed,
}

impl fmt::Display for LogUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogUnavailable::DiskFull => "the disk is full (free space, then restart the engine)",
            LogUnavailable::IoFailed => "a write or sync failed (restart the engine)",
            LogUnavailable::Closed => "the engine is shutting down",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The person key is zero; gateways must send the keyed hash of a resident number.
    InvalidPersonKey,
    /// Idempotency keys must be non-zero.
    InvalidIdempotencyKey,
    /// The birth date is in no cohort of this campaign (R4).
    NotEligible { birth_date: Date },
    /// Today's rotation day is for another digit (R5); says when this person's turn opens.
    NotYourRotationDay { digit: u8, your_turn_opens_ms: Option<i64> },
    /// Outside the booking window (R6); `None` when the campaign has no more windows.
    WindowClosed { next_open_ms: Option<i64> },
    /// Family proxy booking is over for this cohort, or never allowed (`None`) (R10).
    ProxyBookingClosed { cutoff_ms: Option<i64> },
    /// No such slot in this campaign's inventory.
    UnknownSlot { slot: u32 },
    /// No such site in this campaign's inventory.
    UnknownSite { site_id: u32 },
    /// No site of this campaign is in this region.
    UnknownRegion { region_id: u16 },
    /// No service (appointments) on this date; the campaign serves `days`
    /// days from `first`.
    NotAServiceDay { date: Date, first: Date, days: u16 },
    /// The slot's appointment time has already begun.
    SlotInPast { slot: SlotIndex },
    /// No seat left in this slot; other slots may have room.
    SlotFull { slot: SlotIndex },
    /// The person already holds a reservation (R3): cancel or change it instead.
    AlreadyBooked { existing: SlotIndex },
    /// Cancel or change asked for a person who holds no reservation.
    NoReservation,
    /// A change to the slot already held.
    SameSlot { slot: SlotIndex },
    /// This idempotency key was used for a different command of this person.
    IdempotencyKeyReused { idempotency_key: u64 },
    /// The person table is at `limits.people_max`; raise it and restart.
    PeopleTableFull { people_max: u64 },
    /// The capacity would pass the per-slot maximum.
    CapacityOverflow { slot: SlotIndex, capacity: u32 },
    /// A capacity change named a capacity the slot no longer has (another
    /// change came first); `capacity` is the slot's now.
    CapacityChanged { slot: SlotIndex, capacity: u32 },
    /// An availability page larger than `limits.availability_page_max`.
    PageTooLarge { requested: u32, page_max: u32 },
    /// The log cannot take records; nothing was changed.
    LogUnavailable(LogUnavailable),
}

/// Result codes as they travel (the protocol table in docs/protocol.md lists them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ResultCode {
    Ok = 0,
    InvalidPersonKey = 10,
    InvalidIdempotencyKey = 11,
    NotEligible = 20,
    NotYourRotationDay = 21,
    WindowClosed = 22,
    ProxyBookingClosed = 23,
    UnknownSlot = 30,
    UnknownSite = 31,
    NotAServiceDay = 32,
    SlotInPast = 33,
    UnknownRegion = 34,
    SlotFull = 40,
    AlreadyBooked = 41,
    NoReservation = 42,
    SameSlot = 43,
    IdempotencyKeyReused = 44,
    PeopleTableFull = 50,
    CapacityOverflow = 51,
    PageTooLarge = 52,
    CapacityChanged = 53,
    LogUnavailable = 60,
}

impl ResultCode {
    /// The code of a byte on the wire, if it is one of the state machine's.
    pub fn from_u8(byte: u8) -> Option<ResultCode> {
        Self::ALL.into_iter().find(|code| *code as u8 == byte)
    }

    pub const ALL: [ResultCode; 22] = [
        ResultCode::Ok,
        ResultCode::InvalidPersonKey,
        ResultCode::InvalidIdempotencyKey,
        ResultCode::NotEligible,
        ResultCode::NotYourRotationDay,
        ResultCode::WindowClosed,
        ResultCode::ProxyBookingClosed,
        ResultCode::UnknownSlot,
        ResultCode::UnknownSite,
        ResultCode::NotAServiceDay,
        ResultCode::SlotInPast,
        ResultCode::UnknownRegion,
        ResultCode::SlotFull,
        ResultCode::AlreadyBooked,
        ResultCode::NoReservation,
        ResultCode::SameSlot,
        ResultCode::IdempotencyKeyReused,
        ResultCode::PeopleTableFull,
        ResultCode::CapacityOverflow,
        ResultCode::PageTooLarge,
        ResultCode::CapacityChanged,
        ResultCode::LogUnavailable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ResultCode::Ok => "ok",
            ResultCode::InvalidPersonKey => "invalid person key",
            ResultCode::InvalidIdempotencyKey => "invalid idempotency key",
            ResultCode::NotEligible => "not eligible",
            ResultCode::NotYourRotationDay => "not your rotation day",
            ResultCode::WindowClosed => "window closed",
            ResultCode::ProxyBookingClosed => "proxy booking closed",
            ResultCode::UnknownSlot => "unknown slot",
            ResultCode::UnknownSite => "unknown site",
            ResultCode::NotAServiceDay => "not a service day",
            ResultCode::SlotInPast => "slot in the past",
            ResultCode::UnknownRegion => "unknown region",
            ResultCode::SlotFull => "slot full",
            ResultCode::AlreadyBooked => "already booked",
            ResultCode::NoReservation => "no reservation",
            ResultCode::SameSlot => "same slot",
            ResultCode::IdempotencyKeyReused => "idempotency key reused",
            ResultCode::PeopleTableFull => "people table full",
            ResultCode::CapacityOverflow => "capacity overflow",
            ResultCode::PageTooLarge => "page too large",
            ResultCode::CapacityChanged => "capacity changed",
            ResultCode::LogUnavailable => "log unavailable",
        }
    }
}

impl Refusal {
    pub fn code(self) -> ResultCode {
        match self {
            Refusal::InvalidPersonKey => ResultCode::InvalidPersonKey,
            Refusal::InvalidIdempotencyKey => ResultCode::InvalidIdempotencyKey,
            Refusal::NotEligible { .. } => ResultCode::NotEligible,
            Refusal::NotYourRotationDay { .. } => ResultCode::NotYourRotationDay,
            Refusal::WindowClosed { .. } => ResultCode::WindowClosed,
            Refusal::ProxyBookingClosed { .. } => ResultCode::ProxyBookingClosed,
            Refusal::UnknownSlot { .. } => ResultCode::UnknownSlot,
            Refusal::UnknownSite { .. } => ResultCode::UnknownSite,
            Refusal::NotAServiceDay { .. } => ResultCode::NotAServiceDay,
            Refusal::SlotInPast { .. } => ResultCode::SlotInPast,
            Refusal::UnknownRegion { .. } => ResultCode::UnknownRegion,
            Refusal::SlotFull { .. } => ResultCode::SlotFull,
            Refusal::AlreadyBooked { .. } => ResultCode::AlreadyBooked,
            Refusal::NoReservation => ResultCode::NoReservation,
            Refusal::SameSlot { .. } => ResultCode::SameSlot,
            Refusal::IdempotencyKeyReused { .. } => ResultCode::IdempotencyKeyReused,
            Refusal::PeopleTableFull { .. } => ResultCode::PeopleTableFull,
            Refusal::CapacityOverflow { .. } => ResultCode::CapacityOverflow,
            Refusal::PageTooLarge { .. } => ResultCode::PageTooLarge,
            Refusal::CapacityChanged { .. } => ResultCode::CapacityChanged,
            Refusal::LogUnavailable(_) => ResultCode::LogUnavailable,
        }
    }
}

impl fmt::Display for Refusal {
    /// Instants in UTC: a refusal does not know the campaign's offset
    /// (`Refusal::in_local_time` says them as the campaign's clocks do).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, crate::calendar::UtcOffset { minutes: 0 })
    }
}

/// A refusal said with its instants in a campaign's local time.
pub struct InLocalTime<'r> {
    refusal: &'r Refusal,
    offset: crate::calendar::UtcOffset,
}

impl fmt::Display for InLocalTime<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.refusal.write(f, self.offset)
    }
}

impl Refusal {
    /// The refusal in words, its instants at the campaign's `offset` from UTC
    /// (what a person there reads on their clock).
    pub fn in_local_time(&self, offset: crate::calendar::UtcOffset) -> InLocalTime<'_> {
        InLocalTime { refusal: self, offset }
    }

    fn write(&self, f: &mut fmt::Formatter<'_>, offset: crate::calendar::UtcOffset) -> fmt::Result {
        let at = |ms: &Option<i64>| {
            ms.map_or("never (the campaign is over)".to_string(), |ms| {
                let local = offset.format(ms);
                let local = local.trim_end_matches(":00.000");
                match offset.minutes {
                    0 => format!("at {local} UTC"),
                    minutes => {
                        let sign = if minutes < 0 { '-' } else { '+' };
                        let (hours, minutes) = (minutes.unsigned_abs() / 60, minutes.unsigned_abs() % 60);
                        format!("at {local} (UTC{sign}{hours:02}:{minutes:02})")
                    }
                }
            })
        };
        match self {
            Refusal::NotEligible { birth_date } => {
                write!(f, "born {birth_date}: not in an eligible cohort")
            }
            Refusal::NotYourRotationDay { digit, your_turn_opens_ms: None } => {
                write!(f, "today is not the day for birth-day digit {digit}, and the campaign is over")
            }
            Refusal::NotYourRotationDay { digit, your_turn_opens_ms } => {
                write!(
                    f,
                    "today is not the day for birth-day digit {digit}; your turn opens {}",
                    at(your_turn_opens_ms)
                )
            }
            Refusal::WindowClosed { next_open_ms: None } => {
                write!(f, "booking window closed for good: the campaign is over")
            }
            Refusal::WindowClosed { next_open_ms } => {
                write!(f, "booking window closed; next opening {}", at(next_open_ms))
            }
            Refusal::ProxyBookingClosed { cutoff_ms } => {
                write!(f, "family proxy booking closed (cutoff {})", at(cutoff_ms))
            }
            Refusal::UnknownSlot { slot } => write!(f, "no slot #{slot} in this campaign"),
            Refusal::UnknownSite { site_id } => write!(f, "no site {site_id} in this campaign"),
            Refusal::UnknownRegion { region_id } => {
                write!(f, "no site of this campaign is in region {region_id}")
            }
            Refusal::NotAServiceDay { date, first, days } => {
                let last = first.add_days(i32::from(*days) - 1);
                write!(f, "{date} is not a service day: appointments run from {first} to {last}")
            }
            Refusal::SlotInPast { slot } => write!(f, "{slot} has already begun"),
            Refusal::SlotFull { slot } => write!(f, "{slot} is full"),
            Refusal::AlreadyBooked { existing } => {
                write!(f, "has a reservation already, at {existing}: cancel or change that one")
            }
            Refusal::SameSlot { slot } => write!(f, "already holds {slot}"),
            Refusal::IdempotencyKeyReused { idempotency_key } => {
                write!(f, "idempotency key {idempotency_key} was used for a different command")
            }
            Refusal::PeopleTableFull { people_max } => {
                write!(f, "people table full ({people_max}); raise limits.people_max")
            }
            Refusal::CapacityOverflow { slot, capacity } => {
                let max = crate::state::SLOT_CAPACITY_MAX;
                write!(f, "{slot} has capacity {capacity}: adding would pass the largest a slot may have, {max}")
            }
            Refusal::PageTooLarge { requested, page_max } => {
                write!(f, "a page of {requested} sites: a page holds 1 to {page_max}")
            }
            Refusal::CapacityChanged { slot, capacity } => {
                write!(f, "{slot} has capacity {capacity} now, not the one the change expected")
            }
            Refusal::LogUnavailable(why) => {
                write!(f, "the log cannot take records: {why}; the change may or may not have been made")
            }
            other => write!(f, "{}", other.code().name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_said_as_utc_times() {
        let refusal = Refusal::WindowClosed { next_open_ms: Some(1_629_370_800_000) };
        assert_eq!(refusal.to_string(), "booking window closed; next opening at 2021-08-19 11:00 UTC");
        let refusal = Refusal::ProxyBookingClosed { cutoff_ms: Some(1_629_370_812_345) };
        assert_eq!(refusal.to_string(), "family proxy booking closed (cutoff at 2021-08-19 11:00:12.345 UTC)");
        let refusal = Refusal::WindowClosed { next_open_ms: None };
        assert_eq!(refusal.to_string(), "booking window closed for good: the campaign is over");
        // At the campaign's offset, as its clocks say it.
        let refusal = Refusal::WindowClosed { next_open_ms: Some(1_629_370_800_000) };
        let seoul = crate::calendar::UtcOffset { minutes: 540 };
        let said = refusal.in_local_time(seoul).to_string();
        assert_eq!(said, "booking window closed; next opening at 2021-08-19 20:00 (UTC+09:00)");
        let newfoundland = crate::calendar::UtcOffset { minutes: -210 };
        assert!(refusal.in_local_time(newfoundland).to_string().ends_with("at 2021-08-19 07:30 (UTC-03:30)"));
        let refusal = Refusal::NotYourRotationDay { digit: 3, your_turn_opens_ms: None };
        assert_eq!(refusal.to_string(), "today is not the day for birth-day digit 3, and the campaign is over");
    }

    #[test]
    fn already_booked_names_the_slot_held_and_what_to_do() {
        let refusal = Refusal::AlreadyBooked { existing: SlotIndex(100) };
        let said = format!("refused ({}): {refusal}", refusal.code().name());
        assert_eq!(
            said,
            "refused (already booked): has a reservation already, at slot #100: cancel or change that one"
        );
    }
}
