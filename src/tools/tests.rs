//! Every parser on canned model output: calls found, malformed markup returned as content, and
//! streamed deltas (pushed one character at a time) reassembling into the non-streamed result.

use super::forced::{Named, Required};
use super::reasoning::{split, ReasoningKind, ReasoningStream};
use super::*;

/// Content and (name, arguments) of a stream run over `text` in `step`-character pieces.
fn stream(format: Box<dyn CallFormat>, text: &str, step: usize) -> (String, Vec<(String, String)>) {
    let mut s = ToolStream::new(format);
    let mut deltas = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(step) {
        deltas.extend(s.push(&piece.iter().collect::<String>()));
    }
    deltas.extend(s.finish());
    let mut content = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    for d in deltas {
        match d {
            ToolDelta::Content(c) => content.push_str(&c),
            ToolDelta::Start { index, id, name } => {
                assert_eq!(index, calls.len());
                assert!(id.starts_with("call_"));
                calls.push((name, String::new()));
            }
            ToolDelta::Args { index, text } => {
                assert!(!text.is_empty());
                calls[index].1.push_str(&text);
            }
        }
    }
    (content, calls)
}

fn whole(format: &dyn CallFormat, text: &str) -> (Option<String>, Vec<(String, String)>) {
    let p = parse(format, text);
    let calls = p.calls.into_iter().map(|c| (c.name, c.arguments)).collect();
    (p.content, calls)
}

/// Checks the whole parse, and that every streaming granularity gives the same.
fn check(
    kind: impl Fn() -> Box<dyn CallFormat>,
    text: &str,
    content: Option<&str>,
    calls: &[(&str, &str)],
) {
    let (c, k) = whole(kind().as_ref(), text);
    assert_eq!(c.as_deref(), content, "content of {text:?}");
    let want: Vec<(String, String)> = calls
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(k, want, "calls of {text:?}");
    for step in [1, 2, 3, 7, 1000] {
        let (sc, sk) = stream(kind(), text, step);
        assert_eq!(
            sc,
            content.unwrap_or(""),
            "streamed content of {text:?} by {step}"
        );
        assert_eq!(sk, want, "streamed calls of {text:?} by {step}");
    }
}

fn hermes() -> Box<dyn CallFormat> {
    ParserKind::Hermes.format()
}

#[test]
fn hermes_calls_and_content() {
    check(
        hermes,
        "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\", \"days\": [1, 2]}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>",
        Some("Let me check."),
        &[("get_weather", "{\"city\": \"Zürich\", \"days\": [1, 2]}"), ("get_time", "{}")],
    );
    check(
        hermes,
        "No tools needed: 1 < 2.",
        Some("No tools needed: 1 < 2."),
        &[],
    );
    // EOS right after the object.
    check(
        hermes,
        "<tool_call>{\"arguments\": {\"a\": 1}, \"name\": \"f\"}",
        None,
        &[("f", "{\"a\": 1}")],
    );
}

#[test]
fn hermes_malformed_is_content() {
    for bad in [
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": }\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}",
        "<tool_call>not json</tool_call>",
        "<tool_call>\n{\"arguments\": {}}\n</tool_call>",
        "<tool_call>{\"name\": \"f\"} trailing</tool_call>",
    ] {
        let (c, k) = whole(hermes().as_ref(), bad);
        assert_eq!((c.as_deref(), k.len()), (Some(bad), 0), "{bad}");
    }
}

#[test]
fn streaming_sends_arguments_as_generated() {
    let mut s = ToolStream::new(hermes());
    assert!(s.push("<tool_call>\n{\"name\": \"f").is_empty());
    let d = s.push("\", ");
    assert!(
        matches!(&d[..], [ToolDelta::Start { name, .. }] if name == "f"),
        "{d:?}"
    );
    let d = s.push("\"arguments\": {\"city\": \"Pa");
    assert_eq!(
        d,
        vec![ToolDelta::Args {
            index: 0,
            text: "{\"city\": \"Pa".into()
        }]
    );
    let d = s.push("ris\"}}\n</tool_call>");
    assert_eq!(
        d,
        vec![ToolDelta::Args {
            index: 0,
            text: "ris\"}".into()
        }]
    );
    assert!(s.finish().is_empty());
    // A partial opening tag is held back, then released as text when it is not one.
    let mut s = ToolStream::new(hermes());
    assert_eq!(s.push("a <tool"), vec![ToolDelta::Content("a".into())]);
    assert_eq!(s.push("s!"), vec![ToolDelta::Content(" <tools!".into())]);
}

#[test]
fn llama3_json() {
    let k = || ParserKind::Llama3Json.format();
    check(
        k,
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
        None,
        &[("get_weather", "{\"city\": \"Paris\"}")],
    );
    check(k, "<|python_tag|>{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"arguments\": {\"x\": 1}}", None, &[("a", "{}"), ("b", "{\"x\": 1}")]);
    check(k, "The answer is 4.", Some("The answer is 4."), &[]);
    let bad = "{\"name\": \"f\", \"parameters\": {\"x\": 1} oops";
    assert_eq!(whole(k().as_ref(), bad), (Some(bad.to_string()), vec![]));
    let bad = "{\"not_a_call\": true}";
    assert_eq!(whole(k().as_ref(), bad), (Some(bad.to_string()), vec![]));
}

#[test]
fn mistral_both_syntaxes() {
    let k = || ParserKind::Mistral.format();
    check(k, "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"a\": 1}}, {\"name\": \"g\", \"arguments\": {}}]", None, &[("f", "{\"a\": 1}"), ("g", "{}")]);
    check(
        k,
        "Sure.[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]f[ARGS]{}",
        Some("Sure."),
        &[("get_weather", "{\"city\": \"Paris\"}"), ("f", "{}")],
    );
    let bad = "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"a\": 1}";
    assert_eq!(whole(k().as_ref(), bad), (Some(bad.to_string()), vec![]));
}

#[test]
fn deepseek_v3_and_v31() {
    let k = || ParserKind::DeepSeekV3.format();
    let v3 = "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    check(
        k,
        v3,
        Some("Checking."),
        &[("get_weather", "{\"city\": \"Paris\"}"), ("get_time", "{}")],
    );
    let v31 = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Oslo\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    check(k, v31, None, &[("get_weather", "{\"city\": \"Oslo\"}")]);
    let bad = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{\"a\": ]\n```";
    assert_eq!(whole(k().as_ref(), bad), (Some(bad.to_string()), vec![]));
}

#[test]
fn gpt_oss_calls() {
    let k = || ParserKind::GptOss.format();
    let t = "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}<|call|>";
    check(k, t, None, &[("get_weather", "{\"city\":\"Paris\"}")]);
    check(
        k,
        "<|channel|>final<|message|>Hello!<|return|>",
        Some("Hello!"),
        &[],
    );
    let bad = "<|channel|>commentary to=functions.f<|message|>{oops<|call|>";
    assert_eq!(whole(k().as_ref(), bad), (Some(bad.to_string()), vec![]));
}

#[test]
fn forced_formats() {
    let named = || -> Box<dyn CallFormat> { Box::new(Named("get_weather".into())) };
    check(
        named,
        "{\"city\": \"Paris\"}",
        None,
        &[("get_weather", "{\"city\": \"Paris\"}")],
    );
    let req = || -> Box<dyn CallFormat> { Box::new(Required) };
    check(
        req,
        "[{\"name\": \"a\", \"parameters\": {\"x\": [1]}}, {\"name\": \"b\", \"parameters\": {}}]",
        None,
        &[("a", "{\"x\": [1]}"), ("b", "{}")],
    );
    let bad = "[{\"name\": \"a\", \"parameters\": {";
    assert_eq!(whole(req().as_ref(), bad), (Some(bad.to_string()), vec![]));
    assert_eq!(
        whole(named().as_ref(), "Paris"),
        (Some("Paris".into()), vec![])
    );
}

#[test]
fn required_schema_lists_every_tool() {
    let tools = [
        serde_json::json!({"type": "function", "function": {"name": "a", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}),
        serde_json::json!({"type": "function", "function": {"name": "b"}}),
    ];
    let s = forced::required_schema(&tools, false);
    assert_eq!(s["maxItems"], 1);
    assert_eq!(
        s["items"]["anyOf"][1]["properties"]["parameters"],
        serde_json::json!({"type": "object"})
    );
    assert_eq!(s["items"]["anyOf"][0]["properties"]["name"]["enum"][0], "a");
    assert!(forced::required_schema(&tools, true)
        .get("maxItems")
        .is_none());
}

#[test]
fn detects_format_from_template() {
    assert_eq!(
        ParserKind::detect("...<tool_call>\\n{...}</tool_call>"),
        Some(ParserKind::Hermes)
    );
    assert_eq!(
        ParserKind::detect("{{ '<｜tool▁calls▁begin｜>' }}"),
        Some(ParserKind::DeepSeekV3)
    );
    assert_eq!(
        ParserKind::detect("[TOOL_CALLS]"),
        Some(ParserKind::Mistral)
    );
    assert_eq!(ParserKind::detect("<|channel|>"), Some(ParserKind::GptOss));
    assert_eq!(ParserKind::detect("{{ message.content }}"), None);
}

fn reason_stream(kind: ReasoningKind, text: &str) -> (String, String) {
    let mut s = ReasoningStream::new(kind);
    let (mut r, mut a) = (String::new(), String::new());
    for c in text.chars() {
        let (dr, da) = s.push(&c.to_string());
        r.push_str(&dr);
        a.push_str(&da);
    }
    let (dr, da) = s.finish();
    (r + &dr, a + &da)
}

#[test]
fn reasoning_split_whole_and_streamed() {
    let cases = [
        (ReasoningKind::Qwen3, "<think>\nHmm, 2+2.\n</think>\n\nIt is 4.", Some("\nHmm, 2+2.\n"), "It is 4."),
        (ReasoningKind::Qwen3, "It is 4.", None, "It is 4."),
        (ReasoningKind::Qwen3, "<think>unfinished", Some("unfinished"), ""),
        (ReasoningKind::DeepSeekR1, "Hmm.</think>4", Some("Hmm."), "4"),
        (ReasoningKind::DeepSeekR1, "<think>Hmm.</think>\n4 </thin", Some("Hmm."), "4 </thin"),
        (
            ReasoningKind::GptOss,
            "<|channel|>analysis<|message|>User wants weather.<|end|><|start|>assistant<|channel|>final<|message|>Sunny.<|return|>",
            Some("User wants weather."),
            "Sunny.",
        ),
    ];
    for (kind, text, reasoning, answer) in cases {
        let (r, a) = split(kind, text);
        assert_eq!((r.as_deref(), a.as_str()), (reasoning, answer), "{text}");
        let (sr, sa) = reason_stream(kind, text);
        assert_eq!(
            (sr.as_str(), sa.as_str()),
            (reasoning.unwrap_or(""), answer),
            "streamed {text}"
        );
    }
}

#[test]
fn gpt_oss_reasoning_then_call() {
    let t = "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}<|call|>";
    let (r, answer) = split(ReasoningKind::GptOss, t);
    assert_eq!(r.as_deref(), Some("Need weather."));
    let (c, calls) = whole(ParserKind::GptOss.format().as_ref(), &answer);
    assert_eq!(c, None);
    assert_eq!(
        calls,
        vec![(
            "get_weather".to_string(),
            "{\"city\":\"Paris\"}".to_string()
        )]
    );
}
