//! Large zeroed tables on transparent huge pages.
//!
//! The people table (1 GiB for 20 M people) and the slot counters (512 MiB for
//! 8 M slots) are read at random, once per command. On 4 KiB pages nearly
//! every access also misses the TLB, and starting up faults in 400,000 pages.
//! On 2 MiB pages both costs mostly vanish. Linux hands out huge pages to a
//! region advised with `MADV_HUGEPAGE` (its default `madvise` mode), so tables
//! are allocated 2 MiB-aligned and advised before their first touch. Where the
//! advice is refused, the table works the same on small pages.
//!
//! `YEYAK_NO_HUGE_PAGES=1` in the environment leaves the advice out, so that
//! benchmarks can measure what huge pages bring (docs/benchmarks.md).

use std::alloc::Layout;
use std::ops::Deref;

/// The huge page size tables are aligned to.
pub const HUGE_PAGE_BYTES: usize = 2 << 20;
/// Every table starts on a cache line, so that the two 32-byte people buckets
/// a search looks at first share one (`state::people`).
pub const CACHE_LINE_BYTES: usize = 64;
/// Smaller tables stay on small pages: they gain little, and faulting in huge
/// pages (the kernel may compact memory to find them) costs more than it saves
/// when a table is made and dropped often, as in the crash tests.
pub const HUGE_TABLE_BYTES_MIN: usize = 64 << 20;

/// Types for which all-zero bytes are a valid value (atomics, integers).
///
/// # Safety
/// An implementor must be valid when every byte of it is zero, and must not
/// need dropping.
pub unsafe trait Zeroable: Sized {}

/// A fixed-length array of zeroed `T`, 2 MiB-aligned and advised onto huge pages.
pub struct ZeroedArray<T: Zeroable> {
    pointer: std::ptr::NonNull<T>,
    length: usize,
    layout: Layout,
}

// SAFETY: the array owns its elements like a `Box<[T]>`; sharing or sending it
// is sound exactly when it would be for `T`.
unsafe impl<T: Zeroable + Send> Send for ZeroedArray<T> {}
// SAFETY: as above.
unsafe impl<T: Zeroable + Sync> Sync for ZeroedArray<T> {}

impl<T: Zeroable> ZeroedArray<T> {
    /// `length` zeroed elements. Aborts if memory runs out, as `Box` does.
    pub fn new(length: usize) -> ZeroedArray<T> {
        // At least one element is allocated, so the layout is never empty.
        let bytes = std::mem::size_of::<T>().checked_mul(length.max(1)).expect("table size fits the address space");
        let align = std::mem::align_of::<T>().max(if bytes >= HUGE_TABLE_BYTES_MIN {
            HUGE_PAGE_BYTES
        } else {
            CACHE_LINE_BYTES
        });
        let layout = Layout::from_size_align(bytes.max(1), align).expect("table layout is valid");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(pointer) = std::ptr::NonNull::new(raw.cast::<T>()) else {
            std::alloc::handle_alloc_error(layout);
        };
        advise_huge_pages(raw, bytes);
        prefault(raw, bytes);
        ZeroedArray { pointer, length, layout }
    }
}

/// Memory this process may still take: the kernel's estimate of what can be
/// given to a program without swapping (`MemAvailable` of /proc/meminfo),
/// capped by the room left under the memory limit of the process's cgroup (a
/// container's limit; v2 `memory.max`, v1 `memory.limit_in_bytes`). `None`
/// where neither can be read.
pub fn available_bytes() -> Option<u64> {
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|meminfo| parse_available_bytes(&meminfo));
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|cgroups| cgroup_room_bytes(&cgroups));
    [machine, cgroup].into_iter().flatten().min()
}

/// Where the memory controller's files of this process's cgroup are, and
/// their names for the limit and the usage.
fn cgroup_memory_files(cgroups: &str) -> Option<(std::path::PathBuf, &'static str, &'static str)> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let relative = |path: &str| path.trim_start_matches('/').to_string();
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            let directory = root.join("memory").join(relative(path));
            return Some((directory, "memory.limit_in_bytes", "memory.usage_in_bytes"));
        }
    }
    let path = cgroups.lines().find_map(|line| line.strip_prefix("0::"))?;
    Some((root.join(relative(path)), "memory.max", "memory.current"))
}

/// Room left under the cgroup's memory limit; `None` without a limit.
fn cgroup_room_bytes(cgroups: &str) -> Option<u64> {
    let (directory, limit_file, usage_file) = cgroup_memory_files(cgroups)?;
    let read = |name: &str| std::fs::read_to_string(directory.join(name)).ok();
    let limit = parse_cgroup_limit(&read(limit_file)?)?;
    let usage: u64 = read(usage_file)?.trim().parse().ok()?;
    Some(limit.saturating_sub(usage))
}

/// A cgroup memory limit: "max" (v2) or a page-rounded 2^63 (v1) mean none.
fn parse_cgroup_limit(text: &str) -> Option<u64> {
    let limit: u64 = text.trim().parse().ok()?;
    (limit < 1 << 62).then_some(limit)
}

fn parse_available_bytes(meminfo: &str) -> Option<u64> {
    kib_field_bytes(meminfo, "MemAvailable")
}

/// The bytes a `Name:   N kB` line of a /proc file says (meminfo, status,
/// smaps_rollup); `None` if the line is missing or not in kB.
pub fn kib_field_bytes(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?;
    let mut words = line.split_whitespace();
    let kibibytes: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then(|| kibibytes.saturating_mul(1024))
}

/// Faults every page of `[start, start + bytes)` in now, so that the kernel
/// zeroes them at start-up rather than in the middle of a flash crowd. The
/// zeroing of a big table (1.5 GiB at national scale) is the larger part of
/// starting up, so it is shared among the cores.
fn prefault(start: *mut u8, bytes: usize) {
    const PAGE: usize = 4096;
    if bytes == 0 {
        return;
    }
    let threads = if bytes >= HUGE_TABLE_BYTES_MIN {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
    } else {
        1
    };
    // Whole huge pages to each thread, so no page is faulted by two.
    let share = bytes.div_ceil(threads).next_multiple_of(HUGE_PAGE_BYTES);
    let address = start as usize;
    let touch = move |from: usize| {
        let end = bytes.min(from + share);
        // Every PAGE bytes, and the last byte: a start that is not page-aligned
        // (a small table) would otherwise leave its last page untouched.
        for offset in (from..end).step_by(PAGE).chain(std::iter::once(end - 1)) {
            // SAFETY: `from <= offset < end <= bytes`, inside the allocation,
            // which nothing else references yet; it is zero already, and stays zero.
            unsafe { ((address + offset) as *mut u8).write_volatile(0) };
        }
    };
    if threads == 1 {
        touch(0);
        return;
    }
    std::thread::scope(|scope| {
        for from in (0..bytes).step_by(share).skip(1) {
            scope.spawn(move || touch(from));
        }
        touch(0);
    });
}

/// Asks the kernel for huge pages over `[start, start + bytes)`; a hint only.
fn advise_huge_pages(start: *mut u8, bytes: usize) {
    if bytes < HUGE_TABLE_BYTES_MIN || std::env::var_os("YEYAK_NO_HUGE_PAGES").is_some() {
        return;
    }
    // SAFETY: `madvise` with MADV_HUGEPAGE changes no memory contents; the
    // range lies inside one allocation we own, and its start is 2 MiB-aligned
    // (hence page-aligned) by the layout.
    let result = unsafe { libc::madvise(start.cast(), bytes, libc::MADV_HUGEPAGE) };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "no huge pages for a table; using small pages");
    }
}

impl<T: Zeroable> Deref for ZeroedArray<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `pointer` points to `length` initialized (zeroed, valid by
        // `Zeroable`) elements that live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.pointer.as_ptr(), self.length) }
    }
}

impl<T: Zeroable> Drop for ZeroedArray<T> {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout; `T` needs no drop.
        unsafe { std::alloc::dealloc(self.pointer.as_ptr().cast(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    // SAFETY: an atomic integer is valid as all zeros.
    unsafe impl Zeroable for AtomicU64 {}

    #[test]
    fn available_memory_is_read_from_meminfo() {
        let meminfo = "MemTotal:       24683700 kB\nMemFree:        21855384 kB\nMemAvailable:   24198716 kB\n";
        assert_eq!(parse_available_bytes(meminfo), Some(24_198_716 * 1024));
        assert_eq!(parse_available_bytes("MemTotal: 1 kB\n"), None, "no MemAvailable line (old kernels)");
        assert_eq!(parse_available_bytes("MemAvailable: lots\n"), None);
        assert_eq!(parse_available_bytes("MemAvailable: 12 MB\n"), None, "a unit other than kB");
        let has_estimate = std::fs::read_to_string("/proc/meminfo").is_ok_and(|m| m.contains("MemAvailable:"));
        if has_estimate {
            assert!(available_bytes().is_some_and(|bytes| bytes > 0));
        }
    }

    #[test]
    fn a_cgroup_limit_is_found_for_either_version_and_none_means_no_limit() {
        let v1 = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n";
        let (directory, limit, usage) = cgroup_memory_files(v1).unwrap();
        assert_eq!(directory, std::path::Path::new("/sys/fs/cgroup/memory/process_api/abc"));
        assert_eq!((limit, usage), ("memory.limit_in_bytes", "memory.usage_in_bytes"));
        let (directory, limit, _) = cgroup_memory_files("0::/system.slice/yeyak.service\n").unwrap();
        assert_eq!(directory, std::path::Path::new("/sys/fs/cgroup/system.slice/yeyak.service"));
        assert_eq!(limit, "memory.max");
        assert_eq!(cgroup_memory_files("garbage"), None);
        assert_eq!(parse_cgroup_limit("2147483648\n"), Some(2 << 30));
        assert_eq!(parse_cgroup_limit("max\n"), None, "v2: no limit");
        assert_eq!(parse_cgroup_limit("9223372036854771712\n"), None, "v1: no limit");
    }

    #[test]
    fn large_and_small_arrays_start_zeroed_and_aligned() {
        assert!(ZeroedArray::<AtomicU64>::new(0).is_empty());
        for length in [1, 1000, HUGE_TABLE_BYTES_MIN / 8 + 3] {
            let array = ZeroedArray::<AtomicU64>::new(length);
            assert_eq!(array.len(), length);
            assert!(array.iter().all(|x| x.load(Ordering::Relaxed) == 0));
            array[length - 1].store(7, Ordering::Relaxed);
            if length * 8 >= HUGE_TABLE_BYTES_MIN {
                assert_eq!(array.as_ptr() as usize % HUGE_PAGE_BYTES, 0);
            }
        }
    }
}
