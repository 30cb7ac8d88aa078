//! Snapshots: recovery from the newest snapshot plus the log's tail gives the
//! same state as the log alone; snapshots taken while threads book are exact;
//! damaged snapshots are passed over or refused, never trusted; segments
//! behind the kept snapshots are removed and never needed again.

mod common;

use std::path::Path;

use common::*;
use yeyak::durable::{DurableEngine, DurableOptions, SNAPSHOT_DIRECTORY};
use yeyak::inventory::SlotIndex;
use yeyak::snapshot::{list_snapshots, CheckedSnapshot, SnapshotOptions};
use yeyak::state::{CapacityChange, LogicalState};

/// Snapshots only when asked, and no free-space reserve: these tests are about
/// content, not disk space (a CI disk may have less than the default reserve free).
fn options(keep: usize) -> DurableOptions {
    DurableOptions {
        log: small_log_options(),
        snapshots: SnapshotOptions {
            every_records: 0,
            keep,
            free_space_reserve_bytes: 0,
            ..SnapshotOptions::default()
        },
    }
}

/// Reserves, cancels, changes and adds capacity, from `first` to `first + count`.
fn book_some(engine: &DurableEngine, now: i64, first: u64, count: u64) {
    for index in first..first + count {
        let _ = engine.reserve(&booking(index, (index * 7 % 300) as u32, 1), now);
        if index % 5 == 0 {
            let _ = engine.cancel(&cancelling(index, 2), now);
        }
        if index % 7 == 1 {
            let _ = engine.change(&booking(index, 400 + (index % 50) as u32, 3), now);
        }
    }
    let slot = SlotIndex((first % 300) as u32);
    let capacity = engine.engine().slot_seats(slot).unwrap().1;
    engine.add_capacity(&CapacityChange { slot, seats: 2, expected_capacity: capacity, operator_id: 42 }).unwrap();
}

fn reopen(directory: &Path, options: DurableOptions) -> (DurableEngine, yeyak::durable::RecoveryReport) {
    DurableEngine::open(directory, options, false).unwrap()
}

/// A copy of a data directory, without its snapshots.
fn copy_without_snapshots(from: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(from.join("campaign.toml"), copy.path().join("campaign.toml")).unwrap();
    std::fs::create_dir(copy.path().join("log")).unwrap();
    for entry in std::fs::read_dir(from.join("log")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.path().join("log").join(entry.file_name())).unwrap();
    }
    copy
}

#[test]
fn snapshot_plus_tail_equals_the_log_alone() {
    let (directory, now, engine) = small_campaign_open(options(usize::MAX));
    book_some(&engine, now, 0, 300);
    let summary = engine.take_snapshot().unwrap().expect("records were logged");
    assert!(summary.header.people_count > 200, "{:?}", summary.header);
    assert_eq!(engine.take_snapshot().unwrap(), None, "nothing new to snapshot");
    book_some(&engine, now, 300, 100);
    let before = engine.engine().logical_state();
    engine.close().unwrap();

    let (engine, report) = reopen(directory.path(), options(usize::MAX));
    let (path, header) = report.snapshot.clone().expect("recovered from the snapshot");
    assert_eq!(path, summary.path);
    assert_eq!(report.records_replayed, report.next_lsn - header.start_lsn);
    assert_eq!(report.records_skipped, header.start_lsn - 1);
    assert_eq!(engine.engine().logical_state(), before);
    drop(engine);

    let log_only = copy_without_snapshots(directory.path());
    let (engine, report) = reopen(log_only.path(), options(usize::MAX));
    assert!(report.snapshot.is_none());
    assert_eq!(engine.engine().logical_state(), before);
}

#[test]
fn snapshots_taken_while_threads_book_are_exact() {
    let (directory, now, engine) = small_campaign_open(options(usize::MAX));
    let mut snapshots = 0;
    std::thread::scope(|scope| {
        for thread in 0..2u64 {
            let engine = &engine;
            // Few slots, many people: seats change hands all the time.
            scope.spawn(move || {
                for round in 0..3_000u64 {
                    let index = thread * 1_000_000 + round % 700;
                    let key = round + 1;
                    let slot = (round * 13 + thread) as u32 % 40;
                    let _ = match round % 3 {
                        0 => engine.reserve(&booking(index, slot, key), now),
                        1 => engine.change(&booking(index, slot, key), now),
                        _ => engine.cancel(&cancelling(index, key), now),
                    };
                }
            });
        }
        for _ in 0..20 {
            snapshots += usize::from(engine.take_snapshot().unwrap().is_some());
        }
    });
    assert!(snapshots >= 2, "{snapshots} snapshots while booking");
    let before = engine.engine().logical_state();
    engine.close().unwrap();
    let log_only = copy_without_snapshots(directory.path());
    // Every snapshot, newest first, must recover the same state with its log tail.
    let mut listed = list_snapshots(&directory.path().join(SNAPSHOT_DIRECTORY)).unwrap();
    while let Some((_, newest)) = listed.pop() {
        let (engine, report) = reopen(directory.path(), options(usize::MAX));
        assert_eq!(report.snapshot.as_ref().map(|(path, _)| path), Some(&newest));
        assert_eq!(engine.engine().logical_state(), before, "from {}", newest.display());
        drop(engine);
        std::fs::remove_file(&newest).unwrap();
    }
    let (engine, _) = reopen(log_only.path(), options(usize::MAX));
    assert_eq!(engine.engine().logical_state(), before);
}

#[test]
fn old_snapshots_and_segments_behind_them_are_removed() {
    let (directory, now, engine) = small_campaign_open(options(2));
    for round in 0..5 {
        book_some(&engine, now, round * 200, 200);
        engine.take_snapshot().unwrap().expect("records were logged");
    }
    let before = engine.engine().logical_state();
    engine.close().unwrap();
    let snapshots = list_snapshots(&directory.path().join(SNAPSHOT_DIRECTORY)).unwrap();
    assert_eq!(snapshots.len(), 2);
    let first_segment = yeyak::log::recovery::list_segments(&directory.path().join("log")).unwrap()[0].0;
    assert!(first_segment > 1, "segments behind the older snapshot are gone");
    let (engine, report) = reopen(directory.path(), options(2));
    assert_eq!(engine.engine().logical_state(), before);
    assert!(report.records_skipped < 100 * 2, "the segments left start near the snapshot: {report:?}");
}

#[test]
fn a_damaged_newest_snapshot_is_passed_over_for_the_older_one() {
    let (directory, now, engine) = small_campaign_open(options(2));
    book_some(&engine, now, 0, 200);
    let older = engine.take_snapshot().unwrap().unwrap();
    book_some(&engine, now, 200, 200);
    let newer = engine.take_snapshot().unwrap().unwrap();
    book_some(&engine, now, 400, 10);
    let before = engine.engine().logical_state();
    engine.close().unwrap();

    let mut bytes = std::fs::read(&newer.path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&newer.path, &bytes).unwrap();
    // A check (yeyak log verify) finds what start-up will, and changes nothing.
    let files = listing(directory.path());
    let checked = DurableEngine::check(directory.path()).unwrap();
    assert_eq!(listing(directory.path()), files, "the check renamed nothing");
    let (engine, report) = reopen(directory.path(), options(2));
    assert_eq!(checked.snapshot, report.snapshot);
    assert_eq!(checked.snapshots_passed_over, report.snapshots_passed_over);
    assert_eq!((checked.records_replayed, checked.next_lsn), (report.records_replayed, report.next_lsn));
    assert_eq!(report.snapshot.as_ref().map(|(path, _)| path), Some(&older.path));
    assert!(report.snapshots_passed_over[0].contains("not valid"), "{:?}", report.snapshots_passed_over);
    assert_eq!(engine.engine().logical_state(), before);
    // The damaged one is set aside, so it no longer counts among the two kept.
    let set_aside = format!("{}.invalid", newer.path.display());
    assert!(std::path::Path::new(&set_aside).exists());
    book_some(&engine, now, 500, 20);
    let newest = engine.take_snapshot().unwrap().unwrap();
    let kept: Vec<_> =
        list_snapshots(&directory.path().join(SNAPSHOT_DIRECTORY)).unwrap().into_iter().map(|(_, p)| p).collect();
    assert_eq!(kept, [older.path.clone(), newest.path.clone()], "two good snapshots kept");
}

#[test]
fn without_a_valid_snapshot_a_log_that_starts_late_is_refused() {
    let (directory, now, engine) = small_campaign_open(options(1));
    for round in 0..3 {
        book_some(&engine, now, round * 200, 200);
        engine.take_snapshot().unwrap().unwrap();
    }
    engine.close().unwrap();
    for (_, path) in list_snapshots(&directory.path().join(SNAPSHOT_DIRECTORY)).unwrap() {
        std::fs::write(&path, b"not a snapshot").unwrap();
    }
    let error = DurableEngine::open(directory.path(), options(1), false).err().expect("refused");
    let message = error.to_string();
    assert!(message.contains("the log begins at record") && message.contains("not valid"), "{message}");
}

#[test]
fn every_bit_flip_and_every_cut_of_a_snapshot_is_caught() {
    let directory = tempfile::tempdir().unwrap();
    let rules = write_small_campaign(directory.path());
    let now = open_evening_ms(&rules);
    let (engine, _) = reopen(directory.path(), options(usize::MAX));
    book_some(&engine, now, 0, 40);
    let summary = engine.take_snapshot().unwrap().unwrap();
    let inventory = yeyak::inventory::Inventory::load(&rules, directory.path()).unwrap();
    engine.close().unwrap();
    let good = std::fs::read(&summary.path).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join(summary.path.file_name().unwrap());
    let check = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        CheckedSnapshot::open(&path, &rules, &inventory)
    };
    assert!(check(&good).is_ok());
    for bit in 0..good.len() * 8 {
        let mut bad = good.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(check(&bad).is_err(), "flipping bit {bit} went unnoticed");
    }
    for length in 0..good.len() {
        assert!(check(&good[..length]).is_err(), "cut at {length} went unnoticed");
    }
}

#[test]
fn background_snapshots_and_a_leftover_temporary_file() {
    let directory = tempfile::tempdir().unwrap();
    let rules = write_small_campaign(directory.path());
    let now = open_evening_ms(&rules);
    let background = DurableOptions {
        log: small_log_options(),
        snapshots: SnapshotOptions {
            every_records: 100,
            keep: 2,
            free_space_reserve_bytes: 0,
            ..SnapshotOptions::default()
        },
    };
    let (engine, _) = reopen(directory.path(), background);
    book_some(&engine, now, 0, 400);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.snapshot_state().taken == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(engine.snapshot_state().taken > 0, "{:?}", engine.snapshot_state());
    let before: LogicalState = engine.engine().logical_state();
    engine.close().unwrap();
    let leftover = directory.path().join(SNAPSHOT_DIRECTORY).join("snapshot-00000000000000099999.ysnap.tmp");
    std::fs::write(&leftover, b"cut short by a crash").unwrap();
    // Not a snapshot's temporary file: left alone.
    let notes = directory.path().join(SNAPSHOT_DIRECTORY).join("notes.tmp");
    std::fs::write(&notes, b"an operator's").unwrap();
    // And a log segment's second name, left by a crash just after the segment was named.
    let log_directory = directory.path().join(yeyak::durable::LOG_DIRECTORY);
    let (_, first_segment) = yeyak::log::recovery::list_segments(&log_directory).unwrap().remove(0);
    let second_name = first_segment.with_extension("log.tmp");
    std::fs::hard_link(&first_segment, &second_name).unwrap();
    let (engine, report) = reopen(directory.path(), background);
    assert!(report.snapshot.is_some());
    assert!(!leftover.exists(), "the leftover temporary file is removed at start");
    assert!(notes.exists(), "only snapshots' temporary files are removed");
    assert!(!second_name.exists(), "the segment's leftover second name is removed at start");
    assert_eq!(engine.engine().logical_state(), before);
}

#[test]
fn a_snapshot_of_another_inventory_is_not_used() {
    let (directory, now, engine) = small_campaign_open(options(usize::MAX));
    book_some(&engine, now, 0, 50);
    engine.take_snapshot().unwrap().unwrap();
    engine.close().unwrap();
    // The same sites with other capacities: the snapshot no longer fits them.
    let changed = small_campaign_toml().replace("capacity_per_slot_mean = 2", "capacity_per_slot_mean = 3");
    std::fs::write(directory.path().join("campaign.toml"), changed).unwrap();
    let (_, report) = reopen(directory.path(), options(usize::MAX));
    assert!(report.snapshot.is_none());
    assert!(report.snapshots_passed_over[0].contains("other capacities"), "{:?}", report.snapshots_passed_over);
    // The file is whole: it stays, for campaign.toml may be put back.
    assert_eq!(list_snapshots(&directory.path().join(SNAPSHOT_DIRECTORY)).unwrap().len(), 1);
}

#[test]
fn sites_added_at_the_end_keep_a_snapshot_usable_after_its_segments_were_retired() {
    let (directory, now, before, _) = snapshotted_with_segments_retired();
    // Two sites more, after the twenty: every slot number keeps its meaning.
    let campaign = directory.path().join("campaign.toml");
    std::fs::write(&campaign, small_campaign_toml().replace("sites = 20", "sites = 22")).unwrap();
    let (engine, report) = reopen(directory.path(), options(1));
    assert!(report.snapshot.is_some(), "the snapshot of the first twenty sites is used: {report:?}");
    let after = engine.engine().logical_state();
    assert_eq!(after.people, before.people);
    let old_slots = before.remaining.len();
    assert_eq!(after.remaining[..old_slots], before.remaining[..]);
    assert_eq!(after.capacity[..old_slots], before.capacity[..]);
    assert_eq!(after.capacity.len(), old_slots / 20 * 22);
    // The new sites' slots are whole and bookable.
    assert_eq!(after.remaining[old_slots..], after.capacity[old_slots..]);
    let new_slot = (old_slots..after.capacity.len()).find(|slot| after.capacity[*slot] > 0).unwrap() as u32;
    assert_eq!(engine.reserve(&booking(1_000_000, new_slot, 1), now), Ok(SlotIndex(new_slot)));
    // A restart without a new snapshot replays that booking on top of the
    // snapshot of the twenty sites.
    let booked_in_a_new_site = engine.engine().logical_state();
    engine.close().unwrap();
    let (engine, report) = reopen(directory.path(), options(1));
    assert!(report.snapshot.is_some());
    assert_eq!(engine.engine().logical_state(), booked_in_a_new_site);
    // Its next snapshot is of the larger inventory, and a restart uses it.
    engine.take_snapshot().unwrap().unwrap();
    let grown = engine.engine().logical_state();
    engine.close().unwrap();
    let (engine, report) = reopen(directory.path(), options(1));
    assert!(report.snapshot.is_some());
    assert_eq!(engine.engine().logical_state(), grown);
    engine.close().unwrap();
    // Taking the sites away again is refused: the log now names their slots.
    std::fs::write(&campaign, small_campaign_toml()).unwrap();
    let error = DurableEngine::open(directory.path(), options(1), false).err().expect("refused");
    assert!(matches!(error, yeyak::durable::OpenError::CampaignChanged { .. }), "{error}");
}

/// A closed small campaign whose bookings are in a snapshot and a log tail,
/// the segments before the snapshot retired; with its state and its files.
fn snapshotted_with_segments_retired() -> (tempfile::TempDir, i64, LogicalState, Vec<String>) {
    let (directory, now, engine) = small_campaign_open(options(1));
    book_some(&engine, now, 0, 300);
    engine.take_snapshot().unwrap().unwrap();
    book_some(&engine, now, 300, 20);
    let before = engine.engine().logical_state();
    engine.close().unwrap();
    let files = listing(directory.path());
    assert!(!files.iter().any(|name| name.ends_with("segment-0000000001.log")), "segments retired: {files:?}");
    (directory, now, before, files)
}

/// The names of the files of the log and snapshots directories.
fn listing(directory: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for sub in ["log", SNAPSHOT_DIRECTORY] {
        for entry in std::fs::read_dir(directory.join(sub)).unwrap() {
            names.push(format!("{sub}/{}", entry.unwrap().file_name().to_string_lossy()));
        }
    }
    names.sort();
    names
}

#[test]
fn a_changed_campaign_toml_is_refused_and_the_data_directory_left_as_it_was() {
    use yeyak::durable::OpenError;
    let (directory, _, before, files) = snapshotted_with_segments_retired();
    let campaign = directory.path().join("campaign.toml");
    let original = std::fs::read_to_string(&campaign).unwrap();
    let changes = [
        (original.replacen("id = 1", "id = 2", 1), "of campaign 1, and campaign.toml says campaign 2"),
        (original.replace("sites = 20", "sites = 19"), "20 sites, where campaign.toml has 19"),
        (original.replace("capacity_per_slot_mean = 2", "capacity_per_slot_mean = 3"), "other capacities"),
        (original.replace("people_max = 100_000", "people_max = 10"), "more than limits.people_max = 10"),
    ];
    for (changed, expected) in changes {
        assert_ne!(changed, original);
        std::fs::write(&campaign, changed).unwrap();
        let error = DurableEngine::open(directory.path(), options(1), false).err().expect("refused");
        let text = error.to_string();
        assert!(matches!(error, OpenError::CampaignChanged { .. }), "{text}");
        assert!(text.contains(expected) && text.contains("Put it back as it was"), "{text}");
        let checked = DurableEngine::check(directory.path()).expect_err("the check refuses too");
        assert!(matches!(checked, OpenError::CampaignChanged { .. }), "{checked}");
        assert_eq!(listing(directory.path()), files, "nothing renamed or removed");
    }
    std::fs::write(&campaign, &original).unwrap();
    let (engine, report) = reopen(directory.path(), options(1));
    assert!(report.snapshot.is_some(), "the snapshot is used again");
    assert_eq!(engine.engine().logical_state(), before);
    engine.close().unwrap();
    // Without its campaign.toml, even where the demo campaign may be created.
    std::fs::remove_file(&campaign).unwrap();
    let error = DurableEngine::open(directory.path(), options(1), true).err().expect("refused");
    assert!(matches!(error, OpenError::CampaignMissing { .. }), "{error}");
    assert!(!campaign.exists(), "no demo campaign written over a campaign's data");
}

/// A small campaign's engine twice: shared, and a sole writer.
fn shared_and_sole_engines() -> [yeyak::state::Engine; 2] {
    let directory = tempfile::tempdir().unwrap();
    let rules = write_small_campaign(directory.path());
    let build = || {
        let inventory = yeyak::inventory::Inventory::load(&rules, directory.path()).unwrap();
        yeyak::state::Engine::new(rules.clone(), inventory)
    };
    [build(), build().into_sole_writer()]
}

/// The window case the design note in src/state/restore.rs describes: a seat
/// changes hands inside the window, the snapshot saw both people after it.
#[test]
fn a_window_where_a_seat_changes_hands_replays_exactly() {
    use yeyak::state::{CommandKind, Entry, LastCommand, PersonRecord};
    // On a shared engine, and on a sole writer (as recovery replays a window).
    for engine in shared_and_sole_engines() {
        let slot = (0..300).map(SlotIndex).find(|s| engine.slot_seats(*s).unwrap().1 == 1).expect("a one-seat slot");
        let (alice, bob, carol) = (person(1), person(2), person(3));
        let record = |kind, key| PersonRecord {
            holds: (kind != CommandKind::Cancel).then_some(slot),
            last: Some(LastCommand { kind, idempotency_key: key, slot }),
        };
        // Log: 1 Alice reserves, 2 Alice cancels, 3 Bob reserves. The snapshot
        // started before record 1 and saw Alice after 2 and Bob after 3.
        assert_eq!(engine.restore_person(alice, record(CommandKind::Cancel, 2)).unwrap(), None);
        assert_eq!(engine.restore_person(bob, record(CommandKind::Reserve, 3)).unwrap(), None);
        let entry = |person, key, cancel| {
            if cancel {
                Entry::Cancelled { person, slot, idempotency_key: key, operator_id: 0 }
            } else {
                Entry::Reserved { person, slot, idempotency_key: key, operator_id: 0 }
            }
        };
        let mut touched = Vec::new();
        engine.replay_in_window(1, &entry(alice, 1, false), &mut touched).unwrap();
        assert!(engine.check_window(&touched).is_err(), "mid-window the seat is counted twice");
        engine.replay_in_window(2, &entry(alice, 2, true), &mut touched).unwrap();
        engine.replay_in_window(3, &entry(bob, 3, false), &mut touched).unwrap();
        engine.check_window(&touched).unwrap();
        assert_eq!(engine.slot_seats(slot), Some((0, 1)));
        let state = engine.logical_state();
        assert_eq!(state.people[&alice], record(CommandKind::Cancel, 2));
        assert_eq!(state.people[&bob], record(CommandKind::Reserve, 3));
        // A window that ends with two holders of the one seat is refused.
        engine.replay_in_window(4, &entry(carol, 1, false), &mut touched).unwrap();
        assert!(engine.check_window(&touched).unwrap_err().contains("more holders"));
    }
}

/// The other order (found in review): the scan saw Alice *before* she gave her
/// seat up and Bob after he took it, so the snapshot holds two people in a
/// one-seat slot. Restore must accept it, and the window must mend it.
#[test]
fn a_snapshot_with_more_holders_than_seats_is_mended_by_its_window() {
    use yeyak::state::{CommandKind, Entry, LastCommand, PersonRecord};
    // On a shared engine, and on a sole writer (as recovery replays a window).
    for engine in shared_and_sole_engines() {
        let slot = (0..300).map(SlotIndex).find(|s| engine.slot_seats(*s).unwrap().1 == 1).expect("a one-seat slot");
        let (alice, bob) = (person(1), person(2));
        let record = |kind, key| PersonRecord {
            holds: (kind != CommandKind::Cancel).then_some(slot),
            last: Some(LastCommand { kind, idempotency_key: key, slot }),
        };
        // Log: 1 Alice reserves (before the snapshot), 2 Alice cancels, 3 Bob reserves (the window).
        assert_eq!(engine.restore_person(alice, record(CommandKind::Reserve, 1)).unwrap(), None);
        let wrapped = engine.restore_person(bob, record(CommandKind::Reserve, 3)).unwrap();
        assert_eq!(wrapped, Some(slot.0), "the second holder of one seat wraps the count");
        let mut touched: Vec<u32> = wrapped.into_iter().collect();
        assert!(engine.check_window(&touched).is_err());
        let cancel = Entry::Cancelled { person: alice, slot, idempotency_key: 2, operator_id: 0 };
        let reserve = Entry::Reserved { person: bob, slot, idempotency_key: 3, operator_id: 0 };
        engine.replay_in_window(2, &cancel, &mut touched).unwrap();
        engine.replay_in_window(3, &reserve, &mut touched).unwrap();
        engine.check_window(&touched).unwrap();
        assert_eq!(engine.slot_seats(slot), Some((0, 1)));
        assert_eq!(engine.logical_state().people[&alice], record(CommandKind::Cancel, 2));
    }
}

#[test]
fn a_snapshot_that_would_eat_the_log_s_room_is_not_taken() {
    let directory = tempfile::tempdir().unwrap();
    let rules = write_small_campaign(directory.path());
    let now = open_evening_ms(&rules);
    // A reserve larger than any disk: every snapshot would eat into it.
    let greedy = DurableOptions {
        log: small_log_options(),
        snapshots: SnapshotOptions {
            every_records: 0,
            free_space_reserve_bytes: u64::MAX / 2,
            ..SnapshotOptions::default()
        },
    };
    let (engine, _) = reopen(directory.path(), greedy);
    book_some(&engine, now, 0, 50);
    let error = engine.take_snapshot().unwrap_err();
    assert!(error.to_string().contains("no room for a snapshot"), "{error}");
    assert!(list_snapshots(&directory.path().join(SNAPSHOT_DIRECTORY)).unwrap().is_empty());
    assert!(engine.reserve(&booking(999, 7, 1), now).is_ok(), "bookings go on");
}

/// Leaves the log directory holding one segment file whose creation a crash
/// cut short (a torn header), numbered after every segment it held; the
/// others are removed, as segments behind snapshots are. Returns that number.
fn leave_only_a_cut_short_segment(directory: &Path) -> u64 {
    let log = directory.join("log");
    let segments = yeyak::log::recovery::list_segments(&log).unwrap();
    let next = segments.last().expect("the log had segments").0 + 1;
    for (_, path) in segments {
        std::fs::remove_file(path).unwrap();
    }
    // As a crash leaves a segment it was creating: whole-sized (preallocated),
    // its header torn. (A file shorter than its header was cut from outside,
    // which start-up refuses: tests/crash.rs.)
    let mut torn = vec![0u8; 64 * 1024];
    torn[..30].fill(0x59);
    std::fs::write(log.join(yeyak::log::format::segment_file_name(next)), torn).unwrap();
    next
}

#[test]
fn a_snapshot_with_no_segment_left_to_number_after_it_is_refused() {
    let (directory, now, engine) = small_campaign_open(options(1));
    book_some(&engine, now, 0, 300);
    let summary = engine.take_snapshot().unwrap().unwrap();
    engine.close().unwrap();
    let torn = leave_only_a_cut_short_segment(directory.path());
    // Whether records after the snapshot were lost with the segments cannot
    // be told, and new ones would be numbered over the snapshot's: refused.
    let error = DurableEngine::open(directory.path(), options(1), false).err().expect("refused");
    let torn = directory.path().join("log").join(yeyak::log::format::segment_file_name(torn));
    assert!(torn.exists(), "a refused start removes nothing");
    match &error {
        yeyak::durable::OpenError::SnapshotAheadOfLog { path, end_lsn, log_next_lsn } => {
            assert_eq!((path, *end_lsn, *log_next_lsn), (&summary.path, summary.header.end_lsn, 1));
        }
        other => panic!("expected SnapshotAheadOfLog, got {other}"),
    }
}

#[test]
fn without_a_usable_snapshot_a_log_whose_segments_were_all_retired_is_refused() {
    let (directory, now, engine) = small_campaign_open(options(1));
    book_some(&engine, now, 0, 300);
    engine.take_snapshot().unwrap().unwrap();
    engine.close().unwrap();
    let cut_short = leave_only_a_cut_short_segment(directory.path());
    for (_, path) in list_snapshots(&directory.path().join(SNAPSHOT_DIRECTORY)).unwrap() {
        std::fs::write(&path, b"not a snapshot").unwrap();
    }
    let error = DurableEngine::open(directory.path(), options(1), false).err().expect("refused, not an empty engine");
    match &error {
        yeyak::durable::OpenError::LogRetiredWithoutSnapshot { next_segment_index, passed_over } => {
            // The cut-short segment is removed and its number used again.
            assert_eq!(*next_segment_index, cut_short);
            assert_eq!(passed_over.len(), 1, "{passed_over:?}");
        }
        other => panic!("expected LogRetiredWithoutSnapshot, got {other}"),
    }
    assert!(error.to_string().contains("restore the snapshots directory"), "{error}");
}

#[test]
fn an_engine_restarted_again_and_again_writes_on_in_its_last_segment() {
    // Each start logs one reservation, as in a crash loop: it goes on in the
    // segment the log ended in (a start used to open a new one each time,
    // preallocated, and a loop faster than a snapshot filled the disk).
    let (directory, now, engine) = small_campaign_open(options(usize::MAX));
    drop(engine);
    let log_directory = directory.path().join("log");
    for round in 0..12u64 {
        let (engine, _) = reopen(directory.path(), options(usize::MAX));
        assert_eq!(engine.reserve(&booking(round, round as u32, 1), now), Ok(SlotIndex(round as u32)));
        drop(engine);
    }
    let segments = yeyak::log::recovery::list_segments(&log_directory).unwrap();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let (engine, report) = reopen(directory.path(), options(usize::MAX));
    assert_eq!(report.records_replayed, 12);
    for round in 0..12u64 {
        let held = engine.engine().logical_state().people[&person(round)].holds;
        assert_eq!(held, Some(SlotIndex(round as u32)), "person {round}");
    }
}

#[test]
fn segments_filled_between_restarts_are_bounded_by_the_bytes_before_a_snapshot() {
    // Background snapshots on, but never by record count: each start fills
    // a segment (100 records), so the next start begins a new one; a snapshot is due
    // once four segments are on disk, and retires those behind it.
    const SEGMENTS_BEFORE_SNAPSHOT: usize = 4;
    const RECORDS_A_SEGMENT: u64 = 100;
    let log = small_log_options();
    assert_eq!(log.segment_size_bytes, 64 + 48 * RECORDS_A_SEGMENT);
    let options = || DurableOptions {
        log,
        snapshots: SnapshotOptions {
            every_records: 1 << 40,
            keep: 2,
            free_space_reserve_bytes: 0,
            log_bytes_before_snapshot: SEGMENTS_BEFORE_SNAPSHOT as u64 * log.segment_size_bytes,
            ..SnapshotOptions::default()
        },
    };
    let (directory, now, engine) = small_campaign_open(options());
    drop(engine);
    let log_directory = directory.path().join("log");
    let segments = || yeyak::log::recovery::list_segments(&log_directory).unwrap().len();
    let mut most = 0;
    for round in 0..12u64 {
        let (engine, _) = reopen(directory.path(), options());
        for index in round * RECORDS_A_SEGMENT..(round + 1) * RECORDS_A_SEGMENT {
            assert_eq!(engine.reserve(&booking(index, index as u32, 1), now), Ok(SlotIndex(index as u32)));
        }
        if segments() >= SEGMENTS_BEFORE_SNAPSHOT {
            // The snapshot thread looks every 100 ms.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while engine.snapshot_state().attempted_lsn < engine.log().durable_lsn() {
                assert!(std::time::Instant::now() < deadline, "no snapshot with {} segments", segments());
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            assert!(engine.snapshot_state().last_error.is_none(), "{:?}", engine.snapshot_state().last_error);
        }
        most = most.max(segments());
        drop(engine);
    }
    // Without the trigger: 12 segments.
    assert!(most <= SEGMENTS_BEFORE_SNAPSHOT + 1, "{most} segments at most");
    let (engine, _) = reopen(directory.path(), options());
    let state = engine.engine().logical_state();
    for index in 0..12 * RECORDS_A_SEGMENT {
        assert_eq!(state.people[&person(index)].holds, Some(SlotIndex(index as u32)), "person {index}");
    }
}

/// Every file under `directory` but the lock, by path, with its bytes.
fn files_under(directory: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut pending = vec![directory.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|name| name != "lock") {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[test]
fn a_refused_start_leaves_the_data_directory_as_it_was() {
    let (directory, now, engine) = small_campaign_open(options(2));
    book_some(&engine, now, 0, 60);
    let older = engine.take_snapshot().unwrap().unwrap();
    book_some(&engine, now, 60, 1);
    let newer = engine.take_snapshot().unwrap().unwrap();
    engine.close().unwrap();
    assert!(newer.header.start_lsn > older.header.start_lsn);
    // The newer snapshot damaged: passed over (to be set aside) for the older.
    let mut bytes = std::fs::read(&newer.path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&newer.path, bytes).unwrap();
    // The log's records from the older snapshot's last on damaged: alone at
    // the end of the log they read as a crash's torn tail, which a start
    // that serves zeroes, but the older snapshot holds their effects.
    let log = directory.path().join("log");
    let (_, last_segment) = yeyak::log::recovery::list_segments(&log).unwrap().pop().unwrap();
    let mut bytes = std::fs::read(&last_segment).unwrap();
    let records = bytes[64..].chunks(48).take_while(|record| record.iter().any(|b| *b != 0)).count();
    let damaged = (older.header.end_lsn - 1) as usize;
    let last_lsn = engine_last_lsn(&log) as usize;
    assert!(last_lsn - damaged < records, "the damaged records are all in the last segment");
    for lsn in damaged..=last_lsn {
        let index = records - 1 - (last_lsn - lsn);
        bytes[64 + index * 48 + 30] ^= 0x01;
    }
    std::fs::write(&last_segment, bytes).unwrap();
    // And the leftovers a start removes.
    std::fs::write(log.join("segment-0000000099.log.tmp"), b"left by a crash").unwrap();
    std::fs::write(directory.path().join(SNAPSHOT_DIRECTORY).join("snapshot-00000000000000099999.ysnap.tmp"), b"cut")
        .unwrap();
    let before = files_under(directory.path());
    let error = DurableEngine::open(directory.path(), options(2), false).err().expect("refused");
    match &error {
        yeyak::durable::OpenError::SnapshotAheadOfLog { path, end_lsn, log_next_lsn } => {
            assert_eq!((path, *end_lsn, *log_next_lsn), (&older.path, older.header.end_lsn, damaged as u64));
        }
        other => panic!("expected SnapshotAheadOfLog, got {other}"),
    }
    assert!(files_under(directory.path()) == before, "a refused start changed the data directory");
    // `yeyak log verify`'s check says the same and changes nothing either.
    assert!(DurableEngine::check(directory.path()).is_err());
    assert!(files_under(directory.path()) == before);
}

/// The number of the last record in the log directory `log`.
fn engine_last_lsn(log: &Path) -> u64 {
    let recovered = yeyak::log::recover(log, yeyak::log::RecoveryMode::ReadOnly, |_| Ok(())).unwrap();
    recovered.next_lsn - 1
}

#[test]
fn a_snapshot_on_close_that_fails_is_said_and_the_close_still_succeeds() {
    let on_close = |free_space_reserve_bytes| DurableOptions {
        log: small_log_options(),
        snapshots: SnapshotOptions {
            every_records: 0,
            on_close: true,
            free_space_reserve_bytes,
            ..SnapshotOptions::default()
        },
    };
    // More must stay free than any disk has: no snapshot, but a clean close.
    let (directory, now, engine) = small_campaign_open(on_close(1 << 60));
    book_some(&engine, now, 0, 20);
    let closed = engine.close().unwrap();
    let why = closed.no_snapshot.expect("the snapshot on close failed");
    assert!(matches!(why, yeyak::durable::NoSnapshotOnClose::Failed(yeyak::snapshot::SnapshotError::DiskSpace { .. })));
    assert!(why.to_string().contains("no room for a snapshot"), "{why}");
    assert!(list_snapshots(&directory.path().join(SNAPSHOT_DIRECTORY)).unwrap().is_empty());
    // Everything is in the log; with room, the next close takes its snapshot.
    let (engine, report) = reopen(directory.path(), on_close(0));
    assert!(report.records_replayed > 0);
    assert!(engine.close().unwrap().no_snapshot.is_none());
    assert_eq!(list_snapshots(&directory.path().join(SNAPSHOT_DIRECTORY)).unwrap().len(), 1);
}
