//! Tiny GGUF tokenizer metadata built in code, for unit tests that need a real tokenizer.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the rest move up
/// past U+0100 so every byte has a visible character.
pub fn bytes_to_unicode() -> Vec<char> {
    let mut table = vec!['\0'; 256];
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        table[b as usize] = if printable {
            b as char
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap()
        };
    }
    table
}

fn byte_level(s: &str) -> String {
    let table = bytes_to_unicode();
    s.bytes().map(|b| table[b as usize]).collect()
}

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// Merges in raw text; spelled in the byte alphabet when the vocabulary is built.
const MERGES: [(&str, &str); 8] = [
    ("h", "e"),
    ("l", "l"),
    ("he", "ll"),
    ("hell", "o"),
    (" ", "w"),
    ("o", "r"),
    (" w", "or"),
    (" wor", "ld"),
];

fn byte_level_parts() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut types = vec![3; tokens.len()];
    for c in bytes_to_unicode() {
        tokens.push(c.to_string());
        types.push(1);
    }
    // "ld" is needed as a piece for the last merge.
    let mut merges = vec![("l".to_string(), "d".to_string())];
    merges.extend(MERGES.iter().map(|(a, b)| (a.to_string(), b.to_string())));
    let mut merge_strings = Vec::new();
    for (a, b) in merges {
        let (a, b) = (byte_level(&a), byte_level(&b));
        tokens.push(format!("{a}{b}"));
        types.push(1);
        merge_strings.push(format!("{a} {b}"));
    }
    (tokens, types, merge_strings)
}

/// Number of tokens in [`byte_level_content`].
pub fn byte_level_content_vocab_len() -> usize {
    byte_level_parts().0.len()
}

fn strings(items: impl IntoIterator<Item = String>) -> Value {
    Value::Array(items.into_iter().map(Value::String).collect())
}

fn content(metadata: HashMap<String, Value>) -> Content {
    Content {
        magic: VersionedMagic::GgufV3,
        metadata,
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    }
}

/// A byte-level BPE vocabulary in SmolLM2's shape: three control tokens, the 256 byte
/// characters, and merges spelling "hello" and " world".
pub fn byte_level_content() -> Content {
    let (tokens, types, merges) = byte_level_parts();
    let mut md = HashMap::new();
    md.insert("general.architecture".into(), Value::String("llama".into()));
    md.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
    md.insert("tokenizer.ggml.pre".into(), Value::String("smollm".into()));
    md.insert("tokenizer.ggml.tokens".into(), strings(tokens));
    md.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(types.into_iter().map(Value::I32).collect()),
    );
    md.insert("tokenizer.ggml.merges".into(), strings(merges));
    md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
    md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
    md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
    md.insert(
        "tokenizer.chat_template".into(),
        Value::String("{{ messages }}".into()),
    );
    content(md)
}

/// Pieces of the SentencePiece vocabulary, best score first.
pub const SPM_PIECES: [&str; 20] = [
    "▁hello", "▁world", "▁wor", "▁he", "llo", "▁h", "▁w", "ll", "or", "ld", "he", "▁", "h", "e",
    "l", "o", "w", "r", "d", "a",
];

/// A SentencePiece BPE vocabulary in Llama-2's shape: `<unk>`, `<s>`, `</s>`, 256 byte tokens,
/// then [`SPM_PIECES`] with descending scores and no merges.
pub fn sentencepiece_content() -> Content {
    let pieces: Vec<(&str, f32)> = SPM_PIECES
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, -(i as f32)))
        .collect();
    sentencepiece_content_with(&pieces, "llama")
}

/// Like [`sentencepiece_content`] with the given pieces and scores, for `architecture`.
pub fn sentencepiece_content_with(pieces: &[(&str, f32)], architecture: &str) -> Content {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (piece, score) in pieces {
        tokens.push(piece.to_string());
        types.push(1);
        scores.push(*score);
    }
    let mut md = HashMap::new();
    md.insert(
        "general.architecture".into(),
        Value::String(architecture.into()),
    );
    md.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    md.insert("tokenizer.ggml.tokens".into(), strings(tokens));
    md.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(types.into_iter().map(Value::I32).collect()),
    );
    md.insert(
        "tokenizer.ggml.scores".into(),
        Value::Array(scores.into_iter().map(Value::F32).collect()),
    );
    md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
    md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
    md.insert("tokenizer.ggml.unknown_token_id".into(), Value::U32(0));
    content(md)
}
