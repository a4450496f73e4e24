//! Fuzz target: see `asyncmachine::proto::checks::handshake` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| asyncmachine::proto::checks::handshake(data));
