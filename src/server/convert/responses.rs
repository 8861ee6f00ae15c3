//! A Responses request into the chat request: `instructions` and `input` items into messages,
//! `text.format` into `response_format`, flat function tools into chat tools.

use serde_json::{json, Value};

use super::{message, objects_only, push_call, rename_param};
use crate::server::error::ApiError;
use crate::server::wire::{ChatCompletionRequest, ChatMessageIn, ResponsesRequest, SamplingFields};

/// The chat request, and the conversation it carries (without `instructions`) for the store.
pub struct Converted {
    pub chat: ChatCompletionRequest,
    pub conversation: Vec<ChatMessageIn>,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message)
}

/// Fields that would change the output and that flare does not implement.
fn refuse_unimplemented(req: &ResponsesRequest) -> Result<(), ApiError> {
    let refused = [
        ("background", req.background == Some(true)),
        (
            "truncation",
            req.truncation.as_deref().is_some_and(|t| t != "disabled"),
        ),
        ("top_logprobs", req.top_logprobs.is_some_and(|n| n != 0)),
        (
            "include",
            req.include.as_ref().is_some_and(|i| !i.is_empty()),
        ),
        ("max_tool_calls", req.max_tool_calls.is_some()),
        (
            "conversation",
            req.conversation.as_ref().is_some_and(|c| !c.is_null()),
        ),
        ("prompt", req.prompt.as_ref().is_some_and(|p| !p.is_null())),
        (
            "reasoning.effort",
            req.reasoning
                .as_ref()
                .and_then(|r| r.get("effort"))
                .is_some_and(|e| !e.is_null()),
        ),
        (
            "text.verbosity",
            req.text
                .as_ref()
                .and_then(|t| t.get("verbosity"))
                .is_some_and(|v| !v.is_null() && v != "medium"),
        ),
    ];
    match refused.iter().find(|(_, on)| *on) {
        Some((name, _)) => Err(invalid(
            name,
            format!("`{name}` is not supported by this server."),
        )),
        None => Ok(()),
    }
}

/// A content list's text: `input_text` / `output_text` (and `text`) parts joined by newlines.
fn content_text(content: &Value, param: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
                match kind {
                    "input_text" | "output_text" | "text" => {
                        let t = p.get("text").and_then(Value::as_str).ok_or_else(|| {
                            invalid(&format!("{param}[{j}].text"), "A text part needs `text`.")
                        })?;
                        texts.push(t);
                    }
                    other => {
                        return Err(invalid(
                            &format!("{param}[{j}].type"),
                            format!("Only text content is supported; got `{other}`."),
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(invalid(
            param,
            "`content` must be a string or a list of parts.",
        )),
    }
}

fn str_field<'a>(item: &'a Value, field: &str, param: &str) -> Result<&'a str, ApiError> {
    item.get(field).and_then(Value::as_str).ok_or_else(|| {
        invalid(
            &format!("{param}.{field}"),
            format!("`{field}` is required."),
        )
    })
}

/// `input` items appended to `conv`.
fn input_items(input: &Value, conv: &mut Vec<ChatMessageIn>) -> Result<(), ApiError> {
    let items = match input {
        Value::String(s) => {
            conv.push(message("user", s.clone()));
            return Ok(());
        }
        Value::Array(items) => items,
        _ => {
            return Err(invalid(
                "input",
                "`input` must be a string or a list of items.",
            ))
        }
    };
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        let kind = match item.get("type").and_then(Value::as_str) {
            Some(k) => k,
            None if item.get("role").is_some() => "message",
            None => {
                return Err(invalid(
                    &format!("{param}.type"),
                    "An input item needs `type`.",
                ))
            }
        };
        match kind {
            "message" => {
                let role = match str_field(item, "role", &param)? {
                    "developer" => "system",
                    r @ ("system" | "user" | "assistant") => r,
                    other => {
                        return Err(invalid(
                            &format!("{param}.role"),
                            format!(
                                "Unknown role `{other}`; expected user, assistant, system or \
                                 developer."
                            ),
                        ))
                    }
                };
                let content = item.get("content").unwrap_or(&Value::Null);
                let text = content_text(content, &format!("{param}.content"))?;
                conv.push(message(role, text));
            }
            "function_call" => push_call(
                conv,
                str_field(item, "call_id", &param)?.to_string(),
                str_field(item, "name", &param)?.to_string(),
                str_field(item, "arguments", &param)?.to_string(),
            ),
            "function_call_output" => {
                let call_id = str_field(item, "call_id", &param)?.to_string();
                let output = item.get("output").unwrap_or(&Value::Null);
                let text = content_text(output, &format!("{param}.output"))?;
                let mut m = message("tool", text);
                m.tool_call_id = Some(call_id);
                conv.push(m);
            }
            // Earlier reasoning is not replayed (chat templates drop it).
            "reasoning" => {}
            other => {
                return Err(invalid(
                    &format!("{param}.type"),
                    format!(
                        "Input items of type `{other}` are not supported (message, \
                         function_call, function_call_output, reasoning are)."
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// `text.format` as a chat `response_format`.
fn response_format(text: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(format) = text.and_then(|t| t.get("format")).filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let kind = format.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(json!({"type": "json_object"}))),
        "json_schema" => {
            let schema = format.get("schema").cloned().ok_or_else(|| {
                invalid(
                    "text.format.schema",
                    "A `json_schema` format needs `schema`.",
                )
            })?;
            Ok(Some(json!({
                "type": "json_schema",
                "json_schema": {
                    "name": format.get("name").cloned().unwrap_or(json!("response")),
                    "schema": schema,
                    "strict": format.get("strict").cloned().unwrap_or(Value::Null),
                }
            })))
        }
        other => Err(invalid(
            "text.format.type",
            format!("`text.format.type` must be text, json_object or json_schema; got `{other}`."),
        )),
    }
}

/// Responses function tools (`name` etc. at the top level) as chat tools.
fn tools(tools: &[Value]) -> Result<Vec<Value>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let kind = t.get("type").and_then(Value::as_str).unwrap_or("");
            if kind != "function" {
                return Err(invalid(
                    &format!("tools[{i}].type"),
                    format!("Only `function` tools are supported; got `{kind}`."),
                ));
            }
            let mut f = serde_json::Map::new();
            for field in ["name", "description", "parameters", "strict"] {
                if let Some(v) = t.get(field).filter(|v| !v.is_null()) {
                    f.insert(field.into(), v.clone());
                }
            }
            Ok(json!({"type": "function", "function": f}))
        })
        .collect()
}

/// `{"type": "function", "name": ...}` -> the chat form; strings pass.
fn tool_choice(choice: Option<&Value>) -> Result<Option<Value>, ApiError> {
    match choice {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(choice.cloned()),
        Some(v) if v.get("type").and_then(Value::as_str) == Some("function") => {
            let name = v.get("name").and_then(Value::as_str).ok_or_else(|| {
                invalid("tool_choice.name", "A function `tool_choice` needs `name`.")
            })?;
            Ok(Some(json!({"type": "function", "function": {"name": name}})))
        }
        Some(_) => Err(invalid(
            "tool_choice",
            "`tool_choice` must be none, auto, required or {\"type\": \"function\", \"name\": ...}.",
        )),
    }
}

/// The chat request for `req`, after the stored `history` (of `previous_response_id`).
pub fn to_chat(req: &ResponsesRequest, history: Vec<ChatMessageIn>) -> Result<Converted, ApiError> {
    objects_only(&[
        ("text", req.text.as_ref()),
        ("reasoning", req.reasoning.as_ref()),
        ("metadata", req.metadata.as_ref()),
        ("stream_options", req.stream_options.as_ref()),
    ])?;
    refuse_unimplemented(req)?;
    let mut conversation = history;
    let input = req
        .input
        .as_ref()
        .filter(|i| !i.is_null())
        .ok_or_else(|| invalid("input", "`input` is required."))?;
    input_items(input, &mut conversation)?;
    let mut messages = Vec::with_capacity(conversation.len() + 1);
    if let Some(i) = req.instructions.as_ref().filter(|i| !i.is_empty()) {
        messages.push(message("system", i.clone()));
    }
    messages.extend(conversation.iter().cloned());
    let chat = ChatCompletionRequest {
        messages,
        sampling: SamplingFields {
            model: req.model.clone(),
            temperature: req.temperature,
            top_p: req.top_p,
            stream: req.stream,
            response_format: response_format(req.text.as_ref())?,
            ..Default::default()
        },
        max_completion_tokens: req.max_output_tokens,
        logprobs: None,
        top_logprobs: None,
        add_generation_prompt: None,
        tools: req.tools.as_deref().map(tools).transpose()?,
        tool_choice: tool_choice(req.tool_choice.as_ref())?,
        parallel_tool_calls: req.parallel_tool_calls,
    };
    Ok(Converted { chat, conversation })
}

/// A chat-path error under the Responses field names.
pub fn rename(e: ApiError) -> ApiError {
    rename_param(e, |p| {
        if p.starts_with("messages") || p == "prompt" {
            Some("input".into())
        } else if p == "max_tokens" || p == "max_completion_tokens" {
            Some("max_output_tokens".into())
        } else if p.starts_with("response_format") {
            Some("text.format".into())
        } else {
            super::flat_tool_param(p, "parameters")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> ResponsesRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn items_become_one_conversation() {
        let r = req(json!({
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And?"}]},
            ],
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
        }));
        let c = to_chat(&r, Vec::new()).unwrap();
        let roles: Vec<_> = c.chat.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
        assert_eq!(c.conversation.len(), 4);
        assert_eq!(
            c.chat.messages[2].tool_calls.as_ref().unwrap()[0]
                .function
                .name,
            "get_weather"
        );
        assert_eq!(c.chat.messages[3].tool_call_id.as_deref(), Some("c1"));
        assert_eq!(c.chat.tools.unwrap()[0]["function"]["name"], "get_weather");
        assert_eq!(
            c.chat.tool_choice.unwrap()["function"]["name"],
            "get_weather"
        );
        assert_eq!(
            c.chat.sampling.response_format.unwrap()["json_schema"]["schema"]["type"],
            "object"
        );
    }

    #[test]
    fn unsupported_fields_and_items_are_named() {
        for (body, param) in [
            (json!({"input": "hi", "background": true}), "background"),
            (
                json!({"input": "hi", "reasoning": {"effort": "high"}}),
                "reasoning.effort",
            ),
            (
                json!({"input": "hi", "tools": [{"type": "web_search"}]}),
                "tools[0].type",
            ),
            (json!({"input": [{"type": "input_image"}]}), "input[0].type"),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}),
                "input[0].content[0].type",
            ),
            (json!({}), "input"),
            (json!({"input": "hi", "text": "plain"}), "text"),
            (
                json!({"input": "hi", "text": {"format": {"type": "yaml"}}}),
                "text.format.type",
            ),
        ] {
            match to_chat(&req(body.clone()), Vec::new()) {
                Err(ApiError::InvalidParam { param: Some(p), .. }) => {
                    assert_eq!(p, param, "{body}")
                }
                other => panic!("{body}: {:?}", other.err()),
            }
        }
        let e = rename(ApiError::invalid("tools[1].function.parameters", "x"));
        assert!(
            matches!(e, ApiError::InvalidParam { param: Some(p), .. } if p == "tools[1].parameters")
        );
    }
}
