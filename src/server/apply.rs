//! The engine thread: takes jobs from the ingress queue, applies them to the
//! state machine, and releases each reply once every log record it depends on
//! is durable (group commit: one sync releases many replies). If the log
//! fails, replies still waiting are refused, except those of requests that
//! only read (`Pending::release`).
//!
//! Replies are encoded into one arena as they are computed and wait there in
//! order; `durable_after` never decreases along the queue (one thread draws
//! every number), so releasing is a walk from the front.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use crate::durable::DurableEngine;
use crate::inventory::SlotIndex;
use crate::log::Appender;
use crate::protocol::body::{
    batch_answer_item, put_batch_answer, put_batch_header, put_batch_item, BatchItems, CapacityAddition,
    CompactAnswerWriter, CompactAnswers, PersonQuery, RegionQuery, SiteQuery, BATCH_ANSWER_ITEM_BYTES,
};
use crate::protocol::frame::flag;
use crate::protocol::{code, decode_frame, encode_frame, opcode, Answer};
use crate::server::connection::Outbox;
use crate::server::stats::{EngineCounters, Made, Tally};
use crate::state::{BookingRequest, Engine, EngineWriter, Journal, LogUnavailable, Lsn, Moment, Outcome, Refusal};

/// A decoded command, ready for the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Reserve(BookingRequest),
    Change(BookingRequest),
    Cancel(BookingRequest),
    Get(PersonQuery),
    Site(SiteQuery),
    Region(RegionQuery),
    AddCapacity(CapacityAddition),
}

impl Command {
    /// The person and slot a command touches, for prefetching.
    fn touches(&self) -> Option<(crate::state::PersonKey, u32)> {
        match self {
            Command::Reserve(booking) | Command::Change(booking) => Some((booking.person, booking.slot.0)),
            Command::Cancel(booking) => Some((booking.person, 0)),
            Command::Get(query) => Some((query.person, 0)),
            _ => None,
        }
    }

    /// The slot a RESERVE or CHANGE asks for (0 for other commands): what a
    /// compact answer may leave out.
    fn slot_asked(&self) -> u32 {
        match self {
            Command::Reserve(booking) | Command::Change(booking) => booking.slot.0,
            _ => 0,
        }
    }

    /// Whether the command only reads the state (its answer may be released
    /// once the log has failed, as `DurableEngine`'s reads are).
    fn is_read(&self) -> bool {
        match self {
            Command::Get(_) | Command::Site(_) | Command::Region(_) => true,
            Command::AddCapacity(addition) => addition.only_reads(),
            Command::Reserve(_) | Command::Change(_) | Command::Cancel(_) => false,
        }
    }

    pub fn opcode(&self) -> u8 {
        match self {
            Command::Reserve(_) => opcode::RESERVE,
            Command::Change(_) => opcode::CHANGE,
            Command::Cancel(_) => opcode::CANCEL,
            Command::Get(_) => opcode::GET_RESERVATION,
            Command::Site(_) => opcode::SITE_AVAILABILITY,
            Command::Region(_) => opcode::REGION_AVAILABILITY,
            Command::AddCapacity(_) => opcode::ADD_CAPACITY,
        }
    }
}

pub enum Work {
    One(Command),
    /// A BATCH frame of RESERVE items only, the gateways' common batch:
    /// applied by the engine's own batch loop (`EngineWriter::reserve_each`).
    Reserves(Vec<BookingRequest>, AnswerForm),
    /// Any other BATCH frame.
    Batch(Vec<Command>, AnswerForm),
}

/// How a batch asked to be answered (docs/protocol.md, "Compact answers").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerForm {
    /// An item header and an `Answer` an item.
    Full,
    /// A byte an item, and an `Answer` only where the byte is not enough.
    Compact,
}

impl Work {
    /// How many commands this request carries (its weight in the in-flight count).
    pub fn commands(&self) -> u32 {
        match self {
            Work::One(_) => 1,
            Work::Reserves(requests, _) => requests.len() as u32,
            Work::Batch(commands, _) => commands.len() as u32,
        }
    }

    /// The person and slot the request's first command touches, for prefetching across jobs.
    fn first_touch(&self) -> Option<(crate::state::PersonKey, u32)> {
        match self {
            Work::One(command) => command.touches(),
            Work::Reserves(requests, _) => requests.first().map(|request| (request.person, request.slot.0)),
            Work::Batch(commands, _) => commands.first().and_then(Command::touches),
        }
    }

    /// Whether every command of the request only reads.
    fn reads_only(&self) -> bool {
        match self {
            Work::One(command) => command.is_read(),
            // Empty, it changes nothing.
            Work::Reserves(requests, _) => requests.is_empty(),
            Work::Batch(commands, _) => commands.iter().all(Command::is_read),
        }
    }
}

/// One request from a connection, decoded and checked, for the engine thread.
pub struct Job {
    pub outbox: Arc<Outbox>,
    pub request_id: u64,
    /// The operator of an operator connection (0 for a gateway): recorded for capacity changes.
    pub operator_id: u32,
    pub work: Work,
}

struct PendingReply {
    outbox: Arc<Outbox>,
    request_id: u64,
    /// What the request asked, kept until its reply is released (the
    /// request itself is dropped once applied).
    asked: Asked,
    bytes: Range<usize>,
    durable_after: Lsn,
}

/// What a pending reply needs of its request once applied (the request
/// itself is dropped then): its weight in flight, whether it only reads, how
/// its reply is laid out, and what its OK answers made (taken back with its
/// refusals if the log fails before it is durable).
struct Asked {
    commands: u32,
    reads_only: bool,
    /// `None` for a single command, else the batch's answer form.
    form: Option<AnswerForm>,
    made: Made,
}

/// Released bytes at the arena's front worth moving the rest down for.
const ARENA_COMPACT_BYTES_MIN: usize = 1 << 20;

/// Replies computed but not yet durable, in order.
#[derive(Default)]
pub struct Pending {
    arena: Vec<u8>,
    replies: VecDeque<PendingReply>,
    /// Connections to wake after a release (kept to reuse its allocation).
    to_wake: Vec<Arc<Outbox>>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.replies.is_empty()
    }

    /// Whether the oldest reply may be released now (its records are
    /// durable, or the log failed and it is to be refused).
    pub fn releasable(&self, engine: &DurableEngine) -> bool {
        self.replies
            .front()
            .is_some_and(|front| front.durable_after <= engine.log().durable_lsn() || engine.log().writable().is_err())
    }

    /// Hands every reply whose records are durable to its connection. If the
    /// log failed (disk full, a failed write or sync), the replies still
    /// waiting never will be durable: a request that changes state is
    /// answered LOG_UNAVAILABLE instead (an ERROR frame for the whole
    /// request, a batch with any change in it included); a request that only
    /// reads gets its answer, as reads keep working from memory after a
    /// failure (docs/log-format.md, "When the disk fails"). Returns how many
    /// replies were released.
    pub fn release(&mut self, engine: &DurableEngine, counters: &EngineCounters) -> usize {
        // The failure first: the flusher stores the durable number before it
        // records a failure, so a reply durable just before one is released.
        let failed = engine.log().writable().err();
        let durable = engine.log().durable_lsn();
        let mut released = 0;
        while let Some(front) = self.replies.front() {
            let read_after_failure =
                front.asked.reads_only && matches!(failed, Some(LogUnavailable::DiskFull | LogUnavailable::IoFailed));
            if front.durable_after <= durable || read_after_failure {
                front.outbox.push_quietly(&self.arena[front.bytes.clone()]);
            } else if let Some(why) = failed {
                let answer = Answer::refusal(&Refusal::LogUnavailable(why));
                recount_as_refused(&self.arena[front.bytes.clone()], &front.asked, answer.code, counters);
                front.outbox.push_quietly(&crate::server::connection::error_frame(front.request_id, answer));
            } else {
                break;
            }
            front.outbox.finish_request(front.asked.commands);
            let Some(reply) = self.replies.pop_front() else { break };
            // A connection's writer is woken once for each run of its replies
            // (waking it twice is harmless): no search over every connection.
            if !self.to_wake.last().is_some_and(|last| Arc::ptr_eq(last, &reply.outbox)) {
                self.to_wake.push(reply.outbox);
            }
            released += 1;
        }
        for outbox in self.to_wake.drain(..) {
            outbox.wake();
        }
        self.compact();
        released
    }

    /// Drops the released front of the arena. Under sustained load replies
    /// are always pending, so waiting for an empty queue to clear it would
    /// let it grow without end.
    fn compact(&mut self) {
        let Some(front) = self.replies.front() else {
            self.arena.clear();
            return;
        };
        let released = front.bytes.start;
        if released >= ARENA_COMPACT_BYTES_MIN && released >= self.arena.len() / 2 {
            self.arena.drain(..released);
            for reply in &mut self.replies {
                reply.bytes = reply.bytes.start - released..reply.bytes.end - released;
            }
        }
    }
}

/// The answers of a reply refused after the log failed were counted when
/// it was applied (`Tally`); its requester gets `refusal_code` for every
/// command instead, and STATS counts what was answered.
fn recount_as_refused(reply: &[u8], asked: &Asked, refusal_code: u8, counters: &EngineCounters) {
    // The arena holds frames this thread encoded: they decode.
    let decoded = decode_frame(reply, u32::MAX);
    debug_assert!(decoded.is_ok(), "a pending reply that does not decode");
    let Ok((_, body)) = decoded else { return };
    let codes: Vec<u8> = match asked.form {
        None => body.first().copied().into_iter().collect(),
        Some(AnswerForm::Compact) => {
            CompactAnswers::parse(body).map(|answers| answers.codes().collect()).unwrap_or_default()
        }
        Some(AnswerForm::Full) => BatchItems::of_replies(body)
            .into_iter()
            .flatten()
            .filter_map(|item| item.ok().and_then(|item| item.body.first().copied()))
            .collect(),
    };
    debug_assert_eq!(codes.len(), asked.commands as usize, "a pending reply without an answer a command");
    counters.take_back(asked.made, codes.into_iter().filter(|answer_code| *answer_code != code::OK));
    counters.refusals_by_code.add(refusal_code, u64::from(asked.commands));
}

/// What the engine thread holds while it applies a round of jobs: the log's
/// append lock, then the engine's writer lock (that order, as
/// `Engine::writer` says; dropped in the same order, the log's first, which
/// hands the round's records to the flusher).
pub struct Writing<'engine> {
    pub log: Appender<'engine>,
    pub writer: EngineWriter<'engine>,
}

impl<'engine> Writing<'engine> {
    pub fn start(engine: &'engine DurableEngine) -> Writing<'engine> {
        let log = engine.log().appender();
        Writing { log, writer: engine.engine().writer() }
    }
}

/// Applies one job at `moment` and queues its reply.
pub fn apply(
    engine: &DurableEngine,
    writing: &Writing<'_>,
    job: Job,
    moment: &Moment,
    pending: &mut Pending,
    tally: &mut Tally,
) {
    let start = pending.arena.len();
    let made_before = tally.made();
    let log = &writing.log;
    let mut durable_after = log.next_lsn();
    match &job.work {
        Work::One(command) => {
            encode_frame(&mut pending.arena, command.opcode(), flag::REPLY, job.request_id, |out| {
                durable_after =
                    durable_after.max(apply_command(engine, writing, command, job.operator_id, moment, tally, out));
            });
        }
        Work::Reserves(requests, form) => {
            encode_frame(&mut pending.arena, opcode::BATCH, flag::REPLY, job.request_id, |out| {
                let count = requests.len() as u16;
                match form {
                    AnswerForm::Full => {
                        put_batch_header(out, count);
                        // One answer an item: room for them all at once, each written in its place.
                        let first = out.len();
                        out.resize(first + requests.len() * BATCH_ANSWER_ITEM_BYTES, 0);
                        let mut items = out[first..].chunks_exact_mut(BATCH_ANSWER_ITEM_BYTES);
                        writing.writer.reserve_each(log, requests, moment, |_, outcome| {
                            let (answer, after) = counted_reserve_answer(&outcome, tally);
                            durable_after = durable_after.max(after);
                            // One outcome a request, one item each: the room fits.
                            let item = items.next();
                            debug_assert!(item.is_some(), "more outcomes than requests");
                            if let Some(item) = item {
                                item.copy_from_slice(&batch_answer_item(opcode::RESERVE, &answer));
                            }
                        });
                    }
                    AnswerForm::Compact => {
                        let mut answers = CompactAnswerWriter::start(out, count);
                        let mut booked_as_asked = 0;
                        writing.writer.reserve_each(log, requests, moment, |request, outcome| {
                            let slot_asked = request.slot;
                            match outcome.result {
                                // The crowd's answer: its mark, OK, is there already;
                                // no `Answer` built (callgrind: 72 instructions a
                                // reservation went to the reply with one built for
                                // every outcome), counted once for the batch.
                                Ok(slot) if slot == slot_asked => {
                                    booked_as_asked += 1;
                                    durable_after = durable_after.max(outcome.durable_after);
                                    answers.ok_implied();
                                }
                                _ => {
                                    let after =
                                        push_other_reserve_answer(&mut answers, out, slot_asked, &outcome, tally);
                                    durable_after = durable_after.max(after);
                                }
                            }
                        });
                        tally.count_reservations(booked_as_asked);
                        answers.finish();
                    }
                }
            });
        }
        Work::Batch(commands, form) => {
            encode_frame(&mut pending.arena, opcode::BATCH, flag::REPLY, job.request_id, |out| {
                let count = commands.len() as u16;
                let mut compact = match form {
                    AnswerForm::Full => {
                        put_batch_header(out, count);
                        out.reserve(commands.len() * BATCH_ANSWER_ITEM_BYTES);
                        None
                    }
                    AnswerForm::Compact => Some(CompactAnswerWriter::start(out, count)),
                };
                let ask = |command: &Command| prefetch(engine, command);
                crate::visit_prefetched::<_, _, PREFETCH_AHEAD>(commands, ask, |command, ()| {
                    let after = match apply_fixed(engine, writing, command, job.operator_id, moment, tally) {
                        Ok((answer, after)) => {
                            match &mut compact {
                                Some(answers) => answers.push(out, command.opcode(), command.slot_asked(), &answer),
                                None => put_batch_answer(out, command.opcode(), &answer),
                            }
                            after
                        }
                        // Batches carry fixed-answer commands only (checked when
                        // decoded); a query would still be answered in full, or,
                        // asked for compact answers, refused in its place.
                        Err(query) => match &mut compact {
                            Some(answers) => {
                                answers.push(out, command.opcode(), 0, &Answer::protocol(code::MALFORMED, 0, 0));
                                0
                            }
                            None => {
                                let mut after = 0;
                                put_batch_item(out, command.opcode(), |out| {
                                    after = apply_query(engine, log, query, moment, tally, out)
                                });
                                after
                            }
                        },
                    };
                    durable_after = durable_after.max(after);
                });
                if let Some(answers) = compact {
                    answers.finish();
                }
            });
        }
    }
    let bytes = start..pending.arena.len();
    let form = match &job.work {
        Work::One(_) => None,
        Work::Reserves(_, form) | Work::Batch(_, form) => Some(*form),
    };
    let asked = Asked {
        commands: job.work.commands(),
        reads_only: job.work.reads_only(),
        form,
        made: tally.made().since(made_before),
    };
    let reply = PendingReply { outbox: job.outbox, request_id: job.request_id, asked, bytes, durable_after };
    pending.replies.push_back(reply);
}

/// A compact reply's answer to a reservation that did not book the slot it
/// asked: out of the batch loop, so that the loop's own answer stays small
/// enough to be inlined into it. Returns the answer's `durable_after`.
#[cold]
#[inline(never)]
fn push_other_reserve_answer(
    answers: &mut CompactAnswerWriter,
    out: &mut Vec<u8>,
    slot_asked: SlotIndex,
    outcome: &Outcome<SlotIndex>,
    tally: &mut Tally,
) -> Lsn {
    let (answer, after) = counted_reserve_answer(outcome, tally);
    answers.push(out, opcode::RESERVE, slot_asked.0, &answer);
    after
}

/// A reservation's answer and its `durable_after`, counted in `tally`.
#[inline]
fn counted_reserve_answer(outcome: &Outcome<SlotIndex>, tally: &mut Tally) -> (Answer, Lsn) {
    let (answer, after) = slot_answer(outcome);
    tally.count(opcode::RESERVE, answer.code);
    (answer, after)
}

pub use crate::state::engine::PREFETCH_AHEAD;

/// Asks the CPU for the lines `command` will touch.
pub fn prefetch(engine: &DurableEngine, command: &Command) {
    if let Some((person, slot)) = command.touches() {
        engine.engine().prefetch_person_and_slot(person, slot);
    }
}

/// Asks for the lines of a job's first command (prefetching across jobs).
pub fn prefetch_job(engine: &DurableEngine, job: &Job) {
    if let Some((person, slot)) = job.work.first_touch() {
        engine.engine().prefetch_person_and_slot(person, slot);
    }
}

/// Runs one command, writes its reply body, returns its `durable_after`.
fn apply_command(
    durable: &DurableEngine,
    writing: &Writing<'_>,
    command: &Command,
    operator_id: u32,
    moment: &Moment,
    tally: &mut Tally,
    out: &mut Vec<u8>,
) -> Lsn {
    match apply_fixed(durable, writing, command, operator_id, moment, tally) {
        Ok((answer, durable_after)) => {
            answer.encode(out);
            durable_after
        }
        Err(query) => apply_query(durable, &writing.log, query, moment, tally, out),
    }
}

/// The answer to a command whose result is a slot, and its `durable_after`.
#[inline(always)]
fn slot_answer(outcome: &Outcome<SlotIndex>) -> (Answer, Lsn) {
    (Answer::of_slot(&outcome.result), outcome.durable_after)
}

/// A query whose reply is longer than one answer.
enum Query<'c> {
    Site(&'c SiteQuery),
    Region(&'c RegionQuery),
}

/// Runs a command answered by one `Answer` (every batchable command) and
/// counts it; hands the availability queries back. Inlined into the batch
/// loop (callgrind: a call per command cost 15 instructions).
#[inline(always)]
fn apply_fixed<'c>(
    durable: &DurableEngine,
    writing: &Writing<'_>,
    command: &'c Command,
    operator_id: u32,
    moment: &Moment,
    tally: &mut Tally,
) -> Result<(Answer, Lsn), Query<'c>> {
    let (log, writer) = (&writing.log, &writing.writer);
    let (answer, durable_after) = match command {
        Command::Reserve(booking) => slot_answer(&writer.reserve_at(log, booking, moment)),
        Command::Change(booking) => slot_answer(&writer.change_at(log, booking, moment)),
        Command::Cancel(booking) => slot_answer(&writer.cancel_at(log, &booking.cancel_request(), moment)),
        Command::Get(query) => {
            let outcome = durable.engine().reservation_of(log, query.person);
            let answer = match outcome.result {
                Ok(held) => Answer::held(held),
                Err(refusal) => Answer::refusal(&refusal),
            };
            (answer, outcome.durable_after)
        }
        Command::AddCapacity(addition) => {
            let outcome = writer.add_capacity(log, &addition.change_by(operator_id));
            let answer = match outcome.result {
                Ok(capacity) => Answer::ok(capacity),
                Err(refusal) => Answer::refusal(&refusal),
            };
            (answer, outcome.durable_after)
        }
        Command::Site(query) => return Err(Query::Site(query)),
        Command::Region(query) => return Err(Query::Region(query)),
    };
    tally.count(command.opcode(), answer.code);
    Ok((answer, durable_after))
}

fn apply_query(
    durable: &DurableEngine,
    log: &Appender<'_>,
    query: Query<'_>,
    moment: &Moment,
    tally: &mut Tally,
    out: &mut Vec<u8>,
) -> Lsn {
    match query {
        Query::Site(query) => apply_site(durable.engine(), log, query, moment, tally, out),
        Query::Region(query) => apply_region(durable.engine(), log, query, moment, tally, out),
    }
}

/// SITE_AVAILABILITY: an answer, then the site's slots of the day.
fn apply_site(
    engine: &Engine,
    log: &Appender<'_>,
    query: &SiteQuery,
    moment: &Moment,
    tally: &mut Tally,
    out: &mut Vec<u8>,
) -> Lsn {
    let answer = match engine.site_availability(query.site_id, query.date, moment) {
        Ok(site) => {
            Answer::ok(0).encode(out);
            out.extend_from_slice(&site.first_slot.0.to_le_bytes());
            out.extend_from_slice(&(site.remaining.len() as u16).to_le_bytes());
            out.extend_from_slice(&[0, 0]);
            for seats in site.remaining {
                out.extend_from_slice(&seats.to_le_bytes());
            }
            return counted(tally, opcode::SITE_AVAILABILITY, code::OK, log);
        }
        Err(refusal) => Answer::refusal(&refusal),
    };
    answer.encode(out);
    counted(tally, opcode::SITE_AVAILABILITY, answer.code, log)
}

/// REGION_AVAILABILITY: an answer, then one page of sites with room.
fn apply_region(
    engine: &Engine,
    log: &Appender<'_>,
    query: &RegionQuery,
    moment: &Moment,
    tally: &mut Tally,
    out: &mut Vec<u8>,
) -> Lsn {
    let answer = match engine.region_availability(query.region_id, query.date, query.cursor, query.limit, moment) {
        Ok(page) => {
            Answer::ok(0).encode(out);
            out.extend_from_slice(&page.next_cursor.unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(&(page.sites.len() as u32).to_le_bytes());
            for (site_id, seats) in page.sites {
                out.extend_from_slice(&site_id.to_le_bytes());
                out.extend_from_slice(&seats.to_le_bytes());
            }
            return counted(tally, opcode::REGION_AVAILABILITY, code::OK, log);
        }
        Err(refusal) => Answer::refusal(&refusal),
    };
    answer.encode(out);
    counted(tally, opcode::REGION_AVAILABILITY, answer.code, log)
}

/// Counts a query's answer; a query waits for every record it may have seen.
fn counted(tally: &mut Tally, query_opcode: u8, answer_code: u8, log: &Appender<'_>) -> Lsn {
    tally.count(query_opcode, answer_code);
    log.next_lsn()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pend(pending: &mut Pending, outbox: &Arc<Outbox>, request_id: u64, byte: u8) {
        let start = pending.arena.len();
        pending.arena.extend_from_slice(&[byte; 100]);
        let bytes = start..pending.arena.len();
        let reply = PendingReply {
            outbox: Arc::clone(outbox),
            request_id,
            asked: Asked { commands: 1, reads_only: true, form: None, made: Made::default() },
            bytes,
            durable_after: 9,
        };
        pending.replies.push_back(reply);
    }

    #[test]
    fn compaction_drops_the_released_front_and_keeps_pending_replies_intact() {
        let outbox = Arc::new(Outbox::new(Arc::default()));
        // A small released front stays: moving the rest down is not worth it yet.
        let mut pending = Pending { arena: vec![0xaa; 1000], ..Pending::default() };
        pend(&mut pending, &outbox, 1, 1);
        pending.compact();
        assert_eq!(pending.arena.len(), 1100);
        // Two MiB released in front of two pending replies: dropped, the replies rebased.
        pending.arena = vec![0xaa; 2 << 20];
        pending.replies.clear();
        pend(&mut pending, &outbox, 1, 1);
        pend(&mut pending, &outbox, 2, 2);
        pending.compact();
        assert_eq!(pending.arena.len(), 200);
        for (reply, byte) in pending.replies.iter().zip([1u8, 2]) {
            assert!(pending.arena[reply.bytes.clone()].iter().all(|b| *b == byte), "reply {}", reply.request_id);
        }
        // Nothing pending: the arena is emptied.
        pending.replies.clear();
        pending.compact();
        assert!(pending.arena.is_empty());
    }
}
