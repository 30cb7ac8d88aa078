//! Multi-thread stress: four threads book, change and cancel on a few slots
//! with little capacity, through the durable engine. No slot is overbooked,
//! nobody holds two slots, every acknowledged answer is in the final state,
//! and a restart recovers that state exactly.
//!
//! The seed is printed; set YEYAK_STRESS_SEED to replay a run.

mod common;

use std::collections::BTreeMap;

use common::*;
use yeyak::durable::DurableEngine;
use yeyak::inventory::SlotIndex;

const THREADS: u64 = 4;
const OWNED_PEOPLE: u64 = 300;
/// People every thread books for at once (several devices of one person).
const SHARED_PEOPLE: u64 = 40;
const SLOTS: u32 = 50;
const OPERATIONS_PER_THREAD: u64 = 4_000;

struct Dice(u64);

impl Dice {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        yeyak::mix64(self.0) % bound
    }
}

#[test]
fn no_overbooking_no_double_booking_under_threads() {
    let seed = std::env::var("YEYAK_STRESS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("stress seed: {seed} (YEYAK_STRESS_SEED={seed} replays the schedule of requests)");
    let directory = tempfile::tempdir().unwrap();
    let rules = write_small_campaign(directory.path());
    let now = open_evening_ms(&rules);
    let (engine, _) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();

    // Each thread's view of its own people: what the last acknowledged answer says they hold.
    let views: Vec<BTreeMap<u64, Option<SlotIndex>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let engine = &engine;
                scope.spawn(move || {
                    let mut dice = Dice(seed ^ yeyak::mix64(thread));
                    let mut view = BTreeMap::new();
                    for operation in 0..OPERATIONS_PER_THREAD {
                        let shared = dice.below(5) == 0;
                        let index = if shared {
                            OWNED_PEOPLE + dice.below(SHARED_PEOPLE)
                        } else {
                            dice.below(OWNED_PEOPLE / THREADS) * THREADS + thread
                        };
                        let slot = dice.below(u64::from(SLOTS)) as u32;
                        let key = 1 + operation * THREADS + thread;
                        let (result, holds_after) = match dice.below(5) {
                            0..=2 => {
                                let r = engine.reserve(&booking(index, slot, key), now);
                                (r.is_ok(), r.ok())
                            }
                            3 => {
                                let r = engine.change(&booking(index, slot, key), now);
                                (r.is_ok(), r.ok())
                            }
                            _ => (engine.cancel(&cancelling(index, key), now).is_ok(), None),
                        };
                        if result && !shared {
                            view.insert(index, holds_after);
                        }
                    }
                    view
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });

    let state = engine.engine().logical_state();
    let mut holders = vec![0u32; state.remaining.len()];
    for record in state.people.values() {
        if let Some(slot) = record.holds {
            holders[slot.0 as usize] += 1;
        }
    }
    for (slot, held) in holders.iter().enumerate() {
        assert!(state.remaining[slot] <= state.capacity[slot], "slot {slot}");
        assert_eq!(state.capacity[slot] - state.remaining[slot], *held, "slot {slot}: seats taken vs holders");
    }
    for view in &views {
        for (index, holds) in view {
            assert_eq!(state.people[&person(*index)].holds, *holds, "person {index}: acknowledged answer lost");
        }
    }
    assert!(state.reservations() > 0);
    engine.close().unwrap();
    let (engine, _) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
    assert!(engine.engine().logical_state() == state, "restart changed the state");
}
