//! Per-sequence token sampler: one CPU logits row in, one token (with logprobs) out.
//!
//! Processing order follows vLLM: logit bias, min_tokens masking, repetition penalty,
//! frequency/presence penalties, then either greedy argmax or temperature, top-k,
//! top-p, min-p and a single inverse-CDF draw. Logprobs are taken from the raw row.

mod draw;
mod filters;
mod logprobs;
mod penalties;
mod stop;
mod vmath;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::request::SamplingParams;
use filters::{Filters, Kept};

pub use stop::stop_reason;

/// What the sampler needs to know about the sequence besides its logits row.
#[derive(Debug, Clone, Copy, Default)]
pub struct SampleContext<'a> {
    pub prompt_tokens: &'a [u32],
    /// Tokens generated so far, not counting the one being sampled now.
    pub output_tokens: &'a [u32],
    /// The model's end-of-sequence ids (several for Llama 3 instruct models).
    pub eos_token_ids: &'a [u32],
}

/// One sampled token with its log-probability under the raw model distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    pub token: u32,
    /// log_softmax of the raw logits at `token`, before any penalty or filter.
    pub logprob: f32,
    /// The `params.logprobs` most likely tokens of the raw distribution, most likely first
    /// (ties: lower id first); empty when logprobs were not requested.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Samples the tokens of one sequence.
///
/// Owns the request's RNG and draws exactly one uniform number per non-greedy token,
/// so a seeded request yields the same tokens whatever else shares its batch (with the
/// same build: `StdRng`'s algorithm may change between rand versions). The scratch
/// buffers are kept between calls, so a step allocates at most its `top_logprobs` and,
/// with top-k, a k-entry heap.
#[derive(Debug)]
pub struct SequenceSampler {
    params: SamplingParams,
    rng: StdRng,
    /// The row being processed (a copy: the raw row is still needed for logprobs).
    work: Vec<f32>,
    /// (token id, value) candidates for top-k/top-p/min-p and for the top logprobs.
    candidates: Vec<(u32, f32)>,
    /// Vocab-sized per-token counters, all zero between calls.
    counts: Vec<u32>,
}

impl SequenceSampler {
    pub fn new(params: &SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            params: params.clone(),
            rng,
            work: Vec::new(),
            candidates: Vec::new(),
            counts: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from one row of logits (one entry per vocabulary id).
    ///
    /// A random token is chosen by inverting the CDF of the surviving tokens, taken in a
    /// fixed order (id order, or most likely first after top-p), at one uniform number
    /// in [0, 1): the first token whose cumulative probability exceeds it wins.
    ///
    /// If every token ends up masked the lowest id is returned; that cannot happen
    /// with finite logits, since only min_tokens masks to -inf.
    pub fn sample(&mut self, logits: &[f32], ctx: &SampleContext) -> SampledToken {
        assert!(!logits.is_empty(), "empty logits row");
        let p = &self.params;

        // Logprobs first: they describe the raw model distribution (vLLM v1 default).
        let log_z = logprobs::log_sum_exp(logits, &mut self.work);
        let top_logprobs = match p.logprobs {
            Some(n) if n > 0 => logprobs::top_logprobs(logits, log_z, n, &mut self.candidates),
            _ => Vec::new(),
        };

        self.work.clear();
        self.work.extend_from_slice(logits);
        let work = &mut self.work[..];
        penalties::apply_logit_bias(work, &p.logit_bias);
        if ctx.output_tokens.len() < p.min_tokens {
            penalties::mask_tokens(work, ctx.eos_token_ids);
            penalties::mask_tokens(work, &p.stop_token_ids);
        }
        if p.repetition_penalty != 1.0 {
            penalties::apply_repetition_penalty(
                work,
                ctx.prompt_tokens,
                ctx.output_tokens,
                p.repetition_penalty,
                &mut self.counts,
            );
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            penalties::apply_frequency_presence(
                work,
                ctx.output_tokens,
                p.frequency_penalty,
                p.presence_penalty,
                &mut self.counts,
            );
        }

        let token = if p.is_greedy() {
            draw::argmax(work)
        } else {
            // Drawn before filtering so that every non-greedy step consumes exactly one
            // number, even in the degenerate all-masked case below.
            let u: f64 = self.rng.random();
            let opts = Filters {
                temperature: p.temperature,
                top_k: p.top_k,
                top_p: p.top_p,
                min_p: p.min_p,
            };
            let kept = filters::keep_candidates(work, opts, &mut self.candidates);
            match kept {
                Kept::Row => draw::draw_row(work, u),
                Kept::Candidates => draw::draw(&self.candidates, u),
                Kept::Nothing => draw::argmax(work),
            }
        };

        SampledToken {
            token,
            logprob: logits[token as usize] - log_z,
            top_logprobs,
        }
    }
}

#[cfg(test)]
mod tests;
