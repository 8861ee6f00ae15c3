//! The GGUF-built SmolLM2 tokenizer must tokenize exactly like SmolLM2's `tokenizer.json`.

use std::path::{Path, PathBuf};

use flare::tokenizer::{IncrementalDetokenizer, Tokenizer};

const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const HF_DIR_NAME: &str = "SmolLM2-135M-Instruct-hf";
const FETCH_HINT: &str = "run `python3 models/fetch_smollm2.py --hf` to fetch them";

fn models_dir() -> PathBuf {
    let cache = std::env::var_os("FLARE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is not set");
            Path::new(&home).join(".cache").join("flare")
        });
    cache.join("models")
}

/// Paths of the GGUF file and the HF directory; panics (never skips) when they are missing.
fn model_files() -> (PathBuf, PathBuf) {
    let dir = models_dir();
    let gguf = dir.join(GGUF_NAME);
    let hf = dir.join(HF_DIR_NAME);
    for needed in [gguf.clone(), hf.join("tokenizer.json")] {
        assert!(
            needed.is_file(),
            "{} is missing: {FETCH_HINT} (FLARE_CACHE picks the cache, default ~/.cache/flare)",
            needed.display()
        );
    }
    (gguf, hf)
}

fn gguf_tokenizer(path: &Path) -> Tokenizer {
    let mut file = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    Tokenizer::from_gguf(&content).unwrap()
}

const CURATED: &[&str] = &[
    "",
    " ",
    "  ",
    "\n",
    "\t",
    "a",
    "A",
    "Hello",
    "Hello world",
    "Hello, world!",
    " Hello",
    "Hello ",
    "  leading two spaces",
    "trailing two spaces  ",
    "multiple   spaces   inside",
    "tab\tseparated\tvalues",
    "line one\nline two",
    "windows\r\nline endings\r\n",
    "para one\n\npara two\n\n\n\nfour newlines",
    "What is the capital of France?",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you're right; we've seen they'll do it, and he'd agree.",
    "DON'T SHOUT, I'M HERE",
    "It's John's book, isn't it?",
    "rock 'n' roll",
    "'quoted' and \"double quoted\"",
    "0",
    "7",
    "42",
    "123",
    "1234567890",
    "3.14159",
    "-273.15",
    "1,000,000",
    "1e10",
    "0x1F",
    "2024-01-15",
    "12:30:45",
    "+1 (555) 123-4567",
    "v1.2.3-rc.4",
    "π ≈ 3.14",
    "x² + y³ = z¹",
    "½ cup and ¾ spoon",
    "fullwidth １２３ digits",
    "Arabic-Indic ٠١٢٣ digits",
    "Roman Ⅻ numeral",
    "2+2=4",
    "10%",
    "$9.99",
    "€5,00",
    "£3",
    "¥100",
    "def add(a, b):\n    return a + b\n",
    "fn main() {\n    println!(\"hi\");\n}",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "{\"key\": \"value\", \"n\": [1, 2, 3]}",
    "<div class=\"x\">Hello</div>",
    "SELECT * FROM users WHERE id = 42;",
    "#include <stdio.h>",
    "https://example.com/path?query=1&b=2#frag",
    "user.name+tag@example.co.uk",
    "# Title\n\n- item 1\n- item 2\n\n**bold** _italic_ `code`",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "😀",
    "Hi 😀!",
    "👍🏽",
    "👨\u{200d}👩\u{200d}👧\u{200d}👦 family",
    "🇫🇷🇯🇵 flags",
    "❤\u{fe0f} love",
    "emoji at end 🎉",
    "中文",
    "你好，世界！",
    "日本語のテキストです。",
    "カタカナ ひらがな 漢字",
    "한국어 텍스트",
    "Привет, мир!",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "Tiếng Việt có dấu",
    "café naïve résumé façade",
    "Ångström Øresund Łódź",
    "straße ẞ",
    "e\u{301} combining accent",
    "zero\u{200b}width space",
    "\u{feff}BOM at start",
    "control \u{7} bell and \u{0} nul",
    "non-breaking\u{a0}space",
    "“smart quotes” and ‘single’",
    "em—dash and en–dash…",
    "→ ← ↑ ↓ ⇒ ∀x ∃y ∑ ∫",
    "©®™ §¶ †‡",
    "!!!???...",
    "------",
    "======",
    "********",
    "____init____",
    "~~~",
    "@@@",
    "<<>>",
    "((()))",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "Supercalifragilisticexpialidocious",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "CamelCaseIdentifierName",
    "snake_case_identifier_name",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>text",
    " <|im_start|> spaced ",
    "<|im_start",
    "im_end|>",
    "<|unknown|>",
    "<repo_name>flare<file_sep>src/lib.rs",
    "<jupyter_code>print(1)<jupyter_output>1",
    "<filename>a.py\n<gh_stars>10",
    "<|im_start|><|im_start|>",
    "The year 1999 and 2000.",
    "Call 911 now",
    "Room 101, floor 3",
    "A1B2C3",
    "abc123def456",
    "3rd 2nd 1st 4th",
    "e.g. i.e. etc. Mr. Dr.",
    "U.S.A.",
    "a-b-c",
    "a/b/c",
    "C:\\Users\\me\\file.txt",
    "~/.cache/flare",
    "  \n  \n",
    " \t \n",
    "\n\nHello",
    "Hello\n\n",
    "word\t\tword",
    "   ",
    "\r",
    "\r\n",
];

const WORDS: [&str; 20] = [
    "the",
    "The",
    "model",
    "tokenizer",
    "SmolLM2",
    "GPU",
    "inference",
    "naïve",
    "東京",
    "über",
    "rust",
    "Python",
    "don't",
    "it's",
    "HELLO",
    "world",
    "x",
    "batch",
    "cache",
    "attention",
];
const NUMS: [&str; 10] = [
    "1", "12", "123", "2024", "3.5", "0.001", "99%", "1/2", "-7", "10,000",
];
const PUNCT: [&str; 10] = [".", ",", "!", "?", ":", ";", " -", "...", " (", ")"];

/// Hand-picked edge cases plus 130 generated word/number/punctuation mixes.
fn own_corpus() -> Vec<String> {
    let mut out: Vec<String> = CURATED.iter().map(|s| s.to_string()).collect();
    for i in 0..130 {
        let w1 = WORDS[i % 20];
        let w2 = WORDS[(i / 20 * 7 + i + 3) % 20];
        let n = NUMS[(i / 5 + i) % 10];
        let p = PUNCT[(i / 3) % 10];
        out.push(match i % 5 {
            0 => format!("{w1} {n}{p}"),
            1 => format!("{w1}{p} {w2} {n}"),
            2 => format!(" {w1}  {w2}\n{n}"),
            3 => format!("{n}{w1}{p}{w2}"),
            _ => format!("{} {}{p}\t{n}", w1.to_uppercase(), w2.to_lowercase()),
        });
    }
    out
}

/// `tests/fixtures/tokenizer_corpus.json` (a list of `{"text", "ids"}`), when it exists.
fn fixture_corpus() -> Option<Vec<(String, Vec<u32>)>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_corpus.json");
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).expect("fixture is not JSON");
    let cases = match &value {
        serde_json::Value::Array(cases) => cases.clone(),
        serde_json::Value::Object(o) => o
            .values()
            .find_map(|v| v.as_array().cloned())
            .expect("fixture object holds no list"),
        _ => panic!("fixture is neither a list nor an object"),
    };
    Some(
        cases
            .iter()
            .map(|case| {
                let text = case["text"]
                    .as_str()
                    .expect("case without text")
                    .to_string();
                let ids = case["ids"]
                    .as_array()
                    .expect("case without ids")
                    .iter()
                    .map(|id| id.as_u64().unwrap() as u32)
                    .collect();
                (text, ids)
            })
            .collect(),
    )
}

#[test]
fn gguf_tokenizer_matches_tokenizer_json_on_corpus() {
    let (gguf, hf) = model_files();
    let ours = gguf_tokenizer(&gguf);
    let reference = tokenizers::Tokenizer::from_file(hf.join("tokenizer.json")).unwrap();

    let mut cases: Vec<(String, Option<Vec<u32>>)> =
        own_corpus().into_iter().map(|t| (t, None)).collect();
    if let Some(fixture) = fixture_corpus() {
        cases.extend(fixture.into_iter().map(|(t, ids)| (t, Some(ids))));
    }
    assert!(cases.len() >= 220, "corpus too small: {}", cases.len());

    let mut failures = Vec::new();
    for (text, fixture_ids) in &cases {
        let got = ours.encode(text, false).unwrap();
        let want = reference
            .encode(text.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        if got != want {
            failures.push(format!("{text:?}: gguf {got:?} vs tokenizer.json {want:?}"));
        }
        if let Some(ids) = fixture_ids {
            if &got != ids {
                failures.push(format!("{text:?}: gguf {got:?} vs fixture {ids:?}"));
            }
        }
        let back = ours.decode(&got, false).unwrap();
        if &back != text {
            failures.push(format!("{text:?}: decodes back to {back:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn gguf_and_hf_dir_agree_on_special_tokens() {
    let (gguf, hf) = model_files();
    let from_gguf = gguf_tokenizer(&gguf);
    let from_hf = Tokenizer::from_hf_dir(&hf).unwrap();
    for tok in [&from_gguf, &from_hf] {
        assert_eq!(tok.vocab_size(), 49152);
        assert_eq!(tok.bos_token_id, Some(1));
        assert_eq!(tok.bos_token.as_deref(), Some("<|im_start|>"));
        assert_eq!(tok.eos_token_ids, vec![2]);
        assert_eq!(tok.eos_token.as_deref(), Some("<|im_end|>"));
        assert!(!tok.add_bos_token);
        let template = tok.chat_template.as_deref().unwrap();
        assert!(template.contains("You are a helpful AI assistant named SmolLM"));
    }
    let chat = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n";
    let ids = from_gguf.encode(chat, true).unwrap();
    assert_eq!(ids, from_hf.encode(chat, true).unwrap());
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 1);
    assert_eq!(
        from_gguf.decode(&ids, true).unwrap(),
        "user\nHi there\nassistant\n"
    );
}

#[test]
fn streaming_decode_matches_full_decode() {
    let (gguf, _) = model_files();
    let tok = gguf_tokenizer(&gguf);
    for text in own_corpus() {
        let ids = tok.encode(&text, false).unwrap();
        let mut detok = IncrementalDetokenizer::new(false);
        let mut streamed = String::new();
        for &id in &ids {
            let delta = detok.step(&tok, id).unwrap();
            assert!(
                !delta.contains('\u{FFFD}'),
                "{text:?}: broken char in {delta:?}"
            );
            streamed.push_str(&delta);
        }
        streamed.push_str(&detok.flush(&tok).unwrap());
        assert_eq!(streamed, tok.decode(&ids, false).unwrap(), "{text:?}");
    }
}

#[test]
fn gguf_chat_template_renders_and_tokenizes_like_tokenizer_json() {
    use flare::chat_template::{ChatMessage, ChatTemplate};
    let (gguf, hf) = model_files();
    let tok = gguf_tokenizer(&gguf);
    let reference = tokenizers::Tokenizer::from_file(hf.join("tokenizer.json")).unwrap();
    let template = ChatTemplate::from_tokenizer(&tok).unwrap().unwrap();
    let prompt = template
        .render(&[ChatMessage::user("What is the capital of France?")], true)
        .unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    let ids = tok.encode(&prompt, false).unwrap();
    assert_eq!(
        ids,
        reference.encode(prompt.as_str(), false).unwrap().get_ids()
    );
    assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 3);
}
