//! CRC-32C (Castagnoli), the checksum of log records, segment and snapshot
//! headers and protocol frames (docs/log-format.md, docs/protocol.md).
//!
//! The `crc32c` crate is fast on long inputs (three interleaved streams), but
//! spends about a hundred instructions getting started, which dominated the
//! cost of a 48-byte log record. Inputs of up to `SHORT_BYTES_MAX` bytes go
//! through one serial chain of `crc32` instructions instead (SSE4.2, detected
//! at run time); longer ones, and CPUs without SSE4.2, use the crate. Both
//! compute the same function: tested below against the crate.

/// Inputs up to this long take the short path.
const SHORT_BYTES_MAX: usize = 256;

/// The CRC-32C of `bytes`.
#[inline]
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c_append(0, bytes)
}

/// The CRC-32C of the bytes summarized by `crc` followed by `bytes`.
#[inline]
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if bytes.len() <= SHORT_BYTES_MAX && std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE4.2, checked just above.
        return unsafe { short_sse42(crc, bytes) };
    }
    crc32c::crc32c_append(crc, bytes)
}

/// The CRC-32C of an array whose length is known when compiling (a log
/// record's 44 checked bytes): the chain of `crc32` instructions is unrolled.
#[inline]
pub fn crc32c_fixed<const N: usize>(bytes: &[u8; N]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if N <= SHORT_BYTES_MAX && std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE4.2, checked just above.
        return unsafe { fixed_sse42(bytes) };
    }
    crc32c::crc32c(bytes)
}

/// `short_sse42` for a length known when compiling: inlined here, where
/// SSE4.2 is enabled too, its walk over the slice becomes straight code for
/// `N` bytes (callgrind: 40 -> 12 instructions for a log record, which
/// replay and the flusher check or seal one by one). Callers built without
/// SSE4.2 cannot inline either function, so this one takes the array whole.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn fixed_sse42<const N: usize>(bytes: &[u8; N]) -> u32 {
    short_sse42(0, bytes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
#[inline]
fn short_sse42(crc: u32, bytes: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};
    let mut rest = bytes;
    let mut wide = u64::from(!crc);
    while let Some((word, tail)) = rest.split_first_chunk::<8>() {
        wide = _mm_crc32_u64(wide, u64::from_le_bytes(*word));
        rest = tail;
    }
    let mut state = wide as u32;
    if let Some((word, tail)) = rest.split_first_chunk::<4>() {
        state = _mm_crc32_u32(state, u32::from_le_bytes(*word));
        rest = tail;
    }
    for byte in rest {
        state = _mm_crc32_u8(state, *byte);
    }
    !state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_crate_at_every_length_and_offset() {
        let mut bytes = vec![0u8; 600];
        let mut state = 48u64;
        for byte in bytes.iter_mut() {
            state = crate::mix64(state);
            *byte = state as u8;
        }
        for start in 0..8 {
            for end in start..bytes.len() {
                let input = &bytes[start..end];
                assert_eq!(crc32c(input), crc32c::crc32c(input), "bytes {start}..{end}");
            }
        }
        for split in [0, 1, 7, 8, 44, 255, 256, 257, 599] {
            let (head, tail) = bytes.split_at(split);
            assert_eq!(crc32c_append(crc32c(head), tail), crc32c::crc32c(&bytes), "split at {split}");
        }
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c_fixed(b"123456789"), 0xe306_9283);
        let record: &[u8; 44] = bytes[3..47].try_into().unwrap();
        assert_eq!(crc32c_fixed(record), crc32c::crc32c(record));
        fn fixed_agrees<const N: usize>(bytes: &[u8]) {
            for start in 0..8 {
                let input: &[u8; N] = bytes[start..start + N].try_into().unwrap();
                assert_eq!(crc32c_fixed(input), crc32c::crc32c(input), "{N} bytes from {start}");
            }
        }
        fixed_agrees::<0>(&bytes);
        fixed_agrees::<1>(&bytes);
        fixed_agrees::<7>(&bytes);
        fixed_agrees::<8>(&bytes);
        fixed_agrees::<13>(&bytes);
        fixed_agrees::<44>(&bytes);
        fixed_agrees::<60>(&bytes);
        fixed_agrees::<256>(&bytes);
    }
}
