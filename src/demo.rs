//! The demo evening the `yeyak` binary runs on its defaults: a simulated crowd
//! books the demo campaign (durably, from several threads), then the engine
//! restarts from its log and checks that it recovered the identical state.
//!
//! The crowd is SIMULATED: people, birth dates, evenings and slot choices come
//! from a seeded generator, and each person acts through the same
//! `DurableEngine` calls a gateway would make.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::calendar::{Date, MS_PER_MINUTE};
use crate::durable::{DurableEngine, OpenError, RecoveryReport};
use crate::inventory::SlotIndex;
use crate::log::Appender;
use crate::log::LogOptions;
use crate::rules::Channel;
use crate::snapshot::SnapshotSummary;
use crate::state::{BookingRequest, CancelRequest, Engine, Outcome, PersonKey, ResultCode};

#[derive(Clone, Copy, Debug)]
pub struct DemoOptions {
    pub people: u64,
    pub threads: u32,
    /// Varies the crowd; by default each run brings new people.
    pub seed: u64,
}

#[derive(Debug)]
pub struct DemoSummary {
    pub first_open: RecoveryReport,
    pub attempts: u64,
    pub results: BTreeMap<ResultCode, u64>,
    pub booking_time: Duration,
    /// The snapshot taken while the crowd booked (none if nothing was logged).
    pub snapshot: Option<Result<SnapshotSummary, String>>,
    pub reservations_held: u64,
    pub people_known: u64,
    pub restart: RecoveryReport,
    pub recovered_state_equal: bool,
}

/// A tiny seeded generator (SplitMix64): the crowd is the same for the same seed.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        crate::mix64(self.0)
    }
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Answers per thread released together after one wait for durability, as a
/// server releases a group of pipelined answers after its group commit.
const ANSWERS_PER_RELEASE: usize = 4096;

struct Crowd<'a> {
    engine: &'a DurableEngine,
    seed: u64,
    results: BTreeMap<ResultCode, u64>,
    attempts: u64,
    /// Answers computed but not yet released: they wait for `durable_after`.
    unreleased: Vec<ResultCode>,
    durable_after: u64,
}

impl Crowd<'_> {
    /// Takes an outcome into the pipeline; what the simulated person sees next
    /// is decided from it, but it is counted only once released.
    fn count(&mut self, outcome: Outcome<SlotIndex>) -> Result<SlotIndex, ResultCode> {
        let code = outcome.result.as_ref().map_or_else(|r| r.code(), |_| ResultCode::Ok);
        self.unreleased.push(code);
        self.durable_after = self.durable_after.max(outcome.durable_after);
        if self.unreleased.len() >= ANSWERS_PER_RELEASE {
            self.release();
        }
        outcome.result.map_err(|refusal| refusal.code())
    }

    /// Runs one command under the log's append lock, taken before the
    /// command (the lock order) and let go before its outcome is counted
    /// (counting may wait for durability, which needs the lock let go).
    fn apply(&self, command: impl FnOnce(&Engine, &Appender<'_>) -> Outcome<SlotIndex>) -> Outcome<SlotIndex> {
        let log = self.engine.log().appender();
        command(self.engine.engine(), &log)
    }

    fn release(&mut self) {
        let durable = self.engine.log().wait_durable(self.durable_after);
        for code in self.unreleased.drain(..) {
            // An answer whose record could not be made durable is a refusal.
            let code = if durable.is_err() && code == ResultCode::Ok { ResultCode::LogUnavailable } else { code };
            self.attempts += 1;
            *self.results.entry(code).or_default() += 1;
        }
    }

    fn random_slot(&self, dice: &mut Dice) -> SlotIndex {
        let inventory = self.engine.engine().inventory();
        let sites = inventory.sites().len() as u64;
        if sites == 0 {
            // No slots at all (a CSV inventory with none): every request is
            // for a slot the campaign does not have, and is refused as such.
            return SlotIndex(0);
        }
        // A tenth of the crowd wants the same popular slots: the first
        // morning slot of one of the first 200 sites.
        if dice.chance(10) {
            return inventory.first_slot_of_day(dice.below(sites.min(200)) as u32, 0);
        }
        SlotIndex(dice.below(u64::from(inventory.slot_count())) as u32)
    }

    /// The evening a person tries: mostly their own rotation day.
    fn evening_ms(&self, dice: &mut Dice, birth_date: Date) -> i64 {
        let rules = self.engine.engine().rules();
        let digit = crate::config::CampaignRules::rotation_digit(birth_date);
        let rotation_days = rules.rotation_digits.len() as u64;
        let own_day = rules.rotation_digits.iter().position(|d| *d == digit).unwrap_or(0) as u64;
        let day = if dice.chance(85) { own_day } else { dice.below(rotation_days + 1) };
        let date = rules.rotation_start.add_days(day as i32);
        rules.utc_offset.utc_ms(date, rules.window_opens) + dice.below(180) as i64 * MS_PER_MINUTE
    }

    fn person_acts(&mut self, index: u64) {
        let mut dice = Dice(self.seed ^ crate::mix64(index));
        let person = PersonKey(u128::from(dice.next()) << 64 | u128::from(dice.next() | 1));
        let born = Date::from_ymd(1965, 1, 1).map_or(0, |d| d.days_since_epoch());
        let birth_date = Date::from_days_since_epoch(born + dice.below(43 * 365) as i32);
        let now_ms = self.evening_ms(&mut dice, birth_date);
        let mut request =
            BookingRequest { person, birth_date, slot: SlotIndex(0), idempotency_key: 1, channel: Channel::Person };
        let mut booked = Err(ResultCode::SlotFull);
        for attempt in 1..=3 {
            request.slot = self.random_slot(&mut dice);
            request.idempotency_key = attempt;
            booked = self.count(self.apply(|engine, log| engine.reserve(log, &request, now_ms)));
            if booked != Err(ResultCode::SlotFull) {
                break;
            }
        }
        if booked.is_err() {
            return;
        }
        if dice.chance(3) {
            // The network dropped the answer; the gateway retries with the same key.
            let _ = self.count(self.apply(|engine, log| engine.reserve(log, &request, now_ms)));
        }
        if dice.chance(2) {
            request.idempotency_key = 10;
            request.slot = self.random_slot(&mut dice);
            let _ = self.count(self.apply(|engine, log| engine.reserve(log, &request, now_ms)));
        }
        if dice.chance(2) {
            request.idempotency_key = 11;
            request.slot = self.random_slot(&mut dice);
            let _ = self.count(self.apply(|engine, log| engine.change(log, &request, now_ms)));
        }
        if dice.chance(2) {
            let cancel = CancelRequest { person, birth_date, idempotency_key: 12, channel: Channel::Person };
            let _ = self.count(self.apply(|engine, log| engine.cancel(log, &cancel, now_ms)));
        }
    }
}

/// Runs the demo evening in `data_directory` (created with the demo campaign if empty).
pub fn run_demo(
    data_directory: &Path,
    options: DemoOptions,
    log_options: LogOptions,
) -> Result<DemoSummary, OpenError> {
    let (engine, first_open) = DurableEngine::open(data_directory, log_options, true)?;
    let seed = options.seed ^ first_open.next_lsn;
    let threads = u64::from(options.threads.max(1));
    let started = Instant::now();
    let mut snapshot = None;
    let crowds: Vec<Crowd<'_>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let engine = &engine;
                scope.spawn(move || {
                    let mut crowd = Crowd {
                        engine,
                        seed,
                        results: BTreeMap::new(),
                        attempts: 0,
                        unreleased: Vec::with_capacity(ANSWERS_PER_RELEASE),
                        durable_after: 0,
                    };
                    let mut index = thread;
                    while index < options.people {
                        crowd.person_acts(index);
                        index += threads;
                    }
                    crowd.release();
                    crowd
                })
            })
            .collect();
        snapshot = Some(snapshot_while_booking(&engine, &workers, first_open.next_lsn + options.people / 3));
        workers.into_iter().map(|w| w.join().expect("demo crowd threads do not panic")).collect()
    });
    let booking_time = started.elapsed();
    let mut results = BTreeMap::new();
    let mut attempts = 0;
    for crowd in crowds {
        attempts += crowd.attempts;
        for (code, count) in crowd.results {
            *results.entry(code).or_default() += count;
        }
    }
    let state_before = engine.engine().logical_state();
    let reservations_held = engine.engine().reservations_count();
    let people_known = engine.engine().people_count();
    // A clean close; the crash tests cover the unclean ones.
    let _ = engine.close();
    let (engine, restart) = DurableEngine::open(data_directory, log_options, false)?;
    let recovered_state_equal = engine.engine().logical_state() == state_before;
    Ok(DemoSummary {
        first_open,
        attempts,
        results,
        booking_time,
        snapshot: snapshot.flatten(),
        reservations_held,
        people_known,
        restart,
        recovered_state_equal,
    })
}

/// Once the log passes `at_lsn` (or the crowd is done), takes a snapshot
/// while the crowd goes on booking; a failure is reported, not fatal.
fn snapshot_while_booking<T>(
    engine: &DurableEngine,
    workers: &[std::thread::ScopedJoinHandle<'_, T>],
    at_lsn: u64,
) -> Option<Result<SnapshotSummary, String>> {
    while engine.log().next_lsn() < at_lsn && !workers.iter().all(|w| w.is_finished()) {
        std::thread::sleep(Duration::from_millis(5));
    }
    engine.take_snapshot().map_err(|e| e.to_string()).transpose()
}
