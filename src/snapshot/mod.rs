//! Snapshots: the state at a point in the log, so that recovery replays only
//! the log's tail (docs/snapshot-format.md).
//!
//! - `format`: the file, byte by byte; the rkyv item types.
//! - `writer`: taking one in the background while reservations go on; retiring
//!   older snapshots and the log segments they make unnecessary.
//! - this file: finding snapshots, checking one completely before anything is
//!   restored from it, and restoring it into a fresh engine.

pub mod format;
pub mod writer;

use std::path::{Path, PathBuf};

use crate::config::CampaignRules;
use crate::inventory::{Inventory, SlotIndex};
use crate::snapshot::format::{
    align_chunk, chunk_kind, inventory_digest, parse_snapshot_file_name, ArchivedCapacityImage, ArchivedPersonImage,
    ChunkHeader, SnapshotHeader, CHUNK_HEADER_BYTES, SNAPSHOT_HEADER_BYTES, TEMPORARY_SUFFIX,
};
use crate::state::{Engine, LogUnavailable};

pub use writer::{retire, take_snapshot, SnapshotSummary};

/// When snapshots are taken and how many are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// Take one in the background once this many records were logged since
    /// the last one; 0: never in the background (`DurableEngine::take_snapshot` still works).
    pub every_records: u64,
    /// Snapshots kept; log segments behind the oldest kept one are removed. At
    /// least 2 by default, so that a damaged newest snapshot leaves the older
    /// one and the log to recover from.
    pub keep: usize,
    /// Take one when the engine closes cleanly, so that the next start
    /// replays no log (the server sets it; tests that cut logs do not).
    pub on_close: bool,
    /// Free space a snapshot must leave on the disk, for the log's next
    /// segments: a snapshot that would eat into it is not taken.
    pub free_space_reserve_bytes: u64,
    /// Log segment bytes on disk at which a background snapshot is due as
    /// soon as anything new is durable, whatever `every_records` says: the
    /// snapshots kept retire the segments behind them, so segments filled
    /// faster than `every_records` snapshots (or begun a start each, where
    /// a start cannot write on in the last one) do not fill the disk.
    pub log_bytes_before_snapshot: u64,
}

/// The default `free_space_reserve_bytes`: room for about two default log segments.
pub const FREE_SPACE_RESERVE_BYTES: u64 = 512 << 20;
/// The default `log_bytes_before_snapshot`: four default log segments.
pub const LOG_BYTES_BEFORE_SNAPSHOT: u64 = 768 << 20;

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            every_records: 1 << 23,
            keep: 2,
            on_close: false,
            free_space_reserve_bytes: FREE_SPACE_RESERVE_BYTES,
            log_bytes_before_snapshot: LOG_BYTES_BEFORE_SNAPSHOT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("snapshot {path} is not valid at byte {offset}: {reason}")]
    Invalid { path: PathBuf, offset: u64, reason: String },
    #[error("snapshot {path} was refused by the state machine: {reason}")]
    Rejected { path: PathBuf, reason: String },
    /// The snapshot is whole, but of another campaign than campaign.toml
    /// names now: the configuration changed, not the file.
    #[error("snapshot {path} was taken of campaign {snapshot_campaign}, and campaign.toml says campaign {campaign}")]
    OtherCampaign { path: PathBuf, snapshot_campaign: u32, campaign: u32 },
    /// The snapshot is whole, but of another inventory (service days, sites,
    /// capacities) than campaign.toml describes now, and not of its first sites.
    #[error(
        "snapshot {path} was taken of another inventory than campaign.toml describes now ({snapshot_slots} \
         slots then, {slots} now; other capacities, sites or service days): only sites added at the end \
         keep a snapshot usable, and a running campaign's capacities change through ADD_CAPACITY"
    )]
    OtherInventory { path: PathBuf, snapshot_slots: u32, slots: u32 },
    /// The snapshot is whole, but holds more people than campaign.toml's
    /// `limits.people_max` lets the table hold now.
    #[error("snapshot {path} holds {people} people, more than limits.people_max = {people_max}")]
    OverPeopleMax { path: PathBuf, people: u64, people_max: u64 },
    #[error("the log could not make the snapshot's records durable ({0:?}); the snapshot was discarded")]
    LogUnavailable(LogUnavailable),
    #[error(
        "no room for a snapshot in {path}: it needs about {needed_bytes} bytes, {available_bytes} are free, and \
         {reserve_bytes} must stay free for the log; free space"
    )]
    DiskSpace { path: PathBuf, needed_bytes: u64, available_bytes: u64, reserve_bytes: u64 },
}

/// The snapshot files of a directory, by start lsn, oldest first. Leftover
/// temporary files (a snapshot cut short by a crash) are not listed.
pub fn list_snapshots(directory: &Path) -> Result<Vec<(u64, PathBuf)>, SnapshotError> {
    let io = |source| SnapshotError::Io { path: directory.to_path_buf(), source };
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut snapshots = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io)?;
        if let Some(start_lsn) = entry.file_name().to_str().and_then(parse_snapshot_file_name) {
            snapshots.push((start_lsn, entry.path()));
        }
    }
    snapshots.sort();
    Ok(snapshots)
}

/// Whether `name` is a snapshot's temporary name (`snapshot-….ysnap.tmp`):
/// one being written, or one a crash cut short.
pub fn is_temporary_snapshot(name: &str) -> bool {
    name.strip_suffix(TEMPORARY_SUFFIX).is_some_and(|stem| parse_snapshot_file_name(stem).is_some())
}

struct Chunk {
    kind: u8,
    body_offset: usize,
    body_bytes: usize,
}

/// A snapshot file whose every byte has been checked: header, chunk headers,
/// checksums and rkyv archives. Restoring from it can still fail on content
/// that does not fit the engine (a person twice, a slot over capacity).
pub struct CheckedSnapshot {
    pub path: PathBuf,
    pub header: SnapshotHeader,
    map: memmap2::Mmap,
    chunks: Vec<Chunk>,
}

type People = rkyv::Archived<Vec<format::PersonImage>>;
type Capacities = rkyv::Archived<Vec<format::CapacityImage>>;

fn people_of(bytes: &[u8]) -> Result<&[ArchivedPersonImage], rkyv::rancor::Error> {
    rkyv::access::<People, rkyv::rancor::Error>(bytes).map(|people| people.as_slice())
}

fn capacities_of(bytes: &[u8]) -> Result<&[ArchivedCapacityImage], rkyv::rancor::Error> {
    rkyv::access::<Capacities, rkyv::rancor::Error>(bytes).map(|capacities| capacities.as_slice())
}

impl CheckedSnapshot {
    /// Reads and checks the snapshot at `path` for this campaign (its id and
    /// `people_max`) and inventory.
    pub fn open(path: &Path, rules: &CampaignRules, inventory: &Inventory) -> Result<CheckedSnapshot, SnapshotError> {
        let campaign_id = rules.campaign_id;
        let io = |source| SnapshotError::Io { path: path.to_path_buf(), source };
        let invalid = |offset: usize, reason: String| SnapshotError::Invalid {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        // Every byte is checked and restored: have the kernel read it all in
        // while the checks start (a restart after a reboot finds it on disk).
        crate::log::storage::read_ahead(path);
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: snapshot files are written once, completely, before being
        // renamed into place, and never modified afterwards; this process is
        // the only writer of its data directory.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let header = SnapshotHeader::decode(&map).map_err(|reason| invalid(0, reason))?;
        if header.campaign_id != campaign_id {
            let (snapshot_campaign, campaign) = (header.campaign_id, campaign_id);
            return Err(SnapshotError::OtherCampaign { path: path.to_path_buf(), snapshot_campaign, campaign });
        }
        if !taken_of_this_inventory_or_its_first_sites(&header, inventory) {
            let (snapshot_slots, slots) = (header.inventory_slots, inventory.slot_count());
            return Err(SnapshotError::OtherInventory { path: path.to_path_buf(), snapshot_slots, slots });
        }
        if header.people_count > rules.people_max {
            let (people, people_max) = (header.people_count, rules.people_max);
            return Err(SnapshotError::OverPeopleMax { path: path.to_path_buf(), people, people_max });
        }
        if path.file_name().and_then(|n| n.to_str()).and_then(format::parse_snapshot_file_name)
            != Some(header.start_lsn)
        {
            return Err(invalid(16, format!("starts at record {}, its file name says otherwise", header.start_lsn)));
        }
        // A chunk takes at least its 16-byte header: a count beyond that is a lie, not an allocation.
        let mut chunks = Vec::with_capacity((header.chunk_count as usize).min(map.len() / CHUNK_HEADER_BYTES));
        let mut position = SNAPSHOT_HEADER_BYTES;
        let mut people_count = 0u64;
        for _ in 0..header.chunk_count {
            let chunk_header =
                ChunkHeader::decode(&map[position.min(map.len())..]).map_err(|r| invalid(position, r))?;
            let body_offset = position + CHUNK_HEADER_BYTES;
            let body_bytes = chunk_header.body_bytes as usize;
            let body = map.get(body_offset..body_offset + body_bytes).ok_or_else(|| {
                invalid(position, format!("chunk of {body_bytes} bytes runs past the end of the file"))
            })?;
            if crate::crc::crc32c(body) != chunk_header.body_crc {
                return Err(invalid(position, "chunk checksum mismatch".into()));
            }
            let items = match chunk_header.kind {
                chunk_kind::PEOPLE => people_of(body).map(|people| {
                    // The snapshot's own slots: sites added since have no holder in it.
                    let slots = header.inventory_slots;
                    let bad = people.iter().find_map(|image| match image.person() {
                        Err(reason) => Some(reason),
                        Ok((key, _)) if image.slot.to_native() >= slots => {
                            Some(format!("person {:#x} names slot #{}, outside the inventory", key.0, image.slot))
                        }
                        Ok(_) => None,
                    });
                    (people.len(), bad)
                }),
                _ => capacities_of(body).map(|capacities| {
                    let slots = header.inventory_slots;
                    let bad = capacities.iter().find(|image| image.slot.to_native() >= slots).map(|image| {
                        format!("a capacity for slot #{}, outside the snapshot's {slots} slots", image.slot)
                    });
                    (capacities.len(), bad)
                }),
            }
            .map_err(|e| invalid(body_offset, format!("chunk archive does not check: {e}")))?;
            let items = match items {
                (_, Some(reason)) => return Err(invalid(body_offset, reason)),
                (count, None) => count,
            };
            if items != chunk_header.item_count as usize {
                return Err(invalid(
                    position,
                    format!("chunk holds {items} items, its header says {}", chunk_header.item_count),
                ));
            }
            if chunk_header.kind == chunk_kind::PEOPLE {
                people_count += items as u64;
            }
            chunks.push(Chunk { kind: chunk_header.kind, body_offset, body_bytes });
            let padding_start = body_offset + body_bytes;
            position = align_chunk(padding_start);
            // Padding is outside every checksum: it must be zeros, so that no byte goes unchecked.
            if map.get(padding_start..position).is_none_or(|padding| padding.iter().any(|b| *b != 0)) {
                return Err(invalid(padding_start, "chunk padding is missing or not zero".into()));
            }
        }
        if position != map.len() {
            return Err(invalid(
                position.min(map.len()),
                format!("{} bytes after the last chunk", map.len().abs_diff(position)),
            ));
        }
        if people_count != header.people_count {
            return Err(invalid(
                32,
                format!("{people_count} people in the chunks, the header says {}", header.people_count),
            ));
        }
        Ok(CheckedSnapshot { path: path.to_path_buf(), header, map, chunks })
    }

    fn body(&self, chunk: &Chunk) -> &[u8] {
        &self.map[chunk.body_offset..chunk.body_offset + chunk.body_bytes]
    }

    /// Restores the snapshot into a freshly built engine, people on `threads`
    /// threads. Returns the slots whose count went below zero (more holders
    /// than seats, as a fuzzy snapshot may show): the log window must bring
    /// them back, and `Engine::check_window` checks that it did.
    pub fn restore(&self, engine: &Engine, threads: usize) -> Result<Vec<u32>, SnapshotError> {
        let rejected = |reason: String| SnapshotError::Rejected { path: self.path.clone(), reason };
        for chunk in self.chunks.iter().filter(|c| c.kind == chunk_kind::CAPACITIES) {
            let capacities = capacities_of(self.body(chunk)).map_err(|e| rejected(e.to_string()))?;
            for image in capacities {
                engine
                    .restore_capacity(SlotIndex(image.slot.to_native()), image.capacity.to_native())
                    .map_err(rejected)?;
            }
        }
        let people: Vec<&Chunk> = self.chunks.iter().filter(|c| c.kind == chunk_kind::PEOPLE).collect();
        let threads = threads.clamp(1, people.len().max(1));
        let results: Vec<Result<Vec<u32>, String>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|worker| {
                    let people = &people;
                    scope.spawn(move || {
                        let mut wrapped = Vec::new();
                        for chunk in people.iter().skip(worker).step_by(threads) {
                            self.restore_people(engine, chunk, &mut wrapped)?;
                        }
                        Ok(wrapped)
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err("restore thread panicked".into()))).collect()
        });
        let mut wrapped = Vec::new();
        for result in results {
            wrapped.extend(result.map_err(rejected)?);
        }
        Ok(wrapped)
    }

    fn restore_people(&self, engine: &Engine, chunk: &Chunk, wrapped: &mut Vec<u32>) -> Result<(), String> {
        /// How many people at a time the cache lines are asked for, a group
        /// ahead (`crate::visit_prefetched`): holders' slots are random, so
        /// each restore would otherwise wait for a cache miss.
        const GROUP: usize = 8;
        let people = people_of(self.body(chunk)).map_err(|e| e.to_string())?;
        let prefetch =
            |image: &ArchivedPersonImage| engine.prefetch_person_and_slot(image.key(), image.slot.to_native());
        crate::try_visit_prefetched::<_, _, _, GROUP>(people, prefetch, |image, ()| {
            let (key, record) = image.person()?;
            wrapped.extend(engine.restore_person(key, record)?);
            Ok(())
        })
    }
}

/// Whether a snapshot with `header` restores into `inventory`: taken of the
/// same inventory (slots, initial capacities and, where the header records
/// it, layout and sites), or of the inventory of its first sites, with sites
/// added at the end since (docs/snapshot-format.md). Slots are numbered site
/// by site, so the snapshot's slot numbers keep their meaning; the added
/// sites' slots start with their inventory's capacity and no holder.
fn taken_of_this_inventory_or_its_first_sites(header: &SnapshotHeader, inventory: &Inventory) -> bool {
    let initial = inventory.initial_capacity();
    if header.inventory_sites == 0 {
        // Written before snapshots recorded their sites: the same inventory only.
        return header.inventory_slots == inventory.slot_count()
            && header.inventory_digest == inventory_digest(initial);
    }
    let Some(stamp) = inventory.stamp_of_first(header.inventory_sites as usize) else {
        return false;
    };
    let slots = inventory.slots_of_first(header.inventory_sites);
    stamp.digest() == header.inventory_stamp
        && u64::from(header.inventory_slots) == slots
        && initial
            .get(..header.inventory_slots as usize)
            .is_some_and(|first| inventory_digest(first) == header.inventory_digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(sites: u32, days: u32) -> Inventory {
        let text = crate::config::DEMO_CAMPAIGN_TOML
            .replace("sites = 15000", &format!("sites = {sites}"))
            .replace("regions = 17", "regions = 3")
            .replace("days = 30", &format!("days = {days}"));
        let rules = CampaignRules::parse(&text).unwrap();
        Inventory::load(&rules, Path::new(".")).unwrap()
    }

    fn header_of(inventory: &Inventory) -> SnapshotHeader {
        SnapshotHeader {
            campaign_id: 1,
            start_lsn: 1,
            end_lsn: 1,
            people_count: 0,
            chunk_count: 0,
            inventory_slots: inventory.slot_count(),
            inventory_digest: inventory_digest(inventory.initial_capacity()),
            inventory_sites: inventory.stamp().site_count,
            inventory_stamp: inventory.stamp().digest(),
        }
    }

    #[test]
    fn a_snapshot_restores_into_its_inventory_or_one_with_sites_added_at_the_end() {
        let fits = taken_of_this_inventory_or_its_first_sites;
        let (small, grown) = (inventory(20, 30), inventory(22, 30));
        let header = header_of(&small);
        assert!(fits(&header, &small));
        assert!(fits(&header, &grown));
        assert!(!fits(&header, &inventory(19, 30)), "a site fewer");
        assert!(!fits(&header, &inventory(22, 31)), "a service day more: other slot numbers");
        assert!(!fits(&header_of(&grown), &small));
        assert!(!fits(&SnapshotHeader { inventory_stamp: header.inventory_stamp ^ 1, ..header }, &grown));
        assert!(!fits(&SnapshotHeader { inventory_slots: header.inventory_slots - 1, ..header }, &grown));
        assert!(!fits(&SnapshotHeader { inventory_digest: header.inventory_digest ^ 1, ..header }, &grown));
        assert!(!fits(&SnapshotHeader { inventory_digest: header.inventory_digest ^ 1, ..header }, &small));
        // A CSV inventory with the same capacities site by site: only the
        // sites' order tells the inventories apart, and the stamp does.
        let rules = CampaignRules::demo();
        let csv = |sites: &[u32]| {
            let mut text = String::from("site_id,region_id,site_name,date,time,capacity\n");
            for site in sites {
                text.push_str(&format!("{site},1,Site {site},2021-08-26,09:00,5\n"));
            }
            Inventory::from_csv(&rules, text.as_bytes()).unwrap()
        };
        let ordered = header_of(&csv(&[7, 9]));
        assert!(fits(&ordered, &csv(&[7, 9])));
        assert!(fits(&ordered, &csv(&[7, 9, 8])), "a site added at the end");
        assert!(!fits(&ordered, &csv(&[9, 7])), "the same sites in another order");
        assert!(!fits(&ordered, &csv(&[7, 8, 9])), "a site added in the middle");
        // Written before snapshots recorded their sites: the same inventory only.
        let unstamped = SnapshotHeader { inventory_sites: 0, inventory_stamp: 0, ..header };
        assert!(fits(&unstamped, &small));
        assert!(!fits(&unstamped, &grown));
    }
}
