//! `yeyak-bench prototype`: the throwaway designs issues #2 and #3 quote as
//! their yardsticks, rebuilt as peers measured in the same runs as `reserve`,
//! `durable` and `wire`.
//!
//! Issue #2 sets its bars from a prototype "on this kind of machine": an
//! open-addressing people table with prefetching, one counter per slot,
//! 48-byte records and a sync thread doing `pwrite` + `fdatasync` (23.6 M
//! reservations/s without the log, 19 M/s durable); issue #3 from the same
//! behind a tokio current-thread server (14.5 M/s with batch frames). This
//! VM's speed moves by two to three times between phases (docs/benchmarks.md),
//! so an absolute figure from one run says little; the same design run beside
//! yeyak says how far yeyak is from what the machine allows at that minute.
//!
//! It is a lean implementation of the design, not a booking engine: it checks
//! no campaign rule (cohort, rotation, window), keeps no idempotency key, has
//! no recovery, one booking thread and no latch, and its records are written
//! once and never read. Where yeyak learned a cheaper way on this VM, the peer
//! does the same, so that the two differ in what a booking costs and not in
//! tricks: the sync thread *seals* each record (sequence number, length,
//! CRC) just before writing it, as yeyak's flusher does, and lets the written
//! pages go once durable (docs/log-format.md).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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
/// The in-process booking thread appends its records a batch at a time (a
/// batch frame's worth), and waits before appending while more than
/// `BATCHES_IN_FLIGHT_MAX` batches are not durable: `durable` keeps 64
/// batches unanswered the same way.
const BATCH: usize = 1024;
const BATCHES_IN_FLIGHT_MAX: usize = 64;
/// What the group buffers are given up front: the most records in flight.
const GROUP_BYTES: usize = BATCH * (BATCHES_IN_FLIGHT_MAX + 1) * RECORD_BYTES;
/// Bytes of one command in the wire peer's frames: person key (16), slot
/// (4), idempotency key (8), zeros (4). A frame is a u32 count and that many
/// commands; its reply a u32 count and one byte a command (0 = booked).
const WIRE_COMMAND_BYTES: usize = 32;
/// Commands a wire frame may carry.
pub const WIRE_FRAME_COMMANDS_MAX: usize = 1 << 16;

/// The log: what the booking side and the sync thread share.
struct Log {
    file: File,
    groups: Mutex<Groups>,
    changed: Condvar,
    /// Records durable so far, for readers that do not take the lock.
    durable: AtomicU64,
}

#[derive(Default)]
struct Groups {
    /// Records appended and not yet taken by the sync thread, unsealed.
    appended: Vec<u8>,
    /// Records appended so far (the last one's sequence number).
    appended_records: u64,
    /// Records made durable so far.
    durable_records: u64,
    finished: bool,
}

impl Log {
    /// A fresh log file in a fresh `data_dir`, preallocated for `records`.
    fn create(data_dir: &Path, records: usize) -> Log {
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
        let groups = Groups { appended: Vec::with_capacity(GROUP_BYTES), ..Groups::default() };
        Log { file, groups: Mutex::new(groups), changed: Condvar::new(), durable: AtomicU64::new(0) }
    }

    /// Appends `records` (whole unsealed records) after the others; returns
    /// the last one's sequence number. With `in_flight_max`, first waits
    /// until no more than that many records are not durable.
    fn append(&self, records: &[u8], in_flight_max: Option<u64>) -> u64 {
        let mut groups = self.groups.lock().expect("not poisoned");
        if let Some(in_flight_max) = in_flight_max {
            while groups.appended_records - groups.durable_records > in_flight_max {
                groups = self.changed.wait(groups).expect("not poisoned");
            }
        }
        groups.appended.extend_from_slice(records);
        groups.appended_records += (records.len() / RECORD_BYTES) as u64;
        self.changed.notify_all();
        groups.appended_records
    }

    /// Tells the sync thread that nothing more will be appended.
    fn finish(&self) {
        self.groups.lock().expect("not poisoned").finished = true;
        self.changed.notify_all();
    }

    /// The sync thread: takes every record appended since the last group,
    /// seals them, writes them at the log's end and makes them durable with
    /// one `fdatasync`, then tells `on_durable` how many records are durable.
    /// Returns how many syncs it made once `finish` was called and all is durable.
    fn sync_groups(&self, on_durable: impl Fn(u64)) -> u64 {
        const PAGE_BYTES: u64 = 4096;
        let mut group: Vec<u8> = Vec::with_capacity(GROUP_BYTES);
        let mut offset = 0u64;
        let mut syncs = 0;
        loop {
            {
                let mut groups = self.groups.lock().expect("not poisoned");
                while groups.appended.is_empty() && !groups.finished {
                    groups = self.changed.wait(groups).expect("not poisoned");
                }
                if groups.appended.is_empty() {
                    return syncs;
                }
                // The emptied buffer goes back to be appended to.
                group.clear();
                std::mem::swap(&mut groups.appended, &mut group);
            }
            let first_sequence = offset / RECORD_BYTES as u64 + 1;
            for (index, record) in group.chunks_exact_mut(RECORD_BYTES).enumerate() {
                seal(record.try_into().expect("48 bytes"), first_sequence + index as u64);
            }
            self.file.write_all_at(&group, offset).expect("the disk works");
            self.file.sync_data().expect("the disk works");
            syncs += 1;
            // Let go of the durable pages, but the one the next group writes into.
            let first_page = offset & !(PAGE_BYTES - 1);
            offset += group.len() as u64;
            let last_page = offset & !(PAGE_BYTES - 1);
            if let (true, Ok(from), Ok(length)) = (
                last_page > first_page,
                libc::off_t::try_from(first_page),
                libc::off_t::try_from(last_page - first_page),
            ) {
                // SAFETY: `posix_fadvise` on a file descriptor we own, no pointers.
                unsafe { libc::posix_fadvise(self.file.as_raw_fd(), from, length, libc::POSIX_FADV_DONTNEED) };
            }
            let durable = offset / RECORD_BYTES as u64;
            self.groups.lock().expect("not poisoned").durable_records = durable;
            self.durable.store(durable, Ordering::Release);
            self.changed.notify_all();
            on_durable(durable);
        }
    }
}

/// The people table and the slot counters.
struct Tables {
    people: yeyak::memory::ZeroedArray<PersonCell>,
    seats: yeyak::memory::ZeroedArray<SeatCell>,
    stride: usize,
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
            seat.0.store(*capacity, Ordering::Relaxed);
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
        use Ordering::Relaxed;
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

    /// Books `requests` in turn, prefetching ahead; for each, `booked(request,
    /// was_booked)`. Returns how many were booked. Never inlined, so that
    /// callgrind can count its instructions alone (docs/benchmarks.md); one
    /// call a batch costs nothing that shows.
    #[inline(never)]
    fn book_all(&self, requests: &[BookingRequest], mut booked: impl FnMut(&BookingRequest, bool)) -> u64 {
        let mut count = 0;
        for (index, request) in requests.iter().enumerate() {
            if let Some(ahead) = requests.get(index + AHEAD) {
                self.prefetch(ahead);
            }
            let was_booked = self.book(request);
            count += u64::from(was_booked);
            booked(request, was_booked);
        }
        count
    }
}

/// Appends `request`'s record, yeyak's layout (docs/log-format.md) with type
/// 1 = Reserved, unsealed: `seal` writes length, sequence number and CRC.
#[inline]
fn append_record(records: &mut Vec<u8>, request: &BookingRequest) {
    let mut record = [0u8; RECORD_BYTES];
    record[6] = 1;
    record[16..32].copy_from_slice(&request.person.0.to_le_bytes());
    record[32..36].copy_from_slice(&request.slot.0.to_le_bytes());
    record[40..48].copy_from_slice(&request.idempotency_key.to_le_bytes());
    records.extend_from_slice(&record);
}

fn seal(record: &mut [u8; RECORD_BYTES], sequence: u64) {
    record[4..6].copy_from_slice(&(RECORD_BYTES as u16).to_le_bytes());
    record[8..16].copy_from_slice(&sequence.to_le_bytes());
    let checked: &[u8; RECORD_BYTES - 4] = record[4..].try_into().expect("44 bytes");
    let crc = yeyak::crc::crc32c_fixed(checked);
    record[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Books `requests`, the records made durable, or (`with_log` false) with no
/// record at all, the peer of `reserve`.
pub fn run(requests: &[BookingRequest], initial_capacity: &[u32], layout: SlotLayout, data_dir: &Path, with_log: bool) {
    let log = Log::create(data_dir, if with_log { requests.len() } else { 0 });
    let tables = Tables::new(requests.len(), initial_capacity, layout);
    let started = Instant::now();
    let (booked, syncs) = std::thread::scope(|scope| {
        let sync_thread = scope.spawn(|| log.sync_groups(|_| {}));
        let booked = if with_log {
            let in_flight_max = Some((BATCH * BATCHES_IN_FLIGHT_MAX) as u64);
            let mut records = Vec::with_capacity(BATCH * RECORD_BYTES);
            let mut booked = 0;
            for batch in requests.chunks(BATCH) {
                records.clear();
                booked += tables.book_all(batch, |request, booked| {
                    if booked {
                        append_record(&mut records, request);
                    }
                });
                log.append(&records, in_flight_max);
            }
            booked
        } else {
            tables.book_all(requests, |_, _| {})
        };
        log.finish();
        (booked, sync_thread.join().expect("the sync thread does not panic"))
    });
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(booked, requests.len() as u64, "every request was for a free seat");
    let rate = booked as f64 / seconds / 1e6;
    println!(
        "prototype (issue #2's throwaway design: no rules, no idempotency, no recovery; 1 booking thread{}): people={} slots={layout:?}",
        if with_log { " + sync thread" } else { ", no log" },
        requests.len()
    );
    if with_log {
        assert_eq!(log.durable.load(Ordering::Acquire), booked, "every booked record was made durable");
        println!(
            "  {booked} durable reservations in {seconds:.3} s = {rate:.2} M/s; {syncs} syncs ({:.0} records/sync)",
            booked as f64 / syncs.max(1) as f64
        );
    } else {
        println!("  {booked} reservations in {seconds:.3} s = {rate:.2} M reservations/s, no log");
    }
    let _ = std::fs::remove_dir_all(data_dir);
}

/// The peer's booking without a log, one batch at a time, for a comparison
/// interleaved with yeyak's (`yeyak-bench reserve --against-peer`): fresh
/// tables for `people`, and a function that books a batch into them and
/// returns how many it booked.
pub fn batch_booker(
    people: usize,
    initial_capacity: &[u32],
    layout: SlotLayout,
) -> impl FnMut(&[BookingRequest]) -> u64 {
    let tables = Tables::new(people, initial_capacity, layout);
    move |batch| tables.book_all(batch, |_, _| {})
}

/// The wire peer's server state: its tables, its log, and the signal its
/// connections wait on for durability.
struct Server {
    tables: Tables,
    log: Log,
    durable_changed: tokio::sync::Notify,
}

/// The wire peer: the same design behind a loopback server, as issue #3's
/// prototype was (one tokio current-thread server thread that reads frames,
/// books and queues answers; the sync thread; answers written once durable),
/// loaded the way `yeyak-bench wire` loads yeyak: one client thread per
/// connection in this process, `depth` frames of `batch` commands in flight,
/// frames encoded beforehand, writes gathered up to 64 KiB, every reply
/// already received read before sending more. Its protocol is leaner than
/// yeyak's: no handshake, no frame checksum, a byte per answer.
pub fn run_wire(
    requests: &[BookingRequest],
    initial_capacity: &[u32],
    layout: SlotLayout,
    data_dir: &Path,
    load: (usize, usize, usize),
) {
    let (batch, depth, connections) = load;
    assert!((1..=WIRE_FRAME_COMMANDS_MAX).contains(&batch), "a frame carries 1..={WIRE_FRAME_COMMANDS_MAX} commands");
    let server = std::sync::Arc::new(Server {
        tables: Tables::new(requests.len(), initial_capacity, layout),
        log: Log::create(data_dir, requests.len()),
        durable_changed: tokio::sync::Notify::new(),
    });
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("binds on loopback");
    let address = listener.local_addr().expect("bound");
    let shares: Vec<&[BookingRequest]> = requests.chunks(requests.len().div_ceil(connections).max(1)).collect();
    let frames: Vec<Vec<Vec<u8>>> =
        shares.iter().map(|share| share.chunks(batch).map(encode_wire_frame).collect()).collect();

    let process_before = super::ThreadCpu::now();
    let started = Instant::now();
    let (booked, syncs, cpu) = std::thread::scope(|scope| {
        let sync_thread = scope.spawn(|| {
            let syncs = server.log.sync_groups(|_| server.durable_changed.notify_waiters());
            (syncs, super::own_cpu_seconds())
        });
        let server_thread = {
            let server = server.clone();
            let connections = frames.len();
            scope.spawn(move || {
                serve(listener, connections, server);
                super::own_cpu_seconds()
            })
        };
        let clients: Vec<_> = frames
            .iter()
            .map(|frames| scope.spawn(move || (load_one_connection(address, frames, depth), super::own_cpu_seconds())))
            .collect();
        let mut booked = 0;
        let mut clients_cpu = [0.0; 2];
        for client in clients {
            let (client_booked, cpu) = client.join().expect("client threads do not panic");
            booked += client_booked;
            clients_cpu = super::cpu_sum(clients_cpu, cpu);
        }
        let server_cpu = server_thread.join().expect("the server thread does not panic");
        server.log.finish();
        let (syncs, sync_cpu) = sync_thread.join().expect("the sync thread does not panic");
        (booked, syncs, [server_cpu, sync_cpu, clients_cpu])
    });
    let seconds = started.elapsed().as_secs_f64();
    let [process_user, process_system] = super::ThreadCpu::now().process_since(&process_before);
    assert_eq!(booked, requests.len() as u64, "every request was for a free seat");
    println!(
        "prototype over loopback (issue #3's throwaway design: 1 tokio current-thread server thread + sync thread, in-process clients, frames encoded beforehand): people={} batch={batch} depth={depth} connections={} slots={layout:?}",
        requests.len(),
        shares.len()
    );
    println!(
        "  {booked} durable reservations in {seconds:.3} s = {:.2} M/s; {syncs} syncs ({:.0} records/sync)",
        booked as f64 / seconds / 1e6,
        booked as f64 / syncs.max(1) as f64
    );
    let [[server_user, server_system], [sync_user, sync_system], [clients_user, clients_system]] = cpu;
    println!(
        "  thread cpu seconds (user+system) during the run (wall {seconds:.2} s): (process, all threads) {process_user:.2}+{process_system:.2}, server {server_user:.2}+{server_system:.2}, sync {sync_user:.2}+{sync_system:.2}, clients {clients_user:.2}+{clients_system:.2}"
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
    let stream = std::net::TcpStream::connect(address).expect("connects");
    stream.set_nodelay(true).expect("a TCP socket");
    let mut writer = std::io::BufWriter::with_capacity(64 * 1024, stream.try_clone().expect("a socket can be cloned"));
    let mut reader = std::io::BufReader::with_capacity(1 << 16, stream);
    let (mut sent, mut received, mut booked) = (0, 0, 0u64);
    let mut reply = Vec::new();
    while received < frames.len() {
        while sent < frames.len() && sent - received < depth {
            writer.write_all(&frames[sent]).expect("sends");
            sent += 1;
        }
        writer.flush().expect("sends");
        // One blocking read, then every reply already buffered.
        loop {
            let mut count = [0u8; 4];
            reader.read_exact(&mut count).expect("a reply");
            reply.resize(u32::from_le_bytes(count) as usize, 0);
            reader.read_exact(&mut reply).expect("a reply");
            booked += reply.iter().filter(|answer| **answer == 0).count() as u64;
            received += 1;
            let buffered = reader.buffer();
            let whole_reply_buffered = buffered.len() >= 4
                && buffered.len() >= 4 + u32::from_le_bytes(buffered[..4].try_into().expect("4 bytes")) as usize;
            if !whole_reply_buffered {
                break;
            }
        }
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

/// Reads frames, books their commands, appends their records and queues each
/// reply for the writer, which sends it once its records are durable.
async fn serve_connection(stream: tokio::net::TcpStream, server: std::sync::Arc<Server>) {
    use tokio::io::AsyncReadExt;
    let (read, write) = stream.into_split();
    let mut read = tokio::io::BufReader::with_capacity(1 << 18, read);
    let (replies, queued) = tokio::sync::mpsc::unbounded_channel();
    let writer = tokio::spawn(write_replies(write, queued, server.clone()));
    let (mut body, mut commands, mut records) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        let mut count = [0u8; 4];
        if read.read_exact(&mut count).await.is_err() {
            break;
        }
        let count = u32::from_le_bytes(count) as usize;
        if count > WIRE_FRAME_COMMANDS_MAX {
            break; // Not a frame this peer's clients send: close.
        }
        body.resize(count * WIRE_COMMAND_BYTES, 0);
        if read.read_exact(&mut body).await.is_err() {
            break;
        }
        commands.clear();
        commands.extend(body.chunks_exact(WIRE_COMMAND_BYTES).map(|command| BookingRequest {
            person: yeyak::state::PersonKey(u128::from_le_bytes(command[0..16].try_into().expect("16 bytes"))),
            slot: yeyak::inventory::SlotIndex(u32::from_le_bytes(command[16..20].try_into().expect("4 bytes"))),
            idempotency_key: u64::from_le_bytes(command[20..28].try_into().expect("8 bytes")),
            ..PEER_REQUEST
        }));
        let mut reply = Vec::with_capacity(4 + count);
        reply.extend_from_slice(&(count as u32).to_le_bytes());
        records.clear();
        server.tables.book_all(&commands, |command, booked| {
            if booked {
                append_record(&mut records, command);
            }
            reply.push(u8::from(!booked));
        });
        let last_sequence = server.log.append(&records, None);
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
        let needed = pending.front().map_or(0, |(needed, _)| *needed);
        let durable = loop {
            let changed = server.durable_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let durable = server.log.durable.load(Ordering::Acquire);
            if durable >= needed {
                break durable;
            }
            changed.await;
        };
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

/// The fields of a request the peer neither sends nor reads.
const PEER_REQUEST: BookingRequest = BookingRequest {
    person: yeyak::state::PersonKey(0),
    birth_date: yeyak::calendar::Date::from_days_since_epoch(0),
    slot: yeyak::inventory::SlotIndex(0),
    idempotency_key: 0,
    channel: yeyak::rules::Channel::Person,
};
