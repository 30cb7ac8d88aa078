//! `yeyak-bench prototype`: the throwaway design issue #2 quotes as its
//! yardstick, rebuilt as a peer measured in the same run as `reserve` and
//! `durable`.
//!
//! Issue #2 sets its bars from a prototype "on this kind of machine": an
//! open-addressing people table with prefetching, one counter per slot,
//! 48-byte records and a sync thread doing `pwrite` + `fdatasync` (23.6 M
//! reservations/s without the log, 19 M/s durable). This VM's speed moves by
//! two to three times between phases (docs/benchmarks.md), so an absolute
//! figure from one run says little; the same design run beside yeyak says how
//! far yeyak is from what the machine allows at that minute.
//!
//! It is a floor, not a booking engine: it checks no campaign rule (cohort,
//! rotation, window), keeps no idempotency key, has no recovery, one booking
//! thread and no latch, and its records are written once and never read. It
//! lets the written pages go once durable, as yeyak's log learned to on this
//! VM (docs/log-format.md), so that the two differ in the booking thread's
//! work, not in the kernel's.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use yeyak::state::BookingRequest;

/// One person: key (two halves; all zeros = empty) and the slot held.
#[repr(C, align(32))]
struct PersonCell {
    key_low: AtomicU64,
    key_high: AtomicU64,
    slot: AtomicU64,
    _spare: AtomicU64,
}

// SAFETY: atomics are valid as all zeros and need no drop.
unsafe impl yeyak::memory::Zeroable for PersonCell {}

/// Seats left, in a slot's counter.
struct SeatCell(AtomicU32);

// SAFETY: as above.
unsafe impl yeyak::memory::Zeroable for SeatCell {}

/// How the slot counters are laid out.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SlotLayout {
    /// One 64-byte line per slot, as yeyak (no false sharing, MISSION.md).
    Line,
    /// 4 bytes per slot, 16 to a line.
    Packed,
}

impl SlotLayout {
    /// Counters per slot in the array: the slot's own, then unused padding.
    fn stride(self) -> usize {
        match self {
            SlotLayout::Line => 64 / std::mem::size_of::<SeatCell>(),
            SlotLayout::Packed => 1,
        }
    }
}

const RECORD_BYTES: usize = 48;
/// Requests looked ahead: their person and slot lines are prefetched.
const AHEAD: usize = 8;
/// The booking thread hands its records over after this many requests (a
/// batch frame's worth) if the sync thread has taken the last group, and waits
/// for it only when this many batches are held (`durable` keeps 64 batches in
/// flight too).
const BATCH: usize = 1024;
const BATCHES_HELD_MAX: usize = 64;

/// What the booking thread and the sync thread share.
#[derive(Default)]
struct Groups {
    /// Records handed over and not yet taken by the sync thread.
    handed: Vec<u8>,
    /// Records made durable so far.
    durable_records: u64,
    finished: bool,
}

/// The people table and the slot counters.
struct Tables {
    people: yeyak::memory::ZeroedArray<PersonCell>,
    seats: yeyak::memory::ZeroedArray<SeatCell>,
    stride: usize,
}

/// Books `requests`, the records made durable, or (`with_log` false) with no
/// record at all, the peer of `reserve`.
pub fn run(requests: &[BookingRequest], initial_capacity: &[u32], layout: SlotLayout, data_dir: &Path, with_log: bool) {
    let _ = std::fs::remove_dir_all(data_dir);
    std::fs::create_dir_all(data_dir).expect("can create the data directory");
    let path = data_dir.join("log");
    let file =
        File::options().read(true).write(true).create(true).truncate(true).open(&path).expect("can create the log");
    if with_log {
        let length = libc::off_t::try_from(requests.len() * RECORD_BYTES).expect("the log's size fits off_t");
        // SAFETY: `fallocate` on a file descriptor we own, no pointers.
        let allocated = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) };
        assert_eq!(allocated, 0, "fallocate {}: {}", path.display(), std::io::Error::last_os_error());
        file.sync_all().expect("the disk works");
    }
    let stride = layout.stride();
    let tables = Tables {
        people: yeyak::memory::ZeroedArray::new((requests.len() * 2).next_power_of_two().max(1024)),
        seats: yeyak::memory::ZeroedArray::new(initial_capacity.len() * stride),
        stride,
    };
    for (seat, capacity) in tables.seats.iter().step_by(stride).zip(initial_capacity) {
        seat.0.store(*capacity, Relaxed);
    }
    let groups = Mutex::new(Groups::default());
    let changed = Condvar::new();

    let started = Instant::now();
    let (booked, syncs) = std::thread::scope(|scope| {
        let sync_thread = scope.spawn(|| sync_groups(&file, &groups, &changed));
        let booked = if with_log {
            book::<true>(requests, &tables, &groups, &changed)
        } else {
            book::<false>(requests, &tables, &groups, &changed)
        };
        groups.lock().expect("not poisoned").finished = true;
        changed.notify_all();
        (booked, sync_thread.join().expect("the sync thread does not panic"))
    });
    let seconds = started.elapsed().as_secs_f64();
    let refused = requests.len() as u64 - booked;
    let rate = booked as f64 / seconds / 1e6;
    println!(
        "prototype (issue #2's throwaway design: no rules, no idempotency, no recovery; 1 booking thread{}): people={} slots={layout:?}",
        if with_log { " + sync thread" } else { ", no log" },
        requests.len()
    );
    if with_log {
        let durable = groups.lock().expect("not poisoned").durable_records;
        assert_eq!(durable, booked, "every booked record was made durable");
        println!(
            "  {booked} durable reservations ({refused} refused) in {seconds:.3} s = {rate:.2} M/s; {syncs} syncs ({:.0} records/sync)",
            booked as f64 / syncs.max(1) as f64
        );
    } else {
        println!("  {booked} reservations ({refused} refused) in {seconds:.3} s = {rate:.2} M reservations/s, no log");
    }
    let _ = std::fs::remove_dir_all(data_dir);
}

/// Books every request in turn; returns how many were booked.
fn book<const WITH_LOG: bool>(
    requests: &[BookingRequest],
    tables: &Tables,
    groups: &Mutex<Groups>,
    changed: &Condvar,
) -> u64 {
    let Tables { people, seats, stride } = tables;
    let mask = people.len() - 1;
    let home = |request: &BookingRequest| {
        let key = request.person.0;
        (yeyak::mix64(key as u64 ^ (key >> 64) as u64) as usize) & mask
    };
    let seat = |request: &BookingRequest| seats.get(request.slot.0 as usize * stride);
    let mut records: Vec<u8> = Vec::with_capacity(if WITH_LOG { BATCH * BATCHES_HELD_MAX * RECORD_BYTES } else { 0 });
    let mut sequence = 0u64;
    for (index, request) in requests.iter().enumerate() {
        if let Some(ahead) = requests.get(index + AHEAD) {
            yeyak::prefetch(&people[home(ahead)]);
            if let Some(seat) = seat(ahead) {
                yeyak::prefetch(seat);
            }
        }
        let key = request.person.0;
        let (low, high) = (key as u64, (key >> 64) as u64);
        let mut bucket = home(request);
        let known = loop {
            let cell = &people[bucket];
            let (cell_low, cell_high) = (cell.key_low.load(Relaxed), cell.key_high.load(Relaxed));
            if cell_low == low && cell_high == high {
                break true;
            }
            if cell_low == 0 && cell_high == 0 {
                break false;
            }
            bucket = (bucket + 1) & mask;
        };
        let Some(seat) = seat(request) else { continue };
        if known || seat.0.fetch_update(Relaxed, Relaxed, |left| left.checked_sub(1)).is_err() {
            continue;
        }
        let cell = &people[bucket];
        cell.key_low.store(low, Relaxed);
        cell.key_high.store(high, Relaxed);
        cell.slot.store(u64::from(request.slot.0), Relaxed);
        sequence += 1;
        if WITH_LOG {
            // yeyak's record layout (docs/log-format.md), type 1 = Reserved.
            let mut record = [0u8; RECORD_BYTES];
            record[4..6].copy_from_slice(&(RECORD_BYTES as u16).to_le_bytes());
            record[6] = 1;
            record[8..16].copy_from_slice(&sequence.to_le_bytes());
            record[16..32].copy_from_slice(&key.to_le_bytes());
            record[32..36].copy_from_slice(&request.slot.0.to_le_bytes());
            record[40..48].copy_from_slice(&request.idempotency_key.to_le_bytes());
            let checked: &[u8; RECORD_BYTES - 4] = record[4..].try_into().expect("44 bytes");
            let crc = yeyak::crc::crc32c_fixed(checked);
            record[0..4].copy_from_slice(&crc.to_le_bytes());
            records.extend_from_slice(&record);
            if (index + 1) % BATCH == 0 {
                hand_over(&mut records, groups, changed);
            }
        }
    }
    if WITH_LOG {
        // The last records, once the sync thread has taken the group before.
        let mut shared = groups.lock().expect("not poisoned");
        while !shared.handed.is_empty() {
            shared = changed.wait(shared).expect("not poisoned");
        }
        shared.handed = records;
        changed.notify_all();
    }
    sequence
}

/// Group commit: gives `records` to the sync thread if it has taken the last
/// group; otherwise keeps them for the next hand-over, waiting only when
/// `BATCHES_HELD_MAX` batches are held.
fn hand_over(records: &mut Vec<u8>, groups: &Mutex<Groups>, changed: &Condvar) {
    let mut shared = groups.lock().expect("not poisoned");
    loop {
        if shared.handed.is_empty() {
            std::mem::swap(&mut shared.handed, records);
            changed.notify_all();
            return;
        }
        if records.len() < BATCH * BATCHES_HELD_MAX * RECORD_BYTES {
            return;
        }
        shared = changed.wait(shared).expect("not poisoned");
    }
}

/// Writes each handed-over group at the log's end and makes it durable with
/// one `fdatasync`; returns how many syncs it made.
fn sync_groups(file: &File, groups: &Mutex<Groups>, changed: &Condvar) -> u64 {
    const PAGE_BYTES: u64 = 4096;
    let mut group: Vec<u8> = Vec::new();
    let mut offset = 0u64;
    let mut syncs = 0;
    loop {
        {
            let mut shared = groups.lock().expect("not poisoned");
            while shared.handed.is_empty() && !shared.finished {
                shared = changed.wait(shared).expect("not poisoned");
            }
            if shared.handed.is_empty() {
                return syncs;
            }
            // The emptied buffer goes back for the booking thread's next group.
            group.clear();
            std::mem::swap(&mut shared.handed, &mut group);
            changed.notify_all();
        }
        file.write_all_at(&group, offset).expect("the disk works");
        file.sync_data().expect("the disk works");
        syncs += 1;
        // Let go of the durable pages, but the one the next group writes into.
        let first_page = offset & !(PAGE_BYTES - 1);
        offset += group.len() as u64;
        let last_page = offset & !(PAGE_BYTES - 1);
        if let (true, Ok(from), Ok(length)) =
            (last_page > first_page, libc::off_t::try_from(first_page), libc::off_t::try_from(last_page - first_page))
        {
            // SAFETY: `posix_fadvise` on a file descriptor we own, no pointers.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), from, length, libc::POSIX_FADV_DONTNEED) };
        }
        groups.lock().expect("not poisoned").durable_records = offset / RECORD_BYTES as u64;
    }
}
