//! Feeds arbitrary bytes to every decoder of the wire protocol: each must
//! return an error or a value, never panic, whatever it is given.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| yeyak::protocol::decode_all(bytes));
