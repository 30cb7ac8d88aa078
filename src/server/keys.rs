//! The pre-shared keys gateways and operators authenticate with
//! (docs/protocol.md, "the handshake"), kept in `<data directory>/keys.toml`:
//!
//! ```toml
//! [[gateway]]
//! id = 1
//! key = "64 or more hex digits"
//! [[operator]]
//! id = 1001          # the operator id the log records for this operator's bookings
//! key = "…"
//! ```
//!
//! On the demo defaults the engine generates one gateway key and one operator
//! key on first start (and says so); the shell client and the benchmark read
//! them from the same file. Otherwise a missing file refuses start-up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::protocol::handshake::{Role, KEY_BYTES_MIN};

pub const KEYS_FILE: &str = "keys.toml";
/// The operator id of the generated demo operator key.
pub const DEMO_OPERATOR_ID: u32 = 1001;

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "no keys in {path}: write one (see docs/protocol.md), or start on the demo defaults to have \
         them generated"
    )]
    Missing { path: PathBuf },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("the OS gave no random bytes for a key: {0}")]
    Random(getrandom::Error),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    gateway: Vec<KeyEntry>,
    #[serde(default)]
    operator: Vec<KeyEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: u32,
    key: String,
}

/// Every key the engine accepts, by role and id.
#[derive(Clone, Default)]
pub struct KeyRing {
    keys: HashMap<(Role, u32), Vec<u8>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "KeyRing({} keys)", self.keys.len())
    }
}

fn parse_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok()).collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl KeyRing {
    pub fn key(&self, role: Role, id: u32) -> Option<&[u8]> {
        self.keys.get(&(role, id)).map(Vec::as_slice)
    }

    /// The first key of a role (lowest id), for the shell client and the benchmark.
    pub fn first(&self, role: Role) -> Option<(u32, &[u8])> {
        self.keys.iter().filter(|((r, _), _)| *r == role).map(|((_, id), key)| (*id, key.as_slice())).min()
    }

    pub fn parse(text: &str, path: &Path) -> Result<KeyRing, KeysError> {
        let invalid = |reason: String| KeysError::Invalid { path: path.to_path_buf(), reason };
        let file: KeysFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut ring = KeyRing::default();
        for (role, entries) in [(Role::Gateway, &file.gateway), (Role::Operator, &file.operator)] {
            for entry in entries {
                let key =
                    parse_hex(&entry.key).ok_or_else(|| invalid(format!("key of {role:?} {}: not hex", entry.id)))?;
                if key.len() < KEY_BYTES_MIN {
                    return Err(invalid(format!(
                        "key of {role:?} {}: {} bytes, at least {KEY_BYTES_MIN}",
                        entry.id,
                        key.len()
                    )));
                }
                if entry.id == 0 {
                    return Err(invalid(format!("{role:?} key id 0: ids start at 1")));
                }
                // One secret, one holder: a key shared by two entries would let
                // whoever holds it prove either identity (a gateway posing as an
                // operator, R10).
                if let Some(((other_role, other_id), _)) = ring.keys.iter().find(|(_, k)| **k == key) {
                    return Err(invalid(format!(
                        "{role:?} {} has the same key as {other_role:?} {other_id}: every key must be its own",
                        entry.id
                    )));
                }
                if ring.keys.insert((role, entry.id), key).is_some() {
                    return Err(invalid(format!("{role:?} key id {} appears twice", entry.id)));
                }
            }
        }
        if ring.first(Role::Gateway).is_none() {
            return Err(invalid("no [[gateway]] key: no gateway could connect".into()));
        }
        Ok(ring)
    }

    /// Reads the data directory's keys, generating them first if there are
    /// none and `generate` is set. Returns whether it generated them.
    pub fn load(data_directory: &Path, generate: bool) -> Result<(KeyRing, bool), KeysError> {
        let path = data_directory.join(KEYS_FILE);
        let io = |source| KeysError::Io { path: path.clone(), source };
        let mut generated = false;
        if !path.exists() {
            if !generate {
                return Err(KeysError::Missing { path });
            }
            let mut gateway = [0u8; 32];
            let mut operator = [0u8; 32];
            getrandom::fill(&mut gateway).map_err(KeysError::Random)?;
            getrandom::fill(&mut operator).map_err(KeysError::Random)?;
            let text = format!(
                "# yeyak's pre-shared keys, generated on first start of the demo defaults.\n\
                 # Gateways and operators prove they hold one (HMAC-SHA256); see docs/protocol.md.\n\
                 [[gateway]]\nid = 1\nkey = \"{}\"\n\n[[operator]]\nid = {DEMO_OPERATOR_ID}\nkey = \"{}\"\n",
                to_hex(&gateway),
                to_hex(&operator)
            );
            write_private(&path, &text).map_err(io)?;
            generated = true;
        }
        let text = std::fs::read_to_string(&path).map_err(io)?;
        Ok((KeyRing::parse(&text, &path)?, generated))
    }
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_and_bad_files_are_refused() {
        let directory = tempfile::tempdir().unwrap();
        assert!(matches!(KeyRing::load(directory.path(), false), Err(KeysError::Missing { .. })));
        let (ring, generated) = KeyRing::load(directory.path(), true).unwrap();
        assert!(generated);
        assert_eq!(ring.first(Role::Gateway).unwrap().0, 1);
        assert!(ring.key(Role::Operator, DEMO_OPERATOR_ID).is_some());
        let (again, generated) = KeyRing::load(directory.path(), true).unwrap();
        assert!(!generated);
        assert_eq!(again.key(Role::Gateway, 1), ring.key(Role::Gateway, 1));
        let path = Path::new("keys.toml");
        let short = "[[gateway]]\nid = 1\nkey = \"abcd\"\n";
        assert!(KeyRing::parse(short, path).unwrap_err().to_string().contains("at least 32"));
        let none = "[[operator]]\nid = 1\nkey = \"".to_string() + &"ab".repeat(32) + "\"\n";
        assert!(KeyRing::parse(&none, path).unwrap_err().to_string().contains("no [[gateway]]"));
        assert!(format!("{ring:?}").starts_with("KeyRing("), "no key material in Debug");
        let shared =
            format!("[[gateway]]\nid = 1\nkey = \"{0}\"\n[[operator]]\nid = 7\nkey = \"{0}\"\n", "cd".repeat(32));
        let error = KeyRing::parse(&shared, path).unwrap_err().to_string();
        assert!(error.contains("Operator 7 has the same key as Gateway 1"), "{error}");
    }
}
