//! Multi-thread stress: four threads book, change and cancel on a few slots
//! with little capacity, through the durable engine, a bare shared engine
//! and a bare sole-writer engine. No slot is overbooked, nobody holds two
//! slots, every acknowledged answer is in the final state, and (durable) a
//! restart recovers that state exactly.
//!
//! The seed is printed; set YEYAK_STRESS_SEED to replay a run.

mod common;

use std::collections::BTreeMap;

use std::path::Path;

use common::*;
use yeyak::config::CampaignRules;
use yeyak::durable::DurableEngine;
use yeyak::inventory::{Inventory, SlotIndex};
use yeyak::state::{CommandKind, CountingJournal, Engine, LogicalState};

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

/// What a stress thread asks of an engine: one of its commands.
enum Ask {
    Reserve(u64, u32, u64),
    Change(u64, u32, u64),
    Cancel(u64, u64),
}

/// The answer to an `Ask`: acknowledged or not, and the slot it says the person holds.
type Answered = (bool, Option<SlotIndex>);

fn seed() -> u64 {
    let seed = std::env::var("YEYAK_STRESS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("stress seed: {seed} (YEYAK_STRESS_SEED={seed} replays the schedule of requests)");
    seed
}

/// Runs `THREADS` threads of random commands through `ask`; returns each
/// thread's view of its own people (what the last acknowledged answer says
/// they hold).
fn hammer(seed: u64, ask: &(dyn Fn(Ask) -> Answered + Sync)) -> Vec<BTreeMap<u64, Option<SlotIndex>>> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
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
                        let (acknowledged, holds_after) = match dice.below(5) {
                            0..=2 => ask(Ask::Reserve(index, slot, key)),
                            3 => ask(Ask::Change(index, slot, key)),
                            _ => ask(Ask::Cancel(index, key)),
                        };
                        if acknowledged && !shared {
                            view.insert(index, holds_after);
                        }
                    }
                    view
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    })
}

/// No slot overbooked, seats taken = holders, every acknowledged answer kept.
fn check(state: &LogicalState, views: &[BTreeMap<u64, Option<SlotIndex>>]) {
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
    for view in views {
        for (index, holds) in view {
            assert_eq!(state.people[&person(*index)].holds, *holds, "person {index}: acknowledged answer lost");
        }
    }
    assert!(state.reservations() > 0);
}

/// A bare shared engine on the small campaign, and an instant it books at.
fn small_engine() -> (Engine, i64) {
    let rules = CampaignRules::parse(&small_campaign_toml()).unwrap();
    let now = open_evening_ms(&rules);
    let inventory = Inventory::plan(&rules, Path::new(".")).unwrap().build().unwrap();
    (Engine::new(rules, inventory), now)
}

/// The commands of `hammer` against a bare engine with a counting journal.
fn ask_engine(engine: &Engine, now: i64, ask: Ask) -> Answered {
    let journal = CountingJournal::default();
    match ask {
        Ask::Reserve(index, slot, key) => {
            let r = engine.reserve(&journal, &booking(index, slot, key), now).result;
            (r.is_ok(), r.ok())
        }
        Ask::Change(index, slot, key) => {
            let r = engine.change(&journal, &booking(index, slot, key), now).result;
            (r.is_ok(), r.ok())
        }
        Ask::Cancel(index, key) => (engine.cancel(&journal, &cancelling(index, key), now).result.is_ok(), None),
    }
}

/// Through the durable engine, whose changes hold the log's append lock and
/// its engine's writer lock (a sole-writer engine): then a restart.
#[test]
fn no_overbooking_no_double_booking_under_threads() {
    let seed = seed();
    let directory = tempfile::tempdir().unwrap();
    let rules = write_small_campaign(directory.path());
    let now = open_evening_ms(&rules);
    let (engine, _) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
    assert!(engine.engine().has_sole_writer());
    let views = hammer(seed, &|ask| match ask {
        Ask::Reserve(index, slot, key) => {
            let r = engine.reserve(&booking(index, slot, key), now);
            (r.is_ok(), r.ok())
        }
        Ask::Change(index, slot, key) => {
            let r = engine.change(&booking(index, slot, key), now);
            (r.is_ok(), r.ok())
        }
        Ask::Cancel(index, key) => (engine.cancel(&cancelling(index, key), now).is_ok(), None),
    });
    let state = engine.engine().logical_state();
    check(&state, &views);
    engine.close().unwrap();
    let (engine, _) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
    assert!(engine.engine().logical_state() == state, "restart changed the state");
}

/// A shared engine, no log: the threads' commands really run at once, on
/// the lock-free counters and the person latches alone.
#[test]
fn a_shared_engine_neither_overbooks_nor_double_books_under_threads() {
    let seed = seed();
    let (engine, now) = small_engine();
    assert!(!engine.has_sole_writer());
    let views = hammer(seed, &|ask| ask_engine(&engine, now, ask));
    check(&engine.logical_state(), &views);
}

/// A sole-writer engine called from many threads (each command takes its
/// writer lock), while another thread reads people and seats throughout:
/// readers take no lock, and see every record whole.
#[test]
fn a_sole_writer_engine_serializes_writers_while_readers_read() {
    let seed = seed();
    let (engine, now) = small_engine();
    let engine = engine.into_sole_writer();
    let (started, done) = (std::sync::atomic::AtomicBool::new(false), std::sync::atomic::AtomicBool::new(false));
    let views = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut reads = 0u64;
            started.store(true, std::sync::atomic::Ordering::Release);
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let state = engine.logical_state();
                for (slot, seats_left) in state.remaining.iter().enumerate() {
                    assert!(*seats_left <= state.capacity[slot], "slot {slot} read above its capacity");
                }
                for record in state.people.values() {
                    let last = record.last.expect("a person in the table has a last command");
                    assert_eq!(record.holds.is_some(), last.kind != CommandKind::Cancel, "{record:?} read torn");
                }
                reads += 1;
            }
            reads
        });
        // The writers start once the reader runs (on two busy cores it may
        // otherwise start after they finish, and read nothing while they write).
        while !started.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::yield_now();
        }
        let views = hammer(seed, &|ask| ask_engine(&engine, now, ask));
        done.store(true, std::sync::atomic::Ordering::Release);
        println!("the reader read the whole state {} times while the writers wrote", reader.join().unwrap());
        views
    });
    check(&engine.logical_state(), &views);
}
