//! Subcommands of the `flare` binary and the flags they share.

pub mod bench;
pub mod common;
pub mod eval;
pub mod generate;
pub mod multi;
pub mod route;
pub mod serve;
