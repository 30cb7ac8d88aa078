//! The append-only log: segmented, preallocated files of fixed-size,
//! checksummed records (docs/log-format.md), written with group commit and
//! read back by recovery. It knows nothing about what its records mean.

pub mod faults;
pub mod format;
pub mod recovery;
pub mod retention;
pub mod storage;
pub mod writer;

pub use recovery::{recover, OutsideCut, RecoveredLog, RecoveryError, RecoveryMode, TornTail};
pub use storage::{FileStorage, LogStorage, SegmentFile, WriteMode};
pub use writer::{Appender, Durability, LogOptions, LogWriter};
