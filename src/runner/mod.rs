//! Executes a scheduled step: one batched forward over a ragged batch, then sampling.

pub mod candle;
pub mod input_batch;
pub mod mock;

use crate::guidance::GrammarMatcher;
use crate::kv::manager::SeqId;
use crate::request::SamplingParams;
pub use crate::scheduler::output::{ModelRunnerOutput, SchedulerOutput};
pub use crate::scheduler::SeqTokens;
pub use mock::MockRunner;

/// Turns a [`SchedulerOutput`] into sampled tokens. Implementations: the real candle runner,
/// and [`MockRunner`] for tests without a model.
pub trait ModelRunner: Send {
    /// A sequence that will appear in steps: per-sequence sampling state starts here.
    fn add_sequence(&mut self, _id: SeqId, _params: &SamplingParams, _prompt: &[u32]) {}

    /// Constrains the sequence's output by `grammar` from its first sampled token on. Runners
    /// that cannot apply masks refuse, so that no constraint is silently ignored.
    fn set_grammar(&mut self, id: SeqId, _grammar: GrammarMatcher) -> anyhow::Result<()> {
        anyhow::bail!("this runner does not support structured outputs (sequence {id})")
    }

    /// The sequence ended, however it ended: drop its state.
    fn remove_sequence(&mut self, _id: SeqId) {}

    /// Computes every scheduled token and samples for the sequences with `samples_this_step`.
    /// `seqs` is the one owner of every sequence's tokens (the scheduler): penalties, min_tokens
    /// and speculative verification read the prompt and outputs from there, never a copy.
    fn execute(
        &mut self,
        out: &SchedulerOutput,
        seqs: &dyn SeqTokens,
    ) -> anyhow::Result<ModelRunnerOutput>;
}
