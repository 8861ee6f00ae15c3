//! `/v1/messages` and `/v1/messages/count_tokens` (Anthropic's Messages API): request and
//! response shapes. Content blocks are read field by field in `convert::messages`, so errors
//! name e.g. `messages[1].content[0].type`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct AnthropicMessageIn {
    /// `user` or `assistant`.
    pub role: String,
    /// A string, or blocks: `text`, `tool_use` (assistant), `tool_result` (user); `thinking`
    /// blocks in the history are dropped.
    #[schema(value_type = Object)]
    pub content: Value,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct MessagesRequest {
    /// Served model name; optional here.
    pub model: Option<String>,
    pub messages: Vec<AnthropicMessageIn>,
    /// A string or a list of `text` blocks.
    #[schema(value_type = Option<Object>)]
    pub system: Option<Value>,
    /// Required, as Anthropic requires it (optional for count_tokens).
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    pub stop_sequences: Option<Vec<String>>,
    #[schema(minimum = 0)]
    pub temperature: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    #[schema(minimum = 0)]
    pub top_k: Option<i64>,
    /// Client tools: `{"name", "description", "input_schema"}`; server tools are refused.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// `{"type": "auto" | "any" | "tool" | "none", "name", "disable_parallel_tool_use"}`.
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    pub stream: Option<bool>,
    /// `{"type": "adaptive"}` needs the server's `--reasoning-parser`; the reasoning then comes
    /// back as `thinking` blocks. A `budget_tokens` is refused (not enforced).
    #[schema(value_type = Option<ThinkingDoc>)]
    pub thinking: Option<Value>,
    /// `{"format": {"type": "json_schema", "schema"}}`: structured output; `effort` is refused.
    #[schema(value_type = Option<Object>)]
    pub output_config: Option<Value>,
    /// Accepted and ignored.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Accepted and ignored.
    pub service_tier: Option<String>,
    /// Not implemented (MCP connector): refused when set (only null).
    #[schema(value_type = Option<()>)]
    pub mcp_servers: Option<Value>,
    /// Not implemented (code execution containers): refused when set (only null).
    #[schema(value_type = Option<()>)]
    pub container: Option<Value>,
}

/// One block of a reply.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Thinking {
        thinking: String,
        /// Always empty: flare does not sign its reasoning.
        signature: String,
    },
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[schema(value_type = Object)]
        input: Value,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct AnthropicUsage {
    /// Prompt tokens not read from the prefix cache (Anthropic's meaning: the prompt is
    /// `input_tokens + cache_read_input_tokens`).
    pub input_tokens: usize,
    pub output_tokens: usize,
    /// Always 0: the prefix cache is filled implicitly.
    pub cache_creation_input_tokens: usize,
    pub cache_read_input_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MessagesResponse {
    pub id: String,
    /// Always `message`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always `assistant`.
    pub role: String,
    pub model: String,
    pub content: Vec<ContentBlock>,
    /// `end_turn`, `max_tokens`, `stop_sequence` or `tool_use`; null in `message_start`.
    pub stop_reason: Option<String>,
    pub stop_sequence: Option<String>,
    pub usage: AnthropicUsage,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CountTokensResponse {
    pub input_tokens: usize,
}

/// `{"type": "error", "error": {"type", "message"}}`, Anthropic's error shape.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AnthropicErrorResponse {
    /// Always `error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub error: AnthropicErrorBody,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AnthropicErrorBody {
    /// `invalid_request_error`, `authentication_error`, `not_found_error`,
    /// `request_too_large`, `rate_limit_error`, `api_error`, `overloaded_error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

/// The shape `thinking` takes, for the OpenAPI document only (the handler reads the `Value`).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ThinkingDoc {
    #[serde(rename = "type")]
    kind: ThinkingKindDoc,
    /// Refused when set: the budget is not enforced (ask for `adaptive`).
    #[schema(value_type = Option<()>)]
    budget_tokens: Option<()>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
enum ThinkingKindDoc {
    Enabled,
    Adaptive,
    Disabled,
}
