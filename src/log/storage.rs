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

/// Bytes an unprivileged writer may still use on the file system of `path`.
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `statvfs` fills the zeroed struct we pass and reads the
    // NUL-terminated path, which lives until the call returns.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
}

impl LogStorage for FileStorage {
    fn create_segment(&mut self, header: &SegmentHeader, size_bytes: u64) -> io::Result<Box<dyn SegmentFile>> {
        let path = self.directory.join(segment_file_name(header.segment_index));
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        preallocate(&file, size_bytes)?;
        file.write_all_at(&header.encode(), 0)?;
        file.sync_all()?;
        sync_directory(&self.directory)?;
        match self.mode {
            WriteMode::Pwrite => Ok(Box::new(PwriteSegment { file })),
            WriteMode::Mmap => {
                // SAFETY: the file was just created by this process and only this
                // writer touches it until it is closed; other readers (recovery,
                // `yeyak log`) run when the engine does not.
                let map = unsafe { memmap2::MmapMut::map_mut(&file)? };
                Ok(Box::new(MmapSegment { map, dirty_from: usize::MAX, dirty_to: 0, _file: file }))
            }
        }
    }
}

struct PwriteSegment {
    file: File,
}

impl SegmentFile for PwriteSegment {
    fn write_at(&mut self, offset_bytes: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, offset_bytes)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
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
