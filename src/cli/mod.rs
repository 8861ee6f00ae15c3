//! Subcommands of the `flare` binary and the flags they share.

pub mod bench;
pub mod common;
pub mod generate;
pub mod serve;
