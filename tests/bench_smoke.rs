//! The short version of every benchmark command (`yeyak-bench`), at a small
//! size: each runs to the end and prints its figure. Behaviour only, never
//! speed (the figures are in docs/benchmarks.md, from the full runs). A
//! benchmark that stops working (a setting its server refuses, a peer that
//! panics) fails here rather than on the next person who runs it.

use std::path::Path;
use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_yeyak-bench");

/// Runs `yeyak-bench` with `arguments`; its standard output, once it has
/// succeeded and printed a line matching each of `expected`.
fn bench(arguments: &[&str], expected: &[&str]) -> String {
    let output = Command::new(BENCH).args(arguments).output().expect("yeyak-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "yeyak-bench {arguments:?} failed: {}\n{stdout}\n{stderr}", output.status);
    for wanted in expected {
        assert!(stdout.contains(wanted), "yeyak-bench {arguments:?} printed no {wanted:?}:\n{stdout}\n{stderr}");
    }
    stdout
}

fn dir(root: &Path, name: &str) -> String {
    root.join(name).to_str().expect("a UTF-8 temporary path").to_string()
}

#[test]
fn in_process_benchmarks_and_their_peer_run_at_a_small_size() {
    bench(&["reserve", "--people", "20000"], &["20000 reservations in", "M reservations/s"]);
    bench(&["reserve", "--people", "20000", "--against-shared"], &["sole writer against shared"]);
    bench(&["reserve", "--people", "20000", "--against-peer"], &["against the prototype"]);
    bench(&["probe", "--steps", "10000"], &["ns"]);
    let root = tempfile::tempdir().unwrap();
    let prototype = dir(root.path(), "prototype");
    bench(&["prototype", "--people", "20000", "--data-dir", &prototype], &["durable reservations in"]);
    bench(&["prototype", "--people", "20000", "--without-log", "--data-dir", &prototype], &["20000 reservations in"]);
}

#[test]
fn durable_then_recovery_run_on_the_same_directory() {
    let root = tempfile::tempdir().unwrap();
    let data = dir(root.path(), "durable");
    bench(
        &["durable", "--people", "20000", "--data-dir", &data, "--keep", "--snapshot-on-close"],
        &["20000 durable reservations in"],
    );
    bench(&["recovery", "--data-dir", &data], &["recovery from snapshot", "serving after"]);
    bench(&["recovery", "--data-dir", &data, "--without-snapshots"], &["20000 records replayed", "serving after"]);
}

#[test]
fn recovery_from_the_log_alone_where_snapshots_retired_its_start_says_so() {
    let root = tempfile::tempdir().unwrap();
    let data = dir(root.path(), "durable");
    bench(
        &[
            "durable",
            "--people",
            "20000",
            "--data-dir",
            &data,
            "--keep",
            "--snapshot-on-close",
            "--segment-records",
            "2000",
        ],
        &["20000 durable reservations in"],
    );
    // The first segment retired behind the snapshot, as a snapshot taken
    // while booking retires those wholly behind it.
    std::fs::remove_file(root.path().join("durable/log/segment-0000000001.log")).unwrap();
    let output = Command::new(BENCH)
        .args(["recovery", "--data-dir", &data, "--without-snapshots"])
        .output()
        .expect("yeyak-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not open: the log begins at record 2001"), "{stderr}");
    assert!(stderr.contains("write a directory without snapshots"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The snapshots are put back: recovery from them still works.
    bench(&["recovery", "--data-dir", &data], &["recovery from snapshot", "serving after"]);
    // A log option the engine refuses is said by name, not a panic.
    let refused = Command::new(BENCH)
        .args(["durable", "--people", "1000", "--data-dir", &data, "--segment-records", "0"])
        .output()
        .expect("yeyak-bench runs");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not open: log.segment_size_bytes 64"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn wire_latency_and_the_wire_peer_run_at_a_small_size() {
    let root = tempfile::tempdir().unwrap();
    let wire = dir(root.path(), "wire");
    bench(&["wire", "--people", "20000", "--data-dir", &wire], &["20000 durable reservations in"]);
    bench(&["wire", "--people", "20000", "--full-answers", "--data-dir", &wire], &["20000 durable reservations in"]);
    bench(
        &[
            "starve",
            "--peers",
            "2",
            "--seconds",
            "1",
            "--reply-bytes-max",
            "1048576",
            "--data-dir",
            &dir(root.path(), "starve"),
        ],
        &["PING every 20 ms", "reply bytes waiting at most"],
    );
    // The one-per-frame figure's depth (docs/benchmarks.md), and where each thread waited.
    bench(
        &["wire", "--people", "2000", "--batch", "1", "--depth", "2048", "--data-dir", &wire],
        &["2000 durable", "runnable but waiting for a core"],
    );
    // More in flight than the server admits is refused by name, not run into OVERLOADED.
    let output = Command::new(BENCH).args(["wire", "--batch", "1024", "--depth", "1024"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.code() == Some(2) && stderr.contains("twice depth × batch must be at most"), "{stderr}");
    bench(&["latency", "--rate", "2000", "--seconds", "1", "--data-dir", &dir(root.path(), "latency")], &["p999"]);
    bench(
        &["prototype", "--wire", "--people", "20000", "--data-dir", &dir(root.path(), "prototype")],
        &["durable reservations in"],
    );
}

#[test]
fn memory_runs_at_a_small_size() {
    bench(&["memory", "--people", "20000"], &["resident"]);
}
