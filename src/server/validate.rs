//! Validation: wire requests into prompt token ids and SamplingParams, or a 400 that names the
//! field. Runs on a blocking worker (chat template rendering and tokenization are CPU work).

use crate::chat_template::ChatMessage;
use serde_json::{json, Value};

use crate::request::SamplingParams;

use super::error::ApiError;
use super::state::Loaded;
use super::structured;
use super::tools::{self, OutputPlan};
use super::wire::{
    ChatCompletionRequest, ChatMessageIn, CompletionRequest, MessageContent, PromptInput,
    SamplingFields,
};

/// Most choices one request may ask for.
pub const MAX_N: usize = 128;
/// OpenAI's (and vLLM's default) cap on alternatives per token.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One engine request: a choice of one prompt.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
}

/// What a completion request turns into. Choice `i` runs prompt `i / n`.
#[derive(Debug, Clone)]
pub struct Plan {
    pub jobs: Vec<Job>,
    pub n: usize,
    /// Per prompt, the text `echo` returns.
    pub prompt_texts: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub priority: i32,
    /// Alternatives per token when logprobs were asked for.
    pub logprobs: Option<usize>,
    pub echo: bool,
    /// How chat output splits into reasoning, content and tool calls.
    pub output: OutputPlan,
}

fn range_f32(
    value: Option<f64>,
    param: &str,
    ok: impl Fn(f64) -> bool,
    what: &str,
    default: f32,
) -> Result<f32, ApiError> {
    match value {
        None => Ok(default),
        // Within f32's range, as the document states: 1e39 would become infinity in the
        // sampler, and a value just past f32::MAX would round down to it unseen.
        Some(v) if v.abs() <= f32::MAX as f64 && ok(v) => Ok(to_f32_keeping_sign(v)),
        Some(v) if ok(v) => Err(ApiError::invalid(
            param,
            format!(
                "`{param}` must be at most f32's largest value ({}); got {v}.",
                f32::MAX
            ),
        )),
        Some(v) => Err(ApiError::invalid(
            param,
            format!("`{param}` must be {what}; got {v}."),
        )),
    }
}

/// `v` as f32, except that a nonzero value below f32's smallest subnormal becomes that
/// subnormal rather than 0: `top_p` 5e-324 is in (0, 1] and must stay so (as 0 it would ask
/// the sampler for an empty nucleus).
fn to_f32_keeping_sign(v: f64) -> f32 {
    let f = v as f32;
    if f == 0.0 && v != 0.0 {
        f32::from_bits(1).copysign(v.signum() as f32)
    } else {
        f
    }
}

fn logprobs_count(n: i64, param: &str) -> Result<usize, ApiError> {
    if (0..=MAX_TOP_LOGPROBS as i64).contains(&n) {
        Ok(n as usize)
    } else {
        Err(ApiError::invalid(
            param,
            format!("`{param}` must be between 0 and {MAX_TOP_LOGPROBS}; got {n}."),
        ))
    }
}

/// Every sampling field but `max_tokens` (which depends on each prompt's length); and `n`.
/// Fields that would change the output and that flare does not implement: a 400 naming each,
/// never a silent 200.
fn refuse_unimplemented(f: &SamplingFields) -> Result<(), ApiError> {
    let set = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .is_some_and(|v| !v.is_null() && v.as_str() != Some(""))
    };
    let refused = [
        ("suffix", set(&f.suffix)),
        ("best_of", f.best_of.is_some_and(|b| b != 1)),
        ("audio", set(&f.audio)),
        (
            "modalities",
            f.modalities
                .as_ref()
                .is_some_and(|m| m.iter().any(|x| x != "text")),
        ),
        (
            "guided_whitespace_pattern",
            f.guided_whitespace_pattern.is_some(),
        ),
    ];
    match refused.iter().find(|(_, on)| *on) {
        Some((name, _)) => Err(ApiError::invalid(
            name,
            format!("`{name}` is not supported by this server."),
        )),
        None => Ok(()),
    }
}

pub fn sampling_params(
    f: &SamplingFields,
    vocab_size: usize,
) -> Result<(SamplingParams, usize), ApiError> {
    refuse_unimplemented(f)?;
    let n = match f.n {
        None => 1,
        Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                "n",
                format!("`n` must be between 1 and {MAX_N}; got {n}."),
            ))
        }
    };
    let mut logit_bias = std::collections::HashMap::new();
    for (k, &v) in f.logit_bias.iter().flatten() {
        let id = k
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&id| (id as usize) < vocab_size)
            .ok_or_else(|| {
                ApiError::invalid(
                    "logit_bias",
                    format!("`logit_bias` key `{k}` is not a token id below {vocab_size}."),
                )
            })?;
        if !v.is_finite() {
            return Err(ApiError::invalid(
                "logit_bias",
                "`logit_bias` values must be numbers.",
            ));
        }
        // OpenAI's range; beyond it a bias only saturates.
        logit_bias.insert(id, v.clamp(-100.0, 100.0) as f32);
    }
    let min_tokens = match f.min_tokens {
        None => 0,
        Some(m) if m >= 0 => m as usize,
        Some(m) => {
            return Err(ApiError::invalid(
                "min_tokens",
                format!("`min_tokens` must be at least 0; got {m}."),
            ))
        }
    };
    let params = SamplingParams {
        temperature: range_f32(
            f.temperature,
            "temperature",
            |v| v >= 0.0,
            "at least 0",
            1.0,
        )?,
        top_p: range_f32(f.top_p, "top_p", |v| v > 0.0 && v <= 1.0, "in (0, 1]", 1.0)?,
        top_k: match f.top_k {
            None => 0,
            Some(k) if k >= -1 => k.max(0) as usize,
            Some(k) => {
                return Err(ApiError::invalid(
                    "top_k",
                    format!("`top_k` must be -1 (off), 0 (off) or positive; got {k}."),
                ))
            }
        },
        min_p: range_f32(
            f.min_p,
            "min_p",
            |v| (0.0..=1.0).contains(&v),
            "in [0, 1]",
            0.0,
        )?,
        presence_penalty: range_f32(
            f.presence_penalty,
            "presence_penalty",
            |v| (-2.0..=2.0).contains(&v),
            "in [-2, 2]",
            0.0,
        )?,
        frequency_penalty: range_f32(
            f.frequency_penalty,
            "frequency_penalty",
            |v| (-2.0..=2.0).contains(&v),
            "in [-2, 2]",
            0.0,
        )?,
        repetition_penalty: range_f32(
            f.repetition_penalty,
            "repetition_penalty",
            |v| v > 0.0,
            "greater than 0",
            1.0,
        )?,
        logit_bias,
        // OpenAI seeds are signed 64-bit; any value picks a stream, so wrap.
        seed: f.seed.map(|s| s as u64),
        max_tokens: 0,
        min_tokens,
        ignore_eos: f.ignore_eos.unwrap_or(false),
        stop_token_ids: f.stop_token_ids.clone().unwrap_or_default(),
        // An empty stop string would end every generation before it starts.
        stop: f
            .stop
            .clone()
            .map(|s| s.into_vec())
            .unwrap_or_default()
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect(),
        logprobs: None,
        constraint: None,
        constraint_after: None,
        skip_special_tokens: true,
    };
    Ok((params, n))
}

/// The output budget for one prompt, as vLLM: the requested `max_tokens` if prompt plus it fit,
/// else what is left of the context.
pub fn max_tokens(
    requested: Option<i64>,
    prompt_len: usize,
    max_model_len: usize,
) -> Result<usize, ApiError> {
    match requested {
        Some(m) if m < 1 => Err(ApiError::invalid(
            "max_tokens",
            format!("`max_tokens` must be at least 1; got {m}."),
        )),
        Some(m) => {
            let m = usize::try_from(m).unwrap_or(usize::MAX);
            if prompt_len.saturating_add(m) > max_model_len {
                Err(ApiError::ContextLength {
                    max_model_len,
                    prompt_tokens: prompt_len,
                    completion_tokens: Some(m),
                })
            } else {
                Ok(m)
            }
        }
        None if prompt_len >= max_model_len => Err(ApiError::ContextLength {
            max_model_len,
            prompt_tokens: prompt_len,
            completion_tokens: None,
        }),
        None => Ok(max_model_len - prompt_len),
    }
}

/// `n` jobs per prompt; seeded requests get seed + i per choice (as vLLM), so choices differ
/// yet repeat across calls.
fn jobs(
    prompts: &[Vec<u32>],
    base: &SamplingParams,
    requested_max: Option<i64>,
    n: usize,
    max_model_len: usize,
) -> Result<Vec<Job>, ApiError> {
    let mut jobs = Vec::with_capacity(prompts.len() * n);
    for prompt in prompts {
        if prompt.is_empty() {
            return Err(ApiError::invalid("prompt", "The prompt is empty."));
        }
        let max = max_tokens(requested_max, prompt.len(), max_model_len)?;
        if base.min_tokens > max {
            return Err(ApiError::invalid(
                "min_tokens",
                format!(
                    "`min_tokens` ({}) must not exceed `max_tokens` ({max}).",
                    base.min_tokens
                ),
            ));
        }
        for i in 0..n {
            let mut params = base.clone();
            params.max_tokens = max;
            params.seed = base.seed.map(|s| s.wrapping_add(i as u64));
            jobs.push(Job {
                prompt: prompt.clone(),
                params,
            });
        }
    }
    Ok(jobs)
}

/// Text of a message: a string, or its text parts joined by newlines (as vLLM).
fn message_text(m: &ChatMessageIn, i: usize) -> Result<String, ApiError> {
    match &m.content {
        None => Ok(String::new()),
        Some(MessageContent::Text(s)) => Ok(s.clone()),
        Some(MessageContent::Parts(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for p in parts {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => texts.push(t.as_str()),
                    ("text", None) => {
                        return Err(ApiError::invalid(
                            &format!("messages[{i}].content"),
                            "A text content part needs `text`.",
                        ))
                    }
                    (other, _) => {
                        return Err(ApiError::invalid(
                            &format!("messages[{i}].content"),
                            format!("Only text content parts are supported; got `{other}`."),
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
    }
}

/// An assistant message's calls as templates expect them: arguments parsed into an object.
fn template_tool_calls(m: &ChatMessageIn, i: usize) -> Result<Option<Vec<Value>>, ApiError> {
    let Some(calls) = &m.tool_calls else {
        return Ok(None);
    };
    if m.role != "assistant" {
        return Err(ApiError::invalid(
            &format!("messages[{i}].tool_calls"),
            "Only assistant messages carry `tool_calls`.",
        ));
    }
    calls
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let param = format!("messages[{i}].tool_calls[{j}].function.arguments");
            let arguments: Value = serde_json::from_str(&c.function.arguments)
                .map_err(|e| ApiError::invalid(&param, format!("`arguments` is not JSON: {e}.")))?;
            let mut call = serde_json::Map::new();
            if let Some(id) = &c.id {
                call.insert("id".into(), json!(id));
            }
            call.insert(
                "type".into(),
                json!(c.kind.as_deref().unwrap_or("function")),
            );
            call.insert(
                "function".into(),
                json!({"name": c.function.name, "arguments": arguments}),
            );
            Ok(Value::Object(call))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Messages as the chat template sees them; `developer` is OpenAI's newer name for `system`.
pub fn chat_messages(messages: &[ChatMessageIn]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty.",
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "developer" => "system",
                r @ ("system" | "user" | "assistant" | "tool") => r,
                other => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].role"),
                        format!(
                            "Unknown role {other:?}; expected system, developer, user, \
                             assistant or tool."
                        ),
                    ))
                }
            };
            let tool_calls = template_tool_calls(m, i)?;
            if role == "tool" && m.tool_call_id.is_none() {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].tool_call_id"),
                    "A `tool` message needs `tool_call_id`.",
                ));
            }
            // An assistant turn that is only calls keeps its null content, as transformers
            // passes it; elsewhere null reads as empty text.
            let content = match (&m.content, &tool_calls) {
                (None, Some(_)) => None,
                _ => Some(message_text(m, i)?),
            };
            Ok(ChatMessage {
                role: role.to_string(),
                content,
                tool_calls,
                tool_call_id: m.tool_call_id.clone(),
            })
        })
        .collect()
}

/// Renders `messages` (and `tools`, as the template's `tools`) with the model's template and
/// tokenizes the result.
pub fn chat_prompt_ids(
    loaded: &Loaded,
    messages: &[ChatMessageIn],
    tools: Option<&Value>,
    add_generation_prompt: bool,
) -> Result<Vec<u32>, ApiError> {
    let template = loaded
        .template
        .as_ref()
        .map_err(|e| ApiError::invalid("messages", e.clone()))?;
    let text = template
        .render_with_tools(&chat_messages(messages)?, tools, add_generation_prompt)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    // The rendered text carries BOS and other markup already.
    encode(loaded, &text, false)
}

pub fn encode(loaded: &Loaded, text: &str, add_special: bool) -> Result<Vec<u32>, ApiError> {
    loaded
        .tokenizer
        .encode(text, add_special)
        .map_err(|e| ApiError::invalid("prompt", format!("Could not tokenize: {e}")))
}

pub fn check_ids(ids: &[u32], vocab_size: usize, param: &str) -> Result<(), ApiError> {
    match ids.iter().find(|&&t| t as usize >= vocab_size) {
        Some(t) => Err(ApiError::invalid(
            param,
            format!("Token id {t} is out of the vocabulary (size {vocab_size})."),
        )),
        None => Ok(()),
    }
}

fn include_usage(f: &SamplingFields) -> bool {
    f.stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false)
}

pub fn chat(loaded: &Loaded, req: ChatCompletionRequest) -> Result<Plan, ApiError> {
    let vocab = loaded.tokenizer.vocab_size();
    let (mut base, n) = sampling_params(&req.sampling, vocab)?;
    let mut constraint = structured::parse(&req.sampling)?;
    // Out of range is refused even without `logprobs` (as OpenAI does), never ignored.
    let top_logprobs = req
        .top_logprobs
        .map(|k| logprobs_count(k, "top_logprobs"))
        .transpose()?;
    if req.logprobs.unwrap_or(false) {
        base.logprobs = Some(top_logprobs.unwrap_or(0));
    }
    let tools = tools::plan(
        loaded,
        req.tools.as_deref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
    )?;
    if let Some(c) = tools.constraint {
        if let Some((_, param)) = &constraint {
            return Err(ApiError::invalid(
                "tool_choice",
                format!(
                    "A forced tool call (`required` or a named tool) cannot be combined with \
                     `{param}`."
                ),
            ));
        }
        constraint = Some((c, "tool_choice"));
    }
    let output = OutputPlan {
        tools: tools.mode,
        single_call: tools.single_call,
        reasoning: loaded.reasoning_parser,
    };
    if constraint.is_some() {
        // The grammar binds the answer, after the reasoning the parser splits off.
        base.constraint_after = output.reasoning.map(|r| r.markers());
    }
    if output.needs_special_tokens() {
        base.skip_special_tokens = false;
    }
    let prompt = chat_prompt_ids(
        loaded,
        &req.messages,
        tools.template_tools.as_ref(),
        req.add_generation_prompt.unwrap_or(true),
    )?;
    let requested = req.max_completion_tokens.or(req.sampling.max_tokens);
    let prompts = [prompt];
    structured::compile(loaded, &constraint)?;
    base.constraint = constraint.map(|(c, _)| c);
    Ok(Plan {
        jobs: jobs(&prompts, &base, requested, n, loaded.max_model_len)?,
        n,
        prompt_texts: Vec::new(),
        stream: req.sampling.stream.unwrap_or(false),
        include_usage: include_usage(&req.sampling),
        priority: req.sampling.priority.unwrap_or(0),
        logprobs: base.logprobs,
        echo: false,
        output,
    })
}

pub fn completion(loaded: &Loaded, req: CompletionRequest) -> Result<Plan, ApiError> {
    let vocab = loaded.tokenizer.vocab_size();
    let (mut base, n) = sampling_params(&req.sampling, vocab)?;
    let constraint = structured::parse(&req.sampling)?;
    if let Some(k) = req.logprobs {
        base.logprobs = Some(logprobs_count(k, "logprobs")?);
    }
    let echo = req.echo.unwrap_or(false);
    let decode = |ids: &[u32]| {
        if echo {
            loaded.tokenizer.decode(ids, true).unwrap_or_default()
        } else {
            String::new()
        }
    };
    let (prompts, prompt_texts): (Vec<Vec<u32>>, Vec<String>) = match req.prompt {
        PromptInput::Text(s) => (vec![encode(loaded, &s, true)?], vec![s]),
        PromptInput::Texts(v) => {
            let ids = v
                .iter()
                .map(|s| encode(loaded, s, true))
                .collect::<Result<_, _>>()?;
            (ids, v)
        }
        PromptInput::Tokens(ids) => {
            check_ids(&ids, vocab, "prompt")?;
            let text = decode(&ids);
            (vec![ids], vec![text])
        }
        PromptInput::TokenLists(lists) => {
            for ids in &lists {
                check_ids(ids, vocab, "prompt")?;
            }
            let texts = lists.iter().map(|ids| decode(ids)).collect();
            (lists, texts)
        }
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must not be empty."));
    }
    structured::compile(loaded, &constraint)?;
    base.constraint = constraint.map(|(c, _)| c);
    Ok(Plan {
        jobs: jobs(
            &prompts,
            &base,
            req.sampling.max_tokens,
            n,
            loaded.max_model_len,
        )?,
        n,
        prompt_texts,
        stream: req.sampling.stream.unwrap_or(false),
        include_usage: include_usage(&req.sampling),
        priority: req.sampling.priority.unwrap_or(0),
        logprobs: base.logprobs,
        echo,
        output: OutputPlan::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_tokens_defaults_to_the_rest_of_the_context() {
        assert_eq!(max_tokens(None, 10, 100).unwrap(), 90);
        assert_eq!(max_tokens(Some(90), 10, 100).unwrap(), 90);
        assert!(matches!(
            max_tokens(Some(91), 10, 100),
            Err(ApiError::ContextLength {
                completion_tokens: Some(91),
                ..
            })
        ));
        assert!(matches!(
            max_tokens(None, 100, 100),
            Err(ApiError::ContextLength {
                completion_tokens: None,
                ..
            })
        ));
        assert!(max_tokens(Some(0), 1, 100).is_err());
    }

    #[test]
    fn sampling_fields_are_range_checked() {
        let ok = SamplingFields {
            temperature: Some(0.0),
            top_k: Some(-1),
            seed: Some(-1),
            logit_bias: Some([("5".to_string(), 500.0)].into()),
            n: Some(3),
            ..Default::default()
        };
        let (p, n) = sampling_params(&ok, 10).unwrap();
        assert_eq!((p.top_k, n, p.seed), (0, 3, Some(u64::MAX)));
        assert_eq!(p.logit_bias[&5], 100.0);
        for bad in [
            SamplingFields {
                temperature: Some(-0.5),
                ..Default::default()
            },
            SamplingFields {
                top_p: Some(0.0),
                ..Default::default()
            },
            SamplingFields {
                n: Some(0),
                ..Default::default()
            },
            SamplingFields {
                logit_bias: Some([("10".to_string(), 1.0)].into()),
                ..Default::default()
            },
            SamplingFields {
                presence_penalty: Some(3.0),
                ..Default::default()
            },
        ] {
            assert!(sampling_params(&bad, 10).is_err(), "{bad:?}");
        }
    }

    /// The document's bound for temperatures is f32::MAX: the bound itself, as JSON text, is
    /// read exactly and accepted; the next double past it is refused (it used to round down to
    /// f32::MAX unseen).
    #[test]
    fn temperature_bound_is_f32_max_exactly() {
        let at_bound: SamplingFields =
            serde_json::from_str(r#"{"temperature": 3.4028234663852886e38}"#).unwrap();
        assert_eq!(at_bound.temperature, Some(f32::MAX as f64));
        assert!(sampling_params(&at_bound, 10).is_ok());
        let past: SamplingFields =
            serde_json::from_str(r#"{"temperature": 3.402823466385289e38}"#).unwrap();
        assert!(past.temperature.unwrap() > f32::MAX as f64);
        assert!(sampling_params(&past, 10).is_err());
    }

    /// Conversations with tools, calls and results render exactly as transformers'
    /// `apply_chat_template(..., tools=...)` renders them (tests/fixtures/make_tool_model.py
    /// --renders), from the OpenAI wire shape (arguments as a JSON string).
    #[test]
    fn tool_conversations_render_as_transformers() {
        let root = env!("CARGO_MANIFEST_DIR");
        let source =
            std::fs::read_to_string(format!("{root}/tests/fixtures/hermes_tools.jinja")).unwrap();
        let template =
            crate::chat_template::ChatTemplate::new(source, "<|im_start|>", "<|im_end|>").unwrap();
        let cases: Vec<Value> = serde_json::from_str(
            &std::fs::read_to_string(format!("{root}/tests/fixtures/tool_renders.json")).unwrap(),
        )
        .unwrap();
        assert!(cases.len() >= 4);
        for case in cases {
            let mut messages = case["messages"].clone();
            for m in messages.as_array_mut().unwrap() {
                for c in m
                    .get_mut("tool_calls")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    let args = c["function"]["arguments"].to_string();
                    c["function"]["arguments"] = Value::String(args);
                }
            }
            let wire: Vec<ChatMessageIn> = serde_json::from_value(messages).unwrap();
            let tools = (!case["tools"].is_null()).then(|| case["tools"].clone());
            let out = template
                .render_with_tools(
                    &chat_messages(&wire).unwrap(),
                    tools.as_ref(),
                    case["add_generation_prompt"].as_bool().unwrap(),
                )
                .unwrap();
            assert_eq!(out, case["rendered"].as_str().unwrap());
        }
    }

    #[test]
    fn tool_history_is_checked() {
        let bad: Vec<ChatMessageIn> = serde_json::from_value(json!([
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}
        ]))
        .unwrap();
        let err = chat_messages(&bad).unwrap_err();
        assert!(err.to_string().contains("not JSON"), "{err}");
        let bad: Vec<ChatMessageIn> =
            serde_json::from_value(json!([{"role": "tool", "content": "5"}])).unwrap();
        assert!(chat_messages(&bad).is_err());
    }

    #[test]
    fn unimplemented_fields_are_refused_by_name() {
        for (body, param) in [
            (serde_json::json!({"suffix": "end"}), "suffix"),
            (serde_json::json!({"best_of": 3}), "best_of"),
            (serde_json::json!({"audio": {"voice": "x"}}), "audio"),
            (
                serde_json::json!({"modalities": ["text", "audio"]}),
                "modalities",
            ),
            (
                serde_json::json!({"guided_whitespace_pattern": " *"}),
                "guided_whitespace_pattern",
            ),
        ] {
            let f: SamplingFields = serde_json::from_value(body.clone()).unwrap();
            match sampling_params(&f, 10) {
                Err(ApiError::InvalidParam { param: Some(p), .. }) => assert_eq!(p, param),
                other => panic!("{body}: {other:?}"),
            }
        }
        let ok: SamplingFields = serde_json::from_value(
            serde_json::json!({"best_of": 1, "modalities": ["text"], "suffix": null}),
        )
        .unwrap();
        assert!(sampling_params(&ok, 10).is_ok());
    }

    #[test]
    fn seeds_advance_per_choice() {
        let base = SamplingParams {
            seed: Some(7),
            ..Default::default()
        };
        let j = jobs(&[vec![1, 2]], &base, Some(4), 3, 16).unwrap();
        let seeds: Vec<_> = j.iter().map(|j| j.params.seed).collect();
        assert_eq!(seeds, vec![Some(7), Some(8), Some(9)]);
        assert!(j.iter().all(|j| j.params.max_tokens == 4));
    }
}
