//! Campaign configuration: the TOML a campaign operator writes, checked field by
//! field at load and compiled into [`CampaignRules`], the form the state
//! machine reads (dates as day numbers, times as milliseconds).
//!
//! Every field, its default and its unit are documented in `docs/configuration.md`.

use serde::Deserialize;

use crate::calendar::{Date, TimeOfDay, UtcOffset, MINUTES_PER_DAY, MS_PER_MINUTE};

/// The most cohorts a campaign may define (each is checked per request).
pub const COHORTS_MAX: usize = 64;
/// The most days a rotation may have (the case used ten: one per digit).
pub const ROTATION_DAYS_MAX: usize = 10;
/// The most service days (days with appointments) a campaign may offer.
pub const SERVICE_DAYS_MAX: u16 = 366;
/// The most time slots a service day may have.
pub const SLOTS_PER_DAY_MAX: u16 = 288;
/// A person table larger than this would not fit the memory budget (32 B a bucket).
pub const PEOPLE_MAX_LIMIT: u64 = 1 << 31;
/// The largest page an availability query may ask for.
pub const AVAILABILITY_PAGE_MAX_LIMIT: u32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("campaign configuration is not valid TOML: {0}")]
    Syntax(#[from] toml::de::Error),
    #[error("campaign configuration field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.to_string(), reason: reason.into() }
}

/// The file as written by the operator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignFile {
    pub campaign: CampaignSection,
    #[serde(rename = "cohort")]
    pub cohorts: Vec<CohortSection>,
    pub rotation: RotationSection,
    #[serde(default)]
    pub window: WindowSection,
    pub service: ServiceSection,
    pub inventory: InventorySection,
    #[serde(default)]
    pub limits: LimitsSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSection {
    pub id: u32,
    pub name: String,
    #[serde(default = "default_utc_offset_minutes")]
    pub utc_offset_minutes: i16,
}

fn default_utc_offset_minutes() -> i16 {
    540
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CohortSection {
    pub id: u16,
    pub name: String,
    pub born_from: String,
    pub born_to: String,
    /// Local `YYYY-MM-DD HH:MM` until which family members may book for a person.
    pub proxy_cutoff: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationSection {
    pub start_date: String,
    /// The last digit of the birth day allowed on each rotation day, in order.
    pub digits: Vec<u8>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSection {
    #[serde(default = "default_opens")]
    pub opens: String,
    /// When this is not after `opens`, the window closes on the next day.
    #[serde(default = "default_closes")]
    pub closes: String,
    /// The last date on which a booking window opens; `None`: the last service day.
    pub last_open_date: Option<String>,
}

fn default_opens() -> String {
    "20:00".into()
}
fn default_closes() -> String {
    "18:00".into()
}

impl Default for WindowSection {
    fn default() -> Self {
        WindowSection { opens: default_opens(), closes: default_closes(), last_open_date: None }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    pub first_date: String,
    pub days: u16,
    pub day_start: String,
    pub slot_minutes: u16,
    pub slots_per_day: u16,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(try_from = "InventoryTable")]
pub enum InventorySection {
    /// Path of an inventory CSV (see docs/inventory.md), relative to the config file.
    Csv(String),
    /// A generated national-scale inventory, for demos and benchmarks.
    Generate(GeneratedInventory),
}

/// `[inventory]` as written: exactly one of its two sources.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryTable {
    csv: Option<String>,
    generate: Option<GeneratedInventory>,
}

impl TryFrom<InventoryTable> for InventorySection {
    type Error = String;

    fn try_from(table: InventoryTable) -> Result<InventorySection, String> {
        match (table.csv, table.generate) {
            (Some(path), None) => Ok(InventorySection::Csv(path)),
            (None, Some(generated)) => Ok(InventorySection::Generate(generated)),
            (Some(_), Some(_)) => Err("[inventory] has both `csv` and [inventory.generate]: keep one".into()),
            (None, None) => {
                Err("[inventory] needs `csv = \"file.csv\"` or an [inventory.generate] table (docs/configuration.md)"
                    .into())
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GeneratedInventory {
    pub sites: u32,
    pub regions: u16,
    /// Capacities vary from 1 to `2 × capacity_per_slot_mean − 1`, averaging this.
    pub capacity_per_slot_mean: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    #[serde(default = "default_people_max")]
    pub people_max: u64,
    #[serde(default = "default_availability_page_max")]
    pub availability_page_max: u32,
}

fn default_people_max() -> u64 {
    20_000_000
}
fn default_availability_page_max() -> u32 {
    100
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection { people_max: default_people_max(), availability_page_max: default_availability_page_max() }
    }
}

/// A cohort as the rules read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cohort {
    pub id: u16,
    pub name: String,
    pub born_from: Date,
    pub born_to: Date,
    pub proxy_cutoff_ms: Option<i64>,
}

/// The compiled campaign: everything the state machine needs, in its units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignRules {
    pub campaign_id: u32,
    pub name: String,
    pub utc_offset: UtcOffset,
    pub cohorts: Vec<Cohort>,
    pub rotation_start: Date,
    pub rotation_digits: Vec<u8>,
    pub window_opens: TimeOfDay,
    /// Length of one booking window; it may run past midnight.
    pub window_length_ms: i64,
    pub window_last_open_date: Date,
    pub service_first_date: Date,
    pub service_days: u16,
    pub day_start: TimeOfDay,
    pub slot_minutes: u16,
    pub slots_per_day: u16,
    pub inventory: InventorySection,
    pub people_max: u64,
    pub availability_page_max: u32,
}

impl CampaignFile {
    pub fn parse(text: &str) -> Result<CampaignFile, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Checks every field and compiles the rules; the error names the field.
    pub fn compile(&self) -> Result<CampaignRules, ConfigError> {
        let utc_offset_minutes = self.campaign.utc_offset_minutes;
        if !(-14 * 60..=14 * 60).contains(&utc_offset_minutes) {
            return Err(invalid("campaign.utc_offset_minutes", format!("{utc_offset_minutes} is outside -840..=840")));
        }
        if self.campaign.name.trim().is_empty() {
            return Err(invalid("campaign.name", "must not be empty"));
        }
        let utc_offset = UtcOffset { minutes: utc_offset_minutes };
        let cohorts = self.compile_cohorts(utc_offset)?;
        let (rotation_start, rotation_digits) = self.compile_rotation()?;
        let service = self.compile_service()?;
        let window_opens = time_field("window.opens", &self.window.opens)?;
        let window_closes = time_field("window.closes", &self.window.closes)?;
        let length_minutes = (i32::from(window_closes.minute_of_day()) - i32::from(window_opens.minute_of_day()))
            .rem_euclid(i32::from(MINUTES_PER_DAY));
        if length_minutes == 0 {
            return Err(invalid("window.closes", "must differ from window.opens"));
        }
        let last_service_date = service.0.add_days(i32::from(self.service.days) - 1);
        let window_last_open_date = match &self.window.last_open_date {
            Some(text) => date_field("window.last_open_date", text)?,
            None => last_service_date,
        };
        if rotation_start > last_service_date {
            return Err(invalid(
                "rotation.start_date",
                format!("{rotation_start} is after the last service day {last_service_date}: nothing could be booked"),
            ));
        }
        if window_last_open_date < rotation_start {
            return Err(invalid(
                "window.last_open_date",
                format!("{window_last_open_date} is before rotation.start_date {rotation_start}"),
            ));
        }
        self.check_limits()?;
        if let InventorySection::Generate(generated) = &self.inventory {
            check_generated(generated)?;
        }
        Ok(CampaignRules {
            campaign_id: self.campaign.id,
            name: self.campaign.name.clone(),
            utc_offset,
            cohorts,
            rotation_start,
            rotation_digits,
            window_opens,
            window_length_ms: i64::from(length_minutes) * MS_PER_MINUTE,
            window_last_open_date,
            service_first_date: service.0,
            service_days: self.service.days,
            day_start: service.1,
            slot_minutes: self.service.slot_minutes,
            slots_per_day: self.service.slots_per_day,
            inventory: self.inventory.clone(),
            people_max: self.limits.people_max,
            availability_page_max: self.limits.availability_page_max,
        })
    }

    fn compile_cohorts(&self, utc_offset: UtcOffset) -> Result<Vec<Cohort>, ConfigError> {
        if self.cohorts.is_empty() {
            return Err(invalid("cohort", "at least one [[cohort]] is required"));
        }
        if self.cohorts.len() > COHORTS_MAX {
            return Err(invalid("cohort", format!("{} cohorts; at most {COHORTS_MAX}", self.cohorts.len())));
        }
        let mut cohorts = Vec::with_capacity(self.cohorts.len());
        for (index, section) in self.cohorts.iter().enumerate() {
            let field = |name: &str| format!("cohort[{index}].{name}");
            // Birth-date bounds may lie outside the protocol's dates ("born
            // before 1950" as 1800-01-01..=1949-12-31): no date is sent of them.
            let born_from = any_date_field(&field("born_from"), &section.born_from)?;
            let born_to = any_date_field(&field("born_to"), &section.born_to)?;
            if born_to < born_from {
                return Err(invalid(&field("born_to"), format!("{born_to} is before born_from {born_from}")));
            }
            if cohorts.iter().any(|c: &Cohort| c.id == section.id) {
                return Err(invalid(&field("id"), format!("{} is used twice", section.id)));
            }
            let proxy_cutoff_ms = match &section.proxy_cutoff {
                None => None,
                Some(text) => Some(local_datetime_field(&field("proxy_cutoff"), text, utc_offset)?),
            };
            cohorts.push(Cohort { id: section.id, name: section.name.clone(), born_from, born_to, proxy_cutoff_ms });
        }
        Ok(cohorts)
    }

    fn compile_rotation(&self) -> Result<(Date, Vec<u8>), ConfigError> {
        let start = date_field("rotation.start_date", &self.rotation.start_date)?;
        let digits = &self.rotation.digits;
        if digits.len() > ROTATION_DAYS_MAX {
            return Err(invalid("rotation.digits", format!("{} days; at most {ROTATION_DAYS_MAX}", digits.len())));
        }
        if let Some(digit) = digits.iter().find(|d| **d > 9) {
            return Err(invalid("rotation.digits", format!("{digit} is not a digit 0..=9")));
        }
        Ok((start, digits.clone()))
    }

    fn compile_service(&self) -> Result<(Date, TimeOfDay), ConfigError> {
        let first = date_field("service.first_date", &self.service.first_date)?;
        let day_start = time_field("service.day_start", &self.service.day_start)?;
        let service = &self.service;
        if service.days == 0 || service.days > SERVICE_DAYS_MAX {
            return Err(invalid("service.days", format!("{} is outside 1..={SERVICE_DAYS_MAX}", service.days)));
        }
        if service.slots_per_day == 0 || service.slots_per_day > SLOTS_PER_DAY_MAX {
            return Err(invalid(
                "service.slots_per_day",
                format!("{} is outside 1..={SLOTS_PER_DAY_MAX}", service.slots_per_day),
            ));
        }
        check_date_range("service.days", first.add_days(i32::from(service.days) - 1))?;
        if service.slot_minutes == 0 {
            return Err(invalid("service.slot_minutes", "must be at least 1"));
        }
        let day_end_minute =
            u32::from(day_start.minute_of_day()) + u32::from(service.slot_minutes) * u32::from(service.slots_per_day);
        if day_end_minute > u32::from(MINUTES_PER_DAY) {
            return Err(invalid(
                "service.slots_per_day",
                format!(
                    "{} slots of {} minutes from {day_start} run past midnight",
                    service.slots_per_day, service.slot_minutes
                ),
            ));
        }
        Ok((first, day_start))
    }

    fn check_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        if limits.people_max == 0 || limits.people_max > PEOPLE_MAX_LIMIT {
            return Err(invalid(
                "limits.people_max",
                format!("{} is outside 1..={PEOPLE_MAX_LIMIT}", limits.people_max),
            ));
        }
        if limits.availability_page_max == 0 || limits.availability_page_max > AVAILABILITY_PAGE_MAX_LIMIT {
            return Err(invalid(
                "limits.availability_page_max",
                format!("{} is outside 1..={AVAILABILITY_PAGE_MAX_LIMIT}", limits.availability_page_max),
            ));
        }
        Ok(())
    }
}

fn check_generated(generated: &GeneratedInventory) -> Result<(), ConfigError> {
    if generated.sites == 0 || generated.sites > crate::inventory::SITES_MAX {
        return Err(invalid(
            "inventory.generate.sites",
            format!("{} is outside 1..={}", generated.sites, crate::inventory::SITES_MAX),
        ));
    }
    if generated.regions == 0 || u32::from(generated.regions) > generated.sites {
        return Err(invalid("inventory.generate.regions", format!("{} is outside 1..=sites", generated.regions)));
    }
    if generated.capacity_per_slot_mean == 0 || generated.capacity_per_slot_mean > 1 << 20 {
        return Err(invalid(
            "inventory.generate.capacity_per_slot_mean",
            format!("{} is outside 1..=1048576", generated.capacity_per_slot_mean),
        ));
    }
    Ok(())
}

fn date_field(field: &str, text: &str) -> Result<Date, ConfigError> {
    let date = any_date_field(field, text)?;
    check_date_range(field, date)?;
    Ok(date)
}

/// A date of any year (`date_field` without the protocol's range).
fn any_date_field(field: &str, text: &str) -> Result<Date, ConfigError> {
    Date::parse(text).map_err(|e| invalid(field, e.to_string()))
}

/// Refuses a date outside 1900-01-01..=2099-12-31: the protocol carries no other.
fn check_date_range(field: &str, date: Date) -> Result<(), ConfigError> {
    if (crate::calendar::DATE_DAYS_MIN..=crate::calendar::DATE_DAYS_MAX).contains(&date.days_since_epoch()) {
        return Ok(());
    }
    Err(invalid(field, format!("{date} is outside 1900-01-01..=2099-12-31, the dates the protocol carries")))
}

fn time_field(field: &str, text: &str) -> Result<TimeOfDay, ConfigError> {
    TimeOfDay::parse(text).map_err(|e| invalid(field, e.to_string()))
}

fn local_datetime_field(field: &str, text: &str, offset: UtcOffset) -> Result<i64, ConfigError> {
    let reason = || format!("`{text}` is not a local date and time of the form YYYY-MM-DD HH:MM");
    let (date, time) = text.trim().split_once(' ').ok_or_else(|| invalid(field, reason()))?;
    let date = Date::parse(date).map_err(|_| invalid(field, reason()))?;
    check_date_range(field, date)?;
    let time = TimeOfDay::parse(time).map_err(|_| invalid(field, reason()))?;
    Ok(offset.utc_ms(date, time))
}

impl CampaignRules {
    pub fn parse(text: &str) -> Result<CampaignRules, ConfigError> {
        CampaignFile::parse(text)?.compile()
    }

    /// The demo campaign `yeyak` creates on first start: the real case's
    /// 18–49 cohort at national scale (15,000 sites × 30 days × 18 slots).
    pub fn demo() -> CampaignRules {
        CampaignRules::parse(DEMO_CAMPAIGN_TOML).expect("the embedded demo campaign is valid")
    }

    pub fn last_service_date(&self) -> Date {
        self.service_first_date.add_days(i32::from(self.service_days) - 1)
    }
}

/// The embedded demo campaign, written to the data directory on first start.
pub const DEMO_CAMPAIGN_TOML: &str = include_str!("demo_campaign.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn with(edit: impl Fn(&mut String)) -> Result<CampaignRules, ConfigError> {
        let mut text = DEMO_CAMPAIGN_TOML.to_string();
        edit(&mut text);
        CampaignRules::parse(&text)
    }

    fn field_of(error: ConfigError) -> String {
        match error {
            ConfigError::Invalid { field, .. } => field,
            other => panic!("expected a field error, got {other}"),
        }
    }

    #[test]
    fn demo_campaign_compiles() {
        let rules = CampaignRules::demo();
        assert_eq!(rules.rotation_digits.len(), 10);
        assert_eq!(rules.window_length_ms, 22 * 60 * MS_PER_MINUTE);
        assert_eq!(rules.slots_per_day, 18);
    }

    #[test]
    fn bad_fields_are_named() {
        let e = with(|t| *t = t.replace("born_to = \"2003-12-31\"", "born_to = \"1960-01-01\""));
        assert_eq!(field_of(e.unwrap_err()), "cohort[0].born_to");
        let e = with(|t| *t = t.replace("digits = [9, 0,", "digits = [19, 0,"));
        assert_eq!(field_of(e.unwrap_err()), "rotation.digits");
        let e = with(|t| *t = t.replace("opens = \"20:00\"", "opens = \"25:00\""));
        assert_eq!(field_of(e.unwrap_err()), "window.opens");
        let e = with(|t| *t = t.replace("slots_per_day = 18", "slots_per_day = 100"));
        assert_eq!(field_of(e.unwrap_err()), "service.slots_per_day");
        let e = with(|t| *t = t.replace("people_max = 20_000_000", "people_max = 0"));
        assert_eq!(field_of(e.unwrap_err()), "limits.people_max");
    }

    #[test]
    fn dates_the_protocol_cannot_carry_are_refused() {
        let e = with(|t| *t = t.replace("first_date = \"2021-08-26\"", "first_date = \"9999-12-31\""));
        assert_eq!(field_of(e.unwrap_err()), "service.first_date");
        let e = with(|t| *t = t.replace("first_date = \"2021-08-26\"", "first_date = \"2099-12-15\""));
        assert_eq!(field_of(e.unwrap_err()), "service.days", "the 30th day is in 2100");
        let e = with(|t| *t = t.replace("start_date = \"2021-08-09\"", "start_date = \"2030-08-09\""));
        assert_eq!(field_of(e.unwrap_err()), "rotation.start_date", "bookings would open after the last service day");
        let e = with(|t| *t = t.replace("proxy_cutoff = \"2021-08-09 18:00\"", "proxy_cutoff = \"0021-08-09 18:00\""));
        assert_eq!(field_of(e.unwrap_err()), "cohort[0].proxy_cutoff", "a year mistyped");
        // Birth-date bounds are never sent: an open lower bound is fine.
        assert!(with(|t| *t = t.replacen("born_from = \"", "born_from = \"1800-01-01\" #", 1)).is_ok());
    }

    #[test]
    fn unknown_fields_and_bad_syntax_are_refused() {
        assert!(matches!(with(|t| t.push_str("\n[surprise]\nx = 1\n")), Err(ConfigError::Syntax(_))));
        assert!(matches!(with(|t| t.push_str("\n[[[")), Err(ConfigError::Syntax(_))));
    }

    #[test]
    fn the_inventory_has_exactly_one_source() {
        let both =
            with(|t| *t = t.replace("[inventory.generate]", "[inventory]\ncsv = \"x.csv\"\n[inventory.generate]"));
        assert!(both.unwrap_err().to_string().contains("has both `csv` and [inventory.generate]: keep one"));
        let start_of = |t: &str| t.find("[inventory.generate]").unwrap();
        let neither = with(|t| {
            let at = start_of(t);
            let end = at + t[at..].find("\n\n").unwrap();
            *t = format!("{}[inventory]{}", &t[..at], &t[end..]);
        });
        assert!(neither
            .unwrap_err()
            .to_string()
            .contains("needs `csv = \"file.csv\"` or an [inventory.generate] table"));
        let csv = with(|t| {
            let at = start_of(t);
            let end = at + t[at..].find("\n\n").unwrap();
            *t = format!("{}[inventory]\ncsv = \"sites.csv\"{}", &t[..at], &t[end..]);
        });
        assert_eq!(csv.unwrap().inventory, InventorySection::Csv("sites.csv".into()));
    }
}
