//! Text to token ids and back, plus the special tokens and chat template generation needs.

pub mod detokenizer;
pub mod gguf;
mod hf;
pub mod stop;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;

pub use detokenizer::IncrementalDetokenizer;
pub use gguf::GgufVocab;
pub use stop::{StopMatch, StopStringMatcher};

/// Errors from loading or running a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("tokenizers: {0}")]
    Tokenizers(String),
    #[error("GGUF metadata key `{0}` is missing")]
    MissingKey(String),
    #[error("GGUF metadata key `{key}` is not {expected}")]
    BadKey { key: String, expected: &'static str },
    #[error("unsupported GGUF tokenizer model `{0}` (supported: gpt2, llama)")]
    UnsupportedModel(String),
    #[error("invalid tokenizer data: {0}")]
    Invalid(String),
}

/// A `tokenizers` tokenizer with what generation needs besides: BOS/EOS ids and the chat template.
///
/// Prompts rendered from a chat template usually contain the BOS text already, so encode them
/// with `add_special_tokens = false`.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_token_id: Option<u32>,
    /// Generation stops at any of these.
    pub eos_token_ids: Vec<u32>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub chat_template: Option<String>,
    /// Prepend BOS in `encode(_, true)` when the inner tokenizer's post-processor does not.
    pub add_bos_token: bool,
}

impl Tokenizer {
    /// Wraps a tokenizer that has no extra metadata.
    pub fn new(inner: tokenizers::Tokenizer) -> Self {
        Self {
            inner,
            bos_token_id: None,
            eos_token_ids: Vec::new(),
            bos_token: None,
            eos_token: None,
            chat_template: None,
            add_bos_token: false,
        }
    }

    /// Loads `tokenizer.json` from a Hugging Face model directory, with the special tokens and
    /// chat template from `tokenizer_config.json`, `chat_template.jinja` and
    /// `generation_config.json` where present.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&path).map_err(|source| TokenizerError::Io {
            path: path.clone(),
            source,
        })?;
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| TokenizerError::Tokenizers(format!("{}: {e}", path.display())))?;
        let cfg = hf::HfTokenizerConfig::read(dir)?;

        let mut tok = Self::new(inner);
        tok.bos_token_id = cfg
            .generation_bos_token_id
            .or_else(|| cfg.bos_token.as_deref().and_then(|t| tok.token_to_id(t)));
        tok.bos_token = cfg
            .bos_token
            .or_else(|| tok.bos_token_id.and_then(|id| tok.id_to_token(id)));
        let mut eos = cfg.generation_eos_token_ids;
        if let Some(id) = cfg.eos_token.as_deref().and_then(|t| tok.token_to_id(t)) {
            eos.push(id);
        }
        tok.set_eos_token_ids(eos);
        tok.eos_token = cfg.eos_token.or_else(|| {
            tok.eos_token_ids
                .first()
                .and_then(|&id| tok.id_to_token(id))
        });
        tok.chat_template = cfg.chat_template;
        tok.add_bos_token = cfg.add_bos_token.unwrap_or(false);
        Ok(tok)
    }

    /// Builds the tokenizer from a GGUF file's `tokenizer.*` metadata.
    pub fn from_gguf(ct: &Content) -> Result<Self, TokenizerError> {
        let vocab = GgufVocab::from_content(ct)?;
        let mut tok = Self::new(vocab.build()?);
        tok.bos_token_id = vocab.bos_token_id;
        tok.bos_token = vocab.token(vocab.bos_token_id);
        tok.eos_token = vocab.token(vocab.eos_token_id);
        tok.set_eos_token_ids(
            [vocab.eos_token_id, vocab.eot_token_id, vocab.eom_token_id]
                .into_iter()
                .flatten()
                .collect(),
        );
        tok.chat_template = vocab.chat_template;
        tok.add_bos_token = vocab.add_bos_token;
        Ok(tok)
    }

    fn set_eos_token_ids(&mut self, ids: Vec<u32>) {
        self.eos_token_ids.clear();
        for id in ids {
            if !self.eos_token_ids.contains(&id) {
                self.eos_token_ids.push(id);
            }
        }
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`; with `add_special_tokens` the post-processor runs and BOS is
    /// prepended where this tokenizer wants one and the post-processor did not add it.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        if add_special_tokens && self.add_bos_token {
            if let Some(bos) = self.bos_token_id {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        Ok(ids)
    }

    /// The text of `ids`; special tokens are left out with `skip_special_tokens`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_token_ids.contains(&id)
    }
}

/// Tiny tokenizers built in code, for tests here and in tests/.
#[doc(hidden)]
pub mod test_util;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_gguf_wrapper_metadata() {
        let tok = Tokenizer::from_gguf(&test_util::byte_level_content()).unwrap();
        assert_eq!(tok.bos_token_id, Some(1));
        assert_eq!(tok.bos_token.as_deref(), Some("<|im_start|>"));
        assert_eq!(tok.eos_token_ids, vec![2]);
        assert_eq!(tok.eos_token.as_deref(), Some("<|im_end|>"));
        assert!(tok.is_eos(2) && !tok.is_eos(1));
        assert!(!tok.add_bos_token);
        assert_eq!(tok.chat_template.as_deref(), Some("{{ messages }}"));
        assert_eq!(tok.vocab_size(), test_util::byte_level_content_vocab_len());
    }

    #[test]
    fn encode_adds_bos_only_when_asked() {
        let mut tok = Tokenizer::from_gguf(&test_util::byte_level_content()).unwrap();
        tok.add_bos_token = true;
        let plain = tok.encode("ab", false).unwrap();
        let with = tok.encode("ab", true).unwrap();
        assert_eq!(with[0], 1);
        assert_eq!(&with[1..], &plain[..]);
        // Already starting with BOS (e.g. a rendered chat prompt): no second one.
        let chat = tok.encode("<|im_start|>ab", true).unwrap();
        assert_eq!(chat.iter().filter(|&&id| id == 1).count(), 1);
    }

    #[test]
    fn shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<IncrementalDetokenizer>();
        assert_send_sync::<StopStringMatcher>();
    }

    #[test]
    fn unsupported_model_is_an_error() {
        let mut ct = test_util::byte_level_content();
        ct.metadata.insert(
            "tokenizer.ggml.model".into(),
            candle_core::quantized::gguf_file::Value::String("rwkv".into()),
        );
        let err = Tokenizer::from_gguf(&ct).unwrap_err();
        assert!(matches!(err, TokenizerError::UnsupportedModel(m) if m == "rwkv"));
    }
}
