//! What a campaign offers (R1): sites in regions, and slots (site, service
//! date, time of day) each with a capacity.
//!
//! Slots are numbered densely, site-major: `SlotIndex = (site_index × days +
//! day_index) × slots_per_day + time_index`. The number is stable for the life
//! of a campaign and is what the log, the protocol and the counters use.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use crate::calendar::{Date, TimeOfDay, MS_PER_DAY, MS_PER_MINUTE};
use crate::config::{CampaignRules, GeneratedInventory, InventorySection};

/// The most sites a campaign may have.
pub const SITES_MAX: u32 = 1 << 20;
/// The most slots a campaign may have; `u32::MAX` stays free as "no slot".
pub const SLOTS_MAX: u64 = 1 << 31;
/// The longest site name kept, in bytes.
pub const SITE_NAME_BYTES_MAX: usize = 200;

/// A slot's number: see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotIndex(pub u32);

impl fmt::Display for SlotIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot #{}", self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub id: u32,
    pub region_id: u16,
    pub name: String,
}

/// What a slot number means, in a log segment's header (docs/log-format.md):
/// a slot is `(site index × days + day index) × slots_per_day + time index`,
/// so the numbers keep their site, date and time exactly when the layout
/// (first date, days, slots a day, day start, slot length) is the same and
/// the sites are the same in the same order, with sites added at the end
/// only (a snapshot records the stamp too, and is restored into such a
/// larger inventory: docs/snapshot-format.md). All zeros: not recorded (a
/// segment written before stamps were).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InventoryStamp {
    /// CRC32C of the layout's 12 bytes (docs/log-format.md).
    pub layout_crc: u32,
    pub site_count: u32,
    /// CRC32C of the site ids, 4 bytes each, little-endian, in order.
    pub sites_crc: u32,
}

impl InventoryStamp {
    pub fn recorded(&self) -> bool {
        self.site_count != 0
    }

    /// The stamp in four bytes, as a snapshot's header records it with the
    /// site count beside it: CRC32C of `layout_crc` and `sites_crc`, u32 LE each.
    pub fn digest(&self) -> u32 {
        let mut bytes = [0u8; 8];
        bytes[0..4].copy_from_slice(&self.layout_crc.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.sites_crc.to_le_bytes());
        crate::crc::crc32c(&bytes)
    }

    fn of(layout_crc: u32, sites: &[Site]) -> InventoryStamp {
        InventoryStamp { layout_crc, site_count: sites.len() as u32, sites_crc: sites_crc(sites) }
    }

    /// Why slot numbers written under this stamp would mean other slots in
    /// an inventory of `layout_crc` and `sites`, if they would.
    fn differs_from(&self, layout_crc: u32, sites: &[Site]) -> Option<String> {
        if !self.recorded() {
            return None;
        }
        if self.layout_crc != layout_crc {
            return Some(
                "other service days or time slots (first date, days, slots a day, day start or slot length)".into(),
            );
        }
        let count = self.site_count as usize;
        if count > sites.len() {
            return Some(format!("{count} sites, where campaign.toml has {}", sites.len()));
        }
        if self.sites_crc != sites_crc(&sites[..count]) {
            return Some(format!("other sites, or the same in another order, among the first {count}"));
        }
        None
    }
}

/// CRC32C of: the first date (days since 1970-01-01, i32), days, slots a
/// day, the day's start (minutes after midnight) and the slot length
/// (minutes), each u16: 12 bytes, little-endian.
fn layout_crc(first_date: Date, days: u16, slots_per_day: u16, day_start: TimeOfDay, slot_minutes: u16) -> u32 {
    let mut bytes = [0u8; 12];
    bytes[0..4].copy_from_slice(&first_date.days_since_epoch().to_le_bytes());
    bytes[4..6].copy_from_slice(&days.to_le_bytes());
    bytes[6..8].copy_from_slice(&slots_per_day.to_le_bytes());
    bytes[8..10].copy_from_slice(&day_start.minute_of_day().to_le_bytes());
    bytes[10..12].copy_from_slice(&slot_minutes.to_le_bytes());
    crate::crc::crc32c(&bytes)
}

/// CRC32C of the site ids, u32 little-endian each.
fn sites_crc(sites: &[Site]) -> u32 {
    sites.iter().fold(0, |crc, site| crate::crc::crc32c_append(crc, &site.id.to_le_bytes()))
}

/// Where and when a slot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotAddress {
    pub site_id: u32,
    pub date: Date,
    pub time: TimeOfDay,
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read inventory file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("inventory line {line}: {reason}")]
    Row { line: u64, reason: String },
    #[error("inventory: {0}")]
    Shape(String),
}

/// Sites, the slot layout and each slot's initial capacity.
#[derive(Debug)]
pub struct Inventory {
    sites: Vec<Site>,
    site_index_by_id: HashMap<u32, u32>,
    site_indexes_by_region: BTreeMap<u16, Vec<u32>>,
    first_date: Date,
    days: u16,
    day_start: TimeOfDay,
    slot_minutes: u16,
    slots_per_day: u16,
    utc_offset: crate::calendar::UtcOffset,
    /// UTC instant of local midnight starting the first service day.
    first_midnight_ms: i64,
    /// Slots of one site over the whole campaign (`days × slots_per_day`).
    slots_per_site: u32,
    /// `slots_per_site` as a multiplier for Lemire's remainder by
    /// multiplication (`position_in_site`): `u64::MAX / d + 1`.
    slots_per_site_magic: u64,
    initial_capacity: Vec<u32>,
}

/// When `slot`'s appointment begins in its day, for a day of `slots_per_day`
/// slots of `slot_minutes` from `day_start` (slots are numbered a day at a
/// time: see `Inventory`); `None` past midnight.
pub fn slot_time_of_day(
    slot: SlotIndex,
    day_start: TimeOfDay,
    slot_minutes: u16,
    slots_per_day: u16,
) -> Option<TimeOfDay> {
    let time_index = slot.0 % u32::from(slots_per_day.max(1));
    let minute = u32::from(day_start.minute_of_day()) + time_index * u32::from(slot_minutes);
    TimeOfDay::from_minute_of_day(u16::try_from(minute).ok()?)
}

impl Inventory {
    /// Builds the inventory the rules name: generated, or read from CSV
    /// (a relative path is taken from `config_dir`).
    pub fn load(rules: &CampaignRules, config_dir: &Path) -> Result<Inventory, InventoryError> {
        Inventory::plan(rules, config_dir)?.build()
    }

    /// The first half of `load`: reads and checks a CSV file (or nothing, for
    /// a generated inventory) and knows how many slots the inventory will
    /// have, before their tables are allocated, so that a caller can refuse
    /// an inventory too large for this machine's memory.
    pub fn plan<'a>(rules: &'a CampaignRules, config_dir: &Path) -> Result<InventoryPlan<'a>, InventoryError> {
        let source = match &rules.inventory {
            InventorySection::Generate(generated) => PlanSource::Generate(generated),
            InventorySection::Csv(path) => {
                let path = config_dir.join(path);
                let text = std::fs::read(&path)
                    .map_err(|source| InventoryError::Read { path: path.display().to_string(), source })?;
                Inventory::csv_plan(&text)?
            }
        };
        let plan = InventoryPlan { rules, source };
        // Refused for its shape before anyone asks whether it fits in memory.
        if plan.slot_count() > SLOTS_MAX {
            return Err(InventoryError::Shape(format!("{} slots; at most {SLOTS_MAX}", plan.slot_count())));
        }
        Ok(plan)
    }

    /// Slots of one site over the whole campaign. Both factors are u16s: the
    /// product fits a u32. The rules check that neither is zero; `max(1)`
    /// keeps the remainder's multiplier defined regardless.
    fn slots_per_site(rules: &CampaignRules) -> u32 {
        (u32::from(rules.service_days) * u32::from(rules.slots_per_day)).max(1)
    }

    fn empty(rules: &CampaignRules, sites: Vec<Site>) -> Result<Inventory, InventoryError> {
        let slots_per_site = Inventory::slots_per_site(rules);
        let slot_count = sites.len() as u64 * u64::from(slots_per_site);
        if slot_count > SLOTS_MAX {
            return Err(InventoryError::Shape(format!("{slot_count} slots; at most {SLOTS_MAX}")));
        }
        let mut site_index_by_id = HashMap::with_capacity(sites.len());
        let mut site_indexes_by_region: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
        for (index, site) in sites.iter().enumerate() {
            if site_index_by_id.insert(site.id, index as u32).is_some() {
                return Err(InventoryError::Shape(format!("site id {} is used twice", site.id)));
            }
            site_indexes_by_region.entry(site.region_id).or_default().push(index as u32);
        }
        Ok(Inventory {
            sites,
            site_index_by_id,
            site_indexes_by_region,
            first_date: rules.service_first_date,
            days: rules.service_days,
            day_start: rules.day_start,
            slot_minutes: rules.slot_minutes,
            slots_per_day: rules.slots_per_day,
            utc_offset: rules.utc_offset,
            first_midnight_ms: i64::from(rules.service_first_date.days_since_epoch()) * MS_PER_DAY
                - i64::from(rules.utc_offset.minutes) * MS_PER_MINUTE,
            slots_per_site,
            slots_per_site_magic: (u64::MAX / u64::from(slots_per_site)).wrapping_add(1),
            initial_capacity: vec![0; slot_count as usize],
        })
    }

    /// A national-scale demo inventory, the same for the same parameters.
    pub fn generate(rules: &CampaignRules, generated: &GeneratedInventory) -> Result<Inventory, InventoryError> {
        let mut inventory = Inventory::empty(rules, generated_sites(generated))?;
        let spread = u64::from(generated.capacity_per_slot_mean) * 2 - 1;
        for (slot, capacity) in inventory.initial_capacity.iter_mut().enumerate() {
            *capacity = 1 + (crate::mix64(slot as u64) % spread) as u32;
        }
        Ok(inventory)
    }

    /// Reads `site_id,region_id,site_name,date,time,capacity` rows (docs/inventory.md).
    pub fn from_csv(rules: &CampaignRules, bytes: &[u8]) -> Result<Inventory, InventoryError> {
        InventoryPlan { rules, source: Inventory::csv_plan(bytes)? }.build()
    }

    /// The rows of a CSV inventory, and its sites in the order they first appear.
    fn csv_plan(bytes: &[u8]) -> Result<PlanSource<'static>, InventoryError> {
        let rows = parse_csv_rows(bytes)?;
        let mut sites: Vec<Site> = Vec::new();
        let mut seen: HashMap<u32, usize> = HashMap::new();
        for row in &rows {
            match seen.get(&row.site.id) {
                Some(index) if sites[*index] != row.site => {
                    return Err(row_error(
                        row.line,
                        format!("site {} has a different region or name than on an earlier line", row.site.id),
                    ));
                }
                Some(_) => {}
                None => {
                    seen.insert(row.site.id, sites.len());
                    sites.push(row.site.clone());
                }
            }
        }
        if sites.is_empty() {
            return Err(InventoryError::Shape("no sites: the file has no row after its header".into()));
        }
        if sites.len() as u64 > u64::from(SITES_MAX) {
            return Err(InventoryError::Shape(format!("{} sites; at most {SITES_MAX}", sites.len())));
        }
        Ok(PlanSource::Csv { rows, sites })
    }

    fn fill_from_csv(rules: &CampaignRules, rows: &[CsvRow], sites: Vec<Site>) -> Result<Inventory, InventoryError> {
        let mut inventory = Inventory::empty(rules, sites)?;
        let mut filled = vec![false; inventory.initial_capacity.len()];
        for row in rows {
            let slot =
                inventory.slot_index(row.site.id, row.date, row.time).map_err(|reason| row_error(row.line, reason))?;
            if std::mem::replace(&mut filled[slot.0 as usize], true) {
                return Err(row_error(row.line, format!("{slot} is listed twice")));
            }
            inventory.initial_capacity[slot.0 as usize] = row.capacity;
        }
        Ok(inventory)
    }

    pub fn slot_count(&self) -> u32 {
        self.initial_capacity.len() as u32
    }

    /// This inventory's stamp (`InventoryStamp`).
    pub fn stamp(&self) -> InventoryStamp {
        self.stamp_of_first(self.sites.len()).expect("every site is among the sites")
    }

    /// The stamp of the inventory of this one's first `site_count` sites
    /// (same layout); `None` if this one has fewer sites. Slots are numbered site by site, so that inventory's
    /// slots are this one's first.
    pub fn stamp_of_first(&self, site_count: usize) -> Option<InventoryStamp> {
        let sites = self.sites.get(..site_count)?;
        let layout = layout_crc(self.first_date, self.days, self.slots_per_day, self.day_start, self.slot_minutes);
        Some(InventoryStamp::of(layout, sites))
    }

    /// The slots of this inventory's first `site_count` sites.
    pub fn slots_of_first(&self, site_count: u32) -> u64 {
        u64::from(site_count) * u64::from(self.slots_per_site)
    }

    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    pub fn initial_capacity(&self) -> &[u32] {
        &self.initial_capacity
    }

    pub fn site_index(&self, site_id: u32) -> Option<u32> {
        self.site_index_by_id.get(&site_id).copied()
    }

    pub fn region_site_indexes(&self, region_id: u16) -> &[u32] {
        self.site_indexes_by_region.get(&region_id).map_or(&[], Vec::as_slice)
    }

    pub fn slots_per_day(&self) -> u16 {
        self.slots_per_day
    }

    /// The service-day number of a date, if the campaign serves on it.
    pub fn day_index(&self, date: Date) -> Option<u32> {
        let index = self.first_date.days_until(date);
        (0..i32::from(self.days)).contains(&index).then_some(index as u32)
    }

    /// The first service day and how many days are served.
    pub fn service_days(&self) -> (Date, u16) {
        (self.first_date, self.days)
    }

    /// The first slot of a site on a service day; the day's slots follow it.
    pub fn first_slot_of_day(&self, site_index: u32, day_index: u32) -> SlotIndex {
        SlotIndex((site_index * u32::from(self.days) + day_index) * u32::from(self.slots_per_day))
    }

    /// The slot number of (site, date, time); the error says which part is unknown.
    pub fn slot_index(&self, site_id: u32, date: Date, time: TimeOfDay) -> Result<SlotIndex, String> {
        let site_index = self.site_index(site_id).ok_or_else(|| format!("unknown site {site_id}"))?;
        let day_index = self.day_index(date).ok_or_else(|| {
            let last = self.first_date.add_days(i32::from(self.days) - 1);
            format!("{date} is not a service day (the campaign's [service] runs from {} to {last})", self.first_date)
        })?;
        let minutes = i32::from(time.minute_of_day()) - i32::from(self.day_start.minute_of_day());
        let slot_minutes = i32::from(self.slot_minutes);
        let time_index = minutes / slot_minutes;
        if minutes < 0 || minutes % slot_minutes != 0 || time_index >= i32::from(self.slots_per_day) {
            return Err(format!("{time} is not the start of a time slot"));
        }
        Ok(SlotIndex(self.first_slot_of_day(site_index, day_index).0 + time_index as u32))
    }

    pub fn contains(&self, slot: SlotIndex) -> bool {
        slot.0 < self.slot_count()
    }

    /// Where and when a slot is; `None` for a number outside the inventory.
    pub fn address(&self, slot: SlotIndex) -> Option<SlotAddress> {
        if !self.contains(slot) {
            return None;
        }
        let site_day = slot.0 / u32::from(self.slots_per_day);
        let day_index = site_day % u32::from(self.days);
        let site_index = site_day / u32::from(self.days);
        Some(SlotAddress {
            site_id: self.sites[site_index as usize].id,
            date: self.first_date.add_days(day_index as i32),
            time: slot_time_of_day(slot, self.day_start, self.slot_minutes, self.slots_per_day)?,
        })
    }

    /// The UTC instant the appointment of a slot starts.
    pub fn slot_starts_ms(&self, slot: SlotIndex) -> Option<i64> {
        let address = self.address(slot)?;
        Some(self.utc_offset.utc_ms(address.date, address.time))
    }

    /// When the earliest slot of the campaign starts (UTC ms).
    pub fn first_slot_starts_ms(&self) -> i64 {
        self.first_midnight_ms + self.day_start.ms_of_day()
    }

    /// A slot's place among its site's slots: `day_index × slots_per_day +
    /// time_index`, the order in which they begin. `slot % slots_per_site`
    /// by two multiplications instead of a division (D. Lemire, "Faster
    /// remainder by direct computation", 2019): exact for every `u32`.
    #[inline]
    pub fn position_in_site(&self, slot: SlotIndex) -> u32 {
        let low_bits = self.slots_per_site_magic.wrapping_mul(u64::from(slot.0));
        ((u128::from(low_bits) * u128::from(self.slots_per_site)) >> 64) as u32
    }

    /// How many of each site's first slots (in `position_in_site` order) have
    /// begun at `now_ms`: a slot has begun exactly when its position is below
    /// this. Computed once for many commands at one instant.
    pub fn slots_begun_per_site(&self, now_ms: i64) -> u32 {
        let since_midnight = now_ms.saturating_sub(self.first_midnight_ms);
        if since_midnight < 0 {
            return 0;
        }
        let day_index = since_midnight / MS_PER_DAY;
        if day_index >= i64::from(self.days) {
            return self.slots_per_site;
        }
        let slots_per_day = i64::from(self.slots_per_day);
        let into_day = since_midnight % MS_PER_DAY - self.day_start.ms_of_day();
        let begun_today = if into_day < 0 {
            0
        } else {
            (into_day / (i64::from(self.slot_minutes) * MS_PER_MINUTE) + 1).min(slots_per_day)
        };
        (day_index * slots_per_day + begun_today) as u32
    }

    /// When a slot starts (UTC ms), without the site lookup of
    /// `slot_starts_ms`: the reference `position_in_site` and
    /// `slots_begun_per_site` are tested against.
    #[cfg(test)]
    pub fn slot_starts_ms_fast(&self, slot: SlotIndex) -> i64 {
        let time_index = i64::from(slot.0 % u32::from(self.slots_per_day));
        let day_index = i64::from(slot.0 / u32::from(self.slots_per_day) % u32::from(self.days));
        self.first_midnight_ms
            + day_index * MS_PER_DAY
            + self.day_start.ms_of_day()
            + time_index * i64::from(self.slot_minutes) * MS_PER_MINUTE
    }
}

/// The sites of a generated inventory: ids 1, 2, 3, … in order.
fn generated_sites(generated: &GeneratedInventory) -> Vec<Site> {
    (0..generated.sites)
        .map(|index| Site {
            id: index + 1,
            region_id: (index % u32::from(generated.regions)) as u16 + 1,
            name: format!("Demo site {}", index + 1),
        })
        .collect()
}

struct CsvRow {
    line: u64,
    site: Site,
    date: Date,
    time: TimeOfDay,
    capacity: u32,
}

/// An inventory known but not yet built (`Inventory::plan`): its slot count
/// is known, its tables are not allocated.
pub struct InventoryPlan<'a> {
    rules: &'a CampaignRules,
    source: PlanSource<'a>,
}

enum PlanSource<'a> {
    Generate(&'a GeneratedInventory),
    /// Rows read and checked, sites deduplicated in order of appearance.
    Csv {
        rows: Vec<CsvRow>,
        sites: Vec<Site>,
    },
}

impl InventoryPlan<'_> {
    /// The slots the inventory will have: sites × service days × slots a day.
    pub fn slot_count(&self) -> u64 {
        let sites = match &self.source {
            PlanSource::Generate(generated) => u64::from(generated.sites),
            PlanSource::Csv { sites, .. } => sites.len() as u64,
        };
        sites * u64::from(Inventory::slots_per_site(self.rules))
    }

    /// Why slot numbers written under `stamp` (a log segment's) would mean
    /// other slots in this inventory, if they would: known before the
    /// tables are built.
    pub fn differs_from(&self, stamp: &InventoryStamp) -> Option<String> {
        let rules = self.rules;
        let layout = layout_crc(
            rules.service_first_date,
            rules.service_days,
            rules.slots_per_day,
            rules.day_start,
            rules.slot_minutes,
        );
        match &self.source {
            PlanSource::Generate(generated) => stamp.differs_from(layout, &generated_sites(generated)),
            PlanSource::Csv { sites, .. } => stamp.differs_from(layout, sites),
        }
    }

    /// Allocates and fills the inventory's tables.
    pub fn build(self) -> Result<Inventory, InventoryError> {
        match self.source {
            PlanSource::Generate(generated) => Inventory::generate(self.rules, generated),
            PlanSource::Csv { rows, sites } => Inventory::fill_from_csv(self.rules, &rows, sites),
        }
    }
}

fn row_error(line: u64, reason: String) -> InventoryError {
    InventoryError::Row { line, reason }
}

const CSV_COLUMNS: [&str; 6] = ["site_id", "region_id", "site_name", "date", "time", "capacity"];

fn parse_csv_rows(bytes: &[u8]) -> Result<Vec<CsvRow>, InventoryError> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(bytes);
    let headers = reader.headers().map_err(|e| row_error(1, e.to_string()))?.clone();
    if headers.iter().collect::<Vec<_>>() != CSV_COLUMNS {
        return Err(row_error(1, format!("the header must be `{}`", CSV_COLUMNS.join(","))));
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            row_error(line, e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |index: usize| record.get(index).unwrap_or("");
        let number = |index: usize| -> Result<u64, InventoryError> {
            field(index).parse().map_err(|_| {
                row_error(line, format!("{} `{}` is not a whole number", CSV_COLUMNS[index], field(index)))
            })
        };
        let site_id = u32::try_from(number(0)?).map_err(|_| row_error(line, "site_id is too large".into()))?;
        let region_id = u16::try_from(number(1)?).map_err(|_| row_error(line, "region_id is above 65535".into()))?;
        let name = field(2);
        if name.is_empty() || name.len() > SITE_NAME_BYTES_MAX {
            return Err(row_error(line, format!("site_name must have 1 to {SITE_NAME_BYTES_MAX} bytes")));
        }
        let date = Date::parse(field(3)).map_err(|e| row_error(line, e.to_string()))?;
        let time = TimeOfDay::parse(field(4)).map_err(|e| row_error(line, e.to_string()))?;
        let capacity = u32::try_from(number(5)?)
            .ok()
            .filter(|c| *c <= crate::state::SLOT_CAPACITY_MAX)
            .ok_or_else(|| row_error(line, format!("capacity is above {}", crate::state::SLOT_CAPACITY_MAX)))?;
        rows.push(CsvRow { line, site: Site { id: site_id, region_id, name: name.to_string() }, date, time, capacity });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_begun_agrees_with_each_slots_start() {
        let rules = CampaignRules::demo();
        let inventory = Inventory::load(&rules, Path::new(".")).unwrap();
        let per_site = 30 * 18;
        let slots: Vec<SlotIndex> =
            (0..2 * per_site).chain(inventory.slot_count() - per_site..inventory.slot_count()).map(SlotIndex).collect();
        let first = inventory.first_slot_starts_ms();
        let mut instants = vec![i64::MIN / 2, first - 1, first, first + 1, first + 30 * MS_PER_DAY, i64::MAX / 2];
        for slot in &slots[..per_site as usize] {
            let starts = inventory.slot_starts_ms_fast(*slot);
            instants.extend([starts - 1, starts, starts + 1]);
        }
        for now_ms in instants {
            let begun = inventory.slots_begun_per_site(now_ms);
            for slot in &slots {
                assert_eq!(
                    inventory.position_in_site(*slot) < begun,
                    inventory.slot_starts_ms_fast(*slot) <= now_ms,
                    "{slot} at {now_ms}"
                );
            }
        }
    }

    #[test]
    fn position_in_site_is_the_remainder() {
        let rules = CampaignRules::demo();
        let inventory = Inventory::load(&rules, Path::new(".")).unwrap();
        let mut state = 7u64;
        for _ in 0..100_000 {
            state = crate::mix64(state);
            let slot = state as u32;
            assert_eq!(inventory.position_in_site(SlotIndex(slot)), slot % 540);
        }
        for slot in [0, 539, 540, u32::MAX] {
            assert_eq!(inventory.position_in_site(SlotIndex(slot)), slot % 540);
        }
    }

    #[test]
    fn demo_inventory_is_national_scale_and_addresses_round_trip() {
        let rules = CampaignRules::demo();
        let inventory = Inventory::load(&rules, Path::new(".")).unwrap();
        assert_eq!(inventory.slot_count(), 15_000 * 30 * 18);
        for slot in [0, 1, 17, 18, 539, 540, inventory.slot_count() - 1] {
            let slot = SlotIndex(slot);
            let a = inventory.address(slot).unwrap();
            assert_eq!(inventory.slot_index(a.site_id, a.date, a.time), Ok(slot));
            assert_eq!(inventory.slot_starts_ms(slot), Some(inventory.slot_starts_ms_fast(slot)));
        }
        assert!(inventory.address(SlotIndex(inventory.slot_count())).is_none());
        let total: u64 = inventory.initial_capacity().iter().map(|c| u64::from(*c)).sum();
        let mean = total as f64 / f64::from(inventory.slot_count());
        assert!((1.9..2.1).contains(&mean), "mean capacity {mean}");
    }

    #[test]
    fn csv_inventory_and_its_errors() {
        let rules = CampaignRules::demo();
        let good = "site_id,region_id,site_name,date,time,capacity\n\
                    7,1,Seoul City Hall,2021-08-26,09:00,30\n\
                    7,1,Seoul City Hall,2021-08-26,09:30,20\n\
                    9,2,Busan Station,2021-09-24,17:30,5\n";
        let inventory = Inventory::from_csv(&rules, good.as_bytes()).unwrap();
        assert_eq!(inventory.sites().len(), 2);
        let slot =
            inventory.slot_index(9, Date::parse("2021-09-24").unwrap(), TimeOfDay::parse("17:30").unwrap()).unwrap();
        assert_eq!(inventory.initial_capacity()[slot.0 as usize], 5);
        assert_eq!(inventory.region_site_indexes(2), &[1]);

        let cases = [
            ("site_id,region,site_name,date,time,capacity\n", "header"),
            ("site_id,region_id,site_name,date,time,capacity\nx,1,A,2021-08-26,09:00,1\n", "line 2"),
            ("site_id,region_id,site_name,date,time,capacity\n1,1,A,2021-08-26,09:10,1\n", "start of a time slot"),
            ("site_id,region_id,site_name,date,time,capacity\n1,1,A,2021-12-26,09:00,1\n", "not a service day"),
            (
                "site_id,region_id,site_name,date,time,capacity\n1,1,A,2021-08-26,09:00,1\n1,1,A,2021-08-26,09:00,1\n",
                "twice",
            ),
            (
                "site_id,region_id,site_name,date,time,capacity\n1,1,A,2021-08-26,09:00,1\n1,2,A,2021-08-26,09:30,1\n",
                "different region",
            ),
            ("site_id,region_id,site_name,date,time,capacity\n", "no sites"),
        ];
        for (text, expected) in cases {
            let error = Inventory::from_csv(&rules, text.as_bytes()).unwrap_err().to_string();
            assert!(error.contains(expected), "{error:?} should mention {expected:?}");
        }
    }

    #[test]
    fn a_plan_knows_the_slot_count_before_the_tables_are_built() {
        let directory = tempfile::tempdir().unwrap();
        let csv = "site_id,region_id,site_name,date,time,capacity\n\
                   7,1,Seoul City Hall,2021-08-26,09:00,30\n\
                   9,2,Busan Station,2021-09-24,17:30,5\n\
                   7,1,Seoul City Hall,2021-08-27,09:00,3\n";
        std::fs::write(directory.path().join("sites.csv"), csv).unwrap();
        let mut rules = CampaignRules::demo();
        rules.inventory = InventorySection::Csv("sites.csv".into());
        let plan = Inventory::plan(&rules, directory.path()).unwrap();
        assert_eq!(plan.slot_count(), 2 * 30 * 18, "two sites, each with every slot of the campaign");
        assert_eq!(plan.build().unwrap().slot_count(), 2 * 30 * 18);
        // A CSV that does not read is refused at the plan, before anything is allocated.
        std::fs::write(directory.path().join("sites.csv"), "site_id\n1\n").unwrap();
        assert!(matches!(Inventory::plan(&rules, directory.path()), Err(InventoryError::Row { line: 1, .. })));
        let demo = CampaignRules::demo();
        assert_eq!(Inventory::plan(&demo, Path::new(".")).unwrap().slot_count(), 15_000 * 30 * 18);
        // Too many slots is a shape error at the plan, before any memory question.
        let mut huge = CampaignRules::demo();
        huge.service_days = 4_000;
        huge.inventory =
            InventorySection::Generate(GeneratedInventory { sites: 1 << 20, regions: 17, capacity_per_slot_mean: 2 });
        let error = Inventory::plan(&huge, Path::new(".")).err().expect("refused").to_string();
        assert!(error.contains("75497472000 slots; at most 2147483648"), "{error}");
    }
}
