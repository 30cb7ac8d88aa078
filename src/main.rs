//! The `yeyak` command: `start` (the engine on the network), `client` (book
//! from the shell), the in-process demo evening, and `log` to look into a
//! data directory.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[path = "cli/client.rs"]
mod client;
#[path = "cli/start.rs"]
mod start;

use yeyak::demo::{run_demo, DemoOptions};
use yeyak::log::recovery::{recover, RecoveryMode};
use yeyak::log::{Durability, LogOptions, WriteMode};
use yeyak::state::{Entry, ResultCode};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "yeyak",
    version,
    about = "A booking engine for flash-crowd campaigns",
    long_about = "A booking engine for flash-crowd campaigns.\n\nWith no subcommand: runs a simulated \
                  booking evening on the demo campaign (created in the data directory on first start), \
                  restarts from the log and checks the recovered state.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    demo: DemoArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the binary protocol (docs/protocol.md) on the data directory's campaign.
    Start(start::StartArgs),
    /// Books by hand against a running `yeyak start`.
    Client(client::ClientArgs),
    /// Looks into the log of a data directory.
    #[command(subcommand)]
    Log(LogCommand),
}

#[derive(clap::Args)]
struct DemoArgs {
    /// The data directory; created with the demo campaign if it has none.
    #[arg(long, default_value = "yeyak-data")]
    data_dir: PathBuf,
    /// Simulated people in the crowd.
    #[arg(long, default_value_t = 1_000_000)]
    people: u64,
    /// Booking threads (1 to 256).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: u32,
    /// `sync`: every answer waits for fdatasync (default); `none`: no syncs, for trying things only.
    #[arg(long, value_enum, default_value_t = Durability::Sync)]
    durability: Durability,
    /// How records reach the disk: `pwrite` + fdatasync (default, the faster here), or into
    /// a mapping + msync (docs/log-format.md).
    #[arg(long, value_enum, default_value_t = WriteMode::Pwrite)]
    write_mode: WriteMode,
    /// Varies the simulated crowd.
    #[arg(long, default_value_t = 2021)]
    seed: u64,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Checks every segment, record and snapshot; changes nothing.
    Verify {
        /// The data directory (with its campaign.toml, log and snapshots).
        #[arg(long, env = "YEYAK_DATA_DIR", default_value = "yeyak-data")]
        data_dir: PathBuf,
    },
    /// Prints records, one a line; changes nothing.
    Dump {
        /// The data directory (with its campaign.toml and log).
        #[arg(long, env = "YEYAK_DATA_DIR", default_value = "yeyak-data")]
        data_dir: PathBuf,
        /// The first sequence number to print.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// The most records to print.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
}

/// The first flag of `command` or of its subcommands, depth first, that
/// reads an environment variable and passes `pick` (given its long name and
/// its variable): that variable.
fn find_environment_flag(command: &clap::Command, pick: &dyn Fn(Option<&str>, &str) -> bool) -> Option<String> {
    let own = command.get_arguments().find_map(|argument| {
        let variable = argument.get_env()?.to_string_lossy().into_owned();
        pick(argument.get_long(), &variable).then_some(variable)
    });
    own.or_else(|| command.get_subcommands().find_map(|sub| find_environment_flag(sub, pick)))
}

/// The first environment variable a flag of `command` (or of its
/// subcommands) reads that is set to the empty string.
fn empty_environment_setting(command: &clap::Command) -> Option<String> {
    let empty = |_: Option<&str>, variable: &str| std::env::var_os(variable).is_some_and(|value| value.is_empty());
    find_environment_flag(command, &empty)
}

/// The environment variable a refused value came from, when its flag was
/// not on the command line: clap names the flag either way.
fn environment_source(command: &clap::Command, error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(error.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
        return None;
    }
    let Some(ContextValue::String(argument)) = error.get(ContextKind::InvalidArg) else { return None };
    let long = argument.split_whitespace().next()?.strip_prefix("--")?.split('=').next()?;
    let (flag, with_value) = (format!("--{long}"), format!("--{long}="));
    let on_command_line = std::env::args_os().any(|given| {
        let given = given.to_string_lossy();
        given == flag || given.starts_with(&with_value)
    });
    if on_command_line {
        return None;
    }
    let variable = find_environment_flag(command, &|flag, _| flag == Some(long))?;
    std::env::var_os(&variable).is_some().then_some(variable)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colours for a terminal only, not escape codes in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let command = <Cli as clap::CommandFactory>::command();
    if let Some(name) = empty_environment_setting(&command) {
        // clap would say "a value is required for '--flag'", naming a flag
        // that was never given.
        eprintln!("yeyak: {name} is set but empty: unset it, or give it a value (see --help)");
        return ExitCode::from(2);
    }
    // As `Cli::parse`, from the command built once above.
    let matches = command.clone().try_get_matches().unwrap_or_else(|error| {
        let from_environment = environment_source(&command, &error);
        let _ = error.print();
        if let Some(name) = from_environment {
            eprintln!("(the value came from the environment: {name})");
        }
        std::process::exit(error.exit_code())
    });
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    if !matches!(cli.command, Some(Command::Start(_))) {
        // A command whose output is piped into `head` ends quietly when the
        // reader goes, as Unix tools do, instead of failing on the next print
        // (Rust ignores SIGPIPE by default). The server keeps ignoring it: a
        // gateway that goes away must not stop the engine. Socket writes of
        // the shell client are unaffected: it writes with `write_all`, which
        // std sends with MSG_NOSIGNAL (a vectored write would not be).
        // SAFETY: restoring a signal's default disposition, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        None => demo(cli.demo),
        Some(Command::Start(args)) => start::start(args),
        Some(Command::Client(args)) => client::run(args),
        Some(Command::Log(LogCommand::Verify { data_dir })) => verify(data_dir),
        Some(Command::Log(LogCommand::Dump { data_dir, from, limit })) => dump(data_dir, from, limit),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("yeyak: {message}");
            ExitCode::FAILURE
        }
    }
}

fn demo(args: DemoArgs) -> Result<(), String> {
    let log_options = LogOptions { durability: args.durability, write_mode: args.write_mode, ..LogOptions::default() };
    println!(
        "yeyak demo evening: data directory {}, durability {:?}, log writes by {:?}",
        args.data_dir.display(),
        args.durability,
        args.write_mode
    );
    let options = DemoOptions { people: args.people, threads: args.threads, seed: args.seed };
    let summary = run_demo(&args.data_dir, options, log_options).map_err(|e| e.to_string())?;
    let first = &summary.first_open;
    if first.created_demo_campaign {
        println!("created the demo campaign in {}/campaign.toml", args.data_dir.display());
    }
    println!("opened {first}");
    println!(
        "{} simulated people made {} requests in {:.2?} ({:.0} {}answers/s):",
        args.people,
        summary.attempts,
        summary.booking_time,
        summary.attempts as f64 / summary.booking_time.as_secs_f64(),
        if args.durability == yeyak::log::Durability::Sync { "durable " } else { "" }
    );
    for (code, count) in &summary.results {
        let label = if *code == ResultCode::Ok { "ok" } else { code.name() };
        println!("  {label:<24} {count:>10}");
    }
    match &summary.snapshot {
        Some(Ok(snapshot)) => println!(
            "snapshot taken during the evening: {} people, {:.1} MiB in {:.2?} ({})",
            snapshot.header.people_count,
            snapshot.size_bytes as f64 / f64::from(1 << 20),
            snapshot.elapsed,
            snapshot.path.display()
        ),
        Some(Err(error)) => println!("snapshot failed (the log still holds everything): {error}"),
        None => println!("no snapshot: nothing new was logged"),
    }
    println!("reservations held now: {} (people known: {})", summary.reservations_held, summary.people_known);
    let restart = &summary.restart;
    println!("restarted {restart}");
    println!(
        "recovered state equal to the state before the restart: {}",
        if summary.recovered_state_equal { "yes" } else { "NO" }
    );
    if summary.recovered_state_equal {
        Ok(())
    } else {
        Err("the recovered state differs: please report this".into())
    }
}

/// The log directory of a data directory that exists: `yeyak log` looks into
/// what is there and creates nothing, so a mistyped path is an error, not an
/// empty log.
fn existing_log_directory(data_dir: &std::path::Path) -> Result<PathBuf, String> {
    if data_dir.exists() && !data_dir.is_dir() {
        return Err(format!("{} is not a directory: give a data directory's path with --data-dir", data_dir.display()));
    }
    if !data_dir.is_dir() {
        return Err(format!("no data directory at {} (give its path with --data-dir)", data_dir.display()));
    }
    if !data_dir.join(yeyak::durable::CAMPAIGN_FILE).is_file() {
        let file = yeyak::durable::CAMPAIGN_FILE;
        return Err(format!("no {file} in {}: not a yeyak data directory", data_dir.display()));
    }
    Ok(data_dir.join(yeyak::durable::LOG_DIRECTORY))
}

/// Standard output, written line by line; a failed write (a full disk, say)
/// is an error, not a panic.
fn stdout_error(error: std::io::Error) -> String {
    format!("cannot write to standard output: {error}")
}

fn verify(data_dir: PathBuf) -> Result<(), String> {
    let log_directory = existing_log_directory(&data_dir)?;
    let (rules, _) = yeyak::durable::load_campaign(&data_dir, false).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    // 1. Every segment and record, read as if all were needed.
    let mut bad_entries = 0u64;
    let scan = recover(&log_directory, RecoveryMode::ReadOnly, |record| {
        if Entry::decode(record.kind, &record.payload).is_err() {
            bad_entries += 1;
        }
        Ok(())
    });
    let mut findings = Vec::new();
    match &scan {
        Ok(recovered) => {
            for segment in &recovered.segments {
                let header = &segment.header;
                let end = header.first_lsn + segment.records;
                let (path, index, first) = (segment.path.display(), header.segment_index, header.first_lsn);
                let records = segment.records;
                writeln!(out, "{path}: segment {index}, records {first}..{end} ({records} records)")
                    .map_err(stdout_error)?;
                if header.campaign_id != rules.campaign_id {
                    let (theirs, ours) = (header.campaign_id, rules.campaign_id);
                    findings.push(format!("{path} is of campaign {theirs}, and campaign.toml says campaign {ours}"));
                }
            }
            let (records, next) = (recovered.records, recovered.next_lsn);
            writeln!(out, "{records} records, next sequence number {next}").map_err(stdout_error)?;
            match &recovered.torn_tail {
                // Start-up refuses it: the check below says so, and how to go on.
                Some(tail) if tail.cut.is_some() => {
                    writeln!(out, "cut short from outside yeyak: {}: {}", tail.path.display(), tail.defect)
                        .map_err(stdout_error)?
                }
                Some(tail) => writeln!(
                    out,
                    "torn tail in {} at byte {}: {} ({} bytes would be discarded at start)",
                    tail.path.display(),
                    tail.offset,
                    tail.defect,
                    tail.bytes_discarded
                )
                .map_err(stdout_error)?,
                None => {}
            }
        }
        Err(error) => findings.push(format!("reading every segment: {error}")),
    }
    if bad_entries > 0 {
        findings.push(format!("{bad_entries} records have checksums but payloads this yeyak cannot read"));
    }
    // 2. Every snapshot.
    findings.extend(verify_snapshots(&data_dir, &rules, &mut out)?);
    // 3. What start-up would do: restore, replay and every check, nothing written.
    match yeyak::durable::DurableEngine::check(&data_dir) {
        Ok(report) => writeln!(out, "start-up would recover {report}").map_err(stdout_error)?,
        Err(error) => return Err(format!("start-up would refuse: {error}")),
    }
    // What a crash left that start-up removes (not a finding: nothing is lost).
    let leftovers = [
        (data_dir.join(yeyak::durable::SNAPSHOT_DIRECTORY), yeyak::snapshot::is_temporary_snapshot as fn(&str) -> bool),
        (data_dir.join(yeyak::durable::LOG_DIRECTORY), yeyak::log::storage::is_unnamed_segment),
    ];
    for (directory, is_leftover) in leftovers {
        match yeyak::log::storage::files_named(&directory, is_leftover) {
            Ok(found) => {
                for leftover in found {
                    writeln!(out, "left by a crash, removed at the next start: {}", leftover.display())
                        .map_err(stdout_error)?;
                }
            }
            Err(error) => findings.push(format!("reading {}: {error}", directory.display())),
        }
    }
    // The check reads only; start-up writes (its lock, the log, snapshots).
    if let Err(error) = yeyak::log::storage::writable(&data_dir) {
        return Err(format!("start-up would fail: it writes into {}, and {error}", data_dir.display()));
    }
    if !findings.is_empty() {
        return Err(format!("start-up would succeed, but not everything here is sound: {}", findings.join("; ")));
    }
    writeln!(out, "ok").map_err(stdout_error)?;
    Ok(())
}

/// Checks every snapshot of a data directory (each alone); changes nothing.
/// Returns what is wrong with them.
fn verify_snapshots(
    data_dir: &std::path::Path,
    rules: &yeyak::config::CampaignRules,
    out: &mut impl Write,
) -> Result<Vec<String>, String> {
    use yeyak::snapshot::SnapshotError;
    let snapshots = yeyak::snapshot::list_snapshots(&data_dir.join(yeyak::durable::SNAPSHOT_DIRECTORY))
        .map_err(|e| e.to_string())?;
    if snapshots.is_empty() {
        writeln!(out, "no snapshots").map_err(stdout_error)?;
        return Ok(Vec::new());
    }
    let inventory = match yeyak::inventory::Inventory::load(rules, data_dir) {
        Ok(inventory) => inventory,
        Err(error) => return Ok(vec![format!("the snapshots cannot be checked: {error}")]),
    };
    let (mut invalid, mut other_campaign) = (0, 0);
    for (_, path) in snapshots {
        match yeyak::snapshot::CheckedSnapshot::open(&path, rules, &inventory) {
            Ok(checked) => writeln!(
                out,
                "{}: records below {} (captured while {}..{} were logged), {} people: ok",
                path.display(),
                checked.header.start_lsn,
                checked.header.start_lsn,
                checked.header.end_lsn,
                checked.header.people_count
            )
            .map_err(stdout_error)?,
            Err(error) => {
                writeln!(out, "{error}").map_err(stdout_error)?;
                match error {
                    SnapshotError::OtherCampaign { .. }
                    | SnapshotError::OtherInventory { .. }
                    | SnapshotError::OverPeopleMax { .. } => other_campaign += 1,
                    _ => invalid += 1,
                }
            }
        }
    }
    let mut findings = Vec::new();
    if other_campaign > 0 {
        findings.push(format!(
            "{other_campaign} {} of another campaign or inventory than campaign.toml describes (campaign.toml \
             changed since {} taken)",
            if other_campaign == 1 { "snapshot is" } else { "snapshots are" },
            if other_campaign == 1 { "it was" } else { "they were" }
        ));
    }
    if invalid > 0 {
        let snapshots = if invalid == 1 { "snapshot is" } else { "snapshots are" };
        findings.push(format!("{invalid} {snapshots} not valid (start-up passes them over)"));
    }
    Ok(findings)
}

fn dump(data_dir: PathBuf, from: u64, limit: u64) -> Result<(), String> {
    let log_directory = existing_log_directory(&data_dir)?;
    // Where each slot is, when the campaign's inventory still reads; the
    // records are printed without it otherwise.
    let rules = yeyak::durable::load_campaign(&data_dir, false).ok().map(|(rules, _)| rules);
    let plan = rules.as_ref().and_then(|rules| yeyak::inventory::Inventory::plan(rules, &data_dir).ok());
    // Not where campaign.toml no longer says what the log's slot numbers mean.
    let written_for_another = plan
        .as_ref()
        .and_then(|plan| yeyak::durable::log_written_for_another_inventory(&log_directory, plan).ok().flatten());
    if let Some(why) = &written_for_another {
        eprintln!("(slot places not shown: {why})");
    }
    let inventory = plan.filter(|_| written_for_another.is_none()).and_then(|plan| plan.build().ok());
    let place = |entry: &Entry| {
        let slot = entry.slot();
        match inventory.as_ref().and_then(|inventory| inventory.address(slot)) {
            Some(at) => format!(" [{slot}: site {}, {} {}]", at.site_id, at.date, at.time),
            None => String::new(),
        }
    };
    let mut out = std::io::stdout().lock();
    let mut printed = 0;
    let mut first_seen = None;
    let mut failed = None;
    let recovered = recover(&log_directory, RecoveryMode::ReadOnly, |record| {
        first_seen.get_or_insert(record.lsn);
        if record.lsn >= from && printed < limit && failed.is_none() {
            printed += 1;
            let written = match Entry::decode(record.kind, &record.payload) {
                Ok(entry) => writeln!(out, "{} {entry}{}", record.lsn, place(&entry)),
                Err(e) => writeln!(out, "{} undecodable (type {}): {e}", record.lsn, record.kind),
            };
            failed = written.err();
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    if let Some(error) = failed {
        return Err(stdout_error(error));
    }
    // Said on standard error, so that the records alone go down a pipe.
    if let Some(tail) = &recovered.torn_tail {
        let (path, offset, defect) = (tail.path.display(), tail.offset, &tail.defect);
        if tail.cut.is_some() {
            eprintln!(
                "(cut short from outside yeyak: {path}: {defect}; start-up refuses it: yeyak log verify says why)"
            );
        } else {
            eprintln!("(torn tail in {path} at byte {offset}, not shown: {defect}; start-up cuts it)");
        }
    }
    match first_seen {
        _ if limit == 0 => {}
        Some(first) if from < first && first > 1 => {
            eprintln!("(the log begins at record {first}: the ones before it were removed behind a snapshot)");
        }
        _ if printed == 0 => {
            eprintln!("(no record at or after {from}: the next record will be {})", recovered.next_lsn)
        }
        _ => {}
    }
    Ok(())
}
