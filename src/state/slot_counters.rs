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

pub struct SlotCounters {
    cells: Box<[SlotCell]>,
}

impl SlotCounters {
    /// Counters starting full at the given capacities.
    pub fn new(capacities: &[u32]) -> SlotCounters {
        let cells = capacities
            .iter()
            .map(|capacity| {
                assert!(*capacity <= SLOT_CAPACITY_MAX, "inventory checks capacities");
                SlotCell { remaining: AtomicU32::new(*capacity), capacity: AtomicU32::new(*capacity) }
            })
            .collect();
        SlotCounters { cells }
    }

    pub fn len(&self) -> u32 {
        self.cells.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
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
