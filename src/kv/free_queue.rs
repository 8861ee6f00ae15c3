//! Queue of free KV blocks in eviction order, with O(1) removal from the middle.
//!
//! A prefix-cache hit on a free block takes that block out of the queue wherever it sits, so a
//! `VecDeque` (O(n) removal) will not do; this is an intrusive doubly linked list over block
//! ids, like vLLM's `FreeKVCacheBlockQueue`, stored as two index arrays instead of pointers.

use super::block_pool::BlockId;

/// Marks "no neighbour" in `prev` / `next` and an empty `head` / `tail`.
const NIL: BlockId = BlockId::MAX;

/// Free blocks, front = next to be handed out (and so evicted from the prefix cache).
#[derive(Debug, Clone)]
pub(crate) struct FreeQueue {
    prev: Vec<BlockId>,
    next: Vec<BlockId>,
    queued: Vec<bool>,
    head: BlockId,
    tail: BlockId,
    len: usize,
}

impl FreeQueue {
    /// A queue holding every block `0..num_blocks`, lowest id at the front.
    pub fn new_full(num_blocks: usize) -> Self {
        assert!(num_blocks < NIL as usize, "too many blocks for u32 ids");
        let mut q = Self {
            prev: vec![NIL; num_blocks],
            next: vec![NIL; num_blocks],
            queued: vec![false; num_blocks],
            head: NIL,
            tail: NIL,
            len: 0,
        };
        for id in 0..num_blocks as BlockId {
            q.push_back(id);
        }
        q
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn contains(&self, id: BlockId) -> bool {
        self.queued[id as usize]
    }

    /// Front block, the next to be handed out.
    pub fn front(&self) -> Option<BlockId> {
        (self.head != NIL).then_some(self.head)
    }

    pub fn push_back(&mut self, id: BlockId) {
        self.link_check(id);
        let i = id as usize;
        self.prev[i] = self.tail;
        self.next[i] = NIL;
        match self.tail {
            NIL => self.head = id,
            t => self.next[t as usize] = id,
        }
        self.tail = id;
        self.queued[i] = true;
        self.len += 1;
    }

    pub fn push_front(&mut self, id: BlockId) {
        self.link_check(id);
        let i = id as usize;
        self.prev[i] = NIL;
        self.next[i] = self.head;
        match self.head {
            NIL => self.tail = id,
            h => self.prev[h as usize] = id,
        }
        self.head = id;
        self.queued[i] = true;
        self.len += 1;
    }

    pub fn pop_front(&mut self) -> Option<BlockId> {
        let id = self.front()?;
        self.remove(id);
        Some(id)
    }

    /// Takes `id` out of the queue wherever it is.
    ///
    /// Panics if `id` is not queued: that would be a ref-count bug in the pool.
    pub fn remove(&mut self, id: BlockId) {
        let i = id as usize;
        assert!(self.queued[i], "block {id} is not in the free queue");
        let (p, n) = (self.prev[i], self.next[i]);
        match p {
            NIL => self.head = n,
            p => self.next[p as usize] = n,
        }
        match n {
            NIL => self.tail = p,
            n => self.prev[n as usize] = p,
        }
        self.prev[i] = NIL;
        self.next[i] = NIL;
        self.queued[i] = false;
        self.len -= 1;
    }

    /// Blocks front to back.
    pub fn iter(&self) -> impl Iterator<Item = BlockId> + '_ {
        let mut cur = self.head;
        std::iter::from_fn(move || {
            (cur != NIL).then(|| {
                let id = cur;
                cur = self.next[id as usize];
                id
            })
        })
    }

    fn link_check(&self, id: BlockId) {
        assert!(
            !self.queued[id as usize],
            "block {id} is already in the free queue"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[test]
    fn starts_full_in_id_order() {
        let q = FreeQueue::new_full(4);
        assert_eq!(q.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(q.len(), 4);
    }

    #[derive(Debug, Clone)]
    enum Op {
        PopFront,
        PushBack(BlockId),
        PushFront(BlockId),
        Remove(BlockId),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::PopFront),
            (0..8u32).prop_map(Op::PushBack),
            (0..8u32).prop_map(Op::PushFront),
            (0..8u32).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// The linked list behaves exactly like a `VecDeque` shadow.
        #[test]
        fn matches_vecdeque(ops in proptest::collection::vec(op(), 0..200)) {
            let mut q = FreeQueue::new_full(8);
            let mut shadow: VecDeque<BlockId> = (0..8).collect();
            for op in ops {
                match op {
                    Op::PopFront => prop_assert_eq!(q.pop_front(), shadow.pop_front()),
                    Op::PushBack(id) if !shadow.contains(&id) => {
                        q.push_back(id);
                        shadow.push_back(id);
                    }
                    Op::PushFront(id) if !shadow.contains(&id) => {
                        q.push_front(id);
                        shadow.push_front(id);
                    }
                    Op::Remove(id) if shadow.contains(&id) => {
                        q.remove(id);
                        shadow.retain(|&b| b != id);
                    }
                    _ => {}
                }
                prop_assert_eq!(q.iter().collect::<Vec<_>>(), shadow.iter().copied().collect::<Vec<_>>());
                prop_assert_eq!(q.len(), shadow.len());
                for id in 0..8 {
                    prop_assert_eq!(q.contains(id), shadow.contains(&id));
                }
            }
        }
    }
}
