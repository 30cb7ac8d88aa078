//! Every person who has booked (or tried to), keyed by the 128-bit person key.
//!
//! A fixed-capacity open-addressing table with linear probing by cache
//! line (a line's two buckets first, then on from the next line), 32 bytes a
//! bucket, sized at start-up (`limits.people_max`) and never resized, so no
//! request ever allocates or rehashes. Buckets are only ever added, never
//! removed: a cancelled reservation leaves the person's bucket in place, with
//! the idempotency record of the cancel.
//!
//! Two kinds of writer (`state::Writers`): in a shared engine, the scheme
//! below; a sole-writer engine's one writer at a time claims empty buckets
//! and counts people with plain stores, and latches existing people as below
//! (readers latch them too).
//!
//! Uniqueness without a global lock: each bucket carries a *latch* bit in its
//! state word. A command on a person sets the latch with a compare-exchange,
//! reads and changes the person, and clears it with a release store. Two
//! commands on the same person are therefore serialized; commands on different
//! people never wait on each other.
//!
//! Insertion (after the crossbeam `ArrayQueue` style of publishing with a
//! state word): an empty bucket (state 0) is claimed by a compare-exchange to
//! `LATCHED`; the claimer writes the key words and runs its command, and the
//! commit stores `PUBLISHED | ...` with release ordering. A prober that finds
//! a claimed but unpublished bucket waits for the publication before
//! comparing keys, so the same key can never be inserted twice (every search
//! of a key walks the same buckets in the same order, `find`). A command
//! refused before its commit (a full slot, say) empties the claim again, so a
//! person is in the table only once a command of theirs was applied: the
//! table after a restart, which replays only applied commands, is the same.

use crossbeam_utils::CachePadded;

use crate::inventory::SlotIndex;
use crate::state::{Shared, Writers};
use crate::sync::{AtomicU64, Ordering};

/// A person as the engine knows them: the gateway's keyed hash of the resident
/// number (R7: the engine never sees the number itself). Zero is not a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PersonKey(pub u128);

/// The kind of the last command applied to a person, kept for idempotency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommandKind {
    Reserve = 1,
    Cancel = 2,
    Change = 3,
}

/// What the table holds for one person.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PersonRecord {
    /// The slot the person holds, if any.
    pub holds: Option<SlotIndex>,
    /// The last applied command, its idempotency key, and the slot it named
    /// (for a cancel: the slot given up).
    pub last: Option<LastCommand>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LastCommand {
    pub kind: CommandKind,
    pub idempotency_key: u64,
    pub slot: SlotIndex,
}

impl PersonRecord {
    pub const NEW: PersonRecord = PersonRecord { holds: None, last: None };
}

/// A person's home bucket in the table (`PeopleTable::home`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Home(u64);

/// The table refused a new person: it holds `people_max` already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeopleTableFull {
    pub people_max: u64,
}

// State word layout (u64):
//   bit 63      PUBLISHED: the key words are written and may be compared
//   bit 62      LATCHED: a command (or the inserter) owns the person
//   bit 61      HOLDS: the person holds the slot in bits 0..32
//   bits 32..34 the last command's kind (0: none)
//   bits 0..32  the slot of the last command (held, or given up by a cancel)
// An empty bucket is 0. The idempotency key lives in its own word, written
// only under the latch.
const PUBLISHED: u64 = 1 << 63;
const LATCHED: u64 = 1 << 62;
const HOLDS: u64 = 1 << 61;
const KIND_SHIFT: u32 = 32;
const KIND_MASK: u64 = 0b11 << KIND_SHIFT;
const SLOT_MASK: u64 = u32::MAX as u64;

#[inline]
fn encode(record: PersonRecord) -> u64 {
    let (kind, slot) = match record.last {
        Some(last) => (last.kind as u64, last.slot.0),
        None => (0, record.holds.map_or(0, |s| s.0)),
    };
    debug_assert!(record.holds.is_none() || record.holds.map(|s| s.0) == Some(slot));
    let holds = if record.holds.is_some() { HOLDS } else { 0 };
    PUBLISHED | holds | (kind << KIND_SHIFT) | u64::from(slot)
}

#[inline]
fn decode(state: u64, idempotency_key: u64) -> PersonRecord {
    let slot = SlotIndex((state & SLOT_MASK) as u32);
    let kind = match (state & KIND_MASK) >> KIND_SHIFT {
        1 => Some(CommandKind::Reserve),
        2 => Some(CommandKind::Cancel),
        3 => Some(CommandKind::Change),
        _ => None,
    };
    PersonRecord {
        holds: (state & HOLDS != 0).then_some(slot),
        last: kind.map(|kind| LastCommand { kind, idempotency_key, slot }),
    }
}

#[repr(C, align(32))]
struct Bucket {
    key_low: AtomicU64,
    key_high: AtomicU64,
    state: AtomicU64,
    idempotency_key: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 32 || cfg!(feature = "shuttle"));

impl Bucket {
    fn key(&self) -> PersonKey {
        let low = self.key_low.load(Ordering::Relaxed);
        let high = self.key_high.load(Ordering::Relaxed);
        PersonKey(u128::from(high) << 64 | u128::from(low))
    }
}

pub struct PeopleTable {
    buckets: Buckets,
    bucket_mask: u64,
    people_max: u64,
    /// People the table holds or is adding: counted when their bucket is
    /// claimed (so that `people_max` is never passed, however many threads
    /// add people at once), uncounted by `abandon` when the command adding
    /// them is refused.
    people_count: CachePadded<AtomicU64>,
}

/// Exclusive access to one person until dropped or committed.
///
/// Two words (the bucket and its state before the latch), so that it travels
/// in registers; the record is decoded only when asked for. A person new to
/// the table is latched in a claimed bucket whose key is not yet published
/// (`state_before` 0): `commit` publishes them, and
/// `PeopleTable::abandon` (the command was refused) gives the bucket back and
/// uncounts them, so that a refused command leaves no trace, as after a
/// restart. A plain drop gives the bucket back but keeps the count (the
/// table then refuses a new person one early, never one late): only paths
/// that end start-up with an error drop a new person's latch. While a new
/// person's latch is held, probes that reach its bucket wait: a thread holding
/// one must not latch or add anyone else before committing or abandoning it.
pub struct PersonLatch<'table> {
    bucket: &'table Bucket,
    state_before: u64,
}

impl PersonLatch<'_> {
    #[inline]
    pub fn record(&self) -> PersonRecord {
        // Written only under the latch, which this thread holds (acquired).
        let idempotency_key =
            if self.state_before & KIND_MASK == 0 { 0 } else { self.bucket.idempotency_key.load(Ordering::Relaxed) };
        decode(self.state_before, idempotency_key)
    }

    /// Stores the person's new record and releases the latch; a new person
    /// is published.
    #[inline]
    pub fn commit(self, record: PersonRecord) {
        let key = record.last.map_or(0, |l| l.idempotency_key);
        self.bucket.idempotency_key.store(key, Ordering::Relaxed);
        self.bucket.state.store(encode(record), Ordering::Release);
        std::mem::forget(self);
    }
}

impl Drop for PersonLatch<'_> {
    /// Releases the latch, the record unchanged. A new person's claim (state
    /// 0 before) is emptied: nobody compared its key or probed past it
    /// (probers wait for a claimed bucket), so the bucket is free again.
    #[inline]
    fn drop(&mut self) {
        self.bucket.state.store(self.state_before, Ordering::Release);
    }
}

impl PeopleTable {
    /// A table for up to `people_max` people, with buckets to spare so that
    /// probes stay short (load factor at most 7/8).
    pub fn new(people_max: u64) -> PeopleTable {
        let bucket_count = Self::bucket_count(people_max);
        // Every page is faulted in now (src/memory.rs), not by the first
        // booking into it in the middle of a flash crowd.
        let buckets = allocate_buckets(bucket_count as usize);
        PeopleTable {
            buckets,
            bucket_mask: bucket_count - 1,
            people_max,
            people_count: CachePadded::new(AtomicU64::new(0)),
        }
    }

    fn bucket_count(people_max: u64) -> u64 {
        (people_max + people_max / 7).max(8).next_power_of_two()
    }

    /// The memory a table for `people_max` people takes (all of it faulted
    /// in at start-up).
    pub fn table_bytes(people_max: u64) -> u64 {
        Self::bucket_count(people_max).saturating_mul(std::mem::size_of::<Bucket>() as u64)
    }

    pub fn len(&self) -> u64 {
        self.people_count.load(Ordering::Relaxed).min(self.people_max)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where a person's search starts: computed once by a batch loop for the
    /// prefetch and kept for the lookup that follows it (the hash is about
    /// 15 instructions).
    #[inline]
    pub fn home(&self, key: PersonKey) -> Home {
        Home(crate::mix64((key.0 as u64) ^ (key.0 >> 64) as u64) & self.bucket_mask)
    }

    /// Asks the CPU to bring the bucket at `home` into cache.
    #[inline]
    pub fn prefetch_home(&self, home: Home) {
        crate::prefetch(self.bucket(home.0 & self.bucket_mask));
    }

    /// Waits for a claimed bucket's key to be published; returns its state.
    fn published_state(bucket: &Bucket) -> u64 {
        loop {
            let state = bucket.state.load(Ordering::Acquire);
            if state == 0 || state & PUBLISHED != 0 {
                return state;
            }
            crate::sync::spin_wait();
        }
    }

    #[inline]
    fn bucket(&self, index: u64) -> &Bucket {
        debug_assert!(index <= self.bucket_mask);
        // SAFETY: every index is masked with `bucket_mask`, and the table has
        // `bucket_mask + 1` buckets (a power of two).
        unsafe { self.buckets.get_unchecked(index as usize) }
    }

    /// Finds the person's bucket, or the empty bucket where they would go,
    /// searching from `home` (`home(key)`; masked again, so that a `Home`
    /// of another table can only cost a longer search, never a wild read).
    ///
    /// The search goes line by line (two 32-byte buckets a 64-byte line),
    /// and within each line takes first the bucket on the home's side: from
    /// an even home 6, 7, 8, 9, ...; from an odd home 7, 6, 9, 8, ... So the
    /// one line prefetched (`prefetch_home`) answers a search that meets one
    /// occupied bucket, where plain linear probing from an odd home would
    /// miss the cache on the next line. The order depends on the home alone:
    /// an insert and every later search of the same key walk the same buckets.
    #[inline]
    fn find(&self, key: PersonKey, home: Home) -> (&Bucket, u64) {
        let (low, high) = (key.0 as u64, (key.0 >> 64) as u64);
        let first = home.0 & self.bucket_mask;
        let side = first & 1;
        // Counts up from the home line's first bucket; `^ side` swaps each pair.
        let mut cursor = first ^ side;
        loop {
            let bucket = self.bucket((cursor ^ side) & self.bucket_mask);
            let mut state = bucket.state.load(Ordering::Acquire);
            if state != 0 && state & PUBLISHED == 0 {
                state = Self::published_state(bucket);
            }
            if state == 0
                || (bucket.key_low.load(Ordering::Relaxed) == low && bucket.key_high.load(Ordering::Relaxed) == high)
            {
                return (bucket, state);
            }
            cursor += 1;
        }
    }

    #[inline]
    fn latch_bucket(bucket: &Bucket, mut state: u64) -> PersonLatch<'_> {
        loop {
            if state & LATCHED == 0 {
                let latched = state | LATCHED;
                match bucket.state.compare_exchange_weak(state, latched, Ordering::Acquire, Ordering::Relaxed) {
                    Ok(_) => return PersonLatch { bucket, state_before: state },
                    Err(now) => state = now,
                }
            } else {
                crate::sync::spin_wait();
                state = bucket.state.load(Ordering::Relaxed);
            }
        }
    }

    /// Latches a person the table already holds.
    #[inline]
    pub fn latch(&self, key: PersonKey) -> Option<PersonLatch<'_>> {
        let (bucket, state) = self.find(key, self.home(key));
        (state != 0).then(|| Self::latch_bucket(bucket, state))
    }

    /// Latches a person, adding them (with an empty record) if new.
    ///
    /// A new person's bucket is claimed, counted, and their key written,
    /// unpublished; a claim past `people_max` is undone (state back to 0) at
    /// once, and one whose command is refused by `abandon`, in both cases
    /// before the key is published. Undoing is safe because a prober that met
    /// the claimed bucket waited for it, and a key is only ever placed after
    /// (in its own search order, `find`) buckets holding *published* keys,
    /// which are never removed.
    #[inline]
    pub fn latch_or_insert(&self, key: PersonKey) -> Result<PersonLatch<'_>, PeopleTableFull> {
        self.latch_or_insert_from::<Shared>(key, self.home(key))
    }

    /// `latch_or_insert` with the person's `home` computed beforehand, by a
    /// writer of kind `W` (`Writers`). The sole writer claims an empty bucket
    /// and counts the person with stores: no other thread claims buckets or
    /// counts people meanwhile, and readers never latch an empty bucket. A
    /// person already in the table is latched with a compare-exchange in
    /// both cases, since readers latch them too (`get`, `for_each`).
    #[inline]
    pub(crate) fn latch_or_insert_from<W: Writers>(
        &self,
        key: PersonKey,
        home: Home,
    ) -> Result<PersonLatch<'_>, PeopleTableFull> {
        debug_assert!(key.0 != 0, "the engine refuses the zero key before this");
        loop {
            let (bucket, state) = self.find(key, home);
            if state != 0 {
                return Ok(Self::latch_bucket(bucket, state));
            }
            if W::SOLE {
                bucket.state.store(LATCHED, Ordering::Relaxed);
            } else if bucket.state.compare_exchange(0, LATCHED, Ordering::Acquire, Ordering::Relaxed).is_err() {
                // Another thread claimed this bucket first: look again, it may be our key.
                continue;
            }
            return self.count_claimed::<W>(bucket, key);
        }
    }

    /// Counts a new person into a bucket this thread claimed and writes their
    /// key, still latched and not yet published: `commit` publishes them.
    #[inline]
    fn count_claimed<'table, W: Writers>(
        &'table self,
        bucket: &'table Bucket,
        key: PersonKey,
    ) -> Result<PersonLatch<'table>, PeopleTableFull> {
        let counted = if W::SOLE {
            let counted = self.people_count.load(Ordering::Relaxed);
            self.people_count.store(counted + 1, Ordering::Relaxed);
            counted
        } else {
            self.people_count.fetch_add(1, Ordering::Relaxed)
        };
        if counted >= self.people_max {
            self.people_count.fetch_sub(1, Ordering::Relaxed);
            bucket.state.store(0, Ordering::Release);
            return Err(PeopleTableFull { people_max: self.people_max });
        }
        bucket.key_low.store(key.0 as u64, Ordering::Relaxed);
        bucket.key_high.store((key.0 >> 64) as u64, Ordering::Relaxed);
        Ok(PersonLatch { bucket, state_before: 0 })
    }

    /// Releases the latch of a command that was refused, the record
    /// unchanged; a new person's claim is emptied and uncounted.
    #[cold]
    pub fn abandon(&self, latch: PersonLatch<'_>) {
        if latch.state_before == 0 {
            self.people_count.fetch_sub(1, Ordering::Relaxed);
        }
        drop(latch);
    }

    /// Reads a person's record, waiting out a command in progress on them.
    pub fn get(&self, key: PersonKey) -> Option<PersonRecord> {
        self.latch(key).map(|latch| latch.record())
    }

    /// Calls `visit` for every person, each read under their latch. The latch
    /// is released before `visit` runs, so a slow visitor (a snapshot writing
    /// a chunk) never holds up a command on that person.
    pub fn for_each(&self, mut visit: impl FnMut(PersonKey, PersonRecord)) {
        for bucket in self.buckets.iter() {
            let state = Self::published_state(bucket);
            if state != 0 {
                let record = Self::latch_bucket(bucket, state).record();
                visit(bucket.key(), record);
            }
        }
    }
}

/// Buckets start zeroed (= empty), on huge pages where the OS gives them
/// (src/memory.rs): every command touches one bucket at random.
#[cfg(not(feature = "shuttle"))]
type Buckets = crate::memory::ZeroedArray<Bucket>;
#[cfg(feature = "shuttle")]
type Buckets = Box<[Bucket]>;

// SAFETY: a bucket is four `AtomicU64`s, valid as all zeros (the empty bucket).
#[cfg(not(feature = "shuttle"))]
unsafe impl crate::memory::Zeroable for Bucket {}

#[cfg(not(feature = "shuttle"))]
fn allocate_buckets(bucket_count: usize) -> Buckets {
    crate::memory::ZeroedArray::new(bucket_count)
}

#[cfg(feature = "shuttle")]
fn allocate_buckets(bucket_count: usize) -> Buckets {
    (0..bucket_count)
        .map(|_| Bucket {
            key_low: AtomicU64::new(0),
            key_high: AtomicU64::new(0),
            state: AtomicU64::new(0),
            idempotency_key: AtomicU64::new(0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserved(slot: u32, key: u64) -> PersonRecord {
        PersonRecord {
            holds: Some(SlotIndex(slot)),
            last: Some(LastCommand { kind: CommandKind::Reserve, idempotency_key: key, slot: SlotIndex(slot) }),
        }
    }

    #[test]
    fn insert_commit_get() {
        let table = PeopleTable::new(100);
        let alice = PersonKey(1);
        assert!(table.get(alice).is_none());
        let latch = table.latch_or_insert(alice).unwrap();
        assert_eq!(latch.record(), PersonRecord::NEW);
        latch.commit(reserved(42, 7));
        assert_eq!(table.get(alice), Some(reserved(42, 7)));
        // A latch dropped without commit leaves the record unchanged.
        drop(table.latch(alice).unwrap());
        assert_eq!(table.get(alice), Some(reserved(42, 7)));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn full_table_is_an_error_not_a_hang() {
        let table = PeopleTable::new(3);
        for key in 1..=3 {
            table.latch_or_insert(PersonKey(key)).unwrap().commit(reserved(key as u32, 1));
        }
        assert_eq!(table.latch_or_insert(PersonKey(4)).err(), Some(PeopleTableFull { people_max: 3 }));
        // People already present are still reachable.
        assert!(table.latch_or_insert(PersonKey(2)).is_ok());
    }

    #[test]
    fn a_new_person_whose_command_is_abandoned_leaves_no_trace() {
        // Two buckets for one person: every key probes into the same pair.
        let table = PeopleTable::new(1);
        let refused = table.latch_or_insert(PersonKey(5)).unwrap();
        assert_eq!(refused.record(), PersonRecord::NEW);
        assert_eq!(table.len(), 1, "counted while the command runs: no other may pass people_max");
        table.abandon(refused);
        assert_eq!((table.len(), table.get(PersonKey(5))), (0, None));
        // The room it took is free again: another person fits.
        table.latch_or_insert(PersonKey(6)).unwrap().commit(reserved(3, 1));
        assert_eq!(table.get(PersonKey(6)), Some(reserved(3, 1)));
        assert_eq!(table.latch_or_insert(PersonKey(5)).err(), Some(PeopleTableFull { people_max: 1 }));
        let mut seen = Vec::new();
        table.for_each(|key, _| seen.push(key));
        assert_eq!(seen, [PersonKey(6)]);
    }

    #[test]
    fn a_search_looks_at_its_line_first_then_on_line_by_line() {
        let table = &PeopleTable::new(50);
        let homed = |home: u64| (1..).map(PersonKey).filter(move |key| table.home(*key).0 == home);
        let sevens: Vec<PersonKey> = homed(7).take(3).collect();
        let six = homed(6).next().unwrap();
        for key in sevens.iter().chain([&six]) {
            table.latch_or_insert(*key).unwrap().commit(reserved(1, 1));
        }
        let position = |key: &PersonKey| table.buckets.iter().position(|bucket| bucket.key() == *key);
        // Home 7 (odd): 7, its line's 6, then 9, 8; home 6: 6, 7, 8.
        assert_eq!(sevens.iter().map(position).collect::<Vec<_>>(), [Some(7), Some(6), Some(9)]);
        assert_eq!(position(&six), Some(8));
    }

    #[test]
    fn people_who_share_a_home_are_each_found_and_kept_apart() {
        // 64 buckets; 40 people whose homes crowd into buckets 60..=63, odd
        // and even homes, so that searches run across lines and wrap past
        // the table's end to its start.
        let table = PeopleTable::new(50);
        assert_eq!(table.bucket_mask, 63);
        let crowd: Vec<PersonKey> =
            (1..).map(PersonKey).filter(|key| (60..=63).contains(&table.home(*key).0)).take(40).collect();
        for (n, key) in crowd.iter().enumerate() {
            table.latch_or_insert(*key).unwrap().commit(reserved(n as u32, n as u64 + 1));
        }
        for (n, key) in crowd.iter().enumerate() {
            assert_eq!(table.get(*key), Some(reserved(n as u32, n as u64 + 1)), "person {n}");
        }
        let absent = (1..).map(PersonKey).find(|key| table.home(*key).0 == 63 && !crowd.contains(key));
        assert_eq!(table.get(absent.unwrap()), None);
        assert_eq!(table.len(), 40);
        let wrapped = crowd.iter().filter(|key| table.buckets.iter().position(|b| b.key() == **key) < Some(60));
        assert!(wrapped.count() >= 36, "the crowd filled the table's start");
    }

    #[test]
    fn record_encoding_round_trips() {
        let cancelled = PersonRecord {
            holds: None,
            last: Some(LastCommand { kind: CommandKind::Cancel, idempotency_key: 9, slot: SlotIndex(u32::MAX - 1) }),
        };
        for record in [PersonRecord::NEW, reserved(0, 1), reserved(123, u64::MAX), cancelled] {
            let state = encode(record);
            assert_eq!(decode(state, record.last.map_or(0, |l| l.idempotency_key)), record);
        }
    }

    #[test]
    fn concurrent_inserts_of_the_same_people_make_one_bucket_each() {
        let table = PeopleTable::new(10_000);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for key in 1..=5_000u128 {
                        let latch = table.latch_or_insert(PersonKey(key)).unwrap();
                        let mut record = latch.record();
                        let count = record.last.map_or(0, |l| l.idempotency_key) + 1;
                        record.last = Some(LastCommand {
                            kind: CommandKind::Reserve,
                            idempotency_key: count,
                            slot: SlotIndex(0),
                        });
                        latch.commit(record);
                    }
                });
            }
        });
        assert_eq!(table.len(), 5_000);
        let mut seen = 0;
        table.for_each(|_, record| {
            seen += 1;
            assert_eq!(record.last.unwrap().idempotency_key, 4, "every increment kept");
        });
        assert_eq!(seen, 5_000);
    }
}
