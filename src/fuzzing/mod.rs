//! The bodies of the cargo-fuzz targets in `fuzz/` (see fuzz/README.md): each takes arbitrary
//! bytes, drives one of flare's entry points that hostile input reaches, and asserts its
//! invariants by panicking. `tests/fuzz_corpus.rs` replays the committed corpus through the same
//! functions as ordinary tests (no instrumentation), so CI runs them without a fuzzing build.
//!
//! - [`request`]: a request body through the parsing, conversion and validation of the five
//!   POST routes ([`crate::server::dry_run`]);
//! - [`template`]: conversations rendered by chat templates (ChatML checked against its
//!   definition, the Hermes tool template);
//! - [`detokenize`]: token ids streamed through the incremental detokenizer of three
//!   tokenizers, whose deltas must add up to the whole decode.

pub mod detokenize;
pub mod request;
pub mod template;
