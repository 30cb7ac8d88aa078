//! Read-only questions: seats by site and day, sites with room by region and
//! day (bounded pages), and the whole logical state (for recovery checks).

use std::collections::BTreeMap;

use crate::calendar::Date;
use crate::inventory::{Inventory, SlotIndex};
use crate::state::engine::Engine;
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
    pub fn site_availability(&self, site_id: u32, date: Date) -> Result<SiteAvailability, Refusal> {
        let inventory = self.inventory();
        let site_index = inventory.site_index(site_id).ok_or(Refusal::UnknownSite { site_id })?;
        let day_index = service_day_index(inventory, date)?;
        let first_slot = inventory.first_slot_of_day(site_index, day_index);
        let remaining = (0..u32::from(inventory.slots_per_day()))
            .map(|offset| self.slots.remaining(first_slot.0 + offset))
            .collect();
        Ok(SiteAvailability { site_id, date, first_slot, remaining })
    }

    /// Sites of `region_id` with seats left on `date`, at most `limit` from `cursor`.
    pub fn region_availability(
        &self,
        region_id: u16,
        date: Date,
        cursor: u32,
        limit: u32,
    ) -> Result<RegionPage, Refusal> {
        let page_max = self.rules().availability_page_max;
        if limit == 0 || limit > page_max {
            return Err(Refusal::PageTooLarge { requested: limit, page_max });
        }
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
                .fold(0u32, |seats, slot| seats.saturating_add(self.slots.remaining(slot)));
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
        let page = engine.region_availability(1, Date::parse("2021-08-26").unwrap(), 0, 10).unwrap();
        assert_eq!(page.sites, [(1, u32::MAX), (2, 3)]);
    }
}
