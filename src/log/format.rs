//! The on-disk format of the log, byte by byte as in docs/log-format.md.
//!
//! A segment file is a 64-byte header followed by fixed-size 48-byte records.
//! The log knows nothing of what records mean: it carries a type byte and 32
//! opaque payload bytes for the layer above.

use crate::inventory::InventoryStamp;

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"YEYAKLOG";
/// Bumped whenever a byte of this format changes meaning.
pub const FORMAT_VERSION: u16 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const RECORD_BYTES: usize = 48;
pub const RECORD_HEADER_BYTES: usize = 16;
pub const PAYLOAD_BYTES: usize = RECORD_BYTES - RECORD_HEADER_BYTES;

const _: () = assert!(PAYLOAD_BYTES == crate::state::entry::ENTRY_PAYLOAD_BYTES);
const _: () = assert!(SEGMENT_HEADER_BYTES % 16 == 0 && RECORD_BYTES % 16 == 0);

/// One record, as bytes:
///
/// ```text
/// 0      4        6      7       8              16                         48
/// | crc32c | length | type | flags | sequence number | payload (32 bytes)      |
/// ```
/// All integers little-endian. The CRC32C covers bytes 4..48. `length` is
/// always 48 in format version 1; `flags` is 0.
pub type RecordBytes = [u8; RECORD_BYTES];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub lsn: u64,
    pub kind: u8,
    pub payload: [u8; PAYLOAD_BYTES],
}

/// Why a record's bytes are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordDefect {
    /// All 48 bytes are zero: space the writer has not reached.
    Unwritten,
    ChecksumMismatch {
        stored: u32,
        computed: u32,
    },
    BadLength(u16),
    BadFlags(u8),
}

impl std::fmt::Display for RecordDefect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordDefect::Unwritten => write!(f, "unwritten (zero) record"),
            RecordDefect::ChecksumMismatch { stored, computed } => {
                write!(f, "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
            RecordDefect::BadLength(length) => {
                write!(f, "record length {length}, expected {RECORD_BYTES}")
            }
            RecordDefect::BadFlags(flags) => write!(f, "record flags {flags:#04x}, expected 0"),
        }
    }
}

/// A little-endian u32 from the first 4 bytes (shared with the snapshot format).
pub(crate) fn u32_le(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// A little-endian u64 from the first 8 bytes.
pub(crate) fn u64_le(bytes: &[u8]) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

/// The CRC-32C of a record's bytes 4..48 (everything but the CRC itself).
#[inline]
fn record_crc(bytes: &RecordBytes) -> u32 {
    // Always `Some`: a record is longer than its CRC.
    bytes.last_chunk::<{ RECORD_BYTES - 4 }>().map_or(0, crate::crc::crc32c_fixed)
}

impl Record {
    /// Writes the whole record: its content (`fill`), then its header and CRC (`seal`).
    #[inline(always)]
    pub fn encode_into(&self, bytes: &mut RecordBytes) {
        Record::fill(bytes, self.kind, &self.payload);
        Record::seal(bytes, self.lsn);
    }

    /// Writes what a record says (its type and payload) and nothing else: the
    /// appender's part. The log writer's flusher seals it before writing it.
    #[inline(always)]
    pub fn fill(bytes: &mut RecordBytes, kind: u8, payload: &[u8; PAYLOAD_BYTES]) {
        bytes[6] = kind;
        bytes[16..].copy_from_slice(payload);
    }

    /// Completes a filled record as record number `lsn`: length, flags,
    /// sequence number, then the CRC over bytes 4..48.
    #[inline(always)]
    pub fn seal(bytes: &mut RecordBytes, lsn: u64) {
        bytes[4..6].copy_from_slice(&(RECORD_BYTES as u16).to_le_bytes());
        bytes[7] = 0;
        bytes[8..16].copy_from_slice(&lsn.to_le_bytes());
        let crc = record_crc(bytes);
        bytes[0..4].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn encode(&self) -> RecordBytes {
        let mut bytes = [0; RECORD_BYTES];
        self.encode_into(&mut bytes);
        bytes
    }

    /// Checks and decodes one record; never panics, whatever the bytes.
    /// Inlined into recovery's loop (callgrind: called, it cost 14
    /// instructions a record in saving and restoring registers).
    #[inline(always)]
    pub fn decode(bytes: &RecordBytes) -> Result<Record, RecordDefect> {
        let stored = u32_le(&bytes[0..4]);
        let computed = record_crc(bytes);
        if stored != computed {
            // All zeros never pass the check (their CRC is not 0): only a
            // failed check needs telling unwritten space from damage.
            if bytes.iter().all(|b| *b == 0) {
                return Err(RecordDefect::Unwritten);
            }
            return Err(RecordDefect::ChecksumMismatch { stored, computed });
        }
        let length = u16::from_le_bytes([bytes[4], bytes[5]]);
        if usize::from(length) != RECORD_BYTES {
            return Err(RecordDefect::BadLength(length));
        }
        if bytes[7] != 0 {
            return Err(RecordDefect::BadFlags(bytes[7]));
        }
        let mut payload = [0; PAYLOAD_BYTES];
        payload.copy_from_slice(&bytes[16..]);
        Ok(Record { lsn: u64_le(&bytes[8..16]), kind: bytes[6], payload })
    }
}

/// The segment header:
///
/// ```text
/// 0        8         10            12         16              24          32            36
/// | magic  | version | record size | reserved | segment index | first lsn | campaign id |
/// 36                  40           44          48                  56         60       64
/// | inventory layout  | site count | sites crc | size (bytes)      | reserved | crc32c |
/// ```
/// The CRC32C covers bytes 0..60.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segment_index: u64,
    pub first_lsn: u64,
    pub campaign_id: u32,
    /// What the slot numbers of its records mean (zeros: not recorded).
    pub inventory: InventoryStamp,
    /// The size the file was created (preallocated) with; 0: not recorded.
    pub size_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderDefect {
    #[error("not a yeyak log segment (bad magic)")]
    BadMagic,
    #[error("segment header checksum mismatch")]
    ChecksumMismatch,
    #[error("log format version {0}; this yeyak reads version {FORMAT_VERSION}")]
    UnsupportedVersion(u16),
    #[error("record size {0}; format version {FORMAT_VERSION} has {RECORD_BYTES}")]
    BadRecordSize(u16),
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut bytes = [0; SEGMENT_HEADER_BYTES];
        bytes[0..8].copy_from_slice(&SEGMENT_MAGIC);
        bytes[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[10..12].copy_from_slice(&(RECORD_BYTES as u16).to_le_bytes());
        bytes[16..24].copy_from_slice(&self.segment_index.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.first_lsn.to_le_bytes());
        bytes[32..36].copy_from_slice(&self.campaign_id.to_le_bytes());
        bytes[36..40].copy_from_slice(&self.inventory.layout_crc.to_le_bytes());
        bytes[40..44].copy_from_slice(&self.inventory.site_count.to_le_bytes());
        bytes[44..48].copy_from_slice(&self.inventory.sites_crc.to_le_bytes());
        bytes[48..56].copy_from_slice(&self.size_bytes.to_le_bytes());
        let crc = crate::crc::crc32c(&bytes[..60]);
        bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8; SEGMENT_HEADER_BYTES]) -> Result<SegmentHeader, HeaderDefect> {
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err(HeaderDefect::BadMagic);
        }
        if crate::crc::crc32c(&bytes[..60]) != u32_le(&bytes[60..64]) {
            return Err(HeaderDefect::ChecksumMismatch);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != FORMAT_VERSION {
            return Err(HeaderDefect::UnsupportedVersion(version));
        }
        let record_size = u16::from_le_bytes([bytes[10], bytes[11]]);
        if usize::from(record_size) != RECORD_BYTES {
            return Err(HeaderDefect::BadRecordSize(record_size));
        }
        Ok(SegmentHeader {
            segment_index: u64_le(&bytes[16..24]),
            first_lsn: u64_le(&bytes[24..32]),
            campaign_id: u32_le(&bytes[32..36]),
            inventory: InventoryStamp {
                layout_crc: u32_le(&bytes[36..40]),
                site_count: u32_le(&bytes[40..44]),
                sites_crc: u32_le(&bytes[44..48]),
            },
            size_bytes: u64_le(&bytes[48..56]),
        })
    }
}

/// The file name of a segment: `segment-0000000001.log`.
pub fn segment_file_name(segment_index: u64) -> String {
    format!("segment-{segment_index:010}.log")
}

/// The index in a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".log")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_bytes_are_as_documented() {
        let record = Record { lsn: 0x0102, kind: 1, payload: [0xaa; PAYLOAD_BYTES] };
        let bytes = record.encode();
        assert_eq!(&bytes[4..16], &[48, 0, 1, 0, 0x02, 0x01, 0, 0, 0, 0, 0, 0]);
        assert_eq!(u32_le(&bytes[0..4]), crc32c::crc32c(&bytes[4..]));
        assert_eq!(Record::decode(&bytes), Ok(record));
        assert_ne!(crc32c::crc32c(&[0; RECORD_BYTES - 4]), 0, "decode relies on zeros failing the check");
        assert_eq!(Record::decode(&[0; RECORD_BYTES]), Err(RecordDefect::Unwritten));
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let bytes = Record { lsn: 77, kind: 3, payload: [7; PAYLOAD_BYTES] }.encode();
        for bit in 0..RECORD_BYTES * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(Record::decode(&flipped).is_err(), "bit {bit}");
        }
        assert_eq!(Record::decode(&[0; RECORD_BYTES]), Err(RecordDefect::Unwritten));
    }

    #[test]
    fn segment_header_round_trip_and_defects() {
        let inventory = InventoryStamp { layout_crc: 0x0403_0201, site_count: 0x0807_0605, sites_crc: 0x0c0b_0a09 };
        let header =
            SegmentHeader { segment_index: 3, first_lsn: 1001, campaign_id: 9, inventory, size_bytes: 0x1413_1211 };
        let bytes = header.encode();
        assert_eq!(&bytes[36..48], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], "as docs/log-format.md lays it out");
        assert_eq!(&bytes[48..56], &[0x11, 0x12, 0x13, 0x14, 0, 0, 0, 0]);
        assert_eq!(&bytes[56..60], &[0; 4], "reserved");
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        let mut bad = bytes;
        bad[0] = b'X';
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderDefect::BadMagic));
        let mut bad = bytes;
        bad[20] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderDefect::ChecksumMismatch));
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_file_name("segment-42.log"), None);
    }
}
