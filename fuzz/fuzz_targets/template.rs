//! `cargo fuzz run template`: the body is `flare::fuzzing::template::fuzz` (its docs say what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flare::fuzzing::template::fuzz(data));
