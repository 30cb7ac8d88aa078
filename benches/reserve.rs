//! Micro-benchmarks of the state machine, durability off (a counting journal):
//! reserve on one thread, and two threads on different slots against two
//! threads on the same slot (the cost of contention). Figures and the commands
//! that produced them: docs/benchmarks.md. National-scale runs (16 M people,
//! 8.1 M slots) are `yeyak-bench reserve`; these use a smaller campaign so
//! that each measurement can start from a fresh engine.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use yeyak::calendar::{Date, TimeOfDay};
use yeyak::config::{CampaignRules, DEMO_CAMPAIGN_TOML};
use yeyak::inventory::{Inventory, SlotIndex};
use yeyak::rules::Channel;
use yeyak::state::{BookingRequest, CapacityChange, CountingJournal, Engine, PersonKey};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// People one engine takes before it is replaced by a fresh one.
const PEOPLE_PER_ENGINE: u64 = 4_000_000;
/// Requests handed to `reserve_batch` at once, as a batch frame would carry.
const BATCH: usize = 1024;

/// 1,500 sites × 30 days × 18 slots (810,000 slots, 52 MB of counters) with
/// about 1,000 seats each, and room for `PEOPLE_PER_ENGINE` people (128 MB).
fn rules() -> CampaignRules {
    let text = DEMO_CAMPAIGN_TOML
        .replace("sites = 15000", "sites = 1500")
        .replace("capacity_per_slot_mean = 2", "capacity_per_slot_mean = 1000")
        .replace("people_max = 20_000_000", &format!("people_max = {PEOPLE_PER_ENGINE}"));
    CampaignRules::parse(&text).expect("valid")
}

fn fresh_engine() -> Engine {
    let rules = rules();
    let inventory = Inventory::load(&rules, Path::new(".")).expect("generated");
    Engine::new(rules, inventory)
}

/// The first evening after the rotation, 21:00 local: everyone eligible may book.
fn open_evening_ms(rules: &CampaignRules) -> i64 {
    let date = rules.rotation_start.add_days(rules.rotation_digits.len() as i32);
    rules.utc_offset.utc_ms(date, TimeOfDay::parse("21:00").expect("valid"))
}

fn request(person: u64, slot: u32) -> BookingRequest {
    BookingRequest {
        person: PersonKey(u128::from(yeyak::mix64(person)) << 64 | u128::from(person + 1)),
        birth_date: Date::parse("1990-05-15").expect("valid"),
        slot: SlotIndex(slot),
        idempotency_key: 1,
        channel: Channel::Person,
    }
}

/// Books `count` new people on one thread, in batches; returns the time taken
/// (engine replacement excluded). Slots are spread over the whole inventory.
fn reserve_on_one_thread(count: u64) -> Duration {
    let mut engine = fresh_engine();
    let now_ms = open_evening_ms(engine.rules());
    let slots = engine.inventory().slot_count();
    let journal = CountingJournal::default();
    let mut outcomes = Vec::with_capacity(BATCH);
    let mut requests = Vec::with_capacity(BATCH);
    let (mut elapsed, mut booked_in_engine) = (Duration::ZERO, 0);
    let mut person = 0;
    while person < count {
        if booked_in_engine + BATCH as u64 > PEOPLE_PER_ENGINE {
            engine = fresh_engine();
            booked_in_engine = 0;
        }
        let batch = (count - person).min(BATCH as u64);
        requests.clear();
        requests.extend((person..person + batch).map(|p| request(p, (yeyak::mix64(p) % u64::from(slots)) as u32)));
        outcomes.clear();
        let started = Instant::now();
        engine.reserve_batch(&journal, &requests, now_ms, &mut outcomes);
        elapsed += started.elapsed();
        // Slots are drawn at random, so a few small ones fill up: as in a real crowd.
        let booked = outcomes.iter().filter(|o| o.result.is_ok()).count();
        assert!(booked * 100 >= outcomes.len() * 98, "only {booked} of {} booked", outcomes.len());
        person += batch;
        booked_in_engine += batch;
    }
    elapsed
}

/// Two threads book `count` people each, in batches: on slots of their own
/// (`same_slot` false), or all on slot 0. Each thread has its own counting
/// journal, so that the two contend on slot counters (and people buckets)
/// only, not on a shared sequence counter.
fn reserve_on_two_threads(count: u64, same_slot: bool) -> Duration {
    let engine = fresh_engine();
    let now_ms = open_evening_ms(engine.rules());
    if same_slot {
        let capacity = engine.slot_seats(SlotIndex(0)).expect("slot 0 exists").1;
        let seats = yeyak::state::SLOT_CAPACITY_MAX - capacity;
        let change = CapacityChange { slot: SlotIndex(0), seats, expected_capacity: capacity, operator_id: 1 };
        assert!(engine.add_capacity(&CountingJournal::default(), &change).result.is_ok());
    }
    let per_thread = count.min(PEOPLE_PER_ENGINE / 2);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..2u64 {
            let engine = &engine;
            scope.spawn(move || {
                let journal = CountingJournal::default();
                let (mut requests, mut outcomes) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
                let mut booked = 0;
                for first in (0..per_thread).step_by(BATCH) {
                    requests.clear();
                    requests.extend((first..(first + BATCH as u64).min(per_thread)).map(|index| {
                        // Different slots: thread 0 the even ones, thread 1 the odd ones (64-byte cells apart).
                        let slot = if same_slot { 0 } else { ((index * 2 + thread) % 800_000) as u32 };
                        request(thread * PEOPLE_PER_ENGINE + index, slot)
                    }));
                    outcomes.clear();
                    engine.reserve_batch(&journal, &requests, now_ms, &mut outcomes);
                    booked += outcomes.iter().filter(|o| o.result.is_ok()).count() as u64;
                }
                assert!(booked * 100 >= per_thread * 98, "only {booked} of {per_thread} booked");
            });
        }
    });
    // Scale to the requested count if an engine's people ran out first.
    started.elapsed().mul_f64(count as f64 / per_thread as f64)
}

fn reserve(c: &mut Criterion) {
    let mut group = c.benchmark_group("reserve");
    group.measurement_time(Duration::from_secs(4)).sample_size(10);
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_thread_batch_1024", |b| b.iter_custom(reserve_on_one_thread));
    group.throughput(Throughput::Elements(2));
    group.bench_function("two_threads_different_slots", |b| b.iter_custom(|n| reserve_on_two_threads(n, false)));
    group.bench_function("two_threads_same_slot", |b| b.iter_custom(|n| reserve_on_two_threads(n, true)));
    group.finish();
}

criterion_group!(benches, reserve);
criterion_main!(benches);
