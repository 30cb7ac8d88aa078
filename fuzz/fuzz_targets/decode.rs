//! Feeds arbitrary bytes to every decoder of the wire protocol: each must
//! return an error or a value, never panic, whatever it is given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yeyak::protocol::body::{split_batch, Booking, PersonQuery, RegionQuery, SiteQuery};
use yeyak::protocol::{decode_frame, Answer, CapacityAddition, FRAME_BODY_BYTES_MAX};

fuzz_target!(|bytes: &[u8]| {
    if let Ok((_, body)) = decode_frame(bytes, FRAME_BODY_BYTES_MAX) {
        if let Ok(items) = split_batch(body, 4096) {
            for item in items {
                let _ = Booking::decode(item.body);
            }
        }
    }
    let _ = Booking::decode(bytes);
    let _ = PersonQuery::decode(bytes);
    let _ = SiteQuery::decode(bytes);
    let _ = RegionQuery::decode(bytes);
    let _ = CapacityAddition::decode(bytes);
    if let Ok((answer, _)) = Answer::decode(bytes) {
        let _ = answer.to_refusal();
    }
});
