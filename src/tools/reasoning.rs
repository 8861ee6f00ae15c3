//! Reasoning output: the model's thinking split from its answer, whole or streamed.
//! `<think>…</think>` models (Qwen3, DeepSeek-R1) and gpt-oss's analysis channel.

use std::ops::Range;

use super::harmony;
use super::json_scan::partial_marker_len;
use crate::request::ReasoningMarkers;

const THINK: &str = "<think>";
const END_THINK: &str = "</think>";

/// The reasoning parsers `--reasoning-parser` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningKind {
    /// Qwen3: reasoning only inside an opening `<think>` at the start.
    Qwen3,
    /// DeepSeek-R1: the template opens `<think>` in the prompt; the output is reasoning until
    /// `</think>` (a leading `<think>` is dropped).
    DeepSeekR1,
    /// gpt-oss: the analysis channel is reasoning, the final channel the answer; other
    /// messages (tool calls) pass through for the tool-call parser.
    GptOss,
}

impl ReasoningKind {
    pub const NAMES: &'static str = "qwen3, deepseek_r1, gpt_oss";

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "qwen3" => Self::Qwen3,
            "deepseek_r1" | "deepseek_v3" => Self::DeepSeekR1,
            "gpt_oss" | "openai" | "harmony" => Self::GptOss,
            _ => return None,
        })
    }

    /// Where the reasoning ends and the answer (which a structured-output grammar binds) begins.
    pub fn markers(self) -> ReasoningMarkers {
        match self {
            Self::Qwen3 => ReasoningMarkers {
                opener: Some(THINK.into()),
                closer: END_THINK.into(),
            },
            Self::DeepSeekR1 => ReasoningMarkers {
                opener: None,
                closer: END_THINK.into(),
            },
            Self::GptOss => ReasoningMarkers {
                opener: None,
                closer: "<|channel|>final<|message|>".into(),
            },
        }
    }

    pub fn needs_special_tokens(self) -> bool {
        matches!(self, Self::GptOss)
    }

    /// Reasoning and answer pieces of the text so far; while streaming, text that may still
    /// turn into a marker is in neither.
    fn scan(self, s: &str, last: bool) -> (Vec<Range<usize>>, Vec<Range<usize>>) {
        match self {
            Self::Qwen3 | Self::DeepSeekR1 => think(s, last, self == Self::DeepSeekR1),
            Self::GptOss => channels(s, last),
        }
    }
}

fn held(s: &str, marker: &str, last: bool) -> usize {
    if last {
        0
    } else {
        partial_marker_len(s, marker)
    }
}

/// One range as a list of pieces.
fn one(r: Range<usize>) -> Vec<Range<usize>> {
    std::iter::once(r).collect()
}

fn think(s: &str, last: bool, starts_inside: bool) -> (Vec<Range<usize>>, Vec<Range<usize>>) {
    let lead = s.len() - s.trim_start().len();
    let rest = &s[lead..];
    let body = if rest.starts_with(THINK) {
        lead + THINK.len()
    } else if !last && THINK.starts_with(rest) {
        return (Vec::new(), Vec::new());
    } else if starts_inside {
        0
    } else {
        return (Vec::new(), one(0..s.len()));
    };
    match s[body..].find(END_THINK) {
        Some(p) => {
            let after = body + p + END_THINK.len();
            // The answer's leading blank lines belong to the markup.
            let answer = after + (s.len() - after - s[after..].trim_start().len());
            (one(body..body + p), one(answer..s.len()))
        }
        None => {
            let h = held(&s[body..], END_THINK, last);
            (one(body..s.len() - h), Vec::new())
        }
    }
}

fn channels(s: &str, last: bool) -> (Vec<Range<usize>>, Vec<Range<usize>>) {
    let (mut reasoning, mut answer) = (Vec::new(), Vec::new());
    for m in harmony::messages(s, last) {
        if m.plain || m.channel == "final" {
            answer.push(m.body);
        } else if m.channel == "analysis" && m.recipient.is_none() {
            reasoning.push(m.body);
        } else {
            // A call or commentary: verbatim for the tool-call parser.
            let end = if m.ended { m.span.end } else { m.body.end };
            answer.push(m.span.start..end);
        }
    }
    (reasoning, answer)
}

/// A whole output split into reasoning (None if there was none) and answer.
pub fn split(kind: ReasoningKind, text: &str) -> (Option<String>, String) {
    let (r, a) = kind.scan(text, true);
    let join = |v: &[Range<usize>]| v.iter().map(|r| &text[r.clone()]).collect::<String>();
    let reasoning = join(&r);
    ((!r.is_empty()).then_some(reasoning), join(&a))
}

/// Streams the split: text in, (reasoning delta, answer delta) out.
pub struct ReasoningStream {
    kind: ReasoningKind,
    text: String,
    reasoning_sent: usize,
    answer_sent: usize,
}

impl ReasoningStream {
    pub fn new(kind: ReasoningKind) -> Self {
        Self {
            kind,
            text: String::new(),
            reasoning_sent: 0,
            answer_sent: 0,
        }
    }

    pub fn push(&mut self, delta: &str) -> (String, String) {
        self.text.push_str(delta);
        self.emit(false)
    }

    pub fn finish(&mut self) -> (String, String) {
        self.emit(true)
    }

    fn emit(&mut self, last: bool) -> (String, String) {
        let (r, a) = self.kind.scan(&self.text, last);
        let join = |v: &[Range<usize>]| v.iter().map(|r| &self.text[r.clone()]).collect::<String>();
        let (r, a) = (join(&r), join(&a));
        let take = |s: &str, sent: &mut usize| {
            if s.len() > *sent && s.is_char_boundary(*sent) {
                let d = s[*sent..].to_string();
                *sent = s.len();
                d
            } else {
                String::new()
            }
        };
        let rd = take(&r, &mut self.reasoning_sent);
        let ad = take(&a, &mut self.answer_sent);
        (rd, ad)
    }
}
