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
use yeyak::server::{Clock, Server, ServerConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClockChoice {
    /// SIMULATED: the campaign's first evening open to everyone, 20:00 local, running at real pace.
    CampaignOpen,
    /// The system clock (production).
    System,
}

#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// The data directory; created with the demo campaign and generated keys if it has none.
    #[arg(long, env = "YEYAK_DATA_DIR", default_value = "yeyak-data")]
    pub data_dir: PathBuf,
    /// Address to serve the binary protocol on.
    #[arg(long, env = "YEYAK_LISTEN", default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,
    #[arg(long, env = "YEYAK_CLOCK", value_enum, default_value_t = ClockChoice::CampaignOpen)]
    pub clock: ClockChoice,
    /// `sync`: answers wait for fdatasync (default); `none`: for trying things only.
    #[arg(long, env = "YEYAK_DURABILITY", value_enum, default_value_t = Durability::Sync)]
    pub durability: Durability,
    /// Refuse to start without a campaign and keys already in the data directory.
    #[arg(long, env = "YEYAK_PRODUCTION")]
    pub production: bool,
    #[arg(long, env = "YEYAK_CONNECTIONS_MAX", default_value_t = ServerConfig::default().connections_max)]
    pub connections_max: u32,
    #[arg(long, env = "YEYAK_IN_FLIGHT_MAX", default_value_t = ServerConfig::default().in_flight_max)]
    pub in_flight_max: u32,
    #[arg(long, env = "YEYAK_INGRESS_QUEUE_JOBS", default_value_t = ServerConfig::default().ingress_queue_jobs)]
    pub ingress_queue_jobs: usize,
}

pub fn start(args: StartArgs) -> Result<(), String> {
    let demo = !args.production;
    let log = LogOptions { durability: args.durability, write_mode: WriteMode::Pwrite, ..LogOptions::default() };
    let (engine, report) =
        DurableEngine::open(&args.data_dir, DurableOptions { log, ..DurableOptions::default() }, demo)
            .map_err(|e| e.to_string())?;
    if report.created_demo_campaign {
        println!("created the demo campaign in {}/campaign.toml", args.data_dir.display());
    }
    let (keys, generated) = KeyRing::load(&args.data_dir, demo).map_err(|e| e.to_string())?;
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
    println!(
        "recovered {} records in {:.2?}; durability {:?}; campaign \"{}\"",
        report.records_replayed, report.elapsed, args.durability, rules.name
    );
    let config = ServerConfig {
        listen: args.listen,
        connections_max: args.connections_max,
        in_flight_max: args.in_flight_max,
        ingress_queue_jobs: args.ingress_queue_jobs,
        clock,
        ..ServerConfig::default()
    };
    let server = Server::start(engine, keys, config).map_err(|e| format!("cannot serve on {}: {e}", args.listen))?;
    println!("serving on {} (yeyak client --help to book from the shell)", server.local_address());
    wait_for_signal()?;
    println!("shutting down: answering what is in flight, making the log durable (a second signal exits at once)");
    std::thread::spawn(|| {
        if wait_for_signal().is_ok() {
            eprintln!("second signal: exiting now; the log recovers at the next start");
            std::process::exit(130);
        }
    });
    server.shutdown().map_err(|e| format!("the log could not be closed cleanly: {e}"))?;
    println!("stopped cleanly");
    Ok(())
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_signal() -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.map_err(|e| e.to_string()),
            _ = terminate.recv() => Ok(()),
        }
    })
}
