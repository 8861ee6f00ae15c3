//! Subcommands of the `flare` binary and the flags they share.

pub mod common;
pub mod generate;
pub mod serve;
