//! `/v1/responses` (OpenAI's Responses API): request, response object and usage shapes. The
//! stream events are built in `routes::responses` from these.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// A Responses request. `input` items and tools are read field by field in `convert::responses`
/// (so an error names e.g. `input[2].content`); fields flare does not implement are refused when
/// set.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct ResponsesRequest {
    /// Served model name; optional.
    pub model: Option<String>,
    /// A string (one user message) or a list of items: messages (`role`, `content` as a string
    /// or `input_text`/`output_text` parts), `function_call` and `function_call_output`.
    #[schema(value_type = Option<ResponseInputDoc>)]
    pub input: Option<Value>,
    /// A system message placed first (not carried over by `previous_response_id`).
    pub instructions: Option<String>,
    #[schema(minimum = 1)]
    pub max_output_tokens: Option<i64>,
    #[schema(minimum = 0)]
    pub temperature: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", "name", "schema", "strict"}}`.
    #[schema(value_type = Option<Object>)]
    pub text: Option<Value>,
    /// Function tools: `{"type": "function", "name", "description", "parameters", "strict"}`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// `none`, `auto`, `required` or `{"type": "function", "name": ...}`.
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    /// `{"summary": ...}` is accepted; the reasoning (split by the server's
    /// `--reasoning-parser`) comes back as a `reasoning` output item. `effort` is refused.
    #[schema(value_type = Option<Object>)]
    pub reasoning: Option<Value>,
    pub stream: Option<bool>,
    /// Keep the response for GET and `previous_response_id` (default true), for the server's
    /// `--responses-ttl`.
    pub store: Option<bool>,
    /// Continue the conversation of a stored response.
    pub previous_response_id: Option<String>,
    /// Returned as given.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Accepted and ignored.
    pub user: Option<String>,
    /// Accepted and ignored.
    pub service_tier: Option<String>,
    /// Accepted and ignored.
    pub prompt_cache_key: Option<String>,
    /// Accepted and ignored.
    pub safety_identifier: Option<String>,
    /// Accepted and ignored.
    #[schema(value_type = Option<Object>)]
    pub stream_options: Option<Value>,
    /// Not implemented: refused when true.
    pub background: Option<bool>,
    /// Only `disabled` is served.
    #[schema(value_type = Option<TruncationDisabled>)]
    pub truncation: Option<String>,
    /// Not implemented: refused unless 0.
    #[schema(minimum = 0, maximum = 0)]
    pub top_logprobs: Option<i64>,
    /// Not implemented: refused when not empty.
    #[schema(max_items = 0)]
    pub include: Option<Vec<String>>,
    /// Not implemented: refused when set (only null).
    #[schema(value_type = Option<()>)]
    pub max_tool_calls: Option<i64>,
    /// Not implemented: refused when set (only null).
    #[schema(value_type = Option<()>)]
    pub conversation: Option<Value>,
    /// Not implemented (stored prompts): refused when set (only null).
    #[schema(value_type = Option<()>)]
    pub prompt: Option<Value>,
}

/// `truncation`: only `disabled` is served.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TruncationDisabled {
    Disabled,
}

/// One output item.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    Reasoning {
        id: String,
        #[schema(value_type = Vec<Object>)]
        summary: Vec<Value>,
        content: Vec<ReasoningText>,
    },
    Message {
        id: String,
        status: String,
        /// Always `assistant`.
        role: String,
        content: Vec<OutputText>,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        /// JSON text of the arguments object, as generated.
        arguments: String,
        status: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct OutputText {
    /// Always `output_text`.
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
    #[schema(value_type = Vec<Object>)]
    pub annotations: Vec<Value>,
    #[schema(value_type = Vec<Object>)]
    pub logprobs: Vec<Value>,
}

impl OutputText {
    pub fn new(text: String) -> Self {
        Self {
            kind: "output_text".into(),
            text,
            annotations: Vec::new(),
            logprobs: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ReasoningText {
    /// Always `reasoning_text`.
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct InputTokensDetails {
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct OutputTokensDetails {
    pub reasoning_tokens: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct ResponseUsage {
    pub input_tokens: usize,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: usize,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct IncompleteDetails {
    /// `max_output_tokens`.
    pub reason: String,
}

/// The response object (`POST` result, `GET /v1/responses/{id}`, and the snapshot in the
/// lifecycle stream events).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ResponseObject {
    pub id: String,
    /// Always `response`.
    pub object: String,
    pub created_at: u64,
    /// `in_progress`, `completed`, `incomplete` or `failed`.
    pub status: String,
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub model: String,
    pub output: Vec<OutputItem>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    #[schema(value_type = Object)]
    pub reasoning: Value,
    pub store: bool,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    #[schema(value_type = Object)]
    pub text: Value,
    #[schema(value_type = Object)]
    pub tool_choice: Value,
    #[schema(value_type = Vec<Object>)]
    pub tools: Vec<Value>,
    /// Always `disabled`.
    pub truncation: String,
    pub usage: Option<ResponseUsage>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub user: Option<String>,
}

/// `DELETE /v1/responses/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseDeleted {
    pub id: String,
    /// Always `response`.
    pub object: String,
    pub deleted: bool,
}

/// The shape `input` takes, for the OpenAPI document only (the handler reads the `Value`).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum ResponseInputDoc {
    Text(String),
    Items(Vec<std::collections::BTreeMap<String, Value>>),
}
