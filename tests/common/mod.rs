//! Shared helpers for the integration tests: a small campaign and its people.
#![allow(dead_code)]

use std::path::Path;

use yeyak::calendar::{Date, TimeOfDay};
use yeyak::config::{CampaignRules, DEMO_CAMPAIGN_TOML};
use yeyak::durable::{DurableEngine, DurableOptions};
use yeyak::inventory::SlotIndex;
use yeyak::log::{Durability, LogOptions, WriteMode};
use yeyak::rules::Channel;
use yeyak::state::{BookingRequest, CancelRequest, PersonKey};

/// The demo campaign shrunk to 20 sites (10,800 slots) and 100,000 people.
pub fn small_campaign_toml() -> String {
    DEMO_CAMPAIGN_TOML
        .replace("sites = 15000", "sites = 20")
        .replace("regions = 17", "regions = 3")
        .replace("people_max = 20_000_000", "people_max = 100_000")
}

pub fn write_small_campaign(directory: &Path) -> CampaignRules {
    std::fs::create_dir_all(directory).unwrap();
    std::fs::write(directory.join("campaign.toml"), small_campaign_toml()).unwrap();
    CampaignRules::parse(&small_campaign_toml()).unwrap()
}

/// 21:00 on 2021-08-19, the first evening after the rotation: anyone eligible may book.
pub fn open_evening_ms(rules: &CampaignRules) -> i64 {
    rules.utc_offset.utc_ms(Date::parse("2021-08-19").unwrap(), TimeOfDay::parse("21:00").unwrap())
}

/// Small segments (100 records) so that tests cross segment boundaries.
pub fn small_log_options() -> LogOptions {
    LogOptions {
        durability: Durability::Sync,
        write_mode: WriteMode::Pwrite,
        segment_size_bytes: 64 + 48 * 100,
        ring_records: 256,
        group_records_max: 64,
    }
}

pub fn person(index: u64) -> PersonKey {
    PersonKey(u128::from(yeyak::mix64(index + 1)) << 64 | u128::from(index + 1))
}

pub fn birth_date() -> Date {
    Date::parse("1990-05-15").unwrap()
}

pub fn booking(index: u64, slot: u32, idempotency_key: u64) -> BookingRequest {
    BookingRequest {
        person: person(index),
        birth_date: birth_date(),
        slot: SlotIndex(slot),
        idempotency_key,
        channel: Channel::Person,
    }
}

pub fn cancelling(index: u64, idempotency_key: u64) -> CancelRequest {
    CancelRequest { person: person(index), birth_date: birth_date(), idempotency_key, channel: Channel::Person }
}

/// A small campaign in a new data directory, the instant of its first evening
/// open to everyone, and an engine opened on it with `options`.
pub fn small_campaign_open(options: impl Into<DurableOptions>) -> (tempfile::TempDir, i64, DurableEngine) {
    let directory = tempfile::tempdir().unwrap();
    let rules = write_small_campaign(directory.path());
    let (engine, _) = DurableEngine::open(directory.path(), options, false).unwrap();
    (directory, open_evening_ms(&rules), engine)
}

/// The engine of `directory` (its campaign written there first), its log
/// written through a storage that fails as `plan` says (`log::faults`).
pub fn open_faulty(directory: &Path, plan: &std::sync::Arc<yeyak::log::faults::FaultPlan>) -> DurableEngine {
    let storage = yeyak::log::FileStorage::new(&directory.join("log"), small_log_options().write_mode);
    let faulty = Box::new(yeyak::log::faults::FaultyStorage::new(storage, std::sync::Arc::clone(plan)));
    DurableEngine::open_with_storage(directory, small_log_options(), false, faulty).unwrap().0
}
