//! The batched sampler: every sampling row of a step in two device ops
//! ([`crate::ops::sampling::adjust_logits`], [`crate::ops::sampling::sample_rows`]), so that
//! only token ids leave the device.
//!
//! It processes a row as [`super::SequenceSampler`] does (logit bias, min_tokens masks,
//! repetition then frequency/presence penalties, temperature, top-k, top-p, min-p, one
//! inverse-CDF draw in id order) with the same Philox number for (seed, position), so a
//! seeded request gets the same token from either path except when rounding puts the
//! number on a CDF boundary. Logprobs and the verification of random drafts stay with
//! `SequenceSampler`.

use std::collections::HashMap;

use candle_core::{Device, Result, Tensor};

use super::SampleContext;
use crate::ops::sampling::{self, RowParams, ADJUST_ENTRY, ROW_PARAMS};
use crate::request::SamplingParams;

/// One sequence's adjustment of one token, merged over every processor that touches it.
#[derive(Debug, Clone, Copy)]
struct Adjustment {
    bias: f32,
    masked: bool,
    seen: bool,
    generated: u32,
}

/// The rows of one step, built on the host as two small u32 tables.
#[derive(Debug, Default)]
pub struct BatchedSampler {
    params: Vec<u32>,
    entries: Vec<u32>,
    /// Scratch: per-token adjustments of the row being added.
    adjust: HashMap<u32, Adjustment>,
}

impl BatchedSampler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn num_rows(&self) -> usize {
        self.params.len() / ROW_PARAMS
    }

    /// Whether the batched path can produce this sequence's tokens: no logprobs, and drafts
    /// only for greedy sequences whose logits nothing but a grammar changes (each draft row
    /// would otherwise need the outputs extended by the drafts before it).
    pub fn handles(params: &SamplingParams, num_drafts: usize, generated: usize) -> bool {
        params.logprobs.is_none() && (num_drafts == 0 || plain_greedy(params, generated))
    }

    /// Adds one logits row of a sequence keyed by `seed`, to be sampled as
    /// `SequenceSampler::sample` would at `ctx`.
    pub fn push_row(&mut self, params: &SamplingParams, seed: u64, ctx: &SampleContext) {
        let row = self.num_rows() as u32;
        let greedy = params.is_greedy();
        self.params.extend(
            RowParams {
                temperature: if greedy { 0.0 } else { params.temperature },
                top_k: params.top_k.min(u32::MAX as usize) as u32,
                top_p: params.top_p,
                min_p: params.min_p,
                seed,
                position: ctx.position(),
            }
            .to_words(),
        );
        self.adjust.clear();
        let blank = Adjustment {
            bias: 0.0,
            masked: false,
            seen: false,
            generated: 0,
        };
        for (&t, &b) in &params.logit_bias {
            self.adjust.entry(t).or_insert(blank).bias += b;
        }
        if ctx.output_tokens.len() < params.min_tokens {
            for &t in ctx.eos_token_ids.iter().chain(&params.stop_token_ids) {
                self.adjust.entry(t).or_insert(blank).masked = true;
            }
        }
        if params.repetition_penalty != 1.0 {
            for &t in ctx.prompt_tokens.iter().chain(ctx.output_tokens) {
                self.adjust.entry(t).or_insert(blank).seen = true;
            }
        }
        let (freq, pres) = (params.frequency_penalty, params.presence_penalty);
        if freq != 0.0 || pres != 0.0 {
            for &t in ctx.output_tokens {
                self.adjust.entry(t).or_insert(blank).generated += 1;
            }
        }
        for (&t, a) in &self.adjust {
            let rep = if a.seen {
                params.repetition_penalty
            } else {
                1.0
            };
            // The same f32 expression as penalties::apply_frequency_presence.
            let sub = if a.generated > 0 {
                freq * a.generated as f32 + pres
            } else {
                0.0
            };
            self.entries.extend([
                row,
                t,
                u32::from(a.masked),
                a.bias.to_bits(),
                rep.to_bits(),
                sub.to_bits(),
            ]);
        }
    }

    /// One token per row pushed, in order; the tables are cleared for the next step.
    /// `logits: [rows, vocab]` f32 on any device; only the ids come back to the host.
    pub fn sample(&mut self, logits: &Tensor) -> Result<Vec<u32>> {
        let device = logits.device();
        let rows = self.num_rows();
        let params = upload(std::mem::take(&mut self.params), (rows, ROW_PARAMS), device)?;
        let n = self.entries.len() / ADJUST_ENTRY;
        let logits = if n > 0 {
            let entries = upload(std::mem::take(&mut self.entries), (n, ADJUST_ENTRY), device)?;
            sampling::adjust_logits(logits, &entries)?
        } else {
            logits.clone()
        };
        sampling::sample_rows(&logits, &params)?.to_vec1::<u32>()
    }
}

fn upload(words: Vec<u32>, shape: (usize, usize), device: &Device) -> Result<Tensor> {
    Tensor::from_vec(words, shape, device)
}

/// Greedy with nothing but a grammar mask changing the logits first and no logprobs wanted: the
/// token is the argmax of the (masked) row.
pub fn plain_greedy(p: &SamplingParams, generated: usize) -> bool {
    p.is_greedy()
        && p.logprobs.is_none()
        && p.logit_bias.is_empty()
        && p.repetition_penalty == 1.0
        && p.frequency_penalty == 0.0
        && p.presence_penalty == 0.0
        && generated >= p.min_tokens
}

#[cfg(test)]
mod tests;
