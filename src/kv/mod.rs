//! Paged KV cache: block accounting (pool, prefix cache, per-sequence tables) and the per-layer
//! K/V tensors addressed by slot (block * block_size + offset).

pub mod block_pool;
pub mod cache;
mod free_queue;
pub mod manager;

pub use block_pool::{BlockHash, BlockId, BlockPool, PrefixCacheStats};
pub use cache::{group_blocks, Fp8Scales, KvCache, KvCacheDtype, KvCacheInfo, KvLayout};
pub use manager::{ComputedBlocks, KvCacheManager, SeqId};
