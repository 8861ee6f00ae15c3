//! An Anthropic Messages request into the chat request: `system` and content blocks into
//! messages (`tool_use` into assistant calls, `tool_result` into tool messages), `input_schema`
//! tools into chat tools, `tool_choice` into the chat form.

use serde_json::{json, Value};

use super::{message, objects_only, push_call, rename_param};
use crate::server::error::ApiError;
use crate::server::wire::{
    ChatCompletionRequest, ChatMessageIn, MessagesRequest, SamplingFields, StopField,
};

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message)
}

/// Text of `text` blocks (or a string), joined by newlines.
fn blocks_text(content: &Value, param: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (j, b) in blocks.iter().enumerate() {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        texts.push(b.get("text").and_then(Value::as_str).ok_or_else(|| {
                            invalid(&format!("{param}[{j}].text"), "A text block needs `text`.")
                        })?)
                    }
                    other => {
                        return Err(invalid(
                            &format!("{param}[{j}].type"),
                            format!(
                                "Only text blocks are supported here; got `{}`.",
                                other.unwrap_or("")
                            ),
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Value::Null => Ok(String::new()),
        _ => Err(invalid(param, "Expected a string or a list of blocks.")),
    }
}

fn str_field<'a>(b: &'a Value, field: &str, param: &str) -> Result<&'a str, ApiError> {
    b.get(field).and_then(Value::as_str).ok_or_else(|| {
        invalid(
            &format!("{param}.{field}"),
            format!("`{field}` is required."),
        )
    })
}

fn messages(req: &MessagesRequest) -> Result<Vec<ChatMessageIn>, ApiError> {
    let mut conv = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = req.system.as_ref().filter(|s| !s.is_null()) {
        let text = blocks_text(system, "system")?;
        if !text.is_empty() {
            conv.push(message("system", text));
        }
    }
    if req.messages.is_empty() {
        return Err(invalid("messages", "`messages` must not be empty."));
    }
    for (i, m) in req.messages.iter().enumerate() {
        let param = format!("messages[{i}].content");
        let role = m.role.as_str();
        if role != "user" && role != "assistant" {
            return Err(invalid(
                &format!("messages[{i}].role"),
                format!("`role` must be user or assistant; got `{role}`."),
            ));
        }
        let blocks = match &m.content {
            Value::String(s) => {
                conv.push(message(role, s.clone()));
                continue;
            }
            Value::Array(b) => b,
            _ => {
                return Err(invalid(
                    &param,
                    "`content` must be a string or a list of blocks.",
                ))
            }
        };
        let mut text = Vec::new();
        let mut turn = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let bp = format!("{param}[{j}]");
            let kind = b.get("type").and_then(Value::as_str).unwrap_or("");
            match (role, kind) {
                (_, "text") => text.push(str_field(b, "text", &bp)?.to_string()),
                ("assistant", "tool_use") => {
                    let input = b.get("input").cloned().unwrap_or(json!({}));
                    if !input.is_object() {
                        return Err(invalid(
                            &format!("{bp}.input"),
                            "`input` must be an object.",
                        ));
                    }
                    turn.push((
                        str_field(b, "id", &bp)?.to_string(),
                        str_field(b, "name", &bp)?.to_string(),
                        input.to_string(),
                    ));
                }
                ("user", "tool_result") => {
                    let id = str_field(b, "tool_use_id", &bp)?.to_string();
                    let content = b.get("content").unwrap_or(&Value::Null);
                    let mut m = message("tool", blocks_text(content, &format!("{bp}.content"))?);
                    m.tool_call_id = Some(id);
                    conv.push(m);
                }
                // Earlier reasoning is not replayed (chat templates drop it).
                ("assistant", "thinking" | "redacted_thinking") => {}
                _ => {
                    return Err(invalid(
                        &format!("{bp}.type"),
                        format!("`{kind}` blocks are not supported in {role} messages."),
                    ))
                }
            }
        }
        if !text.is_empty() || turn.is_empty() {
            conv.push(message(role, text.join("\n")));
        }
        for (id, name, args) in turn {
            push_call(&mut conv, id, name, args);
        }
    }
    Ok(conv)
}

/// Client tools (`input_schema`) as chat tools; Anthropic's server tools are refused.
fn tools(tools: &[Value]) -> Result<Vec<Value>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            // Client tools have no type or `custom`; anything else (a server tool such as
            // `web_search_20250305`, or a type that is not even a string) is refused.
            match t.get("type") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s == "custom" => {}
                Some(other) => {
                    return Err(invalid(
                        &format!("tools[{i}].type"),
                        format!(
                            "Only client tools (with `input_schema`) are supported; got `{}`.",
                            other
                                .as_str()
                                .map_or_else(|| other.to_string(), String::from)
                        ),
                    ))
                }
            }
            let mut f = serde_json::Map::new();
            for (from, to) in [
                ("name", "name"),
                ("description", "description"),
                ("input_schema", "parameters"),
            ] {
                if let Some(v) = t.get(from).filter(|v| !v.is_null()) {
                    f.insert(to.into(), v.clone());
                }
            }
            Ok(json!({"type": "function", "function": f}))
        })
        .collect()
}

/// `tool_choice` as the chat `tool_choice` and `parallel_tool_calls`.
fn tool_choice(choice: Option<&Value>) -> Result<(Option<Value>, Option<bool>), ApiError> {
    let Some(c) = choice.filter(|c| !c.is_null()) else {
        return Ok((None, None));
    };
    let parallel = match c.get("disable_parallel_tool_use") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(d)) => Some(!d),
        Some(_) => {
            return Err(invalid(
                "tool_choice.disable_parallel_tool_use",
                "`tool_choice.disable_parallel_tool_use` must be a boolean.",
            ))
        }
    };
    let chat = match c.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = str_field(c, "name", "tool_choice")?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => {
            return Err(invalid(
                "tool_choice.type",
                "`tool_choice.type` must be auto, any, tool or none.",
            ))
        }
    };
    Ok((Some(chat), parallel))
}

/// `output_config.format` as a chat `response_format`.
fn output_format(config: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(c) = config.filter(|c| !c.is_null()) else {
        return Ok(None);
    };
    if c.get("effort").is_some_and(|e| !e.is_null()) {
        return Err(invalid(
            "output_config.effort",
            "`output_config.effort` is not supported by this server.",
        ));
    }
    let Some(f) = c.get("format").filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match f.get("type").and_then(Value::as_str) {
        Some("json_schema") => {
            let schema = f
                .get("schema")
                .cloned()
                .ok_or_else(|| invalid("output_config.format.schema", "`schema` is required."))?;
            Ok(Some(json!({
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema},
            })))
        }
        _ => Err(invalid(
            "output_config.format.type",
            "`output_config.format.type` must be json_schema.",
        )),
    }
}

/// Whether `thinking` asks for reasoning.
pub fn wants_thinking(req: &MessagesRequest) -> Result<bool, ApiError> {
    match req.thinking.as_ref().filter(|t| !t.is_null()) {
        None => Ok(false),
        Some(t) => match t.get("type").and_then(Value::as_str) {
            Some("enabled") if t.get("budget_tokens").is_some_and(|b| !b.is_null()) => {
                Err(invalid(
                    "thinking.budget_tokens",
                    "`thinking.budget_tokens` is not enforced by this server: use \
                     `{\"type\": \"adaptive\"}` (reasoning comes back as thinking blocks, \
                     bounded by `max_tokens` only).",
                ))
            }
            Some("enabled") | Some("adaptive") => Ok(true),
            Some("disabled") => Ok(false),
            _ => Err(invalid(
                "thinking.type",
                "`thinking.type` must be enabled, adaptive or disabled.",
            )),
        },
    }
}

/// On /v1/messages, asking for reasoning needs the server's `--reasoning-parser`.
pub fn check_thinking_served(
    req: &MessagesRequest,
    reasoning_served: bool,
) -> Result<(), ApiError> {
    if wants_thinking(req)? && !reasoning_served {
        return Err(invalid(
            "thinking",
            "`thinking` needs a reasoning model served with --reasoning-parser.",
        ));
    }
    Ok(())
}

/// The chat request for `req`. `count_only`: for count_tokens (no `max_tokens` needed).
pub fn to_chat(req: &MessagesRequest, count_only: bool) -> Result<ChatCompletionRequest, ApiError> {
    for (name, on) in [
        (
            "mcp_servers",
            req.mcp_servers.as_ref().is_some_and(|v| !v.is_null()),
        ),
        (
            "container",
            req.container.as_ref().is_some_and(|v| !v.is_null()),
        ),
    ] {
        if on {
            return Err(invalid(
                name,
                format!("`{name}` is not supported by this server."),
            ));
        }
    }
    objects_only(&[
        ("output_config", req.output_config.as_ref()),
        ("metadata", req.metadata.as_ref()),
    ])?;
    if !count_only && req.max_tokens.is_none() {
        return Err(invalid("max_tokens", "`max_tokens` is required."));
    }
    wants_thinking(req)?;
    // Anthropic's `top_k` is at least 0 (the chat path also takes vLLM's -1).
    if let Some(k) = req.top_k.filter(|&k| k < 0) {
        return Err(invalid(
            "top_k",
            format!("`top_k` must be at least 0; got {k}."),
        ));
    }
    let (tool_choice, parallel_tool_calls) = tool_choice(req.tool_choice.as_ref())?;
    Ok(ChatCompletionRequest {
        messages: messages(req)?,
        sampling: SamplingFields {
            model: req.model.clone(),
            max_tokens: if count_only { None } else { req.max_tokens },
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            stop: req.stop_sequences.clone().map(StopField::Many),
            stream: if count_only { None } else { req.stream },
            response_format: output_format(req.output_config.as_ref())?,
            ..Default::default()
        },
        max_completion_tokens: None,
        logprobs: None,
        top_logprobs: None,
        add_generation_prompt: None,
        tools: req.tools.as_deref().map(tools).transpose()?,
        tool_choice,
        parallel_tool_calls,
    })
}

/// A chat-path error under the Messages field names.
pub fn rename(e: ApiError) -> ApiError {
    rename_param(e, |p| match p {
        "max_completion_tokens" => Some("max_tokens".into()),
        "stop" => Some("stop_sequences".into()),
        "prompt" => Some("messages".into()),
        p if p.starts_with("response_format") => Some("output_config.format".into()),
        _ => super::flat_tool_param(p, "input_schema"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> MessagesRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn blocks_become_chat_messages() {
        let r = req(json!({
            "max_tokens": 10,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": ""},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "text", "text": "Thanks"}]},
            ],
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"],
            "top_k": 5,
        }));
        let c = to_chat(&r, false).unwrap();
        let roles: Vec<_> = c.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
        let call = &c.messages[2].tool_calls.as_ref().unwrap()[0];
        assert_eq!(
            (call.id.as_deref(), call.function.arguments.as_str()),
            (Some("t1"), "{\"city\":\"Paris\"}")
        );
        assert_eq!(c.messages[3].tool_call_id.as_deref(), Some("t1"));
        assert_eq!(
            c.tools.unwrap()[0]["function"]["parameters"]["type"],
            "object"
        );
        assert_eq!(c.tool_choice, Some(json!("required")));
        assert_eq!(c.parallel_tool_calls, Some(false));
        assert_eq!(c.sampling.top_k, Some(5));
    }

    #[test]
    fn bad_requests_name_the_field() {
        let msgs = json!([{"role": "user", "content": "hi"}]);
        for (body, param) in [
            (json!({"messages": msgs}), "max_tokens"),
            (
                json!({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "x", "name": "f"}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"max_tokens": 5, "messages": msgs, "tools": [{"type": "web_search_20250305", "name": "w"}]}),
                "tools[0].type",
            ),
            (
                json!({"max_tokens": 5, "messages": msgs, "tool_choice": {"type": "tool"}}),
                "tool_choice.name",
            ),
            (
                json!({"max_tokens": 5, "messages": msgs,
                    "tool_choice": {"type": "any", "disable_parallel_tool_use": "yes"}}),
                "tool_choice.disable_parallel_tool_use",
            ),
            (
                json!({"max_tokens": 5, "messages": msgs, "tools": [{"type": 5, "name": "w"}]}),
                "tools[0].type",
            ),
            (
                json!({"max_tokens": 5, "messages": msgs, "top_k": -1}),
                "top_k",
            ),
            (
                json!({"max_tokens": 5, "messages": msgs, "output_config": [null]}),
                "output_config",
            ),
            (json!({"max_tokens": 5, "messages": []}), "messages"),
            (
                json!({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
                "messages[0].role",
            ),
        ] {
            match to_chat(&req(body.clone()), false) {
                Err(ApiError::InvalidParam { param: Some(p), .. }) => {
                    assert_eq!(p, param, "{body}")
                }
                other => panic!("{body}: {:?}", other.err()),
            }
        }
        assert!(to_chat(&req(json!({"messages": msgs})), true).is_ok());
    }
}
