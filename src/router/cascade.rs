//! A cascade route: a virtual model name whose requests run on the first target and move on
//! to the next one when the answer fails a confidence test (see [`super::confidence`]). The
//! answer names its model in `model` and in the `x-flare-model` header.
//!
//! Streaming holds back a target's events until the route decides: when the answer ends, or
//! after `commit_after_tokens` tokens (judged on the logprobs so far; `length` and
//! `response_format` can only fail an answer that ended before that). The client's first
//! token therefore waits for up to `commit_after_tokens` tokens of the first target.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::Value;

use super::confidence::{judge, Api, Confidence, Reason};
use super::config::RouteConfig;
use super::dispatch::MODEL_HEADER;
use super::metrics::RouteMetrics;
use super::target::{Called, Events, Target};
use super::telemetry::{Attempt, Line, Telemetry};
use crate::server::limits::RequestGuard;
use crate::server::wire::{ErrorBody, ErrorResponse};

pub struct Route {
    pub cfg: RouteConfig,
    targets: Vec<(String, Target)>,
    telemetry: Option<Telemetry>,
    metrics: Arc<RouteMetrics>,
}

/// What one request's routing went through (becomes the telemetry line).
struct Trace {
    start: Instant,
    api: Api,
    stream: bool,
    attempts: Vec<Attempt>,
    escalated: bool,
}

fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

fn attempt(target: &str, c: &Confidence, usage: (u64, u64), t0: Instant) -> Attempt {
    Attempt {
        target: target.to_string(),
        outcome: "kept",
        reason: None,
        error: None,
        mean_logprob: c.mean_logprob,
        min_logprob: c.min_logprob,
        finish_length: c.hit_length,
        parses: c.parses,
        prompt_tokens: usage.0,
        completion_tokens: usage.1,
        latency_ms: ms(t0),
    }
}

fn failed_attempt(target: &str, error: String, t0: Instant) -> Attempt {
    Attempt {
        target: target.to_string(),
        outcome: "failed",
        reason: None,
        error: Some(error),
        mean_logprob: None,
        min_logprob: None,
        finish_length: false,
        parses: None,
        prompt_tokens: 0,
        completion_tokens: 0,
        latency_ms: ms(t0),
    }
}

fn usage_of(v: &Value) -> (u64, u64) {
    let u = &v["usage"];
    (
        u["prompt_tokens"].as_u64().unwrap_or(0),
        u["completion_tokens"].as_u64().unwrap_or(0),
    )
}

fn all_failed(route: &str) -> Response {
    let body = ErrorResponse {
        error: ErrorBody {
            message: format!("Every target of route `{route}` failed; retry later."),
            kind: "server_error".into(),
            param: None,
            code: Some("route_unavailable".into()),
        },
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// Makes an answer (or a chunk) the client's: the answering model's name, and no logprobs the
/// client did not ask for.
fn present(v: &mut Value, model: &str, keep_logprobs: bool) {
    v["model"] = Value::from(model);
    if !keep_logprobs {
        if let Some(choices) = v["choices"].as_array_mut() {
            for c in choices {
                if c.get("logprobs").is_some() {
                    c["logprobs"] = Value::Null;
                }
            }
        }
    }
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("?"))
}

impl Route {
    pub fn new(
        cfg: RouteConfig,
        targets: Vec<Target>,
        metrics: Arc<RouteMetrics>,
    ) -> anyhow::Result<Self> {
        let telemetry = cfg.telemetry.as_deref().map(Telemetry::open).transpose()?;
        let targets = cfg
            .targets
            .iter()
            .map(|t| t.display_name().to_string())
            .zip(targets)
            .collect();
        Ok(Self {
            cfg,
            targets,
            telemetry,
            metrics,
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn target_names(&self) -> Vec<&str> {
        self.targets.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The targets, for `flare route eval`.
    pub fn targets(&self) -> &[(String, Target)] {
        &self.targets
    }

    fn log(&self, trace: Trace, answered: Option<&str>, fallback: bool, request: &Value) {
        if let Some(name) = answered {
            self.metrics.answered(self.name(), name);
        }
        let Some(t) = &self.telemetry else { return };
        let prompt = self.cfg.log_prompts.then(|| match trace.api {
            Api::Chat => request["messages"].clone(),
            Api::Completions => request["prompt"].clone(),
        });
        t.write(&Line {
            ts_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            route: self.name().to_string(),
            api: match trace.api {
                Api::Chat => "chat",
                Api::Completions => "completions",
            },
            stream: trace.stream,
            answered_by: answered.map(str::to_string),
            escalated: trace.escalated,
            fallback,
            latency_ms: ms(trace.start),
            attempts: trace.attempts,
            prompt,
        });
    }

    fn respond(
        &self,
        mut v: Value,
        target: &str,
        keep_lp: bool,
        trace: &Trace,
        fallback: bool,
    ) -> Response {
        present(&mut v, target, keep_lp);
        let mut resp = Json(v).into_response();
        self.headers(&mut resp, target, trace, fallback);
        resp
    }

    fn headers(&self, resp: &mut Response, target: &str, trace: &Trace, fallback: bool) {
        let h = resp.headers_mut();
        h.insert(MODEL_HEADER, header_value(target));
        h.insert(
            HeaderName::from_static("x-flare-route"),
            header_value(self.name()),
        );
        let reasons: Vec<&str> = trace.attempts.iter().filter_map(|a| a.reason).collect();
        if !reasons.is_empty() {
            h.insert(
                HeaderName::from_static("x-flare-escalated"),
                header_value(&reasons.join(",")),
            );
        }
        if fallback {
            h.insert(
                HeaderName::from_static("x-flare-fallback"),
                HeaderValue::from_static("true"),
            );
        }
    }

    /// Runs one request through the cascade.
    pub async fn run(
        self: Arc<Self>,
        api: Api,
        body: Value,
        guard: Option<Arc<RequestGuard>>,
    ) -> Response {
        if body["stream"].as_bool() == Some(true) {
            return self.run_stream(api, body, guard).await;
        }
        let keep_lp = api.client_wants_logprobs(&body);
        let mut trace = Trace {
            start: Instant::now(),
            api,
            stream: false,
            attempts: Vec::new(),
            escalated: false,
        };
        // The latest answer and the index of its attempt.
        let mut best: Option<(usize, Value, usize)> = None;
        let n = self.targets.len();
        for (i, (name, target)) in self.targets.iter().enumerate() {
            let last = i + 1 == n;
            let mut b = body.clone();
            if !last {
                api.ask_logprobs(&mut b);
            }
            self.metrics.attempt(self.name(), name);
            let t0 = Instant::now();
            match target.call(api, b, guard.clone()).await {
                Called::Refused(resp) if best.is_none() => {
                    trace.attempts.push(failed_attempt(
                        name,
                        format!("refused: {}", resp.status()),
                        t0,
                    ));
                    self.log(trace, None, false, &body);
                    return resp;
                }
                Called::Refused(resp) => {
                    let e = format!("refused the request: {}", resp.status());
                    self.on_failure(&mut trace, name, e, t0, last);
                }
                Called::Failed(e) => self.on_failure(&mut trace, name, e, t0, last),
                Called::Answer(v) => {
                    let c = Confidence::of_response(api, &body, &v);
                    let usage = usage_of(&v);
                    self.metrics.tokens(self.name(), name, usage.0, usage.1);
                    let mut a = attempt(name, &c, usage, t0);
                    let verdict = if last {
                        None
                    } else {
                        judge(&self.cfg.escalate, &c)
                    };
                    best = Some((i, v, trace.attempts.len()));
                    match verdict {
                        None => {
                            a.outcome = if last { "final" } else { "kept" };
                            trace.attempts.push(a);
                            break;
                        }
                        Some(r) => {
                            a.outcome = "escalated";
                            a.reason = Some(r.as_str());
                            trace.escalated = true;
                            self.metrics.escalation(self.name(), r.as_str());
                            trace.attempts.push(a);
                        }
                    }
                }
            }
        }
        match best {
            None => {
                self.log(trace, None, false, &body);
                all_failed(self.name())
            }
            Some((i, v, idx)) => {
                let name = self.targets[i].0.clone();
                let fallback = trace.attempts[idx].outcome == "escalated";
                if fallback {
                    tracing::warn!(
                        "route `{}`: later targets failed; answering with `{name}`",
                        self.name()
                    );
                }
                let resp = self.respond(v, &name, keep_lp, &trace, fallback);
                self.log(trace, Some(&name), fallback, &body);
                resp
            }
        }
    }

    fn on_failure(&self, trace: &mut Trace, name: &str, e: String, t0: Instant, last: bool) {
        tracing::warn!("route `{}`: target `{name}` failed: {e}", self.name());
        self.metrics.failure(self.name(), name);
        if !last {
            self.metrics
                .escalation(self.name(), Reason::TargetError.as_str());
        }
        trace.attempts.push(failed_attempt(name, e, t0));
    }
}

/// What a held-back stream has shown so far.
#[derive(Default)]
struct Seen {
    logprobs: Vec<f64>,
    /// Deltas with text (counts tokens when a target returns no logprobs).
    text_deltas: usize,
    /// Per choice index: finished, with `length`?
    finished: Vec<Option<bool>>,
    text: Vec<String>,
    usage: (u64, u64),
    chunks: usize,
}

impl Seen {
    fn take(&mut self, api: Api, ev: &Value) {
        self.chunks += 1;
        if ev["usage"].is_object() {
            self.usage = usage_of(ev);
        }
        let Some(choices) = ev["choices"].as_array() else {
            return;
        };
        for c in choices {
            let i = c["index"].as_u64().unwrap_or(0) as usize;
            if self.finished.len() <= i {
                self.finished.resize(i + 1, None);
                self.text.resize(i + 1, String::new());
            }
            match api {
                Api::Chat => {
                    if let Some(a) = c["logprobs"]["content"].as_array() {
                        self.logprobs
                            .extend(a.iter().filter_map(|t| t["logprob"].as_f64()));
                    }
                    if let Some(t) = c["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
                        self.text[i].push_str(t);
                        self.text_deltas += 1;
                    }
                }
                Api::Completions => {
                    if let Some(a) = c["logprobs"]["token_logprobs"].as_array() {
                        self.logprobs.extend(a.iter().filter_map(Value::as_f64));
                    }
                    if let Some(t) = c["text"].as_str().filter(|t| !t.is_empty()) {
                        self.text[i].push_str(t);
                        self.text_deltas += 1;
                    }
                }
            }
            if let Some(r) = c["finish_reason"].as_str() {
                self.finished[i] = Some(r == "length");
            }
        }
    }

    /// Tokens seen so far (by logprobs, else by text deltas).
    fn tokens(&self) -> usize {
        self.logprobs.len().max(self.text_deltas)
    }

    fn all_finished(&self, n: usize) -> bool {
        self.finished.len() >= n && self.finished.iter().all(Option::is_some)
    }

    fn confidence(&self, request: &Value, ended: bool) -> Confidence {
        let wants_json = matches!(
            request["response_format"]["type"].as_str(),
            Some("json_object" | "json_schema")
        );
        let parses = (ended && wants_json).then(|| {
            self.text
                .iter()
                .all(|t| serde_json::from_str::<Value>(t).is_ok())
        });
        let hit_length = self.finished.contains(&Some(true));
        Confidence::of_tokens(&self.logprobs, hit_length, parses)
    }
}

impl Route {
    async fn run_stream(
        self: Arc<Self>,
        api: Api,
        body: Value,
        guard: Option<Arc<RequestGuard>>,
    ) -> Response {
        let keep_lp = api.client_wants_logprobs(&body);
        let client_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
        let n_choices = body["n"].as_u64().unwrap_or(1).max(1) as usize;
        let mut trace = Trace {
            start: Instant::now(),
            api,
            stream: true,
            attempts: Vec::new(),
            escalated: false,
        };
        let n = self.targets.len();
        let commit_after = self.cfg.commit_after_tokens;
        for (i, (name, target)) in self.targets.iter().enumerate() {
            let last = i + 1 == n;
            let mut b = body.clone();
            if !last {
                api.ask_logprobs(&mut b);
            }
            b["stream_options"] = serde_json::json!({"include_usage": true});
            self.metrics.attempt(self.name(), name);
            let t0 = Instant::now();
            let mut events = match target.call_stream(api, b, guard.clone()).await {
                Called::Refused(resp) if i == 0 => {
                    trace.attempts.push(failed_attempt(
                        name,
                        format!("refused: {}", resp.status()),
                        t0,
                    ));
                    self.log(trace, None, false, &body);
                    return resp;
                }
                Called::Refused(resp) => {
                    let e = format!("refused the request: {}", resp.status());
                    self.on_failure(&mut trace, name, e, t0, last);
                    continue;
                }
                Called::Failed(e) => {
                    self.on_failure(&mut trace, name, e, t0, last);
                    continue;
                }
                Called::Answer(ev) => ev,
            };
            let mut held = Vec::new();
            let mut seen = Seen::default();
            let mut ended = false;
            let mut broken = None;
            if !last {
                while seen.tokens() < commit_after && !seen.all_finished(n_choices) {
                    match events.next().await {
                        Some(Ok(ev)) => {
                            seen.take(api, &ev);
                            held.push(ev);
                        }
                        Some(Err(e)) => {
                            broken = Some(e);
                            break;
                        }
                        None => {
                            ended = true;
                            break;
                        }
                    }
                }
                if seen.all_finished(n_choices) {
                    // The usage chunk comes after the last finish reason.
                    ended = true;
                }
            }
            if let Some(e) = broken {
                self.on_failure(&mut trace, name, e, t0, last);
                continue;
            }
            let c = seen.confidence(&body, ended);
            let verdict = if last {
                None
            } else {
                judge(&self.cfg.escalate, &c)
            };
            if let Some(r) = verdict {
                let mut a = attempt(name, &c, seen.usage, t0);
                a.outcome = "escalated";
                a.reason = Some(r.as_str());
                a.completion_tokens = a.completion_tokens.max(seen.tokens() as u64);
                self.metrics
                    .tokens(self.name(), name, a.prompt_tokens, a.completion_tokens);
                self.metrics.escalation(self.name(), r.as_str());
                trace.escalated = true;
                trace.attempts.push(a);
                // Dropping the stream aborts the target's request (its KV blocks are freed).
                drop(events);
                continue;
            }
            return self.clone().commit(CommitArgs {
                api,
                name: name.clone(),
                held,
                seen,
                events,
                trace,
                keep_lp,
                client_usage,
                last,
                body,
                t0,
            });
        }
        self.log(trace, None, false, &body);
        all_failed(self.name())
    }

    /// Sends the held events, then the rest of the stream as it comes.
    fn commit(self: Arc<Self>, a: CommitArgs) -> Response {
        let CommitArgs {
            api,
            name,
            held,
            seen,
            mut events,
            trace,
            keep_lp,
            client_usage,
            last,
            body,
            t0,
        } = a;
        let mut headers_trace = Trace {
            start: trace.start,
            api,
            stream: true,
            attempts: trace.attempts.clone(),
            escalated: trace.escalated,
        };
        headers_trace.attempts.retain(|a| a.reason.is_some());
        let mut log = PendingLog {
            route: self.clone(),
            trace: Some(trace),
            target: name.clone(),
            body,
            seen,
            t0,
            last,
        };
        let out = async_stream::stream! {
            let target = log.target.clone();
            let shown = |mut ev: Value| -> Option<Result<Event, std::convert::Infallible>> {
                let usage_only = ev["choices"].as_array().is_some_and(Vec::is_empty)
                    && ev["usage"].is_object();
                if usage_only && !client_usage {
                    return None;
                }
                if !client_usage {
                    if let Some(o) = ev.as_object_mut() {
                        o.remove("usage");
                    }
                }
                present(&mut ev, &target, keep_lp);
                Some(Ok(Event::default().data(ev.to_string())))
            };
            for ev in held {
                if let Some(e) = shown(ev) { yield e; }
            }
            let mut error = None;
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(ev) => {
                        log.seen.take(api, &ev);
                        if let Some(e) = shown(ev) { yield e; }
                    }
                    Err(e) => { error = Some(e); break; }
                }
            }
            if let Some(e) = &error {
                let body = ErrorResponse { error: ErrorBody {
                    message: format!("The stream from `{target}` broke: {e}"),
                    kind: "server_error".into(), param: None, code: Some("upstream_error".into()),
                }};
                yield Ok(Event::default().data(serde_json::to_string(&body).unwrap_or_default()));
            }
            log.finish(if log.last { "final" } else { "kept" }, error);
            yield Ok(Event::default().data("[DONE]"));
        };
        let mut resp = (
            [("x-accel-buffering", "no")],
            axum::response::sse::Sse::new(out.boxed()),
        )
            .into_response();
        self.headers(&mut resp, &name, &headers_trace, false);
        resp
    }
}

struct CommitArgs {
    api: Api,
    name: String,
    held: Vec<Value>,
    seen: Seen,
    events: Events,
    trace: Trace,
    keep_lp: bool,
    client_usage: bool,
    last: bool,
    body: Value,
    t0: Instant,
}

/// Writes a committed stream's telemetry line and token counts once: when it ends, or when
/// the client goes away before that (outcome `client_gone`).
struct PendingLog {
    route: Arc<Route>,
    trace: Option<Trace>,
    target: String,
    body: Value,
    seen: Seen,
    t0: Instant,
    last: bool,
}

impl PendingLog {
    fn finish(&mut self, outcome: &'static str, error: Option<String>) {
        let Some(mut trace) = self.trace.take() else {
            return;
        };
        let c = self.seen.confidence(&self.body, error.is_none());
        let mut at = attempt(&self.target, &c, self.seen.usage, self.t0);
        at.outcome = outcome;
        at.error = error;
        at.completion_tokens = at.completion_tokens.max(self.seen.tokens() as u64);
        let r = &self.route;
        r.metrics.tokens(
            r.name(),
            &self.target,
            at.prompt_tokens,
            at.completion_tokens,
        );
        trace.attempts.push(at);
        r.log(trace, Some(&self.target), false, &self.body);
    }
}

impl Drop for PendingLog {
    fn drop(&mut self) {
        self.finish("client_gone", None);
    }
}
