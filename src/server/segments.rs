//! A choice's parsed output as an ordered list of segments (reasoning, text, one per tool
//! call), built from the chat parser's deltas: the shape the Responses API (output items) and
//! the Anthropic Messages API (content blocks) both speak. Streamed and whole outputs go through
//! the same [`Segmenter`], so a stream's items reassemble into exactly the non-streamed ones.

use super::tools::{ChoiceDelta, ChoiceParser, OutputPlan};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentKind {
    Reasoning,
    Text,
    /// A tool call: the parser's call id and the function name; its text is the arguments.
    Call {
        id: String,
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub kind: SegmentKind,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEvent {
    /// Segment `index` starts (its text so far is empty).
    Open {
        index: usize,
        kind: SegmentKind,
    },
    Delta {
        index: usize,
        text: String,
    },
    /// Segment `index` is complete; no more deltas for it.
    Close {
        index: usize,
    },
}

/// Which segment a delta belongs to: calls by the parser's call index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Reasoning,
    Text,
    Call(usize),
}

#[derive(Debug, Default)]
pub struct Segmenter {
    segments: Vec<Segment>,
    open: Option<Key>,
    /// Whitespace that would open a text segment, held until real text follows (the newlines
    /// between reasoning and a call are not an answer).
    pending_ws: String,
}

impl Segmenter {
    pub fn new() -> Self {
        Self::default()
    }

    /// The events for one parser delta, in output order: reasoning, text, calls.
    pub fn push(&mut self, d: ChoiceDelta) -> Vec<SegmentEvent> {
        let mut ev = Vec::new();
        if !d.reasoning.is_empty() {
            self.append(Key::Reasoning, SegmentKind::Reasoning, d.reasoning, &mut ev);
        }
        if !d.content.is_empty() {
            if self.open == Some(Key::Text) {
                self.append(Key::Text, SegmentKind::Text, d.content, &mut ev);
            } else if d.content.trim().is_empty() {
                self.pending_ws.push_str(&d.content);
            } else {
                let text = std::mem::take(&mut self.pending_ws) + &d.content;
                self.append(Key::Text, SegmentKind::Text, text, &mut ev);
            }
        }
        for c in d.tool_calls {
            let key = Key::Call(c.index);
            if self.open != Some(key) {
                let kind = SegmentKind::Call {
                    id: c.id.unwrap_or_default(),
                    name: c.function.name.unwrap_or_default(),
                };
                self.open_segment(key, kind, &mut ev);
            }
            if let Some(args) = c.function.arguments.filter(|a| !a.is_empty()) {
                self.delta(args, &mut ev);
            }
        }
        ev
    }

    /// The generation ended: the open segment closes.
    pub fn finish(&mut self) -> Vec<SegmentEvent> {
        let mut ev = Vec::new();
        self.close(&mut ev);
        ev
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn into_segments(self) -> Vec<Segment> {
        self.segments
    }

    fn append(&mut self, key: Key, kind: SegmentKind, text: String, ev: &mut Vec<SegmentEvent>) {
        if self.open != Some(key) {
            self.open_segment(key, kind, ev);
        }
        self.delta(text, ev);
    }

    fn open_segment(&mut self, key: Key, kind: SegmentKind, ev: &mut Vec<SegmentEvent>) {
        self.close(ev);
        if key != Key::Text {
            self.pending_ws.clear();
        }
        self.open = Some(key);
        ev.push(SegmentEvent::Open {
            index: self.segments.len(),
            kind: kind.clone(),
        });
        self.segments.push(Segment {
            kind,
            text: String::new(),
        });
    }

    fn delta(&mut self, text: String, ev: &mut Vec<SegmentEvent>) {
        let index = self.segments.len() - 1;
        self.segments[index].text.push_str(&text);
        ev.push(SegmentEvent::Delta { index, text });
    }

    fn close(&mut self, ev: &mut Vec<SegmentEvent>) {
        if self.open.take().is_some() {
            ev.push(SegmentEvent::Close {
                index: self.segments.len() - 1,
            });
        }
    }
}

/// A whole output split as its stream would be.
pub fn whole(plan: &OutputPlan, text: &str) -> Vec<Segment> {
    let mut parser = ChoiceParser::new(plan);
    let mut seg = Segmenter::new();
    let mut d = parser.push(text);
    d.append(parser.finish());
    seg.push(d);
    seg.finish();
    seg.into_segments()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::reasoning::ReasoningKind;
    use crate::tools::ParserKind;

    fn plan() -> OutputPlan {
        OutputPlan {
            tools: Some(crate::server::tools::ToolMode::Auto(ParserKind::Hermes)),
            single_call: false,
            reasoning: Some(ReasoningKind::Qwen3),
        }
    }

    const TEXT: &str = "<think>\nWeather, then a sum.\n</think>\n\nChecking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 2, \"b\": 3}}\n</tool_call>";

    /// One character at a time, the events rebuild exactly the whole split: reasoning, the
    /// text, then one segment per call, each opened once and closed once.
    #[test]
    fn streamed_segments_equal_the_whole_split() {
        let whole = whole(&plan(), TEXT);
        let kinds: Vec<_> = whole
            .iter()
            .map(|s| match &s.kind {
                SegmentKind::Call { name, .. } => name.as_str(),
                SegmentKind::Reasoning => "reasoning",
                SegmentKind::Text => "text",
            })
            .collect();
        assert_eq!(kinds, ["reasoning", "text", "get_weather", "add"]);
        assert_eq!(whole[1].text.trim(), "Checking.");
        assert_eq!(whole[3].text, "{\"a\": 2, \"b\": 3}");

        let mut parser = ChoiceParser::new(&plan());
        let mut seg = Segmenter::new();
        let mut events = Vec::new();
        for c in TEXT.chars() {
            events.extend(seg.push(parser.push(&c.to_string())));
        }
        events.extend(seg.push(parser.finish()));
        events.extend(seg.finish());
        let mut rebuilt: Vec<String> = Vec::new();
        let mut open = None;
        for e in events {
            match e {
                SegmentEvent::Open { index, .. } => {
                    assert_eq!((open, index), (None, rebuilt.len()));
                    open = Some(index);
                    rebuilt.push(String::new());
                }
                SegmentEvent::Delta { index, text } => {
                    assert_eq!(open, Some(index));
                    rebuilt[index].push_str(&text);
                }
                SegmentEvent::Close { index } => {
                    assert_eq!(open.take(), Some(index));
                }
            }
        }
        assert_eq!(open, None);
        let texts: Vec<_> = whole.iter().map(|s| s.text.clone()).collect();
        assert_eq!(rebuilt, texts);
        // Call ids are random per parse; names and order match.
        let strip = |v: &[Segment]| -> Vec<SegmentKind> {
            v.iter()
                .map(|s| match &s.kind {
                    SegmentKind::Call { name, .. } => SegmentKind::Call {
                        id: String::new(),
                        name: name.clone(),
                    },
                    k => k.clone(),
                })
                .collect()
        };
        assert_eq!(strip(seg.segments()), strip(&whole));
    }
}
