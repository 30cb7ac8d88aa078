//! Read-only questions: seats by site and day, sites with room by region and
//! day (bounded pages), and the whole logical state (for recovery checks).

use std::collections::BTreeMap;

use crate::calendar::Date;
use crate::inventory::{Inventory, SlotIndex};
use crate::state::engine::{Engine, Moment};
use crate::state::people::{PersonKey, PersonRecord};
use crate::state::refusal::Refusal;

/// The most sites one region page looks at (each costs a day of slot counters).
pub const REGION_SCAN_SITES_MAX: usize = 1024;

/// Seats left in each time slot of one site on one day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteAvailability {
    pub site_id: u32,
    pub date: Date,
    /// The day's first slot; the slot of `remaining[i]` is `first_slot + i`.
    pub first_slot: SlotIndex,
    pub remaining: Vec<u32>,
}

/// One page of the sites of a region with seats left on a day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionPage {
    /// (site id, seats left that day), in the region's site order.
    pub sites: Vec<(u32, u32)>,
    /// Pass this as `cursor` for the next page; `None` after the last.
    pub next_cursor: Option<u32>,
}

/// The state that replay must reproduce exactly: people with a history, and
/// every slot's seats. People who only ever had refusals are not part of it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LogicalState {
    pub people: BTreeMap<PersonKey, PersonRecord>,
    pub remaining: Vec<u32>,
    pub capacity: Vec<u32>,
}

impl LogicalState {
    pub fn reservations(&self) -> usize {
        self.people.values().filter(|r| r.holds.is_some()).count()
    }
}

/// The service-day number of `date`, or the refusal that says which days are served.
fn service_day_index(inventory: &Inventory, date: Date) -> Result<u32, Refusal> {
    let (first, days) = inventory.service_days();
    inventory.day_index(date).ok_or(Refusal::NotAServiceDay { date, first, days })
}

impl Engine {
    pub fn site_availability(&self, site_id: u32, date: Date, moment: &Moment) -> Result<SiteAvailability, Refusal> {
        let inventory = self.inventory();
        let site_index = inventory.site_index(site_id).ok_or(Refusal::UnknownSite { site_id })?;
        let day_index = service_day_index(inventory, date)?;
        let first_slot = inventory.first_slot_of_day(site_index, day_index);
        let remaining = (0..u32::from(inventory.slots_per_day()))
            .map(|offset| self.bookable_seats(first_slot.0 + offset, moment))
            .collect();
        Ok(SiteAvailability { site_id, date, first_slot, remaining })
    }

    /// Seats of `slot` a reservation at `moment` could take: none once its
    /// appointment has begun (a reservation is refused SLOT_IN_PAST then).
    fn bookable_seats(&self, slot: u32, moment: &Moment) -> u32 {
        if self.slot_begun(SlotIndex(slot), moment) {
            0
        } else {
            self.slots.remaining(slot)
        }
    }

    /// Sites of `region_id` with seats left on `date` at `moment`, at most
    /// `limit` from `cursor` (0: as many as a page holds).
    pub fn region_availability(
        &self,
        region_id: u16,
        date: Date,
        cursor: u32,
        limit: u32,
        moment: &Moment,
    ) -> Result<RegionPage, Refusal> {
        let page_max = self.rules().availability_page_max;
        if limit > page_max {
            return Err(Refusal::PageTooLarge { requested: limit, page_max });
        }
        let limit = if limit == 0 { page_max } else { limit };
        let inventory = self.inventory();
        let day_index = service_day_index(inventory, date)?;
        let site_indexes = inventory.region_site_indexes(region_id);
        if site_indexes.is_empty() {
            return Err(Refusal::UnknownRegion { region_id });
        }
        let mut sites = Vec::new();
        let mut position = cursor as usize;
        // A page looks at most REGION_SCAN_SITES_MAX sites: in a sold-out region
        // it comes back short (or empty) with a cursor, instead of scanning them all.
        let scan_end = position.saturating_add(REGION_SCAN_SITES_MAX).min(site_indexes.len());
        while position < scan_end && sites.len() < limit as usize {
            let site_index = site_indexes[position];
            let first = inventory.first_slot_of_day(site_index, day_index).0;
            // Saturating: a day of many large slots may hold more than 2³² seats.
            let seats = (first..first + u32::from(inventory.slots_per_day()))
                .fold(0u32, |seats, slot| seats.saturating_add(self.bookable_seats(slot, moment)));
            if seats > 0 {
                sites.push((inventory.sites()[site_index as usize].id, seats));
            }
            position += 1;
        }
        let next_cursor = (position < site_indexes.len()).then_some(position as u32);
        Ok(RegionPage { sites, next_cursor })
    }

    /// What the engine holds for one person: `None` for a person no applied
    /// command has named. Waits out a command in progress on them.
    pub fn person_record(&self, person: PersonKey) -> Option<PersonRecord> {
        self.people.get(person)
    }

    /// Copies out the whole logical state (allocates: for checks and tools).
    pub fn logical_state(&self) -> LogicalState {
        let mut people = BTreeMap::new();
        self.people.for_each(|key, record| {
            if record.last.is_some() {
                people.insert(key, record);
            }
        });
        let slot_count = self.slots.len();
        LogicalState {
            people,
            remaining: (0..slot_count).map(|slot| self.slots.remaining(slot)).collect(),
            capacity: (0..slot_count).map(|slot| self.slots.capacity(slot)).collect(),
        }
    }

    /// Confirmed reservations: capacity minus seats left, over all slots.
    pub fn reservations_count(&self) -> u64 {
        (0..self.slots.len()).map(|slot| u64::from(self.slots.capacity(slot) - self.slots.remaining(slot))).sum()
    }
}

#[cfg(test)]
mod tests {
    use crate::calendar::{Date, TimeOfDay};
    use crate::config::CampaignRules;
    use crate::inventory::Inventory;
    use crate::state::engine::Moment;
    use crate::state::{Engine, SLOT_CAPACITY_MAX};

    #[test]
    fn a_region_page_saturates_a_day_of_more_than_four_billion_seats() {
        let mut rules = CampaignRules::demo();
        (rules.day_start, rules.slot_minutes, rules.slots_per_day) = (TimeOfDay::parse("00:00").unwrap(), 5, 288);
        let mut csv = String::from("site_id,region_id,site_name,date,time,capacity\n");
        for slot in 0..257 {
            let time = TimeOfDay::from_minute_of_day(slot * 5).unwrap();
            csv.push_str(&format!("1,1,Big,2021-08-26,{time},{SLOT_CAPACITY_MAX}\n"));
        }
        csv.push_str("2,1,Small,2021-08-26,09:00,3\n");
        let inventory = Inventory::from_csv(&rules, csv.as_bytes()).unwrap();
        let engine = Engine::new(rules, inventory);
        let moment = engine.booking_moment(0);
        let page = engine.region_availability(1, Date::parse("2021-08-26").unwrap(), 0, 10, &moment).unwrap();
        assert_eq!(page.sites, [(1, u32::MAX), (2, 3)]);
    }

    #[test]
    fn availability_counts_only_seats_of_slots_not_yet_begun() {
        let rules = CampaignRules::demo();
        let day = Date::parse("2021-08-26").unwrap();
        let mut csv = String::from("site_id,region_id,site_name,date,time,capacity\n");
        for time in ["09:00", "09:30", "10:00"] {
            csv.push_str(&format!("1,1,Early,2021-08-26,{time},2\n"));
        }
        csv.push_str("2,1,Early only,2021-08-26,09:00,4\n");
        let inventory = Inventory::from_csv(&rules, csv.as_bytes()).unwrap();
        let first_slot_of =
            |engine: &Engine, moment: &Moment| engine.site_availability(1, day, moment).unwrap().first_slot.0;
        let offset = rules.utc_offset;
        let engine = Engine::new(rules, inventory);
        let at = |time: &str| engine.booking_moment(offset.utc_ms(day, TimeOfDay::parse(time).unwrap()));
        // The evening before: every seat.
        let before = engine.booking_moment(offset.utc_ms(day.add_days(-1), TimeOfDay::parse("20:00").unwrap()));
        let first = first_slot_of(&engine, &before);
        let seats = |moment: &Moment| engine.site_availability(1, day, moment).unwrap().remaining[..3].to_vec();
        assert_eq!(seats(&before), [2, 2, 2]);
        // 09:00 has begun at 09:00, 09:30 at 09:45: none of their seats can be booked.
        assert_eq!(seats(&at("09:00")), [0, 2, 2]);
        assert_eq!(seats(&at("09:45")), [0, 0, 2]);
        assert_eq!(engine.site_availability(1, day, &at("09:45")).unwrap().first_slot.0, first);
        // A region page lists what can be booked: site 2 had only its 09:00.
        let region = |moment: &Moment, limit| engine.region_availability(1, day, 0, limit, moment).unwrap().sites;
        assert_eq!(region(&before, 10), [(1, 6), (2, 4)]);
        assert_eq!(region(&at("09:45"), 10), [(1, 2)]);
        // A limit of 0 asks for as many as a page holds; past the page's most is refused.
        let page_max = engine.rules().availability_page_max;
        assert_eq!(region(&before, 0), [(1, 6), (2, 4)]);
        let too_large = engine.region_availability(1, day, 0, page_max + 1, &before).unwrap_err();
        assert_eq!(too_large, crate::state::Refusal::PageTooLarge { requested: page_max + 1, page_max });
    }
}
