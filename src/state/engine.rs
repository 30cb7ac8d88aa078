//! The booking state machine: reserve, cancel, change, capacity (R1–R6, R10).
//!
//! Every method takes `now_ms` as an argument and the `Journal` to hand its
//! entries to; it reads no clock and does no I/O. Methods take `&self`: many
//! threads may call them at once. In a shared engine (`Engine::new`)
//! per-person commands are serialized by the person's latch (see
//! `people.rs`), slots by their atomic counters; a sole-writer engine
//! (`into_sole_writer`) serializes its changes with one writer lock and
//! changes the tables without locked instructions (docs/architecture.md,
//! "Writers").
//!
//! Each state change follows *take, log, give*: capacity is taken before the
//! entry is appended, and given back after. docs/log-format.md explains why
//! that makes the log order a valid serial order of what happened.

use std::sync::Mutex;

use crate::calendar::Date;
use crate::config::CampaignRules;
use crate::inventory::{Inventory, SlotIndex};
use crate::rules::{BookingMoment, Channel};
use crate::state::entry::{Entry, Journal, Lsn};
use crate::state::people::{CommandKind, Home, LastCommand, PeopleTable, PersonKey, PersonLatch, PersonRecord};
use crate::state::refusal::Refusal;
use crate::state::slot_counters::SlotCounters;
use crate::state::writer::Writers;

/// A reservation or change request, as the gateway sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BookingRequest {
    pub person: PersonKey,
    pub birth_date: Date,
    pub slot: SlotIndex,
    pub idempotency_key: u64,
    pub channel: Channel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CancelRequest {
    pub person: PersonKey,
    pub birth_date: Date,
    pub idempotency_key: u64,
    pub channel: Channel,
}

/// An operator's capacity change (`Engine::add_capacity`): `seats` more in
/// `slot`, whose capacity the operator saw as `expected_capacity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CapacityChange {
    pub slot: SlotIndex,
    pub seats: u32,
    pub expected_capacity: u32,
    /// The operator the log records as making the change (R10).
    pub operator_id: u32,
}

impl CapacityChange {
    /// Whether `Engine::add_capacity` of this change only reads the capacity
    /// (zero seats), and logs nothing.
    pub fn only_reads(&self) -> bool {
        self.seats == 0
    }
}

/// What a command did, and when its answer may be released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome<T> {
    pub result: Result<T, Refusal>,
    /// Release the answer once every log record with a smaller number is durable.
    pub durable_after: Lsn,
}

/// What the engine needs to know about one instant, computed once for all
/// the commands applied at it (`Engine::booking_moment`): the booking rules'
/// time-dependent part, and which slots have begun.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moment {
    pub booking: BookingMoment,
    /// See `Inventory::slots_begun_per_site`.
    slots_begun_per_site: u32,
}

impl Moment {
    pub fn now_ms(&self) -> i64 {
        self.booking.now_ms
    }
}

/// How many commands at a time `reserve_batch` and the server's engine
/// thread ask for the cache lines they will touch (a person bucket and a slot
/// cell, at random in tables of GiBs), one such group ahead of the one booked,
/// so that their misses overlap (`visit_prefetched`). As a distance, 8 was
/// measured against 16 in docs/benchmarks.md ("The last series"); as a group,
/// against 4 and 16 ("Prefetching a group at a time").
pub const PREFETCH_AHEAD: usize = 8;

pub struct Engine {
    rules: CampaignRules,
    inventory: Inventory,
    pub(crate) slots: SlotCounters,
    pub(crate) people: PeopleTable,
    /// Serializes capacity changes (rare, operator-driven) with each other.
    pub(crate) capacity_changes: Mutex<()>,
    /// `Some` in a sole-writer engine (`into_sole_writer`): the writer lock
    /// every change holds.
    pub(super) sole_writer: Option<crate::sync::Mutex<()>>,
}

impl Engine {
    /// An engine any number of threads may change at once: every change to
    /// its tables is an atomic read-modify-write, and no command waits for
    /// another unless both are on the same person.
    pub fn new(rules: CampaignRules, inventory: Inventory) -> Engine {
        let slots = SlotCounters::new(inventory.initial_capacity());
        let people = PeopleTable::new(rules.people_max);
        Engine { rules, inventory, slots, people, capacity_changes: Mutex::new(()), sole_writer: None }
    }

    pub fn rules(&self) -> &CampaignRules {
        &self.rules
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    pub fn people_count(&self) -> u64 {
        self.people.len()
    }

    /// Checks that hold whatever the person's history: keys, slot, time,
    /// rules, and that the log takes records.
    #[inline(always)]
    fn check_booking(&self, journal: &impl Journal, request: &BookingRequest, moment: &Moment) -> Result<(), Refusal> {
        let slot = request.slot;
        let slot_ok = self.inventory.contains(slot) && !self.slot_begun(slot, moment);
        if request.person.0 == 0 || request.idempotency_key == 0 || !slot_ok {
            return Err(self.booking_refusal(request));
        }
        self.rules.check_booking_at(&moment.booking, request.birth_date, request.channel)?;
        journal.writable().map_err(Refusal::LogUnavailable)
    }

    /// Which of `check_booking`'s first checks refused, in their documented order.
    #[cold]
    fn booking_refusal(&self, request: &BookingRequest) -> Refusal {
        if let Err(refusal) = check_keys(request.person, request.idempotency_key) {
            return refusal;
        }
        if !self.inventory.contains(request.slot) {
            return Refusal::UnknownSlot { slot: request.slot.0 };
        }
        Refusal::SlotInPast { slot: request.slot }
    }

    /// Whether the appointment of `slot` (in the inventory) has begun at `moment`.
    #[inline]
    pub(super) fn slot_begun(&self, slot: SlotIndex, moment: &Moment) -> bool {
        self.inventory.position_in_site(slot) < moment.slots_begun_per_site
    }

    /// A retry of the person's last applied command gets that command's answer.
    /// `None`: not a retry, go on.
    fn replayed_answer(
        record: &PersonRecord,
        kind: CommandKind,
        idempotency_key: u64,
        slot: Option<SlotIndex>,
    ) -> Option<Result<SlotIndex, Refusal>> {
        let last = record.last?;
        if last.idempotency_key != idempotency_key {
            return None;
        }
        let same = last.kind == kind && slot.is_none_or(|s| s == last.slot);
        Some(if same { Ok(last.slot) } else { Err(Refusal::IdempotencyKeyReused { idempotency_key }) })
    }

    /// A refused command may still be the retry of an applied one: look that up
    /// before refusing (the first answer wins, R3).
    #[cold]
    fn refuse_unless_retry(
        &self,
        journal: &impl Journal,
        refusal: Refusal,
        person: PersonKey,
        kind: CommandKind,
        idempotency_key: u64,
        slot: Option<SlotIndex>,
    ) -> Outcome<SlotIndex> {
        let replayed = match refusal {
            Refusal::InvalidPersonKey | Refusal::InvalidIdempotencyKey => None,
            _ => self.people.get(person).and_then(|record| Self::replayed_answer(&record, kind, idempotency_key, slot)),
        };
        Outcome { result: replayed.unwrap_or(Err(refusal)), durable_after: journal.next_lsn() }
    }

    fn appended(
        journal: &impl Journal,
        latch: PersonLatch<'_>,
        entry: &Entry,
        record: PersonRecord,
        slot: SlotIndex,
    ) -> Result<Outcome<SlotIndex>, Refusal> {
        let lsn = journal.append(entry).map_err(Refusal::LogUnavailable)?;
        latch.commit(record);
        Ok(Outcome { result: Ok(slot), durable_after: lsn + 1 })
    }

    /// What holds at `now_ms` for every command, for the `…_at` commands.
    pub fn booking_moment(&self, now_ms: i64) -> Moment {
        Moment { booking: self.rules.moment(now_ms), slots_begun_per_site: self.inventory.slots_begun_per_site(now_ms) }
    }

    /// Books `request.slot` for a person who holds nothing (R2, R3).
    pub fn reserve(&self, journal: &impl Journal, request: &BookingRequest, now_ms: i64) -> Outcome<SlotIndex> {
        self.writer().reserve_at(journal, request, &self.booking_moment(now_ms))
    }

    /// Books many requests stamped with the same time, as a batch frame
    /// carries them: the rules' time-dependent part is computed once, and the
    /// person buckets and slot counters of the requests are prefetched a group
    /// at a time, one group ahead, so that their cache misses overlap.
    pub fn reserve_batch(
        &self,
        journal: &impl Journal,
        requests: &[BookingRequest],
        now_ms: i64,
        outcomes: &mut Vec<Outcome<SlotIndex>>,
    ) {
        let moment = self.booking_moment(now_ms);
        self.writer().reserve_each(journal, requests, &moment, |_, outcome| outcomes.push(outcome));
    }

    /// `EngineWriter::reserve_each`, for a writer of kind `W`.
    #[inline(always)]
    pub(super) fn reserve_each_as<W: Writers>(
        &self,
        journal: &impl Journal,
        requests: &[BookingRequest],
        moment: &Moment,
        mut outcome: impl FnMut(&BookingRequest, Outcome<SlotIndex>),
    ) {
        // Each person's home bucket is hashed once, when prefetched, and
        // kept until the request is booked.
        crate::visit_prefetched::<_, _, PREFETCH_AHEAD>(
            requests,
            |request| self.prefetch_lines(request.person, request.slot.0),
            |request, home| outcome(request, self.reserve_inlined::<W>(journal, request, moment, home)),
        );
    }

    /// Asks the CPU for the cache lines a command on `person` and `slot` will touch.
    #[inline]
    pub fn prefetch_person_and_slot(&self, person: PersonKey, slot: u32) {
        self.prefetch_lines(person, slot);
    }

    /// Both prefetches: the person's home bucket (returned, for the lookup
    /// that follows) and the slot's counter.
    #[inline]
    fn prefetch_lines(&self, person: PersonKey, slot: u32) -> Home {
        let home = self.people.home(person);
        self.people.prefetch_home(home);
        self.slots.prefetch(slot);
        home
    }

    /// `reserve` with the rules' time-dependent part computed beforehand
    /// (`booking_moment`), as a caller applying many commands at one instant does.
    pub fn reserve_at(&self, journal: &impl Journal, request: &BookingRequest, moment: &Moment) -> Outcome<SlotIndex> {
        self.writer().reserve_at(journal, request, moment)
    }

    /// `reserve_at`, inlined into the batch loop (`reserve_each`): called,
    /// it cost about 28 instructions a reservation in saving registers and
    /// passing its outcome through memory (callgrind, the server's batches).
    /// `home` is the person's home bucket (`PeopleTable::home`).
    #[inline(always)]
    pub(super) fn reserve_inlined<W: Writers>(
        &self,
        journal: &impl Journal,
        request: &BookingRequest,
        moment: &Moment,
        home: Home,
    ) -> Outcome<SlotIndex> {
        let BookingRequest { person, slot, idempotency_key, .. } = *request;
        if let Err(refusal) = self.check_booking(journal, request, moment) {
            let kind = CommandKind::Reserve;
            return self.refuse_unless_retry(journal, refusal, person, kind, idempotency_key, Some(slot));
        }
        let refused = |refusal| Outcome { result: Err(refusal), durable_after: journal.next_lsn() };
        let latch = match self.people.latch_or_insert_from::<W>(person, home) {
            Ok(latch) => latch,
            Err(full) => return refused(Refusal::PeopleTableFull { people_max: full.people_max }),
        };
        let record = latch.record();
        if let Some(answer) = Self::replayed_answer(&record, CommandKind::Reserve, idempotency_key, Some(slot)) {
            return Outcome { result: answer, durable_after: journal.next_lsn() };
        }
        if let Some(existing) = record.holds {
            return refused(Refusal::AlreadyBooked { existing });
        }
        if self.slots.take_as::<W>(slot.0).is_err() {
            self.people.abandon(latch);
            return refused(Refusal::SlotFull { slot });
        }
        let entry = Entry::Reserved { person, slot, idempotency_key, operator_id: request.channel.operator_id() };
        let lsn = match journal.append(&entry) {
            Ok(lsn) => lsn,
            Err(why) => {
                self.slots.give(slot.0);
                self.people.abandon(latch);
                return refused(Refusal::LogUnavailable(why));
            }
        };
        // `appended`, spelled out: 2 instructions a reservation fewer (callgrind).
        latch.commit(PersonRecord {
            holds: Some(slot),
            last: Some(LastCommand { kind: CommandKind::Reserve, idempotency_key, slot }),
        });
        Outcome { result: Ok(slot), durable_after: lsn + 1 }
    }

    /// Moves a person's reservation to `request.slot` atomically: the old slot
    /// is kept unless the new one is taken (R3).
    pub fn change(&self, journal: &impl Journal, request: &BookingRequest, now_ms: i64) -> Outcome<SlotIndex> {
        self.writer().change_at(journal, request, &self.booking_moment(now_ms))
    }

    /// `change` with the rules' time-dependent part computed beforehand
    /// (`booking_moment`), as a caller applying many commands at one instant does.
    pub fn change_at(&self, journal: &impl Journal, request: &BookingRequest, moment: &Moment) -> Outcome<SlotIndex> {
        self.writer().change_at(journal, request, moment)
    }

    /// `EngineWriter::change_at`, for a writer of kind `W`.
    pub(super) fn change_at_as<W: Writers>(
        &self,
        journal: &impl Journal,
        request: &BookingRequest,
        moment: &Moment,
    ) -> Outcome<SlotIndex> {
        let BookingRequest { person, slot, idempotency_key, .. } = *request;
        if let Err(refusal) = self.check_booking(journal, request, moment) {
            return self.refuse_unless_retry(
                journal,
                refusal,
                person,
                CommandKind::Change,
                idempotency_key,
                Some(slot),
            );
        }
        let refused = |refusal| Outcome { result: Err(refusal), durable_after: journal.next_lsn() };
        let Some(latch) = self.people.latch(person) else {
            return refused(Refusal::NoReservation);
        };
        let record = latch.record();
        if let Some(answer) = Self::replayed_answer(&record, CommandKind::Change, idempotency_key, Some(slot)) {
            return Outcome { result: answer, durable_after: journal.next_lsn() };
        }
        let Some(old_slot) = record.holds else {
            return refused(Refusal::NoReservation);
        };
        if old_slot == slot {
            return refused(Refusal::SameSlot { slot });
        }
        if self.slots.take_as::<W>(slot.0).is_err() {
            return refused(Refusal::SlotFull { slot });
        }
        let entry = Entry::Changed { person, slot, idempotency_key, operator_id: request.channel.operator_id() };
        let moved = PersonRecord {
            holds: Some(slot),
            last: Some(LastCommand { kind: CommandKind::Change, idempotency_key, slot }),
        };
        match Self::appended(journal, latch, &entry, moved, slot) {
            Ok(outcome) => {
                self.slots.give(old_slot.0);
                outcome
            }
            Err(refusal) => {
                self.slots.give(slot.0);
                refused(refusal)
            }
        }
    }

    /// Gives up a person's reservation. Allowed outside booking windows, but
    /// not once the appointment has begun; family proxies only until the cutoff.
    pub fn cancel(&self, journal: &impl Journal, request: &CancelRequest, now_ms: i64) -> Outcome<SlotIndex> {
        self.writer().cancel_at(journal, request, &self.booking_moment(now_ms))
    }

    /// `cancel` at a `Moment` computed beforehand, as `reserve_at`.
    pub fn cancel_at(&self, journal: &impl Journal, request: &CancelRequest, moment: &Moment) -> Outcome<SlotIndex> {
        self.writer().cancel_at(journal, request, moment)
    }

    /// `EngineWriter::cancel_at`: the same for both kinds of writer (a seat
    /// given back is an atomic add, a person already in the table is latched).
    pub(super) fn cancel_at_held(
        &self,
        journal: &impl Journal,
        request: &CancelRequest,
        moment: &Moment,
    ) -> Outcome<SlotIndex> {
        let now_ms = moment.now_ms();
        let CancelRequest { person, idempotency_key, .. } = *request;
        let refused = |refusal| Outcome { result: Err(refusal), durable_after: journal.next_lsn() };
        if let Err(refusal) = check_keys(person, idempotency_key)
            .and_then(|()| self.check_cancel_channel(request, now_ms))
            .and_then(|()| journal.writable().map_err(Refusal::LogUnavailable))
        {
            return self.refuse_unless_retry(journal, refusal, person, CommandKind::Cancel, idempotency_key, None);
        }
        let Some(latch) = self.people.latch(person) else {
            return refused(Refusal::NoReservation);
        };
        let record = latch.record();
        if let Some(answer) = Self::replayed_answer(&record, CommandKind::Cancel, idempotency_key, None) {
            return Outcome { result: answer, durable_after: journal.next_lsn() };
        }
        let Some(slot) = record.holds else {
            return refused(Refusal::NoReservation);
        };
        if self.slot_begun(slot, moment) {
            return refused(Refusal::SlotInPast { slot });
        }
        let entry = Entry::Cancelled { person, slot, idempotency_key, operator_id: request.channel.operator_id() };
        let cancelled =
            PersonRecord { holds: None, last: Some(LastCommand { kind: CommandKind::Cancel, idempotency_key, slot }) };
        // Log, then give: the seat is free for others only once the cancel has its number.
        let outcome = Self::appended(journal, latch, &entry, cancelled, slot).unwrap_or_else(refused);
        if outcome.result.is_ok() {
            self.slots.give(slot.0);
        }
        outcome
    }

    fn check_cancel_channel(&self, request: &CancelRequest, now_ms: i64) -> Result<(), Refusal> {
        let cohort =
            self.rules.cohort_of(request.birth_date).ok_or(Refusal::NotEligible { birth_date: request.birth_date })?;
        match (request.channel, cohort.proxy_cutoff_ms) {
            (Channel::FamilyProxy, Some(cutoff_ms)) if now_ms >= cutoff_ms => {
                Err(Refusal::ProxyBookingClosed { cutoff_ms: Some(cutoff_ms) })
            }
            (Channel::FamilyProxy, None) => Err(Refusal::ProxyBookingClosed { cutoff_ms: None }),
            _ => Ok(()),
        }
    }

    /// Adds `change.seats` to a slot whose capacity is
    /// `change.expected_capacity` (R1). Returns the new capacity.
    ///
    /// Naming the capacity the operator saw makes the change safe to retry:
    /// if the slot already has `change.expected_capacity + change.seats`, this very change
    /// was applied (its answer was lost) and the answer is the same, with
    /// nothing added twice; any other capacity means another change came
    /// first, refused as `CapacityChanged` with the capacity now. Zero seats
    /// is a read: the capacity, whatever `expected_capacity` says.
    ///
    /// Takes the capacity lock, then appends: the caller already holds the
    /// log's append lock (its `LogWriter::appender` is the journal), and
    /// this takes the writer lock of a sole-writer engine, so the lock order
    /// is append lock, writer lock, capacity lock.
    pub fn add_capacity(&self, journal: &impl Journal, change: &CapacityChange) -> Outcome<u32> {
        self.writer().add_capacity(journal, change)
    }

    /// `EngineWriter::add_capacity`.
    pub(super) fn add_capacity_held(&self, journal: &impl Journal, change: &CapacityChange) -> Outcome<u32> {
        let CapacityChange { slot, seats, expected_capacity, operator_id } = *change;
        let refused = |refusal| Outcome { result: Err(refusal), durable_after: journal.next_lsn() };
        if !self.inventory.contains(slot) {
            return refused(Refusal::UnknownSlot { slot: slot.0 });
        }
        let _serialized = self.capacity_changes.lock().unwrap_or_else(|poison| poison.into_inner());
        let capacity = self.slots.capacity(slot.0);
        if change.only_reads() {
            // A read of the capacity: nothing to log.
            return Outcome { result: Ok(capacity), durable_after: journal.next_lsn() };
        }
        if capacity != expected_capacity {
            if expected_capacity.checked_add(seats) == Some(capacity) {
                // Applied before; the answer waits for its record like any read.
                return Outcome { result: Ok(capacity), durable_after: journal.next_lsn() };
            }
            return refused(Refusal::CapacityChanged { slot, capacity });
        }
        let Some(new_capacity) = capacity.checked_add(seats).filter(|c| *c <= crate::state::SLOT_CAPACITY_MAX) else {
            return refused(Refusal::CapacityOverflow { slot, capacity });
        };
        let entry = Entry::CapacityAdded { slot, seats, capacity: new_capacity, operator_id };
        match journal.append(&entry) {
            Ok(lsn) => {
                let added = self.slots.add_capacity(slot.0, seats);
                debug_assert_eq!(added, Some(new_capacity));
                Outcome { result: Ok(new_capacity), durable_after: lsn + 1 }
            }
            Err(why) => refused(Refusal::LogUnavailable(why)),
        }
    }

    /// The slot a person holds, if any.
    pub fn reservation_of(&self, journal: &impl Journal, person: PersonKey) -> Outcome<Option<SlotIndex>> {
        let result = if person.0 == 0 {
            Err(Refusal::InvalidPersonKey)
        } else {
            Ok(self.people.get(person).and_then(|record| record.holds))
        };
        Outcome { result, durable_after: journal.next_lsn() }
    }

    /// Seats left and capacity of a slot.
    pub fn slot_seats(&self, slot: SlotIndex) -> Option<(u32, u32)> {
        self.inventory.contains(slot).then(|| (self.slots.remaining(slot.0), self.slots.capacity(slot.0)))
    }
}

fn check_keys(person: PersonKey, idempotency_key: u64) -> Result<(), Refusal> {
    if person.0 == 0 {
        return Err(Refusal::InvalidPersonKey);
    }
    if idempotency_key == 0 {
        return Err(Refusal::InvalidIdempotencyKey);
    }
    Ok(())
}
