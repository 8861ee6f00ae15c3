//! Queue of sequences waiting for admission, ordered by the scheduling policy.
//!
//! Keyed by `(priority, arrival)`, with priority taken as 0 under FCFS. A preempted sequence
//! keeps its arrival number, so under FCFS it goes back to the front: everything never admitted
//! arrived after it, since admission never skips ahead.

use std::collections::BTreeMap;

use super::config::SchedulingPolicy;
use super::sequence::Sequence;
use crate::kv::manager::SeqId;

#[derive(Debug, Clone, Default)]
pub(crate) struct WaitingQueue {
    policy: SchedulingPolicy,
    queue: BTreeMap<(i32, u64), SeqId>,
}

impl WaitingQueue {
    pub fn new(policy: SchedulingPolicy) -> Self {
        Self {
            policy,
            queue: BTreeMap::new(),
        }
    }

    fn key(&self, seq: &Sequence) -> (i32, u64) {
        match self.policy {
            SchedulingPolicy::Fcfs => (0, seq.arrival()),
            SchedulingPolicy::Priority => (seq.priority(), seq.arrival()),
        }
    }

    pub fn push(&mut self, seq: &Sequence) {
        let old = self.queue.insert(self.key(seq), seq.id());
        debug_assert!(old.is_none(), "arrival numbers are unique");
    }

    /// The next sequence to admit.
    pub fn front(&self) -> Option<SeqId> {
        self.queue.values().next().copied()
    }

    pub fn pop_front(&mut self) -> Option<SeqId> {
        self.queue.pop_first().map(|(_, id)| id)
    }

    /// Takes `seq` out of the queue; false if it was not there.
    pub fn remove(&mut self, seq: &Sequence) -> bool {
        let key = self.key(seq);
        self.queue.remove(&key).is_some()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Ids in admission order.
    pub fn iter(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.queue.values().copied()
    }
}
