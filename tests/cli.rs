//! The commands a newcomer runs, as processes: `yeyak start` on a fresh data
//! directory, `yeyak client` against it, SIGTERM for a graceful stop, and a
//! restart that still holds the booking.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const YEYAK: &str = env!("CARGO_BIN_EXE_yeyak");

/// Starts `yeyak start` on an ephemeral port with a data directory.
fn start(data_dir: &std::path::Path) -> (Running, String, BufReader<std::process::ChildStdout>) {
    start_with(&["--data-dir".as_ref(), data_dir.as_os_str()])
}

/// A `yeyak start` child, killed when dropped: a failing test leaves no
/// engine running behind it.
struct Running(Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Already waited for (the test stopped it): kill fails harmlessly.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `yeyak start --listen 127.0.0.1:0` with more arguments; returns it
/// and the address it says it serves on.
// The child is handed to the caller, which waits for it in `terminate`.
#[allow(clippy::zombie_processes)]
fn start_with(args: &[&std::ffi::OsStr]) -> (Running, String, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(YEYAK)
        .args(["start", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line).unwrap_or(0) == 0 {
            let status = child.wait();
            panic!("yeyak start ended before serving: {status:?}");
        }
        if let Some(rest) = line.strip_prefix("serving on ") {
            let address = rest.split_whitespace().next().unwrap().to_string();
            return (Running(child), address, stdout);
        }
    }
}

fn client(data_dir: &std::path::Path, address: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(YEYAK)
        .arg("client")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--address", address])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

fn terminate(mut child: Running, mut stdout: BufReader<std::process::ChildStdout>) -> String {
    // SAFETY: sending SIGTERM to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "exit 0 after SIGTERM: {rest}");
    rest
}

/// A small copy of the demo campaign, so that start-up is quick in the test.
fn small_data_dir() -> tempfile::TempDir {
    let directory = tempfile::tempdir().unwrap();
    let campaign = yeyak::config::DEMO_CAMPAIGN_TOML
        .replace("sites = 15000", "sites = 20")
        .replace("people_max = 20_000_000", "people_max = 100_000")
        // Smaller than any default a client could pick for a page.
        .replace("availability_page_max = 100", "availability_page_max = 1");
    std::fs::write(directory.path().join("campaign.toml"), campaign).unwrap();
    directory
}

#[test]
fn start_book_from_the_shell_stop_and_restart() {
    let directory = small_data_dir();
    let (child, address, stdout) = start(directory.path());
    assert!(directory.path().join("keys.toml").exists(), "keys generated on first start");
    // Another data directory's keys: refused, and told which file was used.
    let stranger = tempfile::tempdir().unwrap();
    yeyak::server::keys::KeyRing::load(stranger.path(), true).unwrap();
    let (ok, text) = client(stranger.path(), &address, &["stats"]);
    let keys = stranger.path().join("keys.toml");
    assert!(!ok && text.contains("did not accept") && text.contains(&keys.display().to_string()), "{text}");
    let (ok, text) = client(
        directory.path(),
        &address,
        &["reserve", "--person", "0xabc", "--birth-date", "1990-05-15", "--slot", "100"],
    );
    assert!(ok && text.contains("booked slot #100"), "{text}");
    // Each run draws a fresh idempotency key: booking again is refused ...
    let (ok, text) = client(
        directory.path(),
        &address,
        &["reserve", "--person", "0xabc", "--birth-date", "1990-05-15", "--slot", "101"],
    );
    assert!(!ok && text.contains("already booked") && text.contains("slot #100"), "{text}");
    // ... while a retry with the same key gets the first answer again.
    let retry =
        ["reserve", "--person", "0xabf", "--birth-date", "1990-05-15", "--slot", "104", "--idempotency-key", "9"];
    for _ in 0..2 {
        let (ok, text) = client(directory.path(), &address, &retry);
        assert!(ok && text.contains("booked slot #104"), "{text}");
    }
    let (ok, text) = client(directory.path(), &address, &[&retry[..7], &["--idempotency-key", "0"]].concat());
    assert!(!ok && text.contains("idempotency keys are not 0"), "{text}");
    let person = ["--person", "0xabe", "--birth-date", "1990-05-15"];
    let (ok, text) = client(directory.path(), &address, &[&["reserve"][..], &person, &["--slot", "102"]].concat());
    assert!(ok && text.contains("booked slot #102"), "{text}");
    let (ok, text) = client(directory.path(), &address, &[&["change"][..], &person, &["--slot", "103"]].concat());
    assert!(ok && text.contains("moved to slot #103"), "{text}");
    let (ok, text) = client(directory.path(), &address, &[&["cancel"][..], &person].concat());
    assert!(ok && text.contains("cancelled, gave up slot #103"), "{text}");
    let (ok, text) = client(directory.path(), &address, &["get", "--person", "0xabe"]);
    assert!(ok && text.contains("holds no reservation"), "{text}");
    let (ok, text) = client(
        directory.path(),
        &address,
        &["reserve", "--person", "0xabd", "--birth-date", "1960-01-01", "--slot", "100"],
    );
    assert!(!ok && text.contains("not eligible"), "{text}");
    let (ok, text) =
        client(directory.path(), &address, &["reserve", "--person", "0", "--birth-date", "1990-05-15", "--slot", "1"]);
    assert!(!ok && text.contains("not a non-zero hex person key"), "{text}");
    let (ok, text) = client(directory.path(), &address, &["site", "--site", "1", "--date", "2100-01-01"]);
    assert!(!ok && text.contains("outside the dates the protocol carries"), "{text}");
    let (ok, text) = client(directory.path(), &address, &["stats"]);
    let line =
        |name: &str| text.lines().find(|l| l.starts_with(name)).map(|l| l.split_whitespace().last().unwrap_or(""));
    // Four RESERVEs answered OK: three people, one of them asking twice.
    assert!(ok && line("reservations") == Some("4") && line("refusals") == Some("2"), "{text}");
    assert!(line("changes") == Some("1") && line("cancellations") == Some("1"), "{text}");
    assert!(text.contains("refused: not eligible"), "refusals by code: {text}");
    assert!(text.contains("refused: already booked"), "refusals by code: {text}");
    // Queries' refusals read like commands' ones: the code's name, then why.
    let (ok, text) = client(directory.path(), &address, &["site", "--site", "999", "--date", "2021-08-26"]);
    assert!(!ok && text.contains("refused (unknown site): "), "{text}");
    // A site's day: each slot with its time (the campaign's 18 from 09:00, every 30 minutes).
    let (ok, text) = client(directory.path(), &address, &["site", "--site", "1", "--date", "2021-08-27"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(ok && lines.len() == 18, "{text}");
    assert!(lines[0].contains(" at 09:00: ") && lines[17].contains(" at 17:30: "), "{text}");
    assert!(lines.iter().all(|line| line.starts_with("slot #") && line.ends_with(" left")), "{text}");
    // Without --limit, a region page is as large as the campaign's page holds (1 here).
    let (ok, text) = client(directory.path(), &address, &["region", "--region", "1", "--date", "2021-08-26"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(ok && lines.len() == 2 && lines[0].starts_with("site ") && lines[0].ends_with(" seats left"), "{text}");
    assert!(lines[1].starts_with("more: --cursor ") || lines[1] == "(last page)", "{text}");
    // An operator reads a slot's capacity and adds to it from what they saw;
    // the same change again is refused, not applied twice.
    let (ok, text) = client(directory.path(), &address, &["capacity", "--slot", "7"]);
    assert!(!ok && text.contains("operator commands need --operator"), "{text}");
    let (ok, text) = client(directory.path(), &address, &["--operator", "capacity", "--slot", "7"]);
    let capacity: u32 = text.split_whitespace().nth(6).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(ok && text.starts_with("slot #7 has a capacity of ") && capacity > 0, "{text}");
    let add = ["--operator", "add-capacity", "--slot", "7", "--seats", "5", "--expected", &capacity.to_string()];
    let (ok, text) = client(directory.path(), &address, &add);
    assert!(ok && text.contains(&format!("slot #7 now has a capacity of {} seats", capacity + 5)), "{text}");
    let stale = ["--operator", "add-capacity", "--slot", "7", "--seats", "5", "--expected", "0"];
    let (ok, text) = client(directory.path(), &address, &stale);
    let expected = format!("slot #7 has capacity {} now", capacity + 5);
    assert!(!ok && text.contains("capacity changed") && text.contains(&expected), "{text}");
    // The log as a person reads it, each slot with its place and time.
    let dump = Command::new(YEYAK).args(["log", "dump", "--data-dir"]).arg(directory.path()).output().unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    let first = dump.lines().next().unwrap_or_default();
    assert!(first.starts_with("1 person 0xabc reserved slot #100 (idempotency key "), "{dump}");
    assert!(first.ends_with(") [slot #100: site 1, 2021-08-31 14:00]"), "{dump}");
    assert!(dump.contains("person 0xabe cancelled, gave up slot #103"), "{dump}");
    // A verify runs start-up's checks: not beside an engine serving the directory.
    let verify = Command::new(YEYAK).args(["log", "verify", "--data-dir"]).arg(directory.path()).output().unwrap();
    let text = String::from_utf8_lossy(&verify.stderr);
    assert!(!verify.status.success() && text.contains("another yeyak has this data directory open"), "{text}");
    let rest = terminate(child, stdout);
    assert!(rest.contains("stopped cleanly"), "{rest}");
    let snapshots = yeyak::snapshot::list_snapshots(&directory.path().join("snapshots")).unwrap();
    // A clean stop leaves a snapshot, so the next start replays no log; on a
    // nearly full disk the snapshot is (rightly) refused to keep room for the log.
    if yeyak::log::storage::available_bytes(directory.path()).unwrap() > 2 * yeyak::snapshot::FREE_SPACE_RESERVE_BYTES {
        assert_eq!(snapshots.len(), 1, "a clean stop leaves a snapshot");
    }

    let (child, address, stdout) = start(directory.path());
    let (ok, text) = client(directory.path(), &address, &["get", "--person", "0xabc"]);
    assert!(ok && text.contains("holds slot #100"), "{text}");
    terminate(child, stdout);

    // `log verify` says what start-up would do, and refuses as start-up would.
    let verify = || {
        let output = Command::new(YEYAK).args(["log", "verify", "--data-dir"]).arg(directory.path()).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    };
    let (ok, text) = verify();
    assert!(ok && text.contains("start-up would recover in") && text.ends_with("ok\n"), "{text}");
    let campaign = directory.path().join("campaign.toml");
    let original = std::fs::read_to_string(&campaign).unwrap();
    std::fs::write(&campaign, original.replacen("id = 1", "id = 7", 1)).unwrap();
    let (ok, text) = verify();
    assert!(!ok && text.contains("start-up would refuse") && text.contains("campaign.toml changed"), "{text}");
    std::fs::write(&campaign, original).unwrap();
    assert!(verify().0, "the data directory was left as it was");
    // A reader that goes away (`| head`) ends `log dump` quietly, not with a panic.
    let mut dump = Command::new(YEYAK)
        .args(["log", "dump", "--data-dir"])
        .arg(directory.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(dump.stdout.take());
    let output = dump.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let sigpipe = std::os::unix::process::ExitStatusExt::signal(&output.status) == Some(libc::SIGPIPE);
    assert!((output.status.success() || sigpipe) && !stderr.contains("panicked"), "{:?}: {stderr}", output.status);
}

#[test]
fn flags_and_environment_read_as_documented() {
    // YEYAK_PRODUCTION takes the usual spellings of true.
    let directory = small_data_dir();
    for yes in ["1", "yes", "on", "true"] {
        let output = Command::new(YEYAK)
            .args(["start", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(directory.path())
            .env("YEYAK_PRODUCTION", yes)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && text.contains("no keys in"), "YEYAK_PRODUCTION={yes}: {text}");
    }
    // A variable set but empty is named, not mistaken for a flag given without its value.
    for (variable, args) in [("YEYAK_DATA_DIR", &["start"][..]), ("YEYAK_ADDRESS", &["client", "stats"][..])] {
        let output = Command::new(YEYAK).args(args).env(variable, "").output().unwrap();
        let text = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{variable}: {text}");
        assert!(
            text.contains(&format!("{variable} is set but empty")) && !text.contains("a value is required"),
            "{variable}: {text}"
        );
    }
    // A bad value from the environment: the flag clap names and the variable it came from.
    let output = Command::new(YEYAK).args(["start"]).env("YEYAK_CONNECTIONS_MAX", "abc").output().unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("came from the environment: YEYAK_CONNECTIONS_MAX"), "{text}");
    let output = Command::new(YEYAK).args(["start", "--connections-max", "abc"]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.code() == Some(2) && !text.contains("environment"), "a flag's own value: {text}");
    // A value out of range names the way it was set: flag, variable or file.
    let config = directory.path().join("server.toml");
    std::fs::write(&config, "[server]\nreply_bytes_max = 0\n").unwrap();
    let cases: [(&[&str], Option<&str>, String); 4] = [
        (&[], Some("0"), "(set by the environment variable YEYAK_CONNECTIONS_MAX)".into()),
        (&["--connections-max", "0"], None, "(set by --connections-max)".into()),
        (&["--connections-max=0"], Some("5"), "(set by --connections-max)".into()),
        (
            &["--config", config.to_str().unwrap()],
            None,
            format!("(set by {}'s [server] reply_bytes_max)", config.display()),
        ),
    ];
    for (arguments, variable, expected) in cases {
        let mut command = Command::new(YEYAK);
        command.args(["start", "--listen", "127.0.0.1:0", "--data-dir"]).arg(directory.path()).args(arguments);
        if let Some(value) = variable {
            command.env("YEYAK_CONNECTIONS_MAX", value);
        }
        let output = command.output().unwrap();
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && text.contains(&expected), "{arguments:?}: {text}");
    }
    // Person keys: hex digits, one optional 0x.
    for bad in ["0x0x12", "+12", "0x", "1".repeat(33).as_str()] {
        let output = Command::new(YEYAK).args(["client", "get", "--person", bad]).output().unwrap();
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && text.contains("is not a non-zero hex person key"), "{bad}: {text}");
    }
}

#[test]
fn production_mode_refuses_to_start_without_keys() {
    let directory = small_data_dir();
    let output = Command::new(YEYAK)
        .args(["start", "--production", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(directory.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no keys in"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Refused before anything was written into the data directory.
    let mut names: Vec<_> =
        std::fs::read_dir(directory.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["campaign.toml"]);
}

#[test]
fn an_address_in_use_or_a_file_for_a_data_directory_is_refused_before_start_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("new");
    let output =
        Command::new(YEYAK).args(["start", "--listen", &address, "--data-dir"]).arg(&data_dir).output().unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && text.contains(&format!("cannot serve on {address}")), "{text}");
    assert!(!data_dir.exists(), "nothing created for an engine that cannot serve");
    let file = directory.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let output =
        Command::new(YEYAK).args(["start", "--listen", "127.0.0.1:0", "--data-dir"]).arg(&file).output().unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && text.contains("a-file: not a directory"), "{text}");
}

#[test]
fn the_config_file_is_read_and_flags_win_over_it() {
    let directory = small_data_dir();
    let config = directory.path().join("yeyak.toml");
    let write = |text: String| std::fs::write(&config, text).unwrap();
    write(format!("[server]\nproduction = true\ndata_dir = {:?}\nlisten = \"127.0.0.1:0\"\n", directory.path()));
    let output = Command::new(YEYAK).args(["start", "--config"]).arg(&config).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no keys in"), "the file's production = true took effect");
    // Limits past their named maximum, and an empty data_dir, are refused by name.
    let output = Command::new(YEYAK)
        .args(["start", "--ingress-queue-jobs", "18446744073709551615", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && text.contains("ingress_queue_jobs = 18446744073709551615: must be between"));
    write("[server]\ndata_dir = \"\"\n".into());
    let output = Command::new(YEYAK).args(["start", "--config"]).arg(&config).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("data_dir is empty"), "{output:?}");
    write("[server]\nlisten = \"not an address\"\n".into());
    let output = Command::new(YEYAK).args(["start", "--config"]).arg(&config).output().unwrap();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("yeyak.toml"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    write("[server]\nlisten_on = \"127.0.0.1:0\"\n".into());
    let output = Command::new(YEYAK).args(["start", "--config"]).arg(&config).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("listen_on"), "unknown fields are refused by name");
    // The flag wins over the file: the file's address is bad, the flag's is good.
    write(format!("[server]\nlisten = \"203.0.113.1:1\"\ndata_dir = {:?}\n", directory.path()));
    let (child, address, stdout) = start_with(&["--config".as_ref(), config.as_os_str()]);
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    terminate(child, stdout);
}

/// SIGTERM while two clients book as fast as they can: the process exits 0,
/// and every reservation it acknowledged is there after a restart.
#[test]
fn sigterm_under_load_keeps_every_acknowledged_reservation() {
    use yeyak::protocol::handshake::Role;
    let directory = small_data_dir();
    let (child, address, stdout) = start(directory.path());
    let address: std::net::SocketAddr = address.parse().unwrap();
    let (keys, _) = yeyak::server::keys::KeyRing::load(directory.path(), false).unwrap();
    let acknowledged = std::sync::Mutex::new(Vec::new());
    let birth_date = yeyak::calendar::Date::parse("1990-05-15").unwrap();
    std::thread::scope(|scope| {
        for thread in 0..2u128 {
            let (keys, acknowledged) = (&keys, &acknowledged);
            scope.spawn(move || {
                let (id, key) = keys.first(Role::Gateway).unwrap();
                let mut client = yeyak::client::Client::connect(address, Role::Gateway, id, key).unwrap();
                for index in 0..1_000_000u128 {
                    let person = yeyak::state::PersonKey((thread << 64) | (index + 1));
                    let booking = yeyak::state::BookingRequest {
                        person,
                        birth_date,
                        slot: yeyak::inventory::SlotIndex((index % 10_000) as u32),
                        idempotency_key: 1,
                        channel: yeyak::rules::Channel::Person,
                    };
                    match client.reserve(&booking) {
                        Ok(Ok(slot)) => acknowledged.lock().unwrap().push((person, slot)),
                        Ok(Err(_)) => {}
                        Err(_) => return,
                    }
                }
            });
        }
        // Under load: SIGTERM once a hundred bookings were acknowledged
        // (however long that takes on a slow disk), the clients still sending.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while acknowledged.lock().unwrap().len() <= 100 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        terminate(child, stdout);
    });
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(acknowledged.len() > 100, "{} acknowledged", acknowledged.len());
    let (engine, _) =
        yeyak::durable::DurableEngine::open(directory.path(), yeyak::log::LogOptions::default(), false).unwrap();
    for (person, slot) in acknowledged {
        assert_eq!(engine.reservation_of(person), Ok(Some(slot)));
    }
}

#[test]
fn a_second_signal_exits_at_once_and_the_log_still_recovers() {
    // Enough people that the snapshot taken at a clean stop takes a while:
    // the second signal arrives while the first shutdown is still at work.
    const PEOPLE: u64 = 600_000;
    let directory = tempfile::tempdir().unwrap();
    let campaign = yeyak::config::DEMO_CAMPAIGN_TOML
        .replace("sites = 15000", "sites = 2000")
        .replace("people_max = 20_000_000", "people_max = 700_000");
    std::fs::write(directory.path().join("campaign.toml"), campaign).unwrap();
    let slot_of = |index: u64| (index * 7 % 1_000_000) as u32;
    {
        let (engine, _) =
            yeyak::durable::DurableEngine::open(directory.path(), yeyak::durable::DurableOptions::default(), true)
                .unwrap();
        let now = common::open_evening_ms(engine.engine().rules());
        let requests: Vec<_> = (0..PEOPLE).map(|index| common::booking(index, slot_of(index), 1)).collect();
        let mut outcomes = Vec::new();
        for chunk in requests.chunks(1024) {
            engine.engine().reserve_batch(&engine.log().appender(), chunk, now, &mut outcomes);
        }
        assert!(outcomes.iter().all(|outcome| outcome.result.is_ok()));
        engine.log().wait_durable(outcomes.iter().map(|o| o.durable_after).max().unwrap()).unwrap();
        engine.close().unwrap();
    }

    let (mut child, _, mut stdout) = start(directory.path());
    // SAFETY (both): signals to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let mut line = String::new();
    while !line.starts_with("shutting down") {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "yeyak ended before saying it was shutting down");
    }
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    // On a nearly full disk no snapshot is taken at the stop (it would eat
    // the log's room), so the first stop may finish before the second signal.
    let snapshot_room =
        yeyak::log::storage::available_bytes(directory.path()).unwrap() > 2 * yeyak::snapshot::FREE_SPACE_RESERVE_BYTES;
    if snapshot_room {
        assert_eq!(status.code(), Some(130), "the second signal exits at once: {rest}");
        assert!(!rest.contains("stopped cleanly"), "{rest}");
    } else {
        eprintln!("a nearly full disk: the stop takes no snapshot, so the second signal may come too late to matter");
        assert!(matches!(status.code(), Some(0 | 130)), "{status:?}: {rest}");
    }

    // Whatever the interrupted stop left (a snapshot's temporary file, an
    // unsynced tail), the next start has every reservation.
    let (child, address, stdout) = start(directory.path());
    for index in [0, 1, PEOPLE / 2, PEOPLE - 1] {
        let person = format!("{:#x}", common::person(index).0);
        let (ok, text) = client(directory.path(), &address, &["get", "--person", &person]);
        assert!(ok && text.contains(&format!("holds slot #{}", slot_of(index))), "person {index}: {text}");
    }
    terminate(child, stdout);
}

#[test]
fn the_demo_evening_books_durably_from_two_threads_and_recovers_the_same_state() {
    let directory = small_data_dir();
    let mut child = Command::new(YEYAK)
        .args(["--people", "30000", "--threads", "2", "--data-dir"])
        .arg(directory.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A hang (a thread waiting for durability while it holds the log's
    // append lock, say) fails the test instead of stalling the suite.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo evening did not finish in 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut text).unwrap();
    assert!(status.success(), "{text}");
    assert!(text.contains("recovered state equal to the state before the restart: yes"), "{text}");
    // Its popular slots are among the campaign's own, even with 20 sites.
    assert!(!text.contains("unknown slot"), "{text}");
}

#[test]
fn a_campaign_without_sites_is_refused_by_the_demo_and_by_start_without_a_panic() {
    let directory = small_data_dir();
    let campaign = std::fs::read_to_string(directory.path().join("campaign.toml")).unwrap();
    let start = campaign.find("[inventory.generate]").unwrap();
    let end = start + campaign[start..].find("\n\n").unwrap();
    let csv_only = format!("{}[inventory]\ncsv = \"sites.csv\"{}", &campaign[..start], &campaign[end..]);
    std::fs::write(directory.path().join("campaign.toml"), csv_only).unwrap();
    std::fs::write(directory.path().join("sites.csv"), "site_id,region_id,site_name,date,time,capacity\n").unwrap();
    for args in [&["--people", "200"][..], &["start", "--listen", "127.0.0.1:0"]] {
        let output = Command::new(YEYAK).args(args).arg("--data-dir").arg(directory.path()).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && text.contains("no sites: the file has no row after its header"), "{text}");
        assert!(!text.contains("panicked"), "{text}");
    }
}

#[test]
fn a_mistyped_address_or_data_directory_is_named_not_taken_for_an_empty_engine() {
    let directory = small_data_dir();
    // A first start writes the keys the client needs; then nothing serves.
    let (child, _, stdout) = start(directory.path());
    terminate(child, stdout);
    // A port nothing listens on: bind one, note it, let it go.
    let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (ok, text) = client(directory.path(), &address, &["stats"]);
    assert!(!ok && text.contains(&format!("no engine at {address}")) && text.contains("yeyak start"), "{text}");
    let not_a_data_directory = tempfile::tempdir().unwrap();
    for command in ["verify", "dump"] {
        let missing = directory.path().join("no-such-directory");
        let output = Command::new(YEYAK).args(["log", command, "--data-dir"]).arg(&missing).output().unwrap();
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && text.contains("no data directory at"), "log {command}: {text}");
        assert!(!missing.exists(), "log {command} creates nothing");
        let output =
            Command::new(YEYAK).args(["log", command, "--data-dir"]).arg(not_a_data_directory.path()).output().unwrap();
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && text.contains("no campaign.toml"), "log {command}: {text}");
    }
}

#[test]
fn log_verify_says_start_up_refuses_a_segment_cut_from_outside_and_dump_shows_what_is_left() {
    use common::*;
    let (directory, now, engine) = small_campaign_open(small_log_options());
    for index in 0..7 {
        engine.reserve(&booking(index, index as u32 * 3, 1), now).unwrap();
    }
    engine.close().unwrap();
    let segment = directory.path().join("log").join("segment-0000000001.log");
    let log = |args: &[&str]| {
        let output =
            Command::new(YEYAK).arg("log").args(args).arg("--data-dir").arg(directory.path()).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), stdout.into_owned(), stderr.into_owned())
    };
    let (ok, stdout, stderr) = log(&["verify"]);
    assert!(ok && stdout.ends_with("ok\n") && !stdout.contains("left by a crash"), "{stdout}{stderr}");
    // What a crash left is said, and left where it is: start-up removes it.
    let leftovers = [
        directory.path().join("log").join("segment-0000000002.log.tmp"),
        directory.path().join("snapshots").join("snapshot-00000000000000000005.ysnap.tmp"),
    ];
    std::fs::create_dir_all(directory.path().join("snapshots")).unwrap();
    for leftover in &leftovers {
        std::fs::write(leftover, b"cut short").unwrap();
    }
    let (ok, stdout, stderr) = log(&["verify"]);
    assert!(ok && stdout.ends_with("ok\n"), "{stdout}{stderr}");
    for leftover in &leftovers {
        assert!(
            stdout.contains(&format!("left by a crash, removed at the next start: {}", leftover.display())),
            "{stdout}"
        );
        assert!(leftover.exists(), "verify changes nothing");
        std::fs::remove_file(leftover).unwrap();
    }
    // Nothing was removed behind a snapshot, and a limit of 0 asks for nothing.
    let (ok, stdout, stderr) = log(&["dump", "--from", "0"]);
    assert!(ok && stdout.lines().count() == 7 && stderr.is_empty(), "{stdout}{stderr}");
    let (ok, stdout, stderr) = log(&["dump", "--limit", "0"]);
    assert!(ok && stdout.is_empty() && stderr.is_empty(), "{stdout}{stderr}");
    // Slot places come from campaign.toml: not shown when it no longer describes the log.
    let (_, stdout, _) = log(&["dump"]);
    assert!(stdout.lines().all(|line| line.contains("[slot #")), "{stdout}");
    let campaign = directory.path().join("campaign.toml");
    let original = std::fs::read_to_string(&campaign).unwrap();
    std::fs::write(&campaign, original.replace("days = 30", "days = 31")).unwrap();
    let (ok, stdout, stderr) = log(&["dump"]);
    assert!(ok && stdout.lines().count() == 7 && !stdout.contains("[slot #"), "{stdout}");
    assert!(stderr.contains("slot places not shown") && stderr.contains("other service days"), "{stderr}");
    std::fs::write(&campaign, original).unwrap();

    // Cut at a record's boundary, inside a record, inside the header: start-up
    // would refuse (records after the cut may have been acknowledged), and
    // says how to accept the loss; dump shows the records before the cut.
    let created = std::fs::metadata(&segment).unwrap().len();
    for (cut, records, accept) in [
        (64 + 48 * 4, 4, format!("truncate -s {created}")),
        (64 + 48 * 2 + 20, 2, format!("truncate -s {created}")),
        (5, 0, "move the file away".to_string()),
    ] {
        std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(cut).unwrap();
        let (ok, stdout, stderr) = log(&["verify"]);
        assert!(!ok && stdout.contains("cut short from outside yeyak"), "cut at {cut}: {stdout}{stderr}");
        assert!(stderr.contains("start-up would refuse") && stderr.contains(&accept), "cut at {cut}: {stderr}");
        let (ok, stdout, stderr) = log(&["dump"]);
        assert!(ok && stdout.lines().count() == records, "cut at {cut}: {stdout}{stderr}");
        assert!(stderr.contains("start-up refuses it"), "cut at {cut}: {stderr}");
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), cut, "verify and dump change nothing");
    }
}

#[test]
fn a_bad_keys_file_is_refused_before_anything_is_written() {
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(directory.path().join("keys.toml"), "garbage = [").unwrap();
    let output = Command::new(YEYAK)
        .args(["start", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(directory.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && text.contains("keys.toml"), "{text}");
    let left: Vec<_> = std::fs::read_dir(directory.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["keys.toml"], "no campaign, lock or log written");
}

#[test]
fn after_a_disk_failure_the_shell_client_says_how_to_find_out_what_was_made() {
    use common::*;
    use std::net::SocketAddr;
    use yeyak::log::faults::FaultPlan;
    use yeyak::server::{Clock, Server, ServerConfig};
    let directory = tempfile::tempdir().unwrap();
    let rules = write_small_campaign(directory.path());
    let plan = FaultPlan::never();
    let engine = open_faulty(directory.path(), &plan);
    let (keys, _) = yeyak::server::keys::KeyRing::load(directory.path(), true).unwrap();
    let clock = Clock::Simulated { start_ms: open_evening_ms(&rules), since: std::time::Instant::now() };
    let config = ServerConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), clock, ..ServerConfig::default() };
    let server = Server::start(engine, keys, config).unwrap();
    let address = server.local_address().to_string();
    plan.writes_before_disk_full.store(0, std::sync::atomic::Ordering::SeqCst);
    let birth = birth_date().to_string();
    // The first change fails in its sync, the second at once: both say the
    // key that finds out whether it was made.
    for person in ["0x5", "0x6"] {
        let reserve = ["reserve", "--person", person, "--birth-date", &birth, "--slot", "6", "--idempotency-key", "77"];
        let (ok, text) = client(directory.path(), &address, &reserve);
        assert!(!ok && text.contains("the disk is full"), "{text}");
        assert!(
            text.contains("repeat it with --idempotency-key 77") && text.contains("once the engine is back"),
            "{text}"
        );
    }
    // Without --idempotency-key, the key the client made up is the one said.
    let reserve = ["reserve", "--person", "0x7", "--birth-date", &birth, "--slot", "6"];
    let (ok, text) = client(directory.path(), &address, &reserve);
    let key = text.split("--idempotency-key ").nth(1).and_then(|rest| rest.split_whitespace().next());
    assert!(!ok && key.is_some_and(|key| key.parse::<u64>().is_ok_and(|key| key > 0)), "{text}");
    // A capacity change has no key: look at the capacity before adding again.
    let (ok, text) = client(
        directory.path(),
        &address,
        &["--operator", "add-capacity", "--slot", "6", "--seats", "2", "--expected", "1"],
    );
    assert!(!ok && text.contains("the disk is full"), "{text}");
    assert!(text.contains("capacity --slot 6) before adding again") && !text.contains("idempotency"), "{text}");
    assert!(server.shutdown().is_err(), "the log failed");
}
