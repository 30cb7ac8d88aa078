//! `yeyak client`: book by hand from the shell, against a running `yeyak start`,
//! with the gateway key (or, with --operator, the operator key) read from the
//! data directory's keys.toml.

use std::net::SocketAddr;
use std::path::PathBuf;

use yeyak::calendar::Date;
use yeyak::client::{Client, ClientError};
use yeyak::inventory::SlotIndex;
use yeyak::protocol::body::STATS_COUNTER_NAMES;
use yeyak::protocol::body::{CapacityAddition, PersonQuery, RegionQuery, SiteQuery};
use yeyak::protocol::handshake::Role;
use yeyak::rules::Channel;
use yeyak::server::keys::KeyRing;
use yeyak::state::{BookingRequest, PersonKey, Refusal};

#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// Where keys.toml is (the server's data directory).
    #[arg(long, env = "YEYAK_DATA_DIR", default_value = "yeyak-data", global = true)]
    pub data_dir: PathBuf,
    /// The engine's address (`yeyak start --listen`).
    #[arg(long, env = "YEYAK_ADDRESS", default_value = "127.0.0.1:7878", global = true,
          value_parser = crate::start::parse_socket_address)]
    pub address: SocketAddr,
    /// Connect as the operator of the first operator key (books are recorded under it).
    #[arg(long, global = true)]
    pub operator: bool,
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(clap::Args, Debug)]
pub struct PersonArgs {
    /// The person key: the gateway's keyed hash of the resident number, as hex (not 0).
    #[arg(long, value_parser = parse_person)]
    pub person: PersonKey,
    /// Birth date, YYYY-MM-DD.
    #[arg(long, value_parser = parse_date)]
    pub birth_date: Date,
    /// Makes a retry safe: the person's last command repeated with its key gets
    /// that command's answer instead of being applied again (only the last command
    /// is remembered). Default: a fresh key each run, printed if the outcome is unknown.
    #[arg(long, value_parser = parse_idempotency_key)]
    pub idempotency_key: Option<u64>,
}

#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// Books a slot.
    Reserve {
        #[command(flatten)]
        person: PersonArgs,
        /// The slot number (`site` lists a site's slots of a day from its first slot number).
        #[arg(long)]
        slot: u32,
    },
    /// Moves a reservation to another slot (the old one is kept unless the new one is booked).
    Change {
        #[command(flatten)]
        person: PersonArgs,
        /// The slot number (`site` lists a site's slots of a day from its first slot number).
        #[arg(long)]
        slot: u32,
    },
    /// Gives a reservation up.
    Cancel {
        #[command(flatten)]
        person: PersonArgs,
    },
    /// The slot a person holds.
    Get {
        /// The person key, as hex (as for reserve).
        #[arg(long, value_parser = parse_person)]
        person: PersonKey,
    },
    /// Seats left in each time slot of a site on a day.
    Site {
        /// The site's id (its first column in the inventory).
        #[arg(long)]
        site: u32,
        /// YYYY-MM-DD.
        #[arg(long, value_parser = parse_date)]
        date: Date,
    },
    /// Sites of a region with seats left on a day, a page at a time.
    Region {
        /// The region's id.
        #[arg(long)]
        region: u16,
        /// YYYY-MM-DD.
        #[arg(long, value_parser = parse_date)]
        date: Date,
        /// The page to start at (the previous page says the next one).
        #[arg(long, default_value_t = 0)]
        cursor: u32,
        /// Sites a page holds at most [default: as many as the campaign's page holds].
        #[arg(long)]
        limit: Option<u32>,
    },
    /// The engine's counters.
    Stats,
    /// A slot's capacity (operators: with --operator).
    Capacity {
        /// The slot number (`site` lists a site's slots of a day from its first slot number).
        #[arg(long)]
        slot: u32,
    },
    /// Adds seats to a slot, if its capacity is still the one you saw (operators: with --operator).
    AddCapacity {
        /// The slot number (`site` lists a site's slots of a day from its first slot number).
        #[arg(long)]
        slot: u32,
        /// Seats to add (0 reads the capacity).
        #[arg(long)]
        seats: u32,
        /// The capacity you saw (`capacity --slot`): the change is made only
        /// from it, so a retry never adds twice.
        #[arg(long)]
        expected: u32,
    },
}

fn parse_person(text: &str) -> Result<PersonKey, String> {
    let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
    Some(digits)
        .filter(|digits| !digits.is_empty() && digits.len() <= 32 && digits.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|digits| u128::from_str_radix(digits, 16).ok())
        .filter(|key| *key != 0)
        .map(PersonKey)
        .ok_or_else(|| format!("`{text}` is not a non-zero hex person key (up to 32 hex digits, 0x optional)"))
}

fn parse_idempotency_key(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("idempotency keys are not 0".to_string()),
        Ok(key) => Ok(key),
        Err(_) => Err(format!("`{text}` is not an idempotency key (a number from 1 to {})", u64::MAX)),
    }
}

/// A key no earlier run of this client has likely used: the clock's
/// nanoseconds and the process id, mixed; never 0.
fn fresh_idempotency_key() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    yeyak::mix64(nanos ^ u64::from(std::process::id()).rotate_left(40)).max(1)
}

/// A state-machine refusal as the shell says it: its code's name, then why.
/// Its times at the campaign's `offset` from UTC.
fn refused(refusal: &Refusal, offset: yeyak::calendar::UtcOffset) -> String {
    format!("refused ({}): {}", refusal.code().name(), refusal.in_local_time(offset))
}

/// The campaign, when campaign.toml is in --data-dir (the engine's own data
/// directory): refusals then say times as its clocks do, and a site's slots
/// their time of day.
fn campaign(data_dir: &std::path::Path) -> Option<yeyak::config::CampaignRules> {
    yeyak::durable::load_campaign(data_dir, false).ok().map(|(rules, _)| rules)
}

/// When `slot`'s appointment begins in its day, by the campaign's day.
fn slot_time(rules: &yeyak::config::CampaignRules, slot: SlotIndex) -> Option<yeyak::calendar::TimeOfDay> {
    yeyak::inventory::slot_time_of_day(slot, rules.day_start, rules.slot_minutes, rules.slots_per_day)
}

fn seats_text(seats: u32) -> String {
    if seats == 1 {
        "1 seat".to_string()
    } else {
        format!("{seats} seats")
    }
}

/// A client error as the shell says it, with what to do about a request
/// refused for the connection's role.
fn said(error: ClientError) -> String {
    match error {
        ClientError::Refused(answer) if answer.code == yeyak::protocol::code::SHUTTING_DOWN => {
            format!("{}: try again once it has restarted", ClientError::Refused(answer))
        }
        ClientError::Refused(answer) if answer.code == yeyak::protocol::code::NOT_ALLOWED => {
            format!(
                "{}: operator commands need --operator (and an operator key in keys.toml)",
                ClientError::Refused(answer)
            )
        }
        error => error.to_string(),
    }
}

/// A request refused whole because the log failed.
fn log_unavailable(error: &ClientError) -> bool {
    matches!(error, ClientError::Refused(answer) if answer.code == yeyak::state::ResultCode::LogUnavailable as u8)
}

fn parse_date(text: &str) -> Result<Date, String> {
    let date = Date::parse(text).map_err(|e| e.to_string())?;
    yeyak::protocol::body::date_from_wire(date.days_since_epoch())
        .ok_or_else(|| format!("{date} is outside the dates the protocol carries (1900-01-01..=2099-12-31)"))
}

pub fn run(args: ClientArgs) -> Result<(), String> {
    // UTC where campaign.toml is not at hand (the refusal says which).
    let rules = campaign(&args.data_dir);
    let offset = rules.as_ref().map_or(yeyak::calendar::UtcOffset { minutes: 0 }, |rules| rules.utc_offset);
    let refused = |refusal: &Refusal| refused(refusal, offset);
    let (keys, _) = KeyRing::load(&args.data_dir, false).map_err(|e| e.to_string())?;
    let role = if args.operator { Role::Operator } else { Role::Gateway };
    let (key_id, key) = keys.first(role).ok_or_else(|| format!("no {role:?} key in keys.toml"))?;
    let mut client = Client::connect(args.address, role, key_id, key).map_err(|error| match error {
        ClientError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("no engine at {} ({io}): start one with `yeyak start`, or give its --address", args.address)
        }
        ClientError::Refused(answer) if answer.code == yeyak::protocol::code::STARTING => {
            format!("the engine at {} is still starting (recovering its data): try again in a moment", args.address)
        }
        ClientError::Unauthenticated => format!(
            "the engine at {} did not accept the {role:?} key {key_id} of {}: is --data-dir the engine's data \
             directory (or a copy of its keys.toml)?",
            args.address,
            args.data_dir.join("keys.toml").display()
        ),
        error => error.to_string(),
    })?;
    let channel = if args.operator { Channel::Operator { operator_id: key_id } } else { Channel::Person };
    let booking = |person: &PersonArgs, slot: u32| BookingRequest {
        person: person.person,
        birth_date: person.birth_date,
        slot: SlotIndex(slot),
        idempotency_key: person.idempotency_key.unwrap_or_else(fresh_idempotency_key),
        channel,
    };
    // A lost answer (the connection broke, no reply in time, the log failed
    // before the change was durable) leaves the outcome unknown: the same
    // key asks again without booking twice.
    let show = |done: &str, booking: BookingRequest, result: Result<Result<SlotIndex, Refusal>, ClientError>| {
        let repeat = |what: String| {
            let key = booking.idempotency_key;
            format!("{what}; repeat it with --idempotency-key {key} to find out without booking twice")
        };
        match result {
            Ok(Ok(slot)) => {
                println!("{done} {slot}");
                Ok(())
            }
            Ok(Err(refusal @ Refusal::LogUnavailable(_))) => {
                Err(repeat(format!("{}, once the engine is back", refused(&refusal))))
            }
            Ok(Err(refusal)) => Err(refused(&refusal)),
            Err(error) if log_unavailable(&error) => Err(repeat(format!("{error}, once the engine is back"))),
            Err(error @ (ClientError::Io(_) | ClientError::TimedOut(_) | ClientError::Closed)) => {
                Err(repeat(format!("{error}; the command may or may not have been applied")))
            }
            Err(error) => Err(said(error)),
        }
    };
    match args.command {
        ClientCommand::Reserve { person, slot } => {
            let booking = booking(&person, slot);
            show("booked", booking, client.reserve(&booking))
        }
        ClientCommand::Change { person, slot } => {
            let booking = booking(&person, slot);
            show("moved to", booking, client.change(&booking))
        }
        ClientCommand::Cancel { person } => {
            let booking = booking(&person, 0);
            show("cancelled, gave up", booking, client.cancel(&booking))
        }
        ClientCommand::Get { person } => match client.reservation(&PersonQuery { person }).map_err(said)? {
            Ok(Some(slot)) => {
                println!("holds {slot}");
                Ok(())
            }
            Ok(None) => {
                println!("holds no reservation");
                Ok(())
            }
            Err(refusal) => Err(refused(&refusal)),
        },
        ClientCommand::Site { site, date } => {
            match client.site_availability(&SiteQuery { site_id: site, date }).map_err(said)? {
                Ok(seats) => {
                    for (offset, left) in seats.seats.iter().enumerate() {
                        let slot = SlotIndex(seats.first_slot.0 + offset as u32);
                        match rules.as_ref().and_then(|rules| slot_time(rules, slot)) {
                            Some(time) => println!("{slot} at {time}: {} left", seats_text(*left)),
                            None => println!("{slot}: {} left", seats_text(*left)),
                        }
                    }
                    Ok(())
                }
                Err(refusal) => Err(refused(&refusal)),
            }
        }
        ClientCommand::Region { region, date, cursor, limit } => {
            // 0: as many as a page holds (docs/protocol.md, RegionQuery).
            let query = RegionQuery { region_id: region, date, cursor, limit: limit.unwrap_or(0) };
            match client.region_availability(&query).map_err(said)? {
                Ok(page) => {
                    for (site, left) in &page.sites {
                        println!("site {site}: {} left", seats_text(*left));
                    }
                    match page.next_cursor {
                        Some(next) => println!("more: --cursor {next}"),
                        None => println!("(last page)"),
                    }
                    Ok(())
                }
                Err(refusal) => Err(refused(&refusal)),
            }
        }
        ClientCommand::Capacity { slot } => match client.capacity(SlotIndex(slot)).map_err(said)? {
            Ok(capacity) => {
                println!("{} has a capacity of {}", SlotIndex(slot), seats_text(capacity));
                Ok(())
            }
            Err(refusal) => Err(refused(&refusal)),
        },
        ClientCommand::AddCapacity { slot, seats, expected } => {
            let addition = CapacityAddition { slot: SlotIndex(slot), seats, expected_capacity: expected };
            // A change whose outcome is unknown is not repeated blindly: the
            // capacity it expected says whether it was made.
            let check_first = |what: String| {
                format!("{what}; once the engine is back, look at the slot's capacity (yeyak client --operator capacity --slot {slot}) before adding again")
            };
            match client.add_capacity(&addition) {
                Ok(Ok(capacity)) => {
                    println!("{} now has a capacity of {}", SlotIndex(slot), seats_text(capacity));
                    Ok(())
                }
                Ok(Err(refusal @ Refusal::LogUnavailable(_))) => Err(check_first(refused(&refusal))),
                Ok(Err(refusal)) => Err(refused(&refusal)),
                Err(error) if log_unavailable(&error) => Err(check_first(error.to_string())),
                Err(error @ (ClientError::Io(_) | ClientError::TimedOut(_) | ClientError::Closed)) => {
                    Err(check_first(format!("{error}; the change may or may not have been made")))
                }
                Err(error) => Err(said(error)),
            }
        }
        ClientCommand::Stats => {
            let stats = client.stats().map_err(said)?;
            let counters = STATS_COUNTER_NAMES.iter().map(|name| name.to_string()).zip(stats.counters);
            let refusals = stats
                .refusals_by_code
                .iter()
                .map(|(code, count)| (format!("refused: {}", yeyak::protocol::code_name(*code)), *count));
            let lines: Vec<(String, u64)> = counters.chain(refusals).collect();
            let width = lines.iter().map(|(name, _)| name.chars().count()).max().unwrap_or(0);
            for (name, value) in lines {
                println!("{name:<width$} {value}");
            }
            Ok(())
        }
    }
}
