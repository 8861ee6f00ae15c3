//! The persistent input batch (after vLLM v1's `InputBatch`): each running sequence's block
//! table lives here from step to step and is updated in place with only the blocks the
//! scheduler appended since the last step, then lent to the step's attention metadata (moved,
//! not copied) and taken back after the forward.
//!
//! Host buffers only: on CUDA the step's metadata is still uploaded whole each step
//! (`DeviceAttnMeta`); device-resident tables updated in place are the GPU half of this.

use std::collections::HashMap;

use crate::kv::manager::SeqId;
use crate::layers::attention::SeqAttn;

#[derive(Debug, Default)]
pub struct InputBatch {
    tables: HashMap<SeqId, Vec<u32>>,
    /// Blocks copied into tables since creation (tests: appended blocks only).
    blocks_copied: u64,
}

impl InputBatch {
    /// The sequence's table brought up to `current` (the scheduler's), to be lent to a step.
    /// Only appended blocks are copied; a table that changed otherwise (preemption freed it,
    /// or a rollback shrank it) is rebuilt.
    pub fn lend(&mut self, id: SeqId, current: &[u32]) -> Vec<u32> {
        let mut table = self.tables.remove(&id).unwrap_or_default();
        if table.len() > current.len() || table[..] != current[..table.len()] {
            table.clear();
        }
        self.blocks_copied += (current.len() - table.len()) as u64;
        table.extend_from_slice(&current[table.len()..]);
        table
    }

    /// Takes the tables back after the step; sequences that were not in it are dropped
    /// (finished, preempted or paused: rebuilt if they come back).
    pub fn take_back(&mut self, lent: impl IntoIterator<Item = (SeqId, Vec<u32>)>) {
        self.tables.clear();
        self.tables.extend(lent);
    }

    pub fn blocks_copied(&self) -> u64 {
        self.blocks_copied
    }

    /// The tables of a finished step's metadata, in step order, when no layer kept a copy.
    pub fn recover(seqs: std::sync::Arc<Vec<SeqAttn>>) -> Option<Vec<Vec<u32>>> {
        std::sync::Arc::try_unwrap(seqs)
            .ok()
            .map(|v| v.into_iter().map(|s| s.block_table).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_appended_blocks_are_copied() {
        let mut b = InputBatch::default();
        let t = b.lend(1, &[5, 6]);
        b.take_back([(1, t)]);
        let t = b.lend(1, &[5, 6, 9]);
        assert_eq!(t, [5, 6, 9]);
        assert_eq!(b.blocks_copied(), 3);
        b.take_back([(1, t)]);
        // Unchanged: nothing copied.
        let t = b.lend(1, &[5, 6, 9]);
        assert_eq!(b.blocks_copied(), 3);
        b.take_back([(1, t)]);
        // Reset by preemption: rebuilt.
        let t = b.lend(1, &[7]);
        assert_eq!(t, [7]);
        assert_eq!(b.blocks_copied(), 4);
        // A sequence missing from a step is forgotten.
        b.take_back([(2, vec![1])]);
        assert_eq!(b.lend(1, &[7]), [7]);
        assert_eq!(b.blocks_copied(), 5);
    }
}
