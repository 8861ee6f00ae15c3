//! What the served OpenAPI document must say beyond what the wire types can declare, so that a
//! request the document calls valid is one the server accepts, and the other way round:
//! - request shapes the derive cannot express (one of `prompt` or `messages` for /tokenize, the
//!   roles and the per-role fields of a chat message, text-only content parts);
//! - facts of the loaded model and the server's configuration: the vocabulary bounds token ids
//!   and `logit_bias` keys, `model` is one of the served names, a model without a chat template
//!   has no chat endpoint, and under fcfs `priority` must be 0.
//!
//! Each patch names the place it changes by a JSON pointer; a pointer that no longer resolves is
//! an error, so that a change of the wire types cannot silently leave the document untrue.

use serde_json::{json, Value};

/// The facts of the served model and configuration the document depends on.
#[derive(Debug, Clone)]
pub struct ServedFacts {
    pub served_model_names: Vec<String>,
    pub vocab_size: usize,
    pub has_chat_template: bool,
    /// Whether the `priority` field may be nonzero (`--scheduling-policy priority`).
    pub priority_policy: bool,
    /// Whether constrained decoding works with this model's tokenizer.
    pub structured_outputs: bool,
    /// Whether `tool_choice: "auto"` has a parser for this model's call format.
    pub tool_parser: bool,
    /// Whether the empty text tokenizes to no token (no BOS is added), so `""` is no prompt.
    pub empty_text_is_empty: bool,
    /// Whether reasoning is split off (`--reasoning-parser`): Anthropic `thinking` needs it.
    pub reasoning_parser: bool,
}

/// The fields that ask for constrained decoding (besides `response_format`).
const STRUCTURED_FIELDS: [&str; 5] = [
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
];

/// The token-id arrays validated against the vocabulary.
const TOKEN_ID_ITEMS: [&str; 3] = [
    "/components/schemas/PromptInput/oneOf/2/items",
    "/components/schemas/PromptInput/oneOf/3/items/items",
    "/components/schemas/DetokenizeRequest/properties/tokens/items",
];

/// The request fields naming the model.
const MODEL_FIELDS: [&str; 5] = [
    "/components/schemas/SamplingFields/properties/model",
    "/components/schemas/ResponsesRequest/properties/model",
    "/components/schemas/MessagesRequest/properties/model",
    "/components/schemas/TokenizeRequest/properties/model",
    "/components/schemas/DetokenizeRequest/properties/model",
];

const CHAT_PATH: &str = "/v1/chat/completions";

/// Roles `messages` accepts (`developer` is read as `system`).
const PLAIN_ROLES: [&str; 3] = ["system", "developer", "user"];

/// Characters `str::trim` removes (Unicode White_Space), as a regex class.
const TRIMMED: &str =
    r"[\t\n\x0B\x0C\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]";

/// Applies the request shapes and the served facts to the document (as JSON).
pub fn apply(doc: &mut Value, facts: &ServedFacts) -> Result<(), String> {
    shapes(doc)?;
    let max_id = facts.vocab_size.saturating_sub(1);
    for p in TOKEN_ID_ITEMS {
        at(doc, p)?["maximum"] = json!(max_id);
    }
    let mut names: Vec<Value> = facts.served_model_names.iter().map(|n| json!(n)).collect();
    // Empty and null both mean "the served model".
    names.extend([json!(""), Value::Null]);
    for p in MODEL_FIELDS {
        at(doc, p)?["enum"] = Value::Array(names.clone());
    }
    let model_param = at(doc, "/paths/~1v1~1models~1{model}/get/parameters/0/schema")?;
    model_param["enum"] = json!(facts.served_model_names);
    let bias = at(
        doc,
        "/components/schemas/SamplingFields/properties/logit_bias",
    )?;
    bias["propertyNames"] = json!({
        "type": "string",
        "pattern": format!("^{TRIMMED}*\\+?0*({}){TRIMMED}*$", uint_below(facts.vocab_size)),
    });
    if !facts.priority_policy {
        let p = at(
            doc,
            "/components/schemas/SamplingFields/properties/priority",
        )?;
        p["minimum"] = json!(0);
        p["maximum"] = json!(0);
        p["description"] = json!("Only 0: the server runs `--scheduling-policy fcfs`.");
    }
    if !facts.structured_outputs {
        // Refused for this model: only null (and a plain-text `response_format`) pass.
        let props = at(doc, "/components/schemas/SamplingFields/properties")?;
        for f in STRUCTURED_FIELDS {
            props[f] = json!({
                "type": "null",
                "description": "Structured outputs are not available for this model.",
            });
        }
        props["response_format"] = json!({
            "anyOf": [
                {"type": "null"},
                {"type": "object", "required": ["type"], "properties": {"type": {"const": "text"}}},
            ],
            "description": "Only `{\"type\": \"text\"}`: structured outputs are not available for this model.",
        });
    }
    tool_fields(doc, facts)?;
    prompt_fields(doc, facts)?;
    super::openapi_apis::apply(doc, facts)?;
    if !facts.has_chat_template {
        // Every chat request would be refused: the endpoint is not offered, and /tokenize
        // takes only `prompt`.
        at(doc, "/paths")?
            .as_object_mut()
            .expect("paths is an object")
            .remove(CHAT_PATH);
        let t = at(doc, "/components/schemas/TokenizeRequest")?;
        t["properties"]
            .as_object_mut()
            .ok_or("TokenizeRequest has no properties")?
            .remove("messages");
        t.as_object_mut().expect("an object").remove("anyOf");
        t["required"] = json!(["prompt"]);
        t["properties"]["prompt"]["type"] = json!("string");
    }
    Ok(())
}

/// Shapes that hold whatever model is served.
fn shapes(doc: &mut Value) -> Result<(), String> {
    // /tokenize: `prompt` (a string) or `messages` (a non-empty list); `messages` wins.
    let t = at(doc, "/components/schemas/TokenizeRequest")?;
    t["properties"]["messages"]["minItems"] = json!(1);
    t["anyOf"] = json!([
        {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
    ]);
    // A message: its role, and the fields that belong to it.
    let m = at(doc, "/components/schemas/ChatMessageIn")?;
    m["properties"]["role"]["enum"] = json!(["system", "developer", "user", "assistant", "tool"]);
    m["anyOf"] = json!([
        {
            "properties": {"role": {"enum": PLAIN_ROLES}, "tool_calls": {"type": "null"}},
        },
        {"properties": {"role": {"const": "assistant"}}},
        {
            "required": ["tool_call_id"],
            "properties": {
                "role": {"const": "tool"},
                "tool_call_id": {"type": "string"},
                "tool_calls": {"type": "null"},
            },
        },
    ]);
    // With `stream`, the 200 is an SSE stream.
    for (path, chunk) in [
        ("/v1/chat/completions", "ChatCompletionChunk"),
        ("/v1/completions", "CompletionResponse"),
    ] {
        let p = format!(
            "/paths/{}/post/responses/200/content",
            path.replace('/', "~1")
        );
        let chunk = format!("#/components/schemas/{chunk}");
        at(doc, &p)?["text/event-stream"] = json!({
            "schema": {
                "type": "object",
                "description": "One event: a chunk, an error that ends the stream, or `[DONE]`.",
                "required": ["data"],
                "properties": {"data": {"anyOf": [
                    {"const": "[DONE]"},
                    {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"anyOf": [
                            {"$ref": chunk},
                            {"$ref": "#/components/schemas/ErrorResponse"},
                        ]},
                    },
                ]}},
            },
        });
    }
    // A call's arguments are JSON text (a format the test's schemathesis hooks know).
    at(
        doc,
        "/components/schemas/FunctionCallIn/properties/arguments",
    )?["format"] = json!("json-text");
    // Content parts: text only, with its text.
    let part = at(doc, "/components/schemas/ContentPart")?;
    part["properties"]["type"]["enum"] = json!(["text"]);
    part["properties"]["text"]["type"] = json!("string");
    part["required"] = json!(["type", "text"]);
    Ok(())
}

/// `tools` items, and the `tool_choice` values this model can serve: `auto` needs a call
/// parser, `required` and a named tool need structured outputs. Without either, tools are only
/// accepted with `tool_choice: "none"` (the default with tools is `auto`).
fn tool_fields(doc: &mut Value, facts: &ServedFacts) -> Result<(), String> {
    let req = at(doc, "/components/schemas/ChatCompletionRequest/allOf/1")?;
    req["properties"]["tools"] = json!({
        "type": ["array", "null"],
        "uniqueItems": true,
        "description": "Function tools, each name once.",
        "items": {
            "type": "object",
            "required": ["type", "function"],
            "properties": {
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "parameters": {"type": ["object", "null"]},
                    },
                },
            },
        },
    });
    let mut choices = vec![json!({"type": "null"}), json!({"const": "none"})];
    if facts.tool_parser {
        choices.push(json!({"const": "auto"}));
    }
    if facts.structured_outputs {
        choices.push(json!({"const": "required"}));
        choices.push(json!({
            "type": "object",
            "required": ["type", "function"],
            "properties": {
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}},
                },
            },
        }));
    }
    req["properties"]["tool_choice"] = json!({
        "anyOf": choices,
        "description": "`none`, `auto` (the default with tools; needs a tool-call parser), \
            `required` or `{\"type\": \"function\", \"function\": {\"name\": ...}}` (these two need \
            structured outputs). Anything but `none` needs `tools`; a named tool must be among them.",
    });
    if !facts.tool_parser && !facts.structured_outputs {
        req["anyOf"] = json!([
            {"properties": {"tools": {"type": ["array", "null"], "maxItems": 0}}},
            {"required": ["tool_choice"], "properties": {"tool_choice": {"const": "none"}}},
        ]);
    }
    Ok(())
}

/// Prompts: no empty list, and no empty text when it would tokenize to nothing.
fn prompt_fields(doc: &mut Value, facts: &ServedFacts) -> Result<(), String> {
    let p = at(doc, "/components/schemas/PromptInput/oneOf")?;
    for i in 1..4 {
        p[i]["minItems"] = json!(1);
    }
    p[3]["items"]["minItems"] = json!(1);
    if facts.empty_text_is_empty {
        p[0]["minLength"] = json!(1);
        p[1]["items"]["minLength"] = json!(1);
    }
    Ok(())
}

pub(super) fn at<'a>(doc: &'a mut Value, pointer: &str) -> Result<&'a mut Value, String> {
    doc.pointer_mut(pointer)
        .ok_or_else(|| format!("the OpenAPI document has no `{pointer}`"))
}

/// A regex alternation matching exactly the decimal numbers 0..n (no leading zeros), for n >= 1.
pub fn uint_below(n: usize) -> String {
    if n <= 1 {
        return "0".into();
    }
    let max = (n - 1).to_string();
    let digits: Vec<u32> = max.chars().map(|c| c.to_digit(10).unwrap()).collect();
    let k = digits.len();
    let mut alts = Vec::new();
    // Shorter numbers: one digit, or a nonzero digit then 1..k-2 more.
    if k > 1 {
        alts.push("[0-9]".to_string());
        if k > 2 {
            alts.push(format!("[1-9][0-9]{{1,{}}}", k - 2));
        }
    }
    // Numbers of k digits: equal to `max` up to position i, lower there, anything after.
    for i in 0..k {
        let lo = if i == 0 && k > 1 { 1 } else { 0 };
        if digits[i] == lo {
            continue;
        }
        let rest = k - i - 1;
        let tail = if rest > 0 {
            format!("[0-9]{{{rest}}}")
        } else {
            String::new()
        };
        alts.push(format!("{}[{}-{}]{}", &max[..i], lo, digits[i] - 1, tail));
    }
    alts.push(max);
    alts.join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(n: usize, s: &str) -> bool {
        let re = regex::Regex::new(&format!("^({})$", uint_below(n))).unwrap();
        re.is_match(s)
    }

    #[test]
    fn uint_below_is_exact() {
        for n in [1, 2, 9, 10, 11, 100, 101, 256, 1000, 49152, 151936] {
            for v in 0..n + 200 {
                assert_eq!(matches(n, &v.to_string()), v < n, "n={n} v={v}");
            }
            assert!(!matches(n, "01"), "n={n}");
            assert!(!matches(n, ""), "n={n}");
        }
    }
}
