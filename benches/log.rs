//! The log alone: records/s and syncs/s when groups of 1, 64 and 1024 records
//! are written and made durable, storing into a mapping + msync against
//! pwrite + fdatasync (docs/log-format.md keeps the faster as the default,
//! docs/benchmarks.md has the figures). Each iteration is one group commit:
//! one write of the group, one sync. The files go to a temporary directory
//! under `target/` (the disk the log would use), or `YEYAK_BENCH_DIR`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use yeyak::log::format::{Record, SegmentHeader, PAYLOAD_BYTES, RECORD_BYTES, SEGMENT_HEADER_BYTES};
use yeyak::log::{FileStorage, LogStorage, SegmentFile, WriteMode};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Records per segment file: 48 MiB, so the mapping's page faults show.
const SEGMENT_RECORDS: u64 = 1 << 20;

fn bench_directory() -> PathBuf {
    let base = std::env::var_os("YEYAK_BENCH_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    std::fs::create_dir_all(&base).expect("can create the benchmark directory");
    base
}

struct Writer {
    storage: FileStorage,
    segment: Box<dyn SegmentFile>,
    segment_index: u64,
    records_used: u64,
    next_lsn: u64,
}

impl Writer {
    fn new(directory: &std::path::Path, mode: WriteMode) -> Writer {
        let mut storage = FileStorage::new(directory, mode);
        let segment = Self::segment(&mut storage, 1, 1);
        Writer { storage, segment, segment_index: 1, records_used: 0, next_lsn: 1 }
    }

    fn segment(storage: &mut FileStorage, segment_index: u64, first_lsn: u64) -> Box<dyn SegmentFile> {
        let header =
            SegmentHeader { segment_index, first_lsn, campaign_id: 1, inventory: Default::default(), size_bytes: 0 };
        let size = (SEGMENT_HEADER_BYTES + RECORD_BYTES * SEGMENT_RECORDS as usize) as u64;
        storage.create_segment(&header, size).expect("the disk has room")
    }

    /// One group commit of `group` records; returns its time (a new segment's creation excluded).
    fn commit(&mut self, group: &mut Vec<u8>, records: u64) -> Duration {
        if self.records_used + records > SEGMENT_RECORDS {
            self.segment_index += 1;
            self.segment = Self::segment(&mut self.storage, self.segment_index, self.next_lsn);
            self.records_used = 0;
        }
        group.clear();
        for _ in 0..records {
            let record = Record { lsn: self.next_lsn, kind: 1, payload: [7; PAYLOAD_BYTES] };
            group.extend_from_slice(&record.encode());
            self.next_lsn += 1;
        }
        let offset = SEGMENT_HEADER_BYTES as u64 + self.records_used * RECORD_BYTES as u64;
        let started = Instant::now();
        self.segment.write_at(offset, group).expect("write");
        self.segment.sync().expect("sync");
        let elapsed = started.elapsed();
        self.records_used += records;
        elapsed
    }
}

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_group_commit");
    group.measurement_time(Duration::from_secs(3)).sample_size(10);
    for records in [1u64, 64, 1024] {
        group.throughput(Throughput::Elements(records));
        for (name, mode) in [("pwrite_fdatasync", WriteMode::Pwrite), ("mmap_msync", WriteMode::Mmap)] {
            group.bench_with_input(BenchmarkId::new(name, records), &records, |b, records| {
                let directory = tempfile::tempdir_in(bench_directory()).expect("temporary directory");
                let mut writer = Writer::new(directory.path(), mode);
                let mut buffer = Vec::with_capacity(*records as usize * RECORD_BYTES);
                b.iter_custom(|iterations| (0..iterations).map(|_| writer.commit(&mut buffer, *records)).sum());
            });
        }
    }
    group.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
