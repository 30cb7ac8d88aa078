//! A campaign's data directory, opened: the engine recovered from its log,
//! and a log writer that makes every answer wait for its record's durability.
//!
//! Data directory layout (docs/architecture.md):
//! - `campaign.toml`: the campaign configuration (the demo one is written on
//!   first start when asked for);
//! - `log/segment-NNNNNNNNNN.log`: the log segments.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{CampaignRules, ConfigError, DEMO_CAMPAIGN_TOML};
use crate::inventory::{Inventory, InventoryError, SlotIndex};
use crate::log::format::RECORD_HEADER_BYTES;
use crate::log::recovery::recover_with_lookahead;
use crate::log::{FileStorage, LogOptions, LogStorage, LogWriter, RecoveryError, RecoveryMode, TornTail};
use crate::state::{BookingRequest, CancelRequest, Engine, Entry, LogUnavailable, Outcome, PersonKey, Refusal};

pub const CAMPAIGN_FILE: &str = "campaign.toml";
pub const LOG_DIRECTORY: &str = "log";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no campaign in {path}: write a campaign.toml there (see docs/configuration.md)")]
    NoCampaign { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Config { path: PathBuf, source: ConfigError },
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error(transparent)]
    LogOptions(#[from] crate::log::writer::LogOptionsError),
}

/// What start-up found and did.
#[derive(Debug, Clone)]
pub struct RecoveryReport {
    pub records_replayed: u64,
    pub next_lsn: u64,
    pub torn_tail: Option<TornTail>,
    pub removed_segments: Vec<PathBuf>,
    pub elapsed: Duration,
    pub created_demo_campaign: bool,
}

pub struct DurableEngine {
    engine: Engine,
    log: LogWriter,
}

/// Reads the campaign of a data directory, writing the demo one first if
/// there is none and `create_demo` is set. Returns whether it created it.
pub fn load_campaign(data_directory: &Path, create_demo: bool) -> Result<(CampaignRules, bool), OpenError> {
    let path = data_directory.join(CAMPAIGN_FILE);
    let io = |source| OpenError::Io { path: path.clone(), source };
    let mut created = false;
    if !path.exists() {
        if !create_demo {
            return Err(OpenError::NoCampaign { path: data_directory.to_path_buf() });
        }
        std::fs::create_dir_all(data_directory).map_err(io)?;
        std::fs::write(&path, DEMO_CAMPAIGN_TOML).map_err(io)?;
        created = true;
    }
    let text = std::fs::read_to_string(&path).map_err(io)?;
    let rules = CampaignRules::parse(&text).map_err(|source| OpenError::Config { path: path.clone(), source })?;
    Ok((rules, created))
}

impl DurableEngine {
    /// Opens a data directory with the real file storage.
    pub fn open(
        data_directory: &Path,
        options: LogOptions,
        create_demo: bool,
    ) -> Result<(DurableEngine, RecoveryReport), OpenError> {
        let log_directory = data_directory.join(LOG_DIRECTORY);
        let storage = FileStorage::new(&log_directory, options.write_mode);
        Self::open_with_storage(data_directory, options, create_demo, Box::new(storage))
    }

    /// Opens a data directory, writing new segments through `storage`
    /// (fault tests pass a failing one).
    pub fn open_with_storage(
        data_directory: &Path,
        options: LogOptions,
        create_demo: bool,
        storage: Box<dyn LogStorage>,
    ) -> Result<(DurableEngine, RecoveryReport), OpenError> {
        options.check()?;
        let started = Instant::now();
        let (rules, created_demo_campaign) = load_campaign(data_directory, create_demo)?;
        let inventory = Inventory::load(&rules, data_directory)?;
        let campaign_id = rules.campaign_id;
        let engine = Engine::new(rules, inventory);
        let log_directory = data_directory.join(LOG_DIRECTORY);
        std::fs::create_dir_all(&log_directory)
            .map_err(|source| OpenError::Io { path: log_directory.clone(), source })?;
        let recovered = recover_with_lookahead(
            &log_directory,
            RecoveryMode::TruncateTornTail,
            |upcoming| {
                let payload = upcoming[RECORD_HEADER_BYTES..].try_into().expect("32 payload bytes");
                let (person, slot) = Entry::touched_unchecked(payload);
                engine.prefetch_person_and_slot(person, slot);
            },
            |record| {
                let entry = Entry::decode(record.kind, &record.payload).map_err(|e| e.to_string())?;
                engine.replay(record.lsn, &entry).map_err(|e| e.reason)
            },
        )?;
        if let Some(header) = recovered.segments.first().map(|s| s.header) {
            if header.campaign_id != campaign_id {
                return Err(OpenError::Recovery(RecoveryError::Corrupt {
                    path: log_directory.clone(),
                    offset: 0,
                    reason: format!("the log is of campaign {}, campaign.toml says {campaign_id}", header.campaign_id),
                }));
            }
        }
        let log = LogWriter::start(storage, options, campaign_id, recovered.next_lsn, recovered.next_segment_index)?;
        let report = RecoveryReport {
            records_replayed: recovered.records,
            next_lsn: recovered.next_lsn,
            torn_tail: recovered.torn_tail,
            removed_segments: recovered.removed_segments,
            elapsed: started.elapsed(),
            created_demo_campaign,
        };
        Ok((DurableEngine { engine, log }, report))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn log(&self) -> &LogWriter {
        &self.log
    }

    /// Releases an outcome once it is durable; if it never can be, the answer
    /// is a refusal (nothing that is not durable is acknowledged).
    fn release<T>(&self, outcome: Outcome<T>) -> Result<T, Refusal> {
        self.log.wait_durable(outcome.durable_after).map_err(Refusal::LogUnavailable)?;
        outcome.result
    }

    pub fn reserve(&self, request: &BookingRequest, now_ms: i64) -> Result<SlotIndex, Refusal> {
        self.release(self.engine.reserve(&self.log, request, now_ms))
    }

    pub fn change(&self, request: &BookingRequest, now_ms: i64) -> Result<SlotIndex, Refusal> {
        self.release(self.engine.change(&self.log, request, now_ms))
    }

    pub fn cancel(&self, request: &CancelRequest, now_ms: i64) -> Result<SlotIndex, Refusal> {
        self.release(self.engine.cancel(&self.log, request, now_ms))
    }

    pub fn add_capacity(&self, slot: SlotIndex, seats: u32, operator_id: u32) -> Result<u32, Refusal> {
        self.release(self.engine.add_capacity(&self.log, slot, seats, operator_id))
    }

    /// Reads wait for the records they may have seen, so they never show a
    /// change that could still be lost. Once the log has failed, reads keep
    /// working from memory, which may then include the failed group's changes
    /// (their requesters were refused; a restart drops them): see
    /// docs/log-format.md, "When the disk fails".
    fn release_read<T>(&self, outcome: Outcome<T>) -> Result<T, Refusal> {
        match self.log.wait_durable(outcome.durable_after) {
            Ok(()) | Err(LogUnavailable::DiskFull | LogUnavailable::IoFailed) => outcome.result,
            Err(closed) => Err(Refusal::LogUnavailable(closed)),
        }
    }

    pub fn reservation_of(&self, person: PersonKey) -> Result<Option<SlotIndex>, Refusal> {
        self.release_read(self.engine.reservation_of(&self.log, person))
    }

    /// Makes everything appended durable and stops the log writer.
    pub fn close(self) -> Result<(), Refusal> {
        self.log.close().map_err(Refusal::LogUnavailable)
    }
}
