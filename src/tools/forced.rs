//! `tool_choice: "required"` and a named tool: the output is generated under a JSON schema
//! (as vLLM does), whatever the model's own call syntax, so it works on every model:
//! a named tool's output is its arguments object; `required` writes
//! `[{"name": ..., "parameters": {...}}, ...]` with one `anyOf` branch per tool.

use serde_json::{json, Value};

use super::json_scan::{skip_ws, value_end, ValueEnd};
use super::mistral::array_calls;
use super::{CallFormat, CallPiece, Scan};

/// The output is the arguments of `name`.
pub struct Named(pub String);

impl CallFormat for Named {
    fn scan(&self, s: &str, last: bool) -> Scan {
        let mut scan = Scan::default();
        let at = skip_ws(s, 0);
        let mut call = CallPiece {
            start: 0,
            name: Some(self.0.clone()),
            args: None,
            done: false,
        };
        match value_end(s, at) {
            ValueEnd::Complete(e) => {
                call.args = Some(at..e);
                call.done = s[e..].trim().is_empty();
            }
            ValueEnd::Partial => call.args = (at < s.len()).then_some(at..s.len()),
            ValueEnd::Invalid => scan.malformed = last,
        }
        scan.call(call);
        scan.finish(last)
    }
}

/// The output is a JSON array of `{"name", "parameters"}` objects.
pub struct Required;

impl CallFormat for Required {
    fn scan(&self, s: &str, last: bool) -> Scan {
        let mut scan = Scan::default();
        let at = skip_ws(s, 0);
        if at == s.len() {
            scan.malformed = last;
            return scan;
        }
        if !s[at..].starts_with('[') {
            scan.malformed = last;
            return scan;
        }
        match array_calls(s, 0, at, &["parameters"], last, &mut scan) {
            Some(end) if !s[end..].trim().is_empty() => scan.malformed = last,
            Some(_) => {}
            None => scan.malformed |= last,
        }
        scan.finish(last)
    }
}

/// A tool's parameter schema; a tool without one takes any object.
fn parameters(tool: &Value) -> Value {
    tool["function"]
        .get("parameters")
        .filter(|p| !p.is_null())
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}))
}

/// The schema the output of a named tool call must match: its parameters.
pub fn named_schema(tool: &Value) -> Value {
    parameters(tool)
}

/// The schema of `required`: at least one call, at most one unless parallel calls are allowed.
pub fn required_schema(tools: &[Value], parallel: bool) -> Value {
    let branches: Vec<Value> = tools
        .iter()
        .map(|t| {
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [t["function"]["name"]]},
                    "parameters": parameters(t),
                },
                "required": ["name", "parameters"],
                "additionalProperties": false,
            })
        })
        .collect();
    let mut schema = json!({
        "type": "array",
        "minItems": 1,
        "items": {"anyOf": branches},
    });
    if !parallel {
        schema["maxItems"] = json!(1);
    }
    schema
}
