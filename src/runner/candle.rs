//! Runs one step of a ragged batch through a candle model over the paged KV cache.

use anyhow::Result;
use candle_core::{DType, Tensor};

use crate::kv::KvCache;
use crate::layers::attention::{AttnMetadata, SeqAttn};
use crate::models::llama::LlamaModel;

/// One sequence's share of a step, as the scheduler hands it out.
#[derive(Debug, Clone, Copy)]
pub struct StepSeq<'a> {
    /// Tokens to compute now, at positions `num_computed ..`.
    pub new_tokens: &'a [u32],
    pub num_computed: usize,
    pub block_table: &'a [u32],
    /// Whether the step samples for this sequence (its last new token's logits are needed);
    /// false for a prompt chunk that is not the last one.
    pub wants_logits: bool,
}

pub struct CandleForward {
    model: LlamaModel,
    kv: KvCache,
}

impl CandleForward {
    pub fn new(model: LlamaModel, num_blocks: usize, block_size: usize, kv_dtype: DType) -> Result<Self> {
        let kv = model.new_kv_cache(num_blocks, block_size, kv_dtype)?;
        Ok(Self { model, kv })
    }

    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    pub fn kv_cache(&self) -> &KvCache {
        &self.kv
    }

    /// Computes one step; returns the logits of every sequence with `wants_logits`, in order.
    pub fn step(&self, seqs: &[StepSeq]) -> Result<Vec<Vec<f32>>> {
        let device = self.model.device();
        let mut ids = Vec::new();
        let mut metas = Vec::with_capacity(seqs.len());
        let mut rows = Vec::new();
        for s in seqs {
            let n = s.new_tokens.len();
            metas.push(SeqAttn {
                query_start: ids.len(),
                query_len: n,
                context_len: s.num_computed + n,
                block_table: s.block_table.to_vec(),
            });
            ids.extend_from_slice(s.new_tokens);
            if s.wants_logits {
                rows.push((ids.len() - 1) as u32);
            }
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let meta = AttnMetadata::new(metas, self.kv.block_size, device)?;
        let tokens = Tensor::new(ids, device)?;
        if rows.is_empty() {
            // Still run the layers so the prompt chunk's K/V land in the cache.
            let last = Tensor::new(&[meta.num_tokens as u32 - 1], device)?;
            self.model.forward(&tokens, &meta, &self.kv, &last)?;
            return Ok(Vec::new());
        }
        let n = rows.len();
        let rows = Tensor::from_vec(rows, n, device)?;
        Ok(self.model.forward(&tokens, &meta, &self.kv, &rows)?.to_vec2::<f32>()?)
    }
}
