use std::sync::Arc;

use super::*;
use crate::tokenizer::test_util;

const EOS: u32 = 2;

fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(Tokenizer::from_gguf(&test_util::byte_level_content()).unwrap())
}

/// The byte tokens of the test vocabulary: byte `b` is id `3 + b`.
fn byte(b: u8) -> u32 {
    3 + b as u32
}

/// Padding rows past the tokenizer, as a model's embedding often has.
fn guidance() -> Guidance {
    let tok = tokenizer();
    let vocab = tok.vocab_size() + 5;
    Guidance::new(tok, vocab, &[EOS]).unwrap()
}

fn allowed(m: &mut GrammarMatcher, vocab: usize) -> Vec<u32> {
    let mut logits = vec![0.0f32; vocab];
    m.apply_mask(&mut logits).unwrap();
    (0..vocab as u32)
        .filter(|&i| logits[i as usize].is_finite())
        .collect()
}

#[test]
fn special_tokens_are_marked_and_padding_is_empty() {
    let tok = tokenizer();
    let bytes = token_bytes(&tok, tok.vocab_size() + 3, &[EOS]).unwrap();
    assert_eq!(bytes.len(), tok.vocab_size() + 3);
    for (id, b) in bytes.iter().enumerate().take(3) {
        assert_eq!(b[0], toktrie::TokTrie::SPECIAL_TOKEN_MARKER, "{id}");
    }
    assert_eq!(bytes[byte(b'a') as usize], b"a");
    assert_eq!(bytes[byte(b' ') as usize], b" ");
    assert!(bytes[tok.vocab_size()..].iter().all(|b| b.is_empty()));
}

#[test]
fn regex_masks_allow_only_matching_tokens_and_eos_at_the_end() {
    let g = guidance();
    let vocab = g.vocab_size();
    let mut m = g.matcher(&Constraint::Regex("ab+c".into())).unwrap();
    assert_eq!(allowed(&mut m, vocab), vec![byte(b'a')]);
    assert!(!m.commit(byte(b'a')).unwrap());
    assert_eq!(allowed(&mut m, vocab), vec![byte(b'b')]);
    assert!(!m.commit(byte(b'b')).unwrap());
    let next = allowed(&mut m, vocab);
    assert!(next.contains(&byte(b'b')) && next.contains(&byte(b'c')));
    assert!(!next.contains(&EOS) && !next.iter().any(|&t| t < 3 || t as usize >= vocab - 5));
    m.commit(byte(b'c')).unwrap();
    assert!(m.is_accepting());
    assert_eq!(allowed(&mut m, vocab), vec![EOS]);
}

#[test]
fn rollback_returns_to_an_earlier_state() {
    let g = guidance();
    let vocab = g.vocab_size();
    let mut m = g.matcher(&Constraint::Regex("ab+c".into())).unwrap();
    for t in [b'a', b'b', b'b'] {
        m.commit(byte(t)).unwrap();
    }
    let after_abb = allowed(&mut m, vocab);
    m.rollback(2).unwrap();
    assert_eq!(allowed(&mut m, vocab), vec![byte(b'b')]);
    m.commit(byte(b'b')).unwrap();
    m.commit(byte(b'b')).unwrap();
    assert_eq!(allowed(&mut m, vocab), after_abb);
    // A token the grammar does not allow is an error, not a silent acceptance.
    assert!(m.commit(byte(b'x')).is_err());
}

#[test]
fn choice_completes_and_stops() {
    let g = guidance();
    let c = Constraint::Choice(vec!["yes".into(), "no".into()]);
    let mut m = g.matcher(&c).unwrap();
    let vocab = g.vocab_size();
    let first = allowed(&mut m, vocab);
    assert!(first.contains(&byte(b'y')) && first.contains(&byte(b'n')));
    assert!(!first.contains(&byte(b'x')));
    m.commit(byte(b'n')).unwrap();
    let done = m.commit(byte(b'o')).unwrap();
    // Complete: nothing but EOS may follow (llguidance may stop right away or on EOS).
    assert!(done || allowed(&mut m, vocab) == vec![EOS]);
}

#[test]
fn json_schema_is_compact_and_cached() {
    let g = guidance();
    let c = Constraint::JsonSchema(json!({"type": "object", "properties": {"a": {"const": 1}},
        "required": ["a"], "additionalProperties": false}));
    g.compile(&c).unwrap();
    assert!(g.cached(&grammar_key(&c)));
    let mut m = g.matcher(&c).unwrap();
    let vocab = g.vocab_size();
    for b in br#"{"a": 1}"# {
        assert!(
            allowed(&mut m, vocab).contains(&byte(*b)),
            "byte {:?}",
            *b as char
        );
        m.commit(byte(*b)).unwrap();
    }
    assert!(m.is_accepting());
}

#[test]
fn invalid_grammars_are_errors_naming_the_problem() {
    let g = guidance();
    for c in [
        Constraint::Regex("a(b".into()),
        Constraint::JsonSchema(json!({"type": "no-such-type"})),
        Constraint::JsonSchema(json!([1, 2])),
        Constraint::Lark("start: undefined_rule".into()),
        Constraint::Choice(vec![]),
    ] {
        match g.compile(&c) {
            Err(GuidanceError::Invalid(msg)) => assert!(!msg.is_empty(), "{c:?}"),
            other => panic!("{c:?}: {other:?}"),
        }
    }
}

#[test]
fn compilation_past_the_time_limit_is_a_timeout() {
    let g = Arc::new(guidance().with_compile_timeout(std::time::Duration::from_nanos(1)));
    // Wide enough that compiling takes milliseconds, not a race with the 1 ns limit.
    let properties: serde_json::Map<String, Value> = (0..200)
        .map(|i| {
            (
                format!("f{i}"),
                json!({"type": "string", "format": "email"}),
            )
        })
        .collect();
    let c = Constraint::JsonSchema(json!({"type": "object", "properties": properties}));
    let r = g.compile_within_limit(&c);
    assert!(matches!(r, Err(GuidanceError::Timeout(_))), "{r:?}");
}

fn markers(opener: Option<&str>, closer: &str) -> crate::request::ReasoningMarkers {
    crate::request::ReasoningMarkers {
        opener: opener.map(str::to_string),
        closer: closer.into(),
    }
}

fn commit_text(m: &mut GrammarMatcher, text: &str) {
    for b in text.bytes() {
        m.commit(byte(b)).unwrap();
    }
}

#[test]
fn reasoning_is_free_text_without_eos_and_the_grammar_binds_the_answer() {
    let g = guidance();
    let vocab = g.vocab_size();
    let c = Constraint::Regex("xy+".into());
    let mut m = g.matcher_after(&c, Some(&markers(None, "</t>"))).unwrap();
    let free = allowed(&mut m, vocab);
    assert!(free.contains(&byte(b'q')) && free.contains(&byte(b'<')));
    assert!(
        !free.contains(&EOS),
        "the reasoning may not end the sequence"
    );
    assert!(!m.is_accepting());
    // A closer split over tokens is found.
    commit_text(&mut m, "think </t");
    assert!(allowed(&mut m, vocab).contains(&byte(b'q')));
    commit_text(&mut m, ">");
    assert_eq!(allowed(&mut m, vocab), vec![byte(b'x')]);
    commit_text(&mut m, "xy");
    assert!(m.is_accepting());

    // Rolling back over the closer reopens the reasoning, and going forward again closes it.
    m.rollback(3).unwrap();
    assert!(allowed(&mut m, vocab).contains(&byte(b'q')));
    commit_text(&mut m, ">");
    assert_eq!(allowed(&mut m, vocab), vec![byte(b'x')]);
    assert!(m.rollback(100).is_err(), "more than was committed");
}

#[test]
fn an_opener_token_is_offered_beside_the_grammar_at_the_start() {
    let g = guidance();
    let vocab = g.vocab_size();
    let c = Constraint::Regex("xy+".into());
    let qwen_like = markers(Some("a"), "b");

    // The model opens its reasoning: free text until the closer, then the grammar.
    let mut m = g.matcher_after(&c, Some(&qwen_like)).unwrap();
    assert_eq!(allowed(&mut m, vocab), vec![byte(b'a'), byte(b'x')]);
    commit_text(&mut m, "a");
    assert!(allowed(&mut m, vocab).contains(&byte(b'z')));
    commit_text(&mut m, "zzb");
    assert_eq!(allowed(&mut m, vocab), vec![byte(b'x')]);

    // The model answers at once: the grammar binds from the first token.
    let mut m = g.matcher_after(&c, Some(&qwen_like)).unwrap();
    commit_text(&mut m, "x");
    assert_eq!(allowed(&mut m, vocab), vec![byte(b'y')]);

    // An opener that is no single token cannot be offered: the grammar binds at once.
    let mut m = g
        .matcher_after(&c, Some(&markers(Some("<think>"), "</think>")))
        .unwrap();
    assert_eq!(allowed(&mut m, vocab), vec![byte(b'x')]);
}
