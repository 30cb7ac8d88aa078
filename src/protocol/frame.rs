//! Frames: the 24-byte header and its body, as in docs/protocol.md.
//!
//! The codec works on bytes and does no I/O (after mini-redis's `frame.rs`):
//! `decode_frame` says `Incomplete` when it needs more bytes, and never panics
//! on any input.

use crate::protocol::code;

pub const FRAME_MAGIC: [u8; 2] = *b"YK";
/// The protocol version this engine speaks.
pub const PROTOCOL_VERSION: u8 = 1;
pub const FRAME_HEADER_BYTES: usize = 24;
/// The largest body a frame may carry.
pub const FRAME_BODY_BYTES_MAX: u32 = 1 << 20;

pub mod flag {
    /// Set on every frame the engine sends.
    pub const REPLY: u16 = 1;
    /// Every flag this version knows.
    pub const KNOWN: u16 = REPLY;
}

/// The fields of a frame header that vary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub opcode: u8,
    pub flags: u16,
    pub request_id: u64,
    pub body_bytes: u32,
}

/// Why bytes are not (yet) a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("{needed} more bytes are needed")]
    Incomplete { needed: usize },
    #[error("bad magic {0:02x?}: not a yeyak frame")]
    BadMagic([u8; 2]),
    #[error("protocol version {0}; this engine speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion(u8),
    #[error("unknown flags {0:#06x} or non-zero reserved bytes")]
    BadFlags(u16),
    #[error("a body of {body_bytes} bytes is above the {limit}-byte limit")]
    TooLarge { body_bytes: u32, limit: u32 },
    #[error("frame checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum { stored: u32, computed: u32 },
    /// Not from the codec, which does no I/O: a connection's reader gave
    /// up on a frame begun and not finished in time.
    #[error("a frame was begun and not finished within {seconds} s")]
    Stalled { seconds: u64 },
}

impl FrameError {
    /// The result code an ERROR reply carries for this defect (none for `Incomplete`).
    pub fn code(self) -> Option<u8> {
        match self {
            FrameError::Incomplete { .. } => None,
            FrameError::BadMagic(_) | FrameError::BadFlags(_) | FrameError::Stalled { .. } => Some(code::MALFORMED),
            FrameError::UnsupportedVersion(_) => Some(code::UNSUPPORTED_VERSION),
            FrameError::TooLarge { .. } => Some(code::FRAME_TOO_LARGE),
            FrameError::BadChecksum { .. } => Some(code::BAD_CHECKSUM),
        }
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn checksum(header: &[u8], body: &[u8]) -> u32 {
    let crc = crate::crc::crc32c(&header[..20]);
    crate::crc::crc32c_append(crate::crc::crc32c_append(crc, &[0; 4]), body)
}

/// Reads one frame from the start of `buffer`. On success returns the header
/// and the body; the frame took `FRAME_HEADER_BYTES + body.len()` bytes.
/// The header is checked before the body is waited for, so an oversized or
/// foreign frame is refused at once.
pub fn decode_frame(buffer: &[u8], body_bytes_max: u32) -> Result<(FrameHeader, &[u8]), FrameError> {
    let Some(header) = buffer.get(..FRAME_HEADER_BYTES) else {
        return Err(FrameError::Incomplete { needed: FRAME_HEADER_BYTES - buffer.len() });
    };
    let magic = [header[0], header[1]];
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    if header[2] != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(header[2]));
    }
    let flags = u16_at(header, 4);
    if flags & !flag::KNOWN != 0 || u16_at(header, 6) != 0 {
        return Err(FrameError::BadFlags(flags));
    }
    let body_bytes = u32_at(header, 16);
    let limit = body_bytes_max.min(FRAME_BODY_BYTES_MAX);
    if body_bytes > limit {
        return Err(FrameError::TooLarge { body_bytes, limit });
    }
    let end = FRAME_HEADER_BYTES + body_bytes as usize;
    let Some(body) = buffer.get(FRAME_HEADER_BYTES..end) else {
        return Err(FrameError::Incomplete { needed: end - buffer.len() });
    };
    let stored = u32_at(header, 20);
    let computed = checksum(header, body);
    if stored != computed {
        return Err(FrameError::BadChecksum { stored, computed });
    }
    let mut request_id = [0; 8];
    request_id.copy_from_slice(&header[8..16]);
    let header = FrameHeader { opcode: header[3], flags, request_id: u64::from_le_bytes(request_id), body_bytes };
    Ok((header, body))
}

/// Appends a frame to `out`, its body written by `write_body` straight into
/// `out` (no copy); the length and checksum are filled in afterwards.
///
/// Panics if the body passes `FRAME_BODY_BYTES_MAX`: the callers build bodies
/// from bounded parts, so that would be a bug, not an input.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, flags: u16, request_id: u64, write_body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&FRAME_MAGIC);
    out.push(PROTOCOL_VERSION);
    out.push(opcode);
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    write_body(out);
    let body_bytes = out.len() - start - FRAME_HEADER_BYTES;
    assert!(body_bytes <= FRAME_BODY_BYTES_MAX as usize, "a {body_bytes}-byte body passes the frame limit");
    out[start + 16..start + 20].copy_from_slice(&(body_bytes as u32).to_le_bytes());
    let (header, body) = out[start..].split_at(FRAME_HEADER_BYTES);
    let crc = checksum(header, body);
    out[start + 20..start + 24].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, 0x10, 0, 7, |b| b.extend_from_slice(body));
        out
    }

    #[test]
    fn round_trip_and_incomplete_at_every_length() {
        let bytes = frame(b"hello");
        let (header, body) = decode_frame(&bytes, FRAME_BODY_BYTES_MAX).unwrap();
        assert_eq!(header, FrameHeader { opcode: 0x10, flags: 0, request_id: 7, body_bytes: 5 });
        assert_eq!(body, b"hello");
        for length in 0..bytes.len() {
            assert!(
                matches!(decode_frame(&bytes[..length], FRAME_BODY_BYTES_MAX), Err(FrameError::Incomplete { needed }) if needed > 0),
                "length {length}"
            );
        }
    }

    #[test]
    fn every_bit_flip_is_refused() {
        let bytes = frame(b"some body bytes");
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let result = decode_frame(&bad, FRAME_BODY_BYTES_MAX);
            // A flip in the length field may make the frame look longer: incomplete, never accepted.
            assert!(result.is_err(), "bit {bit} accepted");
        }
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header() {
        let mut bytes = frame(b"x");
        bytes[16..20].copy_from_slice(&(FRAME_BODY_BYTES_MAX + 1).to_le_bytes());
        assert_eq!(
            decode_frame(&bytes[..FRAME_HEADER_BYTES], FRAME_BODY_BYTES_MAX),
            Err(FrameError::TooLarge { body_bytes: FRAME_BODY_BYTES_MAX + 1, limit: FRAME_BODY_BYTES_MAX })
        );
        assert_eq!(decode_frame(&frame(&[0; 100]), 64).unwrap_err().code(), Some(code::FRAME_TOO_LARGE));
    }
}
