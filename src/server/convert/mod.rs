//! Other wire formats into the one internal request: each converts to a
//! [`ChatCompletionRequest`](super::wire::ChatCompletionRequest), which then takes the chat
//! path (validation, tools, structured output, limits, engine) unchanged; and the parsed
//! output segments back into each format's items.

pub mod messages;
pub mod responses;

use super::error::ApiError;
use super::segments::{Segment, SegmentKind};
use super::wire::{ChatMessageIn, FunctionCallIn, MessageContent, ToolCallIn};

/// An error from the chat path with its `param` renamed to the field the client sent.
pub fn rename_param(e: ApiError, rename: impl Fn(&str) -> Option<String>) -> ApiError {
    match e {
        ApiError::InvalidParam {
            message,
            param: Some(p),
        } => ApiError::InvalidParam {
            param: Some(rename(&p).unwrap_or(p)),
            message,
        },
        ApiError::MalformedBody {
            message,
            param: Some(p),
        } => ApiError::MalformedBody {
            param: Some(rename(&p).unwrap_or(p)),
            message,
        },
        other => other,
    }
}

/// `tools[3].function.name` -> `tools[3].name` (both new formats put the function's fields at
/// the tool's top level); `parameters` may be renamed too (Anthropic's `input_schema`).
pub fn flat_tool_param(p: &str, parameters: &str) -> Option<String> {
    let rest = p.strip_prefix("tools[")?;
    let (i, field) = rest.split_once("].function.")?;
    let field = if field == "parameters" {
        parameters
    } else {
        field
    };
    Some(format!("tools[{i}].{field}"))
}

/// Fields documented as objects whose members are read with `.get()`, which finds nothing in a
/// string or a list: anything but an object (or null) is refused rather than read as empty.
pub fn objects_only(fields: &[(&str, Option<&serde_json::Value>)]) -> Result<(), ApiError> {
    for (name, v) in fields {
        if v.is_some_and(|v| !v.is_object() && !v.is_null()) {
            return Err(ApiError::invalid(
                name,
                format!("`{name}` must be an object."),
            ));
        }
    }
    Ok(())
}

/// A plain chat message.
pub fn message(role: &str, text: String) -> ChatMessageIn {
    ChatMessageIn {
        role: role.into(),
        content: Some(MessageContent::Text(text)),
        name: None,
        tool_calls: None,
        tool_call_id: None,
    }
}

/// Adds a call to the conversation: to the assistant turn just before it, or as a new one.
pub fn push_call(conv: &mut Vec<ChatMessageIn>, id: String, name: String, arguments: String) {
    let call = ToolCallIn {
        id: Some(id),
        kind: Some("function".into()),
        function: FunctionCallIn { name, arguments },
    };
    match conv.last_mut() {
        Some(m) if m.role == "assistant" => m.tool_calls.get_or_insert_default().push(call),
        _ => conv.push(ChatMessageIn {
            role: "assistant".into(),
            content: None,
            name: None,
            tool_calls: Some(vec![call]),
            tool_call_id: None,
        }),
    }
}

/// A generated turn as the history of the next request: its text and calls (reasoning is not
/// replayed, as chat templates drop it).
pub fn assistant_turn(segments: &[Segment]) -> Vec<ChatMessageIn> {
    let text: String = segments
        .iter()
        .filter(|s| s.kind == SegmentKind::Text)
        .map(|s| s.text.as_str())
        .collect();
    let mut conv = Vec::new();
    if !text.is_empty() {
        conv.push(message("assistant", text));
    }
    for s in segments {
        if let SegmentKind::Call { id, name } = &s.kind {
            let args = if s.text.is_empty() {
                "{}".to_string()
            } else {
                s.text.clone()
            };
            push_call(&mut conv, id.clone(), name.clone(), args);
        }
    }
    if conv.is_empty() {
        conv.push(message("assistant", String::new()));
    }
    conv
}
