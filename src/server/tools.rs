//! A chat request's `tools`, `tool_choice` and `parallel_tool_calls` checked into an
//! [`OutputPlan`] (with the grammar that forces a call), and the per-choice parser that turns
//! generated text into message fields or stream deltas (reasoning, content, tool calls).

use serde_json::Value;

use super::error::ApiError;
use super::state::Loaded;
use super::wire::{FunctionCallDelta, FunctionCallOut, ToolCallDelta, ToolCallOut};
use crate::request::Constraint;
use crate::tools::forced::{self, Named, Required};
use crate::tools::reasoning::{self, ReasoningKind, ReasoningStream};
use crate::tools::{parse, CallFormat, ParserKind, ToolDelta, ToolStream};

/// How tool calls are found in a choice's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolMode {
    /// The model may call: its own syntax, parsed.
    Auto(ParserKind),
    /// Forced by a grammar: the output is this tool's arguments.
    Named(String),
    /// Forced by a grammar: a JSON array of calls.
    Required,
}

/// What a chat choice's text is split into.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputPlan {
    pub tools: Option<ToolMode>,
    /// At most one call (`parallel_tool_calls: false`).
    pub single_call: bool,
    pub reasoning: Option<ReasoningKind>,
}

impl OutputPlan {
    fn call_format(&self) -> Option<Box<dyn CallFormat>> {
        Some(match self.tools.as_ref()? {
            ToolMode::Auto(kind) => kind.format(),
            ToolMode::Named(name) => Box::new(Named(name.clone())),
            ToolMode::Required => Box::new(Required),
        })
    }

    /// The parsers read markers that are special tokens: the detokenizer must keep them.
    pub fn needs_special_tokens(&self) -> bool {
        self.reasoning.is_some_and(|r| r.needs_special_tokens())
            || self.call_format().is_some_and(|f| f.needs_special_tokens())
    }
}

/// The checked tools part of a request.
#[derive(Debug, Clone, Default)]
pub struct ToolRequest {
    /// What the chat template's `tools` variable gets (None: no tools section).
    pub template_tools: Option<Value>,
    pub mode: Option<ToolMode>,
    pub single_call: bool,
    /// The grammar forcing a call (`required`, a named tool).
    pub constraint: Option<Constraint>,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message)
}

/// Each tool must be `{"type": "function", "function": {"name", ...}}` with a unique name and,
/// if any, an object as `parameters`.
fn check_tools(tools: &[Value]) -> Result<Vec<&str>, ApiError> {
    let mut names: Vec<&str> = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(invalid(
                &format!("tools[{i}].type"),
                "Only tools of type `function` are supported.",
            ));
        }
        let name = t
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                invalid(
                    &format!("tools[{i}].function.name"),
                    "Every tool needs `function.name`.",
                )
            })?;
        if names.contains(&name) {
            return Err(invalid(
                &format!("tools[{i}].function.name"),
                format!("Two tools are named `{name}`."),
            ));
        }
        match t["function"].get("parameters") {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(_) => {
                return Err(invalid(
                    &format!("tools[{i}].function.parameters"),
                    "`parameters` must be a JSON schema object.",
                ))
            }
        }
        names.push(name);
    }
    Ok(names)
}

/// Checks `tools` and `tool_choice` against each other and the model.
pub fn plan(
    loaded: &Loaded,
    tools: Option<&[Value]>,
    tool_choice: Option<&Value>,
    parallel_tool_calls: Option<bool>,
) -> Result<ToolRequest, ApiError> {
    let tools = tools.unwrap_or_default();
    let names = check_tools(tools)?;
    let parallel = parallel_tool_calls.unwrap_or(true);
    let needs_tools = |what: &str| {
        if tools.is_empty() {
            Err(invalid(
                "tool_choice",
                format!("`tool_choice: {what}` needs `tools`."),
            ))
        } else {
            Ok(())
        }
    };
    let mode = match tool_choice {
        None | Some(Value::Null) if tools.is_empty() => None,
        None | Some(Value::Null) => Some("auto"),
        Some(Value::String(s)) => Some(match s.as_str() {
            "none" => "none",
            "auto" => "auto",
            "required" => "required",
            other => {
                return Err(invalid(
                    "tool_choice",
                    format!("`tool_choice` must be none, auto, required or a named function; got `{other}`."),
                ))
            }
        }),
        Some(v @ Value::Object(_)) => {
            let name = (v.get("type").and_then(Value::as_str) == Some("function"))
                .then(|| v.pointer("/function/name").and_then(Value::as_str))
                .flatten()
                .ok_or_else(|| {
                    invalid(
                        "tool_choice",
                        "A named `tool_choice` is {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                    )
                })?;
            needs_tools("{\"type\": \"function\", ...}")?;
            let Some(i) = names.iter().position(|n| *n == name) else {
                return Err(invalid(
                    "tool_choice",
                    format!("`tool_choice` names `{name}`, which is not among `tools`."),
                ));
            };
            return Ok(ToolRequest {
                template_tools: Some(Value::Array(tools.to_vec())),
                mode: Some(ToolMode::Named(name.to_string())),
                single_call: true,
                constraint: Some(Constraint::JsonSchema(forced::named_schema(&tools[i]))),
            });
        }
        Some(_) => {
            return Err(invalid(
                "tool_choice",
                "`tool_choice` must be a string or an object.",
            ))
        }
    };
    match mode {
        None | Some("none") => Ok(ToolRequest::default()),
        Some("required") => {
            needs_tools("\"required\"")?;
            Ok(ToolRequest {
                template_tools: Some(Value::Array(tools.to_vec())),
                mode: Some(ToolMode::Required),
                single_call: !parallel,
                constraint: Some(Constraint::JsonSchema(forced::required_schema(
                    tools, parallel,
                ))),
            })
        }
        _ => {
            needs_tools("\"auto\"")?;
            let parser = loaded.tool_parser.ok_or_else(|| {
                invalid(
                    "tool_choice",
                    "`tool_choice: \"auto\"` needs a tool-call parser, and this model's chat \
                     template shows no known call format: start the server with \
                     --tool-call-parser, or use `tool_choice: \"required\"` or a named tool.",
                )
            })?;
            Ok(ToolRequest {
                template_tools: Some(Value::Array(tools.to_vec())),
                mode: Some(ToolMode::Auto(parser)),
                single_call: !parallel,
                constraint: None,
            })
        }
    }
}

/// One streamed step of a choice: each part may be empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChoiceDelta {
    pub reasoning: String,
    pub content: String,
    pub tool_calls: Vec<ToolCallDelta>,
}

impl ChoiceDelta {
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty() && self.tool_calls.is_empty()
    }

    /// `later` after this one, still one entry per call.
    pub fn append(&mut self, later: ChoiceDelta) {
        self.reasoning.push_str(&later.reasoning);
        self.content.push_str(&later.content);
        for c in later.tool_calls {
            add_call_delta(&mut self.tool_calls, c);
        }
    }
}

/// Adds a call delta; a call's arguments join its entry already in the chunk.
fn add_call_delta(calls: &mut Vec<ToolCallDelta>, d: ToolCallDelta) {
    match calls.iter_mut().find(|c| c.index == d.index) {
        Some(c) => {
            if let Some(a) = d.function.arguments {
                c.function.arguments.get_or_insert_default().push_str(&a);
            }
        }
        None => calls.push(d),
    }
}

/// Splits one choice's text as it streams.
pub struct ChoiceParser {
    reasoning: Option<ReasoningStream>,
    tools: Option<ToolStream>,
    single_call: bool,
}

impl ChoiceParser {
    pub fn new(plan: &OutputPlan) -> Self {
        Self {
            reasoning: plan.reasoning.map(ReasoningStream::new),
            tools: plan.call_format().map(ToolStream::new),
            single_call: plan.single_call,
        }
    }

    pub fn push(&mut self, text: &str) -> ChoiceDelta {
        let (reasoning, answer) = match &mut self.reasoning {
            Some(r) => r.push(text),
            None => (String::new(), text.to_string()),
        };
        self.answer(reasoning, &answer, false)
    }

    /// The generation ended: everything held back.
    pub fn finish(&mut self) -> ChoiceDelta {
        let (reasoning, answer) = match &mut self.reasoning {
            Some(r) => r.finish(),
            None => (String::new(), String::new()),
        };
        self.answer(reasoning, &answer, true)
    }

    /// Whether any tool call was sent (`finish_reason` is then `tool_calls`).
    pub fn made_calls(&self) -> bool {
        self.tools.as_ref().is_some_and(|t| t.num_calls() > 0)
    }

    fn answer(&mut self, reasoning: String, answer: &str, last: bool) -> ChoiceDelta {
        let mut out = ChoiceDelta {
            reasoning,
            ..Default::default()
        };
        let Some(tools) = &mut self.tools else {
            out.content = answer.to_string();
            return out;
        };
        let mut deltas = tools.push(answer);
        if last {
            deltas.extend(tools.finish());
        }
        for d in deltas {
            match d {
                ToolDelta::Content(c) => out.content.push_str(&c),
                ToolDelta::Start { index, id, name } => {
                    if self.single_call && index > 0 {
                        continue;
                    }
                    out.tool_calls.push(ToolCallDelta {
                        index,
                        id: Some(id),
                        kind: Some("function".into()),
                        function: FunctionCallDelta {
                            name: Some(name),
                            arguments: Some(String::new()),
                        },
                    });
                }
                ToolDelta::Args { index, text } => {
                    if self.single_call && index > 0 {
                        continue;
                    }
                    add_call_delta(
                        &mut out.tool_calls,
                        ToolCallDelta {
                            index,
                            id: None,
                            kind: None,
                            function: FunctionCallDelta {
                                name: None,
                                arguments: Some(text),
                            },
                        },
                    );
                }
            }
        }
        out
    }
}

/// A finished choice's message parts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChoiceMessage {
    pub content: Option<String>,
    pub reasoning: Option<String>,
    pub tool_calls: Option<Vec<ToolCallOut>>,
}

/// Splits a whole output as [`ChoiceParser`] would stream it.
pub fn whole(plan: &OutputPlan, text: &str) -> ChoiceMessage {
    let (reasoning, answer) = match plan.reasoning {
        Some(kind) => reasoning::split(kind, text),
        None => (None, text.to_string()),
    };
    let Some(format) = plan.call_format() else {
        return ChoiceMessage {
            content: Some(answer),
            reasoning,
            tool_calls: None,
        };
    };
    let mut parsed = parse(format.as_ref(), &answer);
    if plan.single_call {
        parsed.calls.truncate(1);
    }
    let calls: Vec<ToolCallOut> = parsed
        .calls
        .into_iter()
        .map(|c| ToolCallOut {
            id: c.id,
            kind: "function".into(),
            function: FunctionCallOut {
                name: c.name,
                arguments: c.arguments,
            },
        })
        .collect();
    ChoiceMessage {
        content: parsed.content,
        reasoning,
        tool_calls: (!calls.is_empty()).then_some(calls),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reasoning, content and two calls, streamed one character at a time, reassemble into the
    /// whole split; each chunk holds at most one entry per call.
    #[test]
    fn streamed_choice_reassembles_into_the_whole_message() {
        let plan = OutputPlan {
            tools: Some(ToolMode::Auto(ParserKind::Hermes)),
            single_call: false,
            reasoning: Some(ReasoningKind::Qwen3),
        };
        let text = "<think>\nWeather, then a sum.\n</think>\n\nChecking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 2, \"b\": 3}}\n</tool_call>";
        let whole = whole(&plan, text);
        assert_eq!(whole.reasoning.as_deref(), Some("\nWeather, then a sum.\n"));
        assert_eq!(whole.content.as_deref(), Some("Checking."));
        let calls = whole.tool_calls.unwrap();
        assert_eq!(calls.len(), 2);

        let mut p = ChoiceParser::new(&plan);
        let mut got = ChoiceDelta::default();
        let mut arg_chunks = 0;
        let mut chunks: Vec<ChoiceDelta> = text.chars().map(|c| p.push(&c.to_string())).collect();
        chunks.push(p.finish());
        for d in chunks {
            for (i, c) in d.tool_calls.iter().enumerate() {
                assert!(d.tool_calls[..i].iter().all(|o| o.index != c.index));
                arg_chunks +=
                    usize::from(c.function.arguments.as_ref().is_some_and(|a| !a.is_empty()));
            }
            got.append(d);
        }
        assert!(p.made_calls());
        assert_eq!(got.reasoning, "\nWeather, then a sum.\n");
        assert_eq!(got.content, "Checking.");
        let streamed: Vec<(String, String)> = got
            .tool_calls
            .iter()
            .map(|c| {
                (
                    c.function.name.clone().unwrap(),
                    c.function.arguments.clone().unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = calls
            .iter()
            .map(|c| (c.function.name.clone(), c.function.arguments.clone()))
            .collect();
        assert_eq!(streamed, want);
        assert!(arg_chunks > 10, "{arg_chunks}");
    }

    #[test]
    fn single_call_keeps_the_first() {
        let plan = OutputPlan {
            tools: Some(ToolMode::Required),
            single_call: true,
            reasoning: None,
        };
        let text = "[{\"name\": \"a\", \"parameters\": {}}, {\"name\": \"b\", \"parameters\": {}}]";
        assert_eq!(whole(&plan, text).tool_calls.unwrap().len(), 1);
        let mut p = ChoiceParser::new(&plan);
        let mut d = p.push(text);
        d.append(p.finish());
        assert_eq!(d.tool_calls.len(), 1);
    }
}
