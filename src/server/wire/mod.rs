//! OpenAI wire types (serde only): what clients send and what they parse back.

pub mod anthropic;
pub mod chat;
pub mod common;
pub mod completion;
pub mod misc;
pub mod responses;

pub use anthropic::*;
pub use chat::*;
pub use common::*;
pub use completion::*;
pub use misc::*;
pub use responses::*;
