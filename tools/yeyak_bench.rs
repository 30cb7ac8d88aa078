//! `yeyak-bench`: whole-process benchmarks at national scale, for the figures
//! in docs/benchmarks.md (criterion covers the micro-benchmarks in benches/).
//!
//! Every run prints the command line's parameters with its result, so a
//! figure can be reproduced from what docs/benchmarks.md records.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};

mod prototype;

use yeyak::calendar::{Date, TimeOfDay};
use yeyak::config::CampaignRules;
use yeyak::durable::{DurableEngine, DurableOptions, OpenError};
use yeyak::inventory::{Inventory, SlotIndex};
use yeyak::log::format::{RECORD_BYTES, SEGMENT_HEADER_BYTES};
use yeyak::log::{Durability, LogOptions, WriteMode};
use yeyak::rules::Channel;
use yeyak::snapshot::SnapshotOptions;
use yeyak::state::{BookingRequest, CountingJournal, Engine, Journal, PersonKey};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "yeyak-bench", about = "yeyak's whole-process benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reservations/s on one thread in process, durability off (a counting journal).
    Reserve {
        #[arg(long, default_value_t = 16_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        people: u64,
        #[arg(long, default_value_t = 1024)]
        batch: usize,
        /// Book through a shared engine (`Engine::new`: read-modify-writes,
        /// for many writer threads) instead of a sole-writer one (as the
        /// server's and `DurableEngine`'s are).
        #[arg(long)]
        shared_writers: bool,
        /// Book the same crowd into a sole-writer and a shared engine, batch
        /// about (which goes first alternates), timing each side: both meet
        /// the machine in the same state, within microseconds.
        #[arg(long, conflicts_with = "shared_writers")]
        against_shared: bool,
        /// The same, a sole-writer engine against the peer (tools/prototype.rs,
        /// without its log), in batches of 1,024.
        #[arg(long, conflicts_with_all = ["shared_writers", "against_shared", "batch"])]
        against_peer: bool,
    },
    /// Durable reservations/s in process: apply + log + group commit, answers released when durable.
    Durable {
        #[arg(long, default_value_t = 16_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        people: u64,
        #[arg(long, default_value_t = 1024)]
        batch: usize,
        #[arg(long, value_enum, default_value_t = WriteMode::Pwrite)]
        write_mode: WriteMode,
        #[arg(long, default_value = "/tmp/yeyak-bench-durable")]
        data_dir: PathBuf,
        /// Keep the data directory (for the recovery benchmark).
        #[arg(long)]
        keep: bool,
        /// Take a background snapshot every this many records (0: none).
        #[arg(long, default_value_t = 0)]
        snapshot_every: u64,
        /// Records the log's ring holds (a power of two); default: LogOptions' default.
        #[arg(long)]
        ring_records: Option<u32>,
        /// Records a log segment holds; default: LogOptions' default (4 Mi).
        #[arg(long)]
        segment_records: Option<u64>,
        /// Take a snapshot when closing (as `yeyak start` does at a clean stop).
        #[arg(long)]
        snapshot_on_close: bool,
        /// `none` writes without syncing: to separate the disk's share from the booking thread's.
        #[arg(long, value_enum, default_value_t = Durability::Sync)]
        durability: Durability,
    },
    /// Time from start to serving: recover a data directory written by `durable --keep`.
    Recovery {
        #[arg(long, default_value = "/tmp/yeyak-bench-durable")]
        data_dir: PathBuf,
        /// Recover from the log alone (the snapshots directory is set aside meanwhile).
        #[arg(long)]
        without_snapshots: bool,
    },
    /// Durable reservations/s end to end over loopback: an in-process server on a fresh
    /// data directory, and client threads in the same process, each connection pipelined.
    Wire {
        #[arg(long, default_value_t = 4_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        people: u64,
        #[command(flatten)]
        load: FrameLoad,
        #[arg(long, default_value = "/tmp/yeyak-bench-wire")]
        data_dir: PathBuf,
        #[arg(long, value_enum, default_value_t = yeyak::server::reactor::Reactor::Tokio)]
        reactor: yeyak::server::reactor::Reactor,
        /// Encode each frame as it is sent, instead of all of them before the clock starts.
        #[arg(long)]
        encode_live: bool,
        /// Ask for batch answers in full (an item header and an Answer an
        /// item) instead of compact ones (a byte an item).
        #[arg(long)]
        full_answers: bool,
    },
    /// Latency at a fixed offered rate, open loop (coordinated-omission safe): one
    /// RESERVE per frame sent on schedule whatever the replies do; latency is
    /// measured from each request's scheduled time to its reply.
    Latency {
        /// Requests per second offered.
        #[arg(long, default_value_t = 130_000, value_parser = clap::value_parser!(u64).range(1..))]
        rate: u64,
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
        #[arg(long, default_value = "/tmp/yeyak-bench-latency")]
        data_dir: PathBuf,
        #[arg(long, value_enum, default_value_t = yeyak::server::reactor::Reactor::Tokio)]
        reactor: yeyak::server::reactor::Reactor,
    },
    /// Peers that do not read their replies: `peers` connections each pipeline
    /// SITE_AVAILABILITY queries and never read, while one more client PINGs
    /// every 20 ms; prints the PINGs' latency, the reply bytes waiting (STATS)
    /// and the resident memory they added.
    Starve {
        #[arg(long, default_value_t = 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=10_000))]
        peers: usize,
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
        /// The server's `reply_bytes_max` [default: the server's default].
        #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 40))]
        reply_bytes_max: Option<usize>,
        #[arg(long, default_value = "/tmp/yeyak-bench-starve")]
        data_dir: PathBuf,
    },
    /// Resident memory of the demo inventory (8.1 M slots) and a people table filled with `people`.
    Memory {
        #[arg(long, default_value_t = 52_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        people: u64,
    },
    /// How fast this machine's memory answers right now, on a table like the
    /// engine's (1 GiB, advised onto huge pages): a dependent random read, and a random
    /// read-modify-write with the next lines prefetched 8 ahead as the engine
    /// does. On a VM whose speed moves within minutes, it tells a slow phase
    /// of the machine from a slow change of the code.
    Probe {
        #[arg(long, default_value_t = 4_000_000)]
        steps: u64,
    },
    /// Issue #2's throwaway design rebuilt (open-addressing people table, one
    /// counter per slot, 48-byte records, a sync thread doing pwrite +
    /// fdatasync) on the crowd of `reserve` and `durable`: a peer saying what
    /// this machine allows right now. No rules, no idempotency, no recovery.
    Prototype {
        /// People in the crowd [default: 16 M as `durable`, with --wire 4 M as `wire`].
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        people: Option<u64>,
        /// Slot counters one to a cache line, as yeyak's, or packed 16 to a line.
        #[arg(long, value_enum, default_value_t = prototype::SlotLayout::Line)]
        slots: prototype::SlotLayout,
        #[arg(long, default_value = "/tmp/yeyak-bench-prototype")]
        data_dir: PathBuf,
        /// No records at all: the peer of `reserve`.
        #[arg(long)]
        without_log: bool,
        /// Behind a loopback server, loaded as `wire` loads yeyak (issue #3's
        /// prototype): the peer of `wire`, with the frame options below.
        #[arg(long)]
        wire: bool,
        #[command(flatten)]
        load: FrameLoad,
    },
}

/// How `wire` (and `prototype --wire`) load the server.
#[derive(clap::Args, Clone, Copy)]
struct FrameLoad {
    /// Reservations per frame (yeyak: 1 sends RESERVE frames, more BATCH frames), 1..=4096.
    #[arg(long, default_value_t = 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    batch: usize,
    /// Frames each connection keeps in flight, 1..=8192; with yeyak, twice
    /// depth × batch at most the server's in-flight limit (2^20 commands).
    #[arg(long, default_value_t = 16, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=8192))]
    depth: usize,
    /// Client connections, one thread each, 1..=256.
    #[arg(long, default_value_t = 2, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    connections: usize,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Reserve { people, against_peer: true, .. } => reserve_against_peer(people),
        Command::Reserve { people, batch, against_shared: true, .. } => reserve_against_shared(people, batch),
        Command::Reserve { people, batch, shared_writers, .. } => reserve(people, batch, shared_writers),
        Command::Durable {
            people,
            batch,
            write_mode,
            data_dir,
            keep,
            snapshot_every,
            ring_records,
            segment_records,
            snapshot_on_close,
            durability,
        } => {
            let log = LogOptions { durability, write_mode, ..LogOptions::default() };
            let segment_size_bytes = segment_records.map_or(log.segment_size_bytes, |records| {
                (SEGMENT_HEADER_BYTES as u64).saturating_add(records.saturating_mul(RECORD_BYTES as u64))
            });
            let log = LogOptions { ring_records: ring_records.unwrap_or(log.ring_records), segment_size_bytes, ..log };
            let options = DurableOptions {
                log,
                snapshots: SnapshotOptions {
                    every_records: snapshot_every,
                    keep: 2,
                    on_close: snapshot_on_close,
                    ..SnapshotOptions::default()
                },
            };
            durable(people, batch, options, data_dir, keep)
        }
        Command::Recovery { data_dir, without_snapshots } => recovery(data_dir, without_snapshots),
        Command::Memory { people } => memory(people),
        Command::Wire {
            people,
            load: FrameLoad { batch, depth, connections },
            data_dir,
            reactor,
            encode_live,
            full_answers,
        } => {
            // The server is asked to admit twice what a connection keeps in flight.
            if depth * batch * 2 > yeyak::server::IN_FLIGHT_MAX_LIMIT as usize {
                eprintln!(
                    "--depth {depth} with --batch {batch}: twice depth × batch must be at most {} (the server's in-flight limit)",
                    yeyak::server::IN_FLIGHT_MAX_LIMIT
                );
                std::process::exit(2);
            }
            wire(WireLoad { people, batch, depth, connections, encode_live, full_answers }, data_dir, reactor)
        }
        Command::Latency { rate, seconds, data_dir, reactor } => latency(rate, seconds, data_dir, reactor),
        Command::Probe { steps } => probe(steps),
        Command::Starve { peers, seconds, reply_bytes_max, data_dir } => {
            starve(peers, seconds, reply_bytes_max, data_dir)
        }
        Command::Prototype {
            people,
            slots,
            data_dir,
            without_log,
            wire,
            load: FrameLoad { batch, depth, connections },
        } => {
            let people = people.unwrap_or(if wire { 4_000_000 } else { 16_000_000 });
            let rules = national_rules(people);
            let inventory = national_inventory(&rules);
            let requests = crowd(&inventory, people);
            if wire {
                if !(1..=prototype::WIRE_FRAME_COMMANDS_MAX).contains(&batch) {
                    eprintln!("--batch {batch}: a frame carries 1..={} commands", prototype::WIRE_FRAME_COMMANDS_MAX);
                    std::process::exit(2);
                }
                let load = (batch, depth.max(1), connections.max(1));
                prototype::run_wire(&requests, inventory.initial_capacity(), slots, &data_dir, load)
            } else {
                prototype::run(&requests, inventory.initial_capacity(), slots, &data_dir, !without_log)
            }
        }
    }
}

/// The demo campaign at national scale, with room for `people`.
fn national_rules(people: u64) -> CampaignRules {
    CampaignRules::parse(&national_campaign_toml(people)).expect("the demo campaign with a larger people_max is valid")
}

/// The demo campaign's generated inventory (8.1 M slots).
fn national_inventory(rules: &CampaignRules) -> Inventory {
    Inventory::load(rules, std::path::Path::new(".")).expect("the demo campaign's inventory is generated")
}

fn national_campaign_toml(people: u64) -> String {
    yeyak::config::DEMO_CAMPAIGN_TOML.replace("people_max = 20_000_000", &format!("people_max = {}", people.max(1)))
}

/// Empties `data_dir` and writes the national demo campaign with room for `people` into it.
fn fresh_data_directory(data_dir: &std::path::Path, people: u64) -> CampaignRules {
    let _ = std::fs::remove_dir_all(data_dir);
    std::fs::create_dir_all(data_dir).expect("can create the data directory");
    std::fs::write(data_dir.join("campaign.toml"), national_campaign_toml(people)).expect("writable");
    national_rules(people)
}

/// The first evening after the rotation: everyone eligible may book.
fn open_evening_ms(rules: &CampaignRules) -> i64 {
    let date = rules.rotation_start.add_days(rules.rotation_digits.len() as i32);
    rules.utc_offset.utc_ms(date, TimeOfDay::parse("21:00").expect("valid"))
}

/// One request per person, each for a free seat, seats in random order.
fn crowd(inventory: &Inventory, people: u64) -> Vec<BookingRequest> {
    let mut seats: Vec<u32> = Vec::with_capacity(people as usize);
    for (slot, capacity) in inventory.initial_capacity().iter().enumerate() {
        for _ in 0..*capacity {
            seats.push(slot as u32);
        }
    }
    assert!(seats.len() as u64 >= people, "{} seats for {people} people", seats.len());
    // Fisher–Yates with a fixed seed: the same crowd every run.
    let mut state = 2021u64;
    for index in (1..seats.len()).rev() {
        state = yeyak::mix64(state.wrapping_add(index as u64));
        seats.swap(index, (state % (index as u64 + 1)) as usize);
    }
    let birth_date = Date::parse("1990-05-15").expect("valid");
    (0..people)
        .map(|index| BookingRequest {
            person: PersonKey(u128::from(yeyak::mix64(index)) << 64 | u128::from(index + 1)),
            birth_date,
            slot: SlotIndex(seats[index as usize]),
            idempotency_key: 1,
            channel: Channel::Person,
        })
        .collect()
}

/// Books `requests` a batch at a time through `apply_batch`, which returns
/// how many of the batch were booked and its `durable_after`; `after_batch`
/// gets the latter. Returns how many were booked.
fn book_all(
    requests: &[BookingRequest],
    batch: usize,
    mut apply_batch: impl FnMut(&[BookingRequest]) -> (u64, u64),
    mut after_batch: impl FnMut(u64),
) -> u64 {
    let mut booked = 0;
    for chunk in requests.chunks(batch) {
        let (batch_booked, durable_after) = apply_batch(chunk);
        booked += batch_booked;
        after_batch(durable_after);
    }
    booked
}

/// Books one batch through the engine's batch loop (`EngineWriter::reserve_each`,
/// the server's loop too) and takes from each outcome what its caller
/// needs: whether it booked, and when it may be released. The peers do the
/// same with theirs (tools/prototype.rs). Never inlined, so that callgrind
/// can count it alone (docs/benchmarks.md).
#[inline(never)]
fn book_batch(engine: &Engine, journal: &impl Journal, chunk: &[BookingRequest], now_ms: i64) -> (u64, u64) {
    let moment = engine.booking_moment(now_ms);
    let (mut booked, mut durable_after) = (0, 0);
    engine.writer().reserve_each(journal, chunk, &moment, |_, outcome| {
        booked += u64::from(outcome.result.is_ok());
        durable_after = durable_after.max(outcome.durable_after);
    });
    (booked, durable_after)
}

fn reserve(people: u64, batch: usize, shared_writers: bool) {
    let rules = national_rules(people);
    let inventory = national_inventory(&rules);
    let requests = crowd(&inventory, people);
    let now_ms = open_evening_ms(&rules);
    let shared = Engine::new(rules, inventory);
    let engine = if shared_writers { shared } else { shared.into_sole_writer() };
    let journal = CountingJournal::default();
    let started = Instant::now();
    let apply_batch = |chunk: &[BookingRequest]| book_batch(&engine, &journal, chunk, now_ms);
    let booked = book_all(&requests, batch, apply_batch, |_| {});
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(booked, people, "every request was for a free seat");
    let writers = if shared_writers { "shared (read-modify-writes)" } else { "sole (the server's)" };
    println!("reserve (in process, 1 thread, durability off): people={people} batch={batch} writers={writers}");
    println!("  {booked} reservations in {seconds:.3} s = {:.2} M reservations/s", booked as f64 / seconds / 1e6);
    println!("  {}", huge_page_share());
}

/// How much of this process's anonymous memory the kernel put on huge pages
/// (/proc/self/smaps_rollup): the tables are advised onto them, but the
/// kernel gives them only where it finds free 2 MiB blocks.
fn huge_page_share() -> String {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let bytes = |name: &str| yeyak::memory::kib_field_bytes(&rollup, name);
    match (bytes("AnonHugePages"), bytes("Anonymous")) {
        (Some(huge), Some(anonymous)) if anonymous > 0 => {
            format!(
                "huge pages: {} of {} MiB anonymous ({:.0} %)",
                huge >> 20,
                anonymous >> 20,
                100.0 * huge as f64 / anonymous as f64
            )
        }
        _ => "huge pages: unknown (no /proc/self/smaps_rollup)".to_string(),
    }
}

fn durable(people: u64, batch: usize, options: DurableOptions, data_dir: PathBuf, keep: bool) {
    let rules = fresh_data_directory(&data_dir, people);
    let (engine, _) = DurableEngine::open(&data_dir, options, false)
        .unwrap_or_else(|error| not_opened("durable", &data_dir, &error, None));
    let requests = crowd(engine.engine().inventory(), people);
    let now_ms = open_evening_ms(&rules);
    let cpu_before = ThreadCpu::now();
    let started = Instant::now();
    // Answers are released a batch at a time once durable; the next batch is
    // applied while the flusher syncs (a server pipelines the same way).
    let mut pending = std::collections::VecDeque::new();
    let mut waited = std::time::Duration::ZERO;
    // A batch appends under one hold of the log's append lock, as a server round does.
    let apply_batch = |chunk: &[BookingRequest]| book_batch(engine.engine(), &engine.log().appender(), chunk, now_ms);
    let booked = book_all(&requests, batch, apply_batch, |durable_after| {
        pending.push_back(durable_after);
        while pending.len() > 64 {
            let oldest = pending.pop_front().expect("non-empty");
            let wait_started = Instant::now();
            engine.log().wait_durable(oldest).expect("the disk works");
            waited += wait_started.elapsed();
        }
    });
    for durable_after in pending {
        engine.log().wait_durable(durable_after).expect("the disk works");
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = engine.log().stats();
    let groups = stats.groups.load(std::sync::atomic::Ordering::Relaxed);
    let sync_nanos = stats.sync_nanos_total.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "durable reserve (in process, 1 booking thread + flusher): people={people} batch={batch} write_mode={:?} ring_records={}",
        options.log.write_mode, options.log.ring_records
    );
    println!("  {booked} durable reservations in {seconds:.3} s = {:.2} M/s; {groups} groups ({:.0} records/group), mean sync {:.1} µs",
        booked as f64 / seconds / 1e6, booked as f64 / groups.max(1) as f64, sync_nanos as f64 / groups.max(1) as f64 / 1e3);
    println!("  the booking thread waited for durability {:.3} s of {seconds:.3} s", waited.as_secs_f64());
    println!("  {}", ThreadCpu::now().since(&cpu_before, seconds));
    let snapshots = engine.snapshot_state();
    if let Some(last) = &snapshots.last {
        println!(
            "  {} background snapshots; the last: {} people, {:.0} MiB in {:.2?}",
            snapshots.taken,
            last.header.people_count,
            last.size_bytes as f64 / (1 << 20) as f64,
            last.elapsed
        );
    }
    engine.close().expect("closes");
    if !keep {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
}

/// Says why `command`'s data directory does not open (and what to do, if
/// known), and exits 2: a bad option or directory, not a failed benchmark.
fn not_opened(command: &str, data_dir: &std::path::Path, error: &OpenError, hint: Option<&str>) -> ! {
    eprintln!("yeyak-bench {command}: {} does not open: {error}", data_dir.display());
    if let Some(hint) = hint {
        eprintln!("  ({hint})");
    }
    std::process::exit(2);
}

fn recovery(data_dir: PathBuf, without_snapshots: bool) {
    let snapshots = data_dir.join(yeyak::durable::SNAPSHOT_DIRECTORY);
    let aside = data_dir.join("snapshots.aside");
    if without_snapshots && snapshots.exists() {
        std::fs::rename(&snapshots, &aside).expect("can set the snapshots aside");
    }
    let started = Instant::now();
    let opened = DurableEngine::open(&data_dir, LogOptions::default(), false);
    let seconds = started.elapsed().as_secs_f64();
    if aside.exists() {
        std::fs::rename(&aside, &snapshots).expect("can put the snapshots back");
    }
    let (engine, report) = opened.unwrap_or_else(|error| {
        let hint = (without_snapshots && matches!(error, OpenError::LogStartsLate { .. })).then_some(
            "its first segments were deleted behind a snapshot; for recovery from the log alone, \
             write a directory without snapshots: yeyak-bench durable --keep --data-dir DIR",
        );
        not_opened("recovery", &data_dir, &error, hint)
    });
    match &report.snapshot {
        Some((path, header)) => println!(
            "recovery from snapshot {} ({} people) + log tail: {} records replayed, serving after {seconds:.3} s",
            path.display(),
            header.people_count,
            report.records_replayed
        ),
        None => println!(
            "recovery from the log alone: {} records replayed, serving after {seconds:.3} s",
            report.records_replayed
        ),
    }
    let yeyak::durable::RecoveryPhases { tables, snapshot, log } = report.phases;
    println!("  of which: tables {tables:.2?}, snapshot {snapshot:.2?}, log {log:.2?}");
    println!("  reservations held: {}", engine.engine().reservations_count());
}

/// `reserve --against-shared`: the same requests into a sole-writer engine
/// and a shared one, batches interleaved.
fn reserve_against_shared(people: u64, batch: usize) {
    let rules = national_rules(people);
    let requests = crowd(&national_inventory(&rules), people);
    let now_ms = open_evening_ms(&rules);
    let sole = Engine::new(rules.clone(), national_inventory(&rules)).into_sole_writer();
    let shared_inventory = national_inventory(&rules);
    let shared = Engine::new(rules, shared_inventory);
    let (sole_journal, shared_journal) = (CountingJournal::default(), CountingJournal::default());
    println!("reserve, sole writer against shared, batches interleaved (in process, 1 thread, durability off): people={people} batch={batch}");
    interleaved(
        &requests,
        batch,
        ["sole writer", "shared"],
        [&mut |chunk| book_batch(&sole, &sole_journal, chunk, now_ms).0, &mut |chunk| {
            book_batch(&shared, &shared_journal, chunk, now_ms).0
        }],
    );
}

/// `reserve --against-peer`: a sole-writer engine and the peer's tables
/// (tools/prototype.rs, no log), batches of 1,024 interleaved.
fn reserve_against_peer(people: u64) {
    const BATCH: usize = 1024;
    let rules = national_rules(people);
    let inventory = national_inventory(&rules);
    let requests = crowd(&inventory, people);
    let now_ms = open_evening_ms(&rules);
    let layout = prototype::SlotLayout::Line;
    let mut peer = prototype::batch_booker(requests.len(), inventory.initial_capacity(), layout);
    let engine = Engine::new(rules, inventory).into_sole_writer();
    let journal = CountingJournal::default();
    println!("yeyak (sole writer) against the prototype, batches interleaved (in process, 1 thread, no log): people={people} batch={BATCH} slots={layout:?}");
    interleaved(
        &requests,
        BATCH,
        ["yeyak", "prototype"],
        [&mut |chunk| book_batch(&engine, &journal, chunk, now_ms).0, &mut peer],
    );
}

/// Books one batch and returns how many it booked (`interleaved`).
type BatchBooker<'a> = dyn FnMut(&[BookingRequest]) -> u64 + 'a;

/// Books `requests` through both `sides` (each books one batch and returns
/// how many it booked), a batch of `batch` to each in turn, which goes first
/// alternating, and times each side: both meet the machine in the same state
/// within microseconds, where whole runs one after the other meet it in
/// different ones. Prints each side's rate and their ratio.
fn interleaved(requests: &[BookingRequest], batch: usize, names: [&str; 2], sides: [&mut BatchBooker; 2]) {
    let mut seconds = [0.0f64; 2];
    let mut booked = [0u64; 2];
    for (index, chunk) in requests.chunks(batch).enumerate() {
        for side in [index % 2, 1 - index % 2] {
            let started = Instant::now();
            booked[side] += sides[side](chunk);
            seconds[side] += started.elapsed().as_secs_f64();
        }
    }
    let all = requests.len() as u64;
    assert_eq!(booked, [all, all], "every request was for a free seat, on both sides");
    let rate = |side: usize| booked[side] as f64 / seconds[side] / 1e6;
    let width = names[0].len().max(names[1].len()) + 1;
    for side in 0..2 {
        let name = format!("{}:", names[side]);
        println!("  {name:width$} {all} reservations in {:.3} s = {:.2} M/s", seconds[side], rate(side));
    }
    println!("  {} / {} = {:.3}", names[0], names[1], rate(0) / rate(1));
}

fn starve(peers: usize, seconds: u64, reply_bytes_max: Option<usize>, data_dir: PathBuf) {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    use yeyak::protocol::handshake::Role;
    use yeyak::protocol::{encode_frame, opcode, SiteQuery};
    let reply_bytes_max = reply_bytes_max.unwrap_or(yeyak::server::ServerConfig::default().reply_bytes_max);
    let (server, keys, rules) =
        serve_fresh_with(1000, &data_dir, |config| yeyak::server::ServerConfig { reply_bytes_max, ..config });
    let (id, key) = keys.first(Role::Gateway).expect("a gateway key");
    let connect = || yeyak::client::Client::connect(server.local_address(), Role::Gateway, id, key).expect("connects");
    // 2,048 queries a write, sent again and again.
    // The day after the open evening: a service day whose slots have not begun.
    let date = rules.rotation_start.add_days(rules.rotation_digits.len() as i32 + 1);
    let mut frames = Vec::new();
    for index in 0..2048u64 {
        let query = SiteQuery { site_id: 1, date };
        encode_frame(&mut frames, opcode::SITE_AVAILABILITY, 0, 10 + index, |out| query.encode(out));
    }
    let resident_before = resident_bytes();
    let stop = AtomicBool::new(false);
    let (latencies, waiting_most, resident_most) = std::thread::scope(|scope| {
        let streams: Vec<std::net::TcpStream> =
            (0..peers).map(|_| connect().into_stream().expect("a stream")).collect();
        for stream in &streams {
            let (mut stream, frames, stop) = (stream.try_clone().expect("a second handle"), &frames, &stop);
            stream.set_write_timeout(Some(Duration::from_millis(200))).expect("a timeout");
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match stream.write(frames) {
                        Ok(_) => {}
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => return,
                    }
                }
            });
        }
        let mut pinger = connect();
        let mut latencies = Vec::new();
        let (mut waiting_most, mut resident_most) = (0, 0);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(seconds) {
            std::thread::sleep(Duration::from_millis(20));
            let sent = Instant::now();
            pinger.call(opcode::PING, |_| {}).expect("a PING is answered");
            latencies.push(sent.elapsed());
            let waiting = pinger.stats().expect("stats").counter("reply bytes waiting").unwrap_or(0);
            waiting_most = waiting_most.max(waiting);
            resident_most = resident_most.max(resident_bytes());
        }
        stop.store(true, Ordering::Relaxed);
        for stream in &streams {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        (latencies, waiting_most, resident_most)
    });
    let mut sorted = latencies.clone();
    sorted.sort();
    let at = |quantile: f64| sorted[((sorted.len() - 1) as f64 * quantile) as usize].as_secs_f64() * 1e3;
    println!("starve: {peers} peers that do not read, {seconds} s, reply_bytes_max {} MiB", reply_bytes_max >> 20);
    println!(
        "  PING every 20 ms ({} PINGs): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        sorted.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    println!(
        "  reply bytes waiting at most {:.1} MiB; resident memory added at most {:.1} MiB",
        waiting_most as f64 / f64::from(1 << 20),
        resident_most.saturating_sub(resident_before) as f64 / f64::from(1 << 20)
    );
    server.shutdown().expect("closes");
    let _ = std::fs::remove_dir_all(&data_dir);
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    yeyak::memory::kib_field_bytes(&status, "VmRSS").unwrap_or(0)
}

fn memory(people: u64) {
    let rules = national_rules(people);
    let inventory = national_inventory(&rules);
    let slots = inventory.slot_count();
    let engine = Engine::new(rules, inventory);
    let journal = CountingJournal::default();
    let birth_date = Date::parse("1990-05-15").expect("valid");
    let now_ms = open_evening_ms(engine.rules());
    // Everyone asks for slot 0 (capacity ≤ 3): each becomes a known person,
    // most are refused SLOT_FULL, as in a real crowd.
    let mut outcomes = Vec::with_capacity(4096);
    let mut requests = Vec::with_capacity(4096);
    for start in (0..people).step_by(4096) {
        requests.clear();
        requests.extend((start..(start + 4096).min(people)).map(|index| BookingRequest {
            person: PersonKey(u128::from(yeyak::mix64(index)) << 64 | u128::from(index + 1)),
            birth_date,
            slot: SlotIndex((index % u64::from(slots)) as u32),
            idempotency_key: 1,
            channel: Channel::Person,
        }));
        outcomes.clear();
        engine.reserve_batch(&journal, &requests, now_ms, &mut outcomes);
    }
    let rss = resident_bytes();
    println!(
        "memory: {} people known, {slots} slots, {} reservations",
        engine.people_count(),
        engine.reservations_count()
    );
    println!("  resident {:.2} GiB (bar: 4 GiB for 52 M people + 8 M slots)", rss as f64 / (1u64 << 30) as f64);
}

/// The load of the `wire` benchmark.
struct WireLoad {
    people: u64,
    batch: usize,
    depth: usize,
    connections: usize,
    /// Encode frames as they are sent (else before the clock starts).
    encode_live: bool,
    /// Batch answers in full (else compact).
    full_answers: bool,
}

/// CPU time of this process's threads by name (/proc/self/task/*/stat,
/// user + system, in clock ticks): how busy each thread was during a run.
/// Threads that ended before the second reading (the client threads) are
/// missing from the difference.
struct ThreadCpu(std::collections::BTreeMap<i32, ThreadTimes>);

/// One thread's name, user and system clock ticks, and, where /proc has
/// them, its nanoseconds waiting on a run queue, the times it was run, and
/// its voluntary and involuntary context switches (`Scheduling`).
type ThreadTimes = (String, [u64; 2], Option<Scheduling>);

/// Nanoseconds waiting on a run queue, times run, times the thread gave up
/// its core (slept: waited for work, a lock, I/O) and times it was taken
/// from it (preempted).
type Scheduling = [u64; 4];

impl ThreadCpu {
    fn now() -> ThreadCpu {
        let mut threads = std::collections::BTreeMap::new();
        for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
            // "tid (comm) state ..."; comm may hold spaces, so split at the last ')'.
            let (Some(open), Some(close), Some(ticks)) = (stat.find('('), stat.rfind(')'), cpu_ticks(&stat)) else {
                continue;
            };
            let name = stat[open + 1..close].to_string();
            let tid = stat[..open].trim().parse().unwrap_or(0);
            let waits = scheduling(&task.path());
            threads.insert(tid, (name, ticks, waits));
        }
        // The whole process, ended threads included, under tid 0.
        if let Some(ticks) = std::fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(cpu_ticks) {
            threads.insert(0, ("(process, all threads)".to_string(), ticks, None));
        }
        ThreadCpu(threads)
    }

    /// The whole process's user and system seconds since `before`.
    fn process_since(&self, before: &ThreadCpu) -> [f64; 2] {
        let ticks = |cpu: &ThreadCpu| cpu.0.get(&0).map_or([0, 0], |(_, ticks, _)| *ticks);
        let ([user, system], [user_before, system_before]) = (ticks(self), ticks(before));
        [seconds_of_ticks(user.saturating_sub(user_before)), seconds_of_ticks(system.saturating_sub(system_before))]
    }

    /// "thread cpu seconds (user + system) during the run (wall 2.10 s):
    /// yeyak-engine 1.85+0.05, ...".
    fn since(&self, before: &ThreadCpu, wall_seconds: f64) -> String {
        let mut by_name = std::collections::BTreeMap::<&str, [f64; 2]>::new();
        for (tid, (name, ticks, _)) in &self.0 {
            let earlier = before.0.get(tid).map_or([0, 0], |(_, ticks, _)| *ticks);
            let seconds = by_name.entry(name.as_str()).or_default();
            for (sum, (now, then)) in seconds.iter_mut().zip(ticks.iter().zip(earlier)) {
                *sum += seconds_of_ticks(now.saturating_sub(then));
            }
        }
        let busy: Vec<String> =
            by_name.iter().map(|(name, [user, system])| format!("{name} {user:.2}+{system:.2}")).collect();
        format!("thread cpu seconds (user+system) during the run (wall {wall_seconds:.2} s): {}", busy.join(", "))
    }

    /// "runnable but waiting for a core: yeyak-engine 0.124 s, run 1015
    /// times (slept 612, preempted 403), ...": how long each thread waited on
    /// a run queue since `before` (a thread that waits there is not the
    /// thread that limits the run), how often it was run, and why it stopped
    /// running (/proc schedstat and status).
    fn waits_since(&self, before: &ThreadCpu) -> String {
        let mut by_name = std::collections::BTreeMap::<&str, Scheduling>::new();
        for (tid, (name, _, waits)) in &self.0 {
            let (Some(now), then) = (waits, before.0.get(tid).and_then(|(_, _, waits)| *waits)) else { continue };
            let then = then.unwrap_or_default();
            let sum = by_name.entry(name.as_str()).or_default();
            for ((sum, now), then) in sum.iter_mut().zip(now).zip(then) {
                *sum += now.saturating_sub(then);
            }
        }
        let waited: Vec<String> = by_name
            .iter()
            .filter(|(_, [_, runs, ..])| *runs > 0)
            .map(|(name, [wait_ns, runs, slept, preempted])| {
                format!(
                    "{name} {:.3} s, run {runs} times (slept {slept}, preempted {preempted})",
                    *wait_ns as f64 / 1e9
                )
            })
            .collect();
        format!("runnable but waiting for a core (/proc schedstat, status): {}", waited.join("; "))
    }
}

/// A thread's `Scheduling` from its /proc/self/task/<tid> directory: the
/// second and third fields of `schedstat` (the first is time run), and
/// `status`'s voluntary_ctxt_switches and nonvoluntary_ctxt_switches.
fn scheduling(task: &std::path::Path) -> Option<Scheduling> {
    let schedstat = std::fs::read_to_string(task.join("schedstat")).ok()?;
    let mut fields = schedstat.split_whitespace().skip(1).map(|field| field.parse::<u64>().ok());
    let (wait_ns, runs) = (fields.next()??, fields.next()??);
    let status = std::fs::read_to_string(task.join("status")).ok()?;
    let field = |key: &str| status.lines().find_map(|line| line.strip_prefix(key)?.trim().parse::<u64>().ok());
    Some([wait_ns, runs, field("voluntary_ctxt_switches:")?, field("nonvoluntary_ctxt_switches:")?])
}

/// Seconds in `ticks` clock ticks (/proc's unit of CPU time).
fn seconds_of_ticks(ticks: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / ticks_per_second
}

/// User and system seconds added up (the client threads' CPU time).
fn cpu_sum(a: [f64; 2], b: [f64; 2]) -> [f64; 2] {
    [a[0] + b[0], a[1] + b[1]]
}

/// The calling thread's CPU time so far, user and system seconds (for
/// threads that end before `ThreadCpu` could read them: the clients).
fn own_cpu_seconds() -> [f64; 2] {
    // SAFETY: getrusage writes only the struct it is given.
    let (usage, status) = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        let status = libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        (usage, status)
    };
    if status != 0 {
        return [f64::NAN; 2];
    }
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    [seconds(usage.ru_utime), seconds(usage.ru_stime)]
}

/// utime and stime of a /proc stat line: the 14th and 15th fields, the
/// 12th and 13th after the command name (which may hold spaces and ends at
/// the last ')').
fn cpu_ticks(stat: &str) -> Option<[u64; 2]> {
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some([fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?])
}

/// One connection's frames: RESERVE frames (batch 1) or BATCH frames.
fn encode_frames(
    requests: &[BookingRequest],
    batch: usize,
    batch_flags: u16,
    first_request_id: u64,
) -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
    use yeyak::protocol::body::{put_batch_header_with, put_batch_item};
    use yeyak::protocol::{encode_frame, opcode};
    let (mut bytes, mut frames) = (Vec::new(), Vec::new());
    for (index, frame) in requests.chunks(batch).enumerate() {
        let start = bytes.len();
        let request_id = first_request_id + index as u64;
        if batch == 1 {
            encode_frame(&mut bytes, opcode::RESERVE, 0, request_id, |out| frame[0].encode(out));
        } else {
            encode_frame(&mut bytes, opcode::BATCH, 0, request_id, |out| {
                put_batch_header_with(out, frame.len() as u16, batch_flags);
                for request in frame {
                    put_batch_item(out, opcode::RESERVE, |out| request.encode(out));
                }
            });
        }
        frames.push(start..bytes.len());
    }
    (bytes, frames)
}

fn wire(load: WireLoad, data_dir: PathBuf, reactor: yeyak::server::reactor::Reactor) {
    use yeyak::protocol::handshake::{Role, PROOF_REQUEST_ID};
    use yeyak::protocol::opcode;
    let WireLoad { people, batch, depth, connections, encode_live, full_answers } = load;
    let batch_flags = if full_answers { 0 } else { yeyak::protocol::body::batch_flag::COMPACT_ANSWERS };
    let (server, keys, requests) = serve_fresh(people, &data_dir, (depth * batch * 2) as u32, reactor);
    let address = server.local_address();
    let per_connection = requests.len().div_ceil(connections);
    let shares: Vec<&[BookingRequest]> = requests.chunks(per_connection).collect();
    let first_request_id = PROOF_REQUEST_ID + 1;
    // The load generator shares the two cores with the engine: unless told
    // otherwise it encodes every frame before the clock starts.
    let prepared: Vec<_> = if encode_live {
        Vec::new()
    } else {
        shares.iter().map(|share| encode_frames(share, batch, batch_flags, first_request_id)).collect()
    };
    let cpu_before = ThreadCpu::now();
    let started = Instant::now();
    let (booked, clients_cpu) = std::thread::scope(|scope| {
        let workers: Vec<_> = shares
            .iter()
            .enumerate()
            .map(|(connection, share)| {
                let keys = &keys;
                let prepared = prepared.get(connection);
                scope.spawn(move || {
                    let (id, key) = keys.first(Role::Gateway).expect("a gateway key");
                    let mut client = yeyak::client::Client::connect(address, Role::Gateway, id, key).expect("connects");
                    let frame_count = share.len().div_ceil(batch);
                    let (mut sent, mut received, mut ok) = (0, 0, 0u64);
                    while received < frame_count {
                        while sent < frame_count && sent - received < depth {
                            match prepared {
                                Some((bytes, frames)) => client.queue_encoded(&bytes[frames[sent].clone()]),
                                None => {
                                    let frame = &share[sent * batch..share.len().min((sent + 1) * batch)];
                                    let (bytes, _) =
                                        encode_frames(frame, batch, batch_flags, first_request_id + sent as u64);
                                    client.queue_encoded(&bytes)
                                }
                            }
                            .expect("sends");
                            sent += 1;
                        }
                        // One blocking read, then every reply it brought, before sending more.
                        let mut reply = Some(client.receive().expect("a reply"));
                        while let Some((header, body)) = reply {
                            assert_ne!(header.opcode, opcode::ERROR, "the request was refused whole");
                            // Every answer's first byte is its result code: count the OK ones.
                            ok += if batch == 1 {
                                u64::from(body[0] == 0)
                            } else if full_answers {
                                yeyak::protocol::body::BatchItems::of_replies(&body)
                                    .expect("a batch reply")
                                    .map(|item| u64::from(item.expect("a batch reply item").body[0] == 0))
                                    .sum::<u64>()
                            } else {
                                let answers =
                                    yeyak::protocol::body::CompactAnswers::parse(&body).expect("a compact reply");
                                answers.codes().filter(|code| *code == 0).count() as u64
                            };
                            received += 1;
                            reply = client.receive_buffered().expect("a reply");
                        }
                    }
                    (ok, own_cpu_seconds())
                })
            })
            .collect();
        let mut total = (0, [0.0; 2]);
        for worker in workers {
            let (ok, cpu) = worker.join().expect("client threads do not panic");
            total = (total.0 + ok, cpu_sum(total.1, cpu));
        }
        total
    });
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(booked, people, "every request was for a free seat");
    let encoding = if encode_live { "encoded live" } else { "frames encoded beforehand" };
    println!("wire (loopback, in-process server and clients, {encoding}): people={people} batch={batch} depth={depth} connections={connections} reactor={reactor:?}");
    println!("  {booked} durable reservations in {seconds:.3} s = {:.2} M/s", booked as f64 / seconds / 1e6);
    let [clients_user, clients_system] = clients_cpu;
    let cpu_after = ThreadCpu::now();
    println!("  {}, clients {clients_user:.2}+{clients_system:.2}", cpu_after.since(&cpu_before, seconds));
    println!("  {}", cpu_after.waits_since(&cpu_before));
    server.shutdown().expect("closes");
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Starts an in-process server on a fresh national data directory; returns it,
/// its keys and the crowd of requests (one free seat each).
/// A server on a fresh data directory for `people`, on loopback at the
/// campaign's first open evening (SIMULATED clock), its settings otherwise
/// the defaults as `configure` changes them; with its keys and campaign.
fn serve_fresh_with(
    people: u64,
    data_dir: &std::path::Path,
    configure: impl FnOnce(yeyak::server::ServerConfig) -> yeyak::server::ServerConfig,
) -> (yeyak::server::Server, yeyak::server::keys::KeyRing, yeyak::config::CampaignRules) {
    let rules = fresh_data_directory(data_dir, people);
    let (engine, _) = DurableEngine::open(data_dir, LogOptions::default(), false).expect("opens");
    let (keys, _) = yeyak::server::keys::KeyRing::load(data_dir, true).expect("keys");
    let clock = yeyak::server::Clock::Simulated { start_ms: open_evening_ms(&rules), since: Instant::now() };
    let config = configure(yeyak::server::ServerConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        clock,
        ..yeyak::server::ServerConfig::default()
    });
    let server = yeyak::server::Server::start(engine, keys.clone(), config).expect("serves");
    (server, keys, rules)
}

/// `serve_fresh_with` admitting `in_flight_max` a connection, on `reactor`,
/// and the crowd's requests.
fn serve_fresh(
    people: u64,
    data_dir: &std::path::Path,
    in_flight_max: u32,
    reactor: yeyak::server::reactor::Reactor,
) -> (yeyak::server::Server, yeyak::server::keys::KeyRing, Vec<BookingRequest>) {
    let (server, keys, _) = serve_fresh_with(people, data_dir, |config| yeyak::server::ServerConfig {
        in_flight_max: in_flight_max.min(yeyak::server::IN_FLIGHT_MAX_LIMIT),
        // The benchmark's connections may keep more in flight than the default queue holds.
        ingress_queue_commands: (in_flight_max as usize)
            .saturating_mul(64)
            .clamp(1 << 20, yeyak::server::INGRESS_QUEUE_COMMANDS_LIMIT),
        reactor,
        ..config
    });
    let requests = crowd(server.engine().engine().inventory(), people);
    (server, keys, requests)
}

fn latency(rate: u64, seconds: u64, data_dir: PathBuf, reactor: yeyak::server::reactor::Reactor) {
    use std::io::{Read, Write};
    use yeyak::protocol::handshake::Role;
    let total = rate * seconds;
    let (server, keys, requests) = serve_fresh(total, &data_dir, yeyak::server::IN_FLIGHT_MAX_LIMIT, reactor);
    let (id, key) = keys.first(Role::Gateway).expect("a gateway key");
    let client = yeyak::client::Client::connect(server.local_address(), Role::Gateway, id, key).expect("connects");
    let mut writer = client.into_stream().expect("a stream");
    let mut reader = writer.try_clone().expect("a second handle");
    let interval_nanos = 1_000_000_000 / rate.max(1);
    let started = Instant::now();
    let receiver = std::thread::spawn(move || {
        let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        let mut buffer = Vec::with_capacity(1 << 20);
        let mut chunk = vec![0u8; 1 << 16];
        let mut received = 0;
        while received < total {
            let read = reader.read(&mut chunk).expect("reads");
            assert!(read > 0, "the server closed the connection");
            buffer.extend_from_slice(&chunk[..read]);
            let mut start = 0;
            while let Ok((header, body)) = yeyak::protocol::decode_frame(&buffer[start..], u32::MAX) {
                // Request ids count from 1 in send order: request n was due at n × interval.
                let due_nanos = (header.request_id - 1) * interval_nanos;
                let now_nanos = started.elapsed().as_nanos() as u64;
                histogram.saturating_record(now_nanos.saturating_sub(due_nanos).max(1000) / 1000);
                start += yeyak::protocol::FRAME_HEADER_BYTES + body.len();
                received += 1;
            }
            buffer.drain(..start);
        }
        histogram
    });
    let mut frames = Vec::with_capacity(1 << 16);
    for (index, request) in requests.iter().enumerate() {
        let due = std::time::Duration::from_nanos(index as u64 * interval_nanos);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            if !frames.is_empty() {
                writer.write_all(&frames).expect("writes");
                frames.clear();
            }
            std::thread::sleep(wait);
        }
        let booking = *request;
        yeyak::protocol::encode_frame(&mut frames, yeyak::protocol::opcode::RESERVE, 0, index as u64 + 1, |out| {
            booking.encode(out)
        });
    }
    writer.write_all(&frames).expect("writes");
    let histogram = receiver.join().expect("the receiver does not panic");
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    println!("latency (loopback, open loop, one RESERVE per frame, one connection, {reactor:?} reactor): offered {rate}/s for {seconds} s");
    println!(
        "  achieved {achieved:.0}/s; latency µs: p50 {} p99 {} p999 {} max {}",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max()
    );
    server.shutdown().expect("closes");
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// One cache line of the probe's table.
#[repr(C, align(64))]
struct ProbeLine {
    value: std::sync::atomic::AtomicU64,
}

// SAFETY: an atomic integer (and padding) is valid as all zeros and needs no drop.
unsafe impl yeyak::memory::Zeroable for ProbeLine {}

fn probe(steps: u64) {
    const LINES: usize = 1 << 24; // 1 GiB of 64-byte lines
    const AHEAD: u64 = 8;
    use std::sync::atomic::Ordering::Relaxed;
    let lines = yeyak::memory::ZeroedArray::<ProbeLine>::new(LINES);
    let mask = LINES as u64 - 1;
    // Each address depends on the value read before it: one miss at a time.
    let started = Instant::now();
    let mut index = 0u64;
    for step in 0..steps {
        let value = lines[index as usize].value.load(Relaxed);
        index = yeyak::mix64(step ^ value ^ index) & mask;
    }
    std::hint::black_box(index);
    let dependent_ns = started.elapsed().as_nanos() as f64 / steps as f64;
    // Independent lines, prefetched ahead, read and written: the engine's pattern.
    let line_of = |step: u64| &lines[(yeyak::mix64(step) & mask) as usize];
    let started = Instant::now();
    for step in 0..steps {
        yeyak::prefetch(line_of(step + AHEAD));
        let line = line_of(step);
        line.value.store(line.value.load(Relaxed) + 1, Relaxed);
    }
    let streamed_ns = started.elapsed().as_nanos() as f64 / steps as f64;
    // No memory at all: mixes in registers (about 9 instructions each). One
    // chain, each mix waiting for the last, shows the clock; eight chains side
    // by side show how much of the core this thread gets (a busy sibling
    // hyperthread of another guest takes its share of the execution units).
    let mixes = steps * 16;
    let started = Instant::now();
    let mut value = 1u64;
    for step in 0..mixes {
        value = yeyak::mix64(value ^ step);
    }
    std::hint::black_box(value);
    let chain_ns = started.elapsed().as_nanos() as f64 / mixes as f64;
    let started = Instant::now();
    let mut values = [1u64, 2, 3, 4, 5, 6, 7, 8];
    for step in 0..mixes / 8 {
        for value in &mut values {
            *value = yeyak::mix64(*value ^ step);
        }
    }
    std::hint::black_box(values);
    let parallel_ns = started.elapsed().as_nanos() as f64 / mixes as f64;
    println!("probe (1 GiB table): {}", huge_page_share());
    println!(
        "probe: compute {chain_ns:.2} ns a dependent mix, {parallel_ns:.2} ns a mix in 8 chains; dependent random read {dependent_ns:.1} ns, random read-modify-write prefetched {AHEAD} ahead {streamed_ns:.1} ns"
    );
}
