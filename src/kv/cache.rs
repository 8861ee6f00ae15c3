//! Per-layer K/V tensors of the paged cache; which block belongs to whom is the block
//! manager's business, not this module's.

use candle_core::{DType, Device, Result, Tensor};

/// Layout per layer: `[num_blocks * block_size, num_kv_heads, head_dim]`, so a token's slot
/// index is its row and a block is `block_size` consecutive rows.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    pub num_blocks: usize,
    pub block_size: usize,
}

impl KvCache {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        num_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let row = (num_kv_heads, head_dim);
        Self::with_rows(num_layers, num_blocks, block_size, row, row, dtype, device)
    }

    /// K rows of `k_row = (heads, dim)` and V rows of `v_row` per slot; MLA keeps its latent
    /// as "K" and its rotary key as "V", `(1, kv_lora_rank)` and `(1, qk_rope_head_dim)`.
    #[allow(clippy::too_many_arguments)]
    pub fn with_rows(
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        k_row: (usize, usize),
        v_row: (usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let slots = num_blocks * block_size;
        let layers = (0..num_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros((slots, k_row.0, k_row.1), dtype, device)?,
                    Tensor::zeros((slots, v_row.0, v_row.1), dtype, device)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            num_blocks,
            block_size,
        })
    }

    pub fn layer(&self, i: usize) -> (&Tensor, &Tensor) {
        let (k, v) = &self.layers[i];
        (k, v)
    }

    pub fn num_slots(&self) -> usize {
        self.num_blocks * self.block_size
    }
}
