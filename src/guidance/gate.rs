//! Holds a grammar back while a reasoning model thinks: the grammar binds only the answer,
//! which starts where the reasoning parser would start it.

use toktrie::{TokEnv, TokTrie};

use crate::request::ReasoningMarkers;

/// Where the output is relative to the reasoning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// First token, and the model may either open its reasoning or answer at once: the opener
    /// token is allowed beside the grammar's own.
    Undecided { opener: u32 },
    /// Inside the reasoning: anything but the end of the sequence.
    Reasoning,
    /// After the reasoning: the grammar decides.
    Answer,
}

/// The reasoning markers resolved against the vocabulary, and the tokens seen before the
/// answer (kept so that a rollback can replay them).
pub(super) struct Gate {
    env: TokEnv,
    /// The phase at the start of the output.
    start: Phase,
    closer: Vec<u8>,
    /// Output tokens that the grammar did not see.
    before_answer: Vec<u32>,
    /// The reasoning's last bytes, enough to find the closer across token boundaries.
    tail: Vec<u8>,
    phase: Phase,
}

impl Gate {
    /// A gate at the start of the output. An opener that is not a single token of the
    /// vocabulary cannot be offered beside the grammar's first tokens, so such a model answers
    /// under the grammar at once.
    pub(super) fn new(env: TokEnv, markers: &ReasoningMarkers) -> Self {
        let start = match markers.opener.as_deref() {
            None => Phase::Reasoning,
            Some(o) => match single_token(env.tok_trie(), o.as_bytes()) {
                Some(opener) => Phase::Undecided { opener },
                None => Phase::Answer,
            },
        };
        Self {
            start,
            closer: markers.closer.as_bytes().to_vec(),
            before_answer: Vec::new(),
            tail: Vec::new(),
            phase: start,
            env,
        }
    }

    pub(super) fn phase(&self) -> Phase {
        self.phase
    }

    /// Takes `token` before the answer. Returns false when the token belongs to the grammar
    /// (the model answered at once, without reasoning).
    pub(super) fn take(&mut self, token: u32) -> bool {
        match self.phase {
            Phase::Answer => false,
            Phase::Undecided { opener } if token != opener => {
                self.phase = Phase::Answer;
                false
            }
            Phase::Undecided { .. } => {
                self.before_answer.push(token);
                self.phase = Phase::Reasoning;
                true
            }
            Phase::Reasoning => {
                self.before_answer.push(token);
                let bytes = self.env.tok_trie().token(token);
                let bytes = bytes
                    .strip_prefix(&[TokTrie::SPECIAL_TOKEN_MARKER])
                    .unwrap_or(bytes);
                self.tail.extend_from_slice(bytes);
                // Bytes after the closer in the same token stay outside the grammar.
                if contains(&self.tail, &self.closer) {
                    self.phase = Phase::Answer;
                    self.tail.clear();
                } else if self.tail.len() > 2 * self.closer.len() + 64 {
                    let keep = self.closer.len();
                    self.tail.drain(..self.tail.len() - keep);
                }
                true
            }
        }
    }

    /// Forgets the last `n` tokens taken before the answer and replays the rest.
    pub(super) fn rollback(&mut self, n: usize) {
        let mut kept = std::mem::take(&mut self.before_answer);
        kept.truncate(kept.len().saturating_sub(n));
        self.tail.clear();
        self.phase = self.start;
        for t in kept {
            self.take(t);
        }
    }

    pub(super) fn eos_tokens(&self) -> &[u32] {
        self.env.tok_trie().eos_tokens()
    }

    pub(super) fn tokens_before_answer(&self) -> usize {
        self.before_answer.len()
    }
}

fn single_token(trie: &TokTrie, text: &[u8]) -> Option<u32> {
    let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
    marked.extend_from_slice(text);
    trie.token_id(text).or_else(|| trie.token_id(&marked))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
