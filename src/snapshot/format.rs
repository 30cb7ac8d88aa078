//! The snapshot file, byte by byte as in docs/snapshot-format.md.
//!
//! A 64-byte header, then chunks. Each chunk is a 16-byte chunk header and an
//! rkyv archive (rkyv 0.8's default format: little-endian, aligned, 32-bit
//! relative pointers) of a `Vec` of fixed-size items, starting 16-byte aligned.
//! Chunks bound the memory a snapshot takes to write and let restore run on
//! several threads.

use crate::inventory::SlotIndex;
use crate::log::format::{u32_le, u64_le};
use crate::state::{CommandKind, LastCommand, PersonKey, PersonRecord};

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"YEYAKSNP";
/// Bumped whenever a byte of this format changes meaning.
pub const SNAPSHOT_FORMAT_VERSION: u16 = 1;
pub const SNAPSHOT_HEADER_BYTES: usize = 64;
pub const CHUNK_HEADER_BYTES: usize = 16;
/// Chunks start at multiples of this (the archives' alignment).
pub const CHUNK_ALIGN_BYTES: usize = 16;
/// People in one chunk: 2 MiB of archive.
pub const CHUNK_PEOPLE_MAX: usize = 1 << 16;
/// Capacity changes in one chunk.
pub const CHUNK_CAPACITIES_MAX: usize = 1 << 16;
/// The largest chunk body a reader accepts (a bound on what a bad file can ask for).
pub const CHUNK_BODY_BYTES_MAX: u32 = 1 << 24;

pub mod chunk_kind {
    pub const PEOPLE: u8 = 1;
    pub const CAPACITIES: u8 = 2;
}

/// One person with a history, as a snapshot holds them. The person holds
/// `slot` unless their last command was a cancel (then `slot` is the one
/// given up), so holding needs no field of its own.
#[derive(rkyv::Archive, rkyv::Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersonImage {
    pub key_low: u64,
    pub key_high: u64,
    pub idempotency_key: u64,
    pub slot: u32,
    /// The last command: 1 reserve, 2 cancel, 3 change (`CommandKind`).
    pub kind: u8,
    /// Zero.
    pub reserved: u8,
}

/// A slot whose capacity differs from the inventory's.
#[derive(rkyv::Archive, rkyv::Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapacityImage {
    pub slot: u32,
    pub capacity: u32,
}

const _: () = assert!(std::mem::size_of::<ArchivedPersonImage>() == 32);
const _: () = assert!(std::mem::size_of::<ArchivedCapacityImage>() == 8);

impl PersonImage {
    pub fn new(key: PersonKey, record: PersonRecord) -> Option<PersonImage> {
        let last = record.last?;
        Some(PersonImage {
            key_low: key.0 as u64,
            key_high: (key.0 >> 64) as u64,
            idempotency_key: last.idempotency_key,
            slot: last.slot.0,
            kind: last.kind as u8,
            reserved: 0,
        })
    }
}

impl ArchivedPersonImage {
    /// The person's key, unchecked (`person` refuses the zero key).
    pub fn key(&self) -> PersonKey {
        PersonKey(u128::from(self.key_high.to_native()) << 64 | u128::from(self.key_low.to_native()))
    }

    /// The person and record this image stands for; `Err` names what is wrong.
    pub fn person(&self) -> Result<(PersonKey, PersonRecord), String> {
        let key = self.key();
        if key.0 == 0 {
            return Err("a person with the zero key".into());
        }
        let kind = match self.kind {
            1 => CommandKind::Reserve,
            2 => CommandKind::Cancel,
            3 => CommandKind::Change,
            other => return Err(format!("person {:#x}: unknown command kind {other}", key.0)),
        };
        if self.reserved != 0 {
            return Err(format!("person {:#x}: reserved byte {}", key.0, self.reserved));
        }
        let slot = SlotIndex(self.slot.to_native());
        let holds = (kind != CommandKind::Cancel).then_some(slot);
        let last = LastCommand { kind, idempotency_key: self.idempotency_key.to_native(), slot };
        Ok((key, PersonRecord { holds, last: Some(last) }))
    }
}

/// The file header:
///
/// ```text
/// 0       8         10           12            16          24        32             40            44
/// | magic | version | header size | campaign id | start lsn | end lsn | people count | chunk count |
/// 44               48                 52                56                60       64
/// | inventory slots | inventory digest | inventory sites | inventory stamp | crc32c |
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub campaign_id: u32,
    /// Every record numbered below this is in the snapshot.
    pub start_lsn: u64,
    /// No record numbered this or above is in the snapshot.
    pub end_lsn: u64,
    pub people_count: u64,
    pub chunk_count: u32,
    pub inventory_slots: u32,
    /// CRC32C of the inventory's initial capacities (u32 LE each).
    pub inventory_digest: u32,
    /// Sites of the inventory; 0: not recorded (a snapshot written before
    /// this field was), and the inventory must then match exactly.
    pub inventory_sites: u32,
    /// `InventoryStamp::digest` of the inventory: its layout and site ids.
    pub inventory_stamp: u32,
}

impl SnapshotHeader {
    pub fn encode(&self) -> [u8; SNAPSHOT_HEADER_BYTES] {
        let mut bytes = [0; SNAPSHOT_HEADER_BYTES];
        bytes[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
        bytes[8..10].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        bytes[10..12].copy_from_slice(&(SNAPSHOT_HEADER_BYTES as u16).to_le_bytes());
        bytes[12..16].copy_from_slice(&self.campaign_id.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.start_lsn.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.end_lsn.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.people_count.to_le_bytes());
        bytes[40..44].copy_from_slice(&self.chunk_count.to_le_bytes());
        bytes[44..48].copy_from_slice(&self.inventory_slots.to_le_bytes());
        bytes[48..52].copy_from_slice(&self.inventory_digest.to_le_bytes());
        bytes[52..56].copy_from_slice(&self.inventory_sites.to_le_bytes());
        bytes[56..60].copy_from_slice(&self.inventory_stamp.to_le_bytes());
        let crc = crate::crc::crc32c(&bytes[..60]);
        bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<SnapshotHeader, String> {
        let bytes = bytes.get(..SNAPSHOT_HEADER_BYTES).ok_or("shorter than the 64-byte header")?;
        if bytes[0..8] != SNAPSHOT_MAGIC {
            return Err("not a yeyak snapshot (bad magic)".into());
        }
        if crate::crc::crc32c(&bytes[..60]) != u32_le(&bytes[60..64]) {
            return Err("header checksum mismatch".into());
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(format!("snapshot format version {version}; this yeyak reads {SNAPSHOT_FORMAT_VERSION}"));
        }
        let header = SnapshotHeader {
            campaign_id: u32_le(&bytes[12..16]),
            start_lsn: u64_le(&bytes[16..24]),
            end_lsn: u64_le(&bytes[24..32]),
            people_count: u64_le(&bytes[32..40]),
            chunk_count: u32_le(&bytes[40..44]),
            inventory_slots: u32_le(&bytes[44..48]),
            inventory_digest: u32_le(&bytes[48..52]),
            inventory_sites: u32_le(&bytes[52..56]),
            inventory_stamp: u32_le(&bytes[56..60]),
        };
        if header.start_lsn == 0 || header.end_lsn < header.start_lsn {
            return Err(format!("records {}..{} is not a window", header.start_lsn, header.end_lsn));
        }
        Ok(header)
    }
}

/// A chunk header:
///
/// ```text
/// 0            4      5          8            12       16
/// | body bytes | kind | reserved | item count | crc32c |
/// ```
/// The CRC32C covers the body (the rkyv archive, without padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    pub body_bytes: u32,
    pub kind: u8,
    pub item_count: u32,
    pub body_crc: u32,
}

impl ChunkHeader {
    pub fn encode(&self) -> [u8; CHUNK_HEADER_BYTES] {
        let mut bytes = [0; CHUNK_HEADER_BYTES];
        bytes[0..4].copy_from_slice(&self.body_bytes.to_le_bytes());
        bytes[4] = self.kind;
        bytes[8..12].copy_from_slice(&self.item_count.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.body_crc.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<ChunkHeader, String> {
        let bytes = bytes.get(..CHUNK_HEADER_BYTES).ok_or("file ends inside a chunk header")?;
        if bytes[5..8] != [0, 0, 0] {
            return Err("chunk header reserved bytes are not zero".into());
        }
        let header = ChunkHeader {
            body_bytes: u32_le(&bytes[0..4]),
            kind: bytes[4],
            item_count: u32_le(&bytes[8..12]),
            body_crc: u32_le(&bytes[12..16]),
        };
        if header.kind != chunk_kind::PEOPLE && header.kind != chunk_kind::CAPACITIES {
            return Err(format!("unknown chunk kind {}", header.kind));
        }
        if header.body_bytes > CHUNK_BODY_BYTES_MAX {
            return Err(format!("chunk body of {} bytes, above {CHUNK_BODY_BYTES_MAX}", header.body_bytes));
        }
        Ok(header)
    }
}

/// Where the next chunk starts after a chunk whose body ends at `end`.
pub fn align_chunk(end: usize) -> usize {
    end.div_ceil(CHUNK_ALIGN_BYTES) * CHUNK_ALIGN_BYTES
}

/// The file name of the snapshot whose records start at `start_lsn`.
pub fn snapshot_file_name(start_lsn: u64) -> String {
    format!("snapshot-{start_lsn:020}.ysnap")
}

/// The start lsn in a snapshot file name, if it is one.
pub fn parse_snapshot_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".ysnap")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A snapshot being written has this suffix until it is complete and synced.
pub const TEMPORARY_SUFFIX: &str = ".tmp";

/// CRC32C of the inventory's initial capacities: a snapshot is only valid for
/// the inventory it was taken of.
pub fn inventory_digest(initial_capacity: &[u32]) -> u32 {
    initial_capacity.chunks(4096).fold(0, |crc, chunk| {
        let bytes: Vec<u8> = chunk.iter().flat_map(|c| c.to_le_bytes()).collect();
        crate::crc::crc32c_append(crc, &bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_every_bit_flip_caught() {
        let header = SnapshotHeader {
            campaign_id: 7,
            start_lsn: 1001,
            end_lsn: 1010,
            people_count: 5,
            chunk_count: 2,
            inventory_slots: 10_800,
            inventory_digest: 0xdead_beef,
            inventory_sites: 20,
            inventory_stamp: 0x1234_5678,
        };
        let bytes = header.encode();
        assert_eq!(&bytes[0..12], b"YEYAKSNP\x01\x00\x40\x00");
        assert_eq!(SnapshotHeader::decode(&bytes), Ok(header));
        for bit in 0..SNAPSHOT_HEADER_BYTES * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(SnapshotHeader::decode(&flipped).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn chunk_header_bytes_are_as_documented() {
        let header = ChunkHeader { body_bytes: 0x20, kind: chunk_kind::PEOPLE, item_count: 1, body_crc: 0x0403_0201 };
        let bytes = header.encode();
        assert_eq!(bytes, [0x20, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 2, 3, 4]);
        assert_eq!(ChunkHeader::decode(&bytes), Ok(header));
        let mut bad = bytes;
        bad[4] = 9;
        assert!(ChunkHeader::decode(&bad).is_err());
    }

    #[test]
    fn person_images_round_trip() {
        let key = PersonKey(0x1234_5678_9abc_def0_1122_3344_5566_7788);
        for kind in [CommandKind::Reserve, CommandKind::Cancel, CommandKind::Change] {
            let slot = SlotIndex(77);
            let record = PersonRecord {
                holds: (kind != CommandKind::Cancel).then_some(slot),
                last: Some(LastCommand { kind, idempotency_key: 9, slot }),
            };
            let image = PersonImage::new(key, record).unwrap();
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&vec![image]).unwrap();
            let archived = rkyv::access::<rkyv::Archived<Vec<PersonImage>>, rkyv::rancor::Error>(&bytes).unwrap();
            assert_eq!(archived[0].person(), Ok((key, record)));
        }
        assert_eq!(PersonImage::new(key, PersonRecord::NEW), None);
    }

    #[test]
    fn file_names() {
        assert_eq!(parse_snapshot_file_name(&snapshot_file_name(12_345)), Some(12_345));
        assert_eq!(parse_snapshot_file_name("snapshot-12.ysnap"), None);
        assert_eq!(parse_snapshot_file_name("snapshot-00000000000000012345.ysnap.tmp"), None);
    }
}
