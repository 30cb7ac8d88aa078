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
    /// The last record's sequence number (the wire peer's server numbers
    /// its records here, under the lock it appends them under).
    last_sequence: u64,
    finished: bool,
}

/// The people table and the slot counters.
struct Tables {
    people: yeyak::memory::ZeroedArray<PersonCell>,
    seats: yeyak::memory::ZeroedArray<SeatCell>,
    stride: usize,
}

/// A fresh log file in a fresh `data_dir`, preallocated for `records`.
fn create_log(data_dir: &Path, records: usize) -> File {
    let _ = std::fs::remove_dir_all(data_dir);
    std::fs::create_dir_all(data_dir).expect("can create the data directory");
    let path = data_dir.join("log");
    let file =
        File::options().read(true).write(true).create(true).truncate(true).open(&path).expect("can create the log");
    if records > 0 {
        let length = libc::off_t::try_from(records * RECORD_BYTES).expect("the log's size fits off_t");
        // SAFETY: `fallocate` on a file descriptor we own, no pointers.
        let allocated = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) };
        assert_eq!(allocated, 0, "fallocate {}: {}", path.display(), std::io::Error::last_os_error());
        file.sync_all().expect("the disk works");
    }
    file
}

/// Books `requests`, the records made durable, or (`with_log` false) with no
/// record at all, the peer of `reserve`.
pub fn run(requests: &[BookingRequest], initial_capacity: &[u32], layout: SlotLayout, data_dir: &Path, with_log: bool) {
    let file = create_log(data_dir, if with_log { requests.len() } else { 0 });
    let tables = Tables::new(requests.len(), initial_capacity, layout);
    let groups = Mutex::new(Groups::default());
    let changed = Condvar::new();

    let started = Instant::now();
    let (booked, syncs) = std::thread::scope(|scope| {
        let sync_thread = scope.spawn(|| sync_groups(&file, &groups, &changed, |_| {}));
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

impl Tables {
    /// Empty people table with room for `people` at load 0.5 or less, and
    /// `initial_capacity` seats in each slot.
    fn new(people: usize, initial_capacity: &[u32], layout: SlotLayout) -> Tables {
        let stride = layout.stride();
        let tables = Tables {
            people: yeyak::memory::ZeroedArray::new((people * 2).next_power_of_two().max(1024)),
            seats: yeyak::memory::ZeroedArray::new(initial_capacity.len() * stride),
            stride,
        };
        for (seat, capacity) in tables.seats.iter().step_by(stride).zip(initial_capacity) {
            seat.0.store(*capacity, Relaxed);
        }
        tables
    }

    #[inline]
    fn home(&self, request: &BookingRequest) -> usize {
        let key = request.person.0;
        (yeyak::mix64(key as u64 ^ (key >> 64) as u64) as usize) & (self.people.len() - 1)
    }

    #[inline]
    fn seat(&self, request: &BookingRequest) -> Option<&SeatCell> {
        self.seats.get(request.slot.0 as usize * self.stride)
    }

    #[inline]
    fn prefetch(&self, request: &BookingRequest) {
        yeyak::prefetch(&self.people[self.home(request)]);
        if let Some(seat) = self.seat(request) {
            yeyak::prefetch(seat);
        }
    }

    /// Books `request` if its person holds nothing and its slot has a seat.
    #[inline]
    fn book(&self, request: &BookingRequest) -> bool {
        let key = request.person.0;
        let (low, high) = (key as u64, (key >> 64) as u64);
        let mask = self.people.len() - 1;
        let mut bucket = self.home(request);
        let known = loop {
            let cell = &self.people[bucket];
            let (cell_low, cell_high) = (cell.key_low.load(Relaxed), cell.key_high.load(Relaxed));
            if cell_low == low && cell_high == high {
                break true;
            }
            if cell_low == 0 && cell_high == 0 {
                break false;
            }
            bucket = (bucket + 1) & mask;
        };
        let Some(seat) = self.seat(request) else { return false };
        if known || seat.0.fetch_update(Relaxed, Relaxed, |left| left.checked_sub(1)).is_err() {
            return false;
        }
        let cell = &self.people[bucket];
        cell.key_low.store(low, Relaxed);
        cell.key_high.store(high, Relaxed);
        cell.slot.store(u64::from(request.slot.0), Relaxed);
        true
    }
}

/// Appends `request`'s record, yeyak's layout (docs/log-format.md), type 1 =
/// Reserved, with its CRC computed here, on the booking thread.
#[inline]
fn append_record(records: &mut Vec<u8>, sequence: u64, request: &BookingRequest) {
    let mut record = [0u8; RECORD_BYTES];
    record[4..6].copy_from_slice(&(RECORD_BYTES as u16).to_le_bytes());
    record[6] = 1;
    record[8..16].copy_from_slice(&sequence.to_le_bytes());
    record[16..32].copy_from_slice(&request.person.0.to_le_bytes());
    record[32..36].copy_from_slice(&request.slot.0.to_le_bytes());
    record[40..48].copy_from_slice(&request.idempotency_key.to_le_bytes());
    let checked: &[u8; RECORD_BYTES - 4] = record[4..].try_into().expect("44 bytes");
    let crc = yeyak::crc::crc32c_fixed(checked);
    record[0..4].copy_from_slice(&crc.to_le_bytes());
    records.extend_from_slice(&record);
}

/// Books every request in turn; returns how many were booked.
fn book<const WITH_LOG: bool>(
    requests: &[BookingRequest],
    tables: &Tables,
    groups: &Mutex<Groups>,
    changed: &Condvar,
) -> u64 {
    let mut records: Vec<u8> = Vec::with_capacity(if WITH_LOG { BATCH * BATCHES_HELD_MAX * RECORD_BYTES } else { 0 });
    let mut sequence = 0u64;
    for (index, request) in requests.iter().enumerate() {
        if let Some(ahead) = requests.get(index + AHEAD) {
            tables.prefetch(ahead);
        }
        if !tables.book(request) {
            continue;
        }
        sequence += 1;
        if WITH_LOG {
            append_record(&mut records, sequence, request);
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
/// one `fdatasync`, then tells `on_durable` how many records are durable;
/// returns how many syncs it made.
fn sync_groups(file: &File, groups: &Mutex<Groups>, changed: &Condvar, on_durable: impl Fn(u64)) -> u64 {
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
        let durable = offset / RECORD_BYTES as u64;
        groups.lock().expect("not poisoned").durable_records = durable;
        on_durable(durable);
    }
}

/// Bytes of one command in the wire peer's frames: person key (16), slot
/// (4), idempotency key (8), zeros (4). A frame is a u32 count and that many
/// commands; its reply a u32 count and one byte a command (0 = booked).
const WIRE_COMMAND_BYTES: usize = 32;
/// Commands a frame may carry: a frame's count is checked against it.
const WIRE_FRAME_COMMANDS_MAX: usize = 1 << 16;

/// What the wire peer's server thread, its sync thread and its connections share.
struct Server {
    tables: Tables,
    groups: Mutex<Groups>,
    changed: Condvar,
    durable: AtomicU64,
    durable_changed: tokio::sync::Notify,
}

/// The wire peer: the same design behind a loopback server run as issue #3's
/// prototype was (one tokio current-thread server thread that reads frames,
/// books and answers; a sync thread doing group commit; answers written
/// once durable), loaded as `yeyak-bench wire` loads yeyak: `connections`
/// client threads in this process, each with `depth` frames of `batch`
/// commands in flight, frames encoded beforehand. No handshake, no frame
/// checksum, no limits but the frame's count.
pub fn run_wire(
    requests: &[BookingRequest],
    initial_capacity: &[u32],
    layout: SlotLayout,
    data_dir: &Path,
    load: (usize, usize, usize),
) {
    let (batch, depth, connections) = load;
    let file = create_log(data_dir, requests.len());
    let server = std::sync::Arc::new(Server {
        tables: Tables::new(requests.len(), initial_capacity, layout),
        groups: Mutex::new(Groups::default()),
        changed: Condvar::new(),
        durable: AtomicU64::new(0),
        durable_changed: tokio::sync::Notify::new(),
    });
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("binds on loopback");
    let address = listener.local_addr().expect("bound");
    let shares: Vec<&[BookingRequest]> = requests.chunks(requests.len().div_ceil(connections).max(1)).collect();
    let frames: Vec<Vec<Vec<u8>>> =
        shares.iter().map(|share| share.chunks(batch).map(encode_wire_frame).collect()).collect();

    let started = Instant::now();
    let (booked, syncs) = std::thread::scope(|scope| {
        let sync_thread = scope.spawn(|| {
            sync_groups(&file, &server.groups, &server.changed, |durable| {
                server.durable.store(durable, std::sync::atomic::Ordering::Release);
                server.durable_changed.notify_waiters();
            })
        });
        let server_thread = {
            let server = server.clone();
            scope.spawn(move || serve(listener, shares.len(), server))
        };
        let clients: Vec<_> =
            frames.iter().map(|frames| scope.spawn(move || load_one_connection(address, frames, depth))).collect();
        let booked: u64 = clients.into_iter().map(|client| client.join().expect("client threads do not panic")).sum();
        server_thread.join().expect("the server thread does not panic");
        server.groups.lock().expect("not poisoned").finished = true;
        server.changed.notify_all();
        (booked, sync_thread.join().expect("the sync thread does not panic"))
    });
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "prototype over loopback (issue #3's throwaway design: 1 tokio current-thread server thread + sync thread, in-process clients, frames encoded beforehand): people={} batch={batch} depth={depth} connections={connections} slots={layout:?}",
        requests.len()
    );
    println!(
        "  {booked} durable reservations in {seconds:.3} s = {:.2} M/s; {syncs} syncs ({:.0} records/sync)",
        booked as f64 / seconds / 1e6,
        booked as f64 / syncs.max(1) as f64
    );
    let _ = std::fs::remove_dir_all(data_dir);
}

fn encode_wire_frame(commands: &[BookingRequest]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + commands.len() * WIRE_COMMAND_BYTES);
    frame.extend_from_slice(&(commands.len() as u32).to_le_bytes());
    for command in commands {
        frame.extend_from_slice(&command.person.0.to_le_bytes());
        frame.extend_from_slice(&command.slot.0.to_le_bytes());
        frame.extend_from_slice(&command.idempotency_key.to_le_bytes());
        frame.extend_from_slice(&[0; 4]);
    }
    frame
}

/// Sends `frames` with up to `depth` unanswered, reads every reply; returns
/// how many commands were booked.
fn load_one_connection(address: std::net::SocketAddr, frames: &[Vec<u8>], depth: usize) -> u64 {
    use std::io::{Read, Write};
    let stream = std::net::TcpStream::connect(address).expect("connects");
    stream.set_nodelay(true).expect("a TCP socket");
    let mut writer = stream.try_clone().expect("a socket can be cloned");
    let mut reader = std::io::BufReader::with_capacity(1 << 16, stream);
    let (mut sent, mut received, mut booked) = (0, 0, 0u64);
    let mut reply = Vec::new();
    while received < frames.len() {
        while sent < frames.len() && sent - received < depth {
            writer.write_all(&frames[sent]).expect("sends");
            sent += 1;
        }
        let mut count = [0u8; 4];
        reader.read_exact(&mut count).expect("a reply");
        reply.resize(u32::from_le_bytes(count) as usize, 0);
        reader.read_exact(&mut reply).expect("a reply");
        booked += reply.iter().filter(|answer| **answer == 0).count() as u64;
        received += 1;
    }
    booked
}

/// The server thread: accepts `connections` connections and serves them
/// until each has closed.
fn serve(listener: std::net::TcpListener, connections: usize, server: std::sync::Arc<Server>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("a tokio runtime");
    runtime.block_on(async move {
        listener.set_nonblocking(true).expect("a TCP listener");
        let listener = tokio::net::TcpListener::from_std(listener).expect("a TCP listener");
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let (stream, _) = listener.accept().await.expect("accepts");
            stream.set_nodelay(true).expect("a TCP socket");
            tasks.push(tokio::spawn(serve_connection(stream, server.clone())));
        }
        for task in tasks {
            task.await.expect("connection tasks do not panic");
        }
    });
}

/// Reads frames, books their commands and queues each reply for the writer,
/// which sends it once its records are durable.
async fn serve_connection(stream: tokio::net::TcpStream, server: std::sync::Arc<Server>) {
    use tokio::io::AsyncReadExt;
    let (read, write) = stream.into_split();
    let mut read = tokio::io::BufReader::with_capacity(1 << 18, read);
    let (replies, queued) = tokio::sync::mpsc::unbounded_channel();
    let writer = tokio::spawn(write_replies(write, queued, server.clone()));
    let mut body = Vec::new();
    let mut commands = Vec::new();
    loop {
        let mut count = [0u8; 4];
        if read.read_exact(&mut count).await.is_err() {
            break;
        }
        let count = u32::from_le_bytes(count) as usize;
        assert!(count <= WIRE_FRAME_COMMANDS_MAX, "a frame of {count} commands");
        body.resize(count * WIRE_COMMAND_BYTES, 0);
        read.read_exact(&mut body).await.expect("a whole frame");
        commands.clear();
        commands.extend(body.chunks_exact(WIRE_COMMAND_BYTES).map(|command| BookingRequest {
            person: yeyak::state::PersonKey(u128::from_le_bytes(command[0..16].try_into().expect("16 bytes"))),
            slot: yeyak::inventory::SlotIndex(u32::from_le_bytes(command[16..20].try_into().expect("4 bytes"))),
            idempotency_key: u64::from_le_bytes(command[20..28].try_into().expect("8 bytes")),
            ..PEER_REQUEST
        }));
        let mut reply = Vec::with_capacity(4 + count);
        reply.extend_from_slice(&(count as u32).to_le_bytes());
        let last_sequence = {
            let mut groups = server.groups.lock().expect("not poisoned");
            let Groups { handed, last_sequence, .. } = &mut *groups;
            for (index, command) in commands.iter().enumerate() {
                if let Some(ahead) = commands.get(index + AHEAD) {
                    server.tables.prefetch(ahead);
                }
                if server.tables.book(command) {
                    *last_sequence += 1;
                    append_record(handed, *last_sequence, command);
                    reply.push(0);
                } else {
                    reply.push(1);
                }
            }
            *last_sequence
        };
        server.changed.notify_all();
        if replies.send((last_sequence, reply)).is_err() {
            break;
        }
    }
    drop(replies);
    writer.await.expect("the writer does not panic");
}

/// Writes each queued reply once the records before it are durable, the
/// replies ready at once in one write.
async fn write_replies(
    mut write: tokio::net::tcp::OwnedWriteHalf,
    mut queued: tokio::sync::mpsc::UnboundedReceiver<(u64, Vec<u8>)>,
    server: std::sync::Arc<Server>,
) {
    use tokio::io::AsyncWriteExt;
    let mut out = Vec::new();
    let mut pending = std::collections::VecDeque::new();
    loop {
        if pending.is_empty() {
            match queued.recv().await {
                Some(reply) => pending.push_back(reply),
                None => return,
            }
        }
        while let Ok(reply) = queued.try_recv() {
            pending.push_back(reply);
        }
        wait_durable(&server, pending.front().map_or(0, |(needed, _)| *needed)).await;
        let durable = server.durable.load(std::sync::atomic::Ordering::Acquire);
        out.clear();
        while pending.front().is_some_and(|(needed, _)| *needed <= durable) {
            let (_, reply) = pending.pop_front().expect("a front");
            out.extend_from_slice(&reply);
        }
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

async fn wait_durable(server: &Server, needed: u64) {
    loop {
        let changed = server.durable_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if server.durable.load(std::sync::atomic::Ordering::Acquire) >= needed {
            return;
        }
        changed.await;
    }
}

/// The fields of a request the peer neither sends nor reads.
const PEER_REQUEST: BookingRequest = BookingRequest {
    person: yeyak::state::PersonKey(0),
    birth_date: yeyak::calendar::Date::from_days_since_epoch(0),
    slot: yeyak::inventory::SlotIndex(0),
    idempotency_key: 0,
    channel: yeyak::rules::Channel::Person,
};
