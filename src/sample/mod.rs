//! Per-sequence token sampler: one CPU logits row in, one token (with logprobs) out.
//!
//! Processing order follows vLLM: logit bias, min_tokens masking, repetition penalty,
//! frequency/presence penalties, then either greedy argmax or temperature, top-k,
//! top-p, min-p and a single inverse-CDF draw. Logprobs are taken from the raw row.

mod draw;
mod filters;
mod logprobs;
mod penalties;
pub mod philox;
mod stop;

use rand::Rng;

use crate::request::SamplingParams;
use filters::{Filters, Kept};

pub use stop::stop_reason;

pub mod batched;

/// What the sampler needs to know about the sequence besides its logits row.
#[derive(Debug, Clone, Copy, Default)]
pub struct SampleContext<'a> {
    pub prompt_tokens: &'a [u32],
    /// Tokens generated so far, not counting the one being sampled now.
    pub output_tokens: &'a [u32],
    /// The model's end-of-sequence ids (several for Llama 3 instruct models).
    pub eos_token_ids: &'a [u32],
}

impl SampleContext<'_> {
    /// Index of the token being chosen in the whole sequence: the RNG's counter.
    pub fn position(&self) -> u64 {
        (self.prompt_tokens.len() + self.output_tokens.len()) as u64
    }
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
/// Random numbers come from Philox4x32-10 keyed by the request's seed and counted by the
/// token's position ([`philox::uniforms`]), so a seeded request yields the same tokens
/// whatever else shares its batch and whichever path (this sampler or the batched one of
/// [`batched`]) chooses them. The scratch
/// buffers are kept between calls, so a step allocates at most its `top_logprobs` and,
/// with top-k, a k-entry heap.
#[derive(Debug)]
pub struct SequenceSampler {
    params: SamplingParams,
    /// The request's seed, or one drawn from OS entropy for an unseeded request.
    seed: u64,
    /// The row being processed (a copy: the raw row is still needed for logprobs).
    work: Vec<f32>,
    /// (token id, value) candidates for top-k/top-p/min-p and for the top logprobs.
    candidates: Vec<(u32, f32)>,
    /// Vocab-sized per-token counters, all zero between calls.
    counts: Vec<u32>,
}

impl SequenceSampler {
    pub fn new(params: &SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| rand::rng().random());
        Self {
            params: params.clone(),
            seed,
            work: Vec::new(),
            candidates: Vec::new(),
            counts: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The key of this sequence's random numbers.
    pub fn seed(&self) -> u64 {
        self.seed
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
        let (log_z, top_logprobs) = self.process(logits, ctx);
        let token = if self.params.is_greedy() {
            draw::argmax(&self.work)
        } else {
            let [u, _] = philox::uniforms(self.seed, ctx.position());
            match self.filter() {
                Kept::Row => draw::draw_row(&self.work, u),
                Kept::Candidates => draw::draw(&self.candidates, u),
                Kept::Nothing => draw::argmax(&self.work),
            }
        };
        SampledToken {
            token,
            logprob: logits[token as usize] - log_z,
            top_logprobs,
        }
    }

    /// Speculative verification of `drafts` (Leviathan et al. 2023, Chen et al. 2023) against
    /// the target's logits rows: `rows[j]` is the row after the sequence's tokens and
    /// `drafts[..j]`, and there is one more row than drafts.
    ///
    /// Returns the accepted drafts followed by one token: the target's own choice where the
    /// first draft was rejected, or a bonus token from the last row when all were accepted.
    /// Each row is processed exactly as [`sample`](Self::sample) would process it with the
    /// accepted drafts as outputs (penalties, min_tokens, bias, filters), so:
    /// - greedy: a draft is accepted while it equals the argmax; the tokens are those that
    ///   plain greedy decoding would give;
    /// - random: drafts are point masses (n-gram lookups, a draft model's argmax), so draft
    ///   `d` is accepted with probability p(d) = min(1, p(d)/1), and on rejection the token
    ///   is drawn from normalize(max(p - onehot(d), 0)), i.e. p without d. The emitted tokens
    ///   are distributed exactly as without speculation; a seeded request stays reproducible
    ///   (for the same drafts).
    pub fn verify(
        &mut self,
        rows: &[&[f32]],
        drafts: &[u32],
        ctx: &SampleContext,
    ) -> Vec<SampledToken> {
        self.verify_with(rows, drafts, ctx, AcceptRule::Exact)
    }

    /// As [`verify`](Self::verify) with a chosen acceptance rule; `AlwaysAccept` is a
    /// deliberately wrong rule for tests that must be able to tell it apart.
    pub fn verify_with(
        &mut self,
        rows: &[&[f32]],
        drafts: &[u32],
        ctx: &SampleContext,
        rule: AcceptRule,
    ) -> Vec<SampledToken> {
        assert_eq!(rows.len(), drafts.len() + 1, "one row per draft plus one");
        let mut outputs = ctx.output_tokens.to_vec();
        let mut out = Vec::with_capacity(rows.len());
        for (j, &row) in rows.iter().enumerate() {
            let c = SampleContext {
                output_tokens: &outputs,
                ..*ctx
            };
            let (sampled, accepted) = self.verify_one(row, drafts.get(j).copied(), &c, rule);
            outputs.push(sampled.token);
            out.push(sampled);
            if !accepted {
                break;
            }
        }
        out
    }

    /// One position of [`verify_with`](Self::verify_with): `row` follows `ctx.output_tokens`
    /// (which include the drafts accepted before it). With a draft, returns the draft if it is
    /// accepted (true) or the token drawn in its place (false); without one (the row after the
    /// last draft), a plainly sampled token and false. Callers that check drafts one at a time
    /// (a grammar mask per position) stop at the first false.
    pub fn verify_one(
        &mut self,
        row: &[f32],
        draft: Option<u32>,
        ctx: &SampleContext,
        rule: AcceptRule,
    ) -> (SampledToken, bool) {
        let Some(draft) = draft else {
            return (self.sample(row, ctx), false);
        };
        let (log_z, top_logprobs) = self.process(row, ctx);
        let (token, accepted) = if self.params.is_greedy() {
            let t = draw::argmax(&self.work);
            (t, t == draft)
        } else {
            self.accept_or_resample(draft, rule, ctx.position())
        };
        let sampled = SampledToken {
            token,
            logprob: row[token as usize] - log_z,
            top_logprobs,
        };
        (sampled, accepted)
    }

    /// One random verification: accept `draft` with its probability under the filtered
    /// distribution, else draw from that distribution without it. Two uniform numbers at
    /// most, one when the draft is accepted.
    fn accept_or_resample(&mut self, draft: u32, rule: AcceptRule, position: u64) -> (u32, bool) {
        let [u, u_resample] = philox::uniforms(self.seed, position);
        let kept = self.filter();
        let (weight, total) = match kept {
            Kept::Nothing => return (draw::argmax(&self.work), false),
            Kept::Row => (
                self.work.get(draft as usize).copied().unwrap_or(0.0) as f64,
                self.work.iter().map(|&w| w as f64).sum::<f64>(),
            ),
            Kept::Candidates => (
                self.candidates
                    .iter()
                    .find(|c| c.0 == draft)
                    .map_or(0.0, |c| c.1 as f64),
                self.candidates.iter().map(|c| c.1 as f64).sum::<f64>(),
            ),
        };
        if rule == AcceptRule::AlwaysAccept || (total > 0.0 && u * total < weight) {
            return (draft, true);
        }
        let u = u_resample;
        let token = match kept {
            Kept::Row => {
                if let Some(w) = self.work.get_mut(draft as usize) {
                    *w = 0.0;
                }
                draw::draw_row(&self.work, u)
            }
            _ => {
                self.candidates.retain(|c| c.0 != draft);
                if self.candidates.is_empty() {
                    // Only the draft had weight, so it was accepted above (up to rounding).
                    return (draft, true);
                }
                draw::draw(&self.candidates, u)
            }
        };
        (token, false)
    }

    /// Logprobs of the raw row, then the request's logit processors into `self.work`.
    fn process(&mut self, logits: &[f32], ctx: &SampleContext) -> (f32, Vec<(u32, f32)>) {
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
        (log_z, top_logprobs)
    }

    /// Temperature, top-k, top-p and min-p over `self.work`.
    fn filter(&mut self) -> Kept {
        let p = &self.params;
        let opts = Filters {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
        };
        let kept = filters::keep_candidates(&mut self.work, opts, &mut self.candidates);
        if kept == Kept::Candidates {
            // Draws walk the survivors in id order, as the batched sampler does, so that both
            // turn one uniform number into the same token.
            self.candidates.sort_unstable_by_key(|c| c.0);
        }
        kept
    }
}

/// How [`SequenceSampler::verify_with`] decides on a draft token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptRule {
    /// Rejection sampling: lossless.
    Exact,
    /// Accept every draft: wrong on purpose, for tests that show their power.
    AlwaysAccept,
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod verify_tests;
