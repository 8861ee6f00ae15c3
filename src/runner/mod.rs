//! Executes a scheduled step: one batched forward over a ragged batch, then sampling.

pub mod candle;
pub mod mock;

pub use crate::scheduler::output::{ModelRunnerOutput, SchedulerOutput};
pub use mock::MockRunner;

/// Turns a [`SchedulerOutput`] into sampled tokens. Implementations: the real candle runner,
/// and [`MockRunner`] for tests without a model.
pub trait ModelRunner: Send {
    /// Computes every scheduled token and samples for the sequences with `samples_this_step`.
    fn execute(&mut self, out: &SchedulerOutput) -> anyhow::Result<ModelRunnerOutput>;
}
