//! The durable engine: acknowledged answers survive a restart, retries stay
//! idempotent across it, and a failing disk refuses instead of lying.

mod common;

use common::*;
use yeyak::durable::{DurableEngine, OpenError};
use yeyak::log::faults::FaultPlan;
use yeyak::log::LogOptions;
use yeyak::state::{CapacityChange, LogUnavailable, Refusal};

#[test]
fn restart_recovers_exactly_the_acknowledged_state() {
    let directory = tempfile::tempdir().unwrap();
    let rules = write_small_campaign(directory.path());
    let now = open_evening_ms(&rules);
    let (engine, report) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
    assert_eq!(report.records_replayed, 0);
    for index in 0..500 {
        let slot = (index * 7 % 10_000) as u32;
        let _ = engine.reserve(&booking(index, slot, 1), now);
    }
    for index in (0..500).step_by(5) {
        let _ = engine.cancel(&cancelling(index, 2), now);
    }
    for index in (1..500).step_by(7) {
        let _ = engine.change(&booking(index, 10_500 + (index % 50) as u32, 3), now);
    }
    let capacity = engine.engine().slot_seats(yeyak::inventory::SlotIndex(3)).unwrap().1;
    let slot = yeyak::inventory::SlotIndex(3);
    engine.add_capacity(&CapacityChange { slot, seats: 5, expected_capacity: capacity, operator_id: 42 }).unwrap();
    let before = engine.engine().logical_state();
    assert!(before.reservations() > 300, "{}", before.reservations());
    engine.close().unwrap();

    let (engine, report) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
    assert!(report.records_replayed > 500);
    assert!(report.torn_tail.is_none());
    // The report says where start-up's time went: phases within the whole.
    let phases = report.phases;
    assert!(phases.tables > std::time::Duration::ZERO && phases.log > std::time::Duration::ZERO, "{phases:?}");
    assert!(phases.tables + phases.snapshot + phases.log <= report.elapsed, "{phases:?} {:?}", report.elapsed);
    assert!(report.to_string().contains("(tables "), "{report}");
    assert_eq!(engine.engine().logical_state(), before);
    // A retry after the restart returns the first answer and books nothing more.
    let first = before.people[&person(1)].holds;
    assert_eq!(engine.change(&booking(1, 10_501, 3), now).ok(), first);
    assert_eq!(engine.engine().logical_state(), before);
}

#[test]
fn disk_full_refuses_bookings_and_keeps_reads() {
    let directory = tempfile::tempdir().unwrap();
    let rules = write_small_campaign(directory.path());
    let now = open_evening_ms(&rules);
    let plan = FaultPlan::never();
    let engine = open_faulty(directory.path(), &plan);
    let booked = engine.reserve(&booking(0, 1, 1), now).unwrap();
    plan.writes_before_disk_full.store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(engine.reserve(&booking(1, 2, 1), now), Err(Refusal::LogUnavailable(LogUnavailable::DiskFull)));
    assert_eq!(engine.reserve(&booking(2, 3, 1), now), Err(Refusal::LogUnavailable(LogUnavailable::DiskFull)));
    assert_eq!(engine.reservation_of(person(0)), Ok(Some(booked)));
    drop(engine);

    let (engine, report) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
    assert_eq!(report.records_replayed, 1, "only the acknowledged booking is in the log");
    assert_eq!(engine.reservation_of(person(0)), Ok(Some(booked)));
    assert_eq!(engine.reservation_of(person(1)), Ok(None));
}

#[test]
fn failed_sync_is_never_acknowledged_nor_retried() {
    let directory = tempfile::tempdir().unwrap();
    let rules = write_small_campaign(directory.path());
    let now = open_evening_ms(&rules);
    let plan = FaultPlan::never();
    let engine = open_faulty(directory.path(), &plan);
    engine.reserve(&booking(0, 1, 1), now).unwrap();
    plan.syncs_before_io_error.store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(engine.reserve(&booking(1, 2, 1), now), Err(Refusal::LogUnavailable(LogUnavailable::IoFailed)));
    plan.syncs_before_io_error.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    // The log stays stopped even though the disk "works" again: restart to recover.
    assert_eq!(engine.reserve(&booking(2, 3, 1), now), Err(Refusal::LogUnavailable(LogUnavailable::IoFailed)));
    assert!(engine.log().failure().unwrap().contains("syncing"));
}

#[test]
fn a_last_segment_that_cannot_be_opened_again_is_left_for_a_new_one() {
    let (directory, now, engine) = small_campaign_open(small_log_options());
    engine.reserve(&booking(0, 1, 1), now).unwrap();
    engine.close().unwrap();
    let segments = || yeyak::log::recovery::list_segments(&directory.path().join("log")).unwrap().len();
    assert_eq!(segments(), 1);
    // The next start cannot open the segment to write on in it: it books in a new one.
    let plan = FaultPlan::never();
    plan.segment_opens_fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let engine = open_faulty(directory.path(), &plan);
    engine.reserve(&booking(1, 2, 1), now).unwrap();
    assert!(engine.log().failure().is_none());
    engine.close().unwrap();
    assert_eq!(segments(), 2);
    // And a start that can writes on in that new one.
    let (engine, report) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
    assert_eq!(report.records_replayed, 2);
    engine.reserve(&booking(2, 3, 1), now).unwrap();
    engine.close().unwrap();
    assert_eq!(segments(), 2);
    let (engine, report) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
    assert_eq!(report.records_replayed, 3);
    for index in 0..3 {
        assert!(engine.reservation_of(person(index)).unwrap().is_some(), "person {index}");
    }
}

#[test]
fn a_data_directory_is_opened_by_one_engine_at_a_time() {
    let directory = tempfile::tempdir().unwrap();
    write_small_campaign(directory.path());
    let (engine, _) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
    let second = DurableEngine::open(directory.path(), small_log_options(), false).err().expect("refused");
    assert!(second.to_string().contains("another yeyak has this data directory open"), "{second}");
    engine.close().unwrap();
    assert!(DurableEngine::open(directory.path(), small_log_options(), false).is_ok(), "the lock goes with the engine");
}

#[test]
fn a_slot_whose_appointment_has_begun_is_neither_booked_nor_given_up() {
    use yeyak::inventory::SlotIndex;
    let directory = tempfile::tempdir().unwrap();
    let rules = write_small_campaign(directory.path());
    let (engine, _) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
    let evening = open_evening_ms(&rules);
    assert_eq!(engine.reserve(&booking(1, 0, 1), evening), Ok(SlotIndex(0)));
    let inventory = engine.engine().inventory();
    let starts = inventory.slot_starts_ms(SlotIndex(0)).unwrap();
    let next_day = SlotIndex(u32::from(inventory.slots_per_day()));
    // Up to the last millisecond before it begins, the slot is as any other (here: full).
    assert_eq!(engine.reserve(&booking(2, 0, 1), starts - 1), Err(Refusal::SlotFull { slot: SlotIndex(0) }));
    // Once it has begun: no new booking, no change into it, no cancel of it.
    let in_past = Err(Refusal::SlotInPast { slot: SlotIndex(0) });
    assert_eq!(engine.reserve(&booking(3, 0, 1), starts), in_past);
    assert_eq!(engine.change(&booking(4, 0, 1), starts + 1), in_past);
    assert_eq!(engine.cancel(&cancelling(1, 2), starts), in_past);
    // A later day's slot is still open, and so is moving away from nothing begun.
    assert_eq!(engine.reserve(&booking(5, next_day.0, 1), starts), Ok(next_day));
    assert_eq!(engine.cancel(&cancelling(5, 2), starts), Ok(next_day));
}

#[test]
fn a_campaign_whose_tables_do_not_fit_in_memory_is_refused_at_start_with_what_to_change() {
    let directory = tempfile::tempdir().unwrap();
    // The largest people_max the configuration accepts: 2^31 people take a
    // table of 2^32 buckets of 32 bytes (128 GiB).
    let campaign = small_campaign_toml().replace("people_max = 100_000", "people_max = 2_147_483_648");
    std::fs::write(directory.path().join("campaign.toml"), &campaign).unwrap();
    let needed = yeyak::state::PeopleTable::table_bytes(2_147_483_648);
    assert_eq!(needed, 128 << 30);
    if yeyak::memory::available_bytes().is_none_or(|available| available >= needed) {
        println!("skipped: this machine has 128 GiB free, or says nothing of its memory");
        return;
    }
    let error = DurableEngine::open(directory.path(), small_log_options(), false).err().expect("refused");
    let text = error.to_string();
    assert!(text.contains("131072 MiB of people table") && text.contains("MiB this process may still take"), "{text}");
    assert!(text.contains("limits.people_max = 2147483648") && text.contains("lower limits.people_max"), "{text}");
    // A campaign that fits opens on the same directory.
    write_small_campaign(directory.path());
    let (engine, _) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
    engine.close().unwrap();
}

#[test]
fn a_file_system_without_room_for_a_log_segment_is_refused_at_start() {
    let directory = tempfile::tempdir().unwrap();
    write_small_campaign(directory.path());
    // A segment of 768 TiB: more than any test machine's disk has free.
    let options = LogOptions { segment_size_bytes: 64 + 48 * (1 << 44), ..small_log_options() };
    match DurableEngine::open(directory.path(), options, false) {
        Err(error @ OpenError::NoRoomForLog { .. }) => {
            let OpenError::NoRoomForLog { needed_bytes, available_bytes, .. } = error else { unreachable!() };
            assert_eq!(needed_bytes, options.segment_size_bytes);
            assert!(available_bytes < needed_bytes);
            let said = error.to_string();
            assert!(said.contains("bookings would stop being durable when the log needs that segment"), "{said}");
        }
        other => panic!("expected NoRoomForLog, got {:?}", other.map(|_| ())),
    }
    // No segment was written: the same directory opens with a segment that fits.
    let segments = std::fs::read_dir(directory.path().join("log")).map_or(0, |entries| entries.count());
    assert_eq!(segments, 0);
    DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
}

#[test]
fn a_log_of_other_days_time_slots_or_sites_is_refused_and_sites_added_at_the_end_are_not() {
    let (directory, now, engine) = small_campaign_open(small_log_options());
    for index in 0..50 {
        engine.reserve(&booking(index, (index * 211 % 10_800) as u32, 1), now).unwrap();
    }
    let before = engine.engine().logical_state();
    engine.close().unwrap();
    let campaign = directory.path().join("campaign.toml");
    let original = std::fs::read_to_string(&campaign).unwrap();
    let layout = "other service days or time slots";
    let changes = [
        (original.replace("days = 30", "days = 31"), layout),
        (original.replace("slots_per_day = 18", "slots_per_day = 17"), layout),
        (original.replace("day_start = \"09:00\"", "day_start = \"08:00\""), layout),
        (original.replace("slot_minutes = 30", "slot_minutes = 20"), layout),
        (original.replace("first_date = \"2021-08-26\"", "first_date = \"2021-08-27\""), layout),
        (original.replace("sites = 20", "sites = 19"), "20 sites, where campaign.toml has 19"),
    ];
    for (changed, expected) in changes {
        assert_ne!(changed, original);
        std::fs::write(&campaign, &changed).unwrap();
        let error = DurableEngine::open(directory.path(), small_log_options(), false).err().expect("refused");
        let text = error.to_string();
        assert!(matches!(error, OpenError::CampaignChanged { .. }) && text.contains(expected), "{text}");
        let checked = DurableEngine::check(directory.path()).expect_err("log verify refuses too");
        assert!(matches!(checked, OpenError::CampaignChanged { .. }), "{checked}");
    }
    // Sites added at the end keep every slot number: the bookings stay where they were.
    std::fs::write(&campaign, original.replace("sites = 20", "sites = 21")).unwrap();
    let (engine, _) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
    assert_eq!(engine.engine().logical_state().people, before.people);
    engine.close().unwrap();
    std::fs::write(&campaign, &original).unwrap();
    let (engine, _) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
    assert_eq!(engine.engine().logical_state().people, before.people);
}
