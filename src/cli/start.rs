//! `yeyak start`: open the data directory (creating the demo campaign and its
//! keys on first start), serve until SIGINT or SIGTERM, then shut down
//! gracefully: stop accepting, answer what is in flight, make the log durable.
//! A second signal exits at once (the log still recovers).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use yeyak::calendar::TimeOfDay;
use yeyak::durable::{DurableEngine, DurableOptions};
use yeyak::log::{Durability, LogOptions, WriteMode};
use yeyak::server::keys::KeyRing;
use yeyak::server::{BoundAddress, Clock, Server, ServerConfig};
use yeyak::state::Refusal;

/// An IP address and port, with what to give instead of a host name.
pub fn parse_socket_address(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("{text:?} is not an IP address and port such as 127.0.0.1:7878 or [::1]:7878 (host names are not looked up)")
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClockChoice {
    /// SIMULATED: the campaign's first evening open to everyone, 20:00 local, running at real pace.
    CampaignOpen,
    /// The system clock (production).
    System,
}

/// `yeyak start`'s settings. Each comes from, in this order of precedence: its
/// flag, its environment variable, the `[server]` table of the `--config`
/// file, the built-in default (docs/configuration.md, "Serving"). The same
/// struct reads the `[server]` table (every field but `config`), so a setting
/// is declared once for all three.
#[derive(clap::Args, serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct StartArgs {
    /// A TOML file with a [server] table of these settings.
    #[arg(long, env = "YEYAK_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The data directory; created with the demo campaign and generated keys if it has none [default: yeyak-data].
    #[arg(long, env = "YEYAK_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to serve the binary protocol on [default: 127.0.0.1:7878].
    #[arg(long, env = "YEYAK_LISTEN", value_parser = parse_socket_address)]
    pub listen: Option<SocketAddr>,
    /// Where "now" comes from [default: campaign-open; system with --production].
    #[arg(long, env = "YEYAK_CLOCK", value_enum)]
    pub clock: Option<ClockChoice>,
    /// `sync`: answers wait for fdatasync; `none`: for trying things only [default: sync].
    #[arg(long, env = "YEYAK_DURABILITY", value_enum)]
    pub durability: Option<Durability>,
    /// Refuse to start without a campaign and keys already in the data directory.
    /// `--production=false` (or YEYAK_PRODUCTION=0, false, no, off) overrides the file's.
    #[arg(
        long,
        env = "YEYAK_PRODUCTION",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub production: Option<bool>,
    /// Connections open at once [default: 10000].
    #[arg(long, env = "YEYAK_CONNECTIONS_MAX")]
    pub connections_max: Option<u32>,
    /// Requests one connection may have waiting for replies [default: 4096].
    #[arg(long, env = "YEYAK_IN_FLIGHT_MAX")]
    pub in_flight_max: Option<u32>,
    /// Requests the ingress queue holds before OVERLOADED [default: 65536].
    #[arg(long, env = "YEYAK_INGRESS_QUEUE_JOBS")]
    pub ingress_queue_jobs: Option<usize>,
    /// Commands the ingress queue holds before OVERLOADED (a batch counts its commands) [default: 1048576].
    #[arg(long, env = "YEYAK_INGRESS_QUEUE_COMMANDS")]
    pub ingress_queue_commands: Option<usize>,
    /// Reply bytes waiting for all connections together before a connection with
    /// more than 1 MiB of its own waiting is no longer read from [default: 268435456].
    #[arg(long, env = "YEYAK_REPLY_BYTES_MAX")]
    pub reply_bytes_max: Option<usize>,
    /// The network I/O reactor: tokio (epoll) or uring (tokio-uring) [default: tokio].
    #[arg(long, env = "YEYAK_REACTOR", value_enum)]
    pub reactor: Option<yeyak::server::reactor::Reactor>,
}

#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    server: StartArgs,
}

/// The settings once flags, environment, file and defaults are merged.
#[derive(Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub clock: ClockChoice,
    pub durability: Durability,
    pub production: bool,
    pub server: ServerConfig,
}

impl StartArgs {
    pub fn settings(self) -> Result<Settings, String> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
                toml::from_str::<ConfigFile>(&text).map_err(|e| format!("{}: {e}", path.display()))?.server
            }
            None => StartArgs::default(),
        };
        let defaults = ServerConfig::default();
        let server = ServerConfig {
            connections_max: self.connections_max.or(file.connections_max).unwrap_or(defaults.connections_max),
            in_flight_max: self.in_flight_max.or(file.in_flight_max).unwrap_or(defaults.in_flight_max),
            ingress_queue_jobs: self
                .ingress_queue_jobs
                .or(file.ingress_queue_jobs)
                .unwrap_or(defaults.ingress_queue_jobs),
            ingress_queue_commands: self
                .ingress_queue_commands
                .or(file.ingress_queue_commands)
                .unwrap_or(defaults.ingress_queue_commands),
            reply_bytes_max: self.reply_bytes_max.or(file.reply_bytes_max).unwrap_or(defaults.reply_bytes_max),
            reactor: self.reactor.or(file.reactor).unwrap_or(defaults.reactor),
            ..defaults
        };
        // Where the value came from, said with the setting's own names: the
        // flag or its variable if either gave it, else the file (a default is
        // always in range).
        let given = |name: &str| match name {
            "connections_max" => self.connections_max.is_some(),
            "in_flight_max" => self.in_flight_max.is_some(),
            "ingress_queue_jobs" => self.ingress_queue_jobs.is_some(),
            "ingress_queue_commands" => self.ingress_queue_commands.is_some(),
            "reply_bytes_max" => self.reply_bytes_max.is_some(),
            _ => false,
        };
        server.check().map_err(|e| {
            let flag = format!("--{}", e.name.replace('_', "-"));
            let on_command_line = std::env::args_os().any(|argument| {
                let argument = argument.to_string_lossy();
                argument == flag || argument.starts_with(&format!("{flag}="))
            });
            let source = match (&self.config, given(e.name)) {
                (_, true) if on_command_line => flag,
                (_, true) => format!("the environment variable YEYAK_{}", e.name.to_uppercase()),
                (Some(path), false) => format!("{}'s [server] {}", path.display(), e.name),
                (None, false) => format!("[server] {}", e.name),
            };
            format!("{e} (set by {source})")
        })?;
        let production = self.production.or(file.production).unwrap_or(false);
        let data_dir = self.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("yeyak-data"));
        if data_dir.as_os_str().is_empty() {
            return Err("data_dir is empty: give a directory (the default is yeyak-data)".into());
        }
        let clock = self.clock.or(file.clock).unwrap_or(if production {
            ClockChoice::System
        } else {
            ClockChoice::CampaignOpen
        });
        let durability = self.durability.or(file.durability).unwrap_or(Durability::Sync);
        // What a production engine must not do, refused rather than printed.
        if production && durability == Durability::None {
            return Err("durability none with production: answers would not wait for the disk, so a crash would \
                        lose acknowledged reservations (none is for trying things only)"
                .into());
        }
        if production && clock == ClockChoice::CampaignOpen {
            return Err("clock campaign-open with production: SIMULATED time would open and close the booking \
                        window at the wrong moments (a production engine reads the system clock)"
                .into());
        }
        Ok(Settings {
            data_dir,
            listen: self.listen.or(file.listen).unwrap_or(defaults.listen),
            clock,
            durability,
            production,
            server,
        })
    }
}

pub fn start(args: StartArgs) -> Result<(), String> {
    let args = args.settings()?;
    let demo = !args.production;
    let log = LogOptions { durability: args.durability, write_mode: WriteMode::Pwrite, ..LogOptions::default() };
    // A clean stop leaves a snapshot, so the next start replays no log.
    let snapshots = yeyak::snapshot::SnapshotOptions { on_close: true, ..yeyak::snapshot::SnapshotOptions::default() };
    // What can be refused at once is refused before the tables are built and
    // anything is written: the address (held from here, so a second engine
    // cannot take it; connections meanwhile are answered STARTING, not left
    // waiting), and in production the keys.
    let serve_error = |e: std::io::Error| format!("cannot serve on {}: {e}", args.listen);
    let address = BoundAddress::bind(args.listen).map_err(serve_error)?;
    // Keys already there are read now (a bad keys.toml is refused before the
    // directory is locked and recovered); only missing demo keys wait, to be
    // generated once the demo campaign is in place.
    let keys_exist = args.data_dir.join(yeyak::server::keys::KEYS_FILE).exists();
    let early_keys =
        if keys_exist || !demo { Some(KeyRing::load(&args.data_dir, false).map_err(|e| e.to_string())?) } else { None };
    let (engine, report) =
        DurableEngine::open(&args.data_dir, DurableOptions { log, snapshots }, demo).map_err(|e| e.to_string())?;
    if report.created_demo_campaign {
        println!("created the demo campaign in {}/campaign.toml", args.data_dir.display());
    }
    let (keys, generated) = match early_keys {
        Some(loaded) => loaded,
        None => KeyRing::load(&args.data_dir, demo).map_err(|e| e.to_string())?,
    };
    if generated {
        println!("generated a gateway key and an operator key in {}/keys.toml", args.data_dir.display());
    }
    let rules = engine.engine().rules();
    let clock = match args.clock {
        ClockChoice::System => Clock::System,
        ClockChoice::CampaignOpen => {
            let date = rules.rotation_start.add_days(rules.rotation_digits.len() as i32);
            let opens = TimeOfDay::from_minute_of_day(rules.window_opens.minute_of_day()).unwrap_or(rules.window_opens);
            let start_ms = rules.utc_offset.utc_ms(date, opens);
            println!(
                "clock: SIMULATED, starting at {} (campaign local time) and running at real pace; --clock system in production",
                rules.utc_offset.format(start_ms)
            );
            Clock::Simulated { start_ms, since: Instant::now() }
        }
    };
    // What recovery found (a snapshot passed over, a torn tail cut) is said at start.
    println!("recovered {report}");
    println!("durability {:?}; campaign \"{}\"", args.durability, rules.name);
    let config = ServerConfig { listen: args.listen, clock, ..args.server };
    let mut signals = Signals::catch()?;
    let server = Server::start_on(address, engine, keys, config).map_err(serve_error)?;
    println!(
        "serving on {} ({:?} reactor; yeyak client --help to book from the shell)",
        server.local_address(),
        config.reactor
    );
    signals.wait();
    println!("shutting down: answering what is in flight, making the log durable (a second signal exits at once)");
    std::thread::spawn(move || {
        signals.wait();
        eprintln!("second signal: exiting now; the log recovers at the next start");
        std::process::exit(130);
    });
    let closed = server.shutdown().map_err(|refusal| match refusal {
        Refusal::LogUnavailable(why) => format!(
            "the log could not be closed cleanly: {why}; every acknowledged booking is durable and the next start \
             recovers it"
        ),
        other => format!("the log could not be closed cleanly: {other}"),
    })?;
    match closed.no_snapshot {
        None => println!("stopped cleanly"),
        Some(why) => println!(
            "stopped cleanly (the log is durable), without a snapshot on close ({why}): the next start replays the log"
        ),
    }
    Ok(())
}

/// SIGINT and SIGTERM, caught from creation on (so a signal that arrives as
/// the server starts is not the default "terminate now").
struct Signals {
    runtime: tokio::runtime::Runtime,
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn catch() -> Result<Signals, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().map_err(|e| e.to_string())?;
        let _entered = runtime.enter();
        let interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        drop(_entered);
        Ok(Signals { runtime, interrupt, terminate })
    }

    /// Blocks until the next SIGINT or SIGTERM.
    fn wait(&mut self) {
        let Signals { runtime, interrupt, terminate } = self;
        runtime.block_on(async {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::StartArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Start {
        #[command(flatten)]
        args: StartArgs,
    }

    fn production(flags: &[&str], file: &str) -> bool {
        let directory = tempfile::tempdir().unwrap();
        let config = directory.path().join("yeyak.toml");
        std::fs::write(&config, file).unwrap();
        let config = config.to_str().unwrap();
        let args = Start::try_parse_from([&["start", "--config", config][..], flags].concat()).unwrap().args;
        args.settings().unwrap().production
    }

    #[test]
    fn production_refuses_no_durability_and_simulated_time() {
        let settings =
            |flags: &[&str]| Start::try_parse_from([&["start"][..], flags].concat()).unwrap().args.settings();
        let none = settings(&["--production", "--durability", "none"]).unwrap_err();
        assert!(none.contains("durability none with production"), "{none}");
        let simulated = settings(&["--production", "--clock", "campaign-open"]).unwrap_err();
        assert!(simulated.contains("clock campaign-open with production"), "{simulated}");
        assert!(settings(&["--production", "--clock", "system"]).is_ok());
        assert!(settings(&["--durability", "none", "--clock", "campaign-open"]).is_ok(), "allowed outside production");
    }

    #[test]
    fn the_production_flag_overrides_the_file_both_ways() {
        let on = "[server]\nproduction = true\n";
        let off = "[server]\nproduction = false\n";
        assert!(production(&[], on));
        assert!(!production(&["--production=false"], on));
        assert!(!production(&["--production=no"], on));
        assert!(production(&["--production"], off));
        assert!(production(&["--production=true"], off));
        assert!(!production(&[], ""));
        assert!(Start::try_parse_from(["start", "--production=maybe"]).is_err());
    }
}
