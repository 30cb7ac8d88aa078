//! The counters behind the STATS opcode (docs/protocol.md, "Stats").
//!
//! The network thread counts requests, connections, bad frames, overloads
//! and every request it refuses whole (by its protocol result code) as they
//! happen. The engine thread counts what commands did
//! (reservations, changes, cancellations, refusals by result code) in a
//! private `Tally` and adds it to the shared counters once a round, so a
//! command costs no atomic read-modify-write and no cache line shared with
//! the network thread.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use crate::protocol::body::Stats;
use crate::protocol::code;
use crate::protocol::opcode;
use crate::server::Shared;

/// A count for each result code.
#[derive(Debug)]
pub struct CodeCounts([AtomicU64; 256]);

impl Default for CodeCounts {
    fn default() -> Self {
        CodeCounts(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl CodeCounts {
    pub fn add(&self, code: u8, count: u64) {
        self.0[usize::from(code)].fetch_add(count, Ordering::Relaxed);
    }

    pub fn sub(&self, code: u8, count: u64) {
        self.0[usize::from(code)].fetch_sub(count, Ordering::Relaxed);
    }

    pub fn get(&self, code: u8) -> u64 {
        self.0[usize::from(code)].load(Ordering::Relaxed)
    }
}

/// Written by the engine thread only, a round at a time.
#[derive(Debug, Default)]
pub struct EngineCounters {
    pub reservations: AtomicU64,
    pub cancellations: AtomicU64,
    pub changes: AtomicU64,
    /// Commands the engine answered with each (engine) result code other than OK.
    pub refusals_by_code: CodeCounts,
}

/// Where one command's answer is counted.
enum Counted {
    Reservation,
    Change,
    Cancellation,
    Refusal(u8),
    /// A read answered OK: not counted.
    Nothing,
}

impl Counted {
    #[inline]
    fn of(command_opcode: u8, answer_code: u8) -> Counted {
        match (answer_code, command_opcode) {
            (code::OK, opcode::RESERVE) => Counted::Reservation,
            (code::OK, opcode::CHANGE) => Counted::Change,
            (code::OK, opcode::CANCEL) => Counted::Cancellation,
            (code::OK, _) => Counted::Nothing,
            (refused, _) => Counted::Refusal(refused),
        }
    }
}

impl EngineCounters {
    /// Takes back a request's answers, counted (`Tally::count`) and flushed
    /// when it was applied, that its requester never got (a reply refused
    /// after the log failed): what it `made`, and a refusal for each of
    /// `refused_codes`.
    pub fn take_back(&self, made: Made, refused_codes: impl IntoIterator<Item = u8>) {
        self.reservations.fetch_sub(made.reservations, Ordering::Relaxed);
        self.changes.fetch_sub(made.changes, Ordering::Relaxed);
        self.cancellations.fetch_sub(made.cancellations, Ordering::Relaxed);
        for code in refused_codes {
            self.refusals_by_code.sub(code, 1);
        }
    }
}

/// Counters for the STATS opcode.
#[derive(Debug, Default)]
pub struct Counters {
    /// On lines of their own: the engine thread's.
    pub engine: CachePadded<EngineCounters>,
    pub requests: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_refused: AtomicU64,
    pub bad_frames: AtomicU64,
    pub overloaded: AtomicU64,
    /// Requests (and connections) the network thread refused whole, by
    /// protocol result code (100 and up: disjoint from the engine's codes).
    pub protocol_refusals_by_code: CodeCounts,
}

impl Counters {
    /// The STATS reply, as docs/protocol.md orders it.
    pub fn stats(&self, shared: &Shared) -> Stats {
        let log = shared.engine.log();
        let log_stats = log.stats();
        let percentiles = log_stats.sync_percentiles();
        let engine = &self.engine;
        let commands_refused: u64 = (0..=u8::MAX).map(|code| engine.refusals_by_code.get(code)).sum();
        let refusals_by_code: Vec<(u8, u64)> = (0..=u8::MAX)
            .map(|code| (code, engine.refusals_by_code.get(code) + self.protocol_refusals_by_code.get(code)))
            .filter(|(_, count)| *count > 0)
            .collect();
        let counters = [
            engine.reservations.load(Ordering::Relaxed),
            engine.cancellations.load(Ordering::Relaxed),
            engine.changes.load(Ordering::Relaxed),
            commands_refused,
            self.requests.load(Ordering::Relaxed),
            self.connections_open.load(Ordering::Relaxed),
            self.connections_refused.load(Ordering::Relaxed),
            shared.ingress.len() as u64,
            shared.ingress.capacity() as u64,
            log.next_lsn(),
            log.durable_lsn(),
            log_stats.groups.load(Ordering::Relaxed),
            percentiles[0],
            percentiles[1],
            percentiles[2],
            log_stats.sync_nanos_max.load(Ordering::Relaxed) / 1000,
            shared.engine.snapshot_state().taken,
            shared.started.elapsed().as_millis() as u64,
            self.bad_frames.load(Ordering::Relaxed),
            self.overloaded.load(Ordering::Relaxed),
            shared.ingress_commands.load(Ordering::Relaxed) as u64,
            shared.reply_bytes_waiting.load(Ordering::Relaxed) as u64,
        ];
        Stats { counters, refusals_by_code }
    }
}

/// What the engine thread's commands did since the last `flush`.
pub struct Tally {
    reservations: u64,
    cancellations: u64,
    changes: u64,
    refusals_by_code: [u64; 256],
}

impl Default for Tally {
    fn default() -> Self {
        Tally { reservations: 0, cancellations: 0, changes: 0, refusals_by_code: [0; 256] }
    }
}

/// What commands answered OK made, as a `Tally` counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Made {
    pub reservations: u64,
    pub changes: u64,
    pub cancellations: u64,
}

impl Made {
    /// What was made between `earlier` and this count.
    pub fn since(self, earlier: Made) -> Made {
        Made {
            reservations: self.reservations - earlier.reservations,
            changes: self.changes - earlier.changes,
            cancellations: self.cancellations - earlier.cancellations,
        }
    }
}

impl Tally {
    /// What was made since the last flush.
    pub fn made(&self) -> Made {
        Made { reservations: self.reservations, changes: self.changes, cancellations: self.cancellations }
    }

    /// Counts one command's answer.
    #[inline]
    pub fn count(&mut self, command_opcode: u8, answer_code: u8) {
        match Counted::of(command_opcode, answer_code) {
            Counted::Reservation => self.reservations += 1,
            Counted::Change => self.changes += 1,
            Counted::Cancellation => self.cancellations += 1,
            Counted::Refusal(code) => self.refusals_by_code[usize::from(code)] += 1,
            Counted::Nothing => {}
        }
    }

    /// Counts `count` reservations booked (RESERVE answered OK) at once.
    pub fn count_reservations(&mut self, count: u64) {
        self.reservations += count;
    }

    /// Adds what was counted to the shared counters and starts again.
    pub fn flush(&mut self, counters: &EngineCounters) {
        for (total, counted) in [
            (&counters.reservations, &mut self.reservations),
            (&counters.cancellations, &mut self.cancellations),
            (&counters.changes, &mut self.changes),
        ] {
            if *counted > 0 {
                total.fetch_add(std::mem::take(counted), Ordering::Relaxed);
            }
        }
        // 256 words a round: cheaper than keeping track of which were touched.
        for (code, counted) in (0..=u8::MAX).zip(&mut self.refusals_by_code) {
            if *counted > 0 {
                counters.refusals_by_code.add(code, std::mem::take(counted));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_reaches_the_counters_once_flushed_and_starts_again() {
        let counters = EngineCounters::default();
        let mut tally = Tally::default();
        tally.count(opcode::RESERVE, code::OK);
        tally.count(opcode::RESERVE, code::OK);
        tally.count(opcode::CANCEL, code::OK);
        tally.count(opcode::GET_RESERVATION, code::OK);
        tally.count(opcode::RESERVE, 12);
        tally.count(opcode::CHANGE, 12);
        tally.count(opcode::RESERVE, 255);
        tally.count(opcode::RESERVE, 1);
        assert_eq!(counters.reservations.load(Ordering::Relaxed), 0, "nothing before the flush");
        tally.flush(&counters);
        tally.flush(&counters);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        assert_eq!((load(&counters.reservations), load(&counters.cancellations), load(&counters.changes)), (2, 1, 0));
        let refusals: Vec<(u8, u64)> = (0..=u8::MAX)
            .map(|code| (code, counters.refusals_by_code.get(code)))
            .filter(|(_, count)| *count > 0)
            .collect();
        assert_eq!(refusals, vec![(1, 1), (12, 2), (255, 1)]);
    }
}
