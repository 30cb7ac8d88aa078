//! Property test: random command sequences run against the durable engine and
//! against a plain reference model (BTreeMaps, no concurrency, no log) give the
//! same answers and the same final state, with restarts at random points
//! and snapshots at random points (each restart recovers from the newest
//! snapshot and the log and must change nothing).
//!
//! On failure proptest prints the minimal failing command sequence; set
//! PROPTEST_CASES to run more cases.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use yeyak::durable::{DurableEngine, DurableOptions};
use yeyak::inventory::SlotIndex;
use yeyak::snapshot::SnapshotOptions;
use yeyak::state::{CapacityChange, CommandKind, LastCommand, PersonKey, PersonRecord, Refusal};

/// Slots the commands use: the first six, capacities from the inventory.
const SLOTS: u32 = 6;
const PEOPLE: u64 = 6;
/// The campaign's `people_max`, below `PEOPLE` so that the limit is met: a
/// new person past it is refused, and only people with an applied command
/// count towards it (a refused command leaves no trace, as after a restart).
const PEOPLE_MAX: usize = 4;

#[derive(Clone, Debug)]
enum Command {
    Reserve {
        person: u64,
        slot: u32,
        key: u64,
    },
    Change {
        person: u64,
        slot: u32,
        key: u64,
    },
    Cancel {
        person: u64,
        key: u64,
    },
    /// `seen`: 0 the capacity now, 1 the one before the last change (a retry), 2 a wrong one.
    AddCapacity {
        slot: u32,
        seats: u32,
        seen: u8,
    },
    Restart,
    Snapshot,
}

fn command() -> impl Strategy<Value = Command> {
    let person = 0..PEOPLE;
    let slot = 0..SLOTS;
    let key = 1..4u64;
    prop_oneof![
        4 => (person.clone(), slot.clone(), key.clone()).prop_map(|(person, slot, key)| Command::Reserve { person, slot, key }),
        2 => (person.clone(), slot.clone(), key.clone()).prop_map(|(person, slot, key)| Command::Change { person, slot, key }),
        2 => (person, key).prop_map(|(person, key)| Command::Cancel { person, key }),
        1 => (slot, 0..3u32, 0..3u8).prop_map(|(slot, seats, seen)| Command::AddCapacity { slot, seats, seen }),
        1 => Just(Command::Restart),
        1 => Just(Command::Snapshot),
    ]
}

/// The reference: what R2 and R3 say, written as plainly as possible.
struct Model {
    people: BTreeMap<PersonKey, PersonRecord>,
    remaining: BTreeMap<u32, u32>,
    capacity: BTreeMap<u32, u32>,
}

impl Model {
    fn retry(
        &self,
        person: PersonKey,
        kind: CommandKind,
        key: u64,
        slot: Option<u32>,
    ) -> Option<Result<SlotIndex, Refusal>> {
        let last = self.people.get(&person)?.last?;
        if last.idempotency_key != key {
            return None;
        }
        let same = last.kind == kind && slot.is_none_or(|s| s == last.slot.0);
        Some(if same { Ok(last.slot) } else { Err(Refusal::IdempotencyKeyReused { idempotency_key: key }) })
    }

    fn set(&mut self, person: PersonKey, holds: Option<u32>, kind: CommandKind, key: u64, slot: u32) {
        let last = Some(LastCommand { kind, idempotency_key: key, slot: SlotIndex(slot) });
        self.people.insert(person, PersonRecord { holds: holds.map(SlotIndex), last });
    }

    fn reserve(&mut self, person: PersonKey, slot: u32, key: u64) -> Result<SlotIndex, Refusal> {
        if let Some(answer) = self.retry(person, CommandKind::Reserve, key, Some(slot)) {
            return answer;
        }
        if let Some(existing) = self.people.get(&person).and_then(|p| p.holds) {
            return Err(Refusal::AlreadyBooked { existing });
        }
        if !self.people.contains_key(&person) && self.people.len() >= PEOPLE_MAX {
            return Err(Refusal::PeopleTableFull { people_max: PEOPLE_MAX as u64 });
        }
        if self.remaining[&slot] == 0 {
            return Err(Refusal::SlotFull { slot: SlotIndex(slot) });
        }
        *self.remaining.get_mut(&slot).unwrap() -= 1;
        self.set(person, Some(slot), CommandKind::Reserve, key, slot);
        Ok(SlotIndex(slot))
    }

    fn change(&mut self, person: PersonKey, slot: u32, key: u64) -> Result<SlotIndex, Refusal> {
        if let Some(answer) = self.retry(person, CommandKind::Change, key, Some(slot)) {
            return answer;
        }
        let Some(old) = self.people.get(&person).and_then(|p| p.holds) else {
            return Err(Refusal::NoReservation);
        };
        if old.0 == slot {
            return Err(Refusal::SameSlot { slot: old });
        }
        if self.remaining[&slot] == 0 {
            return Err(Refusal::SlotFull { slot: SlotIndex(slot) });
        }
        *self.remaining.get_mut(&slot).unwrap() -= 1;
        *self.remaining.get_mut(&old.0).unwrap() += 1;
        self.set(person, Some(slot), CommandKind::Change, key, slot);
        Ok(SlotIndex(slot))
    }

    fn cancel(&mut self, person: PersonKey, key: u64) -> Result<SlotIndex, Refusal> {
        if let Some(answer) = self.retry(person, CommandKind::Cancel, key, None) {
            return answer;
        }
        let Some(old) = self.people.get(&person).and_then(|p| p.holds) else {
            return Err(Refusal::NoReservation);
        };
        *self.remaining.get_mut(&old.0).unwrap() += 1;
        self.set(person, None, CommandKind::Cancel, key, old.0);
        Ok(old)
    }

    /// Compare-and-add, as docs/protocol.md says for ADD_CAPACITY.
    fn add_capacity(&mut self, slot: u32, seats: u32, expected: u32) -> Result<u32, Refusal> {
        let capacity = self.capacity[&slot];
        if seats == 0 {
            return Ok(capacity);
        }
        if capacity != expected {
            if expected + seats == capacity {
                return Ok(capacity);
            }
            return Err(Refusal::CapacityChanged { slot: SlotIndex(slot), capacity });
        }
        *self.remaining.get_mut(&slot).unwrap() += seats;
        *self.capacity.get_mut(&slot).unwrap() += seats;
        Ok(capacity + seats)
    }
}

fn run(commands: &[Command]) -> Result<(), TestCaseError> {
    let directory = tempfile::tempdir().unwrap();
    let rules = write_small_campaign(directory.path());
    let campaign = small_campaign_toml().replace("people_max = 100_000", &format!("people_max = {PEOPLE_MAX}"));
    std::fs::write(directory.path().join("campaign.toml"), campaign).unwrap();
    let now = open_evening_ms(&rules);
    let options = DurableOptions {
        log: small_log_options(),
        snapshots: SnapshotOptions {
            every_records: 0,
            keep: 2,
            free_space_reserve_bytes: 0,
            ..SnapshotOptions::default()
        },
    };
    let (mut engine, _) = DurableEngine::open(directory.path(), options, false).unwrap();
    let capacities = |engine: &DurableEngine| -> BTreeMap<u32, u32> {
        (0..SLOTS).map(|s| (s, engine.engine().slot_seats(SlotIndex(s)).unwrap().1)).collect()
    };
    let mut model = Model { people: BTreeMap::new(), remaining: capacities(&engine), capacity: capacities(&engine) };
    for (step, command) in commands.iter().enumerate() {
        match *command {
            Command::Reserve { person: p, slot, key } => {
                let got = engine.reserve(&booking(p, slot, key), now);
                prop_assert_eq!(got, model.reserve(person(p), slot, key), "step {}: {:?}", step, command);
            }
            Command::Change { person: p, slot, key } => {
                let got = engine.change(&booking(p, slot, key), now);
                prop_assert_eq!(got, model.change(person(p), slot, key), "step {}: {:?}", step, command);
            }
            Command::Cancel { person: p, key } => {
                let got = engine.cancel(&cancelling(p, key), now);
                prop_assert_eq!(got, model.cancel(person(p), key), "step {}: {:?}", step, command);
            }
            Command::AddCapacity { slot, seats, seen } => {
                let now = model.capacity[&slot];
                let expected = match seen {
                    0 => now,
                    1 => now.saturating_sub(seats),
                    _ => now + 5,
                };
                let change =
                    CapacityChange { slot: SlotIndex(slot), seats, expected_capacity: expected, operator_id: 1 };
                let got = engine.add_capacity(&change);
                prop_assert_eq!(got, model.add_capacity(slot, seats, expected), "step {}: {:?}", step, command);
            }
            Command::Restart => {
                let before = engine.engine().logical_state();
                engine.close().unwrap();
                engine = DurableEngine::open(directory.path(), options, false).unwrap().0;
                prop_assert!(engine.engine().logical_state() == before, "step {}: restart changed the state", step);
            }
            Command::Snapshot => {
                prop_assert!(engine.take_snapshot().is_ok(), "step {}: {:?}", step, engine.snapshot_state().last_error);
            }
        }
    }
    let state = engine.engine().logical_state();
    prop_assert_eq!(&state.people, &model.people);
    for slot in 0..SLOTS {
        prop_assert_eq!(state.remaining[slot as usize], model.remaining[&slot]);
        prop_assert_eq!(state.capacity[slot as usize], model.capacity[&slot]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_reference_model(commands in proptest::collection::vec(command(), 1..60)) {
        run(&commands)?;
    }
}
