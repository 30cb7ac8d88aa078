//! Who may change an engine, and how its tables are changed: by many
//! threads at once with read-modify-writes (`Shared`), or by one thread at a
//! time, holding the engine's writer lock, with plain atomic stores (`Sole`).
//! docs/architecture.md, "Writers", says which engines are which and why.

use crate::inventory::SlotIndex;
use crate::state::engine::{BookingRequest, CancelRequest, CapacityChange, Engine, Moment, Outcome};
use crate::state::entry::{Entry, Journal, Lsn};
use crate::state::replay::{explain, ReplayError};

/// How a command changes the tables, chosen at compile time for each path.
///
/// `Shared`: any number of threads at once, so every change is an atomic
/// read-modify-write (a compare-exchange for a seat or a new person's bucket,
/// an atomic add for the people count). `Sole`: the one thread holding a
/// sole-writer engine's writer lock (`Engine::writer`), so a change is an
/// atomic load and a store, with no locked instruction. Readers (queries,
/// the snapshot) work the same against both.
pub(crate) trait Writers {
    const SOLE: bool;
}

/// Many writers at once (`Writers`).
pub(crate) enum Shared {}

/// One writer, holding the engine's writer lock (`Writers`). Private to this
/// module: only an `EngineWriter` that holds the lock picks it.
enum Sole {}

impl Writers for Shared {
    const SOLE: bool = false;
}

impl Writers for Sole {
    const SOLE: bool = true;
}

/// The right to change an engine's state, for as long as it lives
/// (`Engine::writer`). In a sole-writer engine it holds the writer lock,
/// and its commands change the tables with plain atomic stores (`Sole`); in
/// a shared engine it holds nothing, and they use read-modify-writes (`Shared`).
/// Neither `Send` nor `Sync`: the thread that took the lock is the one writer.
/// While it lives, this thread must not call `Engine`'s command methods
/// (they take the lock again, and wait for themselves).
pub struct EngineWriter<'engine> {
    engine: &'engine Engine,
    held: Option<crate::sync::MutexGuard<'engine, ()>>,
    _one_thread: std::marker::PhantomData<*const ()>,
}

impl Engine {
    /// This engine, from now on changed by one thread at a time: every
    /// change holds its writer lock (`writer`, once for a batch or a round;
    /// each command method takes it for the command), and changes its tables
    /// with atomic loads and stores instead of locked read-modify-writes.
    /// Readers do not take the lock. For an engine whose changes are serialized
    /// anyway: `DurableEngine`'s hold the log's append lock, whose order is
    /// the log's (docs/architecture.md, "Writers"). An engine that is one
    /// already is returned as it is.
    pub fn into_sole_writer(mut self) -> Engine {
        if self.sole_writer.is_none() {
            self.sole_writer = Some(crate::sync::Mutex::new(()));
        }
        self
    }

    /// Whether changes hold one writer lock (`into_sole_writer`).
    pub fn has_sole_writer(&self) -> bool {
        self.sole_writer.is_some()
    }

    /// The right to change this engine: takes the writer lock of a
    /// sole-writer engine (waiting for the thread holding it), nothing in a
    /// shared one. Lock order: the log's append lock (the journal), then
    /// this, then the capacity lock.
    pub fn writer(&self) -> EngineWriter<'_> {
        let held = self.sole_writer.as_ref().map(|lock| lock.lock().unwrap_or_else(|poison| poison.into_inner()));
        EngineWriter { engine: self, held, _one_thread: std::marker::PhantomData }
    }
}

impl EngineWriter<'_> {
    /// `Engine::reserve_at`.
    #[inline]
    pub fn reserve_at(&self, journal: &impl Journal, request: &BookingRequest, moment: &Moment) -> Outcome<SlotIndex> {
        let (engine, home) = (self.engine, self.engine.people.home(request.person));
        match self.held {
            Some(_) => engine.reserve_inlined::<Sole>(journal, request, moment, home),
            None => engine.reserve_inlined::<Shared>(journal, request, moment, home),
        }
    }

    /// `reserve_at` for each of `requests` in order, each outcome handed to
    /// `outcome` with its request as it comes, the lines of the requests
    /// asked for a group of `PREFETCH_AHEAD` at a time, one group ahead
    /// (`crate::visit_prefetched`): the loop of `Engine::reserve_batch` and
    /// of the server's batches of reservations (`server::apply`). `outcome`
    /// runs under this writer: it must not call `Engine`'s command methods.
    #[inline]
    pub fn reserve_each(
        &self,
        journal: &impl Journal,
        requests: &[BookingRequest],
        moment: &Moment,
        outcome: impl FnMut(&BookingRequest, Outcome<SlotIndex>),
    ) {
        match self.held {
            Some(_) => self.engine.reserve_each_as::<Sole>(journal, requests, moment, outcome),
            None => self.engine.reserve_each_as::<Shared>(journal, requests, moment, outcome),
        }
    }

    /// `Engine::replay`, under this writer: recovery replays a log holding
    /// one writer of a sole-writer engine, so no lock is taken per entry, and
    /// a new person's bucket, the people count and a seat taken are stores
    /// (a person already in the table is still latched with a
    /// compare-exchange, a seat given back is an atomic add: "Writers").
    #[inline]
    pub fn replay(&self, lsn: Lsn, entry: &Entry) -> Result<(), ReplayError> {
        match self.held {
            Some(_) => self.engine.replay_checked_as::<Sole>(entry),
            None => self.engine.replay_checked_as::<Shared>(entry),
        }
        .map_err(|defect| explain(lsn, defect))
    }

    /// `Engine::replay_in_window`, under this writer: a sole writer's claims
    /// new people and takes seats with stores, as `replay` does.
    #[inline]
    pub fn replay_in_window(&self, lsn: Lsn, entry: &Entry, touched: &mut Vec<u32>) -> Result<(), ReplayError> {
        match self.held {
            Some(_) => self.engine.replay_in_window_checked_as::<Sole>(entry, touched),
            None => self.engine.replay_in_window_checked_as::<Shared>(entry, touched),
        }
        .map_err(|defect| explain(lsn, defect))
    }

    /// `Engine::change_at`.
    pub fn change_at(&self, journal: &impl Journal, request: &BookingRequest, moment: &Moment) -> Outcome<SlotIndex> {
        match self.held {
            Some(_) => self.engine.change_at_as::<Sole>(journal, request, moment),
            None => self.engine.change_at_as::<Shared>(journal, request, moment),
        }
    }

    /// `Engine::cancel_at`.
    pub fn cancel_at(&self, journal: &impl Journal, request: &CancelRequest, moment: &Moment) -> Outcome<SlotIndex> {
        self.engine.cancel_at_held(journal, request, moment)
    }

    /// `Engine::add_capacity`: the same for both kinds of writer (capacity
    /// changes hold the engine's capacity lock).
    pub fn add_capacity(&self, journal: &impl Journal, change: &CapacityChange) -> Outcome<u32> {
        self.engine.add_capacity_held(journal, change)
    }
}
