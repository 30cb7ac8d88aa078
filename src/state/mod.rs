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
pub mod writer;

pub use engine::{BookingRequest, CancelRequest, CapacityChange, Engine, Moment, Outcome};
pub use entry::{CountingJournal, Entry, Journal, Lsn, MemoryJournal};
pub use people::{CommandKind, LastCommand, PeopleTable, PersonKey, PersonRecord};
pub use queries::{LogicalState, RegionPage, SiteAvailability};
pub use refusal::{LogUnavailable, Refusal, ResultCode};
pub use replay::ReplayError;
pub use slot_counters::{SlotCounters, SLOT_CAPACITY_MAX};
pub use writer::EngineWriter;
pub(crate) use writer::{Shared, Writers};
