//! The STATS reply body (docs/protocol.md, "Stats"): the counters by name,
//! then the refusals by result code.

use super::{field_error, BodyError, Reader};

/// How many counters the STATS reply carries before its refusals by code.
pub const STATS_COUNTERS: usize = 22;

/// The names of the STATS reply's counters, in their order on the wire.
pub const STATS_COUNTER_NAMES: [&str; STATS_COUNTERS] = [
    "reservations",
    "cancellations",
    "changes",
    "refusals",
    "requests",
    "connections open",
    "connections refused",
    "ingress queue depth",
    "ingress queue capacity",
    "log next lsn",
    "log durable lsn",
    "log syncs",
    "sync p50 µs",
    "sync p99 µs",
    "sync p999 µs",
    "sync max µs",
    "snapshots taken",
    "uptime ms",
    "bad frames",
    "overloaded",
    "ingress queue commands",
    "reply bytes waiting",
];

/// The STATS reply body (docs/protocol.md, "Stats"): the counters, then
/// the refusals by result code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// In `STATS_COUNTER_NAMES`' order.
    pub counters: [u64; STATS_COUNTERS],
    /// (result code, refusals with it), codes ascending, only codes seen.
    pub refusals_by_code: Vec<(u8, u64)>,
}

impl Stats {
    const COUNTERS_BYTES: usize = STATS_COUNTERS * 8;
    const REFUSAL_BYTES: usize = 16;

    pub fn encode(&self, out: &mut Vec<u8>) {
        for value in self.counters {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&(self.refusals_by_code.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        for (code, count) in &self.refusals_by_code {
            out.extend_from_slice(&[*code, 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&count.to_le_bytes());
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Stats, BodyError> {
        let mut reader = Reader::at_least(bytes, Self::COUNTERS_BYTES + 8)?;
        let mut stats = Stats::default();
        for value in &mut stats.counters {
            *value = reader.u64()?;
        }
        let count = reader.u32()?;
        reader.zeros(4, "refusals_by_code")?;
        if count > 256 {
            return Err(field_error("refusals_by_code", format!("{count} entries; there are 256 codes")));
        }
        let expected = Self::COUNTERS_BYTES + 8 + count as usize * Self::REFUSAL_BYTES;
        if bytes.len() != expected {
            return Err(BodyError::Length { expected, found: bytes.len() });
        }
        for _ in 0..count {
            let code = reader.u8()?;
            reader.zeros(7, "refusals_by_code")?;
            let refusals = reader.u64()?;
            if stats.refusals_by_code.last().is_some_and(|(last, _)| *last >= code) {
                return Err(field_error("refusals_by_code", format!("code {code} out of order")));
            }
            stats.refusals_by_code.push((code, refusals));
        }
        Ok(stats)
    }

    /// A counter by its name in `STATS_COUNTER_NAMES`.
    pub fn counter(&self, name: &str) -> Option<u64> {
        STATS_COUNTER_NAMES.iter().position(|n| *n == name).map(|index| self.counters[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_round_trip_and_reject_bad_bodies() {
        let mut counters = [0u64; STATS_COUNTERS];
        for (index, value) in counters.iter_mut().enumerate() {
            *value = index as u64 * 1000 + 7;
        }
        let stats = Stats { counters, refusals_by_code: vec![(5, 12), (12, 3), (200, 1)] };
        let mut body = Vec::new();
        stats.encode(&mut body);
        assert_eq!(body.len(), 176 + 8 + 3 * 16);
        assert_eq!(Stats::decode(&body), Ok(stats.clone()));
        assert_eq!(stats.counter("refusals"), Some(3007));
        assert_eq!(stats.counter("no such counter"), None);
        assert!(Stats::decode(&body[..body.len() - 1]).is_err(), "truncated");
        let mut longer = body.clone();
        longer.push(0);
        assert!(Stats::decode(&longer).is_err(), "trailing byte");
        let mut unordered = Vec::new();
        Stats { counters, refusals_by_code: vec![(12, 1), (5, 1)] }.encode(&mut unordered);
        assert!(Stats::decode(&unordered).is_err(), "codes out of order");
        let mut dirty = body.clone();
        dirty[176 + 8 + 1] = 1;
        assert!(Stats::decode(&dirty).is_err(), "reserved byte set");
        let mut huge = body[..176].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert!(Stats::decode(&huge).is_err(), "absurd count");
    }
}
