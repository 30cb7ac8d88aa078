//! The handshake bodies and the proof (docs/protocol.md, "the handshake"):
//! HELLO offers versions and names a key, CHALLENGE answers with a nonce,
//! PROOF is an HMAC-SHA256 over both nonces under the shared key.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::protocol::body::{BodyError, Reader};
use crate::protocol::{opcode, Answer};

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

/// Why a client's handshake failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientHandshakeError {
    /// The engine refused the connection whole (the connection cap, a
    /// shutdown): worth another try later.
    #[error("the engine refused the connection: code {}", .0.code)]
    Refused(Answer),
    #[error("authentication failed: the engine does not accept this key")]
    Unauthenticated,
    #[error("the engine's handshake reply does not read: {0}")]
    BadReply(String),
}

/// A client's side of the handshake without I/O, for the blocking and the
/// async client alike: the HELLO frame to send; from the engine's reply, the
/// PROOF frame; from the reply to that, whether the key was accepted.
pub struct ClientHandshake<'key> {
    key: &'key [u8],
    hello: Hello,
}

/// The handshake's two requests carry these ids; a connection's own
/// requests start after them.
pub const HELLO_REQUEST_ID: u64 = 1;
pub const PROOF_REQUEST_ID: u64 = 2;

impl<'key> ClientHandshake<'key> {
    pub fn new(role: Role, key_id: u32, key: &'key [u8]) -> Result<ClientHandshake<'key>, getrandom::Error> {
        let version = crate::protocol::frame::PROTOCOL_VERSION;
        let hello = Hello { version_min: version, version_max: version, role, key_id, client_nonce: nonce()? };
        Ok(ClientHandshake { key, hello })
    }

    pub fn hello_frame(&self, out: &mut Vec<u8>) {
        crate::protocol::encode_frame(out, opcode::HELLO, 0, HELLO_REQUEST_ID, |body| self.hello.encode(body));
    }

    /// The PROOF frame answering the engine's reply to HELLO.
    pub fn proof_frame(
        &self,
        reply_opcode: u8,
        reply_body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ClientHandshakeError> {
        let bad = |e: BodyError| ClientHandshakeError::BadReply(e.to_string());
        match reply_opcode {
            opcode::HELLO => {}
            opcode::ERROR => return Err(ClientHandshakeError::Refused(Answer::decode(reply_body).map_err(bad)?.0)),
            other => return Err(ClientHandshakeError::BadReply(format!("opcode {other:#04x} in answer to HELLO"))),
        }
        let challenge = Challenge::decode(reply_body).map_err(bad)?;
        let proof = proof(self.key, &self.hello, &challenge.server_nonce);
        crate::protocol::encode_frame(out, opcode::PROOF, 0, PROOF_REQUEST_ID, |body| body.extend_from_slice(&proof));
        Ok(())
    }

    /// Whether the engine's reply to PROOF admits this client.
    pub fn welcomed(reply_opcode: u8, reply_body: &[u8]) -> Result<(), ClientHandshakeError> {
        match (reply_opcode, Answer::decode(reply_body)) {
            (opcode::PROOF, Ok((welcome, _))) if welcome.is_ok() => Ok(()),
            (opcode::ERROR, Ok((refusal, _))) if refusal.code != crate::protocol::code::UNAUTHENTICATED => {
                Err(ClientHandshakeError::Refused(refusal))
            }
            _ => Err(ClientHandshakeError::Unauthenticated),
        }
    }
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

    #[test]
    fn a_client_handshake_proves_its_key_and_reads_refusals() {
        use crate::protocol::code;
        let key = [9u8; 32];
        let handshake = ClientHandshake::new(Role::Operator, 7, &key).unwrap();
        let mut out = Vec::new();
        let refusal = Answer::protocol(code::TOO_MANY_CONNECTIONS, 0, 3);
        let mut body = Vec::new();
        refusal.encode(&mut body);
        assert_eq!(handshake.proof_frame(opcode::ERROR, &body, &mut out), Err(ClientHandshakeError::Refused(refusal)));
        assert!(matches!(
            handshake.proof_frame(opcode::RESERVE, &[], &mut out),
            Err(ClientHandshakeError::BadReply(_))
        ));
        assert!(out.is_empty(), "nothing to send after a bad reply");
        body.clear();
        Challenge { version: 1, server_nonce: [3; 32] }.encode(&mut body);
        handshake.proof_frame(opcode::HELLO, &body, &mut out).unwrap();
        let (header, proof_body) = crate::protocol::decode_frame(&out, 1024).unwrap();
        assert_eq!((header.opcode, header.request_id), (opcode::PROOF, PROOF_REQUEST_ID));
        assert!(verify_proof(&key, &handshake.hello, &[3; 32], proof_body));
        assert!(!verify_proof(&[8u8; 32], &handshake.hello, &[3; 32], proof_body));
        let answer = |answer: Answer| {
            let mut bytes = Vec::new();
            answer.encode(&mut bytes);
            bytes
        };
        assert_eq!(ClientHandshake::welcomed(opcode::PROOF, &answer(Answer::ok(0))), Ok(()));
        let denied = answer(Answer::protocol(code::UNAUTHENTICATED, 0, 0));
        assert_eq!(ClientHandshake::welcomed(opcode::PROOF, &denied), Err(ClientHandshakeError::Unauthenticated));
        assert_eq!(ClientHandshake::welcomed(opcode::ERROR, &denied), Err(ClientHandshakeError::Unauthenticated));
        assert_eq!(ClientHandshake::welcomed(opcode::PROOF, &[1, 2]), Err(ClientHandshakeError::Unauthenticated));
    }
}
