//! Crash tests: the log's last records are cut at every byte offset, zeroed
//! from every offset (a torn write into a preallocated file) and bit-flipped
//! one bit at a time. Recovery must give exactly a prefix of the
//! acknowledged history, or refuse with an error naming the file and offset.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use yeyak::config::CampaignRules;
use yeyak::durable::{DurableEngine, OpenError};
use yeyak::inventory::Inventory;
use yeyak::log::format::{RECORD_BYTES, SEGMENT_HEADER_BYTES};
use yeyak::log::{recover, LogOptions, RecoveryError, RecoveryMode};
use yeyak::state::{Engine, Entry, LogicalState};

/// Records whose bytes are damaged, counted from the end of the log.
const DAMAGED_TAIL_RECORDS: u64 = 3;

struct History {
    directory: tempfile::TempDir,
    rules: CampaignRules,
    entries: Vec<Entry>,
    last_segment: PathBuf,
    /// Records in the last segment.
    last_segment_records: u64,
}

/// A log of ~150 records over two segments, every one acknowledged.
fn acknowledged_history() -> History {
    let directory = tempfile::tempdir().unwrap();
    let rules = write_small_campaign(directory.path());
    let now = open_evening_ms(&rules);
    let (engine, _) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
    for index in 0..130 {
        engine.reserve(&booking(index, (index * 13 % 10_000) as u32, 1), now).unwrap();
    }
    for index in 0..10 {
        engine.cancel(&cancelling(index, 2), now).unwrap();
        engine.change(&booking(20 + index, 10_000 + index as u32, 3), now).unwrap();
    }
    engine.close().unwrap();
    let mut entries = Vec::new();
    let log = recover(&directory.path().join("log"), RecoveryMode::ReadOnly, |record| {
        entries.push(Entry::decode(record.kind, &record.payload).unwrap());
        Ok(())
    })
    .unwrap();
    let last = log.segments.last().unwrap();
    assert!(log.segments.len() >= 2 && last.records > DAMAGED_TAIL_RECORDS);
    History { last_segment: last.path.clone(), last_segment_records: last.records, directory, rules, entries }
}

impl History {
    /// The state after the first `count` acknowledged records.
    fn prefix_state(&self, count: u64) -> LogicalState {
        let inventory = Inventory::load(&self.rules, Path::new(".")).unwrap();
        let engine = Engine::new(self.rules.clone(), inventory);
        for (index, entry) in self.entries.iter().take(count as usize).enumerate() {
            engine.replay(index as u64 + 1, entry).unwrap();
        }
        engine.logical_state()
    }

    fn total(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Byte offset of the first damaged record in the last segment.
    fn damaged_from(&self) -> u64 {
        (SEGMENT_HEADER_BYTES as u64) + (self.last_segment_records - DAMAGED_TAIL_RECORDS) * RECORD_BYTES as u64
    }

    fn damaged_to(&self) -> u64 {
        SEGMENT_HEADER_BYTES as u64 + self.last_segment_records * RECORD_BYTES as u64
    }

    /// Records wholly before `offset` of the last segment, over the whole log.
    fn records_before(&self, offset: u64) -> u64 {
        let whole = offset.saturating_sub(SEGMENT_HEADER_BYTES as u64) / RECORD_BYTES as u64;
        self.total() - self.last_segment_records + whole
    }

    /// Copies the data directory, lets `damage` change the copy's last segment, recovers.
    fn recover_damaged(
        &self,
        damage: impl FnOnce(&Path),
    ) -> (tempfile::TempDir, Result<(u64, LogicalState), OpenError>) {
        let copy = tempfile::tempdir().unwrap();
        copy_directory(self.directory.path(), copy.path());
        let segment = copy.path().join("log").join(self.last_segment.file_name().unwrap());
        damage(&segment);
        let result = DurableEngine::open(copy.path(), small_log_options(), false)
            .map(|(engine, report)| (report.records_replayed, engine.engine().logical_state()));
        (copy, result)
    }
}

fn copy_directory(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_directory(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn rewrite(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    change(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

fn assert_clear_corruption(error: &OpenError, segment_name: &str) {
    match error {
        OpenError::Recovery(RecoveryError::Corrupt { path, offset, .. }) => {
            assert!(path.ends_with(segment_name), "{path:?}");
            let message = error.to_string();
            assert!(message.contains(&format!("byte {offset}")), "{message}");
        }
        other => panic!("expected a corruption error naming the file, got {other}"),
    }
}

/// A copy of the history with its last segment cut to `cut` bytes, which
/// start-up must refuse, naming the file and the cut; then the cut accepted
/// as the refusal says (the file given its size back): what recovers then.
fn cut_refused_then_accepted(history: &History, cut: u64) -> (tempfile::TempDir, u64, LogicalState) {
    let mut created = 0;
    let (copy, refused) = history.recover_damaged(|segment| {
        let file = std::fs::OpenOptions::new().write(true).open(segment).unwrap();
        created = file.metadata().unwrap().len();
        file.set_len(cut).unwrap();
    });
    let segment = copy.path().join("log").join(history.last_segment.file_name().unwrap());
    match refused {
        Err(OpenError::Recovery(error @ RecoveryError::CutShort { .. })) => {
            let RecoveryError::CutShort { path, offset, .. } = &error else { unreachable!() };
            assert_eq!((path, *offset), (&segment, cut), "cut at {cut}");
            let message = error.to_string();
            let accept = format!("truncate -s {created} {}", segment.display());
            assert!(message.contains("cut short from outside yeyak") && message.contains(&accept), "{message}");
        }
        Err(other) => panic!("cut at {cut}: refused, but not as a cut: {other}"),
        Ok(_) => panic!("cut at {cut}: started on a log that may have lost acknowledged records"),
    }
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), cut, "the refusal changed nothing");
    std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(created).unwrap();
    let (engine, report) = DurableEngine::open(copy.path(), small_log_options(), false)
        .unwrap_or_else(|e| panic!("cut at {cut}, accepted: {e}"));
    let state = engine.engine().logical_state();
    drop(engine);
    (copy, report.records_replayed, state)
}

#[test]
fn a_cut_at_every_byte_is_refused_and_once_accepted_recovers_the_records_before_it() {
    let history = acknowledged_history();
    let expected: Vec<LogicalState> = (0..=history.total()).map(|n| history.prefix_state(n)).collect();
    let original = std::fs::read(&history.last_segment).unwrap();
    for cut in history.damaged_from()..=history.damaged_to() {
        let (_copy, replayed, state) = cut_refused_then_accepted(&history, cut);
        // A record whose bytes after the cut were zeros anyway is whole again
        // once the file has its size back (its checksum says so).
        let (header, record) = (SEGMENT_HEADER_BYTES as u64, RECORD_BYTES as u64);
        let record_start = header + (cut - header) / record * record;
        let record_end = (record_start + record) as usize;
        let whole_again = cut > record_start && original[cut as usize..record_end].iter().all(|b| *b == 0);
        assert_eq!(replayed, history.records_before(cut) + u64::from(whole_again), "cut at {cut}");
        assert!(state == expected[replayed as usize], "cut at {cut}: not the acknowledged prefix");
    }
}

#[test]
fn a_file_cut_inside_a_record_and_accepted_is_mended_as_a_torn_tail() {
    let history = acknowledged_history();
    let cut = history.damaged_from() + 20;
    let (copy, replayed, _) = cut_refused_then_accepted(&history, cut);
    assert_eq!(replayed, history.records_before(cut));
    // The partial record is gone: the next start finds a clean end.
    let (_, report) = DurableEngine::open(copy.path(), small_log_options(), false).unwrap();
    assert!(report.torn_tail.is_none(), "mended at the first start: {report:?}");
    assert_eq!(report.records_replayed, history.records_before(cut));
}

#[test]
fn a_cut_in_the_zeros_after_the_last_record_loses_nothing_and_is_mended() {
    let history = acknowledged_history();
    let cut = history.damaged_to() + 10 * RECORD_BYTES as u64;
    let (copy, result) = history.recover_damaged(|segment| {
        std::fs::OpenOptions::new().write(true).open(segment).unwrap().set_len(cut).unwrap();
    });
    let (replayed, state) = result.unwrap();
    assert_eq!(replayed, history.total());
    assert!(state == history.prefix_state(history.total()));
    let (_, report) = DurableEngine::open(copy.path(), small_log_options(), false).unwrap();
    assert!(report.torn_tail.is_none(), "its size given back at the first start: {report:?}");
}

#[test]
fn the_last_segment_cut_inside_its_header_is_refused_and_kept() {
    let history = acknowledged_history();
    for cut in [0, 1, 30, SEGMENT_HEADER_BYTES as u64 - 1] {
        let (copy, result) = history.recover_damaged(|segment| {
            std::fs::OpenOptions::new().write(true).open(segment).unwrap().set_len(cut).unwrap();
        });
        let segment = copy.path().join("log").join(history.last_segment.file_name().unwrap());
        let error = result.err().unwrap_or_else(|| panic!("cut at {cut}: started"));
        assert!(
            matches!(&error, OpenError::Recovery(RecoveryError::CutShort { path, offset, .. }) if path == &segment && *offset == cut),
            "cut at {cut}: {error}"
        );
        assert!(error.to_string().contains("move the file away"), "{error}");
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), cut, "kept as it was");
        // Accepted (the file moved away): the segments before it recover.
        std::fs::rename(&segment, copy.path().join("cut-segment")).unwrap();
        let (_, report) = DurableEngine::open(copy.path(), small_log_options(), false).unwrap();
        assert_eq!(report.records_replayed, history.total() - history.last_segment_records);
    }
}

#[test]
fn torn_write_from_every_byte_recovers_and_keeps_working() {
    let history = acknowledged_history();
    let expected: Vec<LogicalState> = (0..=history.total()).map(|n| history.prefix_state(n)).collect();
    for torn_from in history.damaged_from()..history.damaged_to() {
        let mut record_untouched = false;
        let (copy, result) = history.recover_damaged(|segment| {
            rewrite(segment, |bytes| {
                // Zeroing bytes that were zero already leaves that record whole.
                let record_end = history.records_before(torn_from) - (history.total() - history.last_segment_records);
                let record_end = SEGMENT_HEADER_BYTES + (record_end as usize + 1) * RECORD_BYTES;
                record_untouched = bytes[torn_from as usize..record_end].iter().all(|b| *b == 0);
                bytes[torn_from as usize..].iter_mut().for_each(|b| *b = 0);
            });
        });
        let (replayed, state) = result.unwrap_or_else(|e| panic!("torn from {torn_from}: {e}"));
        let whole_records = history.records_before(torn_from) + u64::from(record_untouched);
        assert_eq!(replayed, whole_records, "torn from {torn_from}");
        assert!(state == expected[replayed as usize], "torn from {torn_from}: not the acknowledged prefix");
        if torn_from % 16 == 0 {
            // After recovery the engine books on, and a second restart sees it all.
            let (engine, _) = DurableEngine::open(copy.path(), small_log_options(), false).unwrap();
            engine.reserve(&booking(9_999, 10_700, 1), open_evening_ms(&history.rules)).unwrap();
            drop(engine);
            let (engine, report) = DurableEngine::open(copy.path(), small_log_options(), false).unwrap();
            assert_eq!(report.records_replayed, replayed + 1);
            assert!(report.torn_tail.is_none());
            assert!(engine.reservation_of(person(9_999)).unwrap().is_some());
        }
    }
}

#[test]
fn every_bit_flip_is_a_prefix_or_a_clear_refusal() {
    let history = acknowledged_history();
    let name = history.last_segment.file_name().unwrap().to_str().unwrap().to_string();
    let last_record_starts = history.damaged_to() - RECORD_BYTES as u64;
    let header_bits = 0..SEGMENT_HEADER_BYTES as u64 * 8;
    let record_bits = history.damaged_from() * 8..history.damaged_to() * 8;
    let (mut refused, mut truncated) = (0, 0);
    for bit in header_bits.chain(record_bits) {
        let (_copy, result) = history.recover_damaged(|segment| {
            rewrite(segment, |bytes| bytes[(bit / 8) as usize] ^= 1 << (bit % 8));
        });
        match result {
            Ok((replayed, state)) => {
                // Only a flip in the very last record can look like a torn tail.
                assert!(bit / 8 >= last_record_starts, "bit {bit} was silently accepted");
                assert_eq!(replayed, history.total() - 1, "bit {bit}");
                assert!(state == history.prefix_state(replayed), "bit {bit}");
                truncated += 1;
            }
            Err(error) => {
                assert_clear_corruption(&error, &name);
                refused += 1;
            }
        }
    }
    assert_eq!(truncated, RECORD_BYTES * 8);
    assert!(refused > 0);
}

#[test]
fn a_cut_behind_a_bad_record_is_refused_as_a_cut_not_mended_as_a_torn_tail() {
    let history = acknowledged_history();
    // A flipped bit in the third record from the end, then the file cut right
    // after it: alone, it would read as a crash's torn tail, but the records
    // after it, acknowledged, went with the cut.
    let bad = history.damaged_from() as usize + 5;
    let cut = history.damaged_from() + RECORD_BYTES as u64;
    let (_copy, result) = history.recover_damaged(|segment| {
        rewrite(segment, |bytes| bytes[bad] ^= 0x10);
        std::fs::OpenOptions::new().write(true).open(segment).unwrap().set_len(cut).unwrap();
    });
    match result {
        Err(OpenError::Recovery(RecoveryError::CutShort { offset, .. })) => assert_eq!(offset, cut),
        Err(other) => panic!("refused, but not as a cut: {other}"),
        Ok((replayed, _)) => panic!("started with {replayed} records on a cut log"),
    }
}

/// A log of two segments, the first ending in zeros (the engine stopped and
/// started again with another segment size, so the second start could not
/// write on in the first segment): (directory, first segment, records in it, all records).
fn two_starts() -> (tempfile::TempDir, PathBuf, u64, u64) {
    let (directory, now, engine) = small_campaign_open(small_log_options());
    for index in 0..30 {
        engine.reserve(&booking(index, index as u32 * 7, 1), now).unwrap();
    }
    engine.close().unwrap();
    let larger =
        LogOptions { segment_size_bytes: small_log_options().segment_size_bytes + 4800, ..small_log_options() };
    let (engine, _) = DurableEngine::open(directory.path(), larger, false).unwrap();
    for index in 30..50 {
        engine.reserve(&booking(index, index as u32 * 7, 1), now).unwrap();
    }
    engine.close().unwrap();
    let first = directory.path().join("log").join("segment-0000000001.log");
    assert!(directory.path().join("log").join("segment-0000000002.log").exists());
    (directory, first, 30, 50)
}

#[test]
fn an_earlier_segment_cut_in_its_zeros_is_mended_and_one_cut_through_its_records_refused() {
    let (directory, first, first_records, all) = two_starts();
    let created = std::fs::metadata(&first).unwrap().len();
    let set_len = |length: u64| std::fs::OpenOptions::new().write(true).open(&first).unwrap().set_len(length).unwrap();
    // In the zeros after its 30 records: nothing lost, its size given back.
    set_len(SEGMENT_HEADER_BYTES as u64 + (first_records + 5) * RECORD_BYTES as u64);
    let (engine, report) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
    assert_eq!(report.records_replayed, all);
    drop(engine);
    assert_eq!(std::fs::metadata(&first).unwrap().len(), created, "mended");
    // Through its records: refused, naming the first segment, whatever follows it.
    let cut = SEGMENT_HEADER_BYTES as u64 + 20 * RECORD_BYTES as u64;
    set_len(cut);
    let error = DurableEngine::open(directory.path(), small_log_options(), false).err().expect("refused");
    assert!(
        matches!(&error, OpenError::Recovery(RecoveryError::CutShort { path, offset, .. }) if path == &first && *offset == cut),
        "{error}"
    );
    assert!(error.to_string().contains(&format!("truncate -s {created}")), "{error}");
    let checked = DurableEngine::check(directory.path()).expect_err("the check refuses alike");
    assert_eq!(checked.to_string(), error.to_string());
}

#[test]
fn a_segment_without_a_recorded_size_cut_inside_a_record_is_told_a_size_that_keeps_its_records() {
    use yeyak::log::format::SegmentHeader;
    let history = acknowledged_history();
    let cut = history.damaged_from() + 20;
    let (_copy, result) = history.recover_damaged(|segment| {
        // As segments were written before their size was recorded (0).
        rewrite(segment, |bytes| {
            let mut header = SegmentHeader::decode(bytes[..SEGMENT_HEADER_BYTES].try_into().unwrap()).unwrap();
            header.size_bytes = 0;
            bytes[..SEGMENT_HEADER_BYTES].copy_from_slice(&header.encode());
        });
        std::fs::OpenOptions::new().write(true).open(segment).unwrap().set_len(cut).unwrap();
    });
    let Err(error) = result else { panic!("started on a cut log") };
    let whole = history.damaged_from() + RECORD_BYTES as u64;
    assert!(error.to_string().contains(&format!("truncate -s {whole} ")), "{error}");
}

#[test]
fn after_a_torn_tail_a_start_writes_on_in_the_same_segment_and_recovers_exactly() {
    let history = acknowledged_history();
    let now = open_evening_ms(&history.rules);
    let last_record = history.damaged_to() - RECORD_BYTES as u64;
    // (what, bytes flipped: from, how many, with; records kept): a partial
    // record after the last (a group cut short; zeros there, so flipped is
    // written), the last record torn (its checksum fails, nothing after it),
    // and junk further on.
    let tears = [
        ("a partial record after the last", history.damaged_to() as usize, 20, 0xAB, history.total()),
        ("the last record torn", last_record as usize + 30, 1, 0x01, history.total() - 1),
        // Past where the new records end: left there, it would follow them.
        ("junk further on", history.damaged_to() as usize + 20 * RECORD_BYTES, RECORD_BYTES, 0x5A, history.total()),
    ];
    for write_mode in [yeyak::log::WriteMode::Pwrite, yeyak::log::WriteMode::Mmap] {
        let options = LogOptions { write_mode, ..small_log_options() };
        for &(tear, from, count, with, kept) in &tears {
            let damage = |bytes: &mut Vec<u8>| bytes[from..from + count].iter_mut().for_each(|byte| *byte ^= with);
            let (copy, _) = history.recover_damaged(|segment| rewrite(segment, damage));
            // `recover_damaged` started once (the tail cut) and stopped; now a
            // start that books, a stop, and a start that reads it all back.
            let (engine, report) = DurableEngine::open(copy.path(), options, false).unwrap();
            assert_eq!(report.records_replayed, kept, "{tear}, {write_mode:?}");
            let added = 15;
            for index in 1000..1000 + added {
                engine.reserve(&booking(index, 4_000 + index as u32, 1), now).unwrap();
            }
            engine.close().unwrap();
            let log = copy.path().join("log");
            let segments = yeyak::log::recovery::list_segments(&log).unwrap();
            let last = &segments.last().unwrap().1;
            assert_eq!(last.file_name(), history.last_segment.file_name(), "{tear}: no new segment");
            let (engine, report) = DurableEngine::open(copy.path(), options, false).unwrap();
            assert!(report.torn_tail.is_none(), "{tear}, {write_mode:?}: {report:?}");
            assert_eq!(report.records_replayed, kept + added, "{tear}, {write_mode:?}");
            let state = engine.engine().logical_state();
            let mut earlier = state.people.clone();
            for index in 1000..1000 + added {
                let held = earlier.remove(&person(index)).and_then(|record| record.holds);
                assert_eq!(held, Some(yeyak::inventory::SlotIndex(4_000 + index as u32)), "{tear}: person {index}");
            }
            assert!(earlier == history.prefix_state(kept).people, "{tear}, {write_mode:?}: the prefix kept as it was");
            // Nothing of the tear is left after the new records.
            let bytes = std::fs::read(last).unwrap();
            let records = history.last_segment_records - (history.total() - kept) + added;
            let end = SEGMENT_HEADER_BYTES + records as usize * RECORD_BYTES;
            assert!(bytes[end..].iter().all(|byte| *byte == 0), "{tear}, {write_mode:?}: bytes after the last record");
        }
    }
}

#[test]
fn a_repair_cut_short_by_a_crash_leaves_a_log_the_next_start_reads_the_same_way() {
    use yeyak::log::recovery::Repair;
    let history = acknowledged_history();
    let copy = tempfile::tempdir().unwrap();
    copy_directory(history.directory.path(), copy.path());
    let log = copy.path().join("log");
    let segments = yeyak::log::recovery::list_segments(&log).unwrap();
    let ((_, torn), (_, after)) = (&segments[segments.len() - 2], &segments[segments.len() - 1]);
    // A crash while the last group crossed into a new segment: the segment
    // before it torn at its last record, the new one created but empty.
    rewrite(after, |bytes| bytes[SEGMENT_HEADER_BYTES..].fill(0));
    let full = std::fs::read(torn).unwrap();
    let last_record =
        SEGMENT_HEADER_BYTES + (full.len() - SEGMENT_HEADER_BYTES) / RECORD_BYTES * RECORD_BYTES - RECORD_BYTES;
    rewrite(torn, |bytes| bytes[last_record + 30] ^= 0x01);
    let read = |mode| recover(&log, mode, |_| Ok(())).unwrap();
    let found = read(RecoveryMode::TruncateTornTail);
    let expected_records = found.records;
    // The segment after the tail goes first, then the tail is zeroed (to its last non-zero byte).
    assert_eq!(found.repairs.len(), 2, "{:?}", found.repairs);
    assert_eq!(found.repairs[0], Repair::Remove { path: after.clone() });
    assert!(
        matches!(&found.repairs[1], Repair::Zero { path, from, to } if path == torn && *from == last_record as u64 && *to > *from),
        "{:?}",
        found.repairs
    );
    // A crash after the first repair: the next start finds the same tail.
    std::fs::remove_file(after).unwrap();
    let again = read(RecoveryMode::TruncateTornTail);
    assert_eq!(again.records, expected_records);
    assert_eq!(again.torn_tail.as_ref().map(|tail| tail.offset), Some(last_record as u64));
    assert_eq!(again.repairs, found.repairs[1..]);
    // Made whole, the log reads cleanly, to the same record.
    again.repair().unwrap();
    let mended = read(RecoveryMode::ReadOnly);
    assert!(mended.torn_tail.is_none() && mended.repairs.is_empty());
    assert_eq!(mended.records, expected_records);
}

/// Recovery's lookahead (what the replay prefetches from) sees every record
/// it visits once, before the visit, a group of `LOOKAHEAD_RECORDS` at a
/// time and one group ahead within its segment, whether the reading starts
/// at a segment's head or at a snapshot's `from_lsn` inside one, and in a
/// segment whose record count is not a multiple of the group.
#[test]
fn recovery_looks_ahead_a_group_at_a_time_at_every_record_it_visits() {
    use yeyak::log::format::Record;
    use yeyak::log::recovery::{recover_with_lookahead, LOOKAHEAD_RECORDS};
    let history = acknowledged_history();
    let log = history.directory.path().join("log");
    let total = history.total();
    assert_ne!(history.last_segment_records % LOOKAHEAD_RECORDS, 0, "a partial last group");
    // Each segment's first and last record.
    let segments: Vec<(u64, u64)> = recover(&log, RecoveryMode::ReadOnly, |_| Ok(()))
        .unwrap()
        .segments
        .iter()
        .map(|segment| (segment.header.first_lsn, segment.header.first_lsn + segment.records - 1))
        .collect();
    assert!(segments.len() >= 2);
    let segment_of = |lsn: u64| *segments.iter().find(|(first, last)| (*first..=*last).contains(&lsn)).unwrap();
    for from_lsn in [1, 37, 101, total] {
        let looked_at = std::cell::RefCell::new(Vec::new());
        let mut visited = Vec::new();
        let recovered = recover_with_lookahead(
            &log,
            RecoveryMode::ReadOnly,
            from_lsn,
            // Unwritten records past the end are hints like any other; only numbers are kept.
            |bytes| looked_at.borrow_mut().extend(Record::decode(bytes).ok().map(|record| record.lsn)),
            |record| {
                let seen = looked_at.borrow();
                assert_eq!(
                    seen.iter().filter(|lsn| **lsn == record.lsn).count(),
                    1,
                    "record {} looked at once",
                    record.lsn
                );
                // Groups are counted from where the reading entered the segment:
                // while one is visited, the lookahead has reached the end of the next.
                let (first, last) = segment_of(record.lsn);
                let entered = first.max(from_lsn);
                let group_start = entered + (record.lsn - entered) / LOOKAHEAD_RECORDS * LOOKAHEAD_RECORDS;
                let wanted = (group_start + 2 * LOOKAHEAD_RECORDS - 1).min(last);
                let furthest = seen.iter().copied().filter(|lsn| *lsn <= last).max().unwrap_or(0);
                assert_eq!(furthest, wanted, "record {} visited", record.lsn);
                visited.push(record.lsn);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(visited, (from_lsn..=total).collect::<Vec<_>>(), "from {from_lsn}");
        assert_eq!(recovered.next_lsn, total + 1);
    }
}
