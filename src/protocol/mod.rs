//! The wire protocol, byte by byte as in docs/protocol.md: frames, command
//! bodies, answers. Pure: no I/O, no panics on any input. The server and the
//! client build on it.

pub mod answer;
pub mod body;
pub mod frame;
pub mod handshake;

pub use answer::Answer;
pub use body::{BodyError, CapacityAddition, PersonQuery, RegionQuery, SiteQuery};
pub use frame::{decode_frame, encode_frame, FrameError, FrameHeader, FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES};

/// The most commands one BATCH frame may carry.
pub const BATCH_COMMANDS_MAX: u16 = 4096;

/// Runs every decoder the engine or a client applies to bytes from a socket
/// over `bytes`, results thrown away: for the cargo-fuzz target and the
/// suite's bounded fuzz run (tests/protocol_bytes.rs), which check that none
/// of them panics, whatever the bytes.
pub fn decode_all(bytes: &[u8]) {
    let bodies = |bytes: &[u8]| {
        let _ = crate::state::BookingRequest::decode(bytes);
        let _ = PersonQuery::decode(bytes);
        let _ = SiteQuery::decode(bytes);
        let _ = RegionQuery::decode(bytes);
        let _ = CapacityAddition::decode(bytes);
        let _ = body::Stats::decode(bytes);
        let _ = handshake::Hello::decode(bytes);
        let _ = handshake::Challenge::decode(bytes);
        if let Ok((answer, _)) = Answer::decode(bytes) {
            let _ = answer.to_refusal();
        }
    };
    bodies(bytes);
    if let Ok((_, frame_body)) = decode_frame(bytes, FRAME_BODY_BYTES_MAX) {
        bodies(frame_body);
    }
    for items in [body::split_batch(bytes, BATCH_COMMANDS_MAX), body::split_reply_batch(bytes)].into_iter().flatten() {
        for item in items {
            bodies(item.body);
        }
    }
    if let Ok(compact) = body::CompactAnswers::parse(bytes) {
        // Items asking RESERVE, CANCEL, CHANGE and GET_RESERVATION in turn.
        let asked = (0..compact.len()).map(|index| (opcode::RESERVE + (index % 4) as u8, index as u32));
        let _ = compact.answers(asked);
    }
}

/// Opcodes (docs/protocol.md, "Opcodes").
pub mod opcode {
    pub const HELLO: u8 = 0x01;
    pub const PROOF: u8 = 0x02;
    pub const PING: u8 = 0x0E;
    pub const ERROR: u8 = 0x0F;
    pub const RESERVE: u8 = 0x10;
    pub const CANCEL: u8 = 0x11;
    pub const CHANGE: u8 = 0x12;
    pub const GET_RESERVATION: u8 = 0x13;
    pub const SITE_AVAILABILITY: u8 = 0x14;
    pub const REGION_AVAILABILITY: u8 = 0x15;
    pub const STATS: u8 = 0x70;
    pub const ADD_CAPACITY: u8 = 0x80;
    pub const BATCH: u8 = 0xF0;

    /// Reserved ranges: sessions and identity, then the waiting room.
    pub const SESSIONS: std::ops::RangeInclusive<u8> = 0x30..=0x4F;
    pub const WAITING_ROOM: std::ops::RangeInclusive<u8> = 0x50..=0x6F;

    /// Whether a BATCH may carry this opcode: the commands whose replies are a
    /// fixed 16-byte answer, so that a batch's reply is bounded
    /// (`BATCH_COMMANDS_MAX` × 20 bytes). Availability queries, whose replies
    /// grow with the inventory, go in frames of their own.
    pub fn batchable(opcode: u8) -> bool {
        matches!(opcode, RESERVE | CANCEL | CHANGE | GET_RESERVATION | ADD_CAPACITY)
    }
}

/// The name of any result code, engine or protocol, for people to read
/// (`yeyak client stats`); an unassigned code prints as its number.
pub fn code_name(code: u8) -> String {
    crate::state::ResultCode::from_u8(code)
        .map(crate::state::ResultCode::name)
        .or_else(|| code::name(code))
        .map_or_else(|| format!("code {code}"), str::to_string)
}

/// Result codes of the protocol and the server (100–127); 0–99 are the state
/// machine's `ResultCode`s.
pub mod code {
    pub const OK: u8 = 0;
    pub const MALFORMED: u8 = 100;
    pub const UNSUPPORTED_VERSION: u8 = 101;
    pub const BAD_CHECKSUM: u8 = 102;
    pub const FRAME_TOO_LARGE: u8 = 103;
    pub const BATCH_TOO_LARGE: u8 = 104;
    pub const UNKNOWN_OPCODE: u8 = 105;
    pub const OVERLOADED: u8 = 110;
    pub const TOO_MANY_IN_FLIGHT: u8 = 111;
    pub const TOO_MANY_CONNECTIONS: u8 = 112;
    pub const SHUTTING_DOWN: u8 = 113;
    pub const STARTING: u8 = 114;
    pub const UNAUTHENTICATED: u8 = 120;
    pub const NOT_ALLOWED: u8 = 121;

    /// Whether an ERROR frame with this code closes the connection
    /// (docs/protocol.md, "ErrorReply"): the frame could not be read or
    /// understood, or the peer is not authenticated. Other refusals answer
    /// the request whole and the connection goes on.
    pub fn closes_connection(code: u8) -> bool {
        (MALFORMED..=UNKNOWN_OPCODE).contains(&code) || code == UNAUTHENTICATED
    }

    /// The name of a protocol or server code, for messages.
    pub fn name(code: u8) -> Option<&'static str> {
        Some(match code {
            MALFORMED => "malformed",
            UNSUPPORTED_VERSION => "unsupported version",
            BAD_CHECKSUM => "bad checksum",
            FRAME_TOO_LARGE => "frame too large",
            BATCH_TOO_LARGE => "batch too large",
            UNKNOWN_OPCODE => "unknown opcode",
            OVERLOADED => "overloaded",
            TOO_MANY_IN_FLIGHT => "too many in flight",
            TOO_MANY_CONNECTIONS => "too many connections",
            SHUTTING_DOWN => "shutting down",
            STARTING => "starting",
            UNAUTHENTICATED => "unauthenticated",
            NOT_ALLOWED => "not allowed",
            _ => return None,
        })
    }
}
