//! Opening a data directory: the campaign, the lock, the memory check, the
//! newest usable snapshot and the log replayed after it. `DurableEngine::open`
//! (the module above) runs these steps in order; each refusal is an
//! `OpenError` that says what was found and what to do.

use std::path::{Path, PathBuf};

use crate::config::{CampaignRules, ConfigError, DEMO_CAMPAIGN_TOML};
use crate::durable::{UsedSnapshot, CAMPAIGN_FILE, LOCK_FILE, LOG_DIRECTORY, SNAPSHOT_DIRECTORY};
use crate::inventory::{Inventory, InventoryError, InventoryPlan};
use crate::log::format::{SegmentHeader, RECORD_HEADER_BYTES};
use crate::log::recovery::{list_segments, recover_with_lookahead, RecoveredLog};
use crate::log::retention::read_segment_header;
use crate::log::storage::{create_directory_durably, sync_directory};
use crate::log::{LogOptions, RecoveryError, RecoveryMode};
use crate::snapshot::{is_temporary_snapshot, list_snapshots, CheckedSnapshot, SnapshotError};
use crate::state::{Engine, Entry, Lsn, PeopleTable, SlotCounters};

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
    /// A log segment is preallocated whole: without room for a new one,
    /// bookings would stop being durable once the last segment fills (at
    /// once, if it is full or cannot be written on in).
    #[error(
        "{path}: the log's next segment needs {} MiB and the file system has {} MiB free: bookings would \
         stop being durable when the log needs that segment (at once, if it has none with room); free space \
         there, or give another --data-dir",
        needed_bytes.div_ceil(1 << 20), available_bytes >> 20
    )]
    NoRoomForLog { path: PathBuf, needed_bytes: u64, available_bytes: u64 },
    /// campaign.toml no longer describes the campaign the data directory was
    /// written for; nothing in the directory was changed.
    #[error(
        "{found}: campaign.toml changed since this data directory was written (its campaign id, service \
         days, time slots or inventory). Put it back as it was, or start the changed campaign in a new data \
         directory; nothing in the data directory was changed"
    )]
    CampaignChanged { found: String },
    /// A data directory with a log or snapshots, but without its campaign.toml.
    #[error(
        "{path} holds a log or snapshots but no {CAMPAIGN_FILE}: put back the campaign.toml it was written \
         with (the demo campaign is created only in a new or empty data directory)"
    )]
    CampaignMissing { path: PathBuf },
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
         this process may still take (MemAvailable, capped by its cgroup's limit): lower limits.people_max \
         or the inventory's size in campaign.toml, or start where more memory is free \
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
pub(super) fn check_table_memory(
    rules: &CampaignRules,
    slot_count: u64,
    log: &LogOptions,
    available: Option<u64>,
) -> Result<(), OpenError> {
    let people_table_bytes = PeopleTable::table_bytes(rules.people_max);
    // The counters, and the inventory's initial capacity of each slot (a u32).
    let capacities_bytes = slot_count.saturating_mul(std::mem::size_of::<u32>() as u64);
    let slot_counters_bytes = SlotCounters::table_bytes(slot_count).saturating_add(capacities_bytes);
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
pub(super) fn memory_to_check_against() -> Option<u64> {
    if std::env::var_os(MEMORY_CHECK_SKIP_ENV).is_some_and(|value| value == "1") {
        return None;
    }
    crate::memory::available_bytes()
}

/// Where replay starts and where the snapshot's window ends (records below it
/// overwrite, docs/snapshot-format.md): `(1, 1)` without a snapshot.
pub(super) fn snapshot_window(snapshot: Option<&UsedSnapshot>) -> (Lsn, Lsn) {
    snapshot.map_or((1, 1), |(_, header)| (header.start_lsn, header.end_lsn))
}

/// Reads the campaign of a data directory, writing the demo one first if
/// there is none and `create_demo` is set. Returns whether it created it.
pub fn load_campaign(data_directory: &Path, create_demo: bool) -> Result<(CampaignRules, bool), OpenError> {
    let path = data_directory.join(CAMPAIGN_FILE);
    let io = |source| OpenError::Io { path: path.clone(), source };
    let mut created = false;
    if data_directory.exists() && !data_directory.is_dir() {
        let source = std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory");
        return Err(OpenError::Io { path: data_directory.to_path_buf(), source });
    }
    if !path.exists() {
        if holds_records(data_directory) {
            return Err(OpenError::CampaignMissing { path: data_directory.to_path_buf() });
        }
        if !create_demo {
            return Err(OpenError::NoCampaign { path: data_directory.to_path_buf() });
        }
        std::fs::create_dir_all(data_directory).map_err(|source| OpenError::Io {
            path: data_directory.to_path_buf(),
            source: std::io::Error::new(source.kind(), format!("cannot create the data directory: {source}")),
        })?;
        std::fs::write(&path, DEMO_CAMPAIGN_TOML).map_err(io)?;
        created = true;
    }
    let text = std::fs::read_to_string(&path).map_err(io)?;
    let rules = CampaignRules::parse(&text).map_err(|source| OpenError::Config { path: path.clone(), source })?;
    Ok((rules, created))
}

/// Whether a data directory holds anything of a campaign: a log segment or a
/// snapshot (the files a campaign.toml is needed to read).
fn holds_records(data_directory: &Path) -> bool {
    let has_any = |directory: &str| {
        std::fs::read_dir(data_directory.join(directory)).is_ok_and(|mut entries| entries.next().is_some())
    };
    has_any(LOG_DIRECTORY) || has_any(SNAPSHOT_DIRECTORY)
}

/// Refuses to start when the file system of the log has no room for a new
/// segment (`OpenError::NoRoomForLog`), even if the last one has room to
/// write on in: that engine would soon make no booking durable. Run
/// after `make_repairs`, which may have removed files (a torn tail's
/// segments, a crash's leftovers).
pub(super) fn check_room_for_a_segment(data_directory: &Path, options: &LogOptions) -> Result<(), OpenError> {
    let log_directory = data_directory.join(LOG_DIRECTORY);
    // Before the first start the log directory does not exist yet: it will
    // be made inside the data directory.
    let path = if log_directory.is_dir() { log_directory } else { data_directory.to_path_buf() };
    let available_bytes =
        crate::log::storage::available_bytes(&path).map_err(|source| OpenError::Io { path: path.clone(), source })?;
    if available_bytes < options.segment_size_bytes {
        return Err(OpenError::NoRoomForLog { path, needed_bytes: options.segment_size_bytes, available_bytes });
    }
    Ok(())
}

/// Takes the data directory's lock, so that two engines never write one log.
pub(super) fn lock_data_directory(data_directory: &Path) -> Result<std::fs::File, OpenError> {
    let path = data_directory.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| OpenError::Io { path: path.clone(), source })?;
    flock(file, path)
}

/// For a check: takes the lock if the directory has one (an engine that
/// serves it holds it: a check beside it would read a log being written and
/// build a second set of tables), creating nothing.
pub(super) fn lock_data_directory_to_read(data_directory: &Path) -> Result<Option<std::fs::File>, OpenError> {
    let path = data_directory.join(LOCK_FILE);
    match std::fs::File::open(&path) {
        Ok(file) => flock(file, path).map(Some),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(OpenError::Io { path, source }),
    }
}

fn flock(file: std::fs::File, path: PathBuf) -> Result<std::fs::File, OpenError> {
    use std::os::fd::AsRawFd;
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

/// The header of the log's first segment (its first record, its campaign),
/// if it has a segment whose header reads.
pub(super) fn first_log_header(log_directory: &Path) -> Result<Option<SegmentHeader>, OpenError> {
    let segments = list_segments(log_directory)?;
    let Some((_, path)) = segments.first() else {
        return Ok(None);
    };
    // An unreadable header is recovery's business (a torn last segment, or corruption).
    Ok(read_segment_header(path).ok())
}

/// How recovery treats the data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    /// Start-up: what mends the data directory (a torn tail cut, damaged
    /// snapshots set aside, leftovers removed) is found, and made by
    /// `make_repairs` once nothing refuses the start.
    Serve,
    /// `DurableEngine::check`: the same findings, reported; nothing written.
    Check,
}

/// The state recovery rebuilt, and how.
pub(super) struct RecoveredState {
    pub(super) engine: Engine,
    pub(super) snapshot: Option<UsedSnapshot>,
    pub(super) snapshots_passed_over: Vec<String>,
    pub(super) recovered: RecoveredLog,
    pub(super) phases: RecoveryPhases,
    /// Snapshots to rename `*.invalid` (`make_repairs`).
    pub(super) set_aside: Vec<PathBuf>,
}

/// Where start-up's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryPhases {
    /// Planning the inventory and building the empty tables (the kernel
    /// zeroing their pages), for every engine built (one more for each
    /// snapshot passed over after its restore began).
    pub tables: std::time::Duration,
    /// Checking and restoring snapshots, the tables' building excluded.
    pub snapshot: std::time::Duration,
    /// Reading and replaying the log.
    pub log: std::time::Duration,
}

/// Rebuilds the engine's state from a data directory: the newest usable
/// snapshot, then the log from its start (docs/snapshot-format.md,
/// "Recovery"), with every refusal start-up makes.
pub(super) fn recover_state(
    data_directory: &Path,
    rules: &CampaignRules,
    log_options: &LogOptions,
    access: Access,
) -> Result<RecoveredState, OpenError> {
    let campaign_id = rules.campaign_id;
    let tables = std::cell::Cell::new(std::time::Duration::ZERO);
    let log_directory = data_directory.join(LOG_DIRECTORY);
    let log_checked = std::cell::Cell::new(false);
    let build_engine = || -> Result<Engine, OpenError> {
        let started = std::time::Instant::now();
        // Refused before the tables are allocated, for CSV inventories too.
        let plan = Inventory::plan(rules, data_directory)?;
        if !log_checked.replace(true) {
            check_log_inventory(&log_directory, &plan)?;
        }
        check_table_memory(rules, plan.slot_count(), log_options, memory_to_check_against())?;
        let engine = Engine::new(rules.clone(), plan.build()?);
        tables.set(tables.get() + started.elapsed());
        Ok(engine)
    };
    let snapshot_directory = data_directory.join(SNAPSHOT_DIRECTORY);
    if access == Access::Serve {
        create_directory_durably(&log_directory)
            .map_err(|source| OpenError::Io { path: log_directory.clone(), source })?;
    }
    // Before anything is restored or replayed: a log of another campaign
    // is a changed campaign.toml, not a damaged log.
    let first_header = first_log_header(&log_directory)?;
    if let Some(header) = first_header.filter(|header| header.campaign_id != campaign_id) {
        let found = format!(
            "the log in {} is of campaign {}, and campaign.toml says campaign {campaign_id}",
            log_directory.display(),
            header.campaign_id
        );
        return Err(OpenError::CampaignChanged { found });
    }
    let first_lsn = first_header.map(|header| header.first_lsn);
    let restoring = std::time::Instant::now();
    let restored = restore_newest_snapshot(&build_engine, &snapshot_directory, first_lsn, access)?;
    let snapshot_phase = restoring.elapsed().saturating_sub(tables.get());
    let replaying = std::time::Instant::now();
    let Restored { engine, snapshot, wrapped_slots, passed_over, other_inventory, set_aside } = restored;
    let mode = match access {
        Access::Serve => RecoveryMode::TruncateTornTail,
        Access::Check => RecoveryMode::ReadOnly,
    };
    // The snapshot was restored on many threads; the log is replayed on one,
    // holding one writer: new people and seats taken by stores
    // (`EngineWriter::replay` and `replay_in_window`).
    let engine = engine.into_sole_writer();
    let recovered = replay_log(&engine, &log_directory, snapshot.as_ref(), wrapped_slots, mode)
        .and_then(|recovered| check_log_reaches_back(&recovered, snapshot.as_ref(), &passed_over).map(|()| recovered))
        .map_err(|error| blame_changed_inventory(other_inventory.as_ref(), error))?;
    let phases = RecoveryPhases { tables: tables.get(), snapshot: snapshot_phase, log: replaying.elapsed() };
    Ok(RecoveredState { engine, snapshot, snapshots_passed_over: passed_over, recovered, phases, set_aside })
}

/// Refuses a log with a segment written for an inventory in which its slot
/// numbers meant other slots, as `CampaignChanged`: replayed, its bookings
/// would move to other appointments.
fn check_log_inventory(log_directory: &Path, inventory: &InventoryPlan<'_>) -> Result<(), OpenError> {
    match log_written_for_another_inventory(log_directory, inventory)? {
        Some(found) => Err(OpenError::CampaignChanged { found }),
        None => Ok(()),
    }
}

/// The first log segment written for an inventory in which its slot numbers
/// meant other slots than in `inventory` (other service days or time slots,
/// other sites before the last of that time: `InventoryPlan::differs_from`),
/// said as "<file> was written for an inventory with <why>". A segment whose
/// header does not read is recovery's business.
pub fn log_written_for_another_inventory(
    log_directory: &Path,
    inventory: &InventoryPlan<'_>,
) -> Result<Option<String>, OpenError> {
    for (_, path) in list_segments(log_directory)? {
        let Ok(header) = read_segment_header(&path) else { continue };
        if let Some(why) = inventory.differs_from(&header.inventory) {
            return Ok(Some(format!("{} was written for an inventory with {why}", path.display())));
        }
    }
    Ok(None)
}

/// When a snapshot was passed over for being of another inventory (`found`
/// says which), a log that does not reach back before it, or a record naming
/// a slot the inventory no longer has, is the changed campaign.toml's doing,
/// not the data directory's.
fn blame_changed_inventory(found: Option<&String>, error: OpenError) -> OpenError {
    let Some(found) = found else {
        return error;
    };
    let why = match &error {
        OpenError::LogStartsLate { .. } | OpenError::LogRetiredWithoutSnapshot { .. } => {
            "the log does not reach back before it".to_string()
        }
        OpenError::Recovery(rejected @ RecoveryError::Rejected { .. }) => rejected.to_string(),
        _ => return error,
    };
    OpenError::CampaignChanged { found: format!("{found}; {why}") }
}

/// The engine after the newest usable snapshot was restored into it.
pub(super) struct Restored {
    pub(super) engine: Engine,
    pub(super) snapshot: Option<UsedSnapshot>,
    /// Slots whose count went below zero at restore: the window must mend them.
    pub(super) wrapped_slots: Vec<u32>,
    pub(super) passed_over: Vec<String>,
    /// Why the newest snapshot passed over for being of another inventory
    /// was (left in place, for campaign.toml may be put back).
    pub(super) other_inventory: Option<String>,
    /// Snapshots that failed their checks, to be set aside once start-up
    /// decides to serve (`make_repairs`).
    pub(super) set_aside: Vec<PathBuf>,
}

/// Restores the newest usable snapshot into an engine from `build_engine`. A
/// snapshot that fails its checks, or whose content the engine refuses, is
/// passed over (to be renamed `*.invalid` when serving, so that it no longer
/// counts among the kept ones, and reported) for an older one, in a fresh engine. One of
/// another campaign is refused (`CampaignChanged`); one of another inventory
/// is passed over but left in place: the file is whole, campaign.toml changed.
pub(super) fn restore_newest_snapshot(
    build_engine: &dyn Fn() -> Result<Engine, OpenError>,
    snapshot_directory: &Path,
    log_first_lsn: Option<u64>,
    access: Access,
) -> Result<Restored, OpenError> {
    let mut passed_over = Vec::new();
    let mut other_inventory = None;
    let mut set_aside = Vec::new();
    let mut engine = build_engine()?;
    for (start_lsn, path) in list_snapshots(snapshot_directory)?.into_iter().rev() {
        if let Some(first) = log_first_lsn.filter(|first| *first > start_lsn) {
            passed_over.push(format!("{}: the log begins at record {first}, after it", path.display()));
            continue;
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let restored = CheckedSnapshot::open(&path, engine.rules(), engine.inventory())
            .and_then(|checked| checked.restore(&engine, threads).map(|wrapped| (checked.header, wrapped)));
        match restored {
            Ok((header, wrapped_slots)) => {
                let snapshot = Some((path, header));
                return Ok(Restored { engine, snapshot, wrapped_slots, passed_over, other_inventory, set_aside });
            }
            // Not the file's fault: renaming it would leave the data directory
            // unstartable once the change is undone.
            Err(error @ (SnapshotError::OtherCampaign { .. } | SnapshotError::OverPeopleMax { .. })) => {
                return Err(OpenError::CampaignChanged { found: error.to_string() });
            }
            Err(error @ SnapshotError::OtherInventory { .. }) => {
                tracing::warn!(%error, "passing over a snapshot (left in place)");
                passed_over.push(error.to_string());
                other_inventory.get_or_insert(error.to_string());
            }
            Err(error) => {
                tracing::warn!(%error, "passing over a snapshot");
                passed_over.push(error.to_string());
                if access == Access::Serve {
                    set_aside.push(path);
                }
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
        let late = OpenError::LogStartsLate { first_lsn: first, passed_over };
        return Err(blame_changed_inventory(other_inventory.as_ref(), late));
    }
    Ok(Restored { engine, snapshot: None, wrapped_slots: Vec::new(), passed_over, other_inventory, set_aside })
}

/// Makes the changes a start that serves makes to its data directory, once
/// recovery has found nothing that refuses the start, so that a refused
/// start changes nothing: a torn tail cut (`RecoveredLog::repair`), damaged
/// snapshots set aside, and the temporary files a crash left (a snapshot's,
/// a segment's) removed. Before the room for a segment is checked: they may
/// free some.
pub(super) fn make_repairs(data_directory: &Path, state: &RecoveredState) -> Result<(), OpenError> {
    for path in &state.set_aside {
        set_aside_invalid(path)?;
    }
    state.recovered.repair()?;
    // Only disk space is at stake: a leftover that cannot be removed is said, not refused.
    let leftovers = [
        (data_directory.join(SNAPSHOT_DIRECTORY), is_temporary_snapshot as fn(&str) -> bool),
        (data_directory.join(LOG_DIRECTORY), crate::log::storage::is_unnamed_segment),
    ];
    for (directory, is_leftover) in leftovers {
        for (path, removed) in crate::log::storage::remove_files_named(&directory, is_leftover) {
            match removed {
                Ok(()) => tracing::info!(path = %path.display(), "removed a file a crash left under a temporary name"),
                Err(error) => tracing::warn!(
                    path = %path.display(),
                    %error,
                    "could not remove a file a crash left under a temporary name"
                ),
            }
        }
    }
    Ok(())
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

/// After recovery: the log must reach back to where replay started. A log
/// whose first segments were removed (behind snapshots) and which holds no
/// segment now (its only one's creation was cut short, or someone removed
/// them) is refused without a snapshot. (With a snapshot, `replay_log` has
/// refused it already: the log's numbering no longer reaches the snapshot's
/// end, `SnapshotAheadOfLog`.)
pub(super) fn check_log_reaches_back(
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
pub(super) fn replay_log(
    engine: &Engine,
    log_directory: &Path,
    snapshot: Option<&UsedSnapshot>,
    wrapped_slots: Vec<u32>,
    mode: RecoveryMode,
) -> Result<RecoveredLog, OpenError> {
    let (from_lsn, end_lsn) = snapshot_window(snapshot);
    // Slots that went below zero at restore are checked with those the window touches.
    let mut window_open = end_lsn > from_lsn || !wrapped_slots.is_empty();
    let mut touched = wrapped_slots;
    // One writer for the whole replay (the lock of a sole-writer engine, taken once).
    let writer = engine.writer();
    let recovered = recover_with_lookahead(
        log_directory,
        mode,
        from_lsn,
        |upcoming| {
            let payload = upcoming[RECORD_HEADER_BYTES..].try_into().expect("32 payload bytes");
            let (person, slot) = Entry::touched_unchecked(payload);
            engine.prefetch_person_and_slot(person, slot);
        },
        |record| {
            let entry = Entry::decode(record.kind, &record.payload).map_err(|e| e.to_string())?;
            if record.lsn < end_lsn {
                return writer.replay_in_window(record.lsn, &entry, &mut touched).map_err(|e| e.reason);
            }
            if std::mem::take(&mut window_open) {
                engine.check_window(&touched)?;
            }
            writer.replay(record.lsn, &entry).map_err(|e| e.reason)
        },
    )?;
    drop(writer);
    // A check (read-only recovery) refuses a cut log where start-up's recovery
    // did, before anything else is looked at, so both say the same.
    if let Some(refusal) = recovered.torn_tail.as_ref().and_then(crate::log::TornTail::refusal) {
        return Err(OpenError::Recovery(refusal));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Inventory;

    #[test]
    fn the_memory_check_counts_every_table_and_refuses_only_past_what_is_available() {
        let toml = DEMO_CAMPAIGN_TOML.replace("sites = 15000", "sites = 20").replace("20_000_000", "1_000_000");
        let rules = CampaignRules::parse(&toml).unwrap();
        let inventory = Inventory::load(&rules, Path::new(".")).unwrap();
        let log = LogOptions::default();
        let slots = u64::from(inventory.slot_count());
        assert_eq!(Inventory::plan(&rules, Path::new(".")).unwrap().slot_count(), slots, "planned as built");
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
