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
enum Defect {
    SlotOutside(SlotIndex),
    PeopleTableFull(u64),
    Unexpected { entry: Entry, held: Option<SlotIndex> },
    Overbooked(SlotIndex),
    CancelOfUnknownPerson,
    CancelOfSlotNotHeld { slot: SlotIndex, held: Option<SlotIndex> },
    CapacityMismatch { slot: SlotIndex, before: u32, seats: u32, capacity: u32 },
    CapacityAboveMaximum { slot: SlotIndex, capacity: u32 },
}

#[cold]
#[inline(never)]
fn explain(lsn: Lsn, defect: Defect) -> ReplayError {
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
    };
    ReplayError { lsn, reason }
}

impl Engine {
    /// Applies one logged entry, checking that it is consistent with the state.
    #[inline]
    pub fn replay(&self, lsn: Lsn, entry: &Entry) -> Result<(), ReplayError> {
        self.replay_checked(entry).map_err(|defect| explain(lsn, defect))
    }

    #[inline(always)]
    fn replay_checked(&self, entry: &Entry) -> Result<(), Defect> {
        let slot_of =
            |slot: SlotIndex| if self.inventory().contains(slot) { Ok(slot) } else { Err(Defect::SlotOutside(slot)) };
        match *entry {
            Entry::Reserved { person, slot, idempotency_key, .. }
            | Entry::Changed { person, slot, idempotency_key, .. } => {
                let slot = slot_of(slot)?;
                let latch =
                    self.people.latch_or_insert(person).map_err(|full| Defect::PeopleTableFull(full.people_max))?;
                let held = latch.record().holds;
                let kind = match (entry, held) {
                    (Entry::Reserved { .. }, None) => CommandKind::Reserve,
                    (Entry::Changed { .. }, Some(old)) if old != slot => CommandKind::Change,
                    _ => return Err(Defect::Unexpected { entry: *entry, held }),
                };
                self.slots.take(slot.0).map_err(|_| Defect::Overbooked(slot))?;
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
