//! Who may book, and when: cohorts (R4), the ten-day rotation (R5), the daily
//! booking window (R6) and family proxy booking (R10).
//!
//! Pure functions of the campaign rules, the person's birth date, the channel
//! and `now_ms` (UTC milliseconds, passed in: the state machine reads no clock).

use crate::calendar::Date;
use crate::config::{CampaignRules, Cohort};
use crate::state::Refusal;

/// Who is asking: the person themself, a family member, or a call-centre operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    Person,
    /// A family member booking for the person; allowed until the cohort's cutoff.
    FamilyProxy,
    /// A call-centre operator (R10, R12); the operator id is written to the log.
    Operator {
        operator_id: u32,
    },
}

impl Channel {
    /// The operator recorded in the log; 0 when the person or a family member acted.
    pub fn operator_id(self) -> u32 {
        match self {
            Channel::Operator { operator_id } => operator_id,
            Channel::Person | Channel::FamilyProxy => 0,
        }
    }
}

/// The window during which bookings are accepted, as opened on `open_date`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BookingWindow {
    pub open_date: Date,
    pub opens_ms: i64,
    pub closes_ms: i64,
}

impl CampaignRules {
    #[inline]
    pub fn cohort_of(&self, birth_date: Date) -> Option<&Cohort> {
        self.cohorts.iter().find(|c| c.born_from <= birth_date && birth_date <= c.born_to)
    }

    fn window_opened_on(&self, open_date: Date) -> BookingWindow {
        let opens_ms = self.utc_offset.utc_ms(open_date, self.window_opens);
        BookingWindow { open_date, opens_ms, closes_ms: opens_ms + self.window_length_ms }
    }

    fn has_window_on(&self, date: Date) -> bool {
        self.rotation_start <= date && date <= self.window_last_open_date
    }

    /// The booking window open at `now_ms`, if any.
    pub fn window_at(&self, now_ms: i64) -> Option<BookingWindow> {
        let (today, _) = self.utc_offset.local(now_ms);
        // A window is shorter than a day, so only today's or yesterday's can be open.
        [today, today.add_days(-1)]
            .into_iter()
            .filter(|date| self.has_window_on(*date))
            .map(|date| self.window_opened_on(date))
            .find(|w| w.opens_ms <= now_ms && now_ms < w.closes_ms)
    }

    /// The first window opening after `now_ms`, or `None` when the campaign has no more.
    pub fn next_opening_after(&self, now_ms: i64) -> Option<i64> {
        let (today, _) = self.utc_offset.local(now_ms);
        let first = today.add_days(-1).max(self.rotation_start);
        (0..3)
            .map(|offset| first.add_days(offset))
            .filter(|date| self.has_window_on(*date))
            .map(|date| self.window_opened_on(date).opens_ms)
            .find(|opens_ms| *opens_ms > now_ms)
    }

    /// The rotation digit of a birth date: the last digit of its day of month.
    pub fn rotation_digit(birth_date: Date) -> u8 {
        (birth_date.day_of_month() % 10) as u8
    }

    /// When a person with this digit may next book, after rotation day `day_index`.
    fn next_turn_after(&self, day_index: usize, digit: u8) -> Option<i64> {
        let later_turn = (day_index + 1..self.rotation_digits.len())
            .find(|index| self.rotation_digits[*index] == digit)
            .unwrap_or(self.rotation_digits.len());
        let date = self.rotation_start.add_days(later_turn as i32);
        self.has_window_on(date).then(|| self.window_opened_on(date).opens_ms)
    }

    /// What holds for every request at `now_ms`: computed once per batch.
    pub fn moment(&self, now_ms: i64) -> BookingMoment {
        let window = self.window_at(now_ms);
        BookingMoment {
            now_ms,
            rotation_day: window.map(|w| self.rotation_start.days_until(w.open_date) as usize),
            next_open_ms: if window.is_some() { None } else { self.next_opening_after(now_ms) },
        }
    }

    /// Whether `birth_date` may book through `channel` at `now_ms`: R4, R5, R6, R10.
    pub fn check_booking(&self, birth_date: Date, channel: Channel, now_ms: i64) -> Result<(), Refusal> {
        self.check_booking_at(&self.moment(now_ms), birth_date, channel)
    }

    /// `check_booking` with the time-dependent part computed beforehand.
    #[inline(always)]
    pub fn check_booking_at(&self, moment: &BookingMoment, birth_date: Date, channel: Channel) -> Result<(), Refusal> {
        let cohort = self.cohort_of(birth_date).ok_or(Refusal::NotEligible { birth_date })?;
        if channel == Channel::FamilyProxy {
            match cohort.proxy_cutoff_ms {
                Some(cutoff_ms) if moment.now_ms < cutoff_ms => {}
                cutoff_ms => return Err(Refusal::ProxyBookingClosed { cutoff_ms }),
            }
        }
        let Some(day_index) = moment.rotation_day else {
            return Err(Refusal::WindowClosed { next_open_ms: moment.next_open_ms });
        };
        let Some(allowed) = self.rotation_digits.get(day_index) else {
            return Ok(());
        };
        let digit = Self::rotation_digit(birth_date);
        if *allowed == digit {
            return Ok(());
        }
        Err(Refusal::NotYourRotationDay { digit, your_turn_opens_ms: self.next_turn_after(day_index, digit) })
    }
}

/// The time-dependent part of the booking rules at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BookingMoment {
    pub now_ms: i64,
    /// The rotation day whose window is open (at or past the rotation's length:
    /// open to all); `None` when no window is open.
    pub rotation_day: Option<usize>,
    /// When no window is open: the next opening, if any.
    pub next_open_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::{TimeOfDay, MS_PER_DAY};

    fn at(rules: &CampaignRules, date: &str, hh_mm: &str, extra_ms: i64) -> i64 {
        let date = Date::parse(date).unwrap();
        rules.utc_offset.utc_ms(date, TimeOfDay::parse(hh_mm).unwrap()) + extra_ms
    }

    fn born(day: &str) -> Date {
        Date::parse(day).unwrap()
    }

    const NINE: &str = "1990-05-19"; // digit 9: the first rotation day
    const ZERO: &str = "1990-05-20"; // digit 0: the second rotation day

    #[test]
    fn window_opens_at_twenty_exactly() {
        let rules = CampaignRules::demo();
        let before = at(&rules, "2021-08-09", "19:59", 59_999);
        let opening = at(&rules, "2021-08-09", "20:00", 0);
        assert_eq!(
            rules.check_booking(born(NINE), Channel::Person, before),
            Err(Refusal::WindowClosed { next_open_ms: Some(opening) })
        );
        assert_eq!(rules.check_booking(born(NINE), Channel::Person, opening), Ok(()));
    }

    #[test]
    fn window_closes_at_eighteen_next_day() {
        let rules = CampaignRules::demo();
        let last = at(&rules, "2021-08-10", "17:59", 59_999);
        let closing = at(&rules, "2021-08-10", "18:00", 0);
        assert_eq!(rules.check_booking(born(NINE), Channel::Person, last), Ok(()));
        assert_eq!(
            rules.check_booking(born(NINE), Channel::Person, closing),
            Err(Refusal::WindowClosed { next_open_ms: Some(at(&rules, "2021-08-10", "20:00", 0)) })
        );
    }

    #[test]
    fn digit_zero_day_is_the_second_day() {
        let rules = CampaignRules::demo();
        let day_two = at(&rules, "2021-08-10", "20:00", 0);
        assert_eq!(rules.check_booking(born(ZERO), Channel::Person, day_two), Ok(()));
        let day_one = at(&rules, "2021-08-10", "17:59", 59_999);
        assert_eq!(
            rules.check_booking(born(ZERO), Channel::Person, day_one),
            Err(Refusal::NotYourRotationDay { digit: 0, your_turn_opens_ms: Some(day_two) })
        );
        // The digit-9 person missed their day: their next turn is after the rotation.
        assert_eq!(
            rules.check_booking(born(NINE), Channel::Person, day_two),
            Err(Refusal::NotYourRotationDay {
                digit: 9,
                your_turn_opens_ms: Some(at(&rules, "2021-08-19", "20:00", 0))
            })
        );
    }

    #[test]
    fn anyone_eligible_after_the_rotation() {
        let rules = CampaignRules::demo();
        let after = at(&rules, "2021-08-19", "20:00", 0);
        for day in ["1990-05-10", "1990-05-11", "1990-05-19", "1990-05-25"] {
            assert_eq!(rules.check_booking(born(day), Channel::Person, after), Ok(()));
            assert!(rules.check_booking(born(day), Channel::Person, after - 1).is_err());
        }
    }

    #[test]
    fn campaign_end_has_no_next_opening() {
        let rules = CampaignRules::demo();
        let end = at(&rules, "2021-09-19", "18:00", 0);
        assert_eq!(rules.check_booking(born(NINE), Channel::Person, end - 1), Ok(()));
        assert_eq!(
            rules.check_booking(born(NINE), Channel::Person, end),
            Err(Refusal::WindowClosed { next_open_ms: None })
        );
        assert_eq!(
            rules.next_opening_after(at(&rules, "2021-01-01", "00:00", 0)),
            Some(at(&rules, "2021-08-09", "20:00", 0))
        );
        assert!(rules.next_opening_after(end + 30 * MS_PER_DAY).is_none());
    }

    #[test]
    fn cohort_edges() {
        let rules = CampaignRules::demo();
        let open = at(&rules, "2021-08-19", "21:00", 0);
        assert_eq!(rules.check_booking(born("1972-01-01"), Channel::Person, open), Ok(()));
        assert_eq!(rules.check_booking(born("2003-12-31"), Channel::Person, open), Ok(()));
        for outside in ["1971-12-31", "2004-01-01"] {
            assert_eq!(
                rules.check_booking(born(outside), Channel::Person, open),
                Err(Refusal::NotEligible { birth_date: born(outside) })
            );
        }
    }

    #[test]
    fn family_proxy_until_cutoff_operators_always() {
        let rules = CampaignRules::demo();
        let cutoff = at(&rules, "2021-08-09", "18:00", 0);
        // Before the cutoff the window is not open yet, so test the cutoff refusal itself.
        let open = at(&rules, "2021-08-09", "20:00", 0);
        assert_eq!(
            rules.check_booking(born(NINE), Channel::FamilyProxy, open),
            Err(Refusal::ProxyBookingClosed { cutoff_ms: Some(cutoff) })
        );
        assert_eq!(
            rules.check_booking(born(NINE), Channel::FamilyProxy, cutoff - 1),
            Err(Refusal::WindowClosed { next_open_ms: Some(open) })
        );
        let operator = Channel::Operator { operator_id: 7 };
        assert_eq!(rules.check_booking(born(NINE), operator, open), Ok(()));
    }
}
