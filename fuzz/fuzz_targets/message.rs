//! Fuzz target: see `asyncmachine::proto::checks::message` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| asyncmachine::proto::checks::message(data));
