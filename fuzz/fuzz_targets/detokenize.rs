//! `cargo fuzz run detokenize`: the body is `flare::fuzzing::detokenize::fuzz` (its docs say what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flare::fuzzing::detokenize::fuzz(data));
