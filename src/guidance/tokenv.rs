//! The token environment llguidance works in, built from our own tokenizer: every token id's
//! bytes (special tokens marked so that no grammar can produce them) and a tokenize function.

use std::sync::Arc;

use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use super::GuidanceError;
use crate::tokenizer::Tokenizer;

/// Our tokenizer as a `toktrie::TokenizerEnv`.
pub struct FlareTokEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

/// Byte strings of the ids `0..vocab_size` (the model's logits width): the tokenizer's own
/// decoding table (byte-level or SentencePiece byte-fallback), special tokens prefixed with
/// toktrie's marker byte (0xFF, never valid in UTF-8 text, so never in a grammar's lexemes), and
/// ids the tokenizer does not know (padding rows of the embedding) left empty, which the trie
/// never matches.
pub fn token_bytes(
    tokenizer: &Tokenizer,
    vocab_size: usize,
    special_ids: &[u32],
) -> Result<Vec<Vec<u8>>, GuidanceError> {
    let json = tokenizer
        .inner()
        .to_string(false)
        .map_err(|e| GuidanceError::Unavailable(format!("serializing the tokenizer: {e}")))?;
    let value: serde_json::Value = serde_json::from_str(&json)
        .map_err(|e| GuidanceError::Unavailable(format!("reading the tokenizer: {e}")))?;
    // llguidance asserts on vocabularies it cannot map; a panic here is an unsupported tokenizer.
    let bytes = std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&value))
        .map_err(|_| GuidanceError::Unavailable("unrecognised tokenizer vocabulary".into()))?
        .map_err(|e| GuidanceError::Unavailable(format!("tokenizer vocabulary: {e}")))?;
    let mut bytes = bytes;
    bytes.resize(vocab_size, Vec::new());
    for &id in special_ids {
        if let Some(b) = bytes.get_mut(id as usize) {
            if b.first() != Some(&TokTrie::SPECIAL_TOKEN_MARKER) {
                b.insert(0, TokTrie::SPECIAL_TOKEN_MARKER);
            }
        }
    }
    Ok(bytes)
}

impl FlareTokEnv {
    /// `eos_token_ids`: every id that ends a generation; the first is llguidance's EOS.
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        vocab_size: usize,
        eos_token_ids: &[u32],
    ) -> Result<Self, GuidanceError> {
        let Some(&eos) = eos_token_ids.first() else {
            return Err(GuidanceError::Unavailable(
                "the model has no end-of-sequence token".into(),
            ));
        };
        let words = token_bytes(&tokenizer, vocab_size, eos_token_ids)?;
        let mut info = TokRxInfo::new(vocab_size as u32, eos);
        info.tok_bos = tokenizer.bos_token_id;
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eos_token_ids);
        Ok(Self { trie, tokenizer })
    }

    pub fn into_env(self) -> TokEnv {
        Arc::new(self)
    }
}

impl TokenizerEnv for FlareTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // Byte strings that are not UTF-8 (a grammar's forced prefix may end mid-character)
        // fall back to the trie's greedy tokenization, as llguidance's own environments do.
        match std::str::from_utf8(s) {
            Ok(text) => match self.tokenizer.encode(text, false) {
                Ok(ids) => ids,
                Err(_) => self.trie.greedy_tokenize(s),
            },
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}
