//! Engine logprobs in OpenAI's two shapes: chat's `content` list, and the legacy parallel
//! lists of text completions.

use crate::request::TokenLogprobs;
use crate::tokenizer::Tokenizer;

use super::wire::{ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob};

/// A token's own text (a lone byte of a multi-byte character shows as U+FFFD, as in vLLM).
fn token_text(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

pub fn chat(tok: &Tokenizer, lps: &[TokenLogprobs]) -> ChatLogprobs {
    ChatLogprobs {
        content: lps
            .iter()
            .map(|lp| {
                let token = token_text(tok, lp.token);
                ChatTokenLogprob {
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob: lp.logprob,
                    top_logprobs: lp
                        .top
                        .iter()
                        .map(|&(id, logprob)| {
                            let token = token_text(tok, id);
                            TopLogprob {
                                bytes: token.as_bytes().to_vec(),
                                token,
                                logprob,
                            }
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

/// Appends tokens to legacy logprobs, tracking each token's character offset in the text.
#[derive(Default)]
pub struct CompletionLogprobsBuilder {
    out: CompletionLogprobs,
    offset: usize,
}

impl CompletionLogprobsBuilder {
    fn push_token(&mut self, tok: &Tokenizer, id: u32) {
        let text = token_text(tok, id);
        self.out.text_offset.push(self.offset);
        self.offset += text.chars().count();
        self.out.tokens.push(text);
    }

    /// Echoed prompt tokens: their logprobs are not computed, so they are null.
    pub fn push_prompt(&mut self, tok: &Tokenizer, ids: &[u32]) {
        for &id in ids {
            self.push_token(tok, id);
            self.out.token_logprobs.push(None);
            self.out.top_logprobs.push(None);
        }
    }

    pub fn push_generated(&mut self, tok: &Tokenizer, lps: &[TokenLogprobs]) {
        for lp in lps {
            self.push_token(tok, lp.token);
            self.out.token_logprobs.push(Some(lp.logprob));
            self.out.top_logprobs.push(Some(
                lp.top
                    .iter()
                    .map(|&(id, l)| (token_text(tok, id), l))
                    .collect(),
            ));
        }
    }

    /// The entries added since the last take (a stream chunk's share); offsets keep counting.
    pub fn take(&mut self) -> CompletionLogprobs {
        std::mem::take(&mut self.out)
    }
}
