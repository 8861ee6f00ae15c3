//! The confidence tests of a cascade: what an answer's token logprobs, finish reason and
//! `response_format` say about whether to trust it.

use serde_json::Value;

use super::config::EscalateConfig;

/// Which API the request came through (their bodies differ in where logprobs and text sit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Completions,
}

impl Api {
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/v1/chat/completions" => Some(Api::Chat),
            "/v1/completions" => Some(Api::Completions),
            _ => None,
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Api::Chat => "/chat/completions",
            Api::Completions => "/completions",
        }
    }

    /// Whether the client asked for logprobs itself.
    pub fn client_wants_logprobs(self, body: &Value) -> bool {
        match self {
            Api::Chat => body.get("logprobs").and_then(Value::as_bool) == Some(true),
            Api::Completions => body.get("logprobs").is_some_and(|v| !v.is_null()),
        }
    }

    /// Makes the target return token logprobs (without alternatives unless asked).
    pub fn ask_logprobs(self, body: &mut Value) {
        if self.client_wants_logprobs(body) {
            return;
        }
        if let Some(o) = body.as_object_mut() {
            match self {
                Api::Chat => o.insert("logprobs".into(), Value::Bool(true)),
                Api::Completions => o.insert("logprobs".into(), Value::from(0)),
            };
        }
    }

    /// Token logprobs of one choice of a non-streamed response.
    fn choice_logprobs(self, choice: &Value) -> Vec<f64> {
        let lp = &choice["logprobs"];
        match self {
            Api::Chat => lp["content"]
                .as_array()
                .map(|a| a.iter().filter_map(|t| t["logprob"].as_f64()).collect())
                .unwrap_or_default(),
            Api::Completions => lp["token_logprobs"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default(),
        }
    }

    /// The generated text of one choice.
    fn choice_text(self, choice: &Value) -> Option<&str> {
        match self {
            Api::Chat => choice["message"]["content"].as_str(),
            Api::Completions => choice["text"].as_str(),
        }
    }
}

/// What the tests look at, over all choices of an answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Confidence {
    /// None: the answer had no token logprobs (an upstream that does not return them).
    pub mean_logprob: Option<f64>,
    pub min_logprob: Option<f64>,
    pub num_tokens: usize,
    /// Some choice ended at `max_tokens`.
    pub hit_length: bool,
    /// Some: the request had a JSON `response_format`; whether every choice parsed.
    pub parses: Option<bool>,
}

impl Confidence {
    pub fn of_response(api: Api, request: &Value, response: &Value) -> Self {
        let choices = response["choices"].as_array().cloned().unwrap_or_default();
        let lps: Vec<f64> = choices
            .iter()
            .flat_map(|c| api.choice_logprobs(c))
            .collect();
        let wants_json = matches!(
            request["response_format"]["type"].as_str(),
            Some("json_object" | "json_schema")
        );
        Self {
            mean_logprob: (!lps.is_empty()).then(|| lps.iter().sum::<f64>() / lps.len() as f64),
            min_logprob: lps.iter().copied().reduce(f64::min),
            num_tokens: lps.len(),
            hit_length: choices
                .iter()
                .any(|c| c["finish_reason"].as_str() == Some("length")),
            parses: wants_json.then(|| {
                choices.iter().all(|c| {
                    api.choice_text(c)
                        .is_some_and(|t| serde_json::from_str::<Value>(t).is_ok())
                })
            }),
        }
    }

    /// From the logprobs of a stream's tokens seen so far.
    pub fn of_tokens(lps: &[f64], hit_length: bool, parses: Option<bool>) -> Self {
        Self {
            mean_logprob: (!lps.is_empty()).then(|| lps.iter().sum::<f64>() / lps.len() as f64),
            min_logprob: lps.iter().copied().reduce(f64::min),
            num_tokens: lps.len(),
            hit_length,
            parses,
        }
    }
}

/// Why an answer was passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MeanLogprob,
    MinLogprob,
    Length,
    ParseFailure,
    /// The target failed (connect error, 5xx, 429 after retries).
    TargetError,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MeanLogprob => "mean_logprob",
            Reason::MinLogprob => "min_logprob",
            Reason::Length => "length",
            Reason::ParseFailure => "parse_failure",
            Reason::TargetError => "target_error",
        }
    }
}

/// The first configured test the answer fails, in a fixed order; None: keep it.
pub fn judge(cfg: &EscalateConfig, c: &Confidence) -> Option<Reason> {
    if cfg.on_parse_failure && c.parses == Some(false) {
        return Some(Reason::ParseFailure);
    }
    if cfg.on_length && c.hit_length {
        return Some(Reason::Length);
    }
    if let (Some(t), Some(m)) = (cfg.min_mean_logprob, c.mean_logprob) {
        if m < t {
            return Some(Reason::MeanLogprob);
        }
    }
    if let (Some(t), Some(m)) = (cfg.min_token_logprob, c.min_logprob) {
        if m < t {
            return Some(Reason::MinLogprob);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_logprobs_and_tests() {
        let req = json!({"response_format": {"type": "json_object"}});
        let resp = json!({"choices": [{
            "message": {"content": "{\"a\": 1}"},
            "finish_reason": "stop",
            "logprobs": {"content": [{"logprob": -0.5}, {"logprob": -1.5}]}
        }]});
        let c = Confidence::of_response(Api::Chat, &req, &resp);
        assert_eq!(c.mean_logprob, Some(-1.0));
        assert_eq!(c.min_logprob, Some(-1.5));
        assert_eq!(c.parses, Some(true));
        let mut cfg = EscalateConfig {
            min_mean_logprob: Some(-0.9),
            ..Default::default()
        };
        assert_eq!(judge(&cfg, &c), Some(Reason::MeanLogprob));
        cfg.min_mean_logprob = Some(-1.1);
        assert_eq!(judge(&cfg, &c), None);
        cfg.min_token_logprob = Some(-1.4);
        assert_eq!(judge(&cfg, &c), Some(Reason::MinLogprob));
    }

    #[test]
    fn completions_length_and_parse() {
        let req = json!({"response_format": {"type": "json_schema"}});
        let resp = json!({"choices": [{
            "text": "{\"a\": ", "finish_reason": "length",
            "logprobs": {"token_logprobs": [-0.1, -0.2]}
        }]});
        let c = Confidence::of_response(Api::Completions, &req, &resp);
        assert!(c.hit_length);
        assert_eq!(c.parses, Some(false));
        let cfg = EscalateConfig {
            on_length: true,
            on_parse_failure: true,
            ..Default::default()
        };
        assert_eq!(judge(&cfg, &c), Some(Reason::ParseFailure));
        let off = EscalateConfig::default();
        assert_eq!(judge(&off, &c), None);
    }

    #[test]
    fn asking_for_logprobs_keeps_the_clients_own() {
        let mut b = json!({"logprobs": 3});
        Api::Completions.ask_logprobs(&mut b);
        assert_eq!(b["logprobs"], 3);
        let mut b = json!({});
        Api::Chat.ask_logprobs(&mut b);
        assert_eq!(b["logprobs"], true);
        assert!(!Api::Chat.client_wants_logprobs(&json!({"logprobs": false})));
    }
}
