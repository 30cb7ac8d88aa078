//! A storage backend that fails on purpose, for fault tests (test support:
//! not used by the engine itself). It wraps the real `FileStorage` and, as
//! its `FaultPlan` says, makes writes fail with ENOSPC (disk full) or syncs
//! fail with EIO after a number of successful calls, or the reopening of a
//! segment to write on in it fail.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::log::format::SegmentHeader;
use crate::log::storage::{FileStorage, LogStorage, SegmentFile};

/// When to fail. `u64::MAX` means never.
#[derive(Debug)]
pub struct FaultPlan {
    /// Writes (segment creation included) that succeed before ENOSPC.
    pub writes_before_disk_full: AtomicU64,
    /// Syncs that succeed before EIO.
    pub syncs_before_io_error: AtomicU64,
    /// Whether reopening a segment to write on in it fails (EIO).
    pub segment_opens_fail: AtomicBool,
}

impl FaultPlan {
    pub fn never() -> Arc<FaultPlan> {
        Arc::new(FaultPlan {
            writes_before_disk_full: AtomicU64::new(u64::MAX),
            syncs_before_io_error: AtomicU64::new(u64::MAX),
            segment_opens_fail: AtomicBool::new(false),
        })
    }

    fn spend(budget: &AtomicU64) -> bool {
        budget.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| left.checked_sub(1)).is_ok()
    }
}

pub struct FaultyStorage {
    inner: FileStorage,
    plan: Arc<FaultPlan>,
}

impl FaultyStorage {
    pub fn new(inner: FileStorage, plan: Arc<FaultPlan>) -> FaultyStorage {
        FaultyStorage { inner, plan }
    }
}

fn disk_full() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

impl LogStorage for FaultyStorage {
    fn create_segment(&mut self, header: &SegmentHeader, size_bytes: u64) -> io::Result<Box<dyn SegmentFile>> {
        if !FaultPlan::spend(&self.plan.writes_before_disk_full) {
            return Err(disk_full());
        }
        let inner = self.inner.create_segment(header, size_bytes)?;
        Ok(Box::new(FaultySegment { inner, plan: Arc::clone(&self.plan) }))
    }
    fn open_segment(&mut self, header: &SegmentHeader, records: u64) -> io::Result<Box<dyn SegmentFile>> {
        if self.plan.segment_opens_fail.load(Ordering::Acquire) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let inner = self.inner.open_segment(header, records)?;
        Ok(Box::new(FaultySegment { inner, plan: Arc::clone(&self.plan) }))
    }
}

struct FaultySegment {
    inner: Box<dyn SegmentFile>,
    plan: Arc<FaultPlan>,
}

impl SegmentFile for FaultySegment {
    fn write_at(&mut self, offset_bytes: u64, bytes: &[u8]) -> io::Result<()> {
        if !FaultPlan::spend(&self.plan.writes_before_disk_full) {
            return Err(disk_full());
        }
        self.inner.write_at(offset_bytes, bytes)
    }
    fn sync(&mut self) -> io::Result<()> {
        if !FaultPlan::spend(&self.plan.syncs_before_io_error) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.sync()
    }
}
