//! `cargo fuzz run request`: the body is `flare::fuzzing::request::fuzz` (its docs say what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flare::fuzzing::request::fuzz(data));
