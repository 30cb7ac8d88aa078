//! Civil dates and times without a time-zone database.
//!
//! A campaign lives in one fixed UTC offset (Asia/Seoul has had no daylight
//! saving time since 1988), so local time is UTC plus a constant. Dates are
//! counted in days since 1970-01-01 (proleptic Gregorian), using Howard
//! Hinnant's `days_from_civil` algorithm.

use std::fmt;

pub const MS_PER_SECOND: i64 = 1_000;
pub const MS_PER_MINUTE: i64 = 60 * MS_PER_SECOND;
pub const MS_PER_DAY: i64 = 24 * 60 * MS_PER_MINUTE;
pub const MINUTES_PER_DAY: u16 = 24 * 60;

/// The first date yeyak takes (1900-01-01), as days since 1970-01-01: the
/// protocol carries no other, so campaign.toml may name no other.
pub const DATE_DAYS_MIN: i32 = -25_567;
/// The last date yeyak takes (2099-12-31), as days since 1970-01-01.
pub const DATE_DAYS_MAX: i32 = 47_481;

/// A calendar date, stored as days since 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    days_since_epoch: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a date of the form YYYY-MM-DD (e.g. 2021-08-09)")]
pub struct DateParseError {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a time of day of the form HH:MM between 00:00 and 23:59")]
pub struct TimeOfDayParseError {
    pub text: String,
}

impl Date {
    pub const fn from_days_since_epoch(days_since_epoch: i32) -> Date {
        Date { days_since_epoch }
    }

    pub const fn days_since_epoch(self) -> i32 {
        self.days_since_epoch
    }

    /// Returns `None` when the month or day does not exist (2021-02-29, 2021-13-01).
    pub fn from_ymd(year: i32, month: u32, day: u32) -> Option<Date> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        if !(-100_000..=100_000).contains(&year) {
            return None;
        }
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let year_of_era = y.rem_euclid(400);
        let month_from_march = (month + 9) % 12;
        let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
        let day_of_era = year_of_era as u32 * 365 + year_of_era as u32 / 4 - year_of_era as u32 / 100 + day_of_year;
        Some(Date { days_since_epoch: era * 146_097 + day_of_era as i32 - 719_468 })
    }

    /// (year, month, day) of this date.
    pub fn ymd(self) -> (i32, u32, u32) {
        let z = self.days_since_epoch + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097) as u32;
        let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_from_march = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
        let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
        let year = year_of_era as i32 + era * 400 + i32::from(month <= 2);
        (year, month, day)
    }

    pub fn day_of_month(self) -> u32 {
        self.ymd().2
    }

    pub fn add_days(self, days: i32) -> Date {
        Date { days_since_epoch: self.days_since_epoch + days }
    }

    pub fn days_until(self, later: Date) -> i32 {
        later.days_since_epoch - self.days_since_epoch
    }

    pub fn parse(text: &str) -> Result<Date, DateParseError> {
        let error = || DateParseError { text: text.to_string() };
        let mut parts = text.trim().splitn(3, '-');
        let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(error());
        };
        // Digits only: `parse` would take a sign ("+021" as year 21).
        let digits = |part: &str, width: usize| part.len() == width && part.bytes().all(|b| b.is_ascii_digit());
        if !digits(y, 4) || !digits(m, 2) || !digits(d, 2) {
            return Err(error());
        }
        let year = y.parse().map_err(|_| error())?;
        let month = m.parse().map_err(|_| error())?;
        let day = d.parse().map_err(|_| error())?;
        Date::from_ymd(year, month, day).ok_or_else(error)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

/// Minutes after local midnight, 0..1440.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay {
    minute_of_day: u16,
}

impl TimeOfDay {
    pub fn from_minute_of_day(minute_of_day: u16) -> Option<TimeOfDay> {
        (minute_of_day < MINUTES_PER_DAY).then_some(TimeOfDay { minute_of_day })
    }

    pub const fn minute_of_day(self) -> u16 {
        self.minute_of_day
    }

    pub fn ms_of_day(self) -> i64 {
        i64::from(self.minute_of_day) * MS_PER_MINUTE
    }

    pub fn parse(text: &str) -> Result<TimeOfDay, TimeOfDayParseError> {
        let error = || TimeOfDayParseError { text: text.to_string() };
        let (h, m) = text.trim().split_once(':').ok_or_else(error)?;
        if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(error());
        }
        let hour: u16 = h.parse().map_err(|_| error())?;
        let minute: u16 = m.parse().map_err(|_| error())?;
        if hour > 23 || minute > 59 {
            return Err(error());
        }
        Ok(TimeOfDay { minute_of_day: hour * 60 + minute })
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.minute_of_day / 60, self.minute_of_day % 60)
    }
}

/// A fixed offset from UTC, in minutes (Asia/Seoul is +540).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcOffset {
    pub minutes: i16,
}

impl UtcOffset {
    /// The local date and the milliseconds since local midnight of a UTC instant.
    pub fn local(self, utc_ms: i64) -> (Date, i64) {
        let local_ms = utc_ms + i64::from(self.minutes) * MS_PER_MINUTE;
        let days = local_ms.div_euclid(MS_PER_DAY);
        let days = i32::try_from(days).unwrap_or(if days < 0 { i32::MIN } else { i32::MAX });
        (Date::from_days_since_epoch(days), local_ms.rem_euclid(MS_PER_DAY))
    }

    /// The UTC instant of a local date and time.
    pub fn utc_ms(self, date: Date, time: TimeOfDay) -> i64 {
        i64::from(date.days_since_epoch()) * MS_PER_DAY + time.ms_of_day() - i64::from(self.minutes) * MS_PER_MINUTE
    }

    /// Renders a UTC instant as local `YYYY-MM-DD HH:MM:SS.mmm`.
    pub fn format(self, utc_ms: i64) -> String {
        let (date, ms_of_day) = self.local(utc_ms);
        let seconds = ms_of_day / MS_PER_SECOND;
        format!(
            "{date} {:02}:{:02}:{:02}.{:03}",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60,
            ms_of_day % MS_PER_SECOND
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_over_four_centuries() {
        for days in -146_097..146_097 {
            let date = Date::from_days_since_epoch(days);
            let (y, m, d) = date.ymd();
            assert_eq!(Date::from_ymd(y, m, d), Some(date), "{y}-{m}-{d}");
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(Date::from_ymd(1970, 1, 1).unwrap().days_since_epoch(), 0);
        assert_eq!(Date::parse("2021-08-09").unwrap().days_since_epoch(), 18_848);
        assert_eq!(Date::parse("2000-02-29").unwrap().to_string(), "2000-02-29");
        assert!(Date::parse("2021-02-29").is_err());
        assert!(Date::parse("2021-8-09").is_err());
        assert!(Date::parse("garbage").is_err());
        for signed in ["+021-08-26", "-021-08-26", "2021-+8-26", "2021-08-+6"] {
            assert!(Date::parse(signed).is_err(), "{signed}");
        }
        assert!(TimeOfDay::parse("+9:00").is_err() && TimeOfDay::parse("09:+0").is_err());
        assert_eq!(TimeOfDay::parse("20:00").unwrap().minute_of_day(), 1200);
        assert!(TimeOfDay::parse("24:00").is_err());
    }

    #[test]
    fn seoul_local_time() {
        let seoul = UtcOffset { minutes: 540 };
        let date = Date::parse("2021-08-09").unwrap();
        let eight_pm = TimeOfDay::parse("20:00").unwrap();
        let utc = seoul.utc_ms(date, eight_pm);
        assert_eq!(seoul.local(utc), (date, eight_pm.ms_of_day()));
        assert_eq!(seoul.format(utc - 1), "2021-08-09 19:59:59.999");
    }
}
