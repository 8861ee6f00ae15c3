//! Streams generated token ids into text without splitting characters.
//!
//! Decoding one token at a time is wrong twice over: a byte-level token may carry only part of a
//! UTF-8 character, and SentencePiece decoders strip the leading space of the first token they
//! see. So, like vLLM and TGI, we decode a small window: `ids[prefix_offset..read_offset]` is text
//! already emitted, kept only as context, and the new text is what decoding the whole window adds
//! beyond it. While the window's text ends in U+FFFD a character is still incomplete, and
//! nothing is emitted until a later token completes it.

use super::{Tokenizer, TokenizerError};

/// How many prompt tokens to keep as context for the first generated token.
const PROMPT_CONTEXT: usize = 5;

const REPLACEMENT: char = '\u{FFFD}';

/// Per-sequence state for turning generated ids into text deltas.
#[derive(Debug, Clone, Default)]
pub struct IncrementalDetokenizer {
    /// The decode window: emitted context, then ids not yet emitted.
    ids: Vec<u32>,
    /// Start of the context part of `ids`.
    prefix_offset: usize,
    /// End of the already-emitted part of `ids`.
    read_offset: usize,
    skip_special_tokens: bool,
}

impl IncrementalDetokenizer {
    /// Starts with no context: the first token decodes as it would at the start of a text.
    pub fn new(skip_special_tokens: bool) -> Self {
        Self {
            skip_special_tokens,
            ..Self::default()
        }
    }

    /// Starts with the prompt's last tokens as context, so the first generated token keeps the
    /// leading space it has when following the prompt.
    pub fn with_prompt(prompt_ids: &[u32], skip_special_tokens: bool) -> Self {
        let ids = prompt_ids[prompt_ids.len().saturating_sub(PROMPT_CONTEXT)..].to_vec();
        Self {
            read_offset: ids.len(),
            ids,
            prefix_offset: 0,
            skip_special_tokens,
        }
    }

    /// Adds one generated id; returns the text it completes, which may be empty.
    pub fn step(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        self.emit(tokenizer, false)
    }

    /// Releases text still held back at the end of generation, even an incomplete character.
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<String, TokenizerError> {
        if self.read_offset == self.ids.len() {
            return Ok(String::new());
        }
        self.emit(tokenizer, true)
    }

    fn emit(&mut self, tokenizer: &Tokenizer, force: bool) -> Result<String, TokenizerError> {
        let skip = self.skip_special_tokens;
        let prefix_text =
            tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let new_text = tokenizer.decode(&self.ids[self.prefix_offset..], skip)?;
        if new_text.len() <= prefix_text.len() || (!force && new_text.ends_with(REPLACEMENT)) {
            return Ok(String::new());
        }
        // The context normally decodes to a prefix of the window's text; when it does not (its
        // own tail was an incomplete character) the delta starts where the two texts diverge.
        let start = if new_text.starts_with(&prefix_text) {
            prefix_text.len()
        } else {
            common_prefix_len(&prefix_text, &new_text)
        };
        let delta = new_text[start..].to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        // Only the context is ever decoded again; drop what came before it.
        self.ids.drain(..self.prefix_offset);
        self.read_offset -= self.prefix_offset;
        self.prefix_offset = 0;
        Ok(delta)
    }
}

/// Byte length of the longest common prefix of `a` and `b`, on a character boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map(|((i, _), _)| i)
        .unwrap_or_else(|| a.len().min(b.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::test_util;

    fn byte_level() -> Tokenizer {
        Tokenizer::from_gguf(&test_util::byte_level_content()).unwrap()
    }

    fn sentencepiece() -> Tokenizer {
        Tokenizer::from_gguf(&test_util::sentencepiece_content()).unwrap()
    }

    fn stream(tok: &Tokenizer, ids: &[u32], skip: bool) -> Vec<String> {
        let mut detok = IncrementalDetokenizer::new(skip);
        let mut out: Vec<String> = ids.iter().map(|&id| detok.step(tok, id).unwrap()).collect();
        out.push(detok.flush(tok).unwrap());
        out
    }

    #[test]
    fn emoji_split_across_byte_tokens_is_held_until_complete() {
        let tok = byte_level();
        let ids = tok.encode("hello 😀!", false).unwrap();
        // hello, Ġ, then the emoji's four bytes one token each, then "!".
        assert_eq!(ids.len(), 7);
        let deltas = stream(&tok, &ids, false);
        assert_eq!(deltas, ["hello", " ", "", "", "", "😀", "!", ""]);
        assert!(deltas.iter().all(|d| !d.contains(REPLACEMENT)));
    }

    #[test]
    fn cjk_concatenation_equals_full_decode() {
        let tok = byte_level();
        let text = "中文 hello world, 日本語 ✓";
        let ids = tok.encode(text, false).unwrap();
        let deltas = stream(&tok, &ids, false);
        for d in &deltas {
            assert!(!d.contains(REPLACEMENT), "{d:?}");
        }
        assert_eq!(deltas.concat(), text);
    }

    #[test]
    fn special_tokens_skipped_or_kept() {
        let tok = byte_level();
        let ids = tok.encode("hello<|im_end|>", false).unwrap();
        assert_eq!(stream(&tok, &ids, true).concat(), "hello");
        assert_eq!(stream(&tok, &ids, false).concat(), "hello<|im_end|>");
    }

    #[test]
    fn sentencepiece_leading_spaces_survive_streaming() {
        let tok = sentencepiece();
        let ids = tok.encode("hello world é", false).unwrap();
        let deltas = stream(&tok, &ids, false);
        assert_eq!(deltas[..2], ["hello", " world"]);
        assert_eq!(deltas.concat(), "hello world é");
        assert_eq!(deltas.concat(), tok.decode(&ids, false).unwrap());
    }

    #[test]
    fn prompt_context_keeps_first_token_space() {
        let tok = sentencepiece();
        let prompt = tok.encode("hello", false).unwrap();
        let world = tok.encode("world", false).unwrap();
        let mut detok = IncrementalDetokenizer::with_prompt(&prompt, false);
        assert_eq!(detok.step(&tok, world[0]).unwrap(), " world");
        // Without context the first token's space is stripped, as a full decode would do.
        let mut bare = IncrementalDetokenizer::new(false);
        assert_eq!(bare.step(&tok, world[0]).unwrap(), "world");
    }

    #[test]
    fn flush_releases_incomplete_character() {
        let tok = byte_level();
        let ids = tok.encode("😀", false).unwrap();
        let mut detok = IncrementalDetokenizer::new(false);
        assert_eq!(detok.step(&tok, ids[0]).unwrap(), "");
        assert_eq!(detok.flush(&tok).unwrap(), "\u{FFFD}");
        assert_eq!(detok.flush(&tok).unwrap(), "");
    }

    #[test]
    fn common_prefix_respects_char_boundaries() {
        assert_eq!(common_prefix_len("ab\u{FFFD}", "abé"), 2);
        assert_eq!(common_prefix_len("ab", "abc"), 2);
        assert_eq!(common_prefix_len("", "x"), 0);
    }
}
