//! The state machine: inventory counters, people, reservations. Pure: no I/O,
//! no clock (time is an argument), no allocation on the booking path.

pub mod engine;
pub mod entry;
pub mod people;
pub mod queries;
pub mod refusal;
pub mod replay;
pub mod restore;
pub mod slot_counters;

pub use engine::{BookingRequest, CancelRequest, Engine, EngineWriter, Moment, Outcome};
pub use entry::{CountingJournal, Entry, Journal, Lsn, MemoryJournal};
pub use people::{CommandKind, LastCommand, PeopleTable, PersonKey, PersonRecord};
pub use queries::{LogicalState, RegionPage, SiteAvailability};
pub use refusal::{LogUnavailable, Refusal, ResultCode};
pub use replay::ReplayError;
pub use slot_counters::{SlotCounters, SLOT_CAPACITY_MAX};

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

/// One writer, holding the engine's writer lock (`Writers`).
pub(crate) enum Sole {}

impl Writers for Shared {
    const SOLE: bool = false;
}

impl Writers for Sole {
    const SOLE: bool = true;
}
