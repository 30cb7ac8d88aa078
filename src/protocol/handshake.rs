//! The handshake bodies and the proof (docs/protocol.md, "the handshake"):
//! HELLO offers versions and names a key, CHALLENGE answers with a nonce,
//! PROOF is an HMAC-SHA256 over both nonces under the shared key.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::protocol::body::{BodyError, Reader};

pub const NONCE_BYTES: usize = 32;
pub const PROOF_BYTES: usize = 32;
/// The smallest key the engine accepts, in bytes.
pub const KEY_BYTES_MIN: usize = 32;
const PROOF_CONTEXT: &[u8] = b"yeyak-auth-v1";

/// Who connects: thin gateways book for the people they verified; operators
/// also book for others (R10) and run operator commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Gateway = 1,
    Operator = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version_min: u8,
    pub version_max: u8,
    pub role: Role,
    pub key_id: u32,
    pub client_nonce: [u8; NONCE_BYTES],
}

impl Hello {
    pub const BYTES: usize = 40;

    pub fn decode(bytes: &[u8]) -> Result<Hello, BodyError> {
        let mut reader = Reader::exact(bytes, Self::BYTES)?;
        let version_min = reader.u8()?;
        let version_max = reader.u8()?;
        let role = match reader.u8()? {
            1 => Role::Gateway,
            2 => Role::Operator,
            other => return Err(BodyError::Field { field: "role", reason: format!("{other}; 1 gateway, 2 operator") }),
        };
        reader.zeros(1, "hello reserved byte")?;
        Ok(Hello { version_min, version_max, role, key_id: reader.u32()?, client_nonce: reader.take()? })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.version_min, self.version_max, self.role as u8, 0]);
        out.extend_from_slice(&self.key_id.to_le_bytes());
        out.extend_from_slice(&self.client_nonce);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub version: u8,
    pub server_nonce: [u8; NONCE_BYTES],
}

impl Challenge {
    pub const BYTES: usize = 36;

    pub fn decode(bytes: &[u8]) -> Result<Challenge, BodyError> {
        let mut reader = Reader::exact(bytes, Self::BYTES)?;
        let version = reader.u8()?;
        reader.zeros(3, "challenge reserved bytes")?;
        Ok(Challenge { version, server_nonce: reader.take()? })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.version, 0, 0, 0]);
        out.extend_from_slice(&self.server_nonce);
    }
}

/// The MAC of a handshake: HMAC-SHA256 under `key` of the context, the role,
/// the key id and both nonces.
fn handshake_mac(key: &[u8], hello: &Hello, server_nonce: &[u8; NONCE_BYTES]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(PROOF_CONTEXT);
    mac.update(&[hello.role as u8]);
    mac.update(&hello.key_id.to_le_bytes());
    mac.update(&hello.client_nonce);
    mac.update(server_nonce);
    mac
}

/// The proof a client sends.
pub fn proof(key: &[u8], hello: &Hello, server_nonce: &[u8; NONCE_BYTES]) -> [u8; PROOF_BYTES] {
    handshake_mac(key, hello, server_nonce).finalize().into_bytes().into()
}

/// Checks a proof in constant time.
pub fn verify_proof(key: &[u8], hello: &Hello, server_nonce: &[u8; NONCE_BYTES], proof_bytes: &[u8]) -> bool {
    handshake_mac(key, hello, server_nonce).verify_slice(proof_bytes).is_ok()
}

/// A fresh random nonce from the OS.
pub fn nonce() -> Result<[u8; NONCE_BYTES], getrandom::Error> {
    let mut bytes = [0; NONCE_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_key_and_nonces_they_were_made_with() {
        let hello = Hello { version_min: 1, version_max: 1, role: Role::Gateway, key_id: 1, client_nonce: [1; 32] };
        let mut bytes = Vec::new();
        hello.encode(&mut bytes);
        assert_eq!(Hello::decode(&bytes), Ok(hello));
        let key = [7u8; 32];
        let server_nonce = [2; 32];
        let good = proof(&key, &hello, &server_nonce);
        assert!(verify_proof(&key, &hello, &server_nonce, &good));
        assert!(!verify_proof(&[8u8; 32], &hello, &server_nonce, &good));
        assert!(!verify_proof(&key, &hello, &[3; 32], &good));
        let operator = Hello { role: Role::Operator, ..hello };
        assert!(!verify_proof(&key, &operator, &server_nonce, &good), "a gateway proof is no operator proof");
        assert!(!verify_proof(&key, &hello, &server_nonce, &good[..31]));
    }
}
