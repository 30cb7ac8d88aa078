//! The log writer: appenders one at a time, one flusher thread, group commit.
//!
//! An appender holds the log's append lock (`LogWriter::appender`, the
//! log's only `Journal`), draws sequence numbers in order
//! and encodes each record straight into a ring of 48-byte records, laid out
//! as they will be on disk. When it lets go it publishes what it wrote by
//! storing `written_lsn`. The flusher thread takes the published run, writes
//! it to the current segment straight from the ring (one or two `pwrite`s;
//! no copy), makes it durable with one sync, and advances `durable_lsn`.
//! Answers wait for `durable_lsn`.
//!
//! A whole batch frame, or a server round, appends under one lock
//! acquisition with no atomic read-modify-write per record: the lock is the
//! total order of the log (docs/log-format.md, "Concurrent appenders").
//!
//! Sequence numbers are contiguous: every number drawn is written, in order,
//! before any later one is reported durable; the log never has holes.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::inventory::InventoryStamp;
use crate::log::format::{Record, RecordBytes, SegmentHeader, RECORD_BYTES, SEGMENT_HEADER_BYTES};
use crate::log::storage::{record_area_bytes, LogStorage, SegmentFile, WriteMode};
use crate::state::entry::{Entry, Journal, Lsn};
use crate::state::refusal::LogUnavailable;

/// Whether an answer waits for its record to reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// fdatasync (or msync) each group before answering: the default.
    Sync,
    /// Write without syncing: a crash may lose acknowledged records. Tests and
    /// benchmarks that say so only.
    None,
}

/// The largest ring the writer accepts, in records (48 bytes each in memory).
pub const RING_RECORDS_MAX: u32 = 1 << 24;
/// The largest group one sync may cover, in records.
pub const GROUP_RECORDS_MAX: u32 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogOptions {
    pub durability: Durability,
    pub write_mode: WriteMode,
    /// Size of each preallocated segment file, header included.
    pub segment_size_bytes: u64,
    /// Records that may wait in memory for the flusher (a power of two).
    pub ring_records: u32,
    /// The most records one write + sync takes.
    pub group_records_max: u32,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            durability: Durability::Sync,
            write_mode: WriteMode::Pwrite,
            segment_size_bytes: (SEGMENT_HEADER_BYTES + RECORD_BYTES * (1 << 22)) as u64,
            ring_records: 1 << 16,
            group_records_max: 1 << 16,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogOptionsError {
    #[error(
        "log.segment_size_bytes {0}: must hold the 64-byte header and at least one 48-byte record, in whole records"
    )]
    SegmentSize(u64),
    #[error("log.ring_records {0}: must be a power of two between 2 and {RING_RECORDS_MAX}")]
    RingRecords(u32),
    #[error("log.group_records_max {0}: must be between 1 and {GROUP_RECORDS_MAX}")]
    GroupRecords(u32),
}

impl LogOptions {
    pub fn check(&self) -> Result<(), LogOptionsError> {
        let area = record_area_bytes(self.segment_size_bytes);
        if area < RECORD_BYTES as u64 || area % RECORD_BYTES as u64 != 0 {
            return Err(LogOptionsError::SegmentSize(self.segment_size_bytes));
        }
        if !self.ring_records.is_power_of_two() || !(2..=RING_RECORDS_MAX).contains(&self.ring_records) {
            return Err(LogOptionsError::RingRecords(self.ring_records));
        }
        if !(1..=GROUP_RECORDS_MAX).contains(&self.group_records_max) {
            return Err(LogOptionsError::GroupRecords(self.group_records_max));
        }
        Ok(())
    }
}

/// Records waiting for the flusher, each at `lsn & mask`, laid out as
/// they will be on disk, so that a run of them is written straight from here.
/// The appender fills in what a record says (`Record::fill`); the flusher
/// seals it (header and CRC, `Record::seal`) just before writing it: the
/// checksum is computed on the flusher's core, not the booking thread's.
struct Ring {
    records: Box<[UnsafeCell<RecordBytes>]>,
    /// The ring's length less one (a power of two less one).
    mask: u64,
}

// SAFETY: the record numbered `n` is owned in turn by the appender and the
// flusher. The holder of the append lock writes it only once
// `n - taken_lsn < ring_len` (taken_lsn acquired: the flusher release-stores
// it after its write of number `n - ring_len` returned; the appender checks
// `n < room_end`, a `taken_lsn + ring_len` it computed earlier, and as
// `taken_lsn` only grows that implies the check), and hands it over
// by release-storing `written_lsn` past it. The flusher touches (seals, then
// writes out) only the numbers in `taken_lsn..written_lsn`, after acquiring
// `written_lsn`, and hands them back by release-storing `taken_lsn` past
// them. No two threads ever touch one record at once.
unsafe impl Sync for Ring {}

impl Ring {
    /// A ring of `records`, a power of two (`LogOptions::check`).
    fn new(records: u32) -> Ring {
        assert!(records.is_power_of_two(), "the log's ring holds a power of two of records");
        Ring {
            records: (0..records).map(|_| UnsafeCell::new([0; RECORD_BYTES])).collect(),
            mask: u64::from(records) - 1,
        }
    }

    /// How many records the ring holds.
    #[inline(always)]
    fn len(&self) -> u64 {
        self.mask + 1
    }

    /// Where the record numbered `lsn` goes, at `lsn & mask`: always in the
    /// ring. Writing through it is safe only for the holder of the append
    /// lock, once the flusher is done with the position (see `unsafe impl
    /// Sync for Ring`).
    #[inline(always)]
    fn record_ptr(&self, lsn: u64) -> *mut RecordBytes {
        let position = (lsn & self.mask) as usize;
        debug_assert!(position < self.records.len());
        // SAFETY: `mask + 1` is the ring's length (a power of two, `new`),
        // so a masked position lies in it.
        unsafe { self.records.get_unchecked(position) }.get()
    }

    /// The `count` records from `position`, which must not wrap.
    ///
    /// # Safety
    /// The caller is the flusher and the records are published and not yet
    /// taken (see `unsafe impl Sync for Ring`): nobody else touches them meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn run_mut(&self, position: usize, count: usize) -> &mut [RecordBytes] {
        let run = &self.records[position..position + count];
        // `UnsafeCell<T>` has the layout of `T`.
        std::slice::from_raw_parts_mut(UnsafeCell::raw_get(run.as_ptr()), count)
    }
}

const RUNNING: u8 = 0;
const CLOSING: u8 = 1;
const FAILED_DISK_FULL: u8 = 2;
const FAILED_IO: u8 = 3;
const CLOSED: u8 = 4;

/// Counters for the `stats` command and the benchmarks.
#[derive(Debug)]
pub struct LogStats {
    pub records_durable: AtomicU64,
    pub groups: AtomicU64,
    pub sync_nanos_total: AtomicU64,
    pub sync_nanos_max: AtomicU64,
    /// Every sync's latency in µs (1 µs to 60 s, 3 significant digits); the
    /// flusher records, STATS reads.
    sync_micros: Mutex<hdrhistogram::Histogram<u64>>,
    /// p50, p99, p999 as last computed, and when: STATS reads these, so that
    /// frequent STATS calls neither walk the histogram nor hold up the flusher.
    sync_percentiles: Mutex<(Option<Instant>, [u64; 3])>,
}

/// How stale the sync percentiles STATS reports may be.
const SYNC_PERCENTILES_REFRESH: Duration = Duration::from_millis(250);

impl Default for LogStats {
    fn default() -> Self {
        let histogram = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
        LogStats {
            records_durable: AtomicU64::new(0),
            groups: AtomicU64::new(0),
            sync_nanos_total: AtomicU64::new(0),
            sync_nanos_max: AtomicU64::new(0),
            sync_micros: Mutex::new(histogram),
            sync_percentiles: Mutex::new((None, [0; 3])),
        }
    }
}

impl LogStats {
    /// Sync latency at the given quantiles (0.5, 0.99, …), in µs; 0 before the first sync.
    pub fn sync_micros_at(&self, quantiles: &[f64]) -> Vec<u64> {
        let histogram = self.sync_micros.lock().unwrap_or_else(|p| p.into_inner());
        quantiles.iter().map(|q| histogram.value_at_quantile(*q)).collect()
    }

    /// Sync latency p50, p99 and p999 in µs, recomputed at most every 250 ms.
    pub fn sync_percentiles(&self) -> [u64; 3] {
        let mut cached = self.sync_percentiles.lock().unwrap_or_else(|p| p.into_inner());
        if cached.0.is_none_or(|at| at.elapsed() >= SYNC_PERCENTILES_REFRESH) {
            let values = self.sync_micros_at(&[0.5, 0.99, 0.999]);
            *cached = (Some(Instant::now()), [values[0], values[1], values[2]]);
        }
        cached.1
    }

    fn record_sync(&self, nanos: u64) {
        self.sync_nanos_total.fetch_add(nanos, Ordering::Relaxed);
        self.sync_nanos_max.fetch_max(nanos, Ordering::Relaxed);
        let micros = (nanos / 1000).clamp(1, 60_000_000);
        self.sync_micros.lock().unwrap_or_else(|p| p.into_inner()).saturating_record(micros);
    }
}

struct Shared {
    ring: Ring,
    /// Held by the one appender at a time; its order is the log's order.
    append_lock: Mutex<()>,
    /// The number the next append draws; stored (release) under the append
    /// lock after each append, so a reader sees every number below it drawn.
    next_lsn: CachePadded<AtomicU64>,
    /// Every record numbered below this is in the ring: stored (release) when
    /// an appender lets go of the lock, or waits for room.
    written_lsn: CachePadded<AtomicU64>,
    /// Every record numbered below this has been written out of the ring.
    taken_lsn: CachePadded<AtomicU64>,
    /// Every record numbered below this is durable (written, when durability is off).
    durable_lsn: CachePadded<AtomicU64>,
    /// Read by every append; written only when the log fails or closes. On a
    /// line of its own, so that the flusher's writes to the fields below never
    /// make appenders miss on it.
    state: CachePadded<AtomicU8>,
    failure: Mutex<Option<String>>,
    /// Written by the flusher when it sleeps and wakes, read by every appender.
    flusher_parked: CachePadded<AtomicBool>,
    flusher_wake: (Mutex<()>, Condvar),
    durable_waiters: CachePadded<AtomicU64>,
    durable_changed: (Mutex<()>, Condvar),
    /// Told each time `durable_lsn` advances and when the log fails or
    /// closes (`LogWriter::on_durable`): the server's engine thread, which
    /// sleeps while its replies wait for a sync, is woken by it.
    durable_listener: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Written by the flusher once a group.
    stats: CachePadded<LogStats>,
}

impl Shared {
    /// Why records are not accepted, if they are not. One comparison when
    /// they are (every append asks); the reason is read out of line.
    #[inline(always)]
    fn unavailable(&self) -> Option<LogUnavailable> {
        match self.state.load(Ordering::Acquire) {
            RUNNING => None,
            state => Some(Self::why(state)),
        }
    }

    /// The first record number with no room in the ring yet: every number
    /// below it is free of the flusher (`taken_lsn` only grows, so it stays so).
    #[inline]
    fn room_end(&self) -> Lsn {
        self.taken_lsn.load(Ordering::Acquire) + self.ring.len()
    }

    #[cold]
    fn why(state: u8) -> LogUnavailable {
        match state {
            FAILED_DISK_FULL => LogUnavailable::DiskFull,
            FAILED_IO => LogUnavailable::IoFailed,
            _ => LogUnavailable::Closed,
        }
    }

    /// Wakes a sleeping flusher. Only the first appender to see it asleep pays
    /// for the wake-up (a futex call); the others find the flag cleared.
    fn wake_flusher(&self) {
        if self.flusher_parked.load(Ordering::SeqCst) && self.flusher_parked.swap(false, Ordering::SeqCst) {
            self.wake_flusher_now();
        }
    }

    fn wake_flusher_now(&self) {
        let _guard = self.flusher_wake.0.lock().unwrap_or_else(|p| p.into_inner());
        self.flusher_wake.1.notify_one();
    }

    fn announce_durable(&self) {
        if let Some(listener) = self.durable_listener.get() {
            listener();
        }
        if self.durable_waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.durable_changed.0.lock().unwrap_or_else(|p| p.into_inner());
            self.durable_changed.1.notify_all();
        }
    }

    fn fail(&self, error: &std::io::Error, during: &str) {
        let disk_full = error.raw_os_error() == Some(libc::ENOSPC) || error.kind() == std::io::ErrorKind::StorageFull;
        let state = if disk_full { FAILED_DISK_FULL } else { FAILED_IO };
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{during}: {error}"));
        self.state.store(state, Ordering::Release);
        tracing::error!(%error, during, "the log failed: state changes are refused from now on; restart to recover");
        self.announce_durable();
    }
}

/// The last segment recovery read (`RecoveredLog::segments`): records after
/// its `records` go on in it while it has room, rather than in a new segment
/// (each a preallocated `segment_size_bytes`: a start that logged even one
/// record used to take a new one, and an engine restarted in a loop filled
/// the disk with them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeSegment {
    pub header: SegmentHeader,
    pub records: u64,
}

/// The writer half of the log; its `Appender`s are the state machine's `Journal`.
pub struct LogWriter {
    shared: Arc<Shared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

struct Flusher {
    shared: Arc<Shared>,
    storage: Box<dyn LogStorage>,
    options: LogOptions,
    campaign_id: u32,
    inventory: InventoryStamp,
    segment: Option<Box<dyn SegmentFile>>,
    /// Opened instead of a new segment for the first record, if set.
    resume: Option<ResumeSegment>,
    next_segment_index: u64,
    segment_records_used: u64,
    segment_records_capacity: u64,
}

impl LogWriter {
    /// Starts a writer whose first record will be `next_lsn`, written (when it
    /// arrives) on in `resume` if that segment is where the log ends, has
    /// room, and was made with this campaign, inventory and segment size;
    /// else in a new segment numbered `next_segment_index`.
    pub fn start(
        storage: Box<dyn LogStorage>,
        options: LogOptions,
        campaign_id: u32,
        inventory: InventoryStamp,
        next_lsn: Lsn,
        next_segment_index: u64,
        resume: Option<ResumeSegment>,
    ) -> Result<LogWriter, LogOptionsError> {
        options.check()?;
        assert!(next_lsn >= 1, "sequence numbers start at 1");
        let segment_records_capacity = record_area_bytes(options.segment_size_bytes) / RECORD_BYTES as u64;
        let resume = resume.filter(|ResumeSegment { header, records }| {
            header.first_lsn.checked_add(*records) == Some(next_lsn)
                && header.segment_index.checked_add(1) == Some(next_segment_index)
                && header.campaign_id == campaign_id
                && header.inventory == inventory
                && header.size_bytes == options.segment_size_bytes
                && *records < segment_records_capacity
        });
        let shared = Arc::new(Shared {
            ring: Ring::new(options.ring_records),
            append_lock: Mutex::new(()),
            next_lsn: CachePadded::new(AtomicU64::new(next_lsn)),
            written_lsn: CachePadded::new(AtomicU64::new(next_lsn)),
            taken_lsn: CachePadded::new(AtomicU64::new(next_lsn)),
            durable_lsn: CachePadded::new(AtomicU64::new(next_lsn)),
            state: CachePadded::new(AtomicU8::new(RUNNING)),
            failure: Mutex::new(None),
            flusher_parked: CachePadded::new(AtomicBool::new(false)),
            flusher_wake: (Mutex::new(()), Condvar::new()),
            durable_waiters: CachePadded::new(AtomicU64::new(0)),
            durable_changed: (Mutex::new(()), Condvar::new()),
            durable_listener: OnceLock::new(),
            stats: CachePadded::new(LogStats::default()),
        });
        let flusher = Flusher {
            shared: Arc::clone(&shared),
            storage,
            options,
            campaign_id,
            inventory,
            segment: None,
            resume,
            next_segment_index,
            segment_records_used: 0,
            segment_records_capacity,
        };
        let handle = std::thread::Builder::new()
            .name("yeyak-log-flusher".into())
            .spawn(move || flusher.run())
            .expect("the OS can start one thread");
        Ok(LogWriter { shared, flusher: Mutex::new(Some(handle)) })
    }

    /// Takes the append lock for a command or a run of them (a batch frame,
    /// a server round): the only way to append (`Appender` is the `Journal`),
    /// with one hand-over to the flusher when it is dropped. Records are not
    /// made durable before then, so never wait for durability while holding
    /// one. Lock order: the append lock first, then the engine's writer lock
    /// (a sole-writer engine's), then person latches, then the engine's
    /// capacity lock. Taking the lock before the command starts is what keeps
    /// that order: a command latches its person, then appends.
    pub fn appender(&self) -> Appender<'_> {
        let guard = self.shared.append_lock.lock().unwrap_or_else(|p| p.into_inner());
        let shared = &*self.shared;
        // Under the lock, `next_lsn` is this appender's to draw from, and the
        // flusher only ever moves `taken_lsn` on: the room seen now is there.
        let next = shared.next_lsn.load(Ordering::Relaxed);
        Appender {
            shared,
            _guard: guard,
            next: Cell::new(next),
            room_end: Cell::new(shared.room_end()),
            _one_thread: std::marker::PhantomData,
        }
    }

    /// The number the next record will get: every number below it is drawn
    /// (its record in the ring, or about to be, by the appender holding the lock).
    pub fn next_lsn(&self) -> Lsn {
        self.shared.next_lsn.load(Ordering::Acquire)
    }

    /// Whether records are accepted right now.
    pub fn writable(&self) -> Result<(), LogUnavailable> {
        self.shared.unavailable().map_or(Ok(()), Err)
    }

    /// Every record numbered below this is durable.
    /// Has `listener` called by the flusher each time records become durable,
    /// and when the log fails or closes: for a thread that sleeps while its
    /// answers wait for a sync (the server's engine thread) rather than
    /// blocking in `wait_durable`. One listener per log; returns false (and
    /// keeps the first) if one is set already. The listener runs on the
    /// flusher between groups: it must be quick and must not wait on the log.
    pub fn on_durable(&self, listener: impl Fn() + Send + Sync + 'static) -> bool {
        self.shared.durable_listener.set(Box::new(listener)).is_ok()
    }

    pub fn durable_lsn(&self) -> Lsn {
        self.shared.durable_lsn.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> &LogStats {
        &self.shared.stats
    }

    /// What made the log stop, if it failed.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until every record numbered below `durable_after` is durable.
    /// An error means it never will be: the answer must not be released.
    pub fn wait_durable(&self, durable_after: Lsn) -> Result<(), LogUnavailable> {
        let shared = &self.shared;
        for _ in 0..256 {
            if shared.durable_lsn.load(Ordering::Acquire) >= durable_after {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        shared.durable_waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = shared.durable_changed.0.lock().unwrap_or_else(|p| p.into_inner());
        let result = loop {
            if shared.durable_lsn.load(Ordering::Acquire) >= durable_after {
                break Ok(());
            }
            if let Some(why) = shared.unavailable() {
                if why != LogUnavailable::Closed || shared.state.load(Ordering::Acquire) == CLOSED {
                    break Err(why);
                }
            }
            shared.wake_flusher();
            guard = shared
                .durable_changed
                .1
                .wait_timeout(guard, Duration::from_millis(1))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        shared.durable_waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Stops taking records, writes and syncs every record already appended,
    /// and stops the flusher. Idempotent.
    pub fn close(&self) -> Result<(), LogUnavailable> {
        let _ = self.shared.state.compare_exchange(RUNNING, CLOSING, Ordering::AcqRel, Ordering::Acquire);
        self.shared.wake_flusher_now();
        if let Some(handle) = self.flusher.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if handle.join().is_err() {
                tracing::error!("the log flusher thread panicked");
            }
        }
        match self.shared.state.load(Ordering::Acquire) {
            FAILED_DISK_FULL => Err(LogUnavailable::DiskFull),
            FAILED_IO => Err(LogUnavailable::IoFailed),
            _ => Ok(()),
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// Holds the log's append lock; see `LogWriter::appender`.
pub struct Appender<'log> {
    shared: &'log Shared,
    _guard: std::sync::MutexGuard<'log, ()>,
    /// The number the next append draws (`Shared::next_lsn` as this
    /// appender keeps it): read here, not from the shared line.
    next: Cell<Lsn>,
    /// The first number with no room in the ring yet, as of the flusher's
    /// `taken_lsn` last read: below it an append needs no look at the flusher.
    room_end: Cell<Lsn>,
    /// Neither `Send` nor `Sync`: appends write the ring through the
    /// lock's ownership, so one thread at a time may use an appender.
    _one_thread: std::marker::PhantomData<*const ()>,
}

impl Appender<'_> {
    /// Hands every record appended so far to the flusher.
    fn publish(&self) {
        let next = self.next.get();
        if self.shared.written_lsn.load(Ordering::Relaxed) != next {
            // SeqCst, as the flusher's parking (`Flusher::idle`): it either sees
            // this store before it sleeps, or this thread sees it parked.
            self.shared.written_lsn.store(next, Ordering::SeqCst);
            self.shared.wake_flusher();
        }
    }

    /// Waits until the flusher has taken the record `lsn - ring_len` out of
    /// the ring, publishing what is there first so that it can.
    #[cold]
    fn wait_for_room(&self, lsn: Lsn) -> Result<(), LogUnavailable> {
        let shared = self.shared;
        if lsn >= shared.room_end() {
            self.publish();
            while lsn >= shared.room_end() {
                if let Some(why) = shared.unavailable() {
                    return Err(why);
                }
                shared.wake_flusher();
                std::thread::yield_now();
            }
        }
        self.room_end.set(shared.room_end());
        Ok(())
    }
}

impl Drop for Appender<'_> {
    fn drop(&mut self) {
        self.publish();
    }
}

impl Journal for Appender<'_> {
    #[inline(always)]
    fn append(&self, entry: &Entry) -> Result<Lsn, LogUnavailable> {
        let shared = self.shared;
        if let Some(why) = shared.unavailable() {
            return Err(why);
        }
        // Only the holder of the append lock stores `next_lsn`: this is ours.
        let lsn = self.next.get();
        if lsn >= self.room_end.get() {
            self.wait_for_room(lsn)?;
        }
        // SAFETY: see `unsafe impl Sync for Ring`: this thread holds the
        // append lock, and `lsn < room_end` (at most `taken_lsn + ring_len`,
        // taken_lsn acquired) proves the flusher is done with this position.
        let bytes = unsafe { &mut *shared.ring.record_ptr(lsn) };
        Record::fill(bytes, entry.kind(), &entry.encode());
        self.next.set(lsn + 1);
        shared.next_lsn.store(lsn + 1, Ordering::Release);
        Ok(lsn)
    }

    #[inline]
    fn next_lsn(&self) -> Lsn {
        self.next.get()
    }

    #[inline]
    fn writable(&self) -> Result<(), LogUnavailable> {
        self.shared.unavailable().map_or(Ok(()), Err)
    }
}

impl Flusher {
    fn run(mut self) {
        let mut taken = self.shared.taken_lsn.load(Ordering::Relaxed);
        loop {
            let published = self.shared.written_lsn.load(Ordering::Acquire);
            let end = published.min(taken + u64::from(self.options.group_records_max));
            if end == taken {
                if self.idle(taken) {
                    break;
                }
                continue;
            }
            if let Err((error, during)) = self.write_group(taken, end) {
                self.shared.fail(&error, during);
                return;
            }
            // Written: the ring positions may be reused while the group syncs.
            self.shared.taken_lsn.store(end, Ordering::Release);
            if let Err((error, during)) = self.sync() {
                self.shared.fail(&error, during);
                return;
            }
            let stats = &self.shared.stats;
            stats.records_durable.fetch_add(end - taken, Ordering::Relaxed);
            stats.groups.fetch_add(1, Ordering::Relaxed);
            self.shared.durable_lsn.store(end, Ordering::Release);
            self.shared.announce_durable();
            taken = end;
        }
        let _ = self.shared.state.compare_exchange(CLOSING, CLOSED, Ordering::AcqRel, Ordering::Acquire);
        self.shared.announce_durable();
    }

    /// Nothing to write: stop when closing and drained, else sleep briefly.
    /// Returns whether to stop.
    fn idle(&mut self, taken: Lsn) -> bool {
        let shared = &self.shared;
        match shared.state.load(Ordering::Acquire) {
            RUNNING => {}
            CLOSING => {
                // An appender that took the lock before the close was seen
                // publishes when it lets go: wait for it, then drain.
                let _no_appender = shared.append_lock.lock().unwrap_or_else(|p| p.into_inner());
                return shared.written_lsn.load(Ordering::Acquire) == taken;
            }
            _ => return true,
        }
        let guard = shared.flusher_wake.0.lock().unwrap_or_else(|p| p.into_inner());
        shared.flusher_parked.store(true, Ordering::SeqCst);
        if shared.written_lsn.load(Ordering::SeqCst) == taken && shared.state.load(Ordering::SeqCst) == RUNNING {
            let _ = shared.flusher_wake.1.wait_timeout(guard, Duration::from_millis(1));
        }
        shared.flusher_parked.store(false, Ordering::SeqCst);
        false
    }

    fn open_next_segment(&mut self, first_lsn: Lsn) -> Result<(), (std::io::Error, &'static str)> {
        let header = SegmentHeader {
            segment_index: self.next_segment_index,
            first_lsn,
            campaign_id: self.campaign_id,
            inventory: self.inventory,
            size_bytes: self.options.segment_size_bytes,
        };
        let segment = self
            .storage
            .create_segment(&header, self.options.segment_size_bytes)
            .map_err(|e| (e, "creating a log segment"))?;
        self.segment = Some(segment);
        self.next_segment_index += 1;
        self.segment_records_used = 0;
        Ok(())
    }

    /// Opens the segment the log ended in to write `first_lsn` after its
    /// records; a new segment if it cannot be opened (the log goes on).
    fn resume_segment(&mut self, resume: ResumeSegment, first_lsn: Lsn) -> Result<(), (std::io::Error, &'static str)> {
        debug_assert_eq!(resume.header.first_lsn + resume.records, first_lsn, "checked at start");
        match self.storage.open_segment(&resume.header, resume.records) {
            Ok(segment) => {
                self.segment = Some(segment);
                self.segment_records_used = resume.records;
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, "the log's last segment could not be opened to write on: a new segment is made");
                self.open_next_segment(first_lsn)
            }
        }
    }

    /// Writes the records numbered `first..end` straight from the ring: one
    /// write per contiguous run (split where the ring wraps or a segment fills).
    fn write_group(&mut self, first: Lsn, end: Lsn) -> Result<(), (std::io::Error, &'static str)> {
        let ring_len = self.shared.ring.len();
        let mut lsn = first;
        while lsn < end {
            if self.segment.is_none() || self.segment_records_used == self.segment_records_capacity {
                self.sync()?;
                match self.resume.take() {
                    Some(resume) => self.resume_segment(resume, lsn)?,
                    None => self.open_next_segment(lsn)?,
                }
            }
            let position = lsn & self.shared.ring.mask;
            let count =
                (end - lsn).min(self.segment_records_capacity - self.segment_records_used).min(ring_len - position);
            // SAFETY: `first..end` is published (acquired in `run`) and not yet
            // taken: no appender writes these positions until `taken_lsn` passes them.
            let run = unsafe { self.shared.ring.run_mut(position as usize, count as usize) };
            for (record_lsn, record) in (lsn..).zip(run.iter_mut()) {
                Record::seal(record, record_lsn);
            }
            let bytes = run.as_flattened();
            let offset = SEGMENT_HEADER_BYTES as u64 + self.segment_records_used * RECORD_BYTES as u64;
            let segment = self.segment.as_mut().expect("opened above");
            segment.write_at(offset, bytes).map_err(|e| (e, "writing log records"))?;
            self.segment_records_used += count;
            lsn += count;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), (std::io::Error, &'static str)> {
        if self.options.durability == Durability::None {
            return Ok(());
        }
        let Some(segment) = self.segment.as_mut() else {
            return Ok(());
        };
        let started = Instant::now();
        segment.sync().map_err(|e| (e, "syncing log records"))?;
        let nanos = started.elapsed().as_nanos() as u64;
        self.shared.stats.record_sync(nanos);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::SlotIndex;
    use crate::log::recovery::{recover, RecoveryMode};
    use crate::log::FileStorage;
    use crate::state::PersonKey;

    fn entry(index: u64) -> Entry {
        Entry::Reserved {
            person: PersonKey(u128::from(index) + 1),
            slot: SlotIndex(index as u32),
            idempotency_key: index + 1,
            operator_id: 0,
        }
    }

    fn writer(directory: &std::path::Path, ring_records: u32, group_records_max: u32) -> LogWriter {
        let options = LogOptions {
            durability: Durability::Sync,
            write_mode: WriteMode::Pwrite,
            segment_size_bytes: (SEGMENT_HEADER_BYTES + RECORD_BYTES * 7) as u64,
            ring_records,
            group_records_max,
        };
        let storage = Box::new(FileStorage::new(directory, WriteMode::Pwrite));
        LogWriter::start(storage, options, 9, InventoryStamp::default(), 1, 0, None).unwrap()
    }

    /// Every record read back from the directory, in order, as (lsn, entry).
    fn read_back(directory: &std::path::Path) -> Vec<(Lsn, Entry)> {
        let mut records = Vec::new();
        recover(directory, RecoveryMode::ReadOnly, |record| {
            records.push((record.lsn, Entry::decode(record.kind, &record.payload).unwrap()));
            Ok(())
        })
        .unwrap();
        records
    }

    #[test]
    fn an_appender_longer_than_the_ring_hands_over_as_it_goes() {
        // A ring of 4 and groups of 3, segments of 7 records: 100 records in
        // one hold of the lock wrap the ring 25 times and fill 15 segments.
        let directory = tempfile::tempdir().unwrap();
        let log = writer(directory.path(), 4, 3);
        let appender = log.appender();
        for index in 0..100 {
            assert_eq!(appender.append(&entry(index)), Ok(index + 1));
        }
        drop(appender);
        log.wait_durable(101).unwrap();
        log.close().unwrap();
        let expected: Vec<_> = (0..100).map(|index| (index + 1, entry(index))).collect();
        assert_eq!(read_back(directory.path()), expected);
    }

    #[test]
    fn appenders_on_many_threads_make_one_gapless_order() {
        let directory = tempfile::tempdir().unwrap();
        let log = writer(directory.path(), 8, 5);
        std::thread::scope(|s| {
            for thread in 0..4u64 {
                let log = &log;
                s.spawn(move || {
                    for step in 0..50 {
                        let index = thread * 1000 + step;
                        if step % 3 == 0 {
                            let appender = log.appender();
                            appender.append(&entry(index)).unwrap();
                            appender.append(&entry(index + 500)).unwrap();
                        } else {
                            log.appender().append(&entry(index)).unwrap();
                        }
                    }
                });
            }
        });
        assert_eq!(log.next_lsn(), 1 + 4 * (50 + 17));
        log.close().unwrap();
        let records = read_back(directory.path());
        assert_eq!(records.len(), 4 * 67);
        assert!(records.iter().enumerate().all(|(index, (lsn, _))| *lsn == index as u64 + 1));
        // A held appender's records are consecutive.
        for window in records.windows(2) {
            if let (Entry::Reserved { idempotency_key: first, .. }, Entry::Reserved { idempotency_key: next, .. }) =
                (window[0].1, window[1].1)
            {
                if (first - 1) % 1000 % 3 == 0 && (first - 1) % 1000 < 500 {
                    assert_eq!(next, first + 500, "the pair appended under one hold was split");
                }
            }
        }
    }

    #[test]
    fn closing_waits_for_a_held_appender_then_refuses_more() {
        let directory = tempfile::tempdir().unwrap();
        let log = writer(directory.path(), 16, 16);
        let appender = log.appender();
        appender.append(&entry(0)).unwrap();
        std::thread::scope(|s| {
            let closing = s.spawn(|| log.close());
            // The flusher cannot finish while the appender is held: records
            // appended before it let go are still written.
            std::thread::sleep(Duration::from_millis(20));
            assert!(!closing.is_finished(), "close finished while an appender held the lock");
            let second = appender.append(&entry(1));
            drop(appender);
            assert_eq!(closing.join().unwrap(), Ok(()));
            let written = read_back(directory.path());
            match second {
                Ok(lsn) => assert_eq!((lsn, written.len()), (2, 2)),
                Err(why) => assert_eq!((why, written.len()), (LogUnavailable::Closed, 1)),
            }
        });
        assert_eq!(log.appender().append(&entry(2)), Err(LogUnavailable::Closed));
    }

    #[test]
    fn the_durability_listener_hears_of_every_group_and_of_the_close() {
        let directory = tempfile::tempdir().unwrap();
        let log = writer(directory.path(), 16, 4);
        let heard = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&heard);
        assert!(log.on_durable(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        assert!(!log.on_durable(|| {}), "one listener per log: the first stays");
        for round in 0..3u64 {
            let before = heard.load(Ordering::SeqCst);
            let appender = log.appender();
            let mut lsn = 0;
            for index in 0..6 {
                lsn = appender.append(&entry(round * 6 + index)).unwrap();
            }
            drop(appender);
            log.wait_durable(lsn + 1).unwrap();
            // Groups of at most 4 records: six records make two groups at least.
            let deadline = Instant::now() + Duration::from_secs(5);
            while heard.load(Ordering::SeqCst) < before + 2 && Instant::now() < deadline {
                std::thread::yield_now();
            }
            assert!(heard.load(Ordering::SeqCst) >= before + 2, "round {round}: a group became durable unheard");
        }
        let before_close = heard.load(Ordering::SeqCst);
        log.close().unwrap();
        assert!(heard.load(Ordering::SeqCst) > before_close, "the close is announced too");
    }
}
