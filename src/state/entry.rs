//! What the state machine writes to the log: one fixed-size entry per applied
//! state change. The log itself treats the 32 payload bytes as opaque; the
//! layouts below are documented in docs/log-format.md ("Entry payloads").
//!
//! Entries state facts in absolute terms ("this person now holds slot S"), so
//! replaying them needs no clock and no campaign rules: only the inventory.

use crate::inventory::SlotIndex;
use crate::state::people::PersonKey;
use crate::state::refusal::LogUnavailable;

/// A log sequence number: the position of a record in the whole log, from 1.
pub type Lsn = u64;

pub const ENTRY_PAYLOAD_BYTES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Entry {
    /// The person took `slot` (they held none).
    Reserved { person: PersonKey, slot: SlotIndex, idempotency_key: u64, operator_id: u32 },
    /// The person gave up `slot`.
    Cancelled { person: PersonKey, slot: SlotIndex, idempotency_key: u64, operator_id: u32 },
    /// The person moved to `slot`, giving up the slot they held.
    Changed { person: PersonKey, slot: SlotIndex, idempotency_key: u64, operator_id: u32 },
    /// `slot` now has `capacity` seats, `seats` more than before.
    CapacityAdded { slot: SlotIndex, seats: u32, capacity: u32, operator_id: u32 },
}

/// One line a person reads: `person 0x1 reserved slot #7 (idempotency key 9)`,
/// with `, by operator N` for an operator's booking.
impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (operator_id, text) = match *self {
            Entry::Reserved { person, slot, idempotency_key, operator_id } => {
                (operator_id, format!("person {:#x} reserved {slot} (idempotency key {idempotency_key})", person.0))
            }
            Entry::Cancelled { person, slot, idempotency_key, operator_id } => (
                operator_id,
                format!("person {:#x} cancelled, gave up {slot} (idempotency key {idempotency_key})", person.0),
            ),
            Entry::Changed { person, slot, idempotency_key, operator_id } => {
                (operator_id, format!("person {:#x} changed to {slot} (idempotency key {idempotency_key})", person.0))
            }
            Entry::CapacityAdded { slot, seats, capacity, operator_id } => {
                (operator_id, format!("{slot} got {seats} seats more, {capacity} in all"))
            }
        };
        f.write_str(&text)?;
        if operator_id != 0 {
            write!(f, ", by operator {operator_id}")?;
        }
        Ok(())
    }
}

pub mod kind {
    pub const RESERVED: u8 = 1;
    pub const CANCELLED: u8 = 2;
    pub const CHANGED: u8 = 3;
    pub const CAPACITY_ADDED: u8 = 4;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("unknown entry type {0}")]
    UnknownKind(u8),
    #[error("entry of type {kind} has non-zero padding")]
    Padding { kind: u8 },
    #[error("entry names the zero person key")]
    ZeroPerson,
}

fn u32_at(bytes: &[u8; ENTRY_PAYLOAD_BYTES], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8; ENTRY_PAYLOAD_BYTES], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

impl Entry {
    /// The slot the entry is about.
    pub fn slot(&self) -> SlotIndex {
        match *self {
            Entry::Reserved { slot, .. }
            | Entry::Cancelled { slot, .. }
            | Entry::Changed { slot, .. }
            | Entry::CapacityAdded { slot, .. } => slot,
        }
    }

    pub fn kind(&self) -> u8 {
        match self {
            Entry::Reserved { .. } => kind::RESERVED,
            Entry::Cancelled { .. } => kind::CANCELLED,
            Entry::Changed { .. } => kind::CHANGED,
            Entry::CapacityAdded { .. } => kind::CAPACITY_ADDED,
        }
    }

    /// Person entries: person key u128 | slot u32 | operator u32 | idempotency key u64.
    /// Capacity entries: slot u32 | seats u32 | capacity u32 | operator u32 | 16 zero bytes.
    #[inline]
    pub fn encode(&self) -> [u8; ENTRY_PAYLOAD_BYTES] {
        let mut bytes = [0; ENTRY_PAYLOAD_BYTES];
        match *self {
            Entry::Reserved { person, slot, idempotency_key, operator_id }
            | Entry::Cancelled { person, slot, idempotency_key, operator_id }
            | Entry::Changed { person, slot, idempotency_key, operator_id } => {
                bytes[0..16].copy_from_slice(&person.0.to_le_bytes());
                bytes[16..20].copy_from_slice(&slot.0.to_le_bytes());
                bytes[20..24].copy_from_slice(&operator_id.to_le_bytes());
                bytes[24..32].copy_from_slice(&idempotency_key.to_le_bytes());
            }
            Entry::CapacityAdded { slot, seats, capacity, operator_id } => {
                bytes[0..4].copy_from_slice(&slot.0.to_le_bytes());
                bytes[4..8].copy_from_slice(&seats.to_le_bytes());
                bytes[8..12].copy_from_slice(&capacity.to_le_bytes());
                bytes[12..16].copy_from_slice(&operator_id.to_le_bytes());
            }
        }
        bytes
    }

    /// The person and slot a person entry's payload names, read without any
    /// check: for prefetching only (garbage in, a useless prefetch out).
    pub fn touched_unchecked(bytes: &[u8; ENTRY_PAYLOAD_BYTES]) -> (PersonKey, u32) {
        let mut key = [0; 16];
        key.copy_from_slice(&bytes[0..16]);
        (PersonKey(u128::from_le_bytes(key)), u32_at(bytes, 16))
    }

    #[inline]
    pub fn decode(kind: u8, bytes: &[u8; ENTRY_PAYLOAD_BYTES]) -> Result<Entry, EntryError> {
        if kind == kind::CAPACITY_ADDED {
            if bytes[16..].iter().any(|b| *b != 0) {
                return Err(EntryError::Padding { kind });
            }
            return Ok(Entry::CapacityAdded {
                slot: SlotIndex(u32_at(bytes, 0)),
                seats: u32_at(bytes, 4),
                capacity: u32_at(bytes, 8),
                operator_id: u32_at(bytes, 12),
            });
        }
        let mut key = [0; 16];
        key.copy_from_slice(&bytes[0..16]);
        let person = PersonKey(u128::from_le_bytes(key));
        if person.0 == 0 {
            return Err(EntryError::ZeroPerson);
        }
        let slot = SlotIndex(u32_at(bytes, 16));
        let operator_id = u32_at(bytes, 20);
        let idempotency_key = u64_at(bytes, 24);
        match kind {
            kind::RESERVED => Ok(Entry::Reserved { person, slot, idempotency_key, operator_id }),
            kind::CANCELLED => Ok(Entry::Cancelled { person, slot, idempotency_key, operator_id }),
            kind::CHANGED => Ok(Entry::Changed { person, slot, idempotency_key, operator_id }),
            other => Err(EntryError::UnknownKind(other)),
        }
    }
}

/// Where the state machine hands its entries to be made durable.
///
/// `append` only queues the entry in memory and draws its sequence number: the
/// state machine does no I/O. The caller releases a command's answer once the
/// log reports every record before `Outcome::durable_after` durable.
pub trait Journal {
    fn append(&self, entry: &Entry) -> Result<Lsn, LogUnavailable>;
    /// The sequence number the next `append` will draw.
    fn next_lsn(&self) -> Lsn;
    /// Whether appends are accepted right now (checked before a command changes anything).
    fn writable(&self) -> Result<(), LogUnavailable>;
}

/// A journal that only counts: for tests and benchmarks that say "durability off".
#[derive(Debug)]
pub struct CountingJournal {
    next_lsn: crossbeam_utils::CachePadded<std::sync::atomic::AtomicU64>,
}

impl Default for CountingJournal {
    fn default() -> Self {
        CountingJournal { next_lsn: crossbeam_utils::CachePadded::new(1.into()) }
    }
}

impl Journal for CountingJournal {
    fn append(&self, _entry: &Entry) -> Result<Lsn, LogUnavailable> {
        Ok(self.next_lsn.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
    fn next_lsn(&self) -> Lsn {
        self.next_lsn.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn writable(&self) -> Result<(), LogUnavailable> {
        Ok(())
    }
}

/// A journal that keeps every entry in memory, in sequence order: for tests.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    entries: std::sync::Mutex<Vec<Entry>>,
}

impl MemoryJournal {
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().expect("no test panics while holding it").clone()
    }
}

impl Journal for MemoryJournal {
    fn append(&self, entry: &Entry) -> Result<Lsn, LogUnavailable> {
        let mut entries = self.entries.lock().expect("no test panics while holding it");
        entries.push(*entry);
        Ok(entries.len() as Lsn)
    }
    fn next_lsn(&self) -> Lsn {
        self.entries.lock().expect("no test panics while holding it").len() as Lsn + 1
    }
    fn writable(&self) -> Result<(), LogUnavailable> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let person = PersonKey(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
        let entries = [
            Entry::Reserved { person, slot: SlotIndex(7), idempotency_key: 99, operator_id: 0 },
            Entry::Cancelled { person, slot: SlotIndex(7), idempotency_key: 100, operator_id: 3 },
            Entry::Changed { person, slot: SlotIndex(u32::MAX - 1), idempotency_key: u64::MAX, operator_id: 0 },
            Entry::CapacityAdded { slot: SlotIndex(5), seats: 10, capacity: 12, operator_id: 1 },
        ];
        for entry in entries {
            assert_eq!(Entry::decode(entry.kind(), &entry.encode()), Ok(entry));
        }
        assert_eq!(Entry::decode(9, &[1; 32]), Err(EntryError::UnknownKind(9)));
        assert_eq!(Entry::decode(kind::RESERVED, &[0; 32]), Err(EntryError::ZeroPerson));
    }

    #[test]
    fn reserved_entry_bytes_are_as_documented() {
        let entry =
            Entry::Reserved { person: PersonKey(1), slot: SlotIndex(0x0403_0201), idempotency_key: 5, operator_id: 0 };
        let mut expected = [0u8; 32];
        expected[0] = 1;
        expected[16..20].copy_from_slice(&[1, 2, 3, 4]);
        expected[24] = 5;
        assert_eq!(entry.encode(), expected);
    }
}
