//! The wire format, byte by byte (docs/protocol.md): the exact bytes of a few
//! requests and replies, and a bounded fuzz run that feeds the decoders random
//! and mutated bytes (they must refuse, never panic). Failing cases print the
//! proptest seed and the minimal input.

use proptest::prelude::*;
use yeyak::calendar::Date;
use yeyak::inventory::SlotIndex;
use yeyak::protocol::{decode_frame, encode_frame, opcode, Answer, FrameError, FRAME_BODY_BYTES_MAX};
use yeyak::rules::Channel;
use yeyak::state::{BookingRequest, PersonKey, Refusal};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// A RESERVE for person 0x0f0e…01, born 1990-05-15 (day 7439), slot 258,
/// idempotency key 1, by the person, request id 0x1122.
#[test]
fn a_reserve_request_byte_by_byte() {
    let booking = BookingRequest {
        person: PersonKey(0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100),
        birth_date: Date::parse("1990-05-15").unwrap(),
        slot: SlotIndex(258),
        idempotency_key: 1,
        channel: Channel::Person,
    };
    let mut frame = Vec::new();
    encode_frame(&mut frame, opcode::RESERVE, 0, 0x1122, |out| booking.encode(out));
    let expected_header = "59 4b 01 10 00 00 00 00 22 11 00 00 00 00 00 00 28 00 00 00";
    let expected_body = "00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f \
                         0f 1d 00 00 02 01 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00";
    assert_eq!(hex(&frame[..20]), expected_header);
    assert_eq!(hex(&frame[24..]), expected_body);
    let mut unsigned = frame.clone();
    unsigned[20..24].fill(0);
    assert_eq!(frame[20..24], crc32c::crc32c(&unsigned).to_le_bytes(), "CRC32C of the header (CRC zeroed) and body");
    let (header, body) = decode_frame(&frame, FRAME_BODY_BYTES_MAX).unwrap();
    assert_eq!((header.opcode, header.request_id, header.body_bytes), (opcode::RESERVE, 0x1122, 40));
    assert_eq!(BookingRequest::decode(body), Ok(booking));
}

/// The reply: SLOT_FULL for slot 258, flag REPLY.
#[test]
fn a_slot_full_reply_byte_by_byte() {
    let answer = Answer::refusal(&Refusal::SlotFull { slot: SlotIndex(258) });
    let mut frame = Vec::new();
    encode_frame(&mut frame, opcode::RESERVE, yeyak::protocol::frame::flag::REPLY, 0x1122, |out| answer.encode(out));
    assert_eq!(hex(&frame[..20]), "59 4b 01 10 01 00 00 00 22 11 00 00 00 00 00 00 10 00 00 00");
    assert_eq!(hex(&frame[24..]), "28 00 00 00 02 01 00 00 00 00 00 00 00 00 00 00");
    let (_, body) = decode_frame(&frame, FRAME_BODY_BYTES_MAX).unwrap();
    assert_eq!(Answer::decode(body).unwrap().0.to_refusal(), Some(Refusal::SlotFull { slot: SlotIndex(258) }));
}

/// WINDOW_CLOSED carries the next opening in the wide field, with its flag.
#[test]
fn a_window_closed_answer_byte_by_byte() {
    let mut bytes = Vec::new();
    Answer::refusal(&Refusal::WindowClosed { next_open_ms: Some(0x0102_0304_0506) }).encode(&mut bytes);
    assert_eq!(hex(&bytes), "16 01 00 00 00 00 00 00 06 05 04 03 02 01 00 00");
}

/// docs/protocol.md's example of compact answers: a batch of two RESERVEs
/// of slot 7, the first booked, the second refused NOT_ELIGIBLE (birth date
/// day 7,439).
#[test]
fn compact_batch_answers_byte_by_byte() {
    use yeyak::protocol::body::{batch_flag, put_batch_header_with, CompactAnswerWriter, CompactAnswers};
    let mut request = Vec::new();
    put_batch_header_with(&mut request, 2, batch_flag::COMPACT_ANSWERS);
    assert_eq!(hex(&request), "02 00 01 00");
    let refused = Answer::refusal(&Refusal::NotEligible { birth_date: Date::from_days_since_epoch(7439) });
    let mut reply = Vec::new();
    let mut answers = CompactAnswerWriter::start(&mut reply, 2);
    answers.push(&mut reply, opcode::RESERVE, 7, &Answer::ok(7));
    answers.push(&mut reply, opcode::RESERVE, 7, &refused);
    answers.finish();
    assert_eq!(hex(&reply), "02 00 01 00 00 94 14 01 00 00 00 00 00 00 0f 1d 00 00 00 00 00 00");
    let asked = [(opcode::RESERVE, 7), (opcode::RESERVE, 7)];
    assert_eq!(CompactAnswers::parse(&reply).unwrap().answers(asked.into_iter()).unwrap(), [Answer::ok(7), refused]);
}

#[test]
fn foreign_and_broken_frames_are_refused_with_their_codes() {
    let mut frame = Vec::new();
    encode_frame(&mut frame, opcode::PING, 0, 1, |_| {});
    let mut bad = frame.clone();
    bad[0] = b'G'; // "GET / HTTP/1.1" arriving on the engine's port
    assert_eq!(decode_frame(&bad, FRAME_BODY_BYTES_MAX).unwrap_err().code(), Some(100));
    let mut bad = frame.clone();
    bad[2] = 2;
    assert_eq!(decode_frame(&bad, FRAME_BODY_BYTES_MAX), Err(FrameError::UnsupportedVersion(2)));
    let mut bad = frame.clone();
    bad[23] ^= 0xff;
    assert_eq!(decode_frame(&bad, FRAME_BODY_BYTES_MAX).unwrap_err().code(), Some(102));
}

/// A valid frame with a batch of two commands, to mutate.
fn valid_batch_frame() -> Vec<u8> {
    let booking = BookingRequest {
        person: PersonKey(5),
        birth_date: Date::from_days_since_epoch(7439),
        slot: SlotIndex(1),
        idempotency_key: 1,
        channel: Channel::Operator { operator_id: 3 },
    };
    let mut frame = Vec::new();
    encode_frame(&mut frame, opcode::BATCH, 0, 9, |out| {
        yeyak::protocol::body::put_batch_header(out, 2);
        yeyak::protocol::body::put_batch_item(out, opcode::RESERVE, |b| booking.encode(b));
        yeyak::protocol::body::put_batch_item(out, opcode::CANCEL, |b| booking.encode(b));
    });
    frame
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        yeyak::protocol::decode_all(&bytes);
    }

    #[test]
    fn mutated_frames_never_panic_and_never_pass_unnoticed(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let frame = valid_batch_frame();
        let mut bad = frame.clone();
        for (index, mask) in &flips {
            let at = index.index(bad.len());
            bad[at] ^= mask;
        }
        yeyak::protocol::decode_all(&bad);
        yeyak::protocol::decode_all(&bad[..cut.index(bad.len())]);
        if bad != frame {
            prop_assert!(decode_frame(&bad, FRAME_BODY_BYTES_MAX).is_err(), "a changed frame was accepted");
        }
    }
}
