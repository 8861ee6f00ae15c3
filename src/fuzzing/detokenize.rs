//! Fuzz target `detokenize`: token ids streamed one at a time through
//! [`IncrementalDetokenizer`]. The deltas (and the flush) must add up to exactly the decode of
//! all ids at once, for a byte-level BPE and a SentencePiece vocabulary built in code and the
//! tiny Llama fixture's `tokenizer.json`, with and without special tokens skipped. Where the
//! ids' bytes are not valid UTF-8 the two only agree up to the first invalid run (see below).
//!
//! Bytes: the first picks the tokenizer (low bits) and `skip_special_tokens` (0x80); the rest,
//! two bytes per id (little-endian, modulo the vocabulary), at most [`MAX_IDS`] ids.

use std::path::Path;
use std::sync::OnceLock;

use crate::tokenizer::{test_util, IncrementalDetokenizer, Tokenizer};

/// Enough for multi-token characters and context windows; bounded so an input stays fast.
pub const MAX_IDS: usize = 512;

fn tokenizers() -> &'static [(&'static str, Tokenizer)] {
    static T: OnceLock<Vec<(&'static str, Tokenizer)>> = OnceLock::new();
    T.get_or_init(|| {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
        vec![
            (
                "byte-level",
                Tokenizer::from_gguf(&test_util::byte_level_content()).expect("byte-level"),
            ),
            (
                "sentencepiece",
                Tokenizer::from_gguf(&test_util::sentencepiece_content()).expect("sentencepiece"),
            ),
            (
                "tiny-llama",
                Tokenizer::from_hf_dir(fixture).expect("tests/fixtures/tiny-llama tokenizer"),
            ),
        ]
    })
}

pub fn fuzz(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let all = tokenizers();
    let (name, tok) = &all[(head & 0x7F) as usize % all.len()];
    let skip = head & 0x80 != 0;
    let vocab = tok.vocab_size() as u32;
    let ids: Vec<u32> = rest
        .chunks_exact(2)
        .take(MAX_IDS)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32 % vocab)
        .collect();
    let mut detok = IncrementalDetokenizer::new(skip);
    let mut streamed = String::new();
    for &id in &ids {
        match detok.step(tok, id) {
            Ok(delta) => streamed.push_str(&delta),
            // An id the tokenizer cannot decode: an error, not a panic; nothing to compare.
            Err(_) => return,
        }
    }
    let Ok(rest) = detok.flush(tok) else { return };
    streamed.push_str(&rest);
    let whole = tok
        .decode(&ids, skip)
        .expect("ids that stream without error decode at once");
    if whole.contains(REPLACEMENT) {
        // Invalid UTF-8 in the ids' bytes. A SentencePiece byte-fallback decode then replaces
        // every byte of the invalid run with U+FFFD, valid ASCII bytes included, so bytes a
        // stream already emitted (correctly, while the run was still valid) are U+FFFD in the
        // whole decode: the two cannot agree. The stream must still end, and agree on the
        // valid text before the first replacement.
        let valid = &whole[..whole.find(REPLACEMENT).expect("contains it")];
        assert!(
            streamed.starts_with(valid),
            "{name} (skip {skip}): streamed {streamed:?} and decoded {whole:?} differ before \
             any invalid byte: {ids:?}"
        );
        return;
    }
    assert_eq!(streamed, whole, "{name} (skip {skip}): {ids:?}");
}

const REPLACEMENT: char = '\u{FFFD}';
