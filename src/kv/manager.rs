//! Per-sequence block tables over the [`BlockPool`]: prefix lookup, slot allocation, caching.
//!
//! Token `p` of a sequence lives in block `table[p / block_size]`. A sequence's table only
//! grows while it lives and is released whole by [`KvCacheManager::free`]; the first blocks may
//! be shared with other sequences through the prefix cache, but only *full, computed* blocks
//! are ever shared, so a sequence never writes into a block someone else reads.

use std::collections::HashMap;

use super::block_pool::{BlockHash, BlockId, BlockPool, PrefixCacheStats};

/// Identifies a sequence (one request's generation) to the scheduler and KV manager.
pub type SeqId = u64;

/// Longest cached prefix of a token sequence, as found by [`KvCacheManager::get_computed_blocks`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComputedBlocks {
    pub blocks: Vec<BlockId>,
    /// Hash chain of `blocks`, kept so the sequence need not rehash them.
    pub hashes: Vec<BlockHash>,
    /// `blocks.len() * block_size`.
    pub num_tokens: usize,
}

/// Block tables of the live sequences and the pool they draw from.
#[derive(Debug, Clone)]
pub struct KvCacheManager {
    pool: BlockPool,
    block_size: usize,
    enable_caching: bool,
    tables: HashMap<SeqId, Vec<BlockId>>,
    /// Hash chain of each sequence's first full, computed blocks (those offered to the cache).
    hashes: HashMap<SeqId, Vec<BlockHash>>,
}

impl KvCacheManager {
    pub const DEFAULT_BLOCK_SIZE: usize = 16;

    pub fn new(num_blocks: usize, block_size: usize, enable_caching: bool) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        Self {
            pool: BlockPool::new(num_blocks),
            block_size,
            enable_caching,
            tables: HashMap::new(),
            hashes: HashMap::new(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free_blocks()
    }

    pub fn usage(&self) -> f64 {
        self.pool.usage()
    }

    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.pool.stats()
    }

    pub fn record_prefix_lookup(&mut self, queried_tokens: usize, hit_tokens: usize) {
        self.pool.record_prefix_lookup(queried_tokens, hit_tokens);
    }

    /// Sequences holding a block table.
    pub fn num_seqs(&self) -> usize {
        self.tables.len()
    }

    /// The sequence's blocks; empty if it holds none.
    pub fn block_table(&self, seq: SeqId) -> &[BlockId] {
        self.tables.get(&seq).map_or(&[], Vec::as_slice)
    }

    /// Longest run of full blocks at the start of `tokens` already in the cache. Takes nothing.
    ///
    /// Never covers all of `tokens`: the last token must be computed for the model to yield the
    /// logits of the next one, so a fully cached prompt still recomputes its last block.
    pub fn get_computed_blocks(&self, tokens: &[u32], salt: u64) -> ComputedBlocks {
        let mut hit = ComputedBlocks::default();
        if !self.enable_caching || tokens.is_empty() {
            return hit;
        }
        let max_blocks = (tokens.len() - 1) / self.block_size;
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let hash = BlockHash::new(hit.hashes.last().copied(), chunk, salt);
            match self.pool.lookup(hash, chunk) {
                Some(id) => {
                    hit.blocks.push(id);
                    hit.hashes.push(hash);
                }
                None => break,
            }
        }
        hit.num_tokens = hit.blocks.len() * self.block_size;
        hit
    }

    /// Makes the sequence's table cover `num_computed_tokens + num_new_tokens +
    /// num_lookahead_tokens` tokens (lookahead: speculative tokens to be verified).
    ///
    /// `computed` is the prefix hit of a sequence that holds no blocks yet; its blocks are taken
    /// (touched) before new ones are allocated, so allocating cannot evict them. Returns the
    /// table, or `None` with nothing changed when the pool cannot supply enough blocks.
    pub fn allocate_slots(
        &mut self,
        seq: SeqId,
        num_computed_tokens: usize,
        num_new_tokens: usize,
        num_lookahead_tokens: usize,
        computed: Option<&ComputedBlocks>,
    ) -> Option<&[BlockId]> {
        let hit = computed.map_or(&[][..], |c| c.blocks.as_slice());
        let held = self.block_table(seq).len();
        debug_assert!(
            hit.is_empty() || held == 0,
            "prefix hit for seq {seq} that holds blocks"
        );
        debug_assert!(
            computed.is_none_or(|c| c.num_tokens == num_computed_tokens),
            "num_computed_tokens disagrees with the prefix hit"
        );
        let needed_tokens = num_computed_tokens + num_new_tokens + num_lookahead_tokens;
        let needed_blocks = needed_tokens.div_ceil(self.block_size);
        let num_new_blocks = needed_blocks.saturating_sub(held + hit.len());
        // Hit blocks sitting in the free queue stop being free once touched.
        let num_free_hits = hit.iter().filter(|&&b| self.pool.ref_count(b) == 0).count();
        if num_new_blocks + num_free_hits > self.pool.num_free_blocks() {
            return None;
        }
        self.pool.touch(hit);
        let new_blocks = self.pool.allocate(num_new_blocks).expect("counted above");
        if let Some(c) = computed.filter(|c| !c.hashes.is_empty()) {
            self.hashes.insert(seq, c.hashes.clone());
        }
        let table = self.tables.entry(seq).or_default();
        table.extend_from_slice(hit);
        table.extend(new_blocks);
        Some(table)
    }

    /// Offers the full blocks of `computed_tokens` (a prefix whose KV is now computed) to the
    /// prefix cache. Idempotent; blocks already offered are skipped.
    pub fn cache_full_blocks(&mut self, seq: SeqId, computed_tokens: &[u32], salt: u64) {
        if !self.enable_caching {
            return;
        }
        let Some(table) = self.tables.get(&seq) else {
            debug_assert!(false, "caching blocks of seq {seq} that holds none");
            return;
        };
        let hashes = self.hashes.entry(seq).or_default();
        let num_full = computed_tokens.len() / self.block_size;
        debug_assert!(
            num_full <= table.len(),
            "seq {seq} computed past its blocks"
        );
        for i in hashes.len()..num_full.min(table.len()) {
            let chunk = &computed_tokens[i * self.block_size..(i + 1) * self.block_size];
            let hash = BlockHash::new(hashes.last().copied(), chunk, salt);
            hashes.push(hash);
            self.pool.cache_block(table[i], hash, chunk);
        }
    }

    /// Releases every block of the sequence. Tail blocks are freed first so that, of a freed
    /// prefix, the end is evicted before the start (the start is the part others share).
    pub fn free(&mut self, seq: SeqId) {
        self.hashes.remove(&seq);
        if let Some(table) = self.tables.remove(&seq) {
            self.pool.free(table.into_iter().rev());
        }
    }

    /// Forgets the cached contents of free blocks.
    pub fn reset_prefix_cache(&mut self) {
        self.pool.evict_free_blocks();
    }

    /// Pool invariants plus: every block's ref count equals the number of tables holding it.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.pool.check_invariants()?;
        let mut refs = vec![0u32; self.pool.num_blocks()];
        for table in self.tables.values() {
            for &b in table {
                refs[b as usize] += 1;
            }
        }
        for (b, &r) in refs.iter().enumerate() {
            let rc = self.pool.ref_count(b as BlockId);
            if rc != r {
                return Err(format!("block {b}: ref count {rc} but held by {r} tables"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_hit_leaves_last_token_to_compute() {
        let mut m = KvCacheManager::new(8, 4, true);
        let tokens: Vec<u32> = (0..8).collect();
        assert!(m
            .allocate_slots(1, 0, 8, 0, Some(&ComputedBlocks::default()))
            .is_some());
        m.cache_full_blocks(1, &tokens, 0);
        // Exactly two full blocks: the second is not reused, its last token must be computed.
        let hit = m.get_computed_blocks(&tokens, 0);
        assert_eq!(hit.num_tokens, 4);
        // One more token: both blocks hit.
        let longer: Vec<u32> = (0..9).collect();
        assert_eq!(m.get_computed_blocks(&longer, 0).num_tokens, 8);
        assert_eq!(
            m.get_computed_blocks(&longer, 1).num_tokens,
            0,
            "other salt"
        );
    }

    #[test]
    fn shared_prefix_blocks_are_ref_counted() {
        let mut m = KvCacheManager::new(6, 4, true);
        let a: Vec<u32> = (0..10).collect();
        m.allocate_slots(1, 0, 10, 0, None).unwrap();
        m.cache_full_blocks(1, &a, 0);
        let hit = m.get_computed_blocks(&a, 0);
        assert_eq!(hit.blocks, m.block_table(1)[..2]);
        let t = m
            .allocate_slots(2, hit.num_tokens, 2, 0, Some(&hit))
            .unwrap()
            .to_vec();
        assert_eq!(t[..2], m.block_table(1)[..2]);
        assert_eq!(t.len(), 3);
        assert_eq!(m.pool().ref_count(t[0]), 2);
        m.check_invariants().unwrap();
        m.free(1);
        m.free(2);
        assert_eq!(m.num_free_blocks(), 6);
        m.check_invariants().unwrap();
    }

    #[test]
    fn allocation_counts_free_hit_blocks() {
        let mut m = KvCacheManager::new(3, 4, true);
        let a: Vec<u32> = (0..9).collect();
        m.allocate_slots(1, 0, 9, 0, None).unwrap();
        m.cache_full_blocks(1, &a, 0);
        m.free(1);
        let hit = m.get_computed_blocks(&a, 0);
        assert_eq!(hit.blocks.len(), 2);
        // 2 hit blocks (free) + 2 new ones > 3 free blocks.
        assert!(m.allocate_slots(2, 8, 5, 0, Some(&hit)).is_none());
        assert_eq!(m.num_free_blocks(), 3);
        assert!(m.allocate_slots(2, 8, 1, 0, Some(&hit)).is_some());
        assert_eq!(m.num_free_blocks(), 0);
    }

    #[test]
    fn lookahead_reserves_blocks() {
        let mut m = KvCacheManager::new(4, 4, false);
        assert_eq!(m.allocate_slots(1, 0, 4, 4, None).unwrap().len(), 2);
        assert_eq!(m.allocate_slots(1, 4, 1, 4, None).unwrap().len(), 3);
    }
}
