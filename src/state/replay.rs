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

impl Engine {
    /// Applies one logged entry, checking that it is consistent with the state.
    pub fn replay(&self, lsn: Lsn, entry: &Entry) -> Result<(), ReplayError> {
        let error = |reason: String| ReplayError { lsn, reason };
        let slot_of = |slot: SlotIndex| {
            if self.inventory().contains(slot) {
                Ok(slot)
            } else {
                Err(error(format!("{slot} is outside the inventory")))
            }
        };
        match *entry {
            Entry::Reserved { person, slot, idempotency_key, .. }
            | Entry::Changed { person, slot, idempotency_key, .. } => {
                let slot = slot_of(slot)?;
                let latch = self
                    .people
                    .latch_or_insert(person)
                    .map_err(|full| error(format!("the people table is full ({})", full.people_max)))?;
                let held = latch.record().holds;
                let kind = match (entry, held) {
                    (Entry::Reserved { .. }, None) => CommandKind::Reserve,
                    (Entry::Changed { .. }, Some(old)) if old != slot => CommandKind::Change,
                    _ => return Err(error(format!("{entry:?} while the person holds {held:?}"))),
                };
                self.slots
                    .take(slot.0)
                    .map_err(|_| error(format!("{slot} has no seat left: the log would overbook")))?;
                if let Some(old) = held {
                    self.slots.give(old.0);
                }
                latch.commit(PersonRecord {
                    holds: Some(slot),
                    last: Some(LastCommand { kind, idempotency_key, slot }),
                });
            }
            Entry::Cancelled { person, slot, idempotency_key, .. } => {
                let latch = self.people.latch(person).ok_or_else(|| error("cancel of a person never seen".into()))?;
                if latch.record().holds != Some(slot) {
                    return Err(error(format!("cancel of {slot}, but the person holds {:?}", latch.record().holds)));
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
                    return Err(error(format!("{slot} had capacity {before}, +{seats} is not {capacity}")));
                }
                self.slots
                    .add_capacity(slot.0, seats)
                    .ok_or_else(|| error(format!("{slot} capacity {capacity} is above the maximum")))?;
            }
        }
        Ok(())
    }
}
