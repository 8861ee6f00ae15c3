//! Pool of fixed-size KV blocks: free queue, ref counts and the automatic prefix cache.
//!
//! A block is *in use* while its ref count is positive (several sequences may share a cached
//! prefix block) and *free* when it is zero. A free block may still be *cached*: it keeps its
//! hash and its KV until it is handed out again, so a later request with the same prefix can
//! take it back ("touch") instead of recomputing it. Eviction is least-recently-freed first.
//!
//! Invariants (checked by [`BlockPool::check_invariants`], in debug builds after every
//! mutation, and by the property tests in `tests/kv_props.rs`):
//! 1. a block is in the free queue exactly when its ref count is zero;
//! 2. `by_hash[h] == b` exactly when block `b` is cached with hash `h`.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use super::free_queue::FreeQueue;

/// Index of a block in the KV cache tensors (`slot = block * block_size + offset`).
pub type BlockId = u32;

/// Hash of a full block *and everything before it* (hash chain), so equal hashes mean equal
/// prefixes, not merely equal blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash(pub u64);

impl BlockHash {
    /// `hash(parent, salt, tokens)`. The salt stands for anything besides the tokens that
    /// changes the KV (model, LoRA adapter, a tenant that must not share cache).
    pub fn new(parent: Option<BlockHash>, tokens: &[u32], salt: u64) -> Self {
        // SipHash with fixed keys: deterministic within a build, which is all we need since
        // hashes never leave the process.
        let mut h = DefaultHasher::new();
        parent.map(|p| p.0).hash(&mut h);
        salt.hash(&mut h);
        tokens.hash(&mut h);
        BlockHash(h.finish())
    }
}

/// Prefix cache counters, in tokens (as vLLM reports them).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PrefixCacheStats {
    /// Tokens looked up in the cache.
    pub queries: u64,
    /// Of those, tokens found.
    pub hits: u64,
}

impl PrefixCacheStats {
    pub fn hit_rate(&self) -> f64 {
        if self.queries == 0 {
            0.0
        } else {
            self.hits as f64 / self.queries as f64
        }
    }
}

/// What a cached block holds; the tokens are kept so that a 64-bit hash collision turns into a
/// cache miss rather than into another request's KV.
#[derive(Debug, Clone)]
struct CachedBlock {
    hash: BlockHash,
    tokens: Box<[u32]>,
}

/// Fixed set of blocks with ref counts, an LRU free queue and a hash -> block map.
#[derive(Debug, Clone)]
pub struct BlockPool {
    ref_cnt: Vec<u32>,
    cached: Vec<Option<CachedBlock>>,
    free: FreeQueue,
    by_hash: HashMap<BlockHash, BlockId>,
    stats: PrefixCacheStats,
}

impl BlockPool {
    pub fn new(num_blocks: usize) -> Self {
        Self {
            ref_cnt: vec![0; num_blocks],
            cached: vec![None; num_blocks],
            free: FreeQueue::new_full(num_blocks),
            by_hash: HashMap::new(),
            stats: PrefixCacheStats::default(),
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_cnt.len()
    }

    /// Blocks with ref count zero, cached or not: all can be handed out.
    pub fn num_free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Fraction of blocks in use (ref count > 0), in `[0, 1]`.
    pub fn usage(&self) -> f64 {
        match self.num_blocks() {
            0 => 0.0,
            n => 1.0 - self.num_free_blocks() as f64 / n as f64,
        }
    }

    pub fn ref_count(&self, id: BlockId) -> u32 {
        self.ref_cnt[id as usize]
    }

    pub fn block_hash(&self, id: BlockId) -> Option<BlockHash> {
        self.cached[id as usize].as_ref().map(|c| c.hash)
    }

    /// Blocks currently in the prefix cache (in use or free).
    pub fn num_cached_blocks(&self) -> usize {
        self.by_hash.len()
    }

    pub fn stats(&self) -> PrefixCacheStats {
        self.stats
    }

    pub fn record_prefix_lookup(&mut self, queried_tokens: usize, hit_tokens: usize) {
        debug_assert!(hit_tokens <= queried_tokens);
        self.stats.queries += queried_tokens as u64;
        self.stats.hits += hit_tokens as u64;
    }

    /// The cached block with this hash and these tokens, if any. Does not take it.
    pub fn lookup(&self, hash: BlockHash, tokens: &[u32]) -> Option<BlockId> {
        let id = *self.by_hash.get(&hash)?;
        let c = self.cached[id as usize]
            .as_ref()
            .expect("by_hash points at a cached block");
        (*c.tokens == *tokens).then_some(id)
    }

    /// Hands out `n` blocks with ref count 1, evicting cached free blocks as needed, or `None`
    /// (and nothing changes) when fewer than `n` are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free_blocks() {
            return None;
        }
        let ids: Vec<BlockId> = (0..n)
            .map(|_| {
                let id = self.free.pop_front().expect("counted above");
                self.evict(id);
                debug_assert_eq!(self.ref_cnt[id as usize], 0);
                self.ref_cnt[id as usize] = 1;
                id
            })
            .collect();
        self.debug_check();
        Some(ids)
    }

    /// Takes a reference on blocks found by a prefix-cache hit; a free one leaves the free queue
    /// (and so can no longer be evicted).
    pub fn touch(&mut self, ids: &[BlockId]) {
        for &id in ids {
            if self.ref_cnt[id as usize] == 0 {
                self.free.remove(id);
            }
            self.ref_cnt[id as usize] += 1;
        }
        self.debug_check();
    }

    /// Drops one reference on each block; the ones reaching zero become free in the given order.
    ///
    /// Cached blocks go to the back of the free queue (least recently freed is evicted first);
    /// uncached ones go to the front, since reusing them loses nothing.
    /// Panics on a block whose ref count is already zero (a double free).
    pub fn free(&mut self, ids: impl IntoIterator<Item = BlockId>) {
        for id in ids {
            let rc = &mut self.ref_cnt[id as usize];
            assert!(*rc > 0, "double free of block {id}");
            *rc -= 1;
            if *rc == 0 {
                if self.cached[id as usize].is_some() {
                    self.free.push_back(id);
                } else {
                    self.free.push_front(id);
                }
            }
        }
        self.debug_check();
    }

    /// Enters a full, computed, in-use block into the prefix cache under `hash`.
    ///
    /// Returns false and leaves the block uncached when another block already holds this hash
    /// (two requests computed the same prefix at the same time): one copy is enough.
    pub fn cache_block(&mut self, id: BlockId, hash: BlockHash, tokens: &[u32]) -> bool {
        debug_assert!(self.ref_cnt[id as usize] > 0, "caching free block {id}");
        if let Some(c) = &self.cached[id as usize] {
            debug_assert_eq!(c.hash, hash, "block {id} re-cached under another hash");
            return c.hash == hash;
        }
        if self.by_hash.contains_key(&hash) {
            return false;
        }
        self.by_hash.insert(hash, id);
        self.cached[id as usize] = Some(CachedBlock {
            hash,
            tokens: tokens.into(),
        });
        self.debug_check();
        true
    }

    /// Forgets every cached free block (e.g. after loading other weights). Blocks in use keep
    /// their hashes: their owners still rely on them.
    pub fn evict_free_blocks(&mut self) {
        let free: Vec<BlockId> = self.free.iter().collect();
        for id in free {
            if self.evict(id) {
                // Now uncached: move it to the front with the other uncached free blocks.
                self.free.remove(id);
                self.free.push_front(id);
            }
        }
        self.debug_check();
    }

    /// Drops `id` from the prefix cache; true if it was cached.
    fn evict(&mut self, id: BlockId) -> bool {
        match self.cached[id as usize].take() {
            Some(c) => {
                let removed = self.by_hash.remove(&c.hash);
                debug_assert_eq!(removed, Some(id));
                true
            }
            None => false,
        }
    }

    fn debug_check(&self) {
        // O(num_blocks): only in debug builds, and only for pools small enough for tests.
        if cfg!(debug_assertions) && self.num_blocks() <= 4096 {
            if let Err(e) = self.check_invariants() {
                panic!("block pool invariant broken: {e}");
            }
        }
    }

    /// Checks the invariants in the module doc; `Err` names the first one broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut in_queue = vec![false; self.num_blocks()];
        for id in self.free.iter() {
            if std::mem::replace(&mut in_queue[id as usize], true) {
                return Err(format!("block {id} twice in the free queue"));
            }
        }
        for (id, &rc) in self.ref_cnt.iter().enumerate() {
            if (rc == 0) != in_queue[id] || in_queue[id] != self.free.contains(id as BlockId) {
                return Err(format!(
                    "block {id}: ref count {rc}, queued {}",
                    in_queue[id]
                ));
            }
            if let Some(c) = &self.cached[id] {
                if self.by_hash.get(&c.hash) != Some(&(id as BlockId)) {
                    return Err(format!("cached block {id} missing from the hash map"));
                }
            }
        }
        if self.free.len() != in_queue.iter().filter(|&&q| q).count() {
            return Err("free queue length out of sync".into());
        }
        for (h, &id) in &self.by_hash {
            if self.block_hash(id) != Some(*h) {
                return Err(format!(
                    "hash map entry {h:?} -> {id} but the block says otherwise"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(tokens: &[u32]) -> BlockHash {
        BlockHash::new(None, tokens, 0)
    }

    #[test]
    fn allocate_and_free_round_trip() {
        let mut p = BlockPool::new(4);
        let a = p.allocate(3).unwrap();
        assert_eq!(a, vec![0, 1, 2]);
        assert_eq!(p.num_free_blocks(), 1);
        assert!(p.allocate(2).is_none());
        assert_eq!(p.num_free_blocks(), 1, "a failed allocation takes nothing");
        p.free(a);
        assert_eq!(p.num_free_blocks(), 4);
        assert_eq!(p.usage(), 0.0);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_panics() {
        let mut p = BlockPool::new(2);
        let a = p.allocate(1).unwrap();
        p.free(a.clone());
        p.free(a);
    }

    #[test]
    fn cached_free_block_can_be_touched_back() {
        let mut p = BlockPool::new(3);
        let b = p.allocate(1).unwrap()[0];
        assert!(p.cache_block(b, h(&[1, 2]), &[1, 2]));
        p.free([b]);
        assert_eq!(p.lookup(h(&[1, 2]), &[1, 2]), Some(b));
        assert_eq!(p.lookup(h(&[1, 2]), &[1, 3]), None, "tokens are verified");
        p.touch(&[b]);
        assert_eq!(p.ref_count(b), 1);
        assert_eq!(p.num_free_blocks(), 2);
        // Touching an in-use block shares it.
        p.touch(&[b]);
        assert_eq!(p.ref_count(b), 2);
        p.free([b, b]);
        assert_eq!(p.num_free_blocks(), 3);
    }

    #[test]
    fn uncached_blocks_are_reused_before_cached_ones_and_lru_among_cached() {
        let mut p = BlockPool::new(4);
        let ids = p.allocate(4).unwrap();
        for (i, &id) in ids.iter().take(3).enumerate() {
            assert!(p.cache_block(id, h(&[i as u32]), &[i as u32]));
        }
        // Free cached 2, then 0, then 1, then the uncached 3.
        p.free([ids[2], ids[0], ids[1], ids[3]]);
        assert_eq!(p.allocate(1).unwrap(), vec![ids[3]]);
        assert_eq!(p.allocate(1).unwrap(), vec![ids[2]]);
        assert_eq!(p.lookup(h(&[2]), &[2]), None, "evicted on reuse");
        assert_eq!(p.lookup(h(&[0]), &[0]), Some(ids[0]));
        assert_eq!(p.num_cached_blocks(), 2);
    }

    #[test]
    fn duplicate_hash_stays_uncached() {
        let mut p = BlockPool::new(2);
        let ids = p.allocate(2).unwrap();
        assert!(p.cache_block(ids[0], h(&[7]), &[7]));
        assert!(!p.cache_block(ids[1], h(&[7]), &[7]));
        assert_eq!(p.block_hash(ids[1]), None);
    }

    #[test]
    fn hash_chain_depends_on_parent_and_salt() {
        let a = BlockHash::new(None, &[1, 2], 0);
        assert_ne!(
            BlockHash::new(Some(a), &[3], 0),
            BlockHash::new(None, &[3], 0)
        );
        assert_ne!(BlockHash::new(None, &[1, 2], 1), a);
        assert_eq!(BlockHash::new(None, &[1, 2], 0), a);
    }

    #[test]
    fn evict_free_blocks_keeps_in_use_ones() {
        let mut p = BlockPool::new(2);
        let ids = p.allocate(2).unwrap();
        p.cache_block(ids[0], h(&[0]), &[0]);
        p.cache_block(ids[1], h(&[1]), &[1]);
        p.free([ids[0]]);
        p.evict_free_blocks();
        assert_eq!(p.num_cached_blocks(), 1);
        assert_eq!(p.block_hash(ids[1]), Some(h(&[1])));
    }
}
