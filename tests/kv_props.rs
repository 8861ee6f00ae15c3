//! Property tests of the block pool and KV cache manager against shadow models: no leak, no
//! double free, ref counts exact, prefix hits only on identical token prefixes.

use std::collections::HashMap;

use flare::kv::{BlockHash, BlockId, BlockPool, ComputedBlocks, KvCacheManager};
use proptest::prelude::*;

const NUM_BLOCKS: usize = 12;

#[derive(Debug, Clone)]
enum PoolOp {
    Allocate(usize),
    /// Drop the i-th held reference (modulo the number held).
    Free(usize),
    /// Cache the i-th held block under content `c` (modulo).
    Cache(usize, u32),
    /// Look content `c` up and take a reference on a hit.
    TouchHit(u32),
    EvictFree,
}

fn pool_op() -> impl Strategy<Value = PoolOp> {
    prop_oneof![
        (0..5usize).prop_map(PoolOp::Allocate),
        any::<usize>().prop_map(PoolOp::Free),
        (any::<usize>(), 0..6u32).prop_map(|(i, c)| PoolOp::Cache(i, c)),
        (0..6u32).prop_map(PoolOp::TouchHit),
        Just(PoolOp::EvictFree),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Ref counts match the references handed out, free blocks are exactly those with none,
    /// and a lookup only ever finds a block cached with that very content.
    #[test]
    fn block_pool_matches_shadow(ops in proptest::collection::vec(pool_op(), 1..120)) {
        let mut pool = BlockPool::new(NUM_BLOCKS);
        // Every reference handed out, one entry per reference.
        let mut held: Vec<BlockId> = Vec::new();
        // What each cached block holds (shadow of the pool's hash map).
        let mut content: HashMap<BlockId, u32> = HashMap::new();
        let key = |c: u32| (BlockHash::new(None, &[c], 0), [c]);
        for op in ops {
            match op {
                PoolOp::Allocate(n) => {
                    let free = pool.num_free_blocks();
                    match pool.allocate(n) {
                        Some(ids) => {
                            prop_assert!(n <= free);
                            for id in ids {
                                prop_assert!(!held.contains(&id), "handed out a held block");
                                content.remove(&id); // reuse evicts
                                held.push(id);
                            }
                        }
                        None => prop_assert!(n > free),
                    }
                }
                PoolOp::Free(i) if !held.is_empty() => {
                    let id = held.swap_remove(i % held.len());
                    pool.free([id]);
                }
                // Re-caching a cached block under other content would be a caller bug (a full,
                // computed block never changes): the pool debug-asserts against it.
                PoolOp::Cache(i, c) if !held.is_empty() && content.get(&held[i % held.len()]).is_none_or(|&o| o == c) => {
                    let id = held[i % held.len()];
                    let (h, t) = key(c);
                    let taken = content.values().any(|&v| v == c);
                    let cached = pool.cache_block(id, h, &t);
                    match content.get(&id) {
                        Some(&old) => prop_assert_eq!(cached, old == c),
                        None => {
                            prop_assert_eq!(cached, !taken);
                            if cached {
                                content.insert(id, c);
                            }
                        }
                    }
                }
                PoolOp::TouchHit(c) => {
                    let (h, t) = key(c);
                    let hit = pool.lookup(h, &t);
                    let expected = content.iter().find(|(_, &v)| v == c).map(|(&b, _)| b);
                    prop_assert_eq!(hit, expected);
                    if let Some(id) = hit {
                        pool.touch(&[id]);
                        held.push(id);
                    }
                }
                PoolOp::EvictFree => {
                    pool.evict_free_blocks();
                    content.retain(|id, _| held.contains(id));
                }
                _ => {}
            }
            pool.check_invariants().map_err(TestCaseError::fail)?;
            for b in 0..NUM_BLOCKS as BlockId {
                let refs = held.iter().filter(|&&h| h == b).count() as u32;
                prop_assert_eq!(pool.ref_count(b), refs, "block {}", b);
            }
            prop_assert_eq!(pool.num_free_blocks(), (0..NUM_BLOCKS as BlockId).filter(|&b| !held.contains(&b)).count());
            prop_assert_eq!(pool.num_cached_blocks(), content.len());
        }
        for id in held.drain(..) {
            pool.free([id]);
        }
        prop_assert_eq!(pool.num_free_blocks(), NUM_BLOCKS);
        pool.check_invariants().map_err(TestCaseError::fail)?;
    }
}

const BS: usize = 4;

#[derive(Debug, Clone)]
enum MgrOp {
    /// Start a sequence: `len` tokens of base sequence `base` then `tail` distinct tokens, salt.
    Start {
        base: usize,
        len: usize,
        tail: usize,
        salt: u64,
        prefill: usize,
    },
    /// Compute up to `n` more tokens of the i-th live sequence (growing it if needed).
    Compute {
        i: usize,
        n: usize,
        lookahead: usize,
    },
    Free(usize),
    ResetCache,
}

fn mgr_op() -> impl Strategy<Value = MgrOp> {
    prop_oneof![
        3 => (0..3usize, 0..20usize, 0..6usize, 0..2u64, 1..24usize)
            .prop_map(|(base, len, tail, salt, prefill)| MgrOp::Start { base, len, tail, salt, prefill }),
        4 => (any::<usize>(), 1..9usize, 0..3usize).prop_map(|(i, n, lookahead)| MgrOp::Compute { i, n, lookahead }),
        2 => any::<usize>().prop_map(MgrOp::Free),
        1 => Just(MgrOp::ResetCache),
    ]
}

/// A live sequence of the shadow model.
struct ShadowSeq {
    id: u64,
    tokens: Vec<u32>,
    salt: u64,
    computed: usize,
}

/// Base sequences: starts draw prefixes of these, so prefixes are often shared.
fn base(b: usize, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 7 + b as u32 * 3) % 5)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random sequences over a small pool: a prefix hit always names blocks whose content (as
    /// written by whoever computed them) equals the new sequence's own prefix under the same
    /// salt; tables, ref counts and the free queue stay consistent; nothing leaks.
    #[test]
    fn kv_manager_matches_shadow(ops in proptest::collection::vec(mgr_op(), 1..80), caching in any::<bool>()) {
        let mut m = KvCacheManager::new(NUM_BLOCKS, BS, caching);
        let mut live: Vec<ShadowSeq> = Vec::new();
        // Shadow KV: per block, the salt and the token prefix ending with that block, for
        // blocks whose KV has been fully computed.
        let mut kv: HashMap<BlockId, (u64, Vec<u32>)> = HashMap::new();
        let mut next_id = 0u64;
        let mut next_tail = 1000u32;
        for op in ops {
            match op {
                MgrOp::Start { base: b, len, tail, salt, prefill } => {
                    let mut tokens = base(b, len);
                    tokens.extend((0..tail as u32).map(|i| next_tail + i));
                    next_tail += tail as u32;
                    if tokens.is_empty() {
                        continue;
                    }
                    let hit = m.get_computed_blocks(&tokens, salt);
                    prop_assert!(hit.num_tokens < tokens.len(), "hit must leave a token to compute");
                    prop_assert_eq!(hit.num_tokens, hit.blocks.len() * BS);
                    if !caching {
                        prop_assert_eq!(&hit, &ComputedBlocks::default());
                    }
                    for (i, b) in hit.blocks.iter().enumerate() {
                        let want = (salt, tokens[..(i + 1) * BS].to_vec());
                        prop_assert_eq!(kv.get(b), Some(&want), "hit on block {} with other content", b);
                    }
                    let id = next_id;
                    next_id += 1;
                    let n = prefill.min(tokens.len() - hit.num_tokens);
                    if let Some(t) = m.allocate_slots(id, hit.num_tokens, n, 0, Some(&hit)) {
                        prop_assert_eq!(&t[..hit.blocks.len()], &hit.blocks[..]);
                        for b in &t[hit.blocks.len()..] {
                            kv.remove(b); // a fresh block holds nothing yet
                        }
                        let mut s = ShadowSeq { id, tokens, salt, computed: hit.num_tokens };
                        compute(&mut m, &mut kv, &mut s, n);
                        live.push(s);
                    } else {
                        prop_assert_eq!(m.block_table(id).len(), 0);
                    }
                }
                MgrOp::Compute { i, n, lookahead } if !live.is_empty() => {
                    let k = i % live.len();
                    let s = &mut live[k];
                    // Grow like a decode would (a token the model sampled).
                    while s.tokens.len() < s.computed + n {
                        s.tokens.push(next_tail);
                        next_tail += 1;
                    }
                    let before = m.block_table(s.id).to_vec();
                    let free = m.num_free_blocks();
                    match m.allocate_slots(s.id, s.computed, n, lookahead, None).map(<[_]>::to_vec) {
                        Some(t) => {
                            prop_assert!(t.len() * BS >= s.computed + n + lookahead);
                            prop_assert_eq!(&t[..before.len()], &before[..], "tables only grow");
                            for b in &t[before.len()..] {
                                kv.remove(b); // a fresh block holds nothing yet
                            }
                            compute(&mut m, &mut kv, s, n);
                        }
                        None => {
                            prop_assert_eq!(m.block_table(s.id), &before[..]);
                            prop_assert_eq!(m.num_free_blocks(), free);
                        }
                    }
                }
                MgrOp::Free(i) if !live.is_empty() => {
                    let s = live.swap_remove(i % live.len());
                    m.free(s.id);
                    prop_assert!(m.block_table(s.id).is_empty());
                }
                MgrOp::ResetCache => m.reset_prefix_cache(),
                _ => {}
            }
            m.check_invariants().map_err(TestCaseError::fail)?;
            let used: std::collections::HashSet<BlockId> =
                live.iter().flat_map(|s| m.block_table(s.id).iter().copied()).collect();
            prop_assert_eq!(m.num_free_blocks() + used.len(), NUM_BLOCKS, "leaked blocks");
            prop_assert_eq!(m.num_seqs(), live.len());
        }
        for s in live.drain(..) {
            m.free(s.id);
        }
        prop_assert_eq!(m.num_free_blocks(), NUM_BLOCKS);
        prop_assert_eq!(m.num_seqs(), 0);
        m.check_invariants().map_err(TestCaseError::fail)?;
    }
}

/// "Runs the model": computes `n` more tokens of `s` into its blocks, as the shadow KV sees it,
/// then offers the full blocks to the cache.
fn compute(
    m: &mut KvCacheManager,
    kv: &mut HashMap<BlockId, (u64, Vec<u32>)>,
    s: &mut ShadowSeq,
    n: usize,
) {
    let table = m.block_table(s.id).to_vec();
    s.computed += n;
    for (i, b) in table.iter().enumerate().take(s.computed / BS) {
        let want = (s.salt, s.tokens[..(i + 1) * BS].to_vec());
        // A block shared through the cache must already hold exactly this; our own is written now.
        match kv.get(b) {
            Some(have) if m.pool().ref_count(*b) > 1 => {
                assert_eq!(have, &want, "shared block {b} differs")
            }
            _ => {
                kv.insert(*b, want);
            }
        }
    }
    m.cache_full_blocks(s.id, &s.tokens[..s.computed], s.salt);
}
