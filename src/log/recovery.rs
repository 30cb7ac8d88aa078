//! Reading a log directory back: checking every segment and record, finding
//! where the log ends, and handing each record to a visitor in order.
//!
//! Recovery modes (after raft-engine's): `TruncateTornTail` is what start-up
//! uses: a torn or incomplete tail (the last group, cut short by a crash) is
//! reported, and the changes that mend it (its bytes zeroed, empty segments
//! after it removed, a segment cut in its zeros given its size back) listed
//! in `RecoveredLog::repairs`, made by `RecoveredLog::repair` once start-up
//! has decided to serve: a start refused later (a snapshot the log does not
//! reach, say) changes nothing. A defect *before* the tail, that is, a bad
//! record followed anywhere by a good one, is corruption: nothing is changed
//! and the error names the file and byte offset. `ReadOnly` reports the same
//! things and lists no repairs (for `yeyak log verify` and `yeyak log dump`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::log::format::{
    parse_segment_file_name, Record, RecordBytes, RecordDefect, SegmentHeader, RECORD_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::log::storage::{read_ahead, sync_directory};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryMode {
    TruncateTornTail,
    ReadOnly,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("cannot read the log in {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "log corrupted in {path} at byte {offset}: {reason}. yeyak will not start on a log that \
             would lose acknowledged records; restore the data directory from a copy, or move this \
             file away only if you accept losing every record it holds and every record after it"
    )]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error(
        "log segment {path} was cut short from outside yeyak at byte {offset} ({reason}). The records after the \
             cut, acknowledged ones among them, are lost, and yeyak will not start on it. Restore the data \
             directory from a copy; or, to accept the loss, {accept}, and start again"
    )]
    CutShort { path: PathBuf, offset: u64, reason: String, accept: String },
    #[error("log segment {missing} is missing between {before} and {after} in {directory}")]
    MissingSegment { directory: PathBuf, missing: u64, before: u64, after: u64 },
    #[error("log record {lsn} in {path} at byte {offset} was refused by the state machine: {reason}")]
    Rejected { path: PathBuf, offset: u64, lsn: u64, reason: String },
}

/// Where a torn tail was found (in `TruncateTornTail` mode, to be cut by
/// `RecoveredLog::repair`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    pub offset: u64,
    pub defect: String,
    /// Bytes after the tail start that were not zero (zeroed by `repair`).
    pub bytes_discarded: u64,
    /// The file was shortened by something other than yeyak (which only
    /// writes into preallocated files) where its records ran up to the cut:
    /// records after it, acknowledged ones among them, may be lost, where a
    /// crash's torn tail loses only what was never acknowledged. Start-up
    /// refuses such a log (`TornTail::refusal`); `ReadOnly` recovery
    /// reports it. (A cut in the zeros after the last record loses
    /// nothing: it is reported, and start-up gives the file its size back.)
    pub cut: Option<OutsideCut>,
}

/// Where a file cut short from outside yeyak now ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutsideCut {
    pub file_bytes: u64,
    /// The size the segment was created with, where its header still says:
    /// given back, the records before the cut recover.
    pub created_bytes: Option<u64>,
}

impl TornTail {
    /// Why start-up refuses this tail: a cut from outside yeyak that may
    /// have taken acknowledged records (`cut`). None for a crash's torn tail.
    pub fn refusal(&self) -> Option<RecoveryError> {
        let cut = self.cut.as_ref()?;
        let accept = match cut.created_bytes {
            Some(created) => format!(
                "give the file its size back (truncate -s {created} {}): the records before the cut are then \
                 recovered",
                self.path.display()
            ),
            None => "move the file away (every record it held is lost)".to_string(),
        };
        Some(RecoveryError::CutShort {
            path: self.path.clone(),
            offset: cut.file_bytes,
            reason: self.defect.clone(),
            accept,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    pub path: PathBuf,
    pub header: SegmentHeader,
    pub records: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RecoveredLog {
    pub segments: Vec<SegmentSummary>,
    /// The number the next record must carry.
    pub next_lsn: u64,
    /// The index a new segment must get.
    pub next_segment_index: u64,
    pub records: u64,
    /// Records numbered below `from_lsn`: read past (or skipped) and not visited.
    pub records_skipped: u64,
    pub torn_tail: Option<TornTail>,
    /// Empty segment files after the tail (or one whose header was torn),
    /// removed by `repair`.
    pub removed_segments: Vec<PathBuf>,
    /// What `repair` changes, in order (`TruncateTornTail` only).
    pub repairs: Vec<Repair>,
}

/// A change that mends a log whose tail a crash tore (`RecoveredLog::repair`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repair {
    /// A torn tail's bytes, `from..to` of the segment, zeroed.
    Zero { path: PathBuf, from: u64, to: u64 },
    /// A segment cut short in the zeros after its records given its size back.
    RestoreSize { path: PathBuf, size: u64 },
    /// A segment file removed: empty after the tail, or its header torn.
    Remove { path: PathBuf },
}

impl RecoveredLog {
    /// Makes the changes recovery found the log needs (`repairs`), in their
    /// order, each durable before the next (a removal's directory entry
    /// included), then syncs the last segment read: what a killed process
    /// wrote and never synced was replayed, and must not be lost behind
    /// records acknowledged after this start. Start-up calls it once it has
    /// decided to serve, before the log writer starts.
    pub fn repair(&self) -> Result<(), RecoveryError> {
        for repair in &self.repairs {
            match repair {
                Repair::Zero { path, from, to } => zero_range(path, *from, *to)?,
                Repair::RestoreSize { path, size } => restore_size(path, *size)?,
                Repair::Remove { path } => {
                    std::fs::remove_file(path).map_err(io_error(path))?;
                    let directory = path.parent().unwrap_or(Path::new("."));
                    sync_directory(directory).map_err(io_error(directory))?;
                }
            }
        }
        if let Some(last) = self.segments.last() {
            let file = File::open(&last.path).map_err(io_error(&last.path))?;
            file.sync_data().map_err(io_error(&last.path))?;
        }
        Ok(())
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> RecoveryError + '_ {
    move |source| RecoveryError::Io { path: path.to_path_buf(), source }
}

/// The segment files of a directory, by index, checked to be consecutive.
pub fn list_segments(directory: &Path) -> Result<Vec<(u64, PathBuf)>, RecoveryError> {
    let mut segments = Vec::new();
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(segments),
        Err(e) => return Err(io_error(directory)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error(directory))?;
        if let Some(index) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            segments.push((index, entry.path()));
        }
    }
    segments.sort();
    for pair in segments.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(RecoveryError::MissingSegment {
                directory: directory.to_path_buf(),
                missing: pair[0].0 + 1,
                before: pair[0].0,
                after: pair[1].0,
            });
        }
    }
    Ok(segments)
}

struct MappedSegment {
    path: PathBuf,
    map: Option<memmap2::Mmap>,
}

impl MappedSegment {
    fn open(path: &Path) -> Result<MappedSegment, RecoveryError> {
        let file = File::open(path).map_err(io_error(path))?;
        let length = file.metadata().map_err(io_error(path))?.len();
        let map = if length == 0 {
            None
        } else {
            // SAFETY: the log directory belongs to this engine and nothing writes
            // to segment files while recovery or `yeyak log` reads them.
            Some(unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(io_error(path))?)
        };
        Ok(MappedSegment { path: path.to_path_buf(), map })
    }

    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    fn header(&self) -> Result<SegmentHeader, String> {
        let bytes: &[u8; SEGMENT_HEADER_BYTES] = self
            .bytes()
            .get(..SEGMENT_HEADER_BYTES)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| "segment shorter than its 64-byte header".to_string())?;
        SegmentHeader::decode(bytes).map_err(|e| e.to_string())
    }

    fn record_count_capacity(&self) -> u64 {
        (self.bytes().len().saturating_sub(SEGMENT_HEADER_BYTES) / RECORD_BYTES) as u64
    }

    fn record_bytes(&self, index: u64) -> &RecordBytes {
        let start = SEGMENT_HEADER_BYTES + index as usize * RECORD_BYTES;
        self.bytes()[start..start + RECORD_BYTES].try_into().expect("in range by record_count_capacity")
    }

    fn has_good_record_from(&self, index: u64) -> bool {
        (index..self.record_count_capacity()).any(|i| Record::decode(self.record_bytes(i)).is_ok())
    }

    /// The end of the last non-zero byte at or after `from` (`from` if none).
    /// A clean log ends in a preallocated segment's zeros, often hundreds of
    /// MiB: they are OR-ed a page at a time (vectorized), and only the last
    /// page with a non-zero byte is searched byte by byte.
    fn last_nonzero_byte_end(&self, from: u64) -> u64 {
        const PAGE: usize = 4096;
        let rest = self.bytes().get(from as usize..).unwrap_or_default();
        let pages = rest.chunks(PAGE);
        let Some((page_index, page)) = pages.enumerate().rev().find(|(_, page)| page.iter().fold(0, |a, b| a | b) != 0)
        else {
            return from;
        };
        let within = page.iter().rposition(|b| *b != 0).map_or(0, |position| position + 1);
        from + (page_index * PAGE + within) as u64
    }
}

/// Reads every record of the log in `directory` in order, calling `visit`
/// with each; returns where the log ends.
pub fn recover(
    directory: &Path,
    mode: RecoveryMode,
    visit: impl FnMut(&Record) -> Result<(), String>,
) -> Result<RecoveredLog, RecoveryError> {
    recover_with_lookahead(directory, mode, 1, |_| {}, visit)
}

/// How many records the `lookahead` callback sees at a time, a group ahead
/// of `visit` (4 and 16 measured against 8 in docs/benchmarks.md,
/// "Prefetching a group at a time").
pub const LOOKAHEAD_RECORDS: u64 = 8;

/// As `recover`, also showing `lookahead` the raw, unchecked bytes of the
/// records to come, `LOOKAHEAD_RECORDS` at a time and one such group ahead
/// of the one visited (`crate::visit_prefetched`), so the layer above can
/// prefetch what they will touch. The bytes may be anything (zeros,
/// a torn record): `lookahead` must only use them as hints.
///
/// Records numbered below `from_lsn` are not visited (a snapshot holds their
/// effects). Segments wholly below it are passed over unread, and a segment
/// that starts below it is entered at `from_lsn`'s record when that record is
/// where the numbering says; otherwise it is read from its start as usual.
pub fn recover_with_lookahead(
    directory: &Path,
    mode: RecoveryMode,
    from_lsn: u64,
    mut lookahead: impl FnMut(&RecordBytes),
    mut visit: impl FnMut(&Record) -> Result<(), String>,
) -> Result<RecoveredLog, RecoveryError> {
    let listed = list_segments(directory)?;
    let mut recovered = RecoveredLog { next_lsn: 1, next_segment_index: 1, ..RecoveredLog::default() };
    let mut position = 0;
    while position < listed.len() {
        let (index, path) = &listed[position];
        let corrupt = |offset: u64, reason: String| RecoveryError::Corrupt { path: path.clone(), offset, reason };
        // A segment wholly behind `from_lsn` is passed over from its header
        // alone (a 64-byte read), never mapped.
        if let Ok(header) = crate::log::retention::read_segment_header(path) {
            if let Some(next_first_lsn) = wholly_before(&listed[position + 1..], &header, from_lsn) {
                check_header(&header, *index, position == 0, recovered.next_lsn).map_err(|r| corrupt(0, r))?;
                let records = next_first_lsn - header.first_lsn;
                recovered.records_skipped += records;
                recovered.next_lsn = next_first_lsn;
                recovered.next_segment_index = index + 1;
                recovered.segments.push(SegmentSummary { path: path.clone(), header, records });
                position += 1;
                continue;
            }
        }
        // The log's pages are let go of once durable (src/log/storage.rs):
        // at a restart they come from the disk. Asking for the next segment
        // while this one replays keeps the disk busy while the engine is.
        read_ahead(path);
        if let Some((_, next_path)) = listed.get(position + 1) {
            read_ahead(next_path);
        }
        let segment = MappedSegment::open(path)?;
        let header = match segment.header() {
            Ok(header) => header,
            // A segment whose creation was cut short by a crash: only the last one can be.
            Err(reason) if position + 1 == listed.len() && !segment.has_good_record_from(0) => {
                // The file is removed, so its index is free for the next segment.
                recovered.next_segment_index = *index;
                finish_torn_header(&segment, mode, &mut recovered, reason)?;
                break;
            }
            Err(reason) => return Err(corrupt(0, reason)),
        };
        check_header(&header, *index, position == 0, recovered.next_lsn).map_err(|r| corrupt(0, r))?;
        recovered.next_lsn = header.first_lsn;
        recovered.next_segment_index = index + 1;
        let capacity = segment.record_count_capacity();
        let first_index = entry_index(&segment, &header, from_lsn);
        recovered.next_lsn += first_index;
        recovered.records_skipped += first_index;
        let mut records = first_index;
        let mut tail = None;
        for ahead in first_index..(first_index + LOOKAHEAD_RECORDS).min(capacity) {
            lookahead(segment.record_bytes(ahead));
        }
        for record_index in first_index..capacity {
            let offset = (SEGMENT_HEADER_BYTES + record_index as usize * RECORD_BYTES) as u64;
            // A group at a time, one group ahead (`crate::visit_prefetched`).
            if (record_index - first_index) % LOOKAHEAD_RECORDS == 0 {
                let from = record_index + LOOKAHEAD_RECORDS;
                for ahead in from..(from + LOOKAHEAD_RECORDS).min(capacity) {
                    lookahead(segment.record_bytes(ahead));
                }
            }
            match Record::decode(segment.record_bytes(record_index)) {
                Ok(record) if record.lsn == recovered.next_lsn && record.lsn < from_lsn => {
                    recovered.records_skipped += 1;
                    recovered.next_lsn += 1;
                    records += 1;
                }
                Ok(record) if record.lsn == recovered.next_lsn => {
                    recovered.records += 1;
                    visit(&record).map_err(|reason| RecoveryError::Rejected {
                        path: path.clone(),
                        offset,
                        lsn: record.lsn,
                        reason,
                    })?;
                    recovered.next_lsn += 1;
                    records += 1;
                }
                Ok(record) => {
                    let reason = format!("record {} where {} was expected", record.lsn, recovered.next_lsn);
                    return Err(corrupt(offset, reason));
                }
                // Zeros to the end of the file: this segment ended cleanly (the
                // writer moved to a new segment, or the log ends here).
                Err(RecordDefect::Unwritten) if segment.last_nonzero_byte_end(offset) == offset => break,
                Err(defect) => {
                    tail = Some((record_index, offset, defect));
                    break;
                }
            }
        }
        recovered.segments.push(SegmentSummary { path: path.clone(), header, records });
        // A crash never shortens a file (segments are created at their full
        // size): a shorter one was cut from outside yeyak, in any segment read
        // here (one wholly behind `from_lsn` was passed over above, from its
        // header alone: its records are in the snapshot).
        if let Some(found) = outside_cut(&segment, &header, capacity, records, tail.is_some()) {
            let is_last = position + 1 == listed.len();
            let OutsideCutFound { offset, defect, bytes_discarded, lossless } = found;
            if lossless {
                // In the zeros after the last record: nothing written was lost.
                if mode == RecoveryMode::TruncateTornTail {
                    recovered.repairs.push(Repair::RestoreSize { path: path.clone(), size: header.size_bytes });
                }
                if is_last {
                    recovered.torn_tail =
                        Some(TornTail { path: path.clone(), offset, defect, bytes_discarded, cut: None });
                    break;
                }
                tracing::warn!(path = %path.display(), "{defect}");
            } else {
                // The size to give back; a segment from before sizes were
                // recorded (0) gets room for its partial record, whole again.
                let size = if header.size_bytes != 0 { header.size_bytes } else { offset + RECORD_BYTES as u64 };
                let cut = OutsideCut { file_bytes: segment.bytes().len() as u64, created_bytes: Some(size) };
                let tail = TornTail { path: path.clone(), offset, defect, bytes_discarded, cut: Some(cut) };
                refuse_at_start(&tail, mode)?;
                recovered.torn_tail = Some(tail);
                break;
            }
        }
        if let Some((record_index, offset, defect)) = tail {
            let later = &listed[position + 1..];
            check_nothing_after(&segment, record_index, offset, defect, later)?;
            finish_tail(&segment, offset, defect, later, mode, &mut recovered)?;
            break;
        }
        position += 1;
    }
    Ok(recovered)
}

/// The first number of the next segment, if it shows this one holds only
/// records below `from_lsn`.
fn wholly_before(later: &[(u64, PathBuf)], header: &SegmentHeader, from_lsn: u64) -> Option<u64> {
    if header.first_lsn >= from_lsn {
        return None;
    }
    let (_, next_path) = later.first()?;
    let next = crate::log::retention::read_segment_header(next_path).ok()?;
    (header.first_lsn..=from_lsn).contains(&next.first_lsn).then_some(next.first_lsn)
}

/// Where to start reading a segment that begins below `from_lsn`: at
/// `from_lsn`'s record if it is where the numbering puts it, else at 0.
fn entry_index(segment: &MappedSegment, header: &SegmentHeader, from_lsn: u64) -> u64 {
    let index = from_lsn.saturating_sub(header.first_lsn);
    if index == 0 || index >= segment.record_count_capacity() {
        return 0;
    }
    match Record::decode(segment.record_bytes(index)) {
        Ok(record) if record.lsn == from_lsn => index,
        _ => 0,
    }
}

fn check_header(header: &SegmentHeader, index: u64, first: bool, expected_lsn: u64) -> Result<(), String> {
    if header.segment_index != index {
        return Err(format!("header says segment {} but the file name says {index}", header.segment_index));
    }
    if header.first_lsn == 0 || (!first && header.first_lsn != expected_lsn) {
        return Err(format!("segment starts at record {}, expected {expected_lsn}", header.first_lsn));
    }
    Ok(())
}

/// A bad record is a torn tail only if no good record follows it anywhere.
fn check_nothing_after(
    segment: &MappedSegment,
    record_index: u64,
    offset: u64,
    defect: RecordDefect,
    later: &[(u64, PathBuf)],
) -> Result<(), RecoveryError> {
    let corrupt = |reason: String| RecoveryError::Corrupt { path: segment.path.clone(), offset, reason };
    if segment.has_good_record_from(record_index + 1) {
        return Err(corrupt(format!("{defect}, and good records follow it in the same segment")));
    }
    for (_, path) in later {
        let later_segment = MappedSegment::open(path)?;
        if later_segment.has_good_record_from(0) {
            let reason = format!("{defect}, and good records follow it in {}", path.display());
            return Err(corrupt(reason));
        }
    }
    Ok(())
}

fn finish_tail(
    segment: &MappedSegment,
    offset: u64,
    defect: RecordDefect,
    later: &[(u64, PathBuf)],
    mode: RecoveryMode,
    recovered: &mut RecoveredLog,
) -> Result<(), RecoveryError> {
    let nonzero_end = segment.last_nonzero_byte_end(offset);
    if nonzero_end > offset {
        recovered.torn_tail = Some(TornTail {
            path: segment.path.clone(),
            offset,
            defect: defect.to_string(),
            bytes_discarded: nonzero_end - offset,
            cut: None,
        });
    }
    // The segments after the tail go first, newest first, then the tail is
    // zeroed: a repair cut short anywhere leaves a log the next start reads
    // the same way (a torn tail with empty segments after it), where zeros
    // first would leave a segment ending cleanly before one numbered past it.
    for (_, path) in later.iter().rev() {
        recovered.removed_segments.push(path.clone());
        if mode == RecoveryMode::TruncateTornTail {
            recovered.repairs.push(Repair::Remove { path: path.clone() });
        }
    }
    if nonzero_end > offset && mode == RecoveryMode::TruncateTornTail {
        recovered.repairs.push(Repair::Zero { path: segment.path.clone(), from: offset, to: nonzero_end });
    }
    Ok(())
}

/// A segment file shorter than it was created: where the report points,
/// what it says, and whether the cut took nothing written (it fell in the
/// zeros after the last record).
struct OutsideCutFound {
    offset: u64,
    defect: String,
    bytes_discarded: u64,
    lossless: bool,
}

/// Whether `segment` was cut short from outside yeyak, read after its
/// records: `records` of its `capacity` whole records were read, and
/// `bad_record` says whether reading stopped at one that was not valid.
fn outside_cut(
    segment: &MappedSegment,
    header: &SegmentHeader,
    capacity: u64,
    records: u64,
    bad_record: bool,
) -> Option<OutsideCutFound> {
    let whole_end = (SEGMENT_HEADER_BYTES + capacity as usize * RECORD_BYTES) as u64;
    let file_end = segment.bytes().len() as u64;
    let created = header.size_bytes;
    // Segments are preallocated in whole records: written bytes after the
    // last whole one mean the file was cut inside a record.
    if file_end > whole_end && segment.last_nonzero_byte_end(whole_end) > whole_end {
        let partial = file_end - whole_end;
        let defect = format!(
            "the file ends {partial} bytes into a record: it was cut short from outside yeyak, and records after \
             the cut, if any, are lost"
        );
        return Some(OutsideCutFound { offset: whole_end, defect, bytes_discarded: partial, lossless: false });
    }
    if created == 0 || file_end >= created {
        return None;
    }
    // Records up to the cut, or a bad record before it (whose successors the
    // cut may have taken): more may have followed. Zeros before the cut: the
    // records ended there, and it took nothing written.
    let lossless = !bad_record && records < capacity;
    let defect = if lossless {
        format!(
            "the file is {file_end} bytes, shorter than the {created} it was created with: it was cut short from \
             outside yeyak after its last record, and nothing written was lost"
        )
    } else {
        format!(
            "the file is {file_end} bytes, shorter than the {created} it was created with, and its records run up \
             to the cut"
        )
    };
    Some(OutsideCutFound { offset: file_end, defect, bytes_discarded: 0, lossless })
}

/// Start-up does not mend a log cut from outside yeyak that may have lost
/// acknowledged records: it refuses before changing anything.
fn refuse_at_start(tail: &TornTail, mode: RecoveryMode) -> Result<(), RecoveryError> {
    match tail.refusal() {
        Some(refusal) if mode == RecoveryMode::TruncateTornTail => Err(refusal),
        _ => Ok(()),
    }
}

fn finish_torn_header(
    segment: &MappedSegment,
    mode: RecoveryMode,
    recovered: &mut RecoveredLog,
    reason: String,
) -> Result<(), RecoveryError> {
    // A segment is named only once whole (src/log/storage.rs): only
    // something outside yeyak leaves one shorter than its header, empty
    // included. Whole-sized with a torn header and no valid record is what
    // a crash while creating it left before segments were made that way.
    let length = segment.bytes().len() as u64;
    let cut = (length < SEGMENT_HEADER_BYTES as u64).then_some(OutsideCut { file_bytes: length, created_bytes: None });
    let tail = TornTail {
        path: segment.path.clone(),
        offset: 0,
        defect: format!("segment header: {reason}"),
        bytes_discarded: segment.last_nonzero_byte_end(0),
        cut,
    };
    refuse_at_start(&tail, mode)?;
    recovered.torn_tail = Some(tail);
    recovered.removed_segments.push(segment.path.clone());
    if mode == RecoveryMode::TruncateTornTail {
        recovered.repairs.push(Repair::Remove { path: segment.path.clone() });
    }
    Ok(())
}

/// Gives a segment cut short from outside its created size back (zeros
/// after its records, as the writer leaves them), so that the cut is
/// reported once, at the start that mended it. 0: size not recorded.
fn restore_size(path: &Path, created: u64) -> Result<(), RecoveryError> {
    let file = OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
    let length = file.metadata().map_err(io_error(path))?.len();
    if created > length {
        file.set_len(created).map_err(io_error(path))?;
        file.sync_all().map_err(io_error(path))?;
    }
    Ok(())
}

fn zero_range(path: &Path, from: u64, to: u64) -> Result<(), RecoveryError> {
    let file = OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
    let zeros = vec![0u8; (to - from) as usize];
    file.write_all_at(&zeros, from).map_err(io_error(path))?;
    file.sync_data().map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_nonzero_byte_is_found_across_pages() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("segment");
        let length = 3 * 4096 + 100;
        for nonzero in [None, Some(0), Some(10), Some(4095), Some(4096), Some(8200), Some(length - 1)] {
            let mut bytes = vec![0u8; length];
            if let Some(at) = nonzero {
                bytes[at] = 0x80;
            }
            std::fs::write(&path, &bytes).unwrap();
            let segment = MappedSegment::open(&path).unwrap();
            for from in [0, 5, 11, 4096, 5000, length as u64] {
                let expected = match nonzero {
                    Some(at) if at as u64 >= from => at as u64 + 1,
                    _ => from,
                };
                assert_eq!(segment.last_nonzero_byte_end(from), expected, "non-zero at {nonzero:?}, from {from}");
            }
        }
    }
}
