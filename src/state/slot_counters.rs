//! Remaining capacity of every slot, as lock-free atomic counters.
//!
//! One cache line per slot (`#[repr(align(64))]`), so two threads booking
//! different slots never contend on a line; 8 million slots take 512 MiB.
//!
//! Ordering (the log-order argument in docs/log-format.md relies on it): a
//! successful `take` is an acquire read-modify-write and `give` a release one.
//! A release of capacity is logged *before* `give` and a `take` is logged
//! *after*, so when one thread's `take` consumes capacity another's `give`
//! returned, the giver's log sequence number was drawn first.

use crate::state::Writers;
use crate::sync::{AtomicU32, Ordering};

/// The largest capacity a single slot may have.
pub const SLOT_CAPACITY_MAX: u32 = 1 << 24;

#[repr(C, align(64))]
struct SlotCell {
    /// Seats not yet taken; never above `capacity`, never below zero.
    remaining: AtomicU32,
    /// Seats the slot offers; changes only through `add_capacity`.
    capacity: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<SlotCell>() == 64 || cfg!(feature = "shuttle"));

/// The slot is full: nothing was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotFull;

/// One cell per slot, on huge pages where the OS gives them (src/memory.rs).
#[cfg(not(feature = "shuttle"))]
type Cells = crate::memory::ZeroedArray<SlotCell>;
#[cfg(feature = "shuttle")]
type Cells = Box<[SlotCell]>;

// SAFETY: a cell is two `AtomicU32`s (and padding), valid as all zeros.
#[cfg(not(feature = "shuttle"))]
unsafe impl crate::memory::Zeroable for SlotCell {}

pub struct SlotCounters {
    cells: Cells,
}

impl SlotCounters {
    /// Counters starting full at the given capacities.
    pub fn new(capacities: &[u32]) -> SlotCounters {
        assert!(capacities.iter().all(|c| *c <= SLOT_CAPACITY_MAX), "inventory checks capacities");
        #[cfg(not(feature = "shuttle"))]
        let cells = {
            let cells = Cells::new(capacities.len());
            for (cell, capacity) in cells.iter().zip(capacities) {
                cell.remaining.store(*capacity, Ordering::Relaxed);
                cell.capacity.store(*capacity, Ordering::Relaxed);
            }
            cells
        };
        #[cfg(feature = "shuttle")]
        let cells = capacities
            .iter()
            .map(|c| SlotCell { remaining: AtomicU32::new(*c), capacity: AtomicU32::new(*c) })
            .collect();
        SlotCounters { cells }
    }

    pub fn len(&self) -> u32 {
        self.cells.len() as u32
    }

    /// The memory the counters of `slot_count` slots take.
    pub fn table_bytes(slot_count: u64) -> u64 {
        slot_count.saturating_mul(std::mem::size_of::<SlotCell>() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// `take` by a writer of kind `W`: for the sole writer (`Writers`), a
    /// load and a store; nobody else changes the counter meanwhile.
    #[inline]
    pub(crate) fn take_as<W: Writers>(&self, slot: u32) -> Result<(), SlotFull> {
        if !W::SOLE {
            return self.take(slot);
        }
        let remaining = &self.cells[slot as usize].remaining;
        let seen = remaining.load(Ordering::Relaxed);
        if seen == 0 {
            return Err(SlotFull);
        }
        remaining.store(seen - 1, Ordering::Release);
        Ok(())
    }

    /// Takes one seat, unless none remain. Lock-free: a compare-exchange loop
    /// that never stores a value below zero.
    #[inline]
    pub fn take(&self, slot: u32) -> Result<(), SlotFull> {
        let remaining = &self.cells[slot as usize].remaining;
        let mut seen = remaining.load(Ordering::Relaxed);
        loop {
            if seen == 0 {
                return Err(SlotFull);
            }
            match remaining.compare_exchange_weak(seen, seen - 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(now) => {
                    seen = now;
                    crate::sync::spin_wait();
                }
            }
        }
    }

    /// Returns one seat taken earlier.
    #[inline]
    pub fn give(&self, slot: u32) {
        let cell = &self.cells[slot as usize];
        let before = cell.remaining.fetch_add(1, Ordering::Release);
        debug_assert!(before < cell.capacity.load(Ordering::Relaxed), "gave back a seat never taken");
    }

    /// Adds seats; the caller serializes capacity changes (the engine holds a mutex).
    /// Returns the new capacity, or `None` if it would pass `SLOT_CAPACITY_MAX`.
    pub fn add_capacity(&self, slot: u32, seats: u32) -> Option<u32> {
        let cell = &self.cells[slot as usize];
        let capacity = cell.capacity.load(Ordering::Relaxed).checked_add(seats).filter(|c| *c <= SLOT_CAPACITY_MAX)?;
        // Capacity grows before remaining, so `remaining <= capacity` holds throughout.
        cell.capacity.store(capacity, Ordering::Relaxed);
        cell.remaining.fetch_add(seats, Ordering::Release);
        Some(capacity)
    }

    pub fn remaining(&self, slot: u32) -> u32 {
        self.cells[slot as usize].remaining.load(Ordering::Relaxed)
    }

    pub fn capacity(&self, slot: u32) -> u32 {
        self.cells[slot as usize].capacity.load(Ordering::Relaxed)
    }

    /// Snapshot-window replay only (src/state/restore.rs): takes a seat with
    /// no zero check. The count may wrap below zero for a while; it is whole
    /// again once the window is replayed, and `is_consistent` checks that.
    /// Returns whether the count went below zero (wrapped).
    pub fn take_wrapping(&self, slot: u32) -> bool {
        self.take_wrapping_as::<crate::state::Shared>(slot)
    }

    /// `take_wrapping` by a writer of kind `W`: the sole writer, whom no
    /// other thread's change can race, loads and stores.
    #[inline]
    pub(crate) fn take_wrapping_as<W: Writers>(&self, slot: u32) -> bool {
        let remaining = &self.cells[slot as usize].remaining;
        if !W::SOLE {
            return remaining.fetch_sub(1, Ordering::Relaxed) == 0;
        }
        let seen = remaining.load(Ordering::Relaxed);
        remaining.store(seen.wrapping_sub(1), Ordering::Relaxed);
        seen == 0
    }

    /// Snapshot-window replay only: gives a seat back with no check.
    pub fn give_wrapping(&self, slot: u32) {
        self.cells[slot as usize].remaining.fetch_add(1, Ordering::Relaxed);
    }

    /// Snapshot-window replay only: sets the capacity, moving the seats left
    /// by the difference (which may be negative).
    pub fn set_capacity_wrapping(&self, slot: u32, capacity: u32) {
        let cell = &self.cells[slot as usize];
        let before = cell.capacity.swap(capacity, Ordering::Relaxed);
        cell.remaining.fetch_add(capacity.wrapping_sub(before), Ordering::Relaxed);
    }

    /// Seats left within `0..=capacity`: what every slot satisfies outside a
    /// snapshot window's replay.
    pub fn is_consistent(&self, slot: u32) -> bool {
        self.remaining(slot) <= self.capacity(slot)
    }

    /// Asks the CPU to bring a slot's line into cache ahead of `take`.
    #[inline]
    pub fn prefetch(&self, slot: u32) {
        if let Some(cell) = self.cells.get(slot as usize) {
            crate::prefetch(cell);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_until_full_then_give_back() {
        let counters = SlotCounters::new(&[2, 0]);
        assert_eq!(counters.take(0), Ok(()));
        assert_eq!(counters.take(0), Ok(()));
        assert_eq!(counters.take(0), Err(SlotFull));
        assert_eq!(counters.take(1), Err(SlotFull));
        counters.give(0);
        assert_eq!(counters.remaining(0), 1);
        assert_eq!(counters.add_capacity(1, 3), Some(3));
        assert_eq!(counters.remaining(1), 3);
        assert_eq!(counters.add_capacity(1, SLOT_CAPACITY_MAX), None);
    }

    #[test]
    fn wrapping_moves_go_below_zero_and_come_back() {
        let counters = SlotCounters::new(&[1]);
        assert!(!counters.take_wrapping(0));
        assert!(counters.take_wrapping(0), "the second seat of one wraps");
        assert!(!counters.is_consistent(0), "two seats taken from one");
        counters.set_capacity_wrapping(0, 3);
        assert_eq!((counters.remaining(0), counters.capacity(0)), (1, 3));
        counters.give_wrapping(0);
        counters.set_capacity_wrapping(0, 2);
        assert_eq!((counters.remaining(0), counters.capacity(0)), (1, 2));
        assert!(counters.is_consistent(0));
    }

    #[test]
    fn threads_never_overbook() {
        let counters = SlotCounters::new(&[1000; 4]);
        let taken: u32 = std::thread::scope(|s| {
            let workers: Vec<_> =
                (0..4).map(|_| s.spawn(|| (0..2000).filter(|i| counters.take(i % 4).is_ok()).count() as u32)).collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert_eq!(taken, 4000);
        assert!((0..4).all(|slot| counters.remaining(slot) == 0));
    }
}
