//! # yeyak — a booking engine for flash-crowd campaigns
//!
//! The layers, each depending only on those above it in this list:
//!
//! | layer | module | what it does |
//! |---|---|---|
//! | calendar & config | [`calendar`], [`config`] | dates, local time; the campaign TOML, checked and compiled into [`config::CampaignRules`] |
//! | crc & memory | [`crc`], [`memory`] | CRC-32C (fast on short inputs); big zeroed tables on huge pages, faulted in on every core |
//! | inventory | [`inventory`] | sites, regions, slots and their dense [`inventory::SlotIndex`] numbers |
//! | rules | [`rules`] | who may book when: cohorts, rotation days, booking windows, proxies (pure) |
//! | state machine | [`state`] | [`state::Engine`]: atomic slot counters, the people table, reserve / cancel / change (shared by many writers, or one writer at a time without locked instructions); hands [`state::Entry`]s to a [`state::Journal`] |
//! | log | [`log`] | the append-only segmented log: record format, group-commit writer, recovery, retention |
//! | snapshot | [`snapshot`] | the state at a point of the log (rkyv chunks), taken in the background; recovery = snapshot + log tail |
//! | protocol | [`protocol`] | the wire format (docs/protocol.md): frames, command bodies, answers; bytes in, bytes out, no I/O |
//! | durable engine | [`durable`] | opens a data directory: recovers the engine from the newest snapshot and the log, then serves commands whose answers wait for durability; takes snapshots in the background; `DurableEngine::check` runs the recovery without writing (`yeyak log verify`) |
//! | server | [`server`] | TCP connections (tokio or tokio-uring, one network thread), the bounded ingress queue, the engine thread that applies requests and releases replies once durable; keys and the handshake |
//! | clients | [`client`], [`async_client`] | blocking client (shell, tests); async pooled client that batches concurrent calls and retries idempotently (gateways) |
//! | demo | [`demo`] | the simulated booking evening the `yeyak` binary runs on its defaults |
//!
//! Where a reservation goes, over the network: a gateway's frame is decoded by
//! `server::connection` → a job in the ingress queue → the engine thread
//! (`server::apply`), holding the log's append lock and the engine's writer
//! lock for its round (`log::LogWriter::appender`, `state::Engine::writer`),
//! calls `state::EngineWriter::reserve_each` or `reserve_at` (rules →
//! person latch → slot counter `take` → `Journal::append` draws a sequence
//! number and encodes the record into the log's ring) → when the round lets
//! go of the lock, the log's flusher thread writes a group of
//! records and syncs them → the reply is released to the connection once its
//! record is durable. In process, `durable::DurableEngine::reserve` does the
//! same without the network. See `docs/architecture.md` for the picture.

pub mod async_client;
pub mod calendar;
pub mod client;
pub mod config;
pub mod crc;
pub mod demo;
pub mod durable;
pub mod inventory;
pub mod log;
pub mod memory;
pub mod protocol;
pub mod rules;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod sync;

/// A fast 64-bit mixer (the finalizer of SplitMix64): spreads keys over buckets
/// and makes generated data reproducible.
#[inline]
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hints the CPU to load the cache line holding `value`; never faults.
#[inline]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` only hints the cache; it never dereferences in a
    // way that can fault, and `value` is a valid reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Visits `items` in order, having asked for the cache lines each touches a
/// group of `GROUP` at a time, one group ahead: `ask` prefetches an item's
/// lines and returns what it worked out on the way (a person's home bucket,
/// say), which `visit` gets back with the item.
///
/// Why a group at a time rather than one item a fixed distance ahead: in
/// the loops that book or replay (a hundred to three hundred instructions an
/// item), prefetches spread one an item were each held up where they stood
/// (perf puts the samples of the log's replay on the instruction after the
/// person's prefetch), likely by the page walk of an address outside the
/// TLB, which a VM makes long; asked back to back, a group's walks overlap.
/// The log's replay took 0.67 of the time, `durable` ran 1.13× (docs/benchmarks.md,
/// "Prefetching a group at a time").
#[inline(always)]
pub fn visit_prefetched<T, H: Copy + Default, const GROUP: usize>(
    items: &[T],
    ask: impl FnMut(&T) -> H,
    mut visit: impl FnMut(&T, H),
) {
    let Ok(()) = try_visit_prefetched::<T, H, std::convert::Infallible, GROUP>(items, ask, |item, answer| {
        visit(item, answer);
        Ok(())
    });
}

/// `visit_prefetched` for a `visit` that may fail: stops at its first error.
#[inline(always)]
pub fn try_visit_prefetched<T, H: Copy + Default, E, const GROUP: usize>(
    items: &[T],
    mut ask: impl FnMut(&T) -> H,
    mut visit: impl FnMut(&T, H) -> Result<(), E>,
) -> Result<(), E> {
    const { assert!(GROUP > 0, "a group of no items would visit none") };
    // `ask`'s answers for the group visited (`asked[here]`) and the next.
    let mut asked = [[H::default(); GROUP]; 2];
    let (mut group, mut rest) = items.split_at(GROUP.min(items.len()));
    for (answer, item) in asked[0].iter_mut().zip(group) {
        *answer = ask(item);
    }
    let mut here = 0;
    while !group.is_empty() {
        let (next, after) = rest.split_at(GROUP.min(rest.len()));
        for (answer, item) in asked[1 - here].iter_mut().zip(next) {
            *answer = ask(item);
        }
        for (item, answer) in group.iter().zip(&asked[here]) {
            visit(item, *answer)?;
        }
        (group, rest, here) = (next, after, 1 - here);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item is asked about once and visited once, in order, with its own
    /// answer, whatever the length against the group (empty, partial groups).
    #[test]
    fn visit_prefetched_visits_each_item_in_order_with_its_own_answer() {
        for length in 0..=41 {
            let items: Vec<u32> = (0..length).map(|i| i * 7 + 1).collect();
            let mut asked = Vec::new();
            let mut visited = Vec::new();
            visit_prefetched::<_, _, 8>(
                &items,
                |item| {
                    asked.push(*item);
                    u64::from(*item) * 3
                },
                |item, answer| visited.push((*item, answer)),
            );
            let mut asked_sorted = asked.clone();
            asked_sorted.sort_unstable();
            assert_eq!(asked_sorted, items, "length {length}: each asked about once");
            let expected: Vec<(u32, u64)> = items.iter().map(|i| (*i, u64::from(*i) * 3)).collect();
            assert_eq!(visited, expected, "length {length}");
        }
    }

    /// Asked about a group at a time, one group ahead: while a group is
    /// visited, exactly the items up to the end of the next group have been
    /// asked about (one item a fixed distance ahead would fail this).
    #[test]
    fn visit_prefetched_asks_a_group_at_a_time_one_group_ahead() {
        let items: Vec<usize> = (0..30).collect();
        let asked = std::cell::RefCell::new(Vec::new());
        visit_prefetched::<_, _, 4>(
            &items,
            |item| asked.borrow_mut().push(*item),
            |item, ()| {
                let expected: Vec<usize> = (0..(item / 4 * 4 + 8).min(30)).collect();
                assert_eq!(*asked.borrow(), expected, "when item {item} is visited");
            },
        );
    }

    #[test]
    fn try_visit_prefetched_stops_at_the_first_error() {
        let items: Vec<u32> = (0..20).collect();
        let mut visited = Vec::new();
        let result = try_visit_prefetched::<_, _, _, 8>(
            &items,
            |_| (),
            |item, ()| {
                visited.push(*item);
                if *item == 11 {
                    Err(*item)
                } else {
                    Ok(())
                }
            },
        );
        assert_eq!(result, Err(11));
        assert_eq!(visited, (0..=11).collect::<Vec<_>>());
    }
}
