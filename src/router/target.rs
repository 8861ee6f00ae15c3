//! Calling one target of a route: a local model (its own router, in process) or an upstream
//! OpenAI-compatible endpoint (HTTP, with retries and exponential backoff).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde_json::Value;
use tower::ServiceExt;

use super::confidence::Api;
use super::config::TargetConfig;
use super::dispatch::LocalModel;
use crate::server::limits::RequestGuard;

/// Bodies of target answers are read up to this size.
const MAX_ANSWER_BYTES: usize = 64 << 20;

pub enum Target {
    Local(Arc<LocalModel>),
    Upstream(Upstream),
}

pub struct Upstream {
    base: String,
    model: String,
    key: Option<String>,
    retries: u32,
    backoff: Duration,
    client: reqwest::Client,
}

/// A target's answer to one call.
pub enum Called<T> {
    Answer(T),
    /// The request itself is at fault (a 4xx other than 429): the client gets this as is.
    Refused(Response),
    /// The target could not answer (connect error, 5xx, 429 after retries, bad body).
    Failed(String),
}

/// The `data:` payloads of an SSE answer, `[DONE]` excluded.
pub type Events = BoxStream<'static, Result<Value, String>>;

impl Target {
    pub fn new(cfg: &TargetConfig, local: Option<Arc<LocalModel>>) -> anyhow::Result<Self> {
        let Some(url) = &cfg.url else {
            let m = local.ok_or_else(|| anyhow::anyhow!("no local model `{}`", cfg.model))?;
            return Ok(Target::Local(m));
        };
        let key = match &cfg.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                anyhow::anyhow!(
                    "target `{}`: environment variable `{var}` (api_key_env) is not set",
                    cfg.display_name()
                )
            })?),
            None => None,
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(cfg.timeout_s))
            .build()?;
        Ok(Target::Upstream(Upstream {
            base: url.trim_end_matches('/').to_string(),
            model: cfg.model.clone(),
            key,
            retries: cfg.retries,
            backoff: Duration::from_millis(cfg.backoff_ms),
            client,
        }))
    }

    /// Runs `body` (its `model` replaced) on this target and parses the JSON answer.
    pub async fn call(
        &self,
        api: Api,
        mut body: Value,
        guard: Option<Arc<RequestGuard>>,
    ) -> Called<Value> {
        match self {
            Target::Local(m) => {
                body["model"] = Value::from(m.names[0].clone());
                let resp = m.call(api, &body, guard).await;
                let status = resp.status();
                if is_client_error(status) {
                    return Called::Refused(resp);
                }
                let bytes = match axum::body::to_bytes(resp.into_body(), MAX_ANSWER_BYTES).await {
                    Ok(b) => b,
                    Err(e) => return Called::Failed(format!("reading the answer: {e}")),
                };
                if !status.is_success() {
                    return Called::Failed(format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&bytes)
                    ));
                }
                match serde_json::from_slice(&bytes) {
                    Ok(v) => Called::Answer(v),
                    Err(e) => Called::Failed(format!("answer is not JSON: {e}")),
                }
            }
            Target::Upstream(u) => {
                body["model"] = Value::from(u.model.clone());
                match u.send(api, &body).await {
                    Called::Answer(r) => match r.json::<Value>().await {
                        Ok(v) => Called::Answer(v),
                        Err(e) => Called::Failed(format!("answer is not JSON: {e}")),
                    },
                    Called::Refused(r) => Called::Refused(r),
                    Called::Failed(e) => Called::Failed(e),
                }
            }
        }
    }

    /// Runs `body` with `stream: true` and hands back its events as they come.
    pub async fn call_stream(
        &self,
        api: Api,
        mut body: Value,
        guard: Option<Arc<RequestGuard>>,
    ) -> Called<Events> {
        body["stream"] = Value::Bool(true);
        match self {
            Target::Local(m) => {
                body["model"] = Value::from(m.names[0].clone());
                let resp = m.call(api, &body, guard).await;
                let status = resp.status();
                if is_client_error(status) {
                    return Called::Refused(resp);
                }
                if !status.is_success() {
                    return Called::Failed(format!("{status}"));
                }
                let bytes = resp
                    .into_body()
                    .into_data_stream()
                    .map(|r| r.map_err(|e| e.to_string()));
                Called::Answer(sse_events(bytes.boxed()))
            }
            Target::Upstream(u) => {
                body["model"] = Value::from(u.model.clone());
                match u.send(api, &body).await {
                    Called::Answer(r) => {
                        let bytes = r.bytes_stream().map(|r| r.map_err(|e| e.to_string()));
                        Called::Answer(sse_events(bytes.boxed()))
                    }
                    Called::Refused(r) => Called::Refused(r),
                    Called::Failed(e) => Called::Failed(e),
                }
            }
        }
    }
}

fn is_client_error(s: StatusCode) -> bool {
    s.is_client_error() && s != StatusCode::TOO_MANY_REQUESTS
}

impl Upstream {
    /// POSTs with retries: a connect error, a 5xx or a 429 waits `backoff * 2^attempt` (or the
    /// 429's `retry-after`, at most 10 s) and tries again, `retries` times.
    async fn send(&self, api: Api, body: &Value) -> Called<reqwest::Response> {
        let url = format!("{}{}", self.base, api.path());
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                tokio::time::sleep(self.backoff * 2u32.saturating_pow(attempt - 1)).await;
            }
            let mut req = self.client.post(&url).json(body);
            if let Some(k) = &self.key {
                req = req.bearer_auth(k);
            }
            match req.send().await {
                Err(e) => last = format!("{url}: {e}"),
                Ok(r) if r.status().is_success() => return Called::Answer(r),
                Ok(r) if is_client_error(r.status()) => {
                    let status = r.status();
                    let bytes = r.bytes().await.unwrap_or_default();
                    tracing::warn!("upstream {url} refused the request: {status}");
                    return Called::Refused(
                        (
                            status,
                            [(header::CONTENT_TYPE, "application/json")],
                            Bytes::from(bytes.to_vec()),
                        )
                            .into_response(),
                    );
                }
                Ok(r) => last = format!("{url}: {}", r.status()),
            }
            tracing::warn!("upstream attempt {} failed: {last}", attempt + 1);
        }
        Called::Failed(last)
    }
}

/// Splits an SSE byte stream into its JSON `data:` payloads; `[DONE]` ends it.
pub fn sse_events(bytes: BoxStream<'static, Result<Bytes, String>>) -> Events {
    let s = async_stream::stream! {
        let mut bytes = bytes;
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = bytes.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => { yield Err(e); return; }
            };
            buf.extend_from_slice(&chunk);
            while let Some(pos) = find_event_end(&buf) {
                let event: Vec<u8> = buf.drain(..pos.0 + pos.1).collect();
                let text = String::from_utf8_lossy(&event[..pos.0]).to_string();
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    continue;
                }
                let data = data.join("\n");
                if data == "[DONE]" {
                    return;
                }
                match serde_json::from_str::<Value>(&data) {
                    Ok(v) => yield Ok(v),
                    Err(e) => { yield Err(format!("bad SSE payload: {e}")); return; }
                }
            }
        }
    };
    s.boxed()
}

/// The end of the first event in `buf`: (its length, the separator's length).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// A request to a local model's router, carrying the caller's key guard.
pub fn local_request(api: Api, body: &Value, guard: Option<Arc<RequestGuard>>) -> Request<Body> {
    let mut req = Request::post(format!("/v1{}", api.path()))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            serde_json::to_vec(body).expect("JSON serializes"),
        ))
        .expect("valid request");
    if let Some(g) = guard {
        req.extensions_mut().insert(g);
    }
    req
}

impl LocalModel {
    async fn call(&self, api: Api, body: &Value, guard: Option<Arc<RequestGuard>>) -> Response {
        if let Some(e) = self.failure() {
            return super::dispatch::failed_model(&self.names[0], &e);
        }
        let req = local_request(api, body, guard);
        match self.app.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A loopback upstream answering `statuses` in turn (then 200), counting calls.
    async fn upstream(statuses: Vec<u16>) -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move || {
                let c = c.clone();
                let statuses = statuses.clone();
                async move {
                    let i = c.fetch_add(1, Ordering::SeqCst);
                    let s = statuses.get(i).copied().unwrap_or(200);
                    let body = serde_json::json!({"model": "up", "choices": [], "call": i});
                    (StatusCode::from_u16(s).unwrap(), axum::Json(body))
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        (format!("http://{addr}/v1"), calls)
    }

    fn target(url: &str, retries: u32) -> Target {
        let cfg: TargetConfig = toml::from_str(&format!(
            "model = \"up\"\nurl = \"{url}\"\nretries = {retries}\nbackoff_ms = 1\n"
        ))
        .unwrap();
        Target::new(&cfg, None).unwrap()
    }

    #[tokio::test]
    async fn upstream_retries_5xx_and_429_then_answers() {
        let (url, calls) = upstream(vec![503, 429]).await;
        let body = serde_json::json!({"model": "auto", "messages": []});
        match target(&url, 2).call(Api::Chat, body, None).await {
            Called::Answer(v) => {
                assert_eq!(v["call"], 2);
                assert_eq!(v["model"], "up");
            }
            _ => panic!("expected an answer"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn upstream_gives_up_after_its_retries_and_never_retries_a_400() {
        let (url, calls) = upstream(vec![500, 502, 504]).await;
        let body = serde_json::json!({"messages": []});
        let r = target(&url, 1).call(Api::Chat, body.clone(), None).await;
        assert!(matches!(r, Called::Failed(ref e) if e.contains("502")));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let (url, calls) = upstream(vec![400]).await;
        let r = target(&url, 3).call(Api::Chat, body, None).await;
        assert!(matches!(r, Called::Refused(ref resp) if resp.status() == 400));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Nothing listening: connect errors are retried, then fail.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dead = format!("http://127.0.0.1:{port}/v1");
        let r = target(&dead, 1)
            .call(Api::Chat, serde_json::json!({}), None)
            .await;
        assert!(matches!(r, Called::Failed(_)));
    }

    #[tokio::test]
    async fn sse_payloads_across_chunk_boundaries() {
        let parts: Vec<Result<Bytes, String>> = vec![
            Ok(Bytes::from_static(b"data: {\"a\":")),
            Ok(Bytes::from_static(
                b" 1}\n\ndata: {\"b\": 2}\r\n\r\n: comment\n\n",
            )),
            Ok(Bytes::from_static(b"data: [DONE]\n\ndata: {\"c\": 3}\n\n")),
        ];
        let events: Vec<_> = sse_events(futures_util::stream::iter(parts).boxed())
            .collect()
            .await;
        let values: Vec<Value> = events.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            values,
            vec![serde_json::json!({"a": 1}), serde_json::json!({"b": 2})]
        );
    }
}
