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

use crate::inventory::SlotIndex;
use crate::log::writer::ResumeSegment;
use crate::log::{FileStorage, LogOptions, LogStorage, LogWriter, TornTail};
use crate::snapshot::format::SnapshotHeader;
use crate::snapshot::{retire, take_snapshot, SnapshotError, SnapshotOptions, SnapshotSummary};
use crate::state::{
    BookingRequest, CancelRequest, CapacityChange, Engine, LogUnavailable, Outcome, PersonKey, Refusal,
};

mod open;

use open::{
    check_room_for_a_segment, lock_data_directory, lock_data_directory_to_read, make_repairs, recover_state,
    snapshot_window, Access, RecoveredState,
};
pub use open::{load_campaign, log_written_for_another_inventory, OpenError, RecoveryPhases, MEMORY_CHECK_SKIP_ENV};

pub const CAMPAIGN_FILE: &str = "campaign.toml";
pub const LOG_DIRECTORY: &str = "log";
pub const SNAPSHOT_DIRECTORY: &str = "snapshots";
/// Held locked (flock) by the one engine that has the data directory open.
pub const LOCK_FILE: &str = "lock";

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
    /// How `elapsed` divides (the rest: reading campaign.toml, the lock,
    /// starting the log writer).
    pub phases: RecoveryPhases,
    pub created_demo_campaign: bool,
}

impl RecoveryReport {
    fn of(
        snapshot: Option<UsedSnapshot>,
        snapshots_passed_over: Vec<String>,
        recovered: crate::log::recovery::RecoveredLog,
        phases: RecoveryPhases,
        started: Instant,
        created_demo_campaign: bool,
    ) -> RecoveryReport {
        RecoveryReport {
            snapshot,
            snapshots_passed_over,
            records_replayed: recovered.records,
            records_skipped: recovered.records_skipped,
            next_lsn: recovered.next_lsn,
            torn_tail: recovered.torn_tail,
            removed_segments: recovered.removed_segments,
            elapsed: started.elapsed(),
            phases,
            created_demo_campaign,
        }
    }
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
        let RecoveryPhases { tables, snapshot, log } = self.phases;
        write!(f, " (tables {tables:.2?}, snapshot {snapshot:.2?}, log {log:.2?})")?;
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

/// What a clean close did besides making the log durable (`DurableEngine::close`).
#[derive(Debug, Default)]
pub struct Closed {
    /// Why no snapshot was taken on close, if `SnapshotOptions::on_close`
    /// asked for one: the next start replays the log from the last
    /// snapshot instead.
    pub no_snapshot: Option<NoSnapshotOnClose>,
}

/// Why a close took no snapshot though `SnapshotOptions::on_close` asked for one.
#[derive(Debug, thiserror::Error)]
pub enum NoSnapshotOnClose {
    #[error(transparent)]
    Failed(#[from] SnapshotError),
    /// `Server::shutdown` found a connection still holding the engine.
    #[error("the engine was still in use by a connection")]
    EngineStillInUse,
}

pub struct DurableEngine {
    core: Arc<Core>,
    snapshotter: Option<Snapshotter>,
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
        let state = recover_state(data_directory, &rules, &options.log, Access::Serve)?;
        make_repairs(data_directory, &state)?;
        let RecoveredState { engine, snapshot, snapshots_passed_over, recovered, phases, .. } = state;
        let log_directory = data_directory.join(LOG_DIRECTORY);
        let snapshot_directory = data_directory.join(SNAPSHOT_DIRECTORY);
        let (from_lsn, _) = snapshot_window(snapshot.as_ref());
        check_room_for_a_segment(data_directory, &options.log)?;
        let stamp = engine.inventory().stamp();
        let log = LogWriter::start(
            storage,
            options.log,
            campaign_id,
            stamp,
            recovered.next_lsn,
            recovered.next_segment_index,
            recovered.segments.last().map(|last| ResumeSegment { header: last.header, records: last.records }),
        )?;
        let report =
            RecoveryReport::of(snapshot, snapshots_passed_over, recovered, phases, started, created_demo_campaign);
        let snapshot_state = SnapshotState { attempted_lsn: from_lsn, ..SnapshotState::default() };
        let core = Arc::new(Core {
            _lock: lock,
            // Every change from here on holds the log's append lock first:
            // changes are one at a time anyway, so they need no locked
            // instructions (`Engine::into_sole_writer`). Recovery restored the
            // snapshot on many threads, then made the engine a sole writer
            // to replay the log on one; it stays one.
            engine: engine.into_sole_writer(),
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

    /// What start-up would do with a data directory, without changing it: the
    /// same checks, restore and replay as `open` (tables and all), with a torn
    /// tail and damaged snapshots reported instead of cut or set aside. It
    /// takes the directory's lock (`Locked` while an engine serves it), and
    /// needs the memory start-up needs. `yeyak log verify` says what this finds.
    pub fn check(data_directory: &Path) -> Result<RecoveryReport, OpenError> {
        let started = Instant::now();
        let (rules, _) = load_campaign(data_directory, false)?;
        let _lock = lock_data_directory_to_read(data_directory)?;
        let options = LogOptions::default();
        let state = recover_state(data_directory, &rules, &options, Access::Check)?;
        // Without removing what start-up would (a torn tail's segments, a
        // snapshot's temporary file): a start may find a little more room.
        check_room_for_a_segment(data_directory, &options)?;
        let RecoveredState { snapshot, snapshots_passed_over, recovered, phases, .. } = state;
        Ok(RecoveryReport::of(snapshot, snapshots_passed_over, recovered, phases, started, false))
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

    /// See `Engine::add_capacity`: `change.expected_capacity` makes a retry safe.
    pub fn add_capacity(&self, change: &CapacityChange) -> Result<u32, Refusal> {
        // The append lock before the capacity lock, as in a server round.
        let log = self.core.log.appender();
        let outcome = self.core.engine.add_capacity(&log, change);
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

    /// Whether `close` takes a snapshot (`SnapshotOptions::on_close`).
    pub fn snapshots_on_close(&self) -> bool {
        self.core.snapshot_options.on_close
    }

    pub fn reservation_of(&self, person: PersonKey) -> Result<Option<SlotIndex>, Refusal> {
        let outcome = self.core.engine.reservation_of(&self.core.log.appender(), person);
        self.release_read(outcome)
    }

    /// Stops the snapshot thread (letting a snapshot under way finish), takes
    /// a last snapshot if `SnapshotOptions::on_close` says so, makes
    /// everything appended durable and stops the log writer. A snapshot that
    /// fails does not fail the close (the log holds everything): `Closed` says it.
    pub fn close(mut self) -> Result<Closed, Refusal> {
        self.stop_snapshotter();
        let mut closed = Closed::default();
        if self.core.snapshot_options.on_close && self.core.log.writable().is_ok() {
            // Logged as well (`Core::take_snapshot`).
            closed.no_snapshot = self.core.take_snapshot().err().map(NoSnapshotOnClose::Failed);
        }
        self.core.log.close().map_err(Refusal::LogUnavailable)?;
        Ok(closed)
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

    /// Whether enough was logged since the last attempt for a snapshot, or
    /// anything was and the log's segments take `log_bytes_before_snapshot`
    /// on disk: segments filled faster than `every_records` snapshots, or
    /// begun one a start where a start cannot write on in the last (its
    /// segment size or inventory changed), would otherwise fill the disk
    /// with segments no record count retires.
    fn snapshot_due(&self) -> bool {
        let attempted = self.state().attempted_lsn;
        let logged = self.log.durable_lsn().saturating_sub(attempted);
        logged >= self.snapshot_options.every_records
            || (logged > 0 && self.log_bytes_on_disk() >= self.snapshot_options.log_bytes_before_snapshot)
    }

    /// The size of the log's segment files together (0 if they cannot be listed).
    fn log_bytes_on_disk(&self) -> u64 {
        let segments = crate::log::recovery::list_segments(&self.log_directory).unwrap_or_default();
        segments.iter().filter_map(|(_, path)| std::fs::metadata(path).ok()).map(|metadata| metadata.len()).sum()
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
