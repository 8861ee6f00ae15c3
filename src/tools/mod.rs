//! Tool calling: model output in a family's call format turned into OpenAI `tool_calls`, whole
//! or as stream deltas, and the JSON schema that forces a call for `tool_choice: "required"` or
//! a named tool.
//!
//! Every format is one `CallFormat::scan` over the text generated so far. A scan of a prefix is
//! a prefix of the scan of the whole (text that may still become a marker is held back), so the
//! stream sends each piece once and the deltas reassemble into exactly the non-streamed result.

mod deepseek;
pub mod forced;
mod gpt_oss;
pub mod harmony;
mod hermes;
pub mod json_scan;
mod llama3;
mod mistral;
pub mod reasoning;

use std::ops::Range;

/// A call as far as it has been generated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallPiece {
    /// Where the call's markup starts (malformed calls come back as text from here).
    pub start: usize,
    pub name: Option<String>,
    /// The arguments' JSON text so far (None: none seen yet; `{}` if the call ends so).
    pub args: Option<Range<usize>>,
    /// The call's markup is complete.
    pub done: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(Range<usize>),
    Call(CallPiece),
}

/// What a format found in the text so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    pub pieces: Vec<Piece>,
    /// Only on the last scan: a call is unfinished or broken.
    pub malformed: bool,
}

impl Scan {
    fn text(&mut self, r: Range<usize>) {
        if !r.is_empty() {
            self.pieces.push(Piece::Text(r));
        }
    }

    fn call(&mut self, c: CallPiece) {
        self.pieces.push(Piece::Call(c));
    }

    /// On the last scan every call must be done.
    fn finish(mut self, last: bool) -> Self {
        if last
            && self
                .pieces
                .iter()
                .any(|p| matches!(p, Piece::Call(c) if !c.done || c.name.is_none()))
        {
            self.malformed = true;
        }
        self
    }

    fn calls(&self) -> impl Iterator<Item = &CallPiece> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Call(c) => Some(c),
            Piece::Text(_) => None,
        })
    }

    fn content(&self, text: &str) -> String {
        self.pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Text(r) => Some(&text[r.clone()]),
                Piece::Call(_) => None,
            })
            .collect()
    }
}

/// One family's tool-call syntax.
pub trait CallFormat: Send + Sync {
    /// `last`: the generation has ended (nothing is held back; unfinished calls are malformed).
    fn scan(&self, text: &str, last: bool) -> Scan;
    /// Whether its markers are special tokens, which the detokenizer must keep.
    fn needs_special_tokens(&self) -> bool {
        false
    }
}

/// The tool-call parsers `--tool-call-parser` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParserKind {
    /// Hermes / Qwen2.5 / Qwen3: `<tool_call>{"name": ..., "arguments": ...}</tool_call>`.
    Hermes,
    /// Llama 3.x: `{"name": ..., "parameters": ...}` (`;`-separated), optionally after
    /// `<|python_tag|>`.
    Llama3Json,
    /// Mistral: `[TOOL_CALLS][{...}]` or `[TOOL_CALLS]name[ARGS]{...}`.
    Mistral,
    /// DeepSeek V3 / R1 / V3.1: `<｜tool▁calls▁begin｜>...`.
    DeepSeekV3,
    /// gpt-oss harmony: `<|channel|>commentary to=functions.NAME ...<|message|>{...}<|call|>`.
    GptOss,
}

impl ParserKind {
    pub const NAMES: &'static str = "hermes, llama3_json, mistral, deepseek_v3, gpt_oss";

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "hermes" | "qwen" | "qwen2_5" | "qwen3" => Self::Hermes,
            "llama3_json" | "llama3" | "llama" => Self::Llama3Json,
            "mistral" => Self::Mistral,
            "deepseek_v3" | "deepseek_v31" | "deepseek_r1" | "deepseek" => Self::DeepSeekV3,
            "gpt_oss" | "openai" | "harmony" => Self::GptOss,
            _ => return None,
        })
    }

    /// The format a chat template teaches, from the markers it writes.
    pub fn detect(template: &str) -> Option<Self> {
        if template.contains("<tool_call>") {
            Some(Self::Hermes)
        } else if template.contains("tool▁calls▁begin") {
            Some(Self::DeepSeekV3)
        } else if template.contains("[TOOL_CALLS]") {
            Some(Self::Mistral)
        } else if template.contains("to=functions.") || template.contains("<|channel|>") {
            Some(Self::GptOss)
        } else if template.contains("<|python_tag|>") || template.contains("\"parameters\": ") {
            Some(Self::Llama3Json)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Hermes => "hermes",
            Self::Llama3Json => "llama3_json",
            Self::Mistral => "mistral",
            Self::DeepSeekV3 => "deepseek_v3",
            Self::GptOss => "gpt_oss",
        }
    }

    pub fn format(self) -> Box<dyn CallFormat> {
        match self {
            Self::Hermes => Box::new(hermes::Hermes),
            Self::Llama3Json => Box::new(llama3::Llama3Json),
            Self::Mistral => Box::new(mistral::Mistral),
            Self::DeepSeekV3 => Box::new(deepseek::DeepSeekV3),
            Self::GptOss => Box::new(gpt_oss::GptOss),
        }
    }
}

/// A complete call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text, as generated.
    pub arguments: String,
}

/// A whole output split into content and calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
}

/// Splits a finished output. Malformed call markup comes back as plain content.
pub fn parse(format: &dyn CallFormat, text: &str) -> Parsed {
    let scan = format.scan(text, true);
    if scan.malformed {
        return Parsed {
            content: Some(text.to_string()),
            calls: Vec::new(),
        };
    }
    let calls: Vec<ToolCall> = scan
        .calls()
        .map(|c| ToolCall {
            id: call_id(),
            name: c.name.clone().unwrap_or_default(),
            arguments: c
                .args
                .clone()
                .map_or_else(|| "{}".to_string(), |r| text[r].to_string()),
        })
        .collect();
    let mut content = scan.content(text);
    if !calls.is_empty() {
        content.truncate(content.trim_end().len());
    }
    Parsed {
        content: (!content.is_empty() || calls.is_empty()).then_some(content),
        calls,
    }
}

/// One piece of a streamed output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolDelta {
    Content(String),
    /// A call starts: its id and name (sent once, before any of its arguments).
    Start {
        index: usize,
        id: String,
        name: String,
    },
    /// More of a call's arguments.
    Args {
        index: usize,
        text: String,
    },
}

/// How much of an announced call was sent: its arguments' length.
#[derive(Debug, Clone, Default)]
struct SentCall {
    args: usize,
}

/// Incremental parser: text in as generated, deltas out as soon as they are certain.
pub struct ToolStream {
    format: Box<dyn CallFormat>,
    text: String,
    content_sent: usize,
    calls: Vec<SentCall>,
}

impl ToolStream {
    pub fn new(format: Box<dyn CallFormat>) -> Self {
        Self {
            format,
            text: String::new(),
            content_sent: 0,
            calls: Vec::new(),
        }
    }

    pub fn push(&mut self, delta: &str) -> Vec<ToolDelta> {
        self.text.push_str(delta);
        self.emit(false)
    }

    /// The generation ended: what was held back, or the unfinished call's text as content.
    pub fn finish(&mut self) -> Vec<ToolDelta> {
        self.emit(true)
    }

    /// Calls started so far.
    pub fn num_calls(&self) -> usize {
        self.calls.len()
    }

    fn emit(&mut self, last: bool) -> Vec<ToolDelta> {
        let mut scan = self.format.scan(&self.text, last);
        let mut tail = None;
        if scan.malformed {
            // Keep what was already announced; the rest goes back to the client as text.
            let announced = self.calls.len();
            let cut = scan
                .pieces
                .iter()
                .enumerate()
                .filter_map(|(i, p)| match p {
                    Piece::Call(c) => Some((i, c.start)),
                    Piece::Text(_) => None,
                })
                .nth(announced);
            if let Some((i, start)) = cut {
                scan.pieces.truncate(i);
                tail = Some(start);
            }
        }
        let mut out = Vec::new();
        let content = scan.content(&self.text);
        let has_calls = scan.calls().next().is_some() || !self.calls.is_empty();
        let upto = if last && !has_calls {
            content.len()
        } else {
            content.trim_end().len()
        };
        if upto > self.content_sent && content.is_char_boundary(self.content_sent) {
            out.push(ToolDelta::Content(
                content[self.content_sent..upto].to_string(),
            ));
            self.content_sent = upto;
        }
        for (index, c) in scan.calls().enumerate() {
            if index == self.calls.len() {
                let Some(name) = &c.name else { break };
                out.push(ToolDelta::Start {
                    index,
                    id: call_id(),
                    name: name.clone(),
                });
                self.calls.push(SentCall::default());
            }
            let sent = &mut self.calls[index];
            let args = match &c.args {
                Some(r) => &self.text[r.clone()],
                None if c.done => "{}",
                None => "",
            };
            if args.len() > sent.args {
                out.push(ToolDelta::Args {
                    index,
                    text: args[sent.args..].to_string(),
                });
                sent.args = args.len();
            }
        }
        if let Some(start) = tail {
            let rest = self.text[start..].to_string();
            self.content_sent = usize::MAX;
            if !rest.is_empty() {
                out.push(ToolDelta::Content(rest));
            }
        }
        out
    }
}

/// OpenAI-style call id.
pub fn call_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let s: String = (0..24)
        .map(|_| char::from_digit(rng.random_range(0..36), 36).unwrap_or('0'))
        .collect();
    format!("call_{s}")
}

/// Helpers the formats share.
pub(crate) mod util {
    use super::json_scan::{call_object, partial_marker_len, skip_ws};
    use super::{CallPiece, Scan};

    /// Text from `from` up to the first `marker`, or to the end less a partial marker.
    /// Returns where the marker starts, if found.
    pub fn text_until(
        s: &str,
        from: usize,
        marker: &str,
        last: bool,
        scan: &mut Scan,
    ) -> Option<usize> {
        match s[from..].find(marker) {
            Some(p) => {
                scan.text(from..from + p);
                Some(from + p)
            }
            None => {
                let held = if last {
                    0
                } else {
                    partial_marker_len(&s[from..], marker)
                };
                scan.text(from..s.len() - held);
                None
            }
        }
    }

    /// A JSON call object at `at` (after whitespace). Returns the call and where it ended.
    pub fn object_call(
        s: &str,
        start: usize,
        at: usize,
        keys: &[&str],
    ) -> (CallPiece, Option<usize>, bool) {
        let at = skip_ws(s, at);
        let o = call_object(s, at, keys);
        let call = CallPiece {
            start,
            name: o.name,
            args: o.args.map(|(a, b, _)| a..b),
            done: false,
        };
        (call, o.end, o.invalid)
    }

    /// `s[i..]` starts with `marker`: Some(true); is a prefix of it (more may come): None;
    /// neither: Some(false).
    pub fn expect(s: &str, i: usize, marker: &str) -> Option<bool> {
        let rest = &s[i..];
        if rest.starts_with(marker) {
            Some(true)
        } else if marker.starts_with(rest) {
            None
        } else {
            Some(false)
        }
    }
}

#[cfg(test)]
mod tests;
