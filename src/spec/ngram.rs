//! Prompt-lookup (n-gram) proposer: find the latest earlier occurrence of the sequence's
//! last n tokens (n from `prompt_lookup_max` down to `prompt_lookup_min`) in its prompt and
//! outputs, and propose the tokens that followed it. Free: no model, no KV.

use super::{ProposeInput, Proposer};

#[derive(Debug, Clone)]
pub struct NgramProposer {
    min_n: usize,
    max_n: usize,
}

impl NgramProposer {
    pub fn new(min_n: usize, max_n: usize) -> Self {
        assert!(min_n >= 1 && min_n <= max_n);
        Self { min_n, max_n }
    }

    /// Up to `k` tokens that followed the latest earlier match of the longest suffix of
    /// `tokens` (of `min_n..=max_n` tokens) that occurs earlier; empty without a match.
    pub fn lookup(&self, tokens: &[u32], k: usize) -> Vec<u32> {
        if k == 0 {
            return Vec::new();
        }
        for n in (self.min_n..=self.max_n).rev() {
            if tokens.len() <= n {
                continue;
            }
            let suffix = &tokens[tokens.len() - n..];
            // Latest start first; a match must end before the suffix itself starts over.
            let found = (0..tokens.len() - n)
                .rev()
                .find(|&start| &tokens[start..start + n] == suffix);
            if let Some(start) = found {
                let from = start + n;
                let to = (from + k).min(tokens.len());
                return tokens[from..to].to_vec();
            }
        }
        Vec::new()
    }
}

impl Proposer for NgramProposer {
    fn propose(&mut self, seqs: &[ProposeInput]) -> anyhow::Result<Vec<Vec<u32>>> {
        Ok(seqs
            .iter()
            .map(|s| self.lookup(s.tokens, s.max_drafts))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposes_what_followed_the_latest_longest_match() {
        let p = NgramProposer::new(2, 3);
        // "1 2 3" occurred earlier followed by 4 5 6; the suffix is "1 2 3".
        assert_eq!(p.lookup(&[9, 1, 2, 3, 4, 5, 6, 1, 2, 3], 2), vec![4, 5]);
        // The continuation may run into the suffix itself, but not past the end.
        assert_eq!(p.lookup(&[7, 8, 7, 8], 5), vec![7, 8]);
        // Latest occurrence wins.
        assert_eq!(p.lookup(&[1, 2, 5, 1, 2, 6, 1, 2], 1), vec![6]);
        // No match of at least min_n tokens.
        assert!(p.lookup(&[1, 2, 3, 4, 3], 3).is_empty());
        assert!(p.lookup(&[1, 2], 3).is_empty());
        assert!(p.lookup(&[1, 2, 1, 2], 0).is_empty());
    }
}
