//! The request documents of the Responses (`/v1/responses`) and Anthropic Messages
//! (`/v1/messages`, `/v1/messages/count_tokens`) APIs as the server enforces them. Their
//! handlers read `input` items, content blocks, tools and choices field by field
//! (`convert::responses`, `convert::messages`) and then take the chat path, so what the derive
//! sees (`Object`) is far looser than what is accepted. These patches state it: item and block
//! shapes per role, the refused fields, and the served facts the chat path checks (structured
//! outputs, the tool-call parser, the reasoning parser).
//!
//! Two documents differ by route on purpose: `/v1/messages` requires `max_tokens` and needs the
//! reasoning parser for `thinking`, while count_tokens ignores `max_tokens` and `stream` and
//! counts a `thinking` request without generating; count_tokens gets its own schema.

use serde_json::{json, Value};

use super::openapi_constraints::{at, ServedFacts};

/// f32's largest value: the sampler's precision bounds temperatures.
const F32_MAX: f64 = f32::MAX as f64;

const RESPONSES: &str = "/components/schemas/ResponsesRequest";
const MESSAGES: &str = "/components/schemas/MessagesRequest";
/// The count_tokens copy of [`MESSAGES`].
const COUNT_TOKENS_NAME: &str = "MessagesCountTokensRequest";

/// Patches both documents; without a chat template (every request refused) the routes are not
/// offered.
pub fn apply(doc: &mut Value, facts: &ServedFacts) -> Result<(), String> {
    responses(doc, facts)?;
    messages(doc, facts)?;
    streams(doc)?;
    // The echoed `tool_choice` is a string or an object, as sent.
    at(
        doc,
        "/components/schemas/ResponseObject/properties/tool_choice",
    )?["type"] = json!(["string", "object"]);
    if !facts.has_chat_template {
        let paths = at(doc, "/paths")?
            .as_object_mut()
            .ok_or("paths is not an object")?;
        for p in ["/v1/responses", "/v1/messages", "/v1/messages/count_tokens"] {
            paths.remove(p);
        }
    }
    Ok(())
}

/// `{"type": ...}` choices of a Responses or Messages tool choice, by what the model serves.
struct ToolChoices {
    none: Value,
    auto: Value,
    required: Value,
    named: Value,
}

fn tool_choice_schema(c: ToolChoices, facts: &ServedFacts, description: &str) -> Value {
    let mut any = vec![json!({"type": "null"}), c.none];
    if facts.tool_parser {
        any.push(c.auto);
    }
    if facts.structured_outputs {
        any.push(c.required);
        any.push(c.named);
    }
    json!({"anyOf": any, "description": description})
}

/// Without a parser and without structured outputs every tool choice but `none` is refused,
/// and the default with tools is `auto`: tools only come with an explicit `none`.
fn tools_need_none(req: &mut Value, facts: &ServedFacts, none: Value) {
    if !facts.tool_parser && !facts.structured_outputs {
        req["anyOf"] = json!([
            {"properties": {"tools": {"type": ["array", "null"], "maxItems": 0}}},
            {"required": ["tool_choice"], "properties": {"tool_choice": none}},
        ]);
    }
}

/// A text part list or a string, as `input` message content and function call outputs.
fn responses_content() -> Value {
    json!({"anyOf": [
        {"type": "string"},
        {"type": "array", "items": {
            "type": "object",
            "required": ["type", "text"],
            "properties": {
                "type": {"enum": ["input_text", "output_text", "text"]},
                "text": {"type": "string"},
            },
        }},
    ]})
}

fn responses(doc: &mut Value, facts: &ServedFacts) -> Result<(), String> {
    let content = responses_content();
    let item = json!({"anyOf": [
        {
            "type": "object",
            "description": "A message (`type` may be left out).",
            "required": ["role", "content"],
            "properties": {
                "type": {"const": "message"},
                "role": {"enum": ["user", "assistant", "system", "developer"]},
                "content": content,
            },
        },
        {
            "type": "object",
            "required": ["type", "call_id", "name", "arguments"],
            "properties": {
                "type": {"const": "function_call"},
                "call_id": {"type": "string"},
                "name": {"type": "string"},
                "arguments": {"type": "string", "format": "json-text"},
            },
        },
        {
            "type": "object",
            "required": ["type", "call_id", "output"],
            "properties": {
                "type": {"const": "function_call_output"},
                "call_id": {"type": "string"},
                "output": content,
            },
        },
        {
            "type": "object",
            "description": "Earlier reasoning: accepted and not replayed.",
            "required": ["type"],
            "properties": {"type": {"const": "reasoning"}},
        },
    ]});
    let req = at(doc, RESPONSES)?;
    let props = req["properties"]
        .as_object_mut()
        .ok_or("ResponsesRequest has no properties")?;
    props.insert(
        "input".into(),
        json!({
            "description": "A string (one user message) or a list of items: messages, \
                `function_call`, `function_call_output` and `reasoning` items.",
            "anyOf": [{"type": "string"}, {"type": "array", "items": item}],
        }),
    );
    props["temperature"]["maximum"] = json!(F32_MAX);
    props.insert(
        "text".into(),
        json!({
            "type": ["object", "null"],
            "properties": {
                "format": responses_format(facts),
                "verbosity": {"enum": ["medium", null], "description": "Only `medium`."},
            },
        }),
    );
    props.insert(
        "reasoning".into(),
        json!({
            "type": ["object", "null"],
            "properties": {"effort": {"type": "null", "description": "Not supported."}},
        }),
    );
    for f in ["max_tool_calls", "conversation", "prompt"] {
        props.insert(
            f.into(),
            json!({"type": "null", "description": "Not implemented: refused when set."}),
        );
    }
    props.insert(
        "background".into(),
        json!({"enum": [false, null], "description": "Not implemented: only false."}),
    );
    props.insert(
        "tools".into(),
        json!({
            "type": ["array", "null"],
            "uniqueItems": true,
            "description": "Function tools, each name once.",
            "items": {
                "type": "object",
                "required": ["type", "name"],
                "properties": {
                    "type": {"const": "function"},
                    "name": {"type": "string", "minLength": 1},
                    "parameters": {"type": ["object", "null"]},
                },
            },
        }),
    );
    let none = json!({"const": "none"});
    props.insert(
        "tool_choice".into(),
        tool_choice_schema(
            ToolChoices {
                none: none.clone(),
                auto: json!({"const": "auto"}),
                required: json!({"const": "required"}),
                named: json!({
                    "type": "object",
                    "required": ["type", "name"],
                    "properties": {"type": {"const": "function"}, "name": {"type": "string"}},
                }),
            },
            facts,
            "`none`, `auto` (the default with tools; needs a tool-call parser), `required` or \
             `{\"type\": \"function\", \"name\": ...}` (these two need structured outputs). \
             Anything but `none` needs `tools`; a named tool must be among them.",
        ),
    );
    tools_need_none(req, facts, none);
    // No messages at all (no item but reasoning, no instructions, no stored conversation) is
    // refused.
    let conversation = json!([
        {"properties": {"input": {"anyOf": [
            {"type": "string"},
            {"contains": {"not": {"required": ["type"], "properties": {"type": {"const": "reasoning"}}}}},
        ]}}},
        {"required": ["instructions"], "properties": {"instructions": {"type": "string", "minLength": 1}}},
        {"required": ["previous_response_id"], "properties": {"previous_response_id": {"type": "string"}}},
    ]);
    let required = req["required"].as_array().cloned().unwrap_or_default();
    let mut required: Vec<Value> = required.into_iter().filter(|r| r != "input").collect();
    required.push(json!("input"));
    req["required"] = Value::Array(required);
    both(req, conversation);
    Ok(())
}

/// `text.format`: text always; the JSON formats with structured outputs.
fn responses_format(facts: &ServedFacts) -> Value {
    let mut any = vec![
        json!({"type": "null"}),
        json!({"type": "object", "required": ["type"], "properties": {"type": {"const": "text"}}}),
    ];
    if facts.structured_outputs {
        any.push(json!({
            "type": "object", "required": ["type"], "properties": {"type": {"const": "json_object"}},
        }));
        any.push(json!({
            "type": "object",
            "required": ["type", "schema"],
            "properties": {
                "type": {"const": "json_schema"},
                "name": {"type": "string"},
                "schema": {"type": "object"},
                "strict": {"type": ["boolean", "null"]},
            },
        }));
    }
    json!({"anyOf": any})
}

/// Adds `alternatives` as an `anyOf` the schema must also satisfy (beside an existing one).
fn both(schema: &mut Value, alternatives: Value) {
    match schema.get("anyOf").cloned() {
        None => schema["anyOf"] = alternatives,
        Some(existing) => {
            let all = schema
                .get("allOf")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut all = all;
            all.push(json!({"anyOf": existing}));
            all.push(json!({"anyOf": alternatives}));
            schema.as_object_mut().expect("an object").remove("anyOf");
            schema["allOf"] = Value::Array(all);
        }
    }
}

fn text_block() -> Value {
    json!({
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    })
}

/// A message's content blocks by role: users send text and tool results, assistants text,
/// tool uses and (dropped) thinking.
fn anthropic_message() -> Value {
    let text = text_block();
    let tool_result = json!({
        "type": "object",
        "required": ["type", "tool_use_id"],
        "properties": {
            "type": {"const": "tool_result"},
            "tool_use_id": {"type": "string"},
            "content": {"anyOf": [
                {"type": "null"},
                {"type": "string"},
                {"type": "array", "items": text},
            ]},
        },
    });
    let tool_use = json!({
        "type": "object",
        "required": ["type", "id", "name"],
        "properties": {
            "type": {"const": "tool_use"},
            "id": {"type": "string"},
            "name": {"type": "string"},
            "input": {"type": "object"},
        },
    });
    let thinking = json!({
        "type": "object",
        "description": "Earlier reasoning: accepted and not replayed.",
        "required": ["type"],
        "properties": {"type": {"enum": ["thinking", "redacted_thinking"]}},
    });
    let per_role = |role: &str, blocks: Vec<Value>| {
        json!({
            "type": "object",
            "required": ["role", "content"],
            "properties": {
                "role": {"const": role},
                "content": {"anyOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"anyOf": blocks}},
                ]},
            },
        })
    };
    json!({"anyOf": [
        per_role("user", vec![text.clone(), tool_result]),
        per_role("assistant", vec![text, tool_use, thinking]),
    ]})
}

fn messages(doc: &mut Value, facts: &ServedFacts) -> Result<(), String> {
    let req = at(doc, MESSAGES)?;
    let props = req["properties"]
        .as_object_mut()
        .ok_or("MessagesRequest has no properties")?;
    props.insert(
        "messages".into(),
        json!({"type": "array", "minItems": 1, "items": anthropic_message()}),
    );
    props.insert(
        "system".into(),
        json!({"anyOf": [
            {"type": "null"},
            {"type": "string"},
            {"type": "array", "items": text_block()},
        ]}),
    );
    props["temperature"]["maximum"] = json!(F32_MAX);
    for f in ["mcp_servers", "container"] {
        props.insert(
            f.into(),
            json!({"type": "null", "description": "Not implemented: refused when set."}),
        );
    }
    props.insert(
        "tools".into(),
        json!({
            "type": ["array", "null"],
            "uniqueItems": true,
            "description": "Client tools, each name once; server tools are refused.",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "type": {"enum": ["custom", null]},
                    "name": {"type": "string", "minLength": 1},
                    "input_schema": {"type": ["object", "null"]},
                },
            },
        }),
    );
    let parallel = json!({"type": ["boolean", "null"]});
    let choice = |kind: &str| {
        json!({"type": "object", "required": ["type"], "properties": {
            "type": {"const": kind}, "disable_parallel_tool_use": parallel}})
    };
    let none = choice("none");
    props.insert(
        "tool_choice".into(),
        tool_choice_schema(
            ToolChoices {
                none: none.clone(),
                auto: choice("auto"),
                required: choice("any"),
                named: json!({
                    "type": "object",
                    "required": ["type", "name"],
                    "properties": {"type": {"const": "tool"}, "name": {"type": "string"},
                        "disable_parallel_tool_use": parallel},
                }),
            },
            facts,
            "`{\"type\": \"none\"}`, `auto` (the default with tools; needs a tool-call parser), \
             `any` or `tool` with `name` (these two need structured outputs). Anything but \
             `none` needs `tools`; a named tool must be among them.",
        ),
    );
    props.insert(
        "output_config".into(),
        json!({
            "type": ["object", "null"],
            "properties": {
                "effort": {"type": "null", "description": "Not supported."},
                "format": output_format(facts),
            },
        }),
    );
    tools_need_none(req, facts, none);
    // count_tokens: the same request, with `max_tokens` ignored (`stream` too) and any valid
    // `thinking` counted.
    let mut count = req.clone();
    count["properties"]["max_tokens"] = json!({
        "type": ["integer", "null"],
        "description": "Ignored here.",
    });
    count["properties"]["thinking"] = thinking(true);
    // /v1/messages: `max_tokens` is required, and thinking needs the reasoning parser.
    req["required"] = json!(["messages", "max_tokens"]);
    req["properties"]["max_tokens"]["type"] = json!("integer");
    req["properties"]["thinking"] = thinking(facts.reasoning_parser);
    at(doc, "/components/schemas")?[COUNT_TOKENS_NAME] = count;
    at(
        doc,
        "/paths/~1v1~1messages~1count_tokens/post/requestBody/content/application~1json/schema",
    )?["$ref"] = json!(format!("#/components/schemas/{COUNT_TOKENS_NAME}"));
    Ok(())
}

/// `thinking`: `enabled` without a budget or `adaptive` (when reasoning is served), or
/// `disabled`.
fn thinking(reasoning: bool) -> Value {
    let mut any = vec![
        json!({"type": "null"}),
        json!({"type": "object", "required": ["type"], "properties": {"type": {"const": "disabled"}}}),
    ];
    if reasoning {
        any.push(json!({
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"const": "enabled"},
                "budget_tokens": {"type": "null", "description": "Not enforced: refused."},
            },
        }));
        any.push(json!({
            "type": "object", "required": ["type"], "properties": {"type": {"const": "adaptive"}},
        }));
    }
    json!({
        "anyOf": any,
        "description": "`enabled` (without `budget_tokens`, which is not enforced) and `adaptive` \
            need the server's --reasoning-parser; the reasoning comes back as thinking blocks.",
    })
}

/// `output_config.format`: only a JSON schema, with structured outputs.
fn output_format(facts: &ServedFacts) -> Value {
    let mut any = vec![json!({"type": "null"})];
    if facts.structured_outputs {
        any.push(json!({
            "type": "object",
            "required": ["type", "schema"],
            "properties": {"type": {"const": "json_schema"}, "schema": {"type": "object"}},
        }));
    }
    json!({"anyOf": any})
}

/// With `stream`, both APIs answer with named SSE events whose JSON `data` carries the same
/// `type`.
fn streams(doc: &mut Value) -> Result<(), String> {
    for path in ["/v1/responses", "/v1/messages"] {
        let p = format!(
            "/paths/{}/post/responses/200/content",
            path.replace('/', "~1")
        );
        at(doc, &p)?["text/event-stream"] = json!({
            "schema": {
                "type": "object",
                "description": "One event: its name, and its JSON `data` with the same `type`.",
                "required": ["data"],
                "properties": {
                    "event": {"type": "string"},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {
                            "type": "object",
                            "required": ["type"],
                            "properties": {"type": {"type": "string"}},
                        },
                    },
                },
            },
        });
    }
    Ok(())
}
