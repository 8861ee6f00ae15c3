//! Subcommands of the `flare` binary and the flags they share.

pub mod bench;
pub mod common;
pub mod eval;
pub mod generate;
pub mod serve;
