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
