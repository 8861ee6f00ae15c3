//! KV cache storage: per-layer K/V tensors addressed by slot (block * block_size + offset).

pub mod cache;

pub use cache::KvCache;
