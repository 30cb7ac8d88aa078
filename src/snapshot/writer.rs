//! Taking a snapshot while reservations go on, and retiring what it makes
//! unnecessary (older snapshots, log segments wholly behind the kept ones).
//!
//! The order of steps is the argument for correctness (src/state/restore.rs
//! explains the window):
//! 1. read `start_lsn` (acquire: every record numbered below it has been
//!    appended, and its person's latch taken before the append);
//! 2. read the capacities under the capacity lock, then every person under
//!    their latch, streaming chunks into `snapshot-….ysnap.tmp`;
//! 3. read `end_lsn`; write the header; sync the file;
//! 4. wait until the log is durable up to `end_lsn`: the snapshot may show
//!    the effect of any record below it, and must not outlive a crash that
//!    loses one of them;
//! 5. rename into place and sync the directory: the snapshot now exists;
//! 6. only then remove older snapshots and log segments behind the kept ones.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::log::storage::{available_bytes, create_directory_durably, sync_directory};
use crate::log::LogWriter;
use crate::snapshot::format::{
    align_chunk, chunk_kind, inventory_digest, snapshot_file_name, CapacityImage, ChunkHeader, PersonImage,
    SnapshotHeader, CHUNK_CAPACITIES_MAX, CHUNK_HEADER_BYTES, CHUNK_PEOPLE_MAX, SNAPSHOT_HEADER_BYTES,
    TEMPORARY_SUFFIX,
};
use crate::snapshot::SnapshotError;
use crate::state::Engine;

/// What one snapshot holds and what writing it took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub path: PathBuf,
    pub header: SnapshotHeader,
    pub size_bytes: u64,
    pub elapsed: Duration,
}

/// Streams chunks into the temporary file, counting what it wrote.
struct ChunkWriter {
    out: io::BufWriter<File>,
    position: usize,
    chunk_count: u32,
}

impl ChunkWriter {
    /// Writes one chunk: its header, the rkyv archive of its items, padding.
    fn write_chunk(
        &mut self,
        kind: u8,
        item_count: usize,
        body: Result<rkyv::util::AlignedVec, rkyv::rancor::Error>,
    ) -> io::Result<()> {
        let body = body.map_err(io::Error::other)?;
        let header = ChunkHeader {
            body_bytes: u32::try_from(body.len()).map_err(io::Error::other)?,
            kind,
            item_count: item_count as u32,
            body_crc: crate::crc::crc32c(&body),
        };
        self.out.write_all(&header.encode())?;
        self.out.write_all(&body)?;
        let end = self.position + CHUNK_HEADER_BYTES + body.len();
        let next = align_chunk(end);
        self.out.write_all(&[0; 16][..next - end])?;
        self.position = next;
        self.chunk_count += 1;
        Ok(())
    }
}

/// Takes a snapshot of `engine` into `directory` while other threads go on
/// booking through `log`. Returns `Ok(None)` if no record was logged since
/// the newest snapshot there (nothing to gain).
pub fn take_snapshot(
    engine: &Engine,
    log: &LogWriter,
    directory: &Path,
    free_space_reserve_bytes: u64,
) -> Result<Option<SnapshotSummary>, SnapshotError> {
    let started = Instant::now();
    let io = |source| SnapshotError::Io { path: directory.to_path_buf(), source };
    create_directory_durably(directory).map_err(io)?;
    let start_lsn = log.next_lsn();
    let newest = crate::snapshot::list_snapshots(directory)?.last().map(|(start, _)| *start);
    if newest.is_some_and(|newest| newest >= start_lsn) {
        return Ok(None);
    }
    check_free_space(directory, engine.people_count(), free_space_reserve_bytes)?;
    let path = directory.join(snapshot_file_name(start_lsn));
    let temporary = directory.join(format!("{}{TEMPORARY_SUFFIX}", snapshot_file_name(start_lsn)));
    let written = write_temporary(engine, log, &temporary, start_lsn);
    let (header, size_bytes) = match written {
        Ok(written) => written,
        Err(error) => {
            let _ = std::fs::remove_file(&temporary);
            return Err(error);
        }
    };
    std::fs::rename(&temporary, &path).map_err(|source| SnapshotError::Io { path: path.clone(), source })?;
    sync_directory(directory).map_err(io)?;
    Ok(Some(SnapshotSummary { path, header, size_bytes, elapsed: started.elapsed() }))
}

/// Refuses a snapshot that would leave less than `reserve_bytes` free: the
/// log needs the room more than recovery needs the snapshot.
fn check_free_space(directory: &Path, people: u64, reserve_bytes: u64) -> Result<(), SnapshotError> {
    let available_bytes =
        available_bytes(directory).map_err(|source| SnapshotError::Io { path: directory.to_path_buf(), source })?;
    // 32 bytes a person in the archive, plus chunk headers and slack.
    let needed_bytes = people.saturating_mul(34).saturating_add(1 << 20);
    if available_bytes < needed_bytes.saturating_add(reserve_bytes) {
        return Err(SnapshotError::DiskSpace {
            path: directory.to_path_buf(),
            needed_bytes,
            available_bytes,
            reserve_bytes,
        });
    }
    Ok(())
}

fn write_temporary(
    engine: &Engine,
    log: &LogWriter,
    temporary: &Path,
    start_lsn: u64,
) -> Result<(SnapshotHeader, u64), SnapshotError> {
    let io = |source| SnapshotError::Io { path: temporary.to_path_buf(), source };
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(temporary).map_err(io)?;
    let mut chunks = ChunkWriter { out: io::BufWriter::with_capacity(1 << 20, file), position: 0, chunk_count: 0 };
    chunks.out.write_all(&[0; SNAPSHOT_HEADER_BYTES]).map_err(io)?;
    chunks.position = SNAPSHOT_HEADER_BYTES;

    let capacities: Vec<CapacityImage> = engine
        .capture_capacities()
        .into_iter()
        .map(|(slot, capacity)| CapacityImage { slot: slot.0, capacity })
        .collect();
    for part in capacities.chunks(CHUNK_CAPACITIES_MAX) {
        chunks.write_chunk(chunk_kind::CAPACITIES, part.len(), rkyv::to_bytes(&part.to_vec())).map_err(io)?;
    }
    let mut people = Vec::with_capacity(CHUNK_PEOPLE_MAX);
    let mut people_count = 0u64;
    let mut failure = None;
    engine.capture_people(|key, record| {
        if failure.is_some() {
            return;
        }
        people.extend(PersonImage::new(key, record));
        if people.len() == CHUNK_PEOPLE_MAX {
            people_count += people.len() as u64;
            failure = chunks.write_chunk(chunk_kind::PEOPLE, people.len(), rkyv::to_bytes(&people)).err();
            people.clear();
        }
    });
    if let Some(error) = failure {
        return Err(io(error));
    }
    if !people.is_empty() {
        people_count += people.len() as u64;
        chunks.write_chunk(chunk_kind::PEOPLE, people.len(), rkyv::to_bytes(&people)).map_err(io)?;
    }
    let end_lsn = log.next_lsn();
    let inventory = engine.inventory();
    let stamp = inventory.stamp();
    let header = SnapshotHeader {
        campaign_id: engine.rules().campaign_id,
        start_lsn,
        end_lsn,
        people_count,
        chunk_count: chunks.chunk_count,
        inventory_slots: inventory.slot_count(),
        inventory_digest: inventory_digest(inventory.initial_capacity()),
        inventory_sites: stamp.site_count,
        inventory_stamp: stamp.digest(),
    };
    let size_bytes = chunks.position as u64;
    let file = chunks.out.into_inner().map_err(|e| io(e.into_error()))?;
    file.write_all_at(&header.encode(), 0).map_err(io)?;
    file.sync_all().map_err(io)?;
    log.wait_durable(end_lsn).map_err(SnapshotError::LogUnavailable)?;
    Ok((header, size_bytes))
}

/// Keeps the newest `keep` snapshots of `directory` and removes the others,
/// then the log segments wholly behind the oldest one kept. Returns the paths
/// removed. With nothing kept, nothing is removed.
pub fn retire(directory: &Path, log_directory: &Path, keep: usize) -> Result<Vec<PathBuf>, SnapshotError> {
    let snapshots = crate::snapshot::list_snapshots(directory)?;
    if keep == 0 || snapshots.len() < keep {
        return Ok(Vec::new());
    }
    let (older, kept) = snapshots.split_at(snapshots.len() - keep);
    let mut removed = Vec::new();
    for (_, path) in older {
        std::fs::remove_file(path).map_err(|source| SnapshotError::Io { path: path.clone(), source })?;
        removed.push(path.clone());
    }
    let keep_from_lsn = kept[0].0;
    let segments = crate::log::retention::remove_segments_before(log_directory, keep_from_lsn)
        .map_err(|source| SnapshotError::Io { path: log_directory.to_path_buf(), source })?;
    removed.extend(segments);
    if !removed.is_empty() {
        sync_directory(directory).map_err(|source| SnapshotError::Io { path: directory.to_path_buf(), source })?;
    }
    Ok(removed)
}
