//! Wire shapes of the small endpoints: models, tokenize, detokenize.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::chat::ChatMessageIn;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    /// Always `model`.
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// What was loaded: the model argument or the default model's files.
    pub root: String,
    pub max_model_len: usize,
    /// The same as `max_model_len`, under the name routers such as LiteLLM and OpenRouter read.
    pub context_length: usize,
    /// The checkpoint's `model_type`: `llama`, `qwen3`, `gemma3_text`, `mixtral`, ...
    pub architecture: String,
    /// The weights' quantization format (`fp8 (block 128x128)`, `awq int4 (group 128)`,
    /// `gguf Q4_1`, ...); absent for dense weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<ModelCard>,
}

/// Either `prompt` (raw text) or `messages` (rendered with the chat template).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessageIn>>,
    /// For `prompt`: add BOS etc. (default true).
    pub add_special_tokens: Option<bool>,
    /// For `messages` (default true).
    pub add_generation_prompt: Option<bool>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DetokenizeResponse {
    pub prompt: String,
}
