//! The engine: schedule -> execute -> update, turning sampled tokens into request outputs.

pub mod builder;
pub mod core;
pub mod handle;
pub mod output;

pub use self::core::{EngineCore, RequestOutput};
pub use builder::{build_engine, EngineArgs, LoadedEngine};
pub use handle::{EngineHandle, EngineStats, RequestEvent, RequestStream};
