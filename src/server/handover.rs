//! Writing what the network thread hands to the engine thread without
//! taking its cache lines first.
//!
//! The network thread decodes a batch of reservations into a fresh vector
//! that the engine thread reads once, on the other core, then frees. An
//! ordinary store to a line first fetches it for ownership, and the lines of
//! a recycled allocation were last held by the engine thread's core: the
//! stores of a 1,024-request batch (48 KiB) waited on 768 such fetches, and
//! most of the network thread's decoding time sat on them (perf).
//! Non-temporal stores (`movntdq`) write whole lines
//! straight to memory without fetching them; the engine thread then reads
//! them from memory, in order, which the hardware prefetches. Measured in
//! docs/benchmarks.md ("Requests handed over past the cache").
//!
//! Stores of this kind are weakly ordered, and Rust's rules for them (the
//! `_mm_sfence` documentation) ask for an `sfence` after them before any
//! other access to that memory, even by the same thread. So the vector is
//! written only through a `Streamed`, which fences when it is dropped: at
//! the end of the decode, or on its early return with an error, before the
//! vector can be read, moved to another thread, or freed; `new` is unsafe
//! because a leaked guard would not fence. (A safe form, a closure fenced
//! after it returns, cost the network thread 9 instructions a request more,
//! callgrind.)

/// A vector being filled with non-temporal stores; fenced when dropped.
pub struct Streamed<'a, T: Copy> {
    requests: &'a mut Vec<T>,
}

impl<'a, T: Copy> Streamed<'a, T> {
    /// Fills `requests` from its end.
    ///
    /// # Safety
    /// The `Streamed` must be dropped, not leaked (`mem::forget`), before
    /// `requests` is used again: its drop is the fence.
    pub unsafe fn new(requests: &'a mut Vec<T>) -> Streamed<'a, T> {
        Streamed { requests }
    }
}

impl<T: Copy> Drop for Streamed<'_, T> {
    fn drop(&mut self) {
        fence();
    }
}

impl<T: Copy> Streamed<'_, T> {
    /// Appends `value`, written past this core's cache when the target
    /// allows it (x86-64 and a type of whole 16-byte chunks); otherwise, or
    /// when the vector is full, an ordinary push, after a fence (the push
    /// may move what was streamed).
    #[inline(always)]
    pub fn push(&mut self, value: T) {
        let requests = &mut *self.requests;
        let length = requests.len();
        if !streamed::<T>() || length == requests.capacity() {
            fence();
            requests.push(value);
            return;
        }
        // SAFETY: `length < capacity`, so the element at `length` lies in the
        // allocation; `T` is `Copy` (no drop, any bit copy is a valid `T`),
        // the element is 16-byte aligned and a whole number of 16-byte chunks
        // (`streamed` checked both), and `set_len` follows the write of it.
        // Nothing reads the element before `Drop` fences (`new`'s contract).
        unsafe {
            stream(requests.as_mut_ptr().add(length).cast::<u8>(), (&raw const value).cast::<u8>(), size_of::<T>());
            requests.set_len(length + 1);
        }
    }
}

/// Orders every streamed store before what follows.
#[inline(always)]
fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no operands and touches no memory of ours.
    unsafe {
        std::arch::x86_64::_mm_sfence();
    }
}

/// Whether values of a type are streamed: only on x86-64, and only types of
/// whole 16-byte chunks aligned to 16.
const fn streamed<T>() -> bool {
    cfg!(target_arch = "x86_64") && size_of::<T>() % 16 == 0 && size_of::<T>() > 0 && align_of::<T>() >= 16
}

/// Copies `bytes` (a multiple of 16) from `source` to `target` (16-byte
/// aligned) with non-temporal stores. The copy is made in assembly, so the
/// padding bytes a value may have (uninitialised to the compiler) are copied
/// as bytes, never read as a Rust value.
///
/// # Safety
/// `source` readable and `target` writable for `bytes`, not overlapping;
/// `target` 16-byte aligned; `bytes` a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn stream(target: *mut u8, source: *const u8, bytes: usize) {
    let mut offset = 0;
    while offset < bytes {
        std::arch::asm!(
            "movdqu {chunk}, xmmword ptr [{source}]",
            "movntdq xmmword ptr [{target}], {chunk}",
            source = in(reg) source.add(offset),
            target = in(reg) target.add(offset),
            chunk = out(xmm_reg) _,
            options(nostack, preserves_flags),
        );
        offset += 16;
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
unsafe fn stream(target: *mut u8, source: *const u8, bytes: usize) {
    std::ptr::copy_nonoverlapping(source, target, bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::Date;
    use crate::inventory::SlotIndex;
    use crate::rules::Channel;
    use crate::state::{BookingRequest, PersonKey};

    fn request(index: u32) -> BookingRequest {
        let channel = match index % 3 {
            0 => Channel::Person,
            1 => Channel::FamilyProxy,
            _ => Channel::Operator { operator_id: index },
        };
        BookingRequest {
            person: PersonKey((u128::from(index) << 64) | (u128::from(index) * 7 + 1)),
            birth_date: Date::from_days_since_epoch(i32::try_from(index % 20_000).unwrap()),
            slot: SlotIndex(index * 3),
            idempotency_key: u64::from(index) + 11,
            channel,
        }
    }

    #[test]
    fn requests_pushed_past_the_cache_read_back_as_pushed_also_past_the_capacity() {
        assert!(streamed::<BookingRequest>() == cfg!(target_arch = "x86_64"), "the server's requests are streamed");
        let expected: Vec<BookingRequest> = (0..100).map(request).collect();
        // Capacity for some: the rest go through an ordinary push, which grows the vector.
        let mut pushed = Vec::with_capacity(37);
        {
            // SAFETY: dropped at the end of this block, before `pushed` is read.
            let mut streamed = unsafe { Streamed::new(&mut pushed) };
            for value in &expected {
                streamed.push(*value);
            }
        }
        assert_eq!(pushed, expected);
        // Read back on another thread, as the engine thread does.
        let read = std::thread::spawn(move || pushed.iter().map(|request| request.slot.0).sum::<u32>()).join().unwrap();
        assert_eq!(read, expected.iter().map(|request| request.slot.0).sum::<u32>());
    }

    #[test]
    fn an_early_return_keeps_what_was_pushed() {
        fn push_until(pushed: &mut Vec<BookingRequest>, stop: u32) -> Result<(), u32> {
            // SAFETY: dropped on either return, before `pushed` is used again.
            let mut streamed = unsafe { Streamed::new(pushed) };
            for index in 0..8 {
                if index == stop {
                    return Err(index);
                }
                streamed.push(request(index));
            }
            Ok(())
        }
        let mut pushed = Vec::with_capacity(8);
        assert_eq!(push_until(&mut pushed, 5), Err(5));
        assert_eq!(pushed, (0..5).map(request).collect::<Vec<_>>());
    }

    #[test]
    fn types_that_are_not_whole_aligned_chunks_are_pushed_as_usual() {
        assert!(!streamed::<u64>() && !streamed::<[u8; 48]>() && !streamed::<()>());
        let mut bytes = Vec::with_capacity(4);
        // SAFETY: dropped before `bytes` is read.
        let mut streamed = unsafe { Streamed::new(&mut bytes) };
        [[1u8; 48], [2; 48], [3; 48]].into_iter().for_each(|value| streamed.push(value));
        drop(streamed);
        assert_eq!(bytes, vec![[1u8; 48], [2; 48], [3; 48]]);
    }
}
