//! The one door through which the lock-free tables reach their atomics (and
//! the engine its writer lock).
//!
//! Normal builds use `std`'s atomics. The shuttle model tests
//! (`cargo test --features shuttle --test shuttle_models`) build the same code
//! against shuttle's atomics, so its randomized scheduler can interleave every
//! load, store and compare-exchange of `SlotCounters` and `PeopleTable`.

#[cfg(not(feature = "shuttle"))]
pub use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
/// The engine's writer lock (`Engine::into_sole_writer`).
#[cfg(not(feature = "shuttle"))]
pub use std::sync::{Mutex, MutexGuard};

#[cfg(feature = "shuttle")]
pub use shuttle::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(feature = "shuttle")]
pub use shuttle::sync::{Mutex, MutexGuard};

/// Tells the scheduler (or the CPU) that this thread is waiting for another.
#[inline]
pub fn spin_wait() {
    #[cfg(not(feature = "shuttle"))]
    std::hint::spin_loop();
    #[cfg(feature = "shuttle")]
    shuttle::thread::yield_now();
}
