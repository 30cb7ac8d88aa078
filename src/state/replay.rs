//! Applying logged entries to an engine: how recovery rebuilds the state.
//!
//! Replay is strict: every entry must make sense in the state left by the ones
//! before it (a reserve finds the person holding nothing and a seat free; a
//! cancel finds the person holding that slot). A log that breaks this was not
//! written by yeyak's take-log-give order and is refused, never patched up.

use crate::inventory::SlotIndex;
use crate::state::engine::Engine;
use crate::state::entry::{Entry, Lsn};
use crate::state::people::{CommandKind, LastCommand, PersonRecord};
use crate::state::writer::Writers;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log record {lsn} cannot be replayed: {reason}")]
pub struct ReplayError {
    pub lsn: Lsn,
    pub reason: String,
}

/// What made an entry unreplayable: small and `Copy`, so the replay of a
/// good entry carries no message about (callgrind: a `String` in the result
/// cost the hot path a dozen instructions a record); `ReplayError` says it in
/// words, built only when replay fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Defect {
    SlotOutside(SlotIndex),
    PeopleTableFull(u64),
    Unexpected {
        entry: Entry,
        held: Option<SlotIndex>,
    },
    Overbooked(SlotIndex),
    CancelOfUnknownPerson,
    CancelOfSlotNotHeld {
        slot: SlotIndex,
        held: Option<SlotIndex>,
    },
    CapacityMismatch {
        slot: SlotIndex,
        before: u32,
        seats: u32,
        capacity: u32,
    },
    CapacityAboveMaximum {
        slot: SlotIndex,
        capacity: u32,
    },
    /// In a snapshot window, where capacities are set, not added.
    CapacityOutOfRange {
        slot: SlotIndex,
        capacity: u32,
        initial: u32,
    },
}

#[cold]
#[inline(never)]
pub(crate) fn explain(lsn: Lsn, defect: Defect) -> ReplayError {
    let reason = match defect {
        Defect::SlotOutside(slot) => format!("{slot} is outside the inventory"),
        Defect::PeopleTableFull(people_max) => format!("the people table is full ({people_max})"),
        Defect::Unexpected { entry, held } => format!("{entry:?} while the person holds {held:?}"),
        Defect::Overbooked(slot) => format!("{slot} has no seat left: the log would overbook"),
        Defect::CancelOfUnknownPerson => "cancel of a person never seen".into(),
        Defect::CancelOfSlotNotHeld { slot, held } => format!("cancel of {slot}, but the person holds {held:?}"),
        Defect::CapacityMismatch { slot, before, seats, capacity } => {
            format!("{slot} had capacity {before}, +{seats} is not {capacity}")
        }
        Defect::CapacityAboveMaximum { slot, capacity } => format!("{slot} capacity {capacity} is above the maximum"),
        Defect::CapacityOutOfRange { slot, capacity, initial } => {
            format!("{slot} capacity {capacity}: above the maximum or below the inventory's {initial}")
        }
    };
    ReplayError { lsn, reason }
}

impl Engine {
    /// Applies one logged entry, checking that it is consistent with the
    /// state. Takes the writer lock of a sole-writer engine for the entry;
    /// a caller replaying many holds an `EngineWriter` and calls its `replay`.
    #[inline]
    pub fn replay(&self, lsn: Lsn, entry: &Entry) -> Result<(), ReplayError> {
        self.writer().replay(lsn, entry)
    }

    /// `replay`'s work, by a writer of kind `W` (`Writers`).
    #[inline(always)]
    pub(crate) fn replay_checked_as<W: Writers>(&self, entry: &Entry) -> Result<(), Defect> {
        let slot_of =
            |slot: SlotIndex| if self.inventory().contains(slot) { Ok(slot) } else { Err(Defect::SlotOutside(slot)) };
        match *entry {
            Entry::Reserved { person, slot, idempotency_key, .. }
            | Entry::Changed { person, slot, idempotency_key, .. } => {
                let slot = slot_of(slot)?;
                let latch = self
                    .people
                    .latch_or_insert_from::<W>(person, self.people.home(person))
                    .map_err(|full| Defect::PeopleTableFull(full.people_max))?;
                let held = latch.record().holds;
                let kind = match (entry, held) {
                    (Entry::Reserved { .. }, None) => CommandKind::Reserve,
                    (Entry::Changed { .. }, Some(old)) if old != slot => CommandKind::Change,
                    _ => {
                        // A new person's claim is emptied and uncounted again.
                        self.people.abandon(latch);
                        return Err(Defect::Unexpected { entry: *entry, held });
                    }
                };
                if self.slots.take_as::<W>(slot.0).is_err() {
                    self.people.abandon(latch);
                    return Err(Defect::Overbooked(slot));
                }
                if let Some(old) = held {
                    self.slots.give(old.0);
                }
                latch.commit(PersonRecord {
                    holds: Some(slot),
                    last: Some(LastCommand { kind, idempotency_key, slot }),
                });
            }
            Entry::Cancelled { person, slot, idempotency_key, .. } => {
                let latch = self.people.latch(person).ok_or(Defect::CancelOfUnknownPerson)?;
                let held = latch.record().holds;
                if held != Some(slot) {
                    return Err(Defect::CancelOfSlotNotHeld { slot, held });
                }
                self.slots.give(slot.0);
                latch.commit(PersonRecord {
                    holds: None,
                    last: Some(LastCommand { kind: CommandKind::Cancel, idempotency_key, slot }),
                });
            }
            Entry::CapacityAdded { slot, seats, capacity, .. } => {
                let slot = slot_of(slot)?;
                let before = self.slots.capacity(slot.0);
                if before.checked_add(seats) != Some(capacity) {
                    return Err(Defect::CapacityMismatch { slot, before, seats, capacity });
                }
                self.slots.add_capacity(slot.0, seats).ok_or(Defect::CapacityAboveMaximum { slot, capacity })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CampaignRules, DEMO_CAMPAIGN_TOML};
    use crate::inventory::Inventory;
    use crate::state::PersonKey;

    fn engine() -> Engine {
        let toml = DEMO_CAMPAIGN_TOML.replace("sites = 15000", "sites = 20").replace("20_000_000", "1000");
        let rules = CampaignRules::parse(&toml).unwrap();
        let inventory = Inventory::load(&rules, std::path::Path::new(".")).unwrap();
        Engine::new(rules, inventory)
    }

    fn reserved(person: u128, slot: u32) -> Entry {
        Entry::Reserved { person: PersonKey(person), slot: SlotIndex(slot), idempotency_key: 1, operator_id: 0 }
    }

    /// Every way a log can contradict the state is refused with the record's
    /// number and a reason, never applied halfway or panicking: by a shared
    /// engine (`Engine::replay`) and by a sole writer's one writer (as
    /// recovery replays a log).
    #[test]
    fn a_log_that_contradicts_the_state_is_refused_with_its_number_and_reason() {
        refuses_contradictions(&engine(), |engine, lsn, entry| engine.replay(lsn, entry));
        refuses_contradictions(&engine().into_sole_writer(), |engine, lsn, entry| engine.writer().replay(lsn, entry));
    }

    #[test]
    fn a_full_people_table_refuses_the_next_new_person_and_counts_nobody_for_it() {
        for engine in [engine(), engine().into_sole_writer()] {
            let people_max = engine.rules().people_max;
            // Capacities are at least 1: one person a slot never overbooks.
            assert!(u64::from(engine.inventory().slot_count()) > people_max);
            let writer = engine.writer();
            for person in 1..=people_max {
                writer.replay(person, &reserved(u128::from(person), person as u32)).unwrap();
            }
            let next = people_max + 1;
            let error = writer.replay(next, &reserved(u128::from(next), next as u32)).unwrap_err();
            assert!(error.to_string().contains("the people table is full"), "{error}");
            drop(writer);
            assert_eq!(engine.people.len(), people_max, "the refused person is not counted");
        }
    }

    fn refuses_contradictions(engine: &Engine, replay: impl Fn(&Engine, Lsn, &Entry) -> Result<(), ReplayError>) {
        let full = engine.inventory().initial_capacity().iter().position(|c| *c == 1).unwrap() as u32;
        let outside = engine.inventory().slot_count();
        let cancel = |person: u128, slot: u32| Entry::Cancelled {
            person: PersonKey(person),
            slot: SlotIndex(slot),
            idempotency_key: 2,
            operator_id: 0,
        };
        replay(engine, 1, &reserved(1, full)).unwrap();
        let capacity = engine.slots.capacity(0);
        let refused = [
            (reserved(2, outside), "is outside the inventory"),
            (reserved(1, full + 1), "while the person holds Some"),
            (reserved(2, full), "has no seat left: the log would overbook"),
            (cancel(3, full), "cancel of a person never seen"),
            (cancel(1, full + 1), "but the person holds Some"),
            (
                Entry::CapacityAdded { slot: SlotIndex(0), seats: 1, capacity: capacity + 5, operator_id: 1 },
                "+1 is not",
            ),
        ];
        for (lsn, (entry, reason)) in (2..).zip(refused) {
            let error = replay(engine, lsn, &entry).unwrap_err();
            assert_eq!(error.lsn, lsn);
            assert!(error.to_string().contains(reason), "{error} should say {reason}");
        }
        assert_eq!(engine.people.get(PersonKey(1)).unwrap().holds, Some(SlotIndex(full)), "nothing applied");
        assert_eq!(engine.people.len(), 1, "refused new people are not counted");
        assert!(engine.people.get(PersonKey(2)).is_none() && engine.people.get(PersonKey(3)).is_none());
        let mut touched = Vec::new();
        let below = Entry::CapacityAdded { slot: SlotIndex(0), seats: 0, capacity: 0, operator_id: 1 };
        let error = engine.replay_in_window(9, &below, &mut touched).unwrap_err();
        assert!(error.to_string().contains("below the inventory's"), "{error}");
        let error = engine.replay_in_window(10, &reserved(4, outside), &mut touched).unwrap_err();
        assert!(error.to_string().contains("is outside the inventory") && error.lsn == 10, "{error}");
        assert!(touched.is_empty(), "a refused window record moves no seat");
    }

    /// The window's check reads its slots a group of lines at a time: over
    /// many groups, it still names the first slot in `touched` whose seats
    /// left are outside `0..=capacity`, and passes when none is.
    #[test]
    fn the_window_check_names_the_first_wrong_slot_over_many_groups() {
        let engine = engine();
        let touched: Vec<u32> = (0..40).map(|i| i * 7 % 300).collect();
        engine.check_window(&touched).unwrap();
        // Two slots with a seat too many, the later one first in `touched`.
        let (early, late) = (touched[19], touched[23]);
        engine.slots.give_wrapping(late);
        engine.slots.give_wrapping(early);
        let touched_late_first: Vec<u32> =
            touched[..19].iter().chain([&late, &early]).chain(&touched[20..23]).copied().collect();
        let error = engine.check_window(&touched_late_first).unwrap_err();
        assert!(error.starts_with(&format!("{} ends", SlotIndex(late))), "{error}");
        let error = engine.check_window(&touched).unwrap_err();
        assert!(error.starts_with(&format!("{} ends", SlotIndex(early))), "{error}");
    }
}
