//! Request fields shared by chat and text completions, usage, and the OpenAI error object.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

/// The one output modality served.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TextModality {
    Text,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` and no choices before `[DONE]`.
    pub include_usage: Option<bool>,
}

/// Sampling and control fields both completion endpoints accept (OpenAI's plus vLLM's
/// extensions). Every field may be absent or null; unknown fields are ignored.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct SamplingFields {
    /// Served model name; optional (the one served model is used).
    pub model: Option<String>,
    /// Most tokens to generate; default: what is left of the context.
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    /// At most f32's largest value (the sampler's precision).
    #[schema(minimum = 0, maximum = 3.4028234663852886e38)]
    pub temperature: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    /// vLLM extension; 0 or -1 disables.
    #[schema(minimum = -1)]
    pub top_k: Option<i64>,
    /// vLLM extension.
    #[schema(minimum = 0, maximum = 1)]
    pub min_p: Option<f64>,
    /// Number of choices.
    #[schema(minimum = 1, maximum = 128)]
    pub n: Option<i64>,
    pub stop: Option<StopField>,
    /// vLLM extension: token ids that end the generation.
    pub stop_token_ids: Option<Vec<u32>>,
    pub seed: Option<i64>,
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f64>,
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f64>,
    /// vLLM extension; 1.0 disables.
    #[schema(exclusive_minimum = 0, maximum = 3.4028234663852886e38)]
    pub repetition_penalty: Option<f64>,
    /// Token id (as a string) to a bias added to its logit, in [-100, 100].
    pub logit_bias: Option<HashMap<String, f64>>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// vLLM extension: keep generating past EOS.
    pub ignore_eos: Option<bool>,
    /// vLLM extension: no EOS or stop token before this many tokens.
    #[schema(minimum = 0)]
    pub min_tokens: Option<i64>,
    /// vLLM extension: lower values are served first under `--scheduling-policy priority`
    /// (then the API key's priority orders first); under fcfs only 0 is accepted.
    #[schema(minimum = -32768, maximum = 32767)]
    pub priority: Option<i32>,
    /// Accepted and ignored.
    pub user: Option<String>,
    /// Not implemented, so refused when set: text after the insertion point (completions).
    #[schema(value_type = Option<String>, max_length = 0)]
    pub suffix: Option<serde_json::Value>,
    /// Not implemented, so refused above 1.
    #[schema(minimum = 1, maximum = 1)]
    pub best_of: Option<i64>,
    /// Not implemented (audio output), so refused when set.
    #[schema(value_type = Option<String>, max_length = 0)]
    pub audio: Option<serde_json::Value>,
    /// Only `["text"]` is served.
    #[schema(value_type = Option<Vec<TextModality>>)]
    pub modalities: Option<Vec<String>>,
    /// vLLM's JSON whitespace pattern: not implemented, so refused when set (only null).
    #[schema(value_type = Option<()>)]
    pub guided_whitespace_pattern: Option<String>,
    /// Structured output: `{"type": "text"}`, `{"type": "json_object"}` or
    /// `{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}`.
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<serde_json::Value>,
    /// vLLM's structured output: exactly one of `json` (a schema, object or string),
    /// `regex`, `choice`, `grammar` (Lark) or `json_object: true`.
    #[schema(value_type = Option<Object>)]
    pub structured_outputs: Option<serde_json::Value>,
    /// vLLM's older name for `structured_outputs.json`.
    #[schema(value_type = Option<Object>)]
    pub guided_json: Option<serde_json::Value>,
    /// vLLM's older name for `structured_outputs.regex`.
    pub guided_regex: Option<String>,
    /// vLLM's older name for `structured_outputs.choice`.
    pub guided_choice: Option<Vec<String>>,
    /// vLLM's older name for `structured_outputs.grammar` (Lark).
    pub guided_grammar: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

/// `{"error": {...}}`, OpenAI's error shape.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}
