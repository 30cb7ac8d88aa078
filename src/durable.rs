//! A campaign's data directory, opened: the engine recovered from its log,
//! and a log writer that makes every answer wait for its record's durability.
//!
//! Data directory layout (docs/architecture.md):
//! - `campaign.toml`: the campaign configuration (the demo one is written on
//!   first start when asked for);
//! - `log/segment-NNNNNNNNNN.log`: the log segments.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{CampaignRules, ConfigError, DEMO_CAMPAIGN_TOML};
use crate::inventory::{Inventory, InventoryError, SlotIndex};
use crate::log::format::RECORD_HEADER_BYTES;
use crate::log::recovery::{list_segments, recover_with_lookahead, RecoveredLog};
use crate::log::retention::read_segment_header;
use crate::log::storage::{create_directory_durably, sync_directory};
use crate::log::{FileStorage, LogOptions, LogStorage, LogWriter, RecoveryError, RecoveryMode, TornTail};
use crate::snapshot::format::SnapshotHeader;
use crate::snapshot::{
    list_snapshots, remove_temporary_files, retire, take_snapshot, CheckedSnapshot, SnapshotError, SnapshotOptions,
    SnapshotSummary,
};
use crate::state::{
    BookingRequest, CancelRequest, Engine, Entry, LogUnavailable, Lsn, Outcome, PeopleTable, PersonKey, Refusal,
    SlotCounters,
};

pub const CAMPAIGN_FILE: &str = "campaign.toml";
pub const LOG_DIRECTORY: &str = "log";
pub const SNAPSHOT_DIRECTORY: &str = "snapshots";
/// Held locked (flock) by the one engine that has the data directory open.
pub const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no campaign in {path}: write a campaign.toml there (see docs/configuration.md)")]
    NoCampaign { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Config { path: PathBuf, source: ConfigError },
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error(transparent)]
    LogOptions(#[from] crate::log::writer::LogOptionsError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("{path} is locked: another yeyak has this data directory open; stop it first")]
    Locked { path: PathBuf },
    #[error(
        "the log begins at record {first_lsn}, and no snapshot covers the records before it ({}); \
         restore the snapshots directory from a copy",
        if passed_over.is_empty() { "there is none".to_string() } else { passed_over.join("; ") }
    )]
    LogStartsLate { first_lsn: u64, passed_over: Vec<String> },
    #[error(
        "the log holds no segment, but its numbering reached segment {next_segment_index}: its earlier \
         segments were removed behind snapshots, and no snapshot can be used ({}); restore the snapshots \
         directory from a copy",
        if passed_over.is_empty() { "there is none".to_string() } else { passed_over.join("; ") }
    )]
    LogRetiredWithoutSnapshot { next_segment_index: u64, passed_over: Vec<String> },
    #[error(
        "the snapshot {path} holds the effects of records up to {}, but the log ends at record {}: \
         records a snapshot relied on are missing from the log",
        end_lsn - 1, log_next_lsn - 1
    )]
    SnapshotAheadOfLog { path: PathBuf, end_lsn: u64, log_next_lsn: u64 },
    #[error(
        "the campaign's tables need {} MiB ({} MiB of people table for limits.people_max = {people_max}, \
         {} MiB of counters and capacities for {slot_count} slots, {} MiB of log ring), more than the {} MiB \
         this process \
         may still take (MemAvailable, capped by its cgroup's limit): lower limits.people_max or the \
         inventory's size in campaign.toml, or start where more memory is free \
         ({MEMORY_CHECK_SKIP_ENV}=1 starts anyway)",
        mib_up(people_table_bytes + slot_counters_bytes + ring_bytes), mib_up(*people_table_bytes),
        mib_up(*slot_counters_bytes), mib_up(*ring_bytes), available_bytes >> 20
    )]
    NotEnoughMemory {
        people_table_bytes: u64,
        slot_counters_bytes: u64,
        ring_bytes: u64,
        available_bytes: u64,
        people_max: u64,
        slot_count: u64,
    },
}

/// Set to 1, start-up skips the memory check (a machine with swap, say,
/// where `MemAvailable` understates what a start-up can get).
pub const MEMORY_CHECK_SKIP_ENV: &str = "YEYAK_SKIP_MEMORY_CHECK";

fn mib_up(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// Refuses an engine whose tables would not fit in the memory available:
/// they are faulted in whole at start-up, so a campaign sized past the
/// machine would otherwise end in the kernel's out-of-memory killer, or in an
/// abort, rather than in an error that says what to change. A slot costs its
/// counter and its capacity in the inventory (4 bytes); a generated
/// inventory is checked before it is built, from the slot count the rules
/// plan, a CSV one once read.
fn check_table_memory(
    rules: &CampaignRules,
    slot_count: u64,
    log: &LogOptions,
    available: Option<u64>,
) -> Result<(), OpenError> {
    let people_table_bytes = PeopleTable::table_bytes(rules.people_max);
    let slot_bytes = SlotCounters::table_bytes(1) + std::mem::size_of::<u32>() as u64;
    let slot_counters_bytes = slot_count.saturating_mul(slot_bytes);
    let ring_bytes = u64::from(log.ring_records) * crate::log::format::RECORD_BYTES as u64;
    let needed_bytes = people_table_bytes.saturating_add(slot_counters_bytes).saturating_add(ring_bytes);
    match available {
        Some(available_bytes) if needed_bytes > available_bytes => Err(OpenError::NotEnoughMemory {
            people_table_bytes,
            slot_counters_bytes,
            ring_bytes,
            available_bytes,
            people_max: rules.people_max,
            slot_count,
        }),
        _ => Ok(()),
    }
}

/// The memory start-up may count on, unless the check is switched off.
fn memory_to_check_against() -> Option<u64> {
    if std::env::var_os(MEMORY_CHECK_SKIP_ENV).is_some_and(|value| value == "1") {
        return None;
    }
    crate::memory::available_bytes()
}

/// What a data directory is opened with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DurableOptions {
    pub log: LogOptions,
    pub snapshots: SnapshotOptions,
}

impl From<LogOptions> for DurableOptions {
    fn from(log: LogOptions) -> DurableOptions {
        DurableOptions { log, snapshots: SnapshotOptions::default() }
    }
}

/// A snapshot recovery started from: its file and header.
pub type UsedSnapshot = (PathBuf, SnapshotHeader);

/// Where replay starts and where the snapshot's window ends (records below it
/// overwrite, docs/snapshot-format.md): `(1, 1)` without a snapshot.
fn snapshot_window(snapshot: Option<&UsedSnapshot>) -> (Lsn, Lsn) {
    snapshot.map_or((1, 1), |(_, header)| (header.start_lsn, header.end_lsn))
}

/// What start-up found and did.
#[derive(Debug, Clone)]
pub struct RecoveryReport {
    /// The snapshot recovery started from, if any.
    pub snapshot: Option<UsedSnapshot>,
    /// Snapshots not used, newest first, each with the reason.
    pub snapshots_passed_over: Vec<String>,
    pub records_replayed: u64,
    /// Log records behind the snapshot, not replayed.
    pub records_skipped: u64,
    pub next_lsn: u64,
    pub torn_tail: Option<TornTail>,
    pub removed_segments: Vec<PathBuf>,
    pub elapsed: Duration,
    pub created_demo_campaign: bool,
}

/// "in 0.7 s from snapshot … (N people) and M log records after it", then a
/// line for each snapshot passed over and for a torn tail cut off.
impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.snapshot {
            Some((path, header)) => write!(
                f,
                "in {:.2?} from snapshot {} ({} people) and {} log records after it",
                self.elapsed,
                path.display(),
                header.people_count,
                self.records_replayed
            )?,
            None => write!(f, "in {:.2?} from the log: {} records replayed", self.elapsed, self.records_replayed)?,
        }
        for passed_over in &self.snapshots_passed_over {
            write!(f, "\n  snapshot passed over: {passed_over}")?;
        }
        if let Some(tail) = &self.torn_tail {
            write!(f, "\n  torn tail cut at byte {} of {}: {}", tail.offset, tail.path.display(), tail.defect)?;
        }
        Ok(())
    }
}

/// The engine and its log, shared with the background snapshot thread.
struct Core {
    /// The data directory's lock, held as long as the engine lives.
    _lock: std::fs::File,
    engine: Engine,
    log: LogWriter,
    snapshot_directory: PathBuf,
    log_directory: PathBuf,
    snapshot_options: SnapshotOptions,
    /// Held while a snapshot is taken: one at a time.
    snapshot_lock: Mutex<()>,
    /// What snapshots did; locked only briefly (STATS reads it).
    snapshot_state: Mutex<SnapshotState>,
}

#[derive(Debug, Default, Clone)]
pub struct SnapshotState {
    /// The log position of the newest snapshot attempt (taken or failed).
    pub attempted_lsn: u64,
    pub taken: u64,
    pub last: Option<SnapshotSummary>,
    pub last_error: Option<String>,
}

/// The background snapshot thread and how to stop it.
struct Snapshotter {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

/// How often the background thread looks whether a snapshot is due.
const SNAPSHOT_POLL: Duration = Duration::from_millis(100);

pub struct DurableEngine {
    core: Arc<Core>,
    snapshotter: Option<Snapshotter>,
}

/// Reads the campaign of a data directory, writing the demo one first if
/// there is none and `create_demo` is set. Returns whether it created it.
pub fn load_campaign(data_directory: &Path, create_demo: bool) -> Result<(CampaignRules, bool), OpenError> {
    let path = data_directory.join(CAMPAIGN_FILE);
    let io = |source| OpenError::Io { path: path.clone(), source };
    let mut created = false;
    if !path.exists() {
        if !create_demo {
            return Err(OpenError::NoCampaign { path: data_directory.to_path_buf() });
        }
        std::fs::create_dir_all(data_directory).map_err(io)?;
        std::fs::write(&path, DEMO_CAMPAIGN_TOML).map_err(io)?;
        created = true;
    }
    let text = std::fs::read_to_string(&path).map_err(io)?;
    let rules = CampaignRules::parse(&text).map_err(|source| OpenError::Config { path: path.clone(), source })?;
    Ok((rules, created))
}

/// Takes the data directory's lock, so that two engines never write one log.
fn lock_data_directory(data_directory: &Path) -> Result<std::fs::File, OpenError> {
    use std::os::fd::AsRawFd;
    let path = data_directory.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| OpenError::Io { path: path.clone(), source })?;
    // SAFETY: `flock` on a descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(OpenError::Locked { path });
        }
        return Err(OpenError::Io { path, source: error });
    }
    Ok(file)
}

/// The number of the first record the log holds, if it has a segment.
fn first_log_lsn(log_directory: &Path) -> Result<Option<u64>, OpenError> {
    let segments = list_segments(log_directory)?;
    let Some((_, path)) = segments.first() else {
        return Ok(None);
    };
    // An unreadable header is recovery's business (a torn last segment, or corruption).
    Ok(read_segment_header(path).ok().map(|header| header.first_lsn))
}

/// The engine after the newest usable snapshot was restored into it.
struct Restored {
    engine: Engine,
    snapshot: Option<UsedSnapshot>,
    /// Slots whose count went below zero at restore: the window must mend them.
    wrapped_slots: Vec<u32>,
    passed_over: Vec<String>,
}

/// Restores the newest usable snapshot into an engine from `build_engine`. A
/// snapshot that fails its checks, or whose content the engine refuses, is
/// passed over (renamed `*.invalid`, so that it no longer counts among the
/// kept ones, and reported) for an older one, in a fresh engine.
fn restore_newest_snapshot(
    build_engine: &dyn Fn() -> Result<Engine, OpenError>,
    snapshot_directory: &Path,
    log_first_lsn: Option<u64>,
) -> Result<Restored, OpenError> {
    let mut passed_over = Vec::new();
    let mut engine = build_engine()?;
    for (start_lsn, path) in list_snapshots(snapshot_directory)?.into_iter().rev() {
        if let Some(first) = log_first_lsn.filter(|first| *first > start_lsn) {
            passed_over.push(format!("{}: the log begins at record {first}, after it", path.display()));
            continue;
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let restored = CheckedSnapshot::open(&path, engine.rules().campaign_id, engine.inventory())
            .and_then(|checked| checked.restore(&engine, threads).map(|wrapped| (checked.header, wrapped)));
        match restored {
            Ok((header, wrapped_slots)) => {
                return Ok(Restored { engine, snapshot: Some((path, header)), wrapped_slots, passed_over });
            }
            Err(error) => {
                tracing::warn!(%error, "passing over a snapshot");
                passed_over.push(error.to_string());
                set_aside_invalid(&path)?;
                if matches!(error, SnapshotError::Rejected { .. }) {
                    // Half restored: start again from an empty engine (the
                    // old one let go of first: two would need twice the memory).
                    drop(engine);
                    engine = build_engine()?;
                }
            }
        }
    }
    if let Some(first) = log_first_lsn.filter(|first| *first > 1) {
        return Err(OpenError::LogStartsLate { first_lsn: first, passed_over });
    }
    Ok(Restored { engine, snapshot: None, wrapped_slots: Vec::new(), passed_over })
}

/// Renames a snapshot that failed to `<name>.invalid`: kept for inspection,
/// never listed (nor counted among the kept snapshots) again.
fn set_aside_invalid(path: &Path) -> Result<(), OpenError> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".invalid");
    std::fs::rename(path, &aside).map_err(|source| OpenError::Io { path: path.to_path_buf(), source })?;
    let directory = path.parent().unwrap_or(Path::new("."));
    sync_directory(directory).map_err(|source| OpenError::Io { path: directory.to_path_buf(), source })
}

impl DurableEngine {
    /// Opens a data directory with the real file storage.
    pub fn open(
        data_directory: &Path,
        options: impl Into<DurableOptions>,
        create_demo: bool,
    ) -> Result<(DurableEngine, RecoveryReport), OpenError> {
        let options = options.into();
        let log_directory = data_directory.join(LOG_DIRECTORY);
        let storage = FileStorage::new(&log_directory, options.log.write_mode);
        Self::open_with_storage(data_directory, options, create_demo, Box::new(storage))
    }

    /// Opens a data directory, writing new segments through `storage`
    /// (fault tests pass a failing one): the newest usable snapshot, then the
    /// log from the snapshot's start (docs/snapshot-format.md, "Recovery").
    pub fn open_with_storage(
        data_directory: &Path,
        options: impl Into<DurableOptions>,
        create_demo: bool,
        storage: Box<dyn LogStorage>,
    ) -> Result<(DurableEngine, RecoveryReport), OpenError> {
        let options = options.into();
        options.log.check()?;
        let started = Instant::now();
        let (rules, created_demo_campaign) = load_campaign(data_directory, create_demo)?;
        let lock = lock_data_directory(data_directory)?;
        let campaign_id = rules.campaign_id;
        let build_engine = || -> Result<Engine, OpenError> {
            let available = memory_to_check_against();
            if let Some(planned) = Inventory::planned_slot_count(&rules) {
                check_table_memory(&rules, planned, &options.log, available)?;
            }
            let inventory = Inventory::load(&rules, data_directory)?;
            check_table_memory(&rules, u64::from(inventory.slot_count()), &options.log, available)?;
            Ok(Engine::new(rules.clone(), inventory))
        };
        let log_directory = data_directory.join(LOG_DIRECTORY);
        create_directory_durably(&log_directory)
            .map_err(|source| OpenError::Io { path: log_directory.clone(), source })?;
        let snapshot_directory = data_directory.join(SNAPSHOT_DIRECTORY);
        remove_temporary_files(&snapshot_directory)?;
        let restored = restore_newest_snapshot(&build_engine, &snapshot_directory, first_log_lsn(&log_directory)?)?;
        let Restored { engine, snapshot, wrapped_slots, passed_over: snapshots_passed_over } = restored;
        let recovered = replay_log(&engine, &log_directory, snapshot.as_ref(), wrapped_slots)?;
        check_log_reaches_back(&recovered, snapshot.as_ref(), &snapshots_passed_over)?;
        let (from_lsn, _) = snapshot_window(snapshot.as_ref());
        if let Some(header) = recovered.segments.first().map(|s| s.header) {
            if header.campaign_id != campaign_id {
                return Err(OpenError::Recovery(RecoveryError::Corrupt {
                    path: log_directory.clone(),
                    offset: 0,
                    reason: format!("the log is of campaign {}, campaign.toml says {campaign_id}", header.campaign_id),
                }));
            }
        }
        let log =
            LogWriter::start(storage, options.log, campaign_id, recovered.next_lsn, recovered.next_segment_index)?;
        let report = RecoveryReport {
            snapshot,
            snapshots_passed_over,
            records_replayed: recovered.records,
            records_skipped: recovered.records_skipped,
            next_lsn: recovered.next_lsn,
            torn_tail: recovered.torn_tail,
            removed_segments: recovered.removed_segments,
            elapsed: started.elapsed(),
            created_demo_campaign,
        };
        let snapshot_state = SnapshotState { attempted_lsn: from_lsn, ..SnapshotState::default() };
        let core = Arc::new(Core {
            _lock: lock,
            engine,
            log,
            snapshot_directory,
            log_directory,
            snapshot_options: options.snapshots,
            snapshot_lock: Mutex::new(()),
            snapshot_state: Mutex::new(snapshot_state),
        });
        let snapshotter = (options.snapshots.every_records > 0).then(|| Snapshotter::start(Arc::clone(&core)));
        Ok((DurableEngine { core, snapshotter }, report))
    }

    pub fn engine(&self) -> &Engine {
        &self.core.engine
    }

    pub fn log(&self) -> &LogWriter {
        &self.core.log
    }

    /// Takes a snapshot now, while other threads go on booking, then retires
    /// older snapshots and the log segments behind the kept ones. `Ok(None)`:
    /// nothing was logged since the last one.
    pub fn take_snapshot(&self) -> Result<Option<SnapshotSummary>, SnapshotError> {
        self.core.take_snapshot()
    }

    /// What the snapshots taken since start-up did.
    pub fn snapshot_state(&self) -> SnapshotState {
        self.core.state().clone()
    }

    /// Releases an outcome once it is durable; if it never can be, the answer
    /// is a refusal (nothing that is not durable is acknowledged).
    fn release<T>(&self, outcome: Outcome<T>) -> Result<T, Refusal> {
        self.core.log.wait_durable(outcome.durable_after).map_err(Refusal::LogUnavailable)?;
        outcome.result
    }

    pub fn reserve(&self, request: &BookingRequest, now_ms: i64) -> Result<SlotIndex, Refusal> {
        // The append lock before the person's latch (`LogWriter::appender`).
        let outcome = self.core.engine.reserve(&self.core.log.appender(), request, now_ms);
        self.release(outcome)
    }

    pub fn change(&self, request: &BookingRequest, now_ms: i64) -> Result<SlotIndex, Refusal> {
        let outcome = self.core.engine.change(&self.core.log.appender(), request, now_ms);
        self.release(outcome)
    }

    pub fn cancel(&self, request: &CancelRequest, now_ms: i64) -> Result<SlotIndex, Refusal> {
        let outcome = self.core.engine.cancel(&self.core.log.appender(), request, now_ms);
        self.release(outcome)
    }

    /// See `Engine::add_capacity`: `expected_capacity` makes a retry safe.
    pub fn add_capacity(
        &self,
        slot: SlotIndex,
        seats: u32,
        expected_capacity: u32,
        operator_id: u32,
    ) -> Result<u32, Refusal> {
        // The append lock before the capacity lock, as in a server round.
        let log = self.core.log.appender();
        let outcome = self.core.engine.add_capacity(&log, slot, seats, expected_capacity, operator_id);
        drop(log);
        self.release(outcome)
    }

    /// Reads wait for the records they may have seen, so they never show a
    /// change that could still be lost. Once the log has failed, reads keep
    /// working from memory, which may then include the failed group's changes
    /// (their requesters were refused; a restart drops them): see
    /// docs/log-format.md, "When the disk fails".
    fn release_read<T>(&self, outcome: Outcome<T>) -> Result<T, Refusal> {
        match self.core.log.wait_durable(outcome.durable_after) {
            Ok(()) | Err(LogUnavailable::DiskFull | LogUnavailable::IoFailed) => outcome.result,
            Err(closed) => Err(Refusal::LogUnavailable(closed)),
        }
    }

    pub fn reservation_of(&self, person: PersonKey) -> Result<Option<SlotIndex>, Refusal> {
        let outcome = self.core.engine.reservation_of(&self.core.log.appender(), person);
        self.release_read(outcome)
    }

    /// Stops the snapshot thread (letting a snapshot under way finish), takes
    /// a last snapshot if `SnapshotOptions::on_close` says so, makes
    /// everything appended durable and stops the log writer.
    pub fn close(mut self) -> Result<(), Refusal> {
        self.stop_snapshotter();
        if self.core.snapshot_options.on_close && self.core.log.writable().is_ok() {
            // A failure is logged; the log still holds everything.
            let _ = self.core.take_snapshot();
        }
        self.core.log.close().map_err(Refusal::LogUnavailable)
    }

    fn stop_snapshotter(&mut self) {
        if let Some(snapshotter) = self.snapshotter.take() {
            snapshotter.stop();
        }
    }
}

impl Drop for DurableEngine {
    fn drop(&mut self) {
        self.stop_snapshotter();
    }
}

/// After recovery: the log must reach back to where replay started. A log
/// whose first segments were removed (behind snapshots) and which holds no
/// segment now (its only one's creation was cut short, or someone removed
/// them) is refused without a snapshot. (With a snapshot, `replay_log` has
/// refused it already: the log's numbering no longer reaches the snapshot's
/// end, `SnapshotAheadOfLog`.)
fn check_log_reaches_back(
    recovered: &RecoveredLog,
    snapshot: Option<&UsedSnapshot>,
    passed_over: &[String],
) -> Result<(), OpenError> {
    let (from_lsn, _) = snapshot_window(snapshot);
    match recovered.segments.first() {
        // `restore_newest_snapshot` checked the first segment's header before
        // recovery; this checks the segments recovery kept.
        Some(first) if first.header.first_lsn > from_lsn => {
            Err(OpenError::LogStartsLate { first_lsn: first.header.first_lsn, passed_over: passed_over.to_vec() })
        }
        None if snapshot.is_none() && recovered.next_segment_index > 1 => Err(OpenError::LogRetiredWithoutSnapshot {
            next_segment_index: recovered.next_segment_index,
            passed_over: passed_over.to_vec(),
        }),
        _ => Ok(()),
    }
}

/// Replays the log into `engine` from `from_lsn`: records below `end_lsn`
/// form the snapshot's window and overwrite (src/state/restore.rs), later
/// ones replay strictly.
fn replay_log(
    engine: &Engine,
    log_directory: &Path,
    snapshot: Option<&UsedSnapshot>,
    wrapped_slots: Vec<u32>,
) -> Result<RecoveredLog, OpenError> {
    let (from_lsn, end_lsn) = snapshot_window(snapshot);
    // Slots that went below zero at restore are checked with those the window touches.
    let mut window_open = end_lsn > from_lsn || !wrapped_slots.is_empty();
    let mut touched = wrapped_slots;
    let recovered = recover_with_lookahead(
        log_directory,
        RecoveryMode::TruncateTornTail,
        from_lsn,
        |upcoming| {
            let payload = upcoming[RECORD_HEADER_BYTES..].try_into().expect("32 payload bytes");
            let (person, slot) = Entry::touched_unchecked(payload);
            engine.prefetch_person_and_slot(person, slot);
        },
        |record| {
            let entry = Entry::decode(record.kind, &record.payload).map_err(|e| e.to_string())?;
            if record.lsn < end_lsn {
                return engine.replay_in_window(record.lsn, &entry, &mut touched).map_err(|e| e.reason);
            }
            if std::mem::take(&mut window_open) {
                engine.check_window(&touched)?;
            }
            engine.replay(record.lsn, &entry).map_err(|e| e.reason)
        },
    )?;
    if recovered.next_lsn < end_lsn {
        return Err(OpenError::SnapshotAheadOfLog {
            path: snapshot.map(|(path, _)| path.clone()).unwrap_or_default(),
            end_lsn,
            log_next_lsn: recovered.next_lsn,
        });
    }
    if window_open {
        engine.check_window(&touched).map_err(|reason| {
            OpenError::Recovery(RecoveryError::Rejected {
                path: log_directory.to_path_buf(),
                offset: 0,
                lsn: end_lsn - 1,
                reason,
            })
        })?;
    }
    Ok(recovered)
}

impl Core {
    fn take_snapshot(&self) -> Result<Option<SnapshotSummary>, SnapshotError> {
        let _one_at_a_time = self.snapshot_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.state().attempted_lsn = self.log.next_lsn();
        let reserve = self.snapshot_options.free_space_reserve_bytes;
        let result = take_snapshot(&self.engine, &self.log, &self.snapshot_directory, reserve).and_then(|taken| {
            retire(&self.snapshot_directory, &self.log_directory, self.snapshot_options.keep)?;
            Ok(taken)
        });
        let mut state = self.state();
        match &result {
            Ok(Some(summary)) => {
                state.taken += 1;
                state.last = Some(summary.clone());
                tracing::info!(
                    path = %summary.path.display(),
                    people = summary.header.people_count,
                    elapsed_ms = summary.elapsed.as_millis() as u64,
                    "snapshot taken"
                );
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(%error, "snapshot failed; the log still holds everything");
                state.last_error = Some(error.to_string());
            }
        }
        result
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SnapshotState> {
        self.snapshot_state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether enough was logged since the last attempt for a snapshot.
    fn snapshot_due(&self) -> bool {
        let attempted = self.state().attempted_lsn;
        self.log.durable_lsn().saturating_sub(attempted) >= self.snapshot_options.every_records
    }
}

impl Snapshotter {
    fn start(core: Arc<Core>) -> Snapshotter {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stop_seen = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("yeyak-snapshot".into())
            .spawn(move || loop {
                let (stopped, wake) = &*stop_seen;
                let guard = stopped.lock().unwrap_or_else(|p| p.into_inner());
                let guard = wake
                    .wait_timeout_while(guard, SNAPSHOT_POLL, |stopped| !*stopped)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                if *guard {
                    return;
                }
                drop(guard);
                if core.snapshot_due() && core.log.writable().is_ok() {
                    // Failures are logged and kept in the state; the next try waits for more records.
                    let _ = core.take_snapshot();
                }
            })
            .expect("the OS can start one thread");
        Snapshotter { stop, thread }
    }

    fn stop(self) {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_all();
        if self.thread.join().is_err() {
            tracing::error!("the snapshot thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_check_counts_every_table_and_refuses_only_past_what_is_available() {
        let toml = DEMO_CAMPAIGN_TOML.replace("sites = 15000", "sites = 20").replace("20_000_000", "1_000_000");
        let rules = CampaignRules::parse(&toml).unwrap();
        let inventory = Inventory::load(&rules, Path::new(".")).unwrap();
        let log = LogOptions::default();
        let slots = u64::from(inventory.slot_count());
        assert_eq!(Inventory::planned_slot_count(&rules), Some(slots), "planned as built");
        // 1 M people: 2^21 buckets of 32 bytes; 10,800 slots of 64 + 4 bytes; 2^16 records of 48 bytes.
        let needed = (64 << 20) + 10_800 * 68 + (3 << 20);
        assert!(check_table_memory(&rules, slots, &log, Some(needed)).is_ok(), "exactly enough");
        assert!(check_table_memory(&rules, slots, &log, None).is_ok(), "nothing known: not refused");
        let error = check_table_memory(&rules, slots, &log, Some(needed - 1)).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("need 68 MiB (64 MiB of people table for limits.people_max = 1000000"), "{text}");
        assert!(text.contains("1 MiB of counters and capacities for 10800 slots, 3 MiB of log ring"), "{text}");
        assert!(text.contains("than the 67 MiB") && text.contains(MEMORY_CHECK_SKIP_ENV), "{text}");
    }
}
