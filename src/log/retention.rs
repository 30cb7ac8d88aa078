//! Removing log segments nothing needs any more: those whose every record is
//! numbered below a given one (the layer above knows why; for yeyak, a
//! snapshot holds their effects).
//!
//! A segment is wholly behind `lsn` when the *next* segment exists and starts
//! at or before `lsn`. The writer only ever appends to the newest segment, so
//! a segment with a successor is finished and safe to remove. Segments are
//! removed oldest first, so a crash midway leaves consecutive indexes.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::log::format::{SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::log::recovery::list_segments;
use crate::log::storage::sync_directory;

/// The header of a segment file, if it reads as one.
pub fn read_segment_header(path: &Path) -> io::Result<SegmentHeader> {
    let file = std::fs::File::open(path)?;
    let mut bytes = [0; SEGMENT_HEADER_BYTES];
    file.read_exact_at(&mut bytes, 0)?;
    SegmentHeader::decode(&bytes).map_err(|defect| io::Error::other(format!("{}: {defect}", path.display())))
}

/// Removes the segments of `directory` whose records are all numbered below
/// `lsn`; returns their paths.
pub fn remove_segments_before(directory: &Path, lsn: u64) -> io::Result<Vec<PathBuf>> {
    let segments = list_segments(directory).map_err(io::Error::other)?;
    let mut removed = Vec::new();
    for pair in segments.windows(2) {
        // A successor whose header does not read yet is being created: stop there.
        match read_segment_header(&pair[1].1) {
            Ok(next) if next.first_lsn <= lsn => {}
            _ => break,
        }
        std::fs::remove_file(&pair[0].1)?;
        removed.push(pair[0].1.clone());
    }
    if !removed.is_empty() {
        sync_directory(directory)?;
    }
    Ok(removed)
}
