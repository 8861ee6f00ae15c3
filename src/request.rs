//! What a caller asks of one generation: sampling options and how the request ended.

use std::collections::HashMap;

use serde_json::Value;

/// Per-request sampling options, OpenAI/vLLM semantics.
///
/// `temperature == 0.0` means greedy. Filters that are "off" use neutral values
/// (`top_k == 0`, `top_p == 1.0`, `min_p == 0.0`, penalties 0.0 / 1.0).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Nucleus sampling: smallest set of tokens whose probability sum reaches top_p.
    pub top_p: f32,
    /// Drop tokens whose probability is below min_p times the most likely one's.
    pub min_p: f32,
    /// Multiplicative penalty (HF/vLLM style) on tokens already in prompt or output; 1.0 disables.
    pub repetition_penalty: f32,
    /// Subtracted once per occurrence in the output (OpenAI semantics).
    pub frequency_penalty: f32,
    /// Subtracted once if the token occurs in the output at all (OpenAI semantics).
    pub presence_penalty: f32,
    /// Added to the logit of the given token before any filter.
    pub logit_bias: HashMap<u32, f32>,
    /// Seed for this request's own RNG: same seed, same text, whatever else is batched.
    pub seed: Option<u64>,
    pub max_tokens: usize,
    /// EOS and stop token ids are masked until this many tokens were generated.
    pub min_tokens: usize,
    pub ignore_eos: bool,
    /// Extra token ids that end the generation (besides the model's EOS ids).
    pub stop_token_ids: Vec<u32>,
    /// Stop strings: generation ends when the text contains one; it is not included.
    pub stop: Vec<String>,
    /// Number of top alternatives to report with each sampled token (None: no logprobs).
    pub logprobs: Option<usize>,
    /// Structured output: every generated token is constrained by this grammar.
    pub constraint: Option<Constraint>,
    /// With a constraint and a reasoning model: the grammar binds only the answer, which starts
    /// where these markers say the reasoning ends.
    pub constraint_after: Option<ReasoningMarkers>,
    /// Leave special tokens out of the text (vLLM's default). Off for tool-call and reasoning
    /// parsers whose markers are special tokens (gpt-oss, Mistral); the token that ends the
    /// generation (EOS, a stop token id) is left out either way.
    pub skip_special_tokens: bool,
}

/// A structured-output constraint (grammar) on the generated text, plain data.
///
/// Compiled by llguidance (`crate::guidance`); the request ends with `Stop` once the
/// grammar is complete.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Output is JSON matching this JSON schema.
    JsonSchema(Value),
    /// Output is any JSON object.
    JsonObject,
    /// Output matches this regular expression (whole output, anchored).
    Regex(String),
    /// Output is exactly one of these strings.
    Choice(Vec<String>),
    /// Output matches this Lark grammar (llguidance's Lark dialect).
    Lark(String),
}

/// How a reasoning model's output marks the end of its thinking, plain data (from the
/// server's `--reasoning-parser`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReasoningMarkers {
    /// The output reasons only if it opens with this token (Qwen3's `<think>`); None: the
    /// output starts inside the reasoning (DeepSeek-R1, gpt-oss).
    pub opener: Option<String>,
    /// The text after which the answer begins (`</think>`, gpt-oss's final-channel header).
    pub closer: String,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: HashMap::new(),
            seed: None,
            max_tokens: 256,
            min_tokens: 0,
            ignore_eos: false,
            stop_token_ids: Vec::new(),
            stop: Vec::new(),
            logprobs: None,
            constraint: None,
            constraint_after: None,
            skip_special_tokens: true,
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            max_tokens,
            ..Self::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// Why a generation ended (OpenAI `finish_reason` plus the engine-only cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token id or a stop string.
    Stop,
    /// max_tokens or the model's context length.
    Length,
    Abort,
}

impl FinishReason {
    pub fn as_openai(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// A sampled token's log-probability and the top alternatives at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// `(token, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}
