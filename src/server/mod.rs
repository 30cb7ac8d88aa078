//! The network server: connections on a tokio runtime (one network thread),
//! a bounded ingress queue (crossbeam's `ArrayQueue`), and one engine thread
//! that applies requests and releases replies once durable.
//!
//! ```text
//! socket → connection reader (decode, check) → ingress queue ─┐  full: OVERLOADED at once
//!                                                             ▼
//!                                     engine thread: apply → pending replies
//!                                                             │  log durable_lsn passes them
//! socket ← connection writer ← outbox ←───────────────────────┘
//! ```
//!
//! One engine thread draws every log number, so replies leave in log order and
//! the sequence counter never bounces between cores (docs/benchmarks.md).

pub mod apply;
pub mod connection;
pub(crate) mod handover;
pub mod keys;
pub mod reactor;
pub mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::durable::DurableEngine;
use crate::server::apply::{Job, Pending};
use crate::server::keys::KeyRing;
use crate::server::stats::{Counters, Tally};

/// Where the engine's "now" comes from.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// The system clock.
    System,
    /// SIMULATED time: starts at `start_ms` when the server starts and runs at
    /// the real pace. For the demo campaign (2021) and tests; printed at start.
    Simulated { start_ms: i64, since: Instant },
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_millis() as i64),
            Clock::Simulated { start_ms, since } => start_ms + since.elapsed().as_millis() as i64,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Connections open at once; one more is refused TOO_MANY_CONNECTIONS.
    pub connections_max: u32,
    /// Requests one connection may have waiting for replies.
    pub in_flight_max: u32,
    /// Requests the ingress queue holds; one more is answered OVERLOADED.
    pub ingress_queue_jobs: usize,
    /// Commands queued for the engine thread or in the round it is applying
    /// (a batch counts its commands): one more request is answered
    /// OVERLOADED, unless there are none (a request is always let in then).
    /// Bounds the memory of queued work: many connections with full batches
    /// in flight could otherwise queue 4,096 commands a job.
    pub ingress_queue_commands: usize,
    /// The largest frame body accepted (at most `FRAME_BODY_BYTES_MAX`).
    pub frame_body_bytes_max: u32,
    /// How long a peer that began a frame has to send the rest of it (then
    /// MALFORMED and close); an idle connection may wait for ever.
    pub frame_completion_timeout: Duration,
    /// Reply bytes waiting to be written to all connections together
    /// (queued, or being written to peers that do not read): past it, a
    /// connection with more than `REPLY_BYTES_SHARE` of its own waiting is
    /// not read from until the total falls back (docs/protocol.md, "Limits").
    pub reply_bytes_max: usize,
    pub clock: Clock,
    /// The I/O reactor of the network thread.
    pub reactor: reactor::Reactor,
}

/// The largest `connections_max`.
pub const CONNECTIONS_MAX_LIMIT: u32 = 1 << 20;
/// The largest `in_flight_max`.
pub const IN_FLIGHT_MAX_LIMIT: u32 = 1 << 20;
/// The largest `ingress_queue_jobs`: the queue is allocated whole at start
/// (about 90 bytes a job), so this bounds it at about 90 MiB.
pub const INGRESS_QUEUE_JOBS_LIMIT: usize = 1 << 20;
/// The largest `ingress_queue_commands` (about 60 bytes a queued command).
pub const INGRESS_QUEUE_COMMANDS_LIMIT: usize = 1 << 24;
/// The largest `reply_bytes_max` (1 TiB: no bound in practice, but a number).
pub const REPLY_BYTES_MAX_LIMIT: usize = 1 << 40;
/// Reply bytes a connection may have waiting and still be read from while
/// all connections' waiting replies exceed `reply_bytes_max`: a peer that
/// reads its replies while it sends rarely has more (a batch reply is at
/// most about 80 KiB; 32 batches of 1,024 answered in full, 640 KiB), so it
/// goes on while those that do not read are paused.
pub const REPLY_BYTES_SHARE: usize = 1 << 20;

/// A server setting outside its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} = {value}: must be between 1 and {max}")]
pub struct ServerConfigError {
    pub name: &'static str,
    pub value: u64,
    pub max: u64,
}

impl ServerConfig {
    /// Refuses a limit of 0 (nothing could be served) or past its named
    /// maximum (memory taken at start, or an allocation that cannot be made).
    pub fn check(&self) -> Result<(), ServerConfigError> {
        let limits = [
            ("connections_max", u64::from(self.connections_max), u64::from(CONNECTIONS_MAX_LIMIT)),
            ("in_flight_max", u64::from(self.in_flight_max), u64::from(IN_FLIGHT_MAX_LIMIT)),
            ("ingress_queue_jobs", self.ingress_queue_jobs as u64, INGRESS_QUEUE_JOBS_LIMIT as u64),
            ("ingress_queue_commands", self.ingress_queue_commands as u64, INGRESS_QUEUE_COMMANDS_LIMIT as u64),
            ("reply_bytes_max", self.reply_bytes_max as u64, REPLY_BYTES_MAX_LIMIT as u64),
        ];
        for (name, value, max) in limits {
            if !(1..=max).contains(&value) {
                return Err(ServerConfigError { name, value, max });
            }
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            connections_max: 10_000,
            in_flight_max: 4096,
            ingress_queue_jobs: 65_536,
            ingress_queue_commands: 1 << 20,
            frame_body_bytes_max: crate::protocol::FRAME_BODY_BYTES_MAX,
            frame_completion_timeout: Duration::from_secs(30),
            reply_bytes_max: 256 << 20,
            clock: Clock::System,
            reactor: reactor::Reactor::Tokio,
        }
    }
}

/// What the network thread, the connections and the engine thread share.
pub struct Shared {
    pub engine: Arc<DurableEngine>,
    pub keys: KeyRing,
    pub config: ServerConfig,
    pub ingress: ArrayQueue<Job>,
    /// Commands in the ingress queue (`ServerConfig::ingress_queue_commands`).
    pub ingress_commands: std::sync::atomic::AtomicUsize,
    pub counters: Counters,
    /// Reply bytes waiting for every connection together (each `Outbox`
    /// adds and takes its own; `ServerConfig::reply_bytes_max`).
    pub reply_bytes_waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// Set at shutdown: stop accepting and reading; drain what is queued.
    pub stopping: AtomicBool,
    /// Set once the network thread has stopped: no job can be queued any more,
    /// so the engine thread may finish when it has answered the queued ones.
    network_stopped: AtomicBool,
    pub(crate) stop_accepting: tokio::sync::Notify,
    /// Wakes every connection reader waiting for its peer at shutdown.
    stop_readers: tokio::sync::Notify,
    engine_wake: Arc<EngineWake>,
    started: Instant,
}

/// How the engine thread is woken. Apart from `Shared`, so that the log's
/// durability listener holds this alone: holding `Shared`, a listener
/// announcing a sync while the server stops would keep `Server::shutdown`
/// from taking the engine back to close it.
#[derive(Default)]
struct EngineWake {
    thread: OnceLock<std::thread::Thread>,
    /// Set by the engine thread before it looks a last time and sleeps.
    parked: AtomicBool,
}

impl EngineWake {
    /// Wakes the engine thread if it sleeps: called after what it would
    /// wake for is stored (a job queued, `durable_lsn` moved on, the log
    /// failed or closed). The fence orders that store before the look at
    /// `parked`, as the engine thread orders its store of `parked` before its
    /// look at the queue and the log (`engine_loop`): one side sees the other.
    fn wake(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            self.unpark();
        }
    }

    fn unpark(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

/// An address held for a server that is still starting. It listens from
/// the start, so no other process can take it (a second engine on the same
/// port is refused at once), and a thread answers every connection at once
/// with STARTING and closes it, so that nobody waits on a connection nothing
/// reads while the tables are built and the log replayed. `Server::start_on`
/// takes the listener over.
pub struct BoundAddress {
    listener: std::net::TcpListener,
    _turning_away: TurningAway,
}

/// The thread that answers STARTING; stopped (and joined) when dropped.
struct TurningAway {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for TurningAway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How often the start-up thread looks for connections to turn away.
const STARTING_POLL: Duration = Duration::from_millis(10);

impl BoundAddress {
    pub fn bind(address: SocketAddr) -> std::io::Result<BoundAddress> {
        let listener = std::net::TcpListener::bind(address)?;
        let turner = listener.try_clone()?;
        // Shared with `listener` (one open file): the server wants it too.
        turner.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new().name("yeyak-starting".into()).spawn(move || {
            let answer = crate::protocol::Answer { code: crate::protocol::code::STARTING, ..Default::default() };
            let starting = connection::error_frame(0, answer);
            while !stopped.load(Ordering::Acquire) {
                match turner.accept() {
                    Ok((mut stream, _)) => {
                        // Best effort: the peer may be gone already. What it
                        // sent is read before the close, which would otherwise
                        // reset the connection and could lose the answer.
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_write_timeout(Some(STARTING_POLL));
                        let _ = stream.set_read_timeout(Some(STARTING_POLL));
                        let _ = std::io::Write::write_all(&mut stream, &starting);
                        let _ = stream.shutdown(std::net::Shutdown::Write);
                        let mut sink = [0; 256];
                        while std::io::Read::read(&mut stream, &mut sink).is_ok_and(|read| read > 0) {}
                    }
                    Err(_) => std::thread::sleep(STARTING_POLL),
                }
            }
        })?;
        Ok(BoundAddress { listener, _turning_away: TurningAway { stop, thread: Some(thread) } })
    }

    pub fn local_address(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Stops turning connections away (the thread is joined as the rest of
    /// `self` drops, before this returns); the listener for the server.
    fn into_listener(self) -> std::net::TcpListener {
        self.listener
    }
}

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
    local_address: SocketAddr,
    network: Option<JoinHandle<()>>,
    engine_thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `config.listen` and starts serving `engine`.
    pub fn start(engine: DurableEngine, keys: KeyRing, config: ServerConfig) -> std::io::Result<Server> {
        // Nothing to turn away while nothing is slow to start: a plain listener.
        Server::serve(std::net::TcpListener::bind(config.listen)?, engine, keys, config)
    }

    /// Starts serving `engine` on an address bound beforehand (`yeyak start`
    /// binds before it builds the tables, so a taken address is refused at
    /// once, and keeps the address meanwhile). `config.listen` is not used.
    pub fn start_on(
        address: BoundAddress,
        engine: DurableEngine,
        keys: KeyRing,
        config: ServerConfig,
    ) -> std::io::Result<Server> {
        Server::serve(address.into_listener(), engine, keys, config)
    }

    fn serve(
        listener: std::net::TcpListener,
        engine: DurableEngine,
        keys: KeyRing,
        config: ServerConfig,
    ) -> std::io::Result<Server> {
        // Checked before any thread starts, so a refusal leaves nothing running.
        config.check().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        if config.reactor == reactor::Reactor::Uring && !reactor::uring_available() {
            return Err(std::io::Error::other("io_uring is not available to this process: use the tokio reactor"));
        }
        listener.set_nonblocking(true)?;
        let local_address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            engine: Arc::new(engine),
            keys,
            config,
            ingress: ArrayQueue::new(config.ingress_queue_jobs),
            ingress_commands: std::sync::atomic::AtomicUsize::new(0),
            counters: Counters::default(),
            reply_bytes_waiting: Arc::default(),
            stopping: AtomicBool::new(false),
            network_stopped: AtomicBool::new(false),
            stop_accepting: tokio::sync::Notify::new(),
            stop_readers: tokio::sync::Notify::new(),
            engine_wake: Arc::new(EngineWake::default()),
            started: Instant::now(),
        });
        let engine_shared = Arc::clone(&shared);
        let engine_thread =
            std::thread::Builder::new().name("yeyak-engine".into()).spawn(move || engine_loop(&engine_shared))?;
        // Replies wait for their records' sync: the flusher wakes the engine
        // thread to release them, rather than its nap running out.
        let engine_wake = Arc::clone(&shared.engine_wake);
        if !shared.engine.log().on_durable(move || engine_wake.wake()) {
            tracing::warn!(
                "the log already has a durability listener: replies are released on the engine's naps, \
                 every {ENGINE_NAP_REPLIES_WAITING:?} at most"
            );
        }
        let network_shared = Arc::clone(&shared);
        let network = std::thread::Builder::new().name("yeyak-network".into()).spawn(move || {
            if let Err(error) = reactor::run(config.reactor, listener, network_shared) {
                tracing::error!(%error, "the network thread stopped");
            }
        })?;
        Ok(Server { shared, local_address, network: Some(network), engine_thread: Some(engine_thread) })
    }

    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    pub fn engine(&self) -> &DurableEngine {
        &self.shared.engine
    }

    /// Stops accepting and reading, answers every request already queued once
    /// it is durable, makes the log durable and closes it (and takes the
    /// engine's snapshot on close, if it is asked for: `Closed` says whether
    /// it failed).
    pub fn shutdown(mut self) -> Result<crate::durable::Closed, crate::state::Refusal> {
        self.stop();
        let shared = Arc::clone(&self.shared);
        drop(self);
        // The threads are joined, so these are the last references, unless a
        // connection task outlived the network thread's grace period.
        match Arc::try_unwrap(shared).map(|shared| Arc::try_unwrap(shared.engine)) {
            Ok(Ok(engine)) => engine.close(),
            Ok(Err(engine)) => close_log_alone(&engine),
            Err(shared) => close_log_alone(&shared.engine),
        }
    }

    fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.stop_accepting.notify_one();
        self.shared.stop_readers.notify_waiters();
        if let Some(network) = self.network.take() {
            let _ = network.join();
        }
        self.shared.network_stopped.store(true, Ordering::Release);
        self.shared.engine_wake.unpark();
        if let Some(engine_thread) = self.engine_thread.take() {
            let _ = engine_thread.join();
        }
    }
}

/// Closes the log of an engine still shared (a connection task outlived the
/// network thread's grace period): no snapshot on close then.
fn close_log_alone(engine: &DurableEngine) -> Result<crate::durable::Closed, crate::state::Refusal> {
    let no_snapshot = engine.snapshots_on_close().then_some(crate::durable::NoSnapshotOnClose::EngineStillInUse);
    engine.log().close().map_err(crate::state::Refusal::LogUnavailable)?;
    Ok(crate::durable::Closed { no_snapshot })
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.network.is_some() {
            self.stop();
        }
    }
}

/// Jobs applied before replies are looked at again.
const APPLY_ROUND_JOBS_MAX: usize = 1024;
/// The engine thread's longest sleep with nothing queued and no reply waiting.
const ENGINE_NAP_IDLE: Duration = Duration::from_millis(10);
/// Its longest sleep while replies wait for a sync (a sync takes 0.1 to a
/// few ms here; the durability listener wakes it as each one ends).
const ENGINE_NAP_REPLIES_WAITING: Duration = Duration::from_millis(2);

#[inline(never)] // its own frame in profiles
fn engine_loop(shared: &Shared) {
    // Before it can first sleep, so that no wake-up finds no thread to wake.
    let _ = shared.engine_wake.thread.set(std::thread::current());
    let engine = &*shared.engine;
    let mut pending = Pending::default();
    let mut tally = Tally::default();
    let mut round: std::collections::VecDeque<Job> = std::collections::VecDeque::with_capacity(APPLY_ROUND_JOBS_MAX);
    loop {
        // The rules' time-dependent part, once a round rather than once a command.
        let moment = engine.engine().booking_moment(shared.config.clock.now_ms());
        // Take a round of jobs first, so the lines of the next few can be asked for ahead.
        let mut round_commands = 0;
        while round.len() < APPLY_ROUND_JOBS_MAX {
            let Some(job) = shared.ingress.pop() else { break };
            round_commands += job.work.commands() as usize;
            round.push_back(job);
        }
        let applied = round.len();
        for job in round.iter().take(apply::PREFETCH_AHEAD) {
            apply::prefetch_job(engine, job);
        }
        if !round.is_empty() {
            // One hold of the log's append lock and the engine's writer lock
            // for the round; its records go to the flusher when it is
            // dropped, before replies are looked at.
            let writing = apply::Writing::start(engine);
            while let Some(job) = round.pop_front() {
                if let Some(ahead) = round.get(apply::PREFETCH_AHEAD - 1) {
                    apply::prefetch_job(engine, ahead);
                }
                apply::apply(engine, &writing, job, &moment, &mut pending, &mut tally);
            }
            tally.flush(&shared.counters.engine);
            // Counted until applied, so the bound covers the round in hand too.
            shared.ingress_commands.fetch_sub(round_commands, Ordering::AcqRel);
        }
        let released = pending.release(engine, &shared.counters.engine);
        if applied > 0 || released > 0 {
            continue;
        }
        if shared.network_stopped.load(Ordering::Acquire) && pending.is_empty() && shared.ingress.is_empty() {
            return;
        }
        // Nothing to do: sleep until a job arrives or a sync makes replies
        // releasable. The network thread wakes this thread after it queues a
        // job, the log's durability listener after each sync; each of them
        // stores first, then looks at `parked`, with a SeqCst fence
        // between, as this thread does the other way round below, so one of
        // the two sides always sees the other and no wake-up is lost. The
        // naps only bound what a bug there would cost: a nap of 50 µs while
        // replies waited woke this thread 20 times a sync, for nothing.
        shared.engine_wake.parked.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        if shared.ingress.is_empty() && !pending.releasable(engine) {
            let nap = if pending.is_empty() { ENGINE_NAP_IDLE } else { ENGINE_NAP_REPLIES_WAITING };
            std::thread::park_timeout(nap);
        }
        shared.engine_wake.parked.store(false, Ordering::SeqCst);
    }
}
