//! Snapshots as the state machine sees them: what a snapshot captures, and how
//! a snapshot plus the log records written while it was captured rebuild the
//! state. The file format and its I/O live in `src/snapshot/`.
//!
//! A snapshot is *fuzzy*: it is captured while reservations go on. Its taker
//! reads `start_lsn` (the next sequence number) first, then reads every person
//! under their latch, then reads `end_lsn`. Each person is therefore seen in
//! some state between record `start_lsn - 1` and record `end_lsn - 1`, and
//! nothing of records from `end_lsn` on. Entries state facts absolutely ("this
//! person now holds S"), so applying the window `start_lsn..end_lsn` over the
//! snapshot *by overwriting* gives each person the state of their last record
//! in the window, or the snapshot's if they have none there: exactly the state
//! after record `end_lsn - 1`. From `end_lsn` on, replay is strict again.
//!
//! Seats are not stored: seats left = capacity − holders, counted at restore.
//! The snapshot itself may hold more people in a slot than it has seats (the
//! scan saw Alice before she gave her seat up and Bob after he took it), and
//! inside the window a count may pass below zero for a while (the window
//! replaying Alice's booking again). So restore and window move seats with
//! wrapping arithmetic that keeps `left = capacity − holders` exact, and every
//! slot that went below zero at restore or that the window touched is checked
//! to lie within `0..=capacity` at the window's end. A slot neither touched
//! nor wrapped holds what the snapshot says, which was true at some moment.

use crate::inventory::SlotIndex;
use crate::state::engine::{Engine, PREFETCH_AHEAD};
use crate::state::entry::{Entry, Lsn};
use crate::state::people::{CommandKind, LastCommand, PersonKey, PersonRecord};
use crate::state::replay::{Defect, ReplayError};
use crate::state::slot_counters::SLOT_CAPACITY_MAX;
use crate::state::Writers;

impl Engine {
    /// Calls `visit` with every person who has a history, each read under their
    /// latch. People who were only ever refused hold nothing and are skipped.
    pub fn capture_people(&self, mut visit: impl FnMut(PersonKey, PersonRecord)) {
        self.people.for_each(|key, record| {
            if record.last.is_some() {
                visit(key, record);
            }
        });
    }

    /// The slots whose capacity differs from the inventory's, read while no
    /// capacity change is under way: a change whose record was numbered before
    /// the caller read `start_lsn` is therefore included.
    pub fn capture_capacities(&self) -> Vec<(SlotIndex, u32)> {
        let _serialized = self.capacity_changes.lock().unwrap_or_else(|poison| poison.into_inner());
        let initial = self.inventory().initial_capacity();
        (0..self.slots.len())
            .filter(|slot| self.slots.capacity(*slot) != initial[*slot as usize])
            .map(|slot| (SlotIndex(slot), self.slots.capacity(slot)))
            .collect()
    }

    /// Restores one slot's capacity into a freshly built engine (before any person).
    pub fn restore_capacity(&self, slot: SlotIndex, capacity: u32) -> Result<(), String> {
        let _writer = self.writer(); // a sole-writer engine's lock; restores run on shared ones
        if !self.inventory().contains(slot) {
            return Err(format!("capacity of {slot}, which is outside the inventory"));
        }
        let current = self.slots.capacity(slot.0);
        if capacity < current || capacity > SLOT_CAPACITY_MAX {
            return Err(format!("{slot} capacity {capacity}: below the inventory's {current} or above the maximum"));
        }
        self.slots.add_capacity(slot.0, capacity - current).map(|_| ()).ok_or_else(|| format!("{slot} overflows"))
    }

    /// Restores one person into a freshly built engine. Safe to call from
    /// several threads at once: on a shared engine (recovery's) they run at
    /// once on the lock-free tables; on a sole-writer one, one at a time.
    /// Returns the slot the person holds if its count went below zero: the
    /// caller checks it after the window (`check_window`).
    pub fn restore_person(&self, key: PersonKey, record: PersonRecord) -> Result<Option<u32>, String> {
        let _writer = self.writer(); // a sole-writer engine's lock; restores run on shared ones
        let Some(last) = record.last else {
            return Err(format!("person {:#x} has no history", key.0));
        };
        if key.0 == 0 {
            return Err("the zero person key".into());
        }
        if !self.inventory().contains(last.slot) {
            return Err(format!("person {:#x} names {}, outside the inventory", key.0, last.slot));
        }
        let holds_expected = last.kind != CommandKind::Cancel;
        if record.holds.is_some() != holds_expected || record.holds.is_some_and(|held| held != last.slot) {
            return Err(format!("person {:#x}: holds {:?} after a {:?}", key.0, record.holds, last.kind));
        }
        let latch =
            self.people.latch_or_insert(key).map_err(|full| format!("people table full ({})", full.people_max))?;
        if latch.record().last.is_some() {
            return Err(format!("person {:#x} appears twice", key.0));
        }
        let wrapped = record.holds.filter(|held| self.slots.take_wrapping(held.0)).map(|held| held.0);
        latch.commit(record);
        Ok(wrapped)
    }

    /// Applies a record of the snapshot window by overwriting (see the module
    /// comment). `touched` collects the slots whose seats moved.
    /// Takes the writer lock of a sole-writer engine for the entry; a caller
    /// replaying many holds an `EngineWriter` and calls its `replay_in_window`.
    #[inline]
    pub fn replay_in_window(&self, lsn: Lsn, entry: &Entry, touched: &mut Vec<u32>) -> Result<(), ReplayError> {
        self.writer().replay_in_window(lsn, entry, touched)
    }

    /// `replay_in_window` by a writer of kind `W` (`Writers`: a sole writer
    /// claims new people and takes seats with stores), with its refusal a
    /// small `Copy` value, made into words only when it happens (as `replay`'s).
    #[inline(always)]
    pub(crate) fn replay_in_window_checked_as<W: Writers>(
        &self,
        entry: &Entry,
        touched: &mut Vec<u32>,
    ) -> Result<(), Defect> {
        let check_slot =
            |slot: SlotIndex| if self.inventory().contains(slot) { Ok(()) } else { Err(Defect::SlotOutside(slot)) };
        let (person, record) = match *entry {
            Entry::CapacityAdded { slot, capacity, .. } => {
                check_slot(slot)?;
                let initial = self.inventory().initial_capacity()[slot.0 as usize];
                if capacity > SLOT_CAPACITY_MAX || capacity < initial {
                    return Err(Defect::CapacityOutOfRange { slot, capacity, initial });
                }
                self.slots.set_capacity_wrapping(slot.0, capacity);
                touched.push(slot.0);
                return Ok(());
            }
            Entry::Reserved { person, slot, idempotency_key, .. } => {
                (person, person_after(CommandKind::Reserve, slot, idempotency_key))
            }
            Entry::Changed { person, slot, idempotency_key, .. } => {
                (person, person_after(CommandKind::Change, slot, idempotency_key))
            }
            Entry::Cancelled { person, slot, idempotency_key, .. } => {
                (person, person_after(CommandKind::Cancel, slot, idempotency_key))
            }
        };
        check_slot(record.last.map_or(SlotIndex(0), |last| last.slot))?;
        let latch = self
            .people
            .latch_or_insert_from::<W>(person, self.people.home(person))
            .map_err(|full| Defect::PeopleTableFull(full.people_max))?;
        if let Some(old) = latch.record().holds {
            self.slots.give_wrapping(old.0);
            touched.push(old.0);
        }
        if let Some(new) = record.holds {
            let _wrapped = self.slots.take_wrapping_as::<W>(new.0);
            touched.push(new.0);
        }
        latch.commit(record);
        Ok(())
    }

    /// After the window: every slot it touched, or that went below zero at
    /// restore, has seats left within its capacity.
    /// A snapshot's window may touch millions of slots at random: their
    /// lines are asked for a group at a time (`crate::visit_prefetched`).
    pub fn check_window(&self, touched: &[u32]) -> Result<(), String> {
        let first_wrong = crate::try_visit_prefetched::<_, _, _, PREFETCH_AHEAD>(
            touched,
            |slot| self.slots.prefetch(*slot),
            |slot, ()| if self.slots.is_consistent(*slot) { Ok(()) } else { Err(*slot) },
        );
        match first_wrong {
            Ok(()) => Ok(()),
            Err(slot) => Err(format!(
                "{} ends the snapshot window with more holders than its {} seats",
                SlotIndex(slot),
                self.slots.capacity(slot)
            )),
        }
    }
}

/// A person's whole state after a command of `kind` on `slot`.
fn person_after(kind: CommandKind, slot: SlotIndex, idempotency_key: u64) -> PersonRecord {
    let holds = (kind != CommandKind::Cancel).then_some(slot);
    PersonRecord { holds, last: Some(LastCommand { kind, idempotency_key, slot }) }
}
