//! Perplexity as llama.cpp's `llama-perplexity` computes it, so the numbers compare: the text
//! is cut into chunks of `ctx` tokens (the first token of each replaced by BOS when the
//! tokenizer adds one), each chunk is one fresh sequence, and only the tokens of its second
//! half are scored (each with at least `ctx/2` tokens of context). PPL = exp(mean NLL), with
//! the standard error of the mean NLL carried through the exponential.

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};

use crate::layers::attention::{AttnMetadata, SeqAttn};
use crate::models::CausalLm;

/// Running sums of the scored tokens' negative log-likelihoods.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NllStats {
    pub count: usize,
    pub sum: f64,
    pub sum_sq: f64,
}

impl NllStats {
    pub fn push(&mut self, nll: f64) {
        self.count += 1;
        self.sum += nll;
        self.sum_sq += nll * nll;
    }

    pub fn ppl(&self) -> f64 {
        (self.sum / self.count.max(1) as f64).exp()
    }

    /// llama.cpp's estimate: `ppl * sqrt(var(nll) / (n - 1))`.
    pub fn ppl_stderr(&self) -> f64 {
        let n = self.count as f64;
        if self.count < 2 {
            return f64::NAN;
        }
        let mean = self.sum / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        (var / (n - 1.0)).sqrt() * self.ppl()
    }
}

/// `-log softmax(logits)[target]`, in f64.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let lse = logits
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    lse - logits[target as usize] as f64
}

pub struct PerplexityArgs {
    pub ctx: usize,
    /// At most this many chunks (None: all whole chunks of the text).
    pub max_chunks: Option<usize>,
    /// Replace each chunk's first token by this (the tokenizer's BOS when it adds one).
    pub bos: Option<u32>,
    pub block_size: usize,
    /// What the KV cache stores (`--kv-cache-dtype`).
    pub kv_cache_dtype: crate::kv::KvCacheDtype,
}

/// Scores `tokens`; `on_chunk(i, stats so far)` after every chunk.
pub fn perplexity(
    model: &dyn CausalLm,
    tokens: &[u32],
    args: &PerplexityArgs,
    mut on_chunk: impl FnMut(usize, &NllStats),
) -> Result<NllStats> {
    let n = args.ctx;
    ensure!(n >= 4, "context {n} is too short for perplexity");
    let chunks = (tokens.len() / n).min(args.max_chunks.unwrap_or(usize::MAX));
    ensure!(
        chunks > 0,
        "the text has {} tokens, fewer than one chunk of {n}",
        tokens.len()
    );
    let device = model.device().clone();
    let blocks = n.div_ceil(args.block_size);
    let kv = model.new_kv_cache(
        blocks,
        args.block_size,
        args.kv_cache_dtype.cache_dtype(model.dtype()),
    )?;
    let first = n / 2;
    let meta = AttnMetadata::new(
        vec![SeqAttn {
            query_start: 0,
            query_len: n,
            context_len: n,
            block_table: (0..blocks as u32).collect(),
            prompt_len: n,
        }],
        args.block_size,
        &device,
    )?;
    let rows = Tensor::arange(first as u32, (n - 1) as u32, &device)?;
    let mut stats = NllStats::default();
    for c in 0..chunks {
        let mut chunk = tokens[c * n..(c + 1) * n].to_vec();
        if let Some(bos) = args.bos {
            chunk[0] = bos;
        }
        let ids = Tensor::new(chunk.as_slice(), &device)?;
        let logits = model
            .forward(&ids, &meta, &kv, &rows)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        for (j, row) in (first..n - 1).zip(&logits) {
            stats.push(nll(row, chunk[j + 1]));
        }
        on_chunk(c, &stats);
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_and_stderr() {
        // Uniform logits over 4: NLL ln 4, PPL 4, no spread.
        let v = nll(&[1.0, 1.0, 1.0, 1.0], 2);
        assert!((v - 4f64.ln()).abs() < 1e-12);
        let mut s = NllStats::default();
        s.push(v);
        s.push(v);
        assert!((s.ppl() - 4.0).abs() < 1e-9);
        assert!(s.ppl_stderr().abs() < 1e-6);
        let mut t = NllStats::default();
        t.push(1.0);
        t.push(3.0);
        // mean 2, population var 1, stderr of the mean sqrt(1 / 1) = 1.
        assert!((t.ppl_stderr() - 2f64.exp()).abs() < 1e-9);
    }
}
