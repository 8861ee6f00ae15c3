//! Builds a `tokenizers::Tokenizer` from the vocabulary a GGUF file carries in its metadata.
//!
//! Vocabulary kinds, named by `tokenizer.ggml.model`:
//!
//! - `gpt2`: byte-level BPE. Tokens and merges are stored in the byte-level alphabet already, so
//!   they go straight into a BPE model. What the file does not store is how text is split before
//!   BPE runs; `tokenizer.ggml.pre` names it, and we map each name to the pre-tokenizer of the
//!   model's own `tokenizer.json` (candle's converter gets this wrong for SmolLM2).
//! - `llama`: SentencePiece BPE (Llama-2, Gemma 2/3), with scores and `<0xXX>` byte-fallback
//!   tokens but no merges. SentencePiece repeatedly merges the adjacent pair whose concatenation
//!   is the best-scoring piece; a HF BPE model whose merge ranks follow that score does the same,
//!   so we derive merges from the vocabulary: every split of a piece into two pieces becomes a
//!   merge ranked by the piece's score. Gemma's scores do not follow its merge order but its token
//!   order does, so for Gemma the rank is the token's position. Ties between merges of equal
//!   priority are broken by rank here and by position in the text in SentencePiece, which can
//!   differ on rare inputs.
//! - `gemma4`: the same SentencePiece-style BPE, with the merges stored in the file.
//!
//! Checked against llama.cpp and against HF `tokenizer.json` outputs on llama.cpp's vocab-only
//! test files (llama-spm, phi-3, llama-bpe, qwen2, starcoder, refact, gpt-2, gemma-4, and gemma-4
//! with its merges removed to exercise the position-ranked derivation). The one known difference
//! is deliberate: Qwen2's `tokenizer.json` normalizes to NFC and llama.cpp does not.
//!
//! Control tokens (type 3) become special added tokens so chat markup like `<|im_start|>` is one
//! token; user-defined tokens (type 4) become plain added tokens.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{NormalizerWrapper, Sequence as NormalizerSequence};
use tokenizers::normalizers::{Prepend, Replace, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::TokenizerError;

/// Llama-3's split regex, as in its `tokenizer.json`.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex: like Llama-3's but one digit per piece.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// SentencePiece's visible space.
const SPM_SPACE: &str = "\u{2581}";

/// llama.cpp's `llama_token_type` values.
const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// The tokenizer part of a GGUF file's metadata.
#[derive(Debug, Clone)]
pub struct GgufVocab {
    pub architecture: String,
    /// `tokenizer.ggml.model`: `gpt2` or `llama`.
    pub model: String,
    /// `tokenizer.ggml.pre`: names the pre-tokenizer of byte-level vocabularies.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// One llama.cpp token type per token; empty when the file has none.
    pub token_types: Vec<i32>,
    pub scores: Vec<f32>,
    pub merges: Vec<(String, String)>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// End-of-turn / end-of-message ids: generation stops on these too.
    pub eot_token_id: Option<u32>,
    pub eom_token_id: Option<u32>,
    pub unknown_token_id: Option<u32>,
    pub add_bos_token: bool,
    pub add_space_prefix: bool,
    pub chat_template: Option<String>,
}

impl GgufVocab {
    /// Reads the `tokenizer.*` keys of a GGUF file.
    pub fn from_content(ct: &Content) -> Result<Self, TokenizerError> {
        let model = string(ct, "tokenizer.ggml.model")?
            .ok_or_else(|| TokenizerError::MissingKey("tokenizer.ggml.model".into()))?;
        let architecture = string(ct, "general.architecture")?.unwrap_or_default();
        let tokens = string_array(ct, "tokenizer.ggml.tokens")?
            .ok_or_else(|| TokenizerError::MissingKey("tokenizer.ggml.tokens".into()))?;
        let token_types = match array(ct, "tokenizer.ggml.token_type")? {
            Some(values) => values
                .iter()
                .map(|v| as_i64(v).map(|t| t as i32))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad_key("tokenizer.ggml.token_type", "an array of integers"))?,
            None => Vec::new(),
        };
        let scores = match array(ct, "tokenizer.ggml.scores")? {
            Some(values) => values
                .iter()
                .map(|v| v.to_f32().ok())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad_key("tokenizer.ggml.scores", "an array of f32"))?,
            None => Vec::new(),
        };
        let merges = string_array(ct, "tokenizer.ggml.merges")?
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| TokenizerError::Invalid(format!("merge without a space: {m:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pre = string(ct, "tokenizer.ggml.pre")?;
        let is_spm = matches!(model.as_str(), "llama" | "gemma4");
        let gemma = architecture.starts_with("gemma") || model == "gemma4";
        // llama.cpp's defaults: SentencePiece and Llama-3-style vocabularies want BOS.
        let default_bos = model == "llama"
            || model == "gemma4"
            || pre.as_deref().is_some_and(|p| LLAMA3_PRES.contains(&p));
        Ok(Self {
            pre,
            bos_token_id: id(ct, "tokenizer.ggml.bos_token_id")?,
            eos_token_id: id(ct, "tokenizer.ggml.eos_token_id")?,
            eot_token_id: id(ct, "tokenizer.ggml.eot_token_id")?,
            eom_token_id: id(ct, "tokenizer.ggml.eom_token_id")?,
            unknown_token_id: id(ct, "tokenizer.ggml.unknown_token_id")?,
            add_bos_token: boolean(ct, "tokenizer.ggml.add_bos_token")?.unwrap_or(default_bos),
            add_space_prefix: boolean(ct, "tokenizer.ggml.add_space_prefix")?
                .unwrap_or(is_spm && !gemma),
            chat_template: string(ct, "tokenizer.chat_template")?,
            architecture,
            model,
            tokens,
            token_types,
            scores,
            merges,
        })
    }

    /// The token string for an id, if the id is in range.
    pub fn token(&self, id: Option<u32>) -> Option<String> {
        id.and_then(|i| self.tokens.get(i as usize).cloned())
    }

    fn token_type(&self, id: usize) -> i32 {
        self.token_types.get(id).copied().unwrap_or(TYPE_NORMAL)
    }

    /// Builds the tokenizer this vocabulary describes.
    pub fn build(&self) -> Result<tokenizers::Tokenizer, TokenizerError> {
        match self.model.as_str() {
            "gpt2" => self.build_byte_level(),
            "llama" | "gemma4" => self.build_sentencepiece(),
            other => Err(TokenizerError::UnsupportedModel(other.to_string())),
        }
    }

    fn build_byte_level(&self) -> Result<tokenizers::Tokenizer, TokenizerError> {
        let vocab: Vocab = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let pre = byte_level_pre_tokenizer(self.pre.as_deref().unwrap_or("gpt2"))?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, self.merges.clone())
            .ignore_merges(pre.ignore_merges)
            .build()
            .map_err(tokenizers_err)?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        if let Some(n) = pre.normalizer {
            tok.with_normalizer(Some(n)).map_err(tokenizers_err)?;
        }
        tok.with_pre_tokenizer(Some(pre.pre_tokenizer));
        tok.with_decoder(Some(ByteLevelDecoder::default()));

        // A token marked control that uses characters outside the byte alphabet cannot be a real
        // byte-level token; llama.cpp mislabels some, and adding them would grow the vocabulary.
        let alphabet = ByteLevel::alphabet();
        let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
        self.add_marked_tokens(&mut tok, |t| in_alphabet(t))?;
        Ok(tok)
    }

    fn build_sentencepiece(&self) -> Result<tokenizers::Tokenizer, TokenizerError> {
        let gemma = self.architecture.starts_with("gemma") || self.model == "gemma4";
        // Gemma stores runs of spaces as real spaces while every other piece spells a space as
        // U+2581, so those runs must be respelled or no merge could ever reach them.
        let tokens: Vec<String> = self
            .tokens
            .iter()
            .map(|t| {
                if gemma && !t.is_empty() && t.chars().all(|c| c == ' ') {
                    SPM_SPACE.repeat(t.chars().count())
                } else {
                    t.clone()
                }
            })
            .collect();
        let mut vocab = Vocab::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(t.clone(), i as u32);
        }
        let merges = if self.merges.is_empty() {
            let priority: Vec<f32> = if gemma || self.scores.len() != tokens.len() {
                (0..tokens.len()).map(|i| -(i as f32)).collect()
            } else {
                self.scores.clone()
            };
            let mergeable: Vec<bool> = (0..tokens.len())
                .map(|i| matches!(self.token_type(i), TYPE_NORMAL | TYPE_USER_DEFINED))
                .collect();
            derive_merges(&tokens, &vocab, &priority, &mergeable)
        } else {
            self.merges.clone()
        };
        let mut builder = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .byte_fallback(true)
            .fuse_unk(true);
        if let Some(unk) = self.token(self.unknown_token_id) {
            builder = builder.unk_token(unk);
        }
        let bpe = builder.build().map_err(tokenizers_err)?;
        let mut tok = tokenizers::Tokenizer::new(bpe);

        let replace_space = Replace::new(" ", SPM_SPACE).map_err(tokenizers_err)?;
        let normalizer: NormalizerWrapper = if self.add_space_prefix {
            // Prepend runs on every text segment between added tokens, as llama.cpp adds the
            // prefix space after each special token too.
            NormalizerSequence::new(vec![
                Prepend::new(SPM_SPACE.to_string()).into(),
                replace_space.into(),
            ])
            .into()
        } else {
            replace_space.into()
        };
        tok.with_normalizer(Some(normalizer))
            .map_err(tokenizers_err)?;

        let mut decoders: Vec<DecoderWrapper> = vec![
            Replace::new(SPM_SPACE, " ").map_err(tokenizers_err)?.into(),
            ByteFallback::default().into(),
            Fuse::default().into(),
        ];
        if self.add_space_prefix {
            decoders.push(Strip::new(' ', 1, 0).into());
        }
        tok.with_decoder(Some(DecoderSequence::new(decoders)));

        self.add_marked_tokens(&mut tok, |t| !t.chars().all(char::is_whitespace))?;
        Ok(tok)
    }

    /// Adds control/unknown tokens as special tokens and user-defined ones as plain added tokens,
    /// so they are matched whole in text; `keep` filters out tokens that must stay model-only.
    fn add_marked_tokens(
        &self,
        tok: &mut tokenizers::Tokenizer,
        keep: impl Fn(&str) -> bool,
    ) -> Result<(), TokenizerError> {
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if t.is_empty() || !keep(t) {
                continue;
            }
            match self.token_type(i) {
                TYPE_CONTROL | TYPE_UNKNOWN => special.push(AddedToken::from(t.clone(), true)),
                TYPE_USER_DEFINED => {
                    user.push(AddedToken::from(t.clone(), false).normalized(false))
                }
                _ => {}
            }
        }
        tok.add_special_tokens(special).map_err(tokenizers_err)?;
        tok.add_tokens(user).map_err(tokenizers_err)?;
        Ok(())
    }
}

/// `tokenizer.ggml.pre` names that mean Llama-3's pre-tokenizer.
const LLAMA3_PRES: [&str; 6] = [
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "pixtral",
    "lfm2",
];

/// How a byte-level vocabulary prepares text for BPE.
struct BytePre {
    normalizer: Option<NormalizerWrapper>,
    pre_tokenizer: PreTokenizerWrapper,
    /// Look a whole pre-token up in the vocabulary before merging (Llama-3 does; some of its
    /// tokens are unreachable by merges).
    ignore_merges: bool,
}

/// The text preparation of a byte-level vocabulary, by its `tokenizer.ggml.pre` name, as in the
/// `tokenizer.json` of the models that use it.
fn byte_level_pre_tokenizer(pre: &str) -> Result<BytePre, TokenizerError> {
    let split_then_bytes = |regex: &str| -> Result<PreTokenizerWrapper, TokenizerError> {
        let split = Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tokenizers_err)?;
        Ok(PreSequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into())
    };
    let gpt2 = || ByteLevel::new(false, true, true).into();
    Ok(match pre {
        // StarCoder-style: every digit alone, then GPT-2's regex without a prefix space.
        "smollm" | "starcoder" | "refact" => BytePre {
            normalizer: None,
            pre_tokenizer: PreSequence::new(vec![Digits::new(true).into(), gpt2()]).into(),
            ignore_merges: false,
        },
        p if LLAMA3_PRES.contains(&p) => BytePre {
            normalizer: None,
            pre_tokenizer: split_then_bytes(LLAMA3_SPLIT)?,
            ignore_merges: true,
        },
        "smaug-bpe" | "dbrx" => BytePre {
            normalizer: None,
            pre_tokenizer: split_then_bytes(LLAMA3_SPLIT)?,
            ignore_merges: false,
        },
        // Qwen2's tokenizer.json normalizes to NFC first (llama.cpp does not).
        "qwen2" | "deepseek-r1-qwen" | "megrez" => BytePre {
            normalizer: Some(NFC.into()),
            pre_tokenizer: split_then_bytes(QWEN2_SPLIT)?,
            ignore_merges: false,
        },
        other => {
            if !matches!(other, "gpt2" | "gpt-2" | "default") {
                tracing::warn!(pre = other, "unknown GGUF pre-tokenizer, using GPT-2's");
            }
            BytePre {
                normalizer: None,
                pre_tokenizer: gpt2(),
                ignore_merges: false,
            }
        }
    })
}

/// Merges that make HF BPE reproduce SentencePiece BPE: each piece's every two-piece split,
/// best priority first; among equal priorities, longer left pieces first (as transformers does).
fn derive_merges(
    tokens: &[String],
    vocab: &Vocab,
    priority: &[f32],
    mergeable: &[bool],
) -> Vec<(String, String)> {
    let is_piece = |s: &str| vocab.get(s).is_some_and(|&id| mergeable[id as usize]);
    let mut merges: Vec<(f32, usize, usize, u32, u32)> = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        if !mergeable[id] || vocab.get(token) != Some(&(id as u32)) {
            continue;
        }
        for (split, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(split);
            if is_piece(left) && is_piece(right) {
                merges.push((
                    priority[id],
                    left.chars().count(),
                    right.chars().count(),
                    vocab[left],
                    vocab[right],
                ));
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(b.1.cmp(&a.1))
            .then(b.2.cmp(&a.2))
            .then(a.3.cmp(&b.3))
            .then(a.4.cmp(&b.4))
    });
    merges
        .into_iter()
        .map(|(_, _, _, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect()
}

fn tokenizers_err(e: tokenizers::Error) -> TokenizerError {
    TokenizerError::Tokenizers(e.to_string())
}

fn bad_key(key: &str, expected: &'static str) -> TokenizerError {
    TokenizerError::BadKey {
        key: key.to_string(),
        expected,
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::U8(x) => Some(*x as i64),
        Value::I8(x) => Some(*x as i64),
        Value::U16(x) => Some(*x as i64),
        Value::I16(x) => Some(*x as i64),
        Value::U32(x) => Some(*x as i64),
        Value::I32(x) => Some(*x as i64),
        Value::U64(x) => i64::try_from(*x).ok(),
        Value::I64(x) => Some(*x),
        _ => None,
    }
}

fn string(ct: &Content, key: &str) -> Result<Option<String>, TokenizerError> {
    match ct.metadata.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad_key(key, "a string")),
    }
}

fn boolean(ct: &Content, key: &str) -> Result<Option<bool>, TokenizerError> {
    match ct.metadata.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad_key(key, "a bool")),
    }
}

fn id(ct: &Content, key: &str) -> Result<Option<u32>, TokenizerError> {
    match ct.metadata.get(key) {
        None => Ok(None),
        Some(v) => as_i64(v)
            .and_then(|x| u32::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| bad_key(key, "a token id")),
    }
}

fn array<'a>(ct: &'a Content, key: &str) -> Result<Option<&'a Vec<Value>>, TokenizerError> {
    match ct.metadata.get(key) {
        None => Ok(None),
        Some(Value::Array(values)) => Ok(Some(values)),
        Some(_) => Err(bad_key(key, "an array")),
    }
}

fn string_array(ct: &Content, key: &str) -> Result<Option<Vec<String>>, TokenizerError> {
    let Some(values) = array(ct, key)? else {
        return Ok(None);
    };
    values
        .iter()
        .map(|v| match v {
            Value::String(s) => Some(s.clone()),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .map(Some)
        .ok_or_else(|| bad_key(key, "an array of strings"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::test_util;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn pieces_of(tok: &tokenizers::Tokenizer, text: &str) -> Vec<String> {
        let enc = tok.encode(text, false).unwrap();
        enc.get_ids()
            .iter()
            .map(|&id| tok.id_to_token(id).unwrap())
            .collect()
    }

    fn splits(pre: &PreTokenizerWrapper, text: &str) -> Vec<String> {
        let mut s = PreTokenizedString::from(text);
        pre.pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(piece, _, _)| piece.to_string())
            .collect()
    }

    #[test]
    fn smollm_byte_level_merges_digits_and_markup() {
        let vocab = GgufVocab::from_content(&test_util::byte_level_content()).unwrap();
        let tok = vocab.build().unwrap();
        assert_eq!(pieces_of(&tok, "hello world"), ["hello", "Ġworld"]);
        // Digits one by one; no prefix space added to the first word.
        assert_eq!(pieces_of(&tok, "12"), ["1", "2"]);
        let ids = tok.encode("<|im_start|>hello<|im_end|>", false).unwrap();
        assert_eq!(ids.get_ids()[0], 1);
        assert_eq!(*ids.get_ids().last().unwrap(), 2);
        assert_eq!(ids.get_ids().len(), 3);
    }

    #[test]
    fn byte_level_round_trips_multibyte_text() {
        let tok = GgufVocab::from_content(&test_util::byte_level_content())
            .unwrap()
            .build()
            .unwrap();
        let text = "hello 😀 中文\n\tdone";
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        let with_markup = tok.encode("<|im_start|>hi", false).unwrap();
        assert_eq!(tok.decode(with_markup.get_ids(), true).unwrap(), "hi");
    }

    #[test]
    fn llama3_and_qwen2_regexes_compile_and_split() {
        let llama3 = byte_level_pre_tokenizer("llama-bpe").unwrap();
        assert!(llama3.ignore_merges);
        assert_eq!(
            splits(&llama3.pre_tokenizer, "DON'T 12345 go!!\n\n"),
            ["DON", "'T", "Ġ", "123", "45", "Ġgo", "!!ĊĊ"]
        );
        let qwen2 = byte_level_pre_tokenizer("qwen2").unwrap();
        assert!(qwen2.normalizer.is_some() && !qwen2.ignore_merges);
        assert_eq!(splits(&qwen2.pre_tokenizer, "a 12"), ["a", "Ġ", "1", "2"]);
    }

    #[test]
    fn sentencepiece_uses_scores_prefix_space_and_byte_fallback() {
        let vocab = GgufVocab::from_content(&test_util::sentencepiece_content()).unwrap();
        assert!(vocab.add_bos_token && vocab.add_space_prefix);
        let tok = vocab.build().unwrap();
        assert_eq!(pieces_of(&tok, "hello world"), ["▁hello", "▁world"]);
        assert_eq!(pieces_of(&tok, "hold"), ["▁h", "o", "ld"]);
        // "é" is not a piece: its UTF-8 bytes stand in.
        assert_eq!(pieces_of(&tok, "é"), ["▁", "<0xC3>", "<0xA9>"]);
        let ids = tok
            .encode("hello é world", false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(tok.decode(&ids, false).unwrap(), "hello é world");
        let ids = tok.encode("<s>hello", false).unwrap().get_ids().to_vec();
        assert_eq!(ids[0], 1);
        assert_eq!(tok.decode(&ids, true).unwrap(), "hello");
    }

    #[test]
    fn gemma_ranks_derived_merges_by_position_not_score() {
        // "ab" comes first in the file, "bc" scores better: the two orders disagree on "abc".
        let pieces = [
            ("▁", 0.0),
            ("a", 0.0),
            ("b", 0.0),
            ("c", 0.0),
            ("ab", -5.0),
            ("bc", -1.0),
        ];
        let build = |arch| {
            let ct = test_util::sentencepiece_content_with(&pieces, arch);
            GgufVocab::from_content(&ct).unwrap().build().unwrap()
        };
        let gemma = build("gemma3");
        let llama = build("llama");
        // Gemma 3 files add no prefix space, Llama-2 ones do.
        assert_eq!(pieces_of(&gemma, "abc"), ["ab", "c"]);
        assert_eq!(pieces_of(&llama, "abc"), ["▁", "a", "bc"]);
    }

    #[test]
    fn derived_merges_rank_by_score() {
        let tokens: Vec<String> = ["a", "b", "ab", "c", "abc", "bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let scores = [0.0, 0.0, -1.0, 0.0, -2.0, -3.0];
        let merges = derive_merges(&tokens, &vocab, &scores, &[true; 6]);
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            merges,
            [
                pair("a", "b"),
                pair("ab", "c"),
                pair("a", "bc"),
                pair("b", "c")
            ]
        );
    }
}
