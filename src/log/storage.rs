//! Where segment bytes go: behind two small traits, so that the writer does
//! not know whether it writes with `pwrite` or into a mapping, and so that
//! fault tests can plug in a backend that fails on purpose.
//!
//! Two real backends, chosen by `WriteMode` (docs/log-format.md says which is
//! the default and why, from the measurements in docs/benchmarks.md):
//! - `Pwrite`: `pwrite` into the file, `fdatasync` to make it durable;
//! - `Mmap`: copy into a shared writable mapping, `msync` the written range.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::log::format::{segment_file_name, SegmentHeader, SEGMENT_HEADER_BYTES};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    Pwrite,
    Mmap,
}

/// One preallocated segment file being written.
pub trait SegmentFile: Send {
    /// Writes `bytes` at `offset_bytes` (not yet durable).
    fn write_at(&mut self, offset_bytes: u64, bytes: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable.
    fn sync(&mut self) -> io::Result<()>;
}

/// Creates segment files.
pub trait LogStorage: Send {
    /// Creates, preallocates and syncs a segment with its header written.
    fn create_segment(&mut self, header: &SegmentHeader, size_bytes: u64) -> io::Result<Box<dyn SegmentFile>>;
    /// Opens the named segment `header` describes, which recovery has just
    /// read and left as its records followed by zeros, those records durable
    /// (`RecoveredLog::repair` zeroes a torn tail and syncs the last segment),
    /// to write after its first `records` records, its blocks reserved first.
    /// Refused (InvalidData) if the file is not the size its header says.
    fn open_segment(&mut self, header: &SegmentHeader, records: u64) -> io::Result<Box<dyn SegmentFile>>;
}

pub struct FileStorage {
    directory: PathBuf,
    mode: WriteMode,
}

impl FileStorage {
    pub fn new(directory: &Path, mode: WriteMode) -> FileStorage {
        FileStorage { directory: directory.to_path_buf(), mode }
    }
}

/// The extension of a segment being created (`segment-…` + `.log.tmp`).
pub const SEGMENT_TEMPORARY_EXTENSION: &str = "log.tmp";

/// The files of `directory` whose names `matches`, sorted; none if there is
/// no such directory.
pub fn files_named(directory: &Path, matches: impl Fn(&str) -> bool) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(&matches) {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Removes the files of `directory` whose names `matches`, and returns each
/// with what removing it did (or the directory, if it could not be read or
/// synced); one that cannot be removed does not stop the others.
pub fn remove_files_named(directory: &Path, matches: impl Fn(&str) -> bool) -> Vec<(PathBuf, io::Result<()>)> {
    let found = match files_named(directory, matches) {
        Ok(found) => found,
        Err(error) => return vec![(directory.to_path_buf(), Err(error))],
    };
    let mut removed: Vec<(PathBuf, io::Result<()>)> =
        found.into_iter().map(|path| (path.clone(), std::fs::remove_file(&path))).collect();
    if removed.iter().any(|(_, result)| result.is_ok()) {
        if let Err(error) = sync_directory(directory) {
            removed.push((directory.to_path_buf(), Err(error)));
        }
    }
    removed
}

/// Whether `name` is a segment's temporary name, `segment-NNNNNNNNNN.log.tmp`:
/// what a crash left while creating the segment, cut short before it was
/// named (nothing was ever written to it), or already named but not yet
/// unlinked from this name (a second name for the named segment's file,
/// which would keep its blocks on the disk after the segment is retired).
pub fn is_unnamed_segment(name: &str) -> bool {
    name.strip_suffix(SEGMENT_TEMPORARY_EXTENSION)
        .and_then(|stem| stem.strip_suffix('.'))
        .is_some_and(|stem| crate::log::format::parse_segment_file_name(&format!("{stem}.log")).is_some())
}

/// Reserves the file's blocks now, so that a full disk shows up at segment
/// creation rather than in the middle of a group.
fn preallocate(file: &File, size_bytes: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let length = libc::off_t::try_from(size_bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment size too large"))?;
    // SAFETY: `fallocate` on a file descriptor we own, with no pointers involved.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) };
    if result == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EOPNOTSUPP) {
        // Filesystems without fallocate (tmpfs on old kernels): a sparse file.
        return file.set_len(size_bytes);
    }
    Err(error)
}

/// Asks the kernel to start reading a whole file in, in large requests, so
/// that a reader going through it (recovery's mapping of a log segment, a
/// snapshot's) finds it in memory instead of faulting it in a little at a
/// time. One request reads no more than the larger of the device's
/// read-ahead window and its largest request (8 MiB on this project's VM,
/// where `fincore` showed a single whole-file request reading only that
/// much; often 128 KiB and about 1 MiB), so the file is asked for 1 MiB at a
/// time; each call only queues the reads. Advice only: a failure just means
/// slower reads.
pub fn read_ahead(path: &Path) {
    const CHUNK_BYTES: u64 = 1 << 20;
    let Ok(file) = File::open(path) else { return };
    let length = file.metadata().map_or(0, |m| m.len());
    for offset in (0..length).step_by(CHUNK_BYTES as usize) {
        advise(&file, offset, CHUNK_BYTES, libc::POSIX_FADV_WILLNEED);
    }
}

/// `posix_fadvise` over `length` bytes from `offset`. Advice only: a
/// failure (or a range past what `off_t` holds) changes nothing that is
/// durable, so it is not an error of the log.
fn advise(file: &File, offset: u64, length: u64, advice: libc::c_int) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(length)) = (libc::off_t::try_from(offset), libc::off_t::try_from(length)) else {
        return;
    };
    // SAFETY: `posix_fadvise` on a file descriptor we own, no pointers.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, length, advice) };
}

pub fn sync_directory(directory: &Path) -> io::Result<()> {
    File::open(directory)?.sync_all()
}

/// Creates a directory (if missing) and makes its entry in the parent durable.
pub fn create_directory_durably(directory: &Path) -> io::Result<()> {
    if directory.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(directory)?;
    sync_directory(directory.parent().unwrap_or(Path::new(".")))
}

/// Bytes this process may still write on the file system of `path`: the
/// free blocks when it runs as root (which may use the blocks a file system
/// reserves for it), else the blocks available to unprivileged writers.
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    let path = c_path(path)?;
    // SAFETY: `statvfs` fills the zeroed struct we pass and reads the
    // NUL-terminated path, which lives until the call returns.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `geteuid` only reads the process's credentials.
    let blocks = if unsafe { libc::geteuid() } == 0 { stats.f_bfree } else { stats.f_bavail };
    Ok((blocks as u64).saturating_mul(stats.f_frsize as u64))
}

/// Whether this process may write into `directory` (a read-only mount, or
/// its permissions, say no), asked of the kernel without writing anything.
pub fn writable(directory: &Path) -> io::Result<()> {
    let path = c_path(directory)?;
    // SAFETY: `access` reads the NUL-terminated path, which lives until the call returns.
    if unsafe { libc::access(path.as_ptr(), libc::W_OK) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `path` for a libc call.
fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

impl LogStorage for FileStorage {
    /// Made whole under a temporary name (preallocated, its header synced)
    /// and then given its name: a segment file is never seen shorter than
    /// its header, so recovery may take such a file for a cut from outside
    /// yeyak rather than a crash's leftover (docs/log-format.md).
    fn create_segment(&mut self, header: &SegmentHeader, size_bytes: u64) -> io::Result<Box<dyn SegmentFile>> {
        let path = self.directory.join(segment_file_name(header.segment_index));
        let temporary = path.with_extension(SEGMENT_TEMPORARY_EXTENSION);
        // Left by a crash while this same segment was being created: never named, nothing in it.
        match std::fs::remove_file(&temporary) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&temporary)?;
        preallocate(&file, size_bytes)?;
        file.write_all_at(&header.encode(), 0)?;
        file.sync_all()?;
        // A link fails where the name is taken: a segment is never replaced.
        std::fs::hard_link(&temporary, &path)?;
        std::fs::remove_file(&temporary)?;
        sync_directory(&self.directory)?;
        self.segment_file(file, 0)
    }

    fn open_segment(&mut self, header: &SegmentHeader, records: u64) -> io::Result<Box<dyn SegmentFile>> {
        let path = self.directory.join(segment_file_name(header.segment_index));
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let length = file.metadata()?.len();
        let written_end = SEGMENT_HEADER_BYTES as u64 + records.saturating_mul(crate::log::format::RECORD_BYTES as u64);
        if length != header.size_bytes || written_end > length {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: {length} bytes, its header says {} (and {records} records end at {written_end})",
                    path.display(),
                    header.size_bytes
                ),
            ));
        }
        // Its blocks reserved again: a segment given its size back after a
        // cut (`set_len`), or copied by a tool that keeps holes, has none
        // behind its zeros, and a full disk must show here, not in a group
        // (or, mapped, as a fault in the middle of a write).
        preallocate(&file, header.size_bytes)?;
        self.segment_file(file, written_end)
    }
}

impl FileStorage {
    /// A segment file to write in, its bytes before `written_end` already durable.
    fn segment_file(&self, file: File, written_end: u64) -> io::Result<Box<dyn SegmentFile>> {
        match self.mode {
            WriteMode::Pwrite => {
                let cached_from_bytes = written_end - written_end % page_bytes();
                Ok(Box::new(PwriteSegment { file, written_end_bytes: written_end, cached_from_bytes }))
            }
            WriteMode::Mmap => {
                // SAFETY: the file belongs to this engine (the data directory's
                // lock is held) and only this writer touches it until it is
                // closed; other readers (recovery, `yeyak log`) run when the
                // engine does not.
                let map = unsafe { memmap2::MmapMut::map_mut(&file)? };
                Ok(Box::new(MmapSegment { map, dirty_from: usize::MAX, dirty_to: 0, _file: file }))
            }
        }
    }
}

struct PwriteSegment {
    file: File,
    /// The end of the furthest write.
    written_end_bytes: u64,
    /// Where the segment's pages may still be in the page cache: everything
    /// before it was durable and has been let go.
    cached_from_bytes: u64,
}

impl PwriteSegment {
    /// Lets the page cache go of what is now durable. The log is read back
    /// only at recovery, so its pages are of no use once synced; kept, they
    /// make every group's write land in pages the kernel has not used
    /// recently, which costs several times the copy itself (on this project's
    /// VM: 0.9-2.2 s of kernel time for 768 MB synced in 3 MiB groups against
    /// 0.16-0.24 s with the pages let go; docs/benchmarks.md). The page the
    /// last write ended in is kept (the kernel drops only whole pages), so
    /// the next group does not read it back from the disk.
    fn release_durable_pages(&mut self) {
        let length = self.written_end_bytes.saturating_sub(self.cached_from_bytes);
        if length > 0 {
            advise(&self.file, self.cached_from_bytes, length, libc::POSIX_FADV_DONTNEED);
        }
        self.cached_from_bytes = self.written_end_bytes - self.written_end_bytes % page_bytes();
    }
}

/// The size of the pages the page cache is let go in (the kernel drops only
/// whole pages): 4 KiB on x86-64, up to 64 KiB elsewhere.
fn page_bytes() -> u64 {
    static PAGE_BYTES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    // SAFETY: `sysconf` reads a system constant; no pointers.
    *PAGE_BYTES.get_or_init(|| u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1))
}

impl SegmentFile for PwriteSegment {
    fn write_at(&mut self, offset_bytes: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, offset_bytes)?;
        self.written_end_bytes = self.written_end_bytes.max(offset_bytes + bytes.len() as u64);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.release_durable_pages();
        Ok(())
    }
}

struct MmapSegment {
    map: memmap2::MmapMut,
    dirty_from: usize,
    dirty_to: usize,
    _file: File,
}

impl SegmentFile for MmapSegment {
    fn write_at(&mut self, offset_bytes: u64, bytes: &[u8]) -> io::Result<()> {
        let start = usize::try_from(offset_bytes).map_err(|_| io::Error::other("offset too large"))?;
        let end = start + bytes.len();
        let target = self
            .map
            .get_mut(start..end)
            .ok_or_else(|| io::Error::other(format!("write past the segment end ({end} bytes)")))?;
        target.copy_from_slice(bytes);
        self.dirty_from = self.dirty_from.min(start);
        self.dirty_to = self.dirty_to.max(end);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        if self.dirty_from < self.dirty_to {
            self.map.flush_range(self.dirty_from, self.dirty_to - self.dirty_from)?;
        }
        self.dirty_from = usize::MAX;
        self.dirty_to = 0;
        Ok(())
    }
}

/// Segment bytes usable by records: the size minus the header.
pub fn record_area_bytes(segment_size_bytes: u64) -> u64 {
    segment_size_bytes.saturating_sub(SEGMENT_HEADER_BYTES as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_is_named_only_once_whole_and_never_replaced() {
        let directory = tempfile::tempdir().unwrap();
        let mut storage = FileStorage::new(directory.path(), WriteMode::Pwrite);
        let inventory = crate::inventory::InventoryStamp::default();
        let size = 64 + 48 * 4;
        let header = SegmentHeader { segment_index: 1, first_lsn: 1, campaign_id: 9, inventory, size_bytes: size };
        // What a crash while creating segment 1 left: never named, replaced.
        let leftover = directory.path().join("segment-0000000001.log.tmp");
        std::fs::write(&leftover, b"partial").unwrap();
        drop(storage.create_segment(&header, size).unwrap());
        let names: Vec<_> = std::fs::read_dir(directory.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["segment-0000000001.log"]);
        let path = directory.path().join("segment-0000000001.log");
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, size, "named at its full size");
        assert_eq!(SegmentHeader::decode(bytes[..64].try_into().unwrap()), Ok(header), "with its header");
        // Created again (a bug): refused, the segment left as it was.
        let again = storage.create_segment(&header, size).err().expect("a segment is never replaced");
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_segment_is_opened_again_only_at_the_size_its_header_says() {
        let directory = tempfile::tempdir().unwrap();
        let size = 64 + 48 * 4;
        let header = SegmentHeader {
            segment_index: 1,
            first_lsn: 1,
            campaign_id: 9,
            inventory: crate::inventory::InventoryStamp::default(),
            size_bytes: size,
        };
        for mode in [WriteMode::Pwrite, WriteMode::Mmap] {
            let mut storage = FileStorage::new(directory.path(), mode);
            let path = directory.path().join("segment-0000000001.log");
            let _ = std::fs::remove_file(&path);
            let mut segment = storage.create_segment(&header, size).unwrap();
            segment.write_at(64, &[1; 48]).unwrap();
            segment.sync().unwrap();
            drop(segment);
            // Opened after its one record: the next write goes where asked, the first stays.
            let mut segment = storage.open_segment(&header, 1).unwrap();
            segment.write_at(64 + 48, &[2; 48]).unwrap();
            segment.sync().unwrap();
            drop(segment);
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!((&bytes[64..112], &bytes[112..160]), (&[1; 48][..], &[2; 48][..]), "{mode:?}");
            assert!(storage.open_segment(&header, 5).is_err(), "records past the end");
            let other_size = SegmentHeader { size_bytes: size + 48, ..header };
            let refused = storage.open_segment(&other_size, 1).err().unwrap();
            assert_eq!(refused.kind(), io::ErrorKind::InvalidData, "{refused}");
            let absent = SegmentHeader { segment_index: 2, ..header };
            assert_eq!(storage.open_segment(&absent, 0).err().unwrap().kind(), io::ErrorKind::NotFound);
        }
    }

    #[test]
    fn segments_left_under_their_temporary_name_are_removed_and_named_ones_kept() {
        use std::os::unix::fs::MetadataExt;
        let directory = tempfile::tempdir().unwrap();
        let mut storage = FileStorage::new(directory.path(), WriteMode::Pwrite);
        let size = 64 + 48 * 4;
        let header = |segment_index| SegmentHeader {
            segment_index,
            first_lsn: 1,
            campaign_id: 9,
            inventory: crate::inventory::InventoryStamp::default(),
            size_bytes: size,
        };
        drop(storage.create_segment(&header(1), size).unwrap());
        let named = directory.path().join("segment-0000000001.log");
        let bytes = std::fs::read(&named).unwrap();
        // A crash between naming segment 1 and removing its temporary name,
        // and one while creating segment 2, before it was named.
        let second_name = directory.path().join("segment-0000000001.log.tmp");
        std::fs::hard_link(&named, &second_name).unwrap();
        assert_eq!(std::fs::metadata(&named).unwrap().nlink(), 2);
        std::fs::write(directory.path().join("segment-0000000002.log.tmp"), b"partial").unwrap();
        // Not segments' names: left alone.
        for other in ["notes.log.tmp", "segment-0000000003.logtmp", "segment-backup.log.tmp", "segment-1.log.tmp"] {
            std::fs::write(directory.path().join(other), b"not ours").unwrap();
        }
        // One that cannot be removed (a directory) does not stop the others.
        std::fs::create_dir(directory.path().join("segment-0000000004.log.tmp")).unwrap();
        let removed = remove_files_named(directory.path(), is_unnamed_segment);
        let said: Vec<_> = removed
            .iter()
            .map(|(path, result)| (path.file_name().unwrap().to_str().unwrap(), result.is_ok()))
            .collect();
        assert_eq!(
            said,
            [
                ("segment-0000000001.log.tmp", true),
                ("segment-0000000002.log.tmp", true),
                ("segment-0000000004.log.tmp", false)
            ]
        );
        assert_eq!(std::fs::read(&named).unwrap(), bytes, "the named segment is untouched");
        assert_eq!(std::fs::metadata(&named).unwrap().nlink(), 1, "its blocks go when it is retired");
        for other in ["notes.log.tmp", "segment-0000000003.logtmp", "segment-backup.log.tmp", "segment-1.log.tmp"] {
            assert!(directory.path().join(other).exists(), "{other}");
        }
        std::fs::remove_dir(directory.path().join("segment-0000000004.log.tmp")).unwrap();
        assert!(remove_files_named(directory.path(), is_unnamed_segment).is_empty());
        assert!(remove_files_named(&directory.path().join("absent"), is_unnamed_segment).is_empty());
    }

    #[test]
    fn durable_pages_are_let_go_of_up_to_the_page_the_last_write_ended_in() {
        let directory = tempfile::tempdir().unwrap();
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(directory.path().join("s")).unwrap();
        preallocate(&file, 6 * 65_536).unwrap();
        let mut segment = PwriteSegment { file, written_end_bytes: 0, cached_from_bytes: 0 };
        let mut expected = vec![0u8; 6 * 65_536];
        let page = page_bytes() as usize;
        for (group, end) in [(1u8, 3000usize), (2, 10_000), (3, 3 * page), (4, 3 * page + 12), (5, 5 * page + 100)] {
            let start = segment.written_end_bytes as usize;
            expected[start..end].fill(group);
            // A group may be written in two runs (where the ring wraps).
            let middle = start + (end - start) / 2;
            segment.write_at(start as u64, &expected[start..middle]).unwrap();
            segment.write_at(middle as u64, &expected[middle..end]).unwrap();
            segment.sync().unwrap();
            assert_eq!(segment.written_end_bytes, end as u64);
            // Only whole pages before the last write's end are let go of.
            assert_eq!(segment.cached_from_bytes as usize, end / page * page);
        }
        let mut read = vec![0u8; 6 * 65_536];
        segment.file.read_exact_at(&mut read, 0).unwrap();
        assert!(read == expected, "every group reads back after its pages were let go of");
    }
}
