//! The log writer: many appenders, one flusher thread, group commit.
//!
//! Appenders (`Journal::append`) draw a sequence number from one atomic
//! counter, encode their record into a ring slot chosen by that number, and
//! publish the slot by storing the number into it (the LMAX Disruptor's
//! sequenced ring). The flusher thread takes the longest run of published
//! records, writes them to the current segment in one call, makes them durable
//! with one sync, and advances `durable_lsn`. Answers wait for `durable_lsn`.
//!
//! Sequence numbers are contiguous: every number drawn is written, in order,
//! before any later one is reported durable; the log never has holes.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

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

/// The largest ring the writer accepts, in records (64 bytes each in memory).
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
            ring_records: 1 << 20,
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

#[repr(C, align(64))]
struct RingSlot {
    /// The sequence number whose record these bytes hold, stored (release)
    /// after the bytes; 0 before the first use (sequence numbers start at 1).
    published: AtomicU64,
    bytes: UnsafeCell<RecordBytes>,
}

// SAFETY: `bytes` of the slot for sequence number `n` is written only by the
// one appender that drew `n`, and only after the flusher has taken number
// `n - ring_len` out of the slot (appender acquire-loads `taken_lsn`, which the
// flusher release-stores after copying). The flusher reads `bytes` only after
// acquire-loading `published == n`, which the appender release-stores after
// writing. So a write and a read of the same bytes never overlap.
unsafe impl Sync for RingSlot {}

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
    ring: Box<[RingSlot]>,
    ring_mask: u64,
    next_lsn: CachePadded<AtomicU64>,
    /// Every record numbered below this has been copied out of the ring.
    taken_lsn: CachePadded<AtomicU64>,
    /// Every record numbered below this is durable (written, when durability is off).
    durable_lsn: CachePadded<AtomicU64>,
    /// Read by every append; written only when the log fails or closes. On a
    /// line of its own, so that the flusher's writes to the fields below never
    /// make appenders miss on it.
    state: CachePadded<AtomicU8>,
    failure: Mutex<Option<String>>,
    /// Written by the flusher when it sleeps and wakes, read by every append.
    flusher_parked: CachePadded<AtomicBool>,
    flusher_wake: (Mutex<()>, Condvar),
    durable_waiters: CachePadded<AtomicU64>,
    durable_changed: (Mutex<()>, Condvar),
    /// Written by the flusher once a group.
    stats: CachePadded<LogStats>,
}

impl Shared {
    fn unavailable(&self) -> Option<LogUnavailable> {
        match self.state.load(Ordering::Acquire) {
            RUNNING => None,
            FAILED_DISK_FULL => Some(LogUnavailable::DiskFull),
            FAILED_IO => Some(LogUnavailable::IoFailed),
            _ => Some(LogUnavailable::Closed),
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

/// The writer half of the log; implements `Journal` for the state machine.
pub struct LogWriter {
    shared: Arc<Shared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

struct Flusher {
    shared: Arc<Shared>,
    storage: Box<dyn LogStorage>,
    options: LogOptions,
    campaign_id: u32,
    segment: Option<Box<dyn SegmentFile>>,
    next_segment_index: u64,
    segment_records_used: u64,
    segment_records_capacity: u64,
    buffer: Vec<u8>,
}

impl LogWriter {
    /// Starts a writer whose first record will be `next_lsn`, in a new segment
    /// numbered `next_segment_index` (created when the first record arrives).
    pub fn start(
        storage: Box<dyn LogStorage>,
        options: LogOptions,
        campaign_id: u32,
        next_lsn: Lsn,
        next_segment_index: u64,
    ) -> Result<LogWriter, LogOptionsError> {
        options.check()?;
        assert!(next_lsn >= 1, "sequence numbers start at 1");
        let ring = (0..options.ring_records)
            .map(|_| RingSlot { published: AtomicU64::new(0), bytes: UnsafeCell::new([0; RECORD_BYTES]) })
            .collect();
        let shared = Arc::new(Shared {
            ring,
            ring_mask: u64::from(options.ring_records) - 1,
            next_lsn: CachePadded::new(AtomicU64::new(next_lsn)),
            taken_lsn: CachePadded::new(AtomicU64::new(next_lsn)),
            durable_lsn: CachePadded::new(AtomicU64::new(next_lsn)),
            state: CachePadded::new(AtomicU8::new(RUNNING)),
            failure: Mutex::new(None),
            flusher_parked: CachePadded::new(AtomicBool::new(false)),
            flusher_wake: (Mutex::new(()), Condvar::new()),
            durable_waiters: CachePadded::new(AtomicU64::new(0)),
            durable_changed: (Mutex::new(()), Condvar::new()),
            stats: CachePadded::new(LogStats::default()),
        });
        let flusher = Flusher {
            shared: Arc::clone(&shared),
            storage,
            options,
            campaign_id,
            segment: None,
            next_segment_index,
            segment_records_used: 0,
            segment_records_capacity: record_area_bytes(options.segment_size_bytes) / RECORD_BYTES as u64,
            buffer: Vec::with_capacity(options.group_records_max as usize * RECORD_BYTES),
        };
        let handle = std::thread::Builder::new()
            .name("yeyak-log-flusher".into())
            .spawn(move || flusher.run())
            .expect("the OS can start one thread");
        Ok(LogWriter { shared, flusher: Mutex::new(Some(handle)) })
    }

    /// Every record numbered below this is durable.
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

impl Journal for LogWriter {
    fn append(&self, entry: &Entry) -> Result<Lsn, LogUnavailable> {
        let shared = &*self.shared;
        if let Some(why) = shared.unavailable() {
            return Err(why);
        }
        let lsn = shared.next_lsn.fetch_add(1, Ordering::AcqRel);
        let ring_len = shared.ring_mask + 1;
        // Backpressure: wait until the flusher has taken the slot's previous record.
        while lsn - shared.taken_lsn.load(Ordering::Acquire) >= ring_len {
            if let Some(why) = shared.unavailable() {
                return Err(why);
            }
            shared.wake_flusher();
            std::thread::yield_now();
        }
        let slot = &shared.ring[(lsn & shared.ring_mask) as usize];
        let record = Record { lsn, kind: entry.kind(), payload: entry.encode() };
        // SAFETY: see `unsafe impl Sync for RingSlot`: this thread drew `lsn`,
        // and the wait above proved the flusher is done with the slot.
        unsafe { record.encode_into(&mut *slot.bytes.get()) };
        slot.published.store(lsn, Ordering::Release);
        shared.wake_flusher();
        Ok(lsn)
    }

    fn next_lsn(&self) -> Lsn {
        self.shared.next_lsn.load(Ordering::Acquire)
    }

    fn writable(&self) -> Result<(), LogUnavailable> {
        self.shared.unavailable().map_or(Ok(()), Err)
    }
}

impl Flusher {
    fn run(mut self) {
        loop {
            let first = self.shared.taken_lsn.load(Ordering::Relaxed);
            let count = self.take_group(first);
            if count == 0 {
                if self.idle(first) {
                    break;
                }
                continue;
            }
            let end = first + count;
            self.shared.taken_lsn.store(end, Ordering::Release);
            if let Err((error, during)) = self.write_group(first).and_then(|()| self.sync()) {
                self.shared.fail(&error, during);
                return;
            }
            let stats = &self.shared.stats;
            stats.records_durable.fetch_add(count, Ordering::Relaxed);
            stats.groups.fetch_add(1, Ordering::Relaxed);
            self.shared.durable_lsn.store(end, Ordering::Release);
            self.shared.announce_durable();
        }
        let _ = self.shared.state.compare_exchange(CLOSING, CLOSED, Ordering::AcqRel, Ordering::Acquire);
        self.shared.announce_durable();
    }

    /// Copies the run of published records from `first` into the buffer.
    fn take_group(&mut self, first: Lsn) -> u64 {
        self.buffer.clear();
        let mut count = 0;
        while count < u64::from(self.options.group_records_max) {
            let lsn = first + count;
            let slot = &self.shared.ring[(lsn & self.shared.ring_mask) as usize];
            if slot.published.load(Ordering::Acquire) != lsn {
                break;
            }
            // SAFETY: see `unsafe impl Sync for RingSlot`: `published == lsn`
            // (acquired) means the appender finished writing these bytes, and no
            // appender reuses the slot before `taken_lsn` passes `lsn`.
            self.buffer.extend_from_slice(unsafe { &*slot.bytes.get() });
            count += 1;
        }
        count
    }

    /// Nothing to write: stop when closing and drained, else sleep briefly.
    /// Returns whether to stop.
    fn idle(&mut self, taken: Lsn) -> bool {
        let shared = &self.shared;
        match shared.state.load(Ordering::Acquire) {
            RUNNING => {}
            CLOSING if shared.next_lsn.load(Ordering::Acquire) > taken => {
                // An appender drew a number and has not published yet: wait for it.
                std::thread::yield_now();
                return false;
            }
            _ => return true,
        }
        let guard = shared.flusher_wake.0.lock().unwrap_or_else(|p| p.into_inner());
        shared.flusher_parked.store(true, Ordering::SeqCst);
        let slot = &shared.ring[(taken & shared.ring_mask) as usize];
        if slot.published.load(Ordering::SeqCst) != taken && shared.state.load(Ordering::SeqCst) == RUNNING {
            let _ = shared.flusher_wake.1.wait_timeout(guard, Duration::from_millis(1));
        }
        shared.flusher_parked.store(false, Ordering::SeqCst);
        false
    }

    fn open_next_segment(&mut self, first_lsn: Lsn) -> Result<(), (std::io::Error, &'static str)> {
        let header = SegmentHeader { segment_index: self.next_segment_index, first_lsn, campaign_id: self.campaign_id };
        let segment = self
            .storage
            .create_segment(&header, self.options.segment_size_bytes)
            .map_err(|e| (e, "creating a log segment"))?;
        self.segment = Some(segment);
        self.next_segment_index += 1;
        self.segment_records_used = 0;
        Ok(())
    }

    fn write_group(&mut self, first: Lsn) -> Result<(), (std::io::Error, &'static str)> {
        let mut written = 0;
        let total = (self.buffer.len() / RECORD_BYTES) as u64;
        while written < total {
            if self.segment.is_none() || self.segment_records_used == self.segment_records_capacity {
                self.sync()?;
                self.open_next_segment(first + written)?;
            }
            let count = (total - written).min(self.segment_records_capacity - self.segment_records_used);
            let bytes = &self.buffer[(written as usize) * RECORD_BYTES..((written + count) as usize) * RECORD_BYTES];
            let offset = SEGMENT_HEADER_BYTES as u64 + self.segment_records_used * RECORD_BYTES as u64;
            let segment = self.segment.as_mut().expect("opened above");
            segment.write_at(offset, bytes).map_err(|e| (e, "writing log records"))?;
            self.segment_records_used += count;
            written += count;
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
