//! Per-key limits and cost control: which key a request carries, whether it may run now
//! (concurrency, requests and tokens per minute, daily token budget), the cap on `max_tokens`,
//! the key's scheduling priority, and per-key token counters.
//!
//! Token rule (as OpenAI-style gateways do): a request reserves its prompt tokens (each prompt
//! once, however many choices) plus `max_tokens` for every choice when it is admitted to the
//! engine, and is settled when its last choice ends (finished, failed or the client gone) to
//! what it used: the same prompt + completion count its `usage` reports. A request the engine
//! refused uses nothing. Requests per minute count every authenticated request that got past
//! the concurrency and request limits.

mod window;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use super::auth::same_secret;
use super::error::ApiError;
#[cfg(test)]
use super::keys::KEY_PRIORITY_RANGE;
use super::keys::{ApiKey, MaxTokensMode};
use super::metrics::KeyCounters;
use super::state::AppState;
use crate::scheduler::SchedulingPolicy;
pub use window::Quota;
use window::{DailyBudget, Day, MinuteWindow};

/// Range of the `priority` request field under the priority policy.
pub const REQUEST_PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -32768..=32767;

/// Which limit a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Concurrency,
    RequestsPerMinute,
    TokensPerMinute,
    DailyBudget,
}

/// A 429 from a key's limits: what to tell the client, and the headers OpenAI sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    pub kind: LimitKind,
    pub message: String,
    /// When the same request could succeed; None when it never can (larger than the limit).
    pub retry_after: Option<Duration>,
    pub requests: Option<Quota>,
    pub tokens: Option<Quota>,
}

impl Limited {
    /// OpenAI's `type` and `code` for it.
    pub fn kind_and_code(&self) -> (&'static str, &'static str) {
        match self.kind {
            LimitKind::Concurrency | LimitKind::RequestsPerMinute => {
                ("requests", "rate_limit_exceeded")
            }
            LimitKind::TokensPerMinute => ("tokens", "rate_limit_exceeded"),
            LimitKind::DailyBudget => ("insufficient_quota", "insufficient_quota"),
        }
    }

    pub fn headers(&self, headers: &mut HeaderMap) {
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(secs.max(1)),
            );
        }
        quota_headers(headers, self.requests, self.tokens);
    }
}

/// OpenAI's duration format in `x-ratelimit-reset-*`: `17ms`, `1.5s`, `6m0s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

fn quota_headers(headers: &mut HeaderMap, requests: Option<Quota>, tokens: Option<Quota>) {
    for (suffix, q) in [("requests", requests), ("tokens", tokens)] {
        let Some(q) = q else { continue };
        for (what, value) in [
            ("limit", q.limit.to_string()),
            ("remaining", q.remaining.to_string()),
            ("reset", format_reset(q.reset)),
        ] {
            let name = HeaderName::try_from(format!("x-ratelimit-{what}-{suffix}"))
                .expect("valid header name");
            headers.insert(name, HeaderValue::try_from(value).expect("ascii value"));
        }
    }
}

#[derive(Debug, Default)]
struct Windows {
    requests: MinuteWindow,
    tokens: MinuteWindow,
    daily: DailyBudget,
    next_ticket: u64,
}

/// One configured key: its limits, what it has used, its counters.
pub struct KeyState {
    key: ApiKey,
    windows: Mutex<Windows>,
    concurrent: AtomicU64,
    counters: KeyCounters,
}

impl std::fmt::Debug for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyState").field("key", &self.key).finish()
    }
}

/// The authenticated caller of a request (a request extension on /v1/*).
pub type Caller = Arc<KeyState>;

impl KeyState {
    pub fn id(&self) -> &str {
        &self.key.id
    }

    pub fn priority(&self) -> i32 {
        self.key.limits.priority
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The requests and tokens quotas now, for the headers of any response.
    pub fn quotas(&self) -> (Option<Quota>, Option<Quota>) {
        let now = Instant::now();
        let mut w = self.windows();
        let l = &self.key.limits;
        let requests = l.requests_per_minute.map(|lim| w.requests.quota(lim, now));
        let tokens = match (l.tokens_per_minute, l.daily_token_budget) {
            (Some(lim), _) => Some(w.tokens.quota(lim, now)),
            (None, Some(lim)) => Some(w.daily.quota(lim, Day::now())),
            (None, None) => None,
        };
        (requests, tokens)
    }

    fn limited(&self, kind: LimitKind, message: String, retry_after: Option<Duration>) -> Limited {
        let (requests, tokens) = self.quotas();
        tracing::debug!(key = self.id(), ?kind, "rate limited");
        self.counters.limited.increment(1);
        Limited {
            kind,
            message,
            retry_after,
            requests,
            tokens,
        }
    }

    /// Admits one request against the concurrency and requests-per-minute limits; the guard
    /// holds its concurrency place until dropped.
    pub fn admit(self: &Arc<Self>) -> Result<RequestGuard, Limited> {
        let l = &self.key.limits;
        let before = self.concurrent.fetch_add(1, Ordering::SeqCst);
        let guard = RequestGuard { key: self.clone() };
        if let Some(max) = l.max_concurrent_requests {
            if before >= max {
                drop(guard);
                return Err(self.limited(
                    LimitKind::Concurrency,
                    format!(
                        "Too many concurrent requests for key `{}`: limit {max}. Retry when one \
                         of them has finished.",
                        self.id()
                    ),
                    Some(Duration::from_secs(1)),
                ));
            }
        }
        if let Some(rpm) = l.requests_per_minute {
            let now = Instant::now();
            let mut w = self.windows();
            let wait = w.requests.wait_for(1, rpm, now).unwrap_or(window::MINUTE);
            if !wait.is_zero() {
                drop(w);
                drop(guard);
                return Err(self.limited(
                    LimitKind::RequestsPerMinute,
                    format!(
                        "Rate limit reached for key `{}` on requests per min (RPM): limit {rpm}. \
                         Please try again in {}.",
                        self.id(),
                        format_reset(wait)
                    ),
                    Some(wait),
                ));
            }
            let ticket = w.next_ticket;
            w.next_ticket += 1;
            w.requests.push(now, ticket, 1);
        }
        Ok(guard)
    }

    /// Reserves `prompt + completion` tokens against the tokens-per-minute limit and the daily
    /// budget.
    fn reserve(&self, prompt: u64, completion: u64) -> Result<Reservation, Limited> {
        let amount = prompt + completion;
        let l = &self.key.limits;
        let now = Instant::now();
        let day = Day::now();
        let mut w = self.windows();
        if let Some(tpm) = l.tokens_per_minute {
            let wait = w.tokens.wait_for(amount, tpm, now);
            if wait != Some(Duration::ZERO) {
                let used = w.tokens.used(now);
                drop(w);
                let message = match wait {
                    None => format!(
                        "Request too large for key `{}` on tokens per min (TPM): limit {tpm}, \
                         requested {amount} ({prompt} prompt + {completion} max completion). \
                         Lower max_tokens or the prompt.",
                        self.id()
                    ),
                    Some(d) => format!(
                        "Rate limit reached for key `{}` on tokens per min (TPM): limit {tpm}, \
                         used {used}, requested {amount}. Please try again in {}.",
                        self.id(),
                        format_reset(d)
                    ),
                };
                return Err(self.limited(LimitKind::TokensPerMinute, message, wait));
            }
        }
        if let Some(budget) = l.daily_token_budget {
            if !w.daily.fits(amount, budget, day) {
                drop(w);
                return Err(self.limited(
                    LimitKind::DailyBudget,
                    format!(
                        "Key `{}` has used its daily token budget ({budget} tokens per UTC day; \
                         this request needs up to {amount}).",
                        self.id()
                    ),
                    (amount <= budget).then_some(day.left),
                ));
            }
            w.daily.add(amount, day);
        }
        let ticket = w.next_ticket;
        w.next_ticket += 1;
        if l.tokens_per_minute.is_some() {
            w.tokens.push(now, ticket, amount);
        }
        Ok(Reservation {
            ticket,
            day: day.number,
            amount,
        })
    }

    fn settle(&self, r: &Reservation, used: u64) {
        let mut w = self.windows();
        w.tokens.settle(r.ticket, used);
        w.daily.settle(r.day, r.amount, used);
    }

    /// Applies the key's `max_tokens` cap to a request's explicit `max_tokens`-like field:
    /// clamped, or refused with a 400 naming `param`.
    pub fn cap_requested(&self, value: &mut Option<i64>, param: &str) -> Result<(), ApiError> {
        let Some(cap) = self.key.limits.max_tokens else {
            return Ok(());
        };
        let cap = i64::try_from(cap).unwrap_or(i64::MAX);
        match *value {
            Some(v) if v > cap => match self.key.limits.max_tokens_mode {
                MaxTokensMode::Clamp => *value = Some(cap),
                MaxTokensMode::Reject => {
                    return Err(ApiError::invalid(
                        param,
                        format!(
                            "`{param}` is {v}, above this API key's limit of {cap} tokens per \
                             choice."
                        ),
                    ))
                }
            },
            _ => {}
        }
        Ok(())
    }

    /// The cap for a choice whose `max_tokens` was left to its default.
    pub fn max_tokens_cap(&self) -> Option<usize> {
        self.key
            .limits
            .max_tokens
            .map(|c| usize::try_from(c).unwrap_or(usize::MAX))
    }
}

/// Holds a key's concurrency place for one request.
#[derive(Debug)]
pub struct RequestGuard {
    key: Caller,
}

impl RequestGuard {
    pub fn key(&self) -> &Caller {
        &self.key
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.key.concurrent.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct Reservation {
    ticket: u64,
    day: i64,
    amount: u64,
}

/// The tokens of one admitted request, shared by its choices; settled (and counted on
/// /metrics) when the last choice lets go of it.
pub struct TokenLease {
    guard: Arc<RequestGuard>,
    reservation: Reservation,
    prompt_lens: Vec<usize>,
    n: usize,
    /// Per choice: output tokens and cached prompt tokens so far.
    counts: Mutex<Vec<(usize, usize)>>,
    started: std::sync::atomic::AtomicBool,
}

impl TokenLease {
    /// Reserves a request's tokens: `prompt_lens` (each prompt once), `n` choices per prompt,
    /// each allowed `max_tokens[i]`.
    pub fn reserve(
        guard: Arc<RequestGuard>,
        prompt_lens: Vec<usize>,
        n: usize,
        max_tokens: &[usize],
    ) -> Result<Self, Limited> {
        let prompt: u64 = prompt_lens.iter().map(|&l| l as u64).sum();
        let completion: u64 = max_tokens.iter().map(|&m| m as u64).sum();
        let reservation = guard.key.reserve(prompt, completion)?;
        Ok(Self {
            counts: Mutex::new(vec![(0, 0); max_tokens.len()]),
            guard,
            reservation,
            prompt_lens,
            n,
            started: false.into(),
        })
    }

    /// The id (never the secret) of the key the request came with.
    pub fn key_id(&self) -> &str {
        self.guard.key.id()
    }

    /// The engine accepted every choice: from now on the prompt counts.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    /// Choice `index` has produced `output_tokens` in all, with `cached` prompt tokens.
    pub fn record(&self, index: usize, output_tokens: usize, cached: usize) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = c.get_mut(index) {
            *slot = (output_tokens, cached);
        }
    }
}

impl Drop for TokenLease {
    fn drop(&mut self) {
        let key = &self.guard.key;
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let used = if self.started.load(Ordering::SeqCst) {
            let u = super::generate::usage(&self.prompt_lens, self.n, &counts);
            key.counters.prompt.increment(u.prompt_tokens as u64);
            key.counters
                .cached
                .increment(u.prompt_tokens_details.cached_tokens as u64);
            key.counters
                .completion
                .increment(u.completion_tokens as u64);
            u.total_tokens as u64
        } else {
            0
        };
        key.settle(&self.reservation, used);
    }
}

/// Every configured key; empty when the server runs without keys.
#[derive(Debug, Default)]
pub struct KeyRegistry {
    keys: Vec<Caller>,
}

impl KeyRegistry {
    pub fn new(keys: Vec<ApiKey>, metrics: &super::metrics::Metrics) -> Self {
        Self {
            keys: keys
                .into_iter()
                .map(|key| {
                    Arc::new(KeyState {
                        counters: metrics.key_counters(&key.id),
                        key,
                        windows: Mutex::default(),
                        concurrent: AtomicU64::new(0),
                    })
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key whose secret is `token`. Every key is compared, each in constant time, so the
    /// time taken does not tell which key (or how much of one) matched.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let mut found = None;
        for k in &self.keys {
            if same_secret(token.as_bytes(), k.key.key.as_bytes()) {
                found = Some(k.clone());
            }
        }
        found
    }

    pub fn get(&self, id: &str) -> Option<&Caller> {
        self.keys.iter().find(|k| k.id() == id)
    }
}

/// The request's priority in the waiting queue. Under FCFS a nonzero `priority` is refused (it
/// could not be honoured). Under the priority policy the key's priority orders first and the
/// request's field second (lower first in both): `key * 65536 + request`, so a client can
/// reorder its own requests but never pass a more important key's.
pub fn effective_priority(
    policy: SchedulingPolicy,
    caller: Option<&Caller>,
    requested: i32,
) -> Result<i32, ApiError> {
    match policy {
        SchedulingPolicy::Fcfs if requested != 0 => Err(ApiError::invalid(
            "priority",
            "`priority` is only honoured under --scheduling-policy priority; this server \
             schedules first come, first served.",
        )),
        SchedulingPolicy::Fcfs => Ok(0),
        SchedulingPolicy::Priority => {
            if !REQUEST_PRIORITY_RANGE.contains(&requested) {
                return Err(ApiError::invalid(
                    "priority",
                    format!(
                        "`priority` must be between {} and {}; got {requested}.",
                        REQUEST_PRIORITY_RANGE.start(),
                        REQUEST_PRIORITY_RANGE.end()
                    ),
                ));
            }
            let key = caller.map_or(0, |c| c.priority());
            Ok(key * 65536 + requested)
        }
    }
}

/// Middleware on /v1/*: with keys configured, the bearer token must be one of them; the key's
/// concurrency and request limits are applied, the key is handed to the handler, and the
/// response carries the key's `x-ratelimit-*` headers.
pub async fn authenticate_and_admit(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let keys = state.keys();
    if keys.is_empty() {
        return Ok(next.run(req).await);
    }
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        // Anthropic's clients send the key as `x-api-key`.
        .or_else(|| {
            req.headers()
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        });
    let Some(caller) = token.and_then(|t| keys.authenticate(t)) else {
        return Err(ApiError::Unauthorized);
    };
    let guard = Arc::new(caller.admit().map_err(ApiError::rate_limited)?);
    req.extensions_mut().insert(guard);
    let mut resp = next.run(req).await;
    if !resp.headers().contains_key("x-ratelimit-limit-requests")
        && !resp.headers().contains_key("x-ratelimit-limit-tokens")
    {
        let (requests, tokens) = caller.quotas();
        quota_headers(resp.headers_mut(), requests, tokens);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_durations_read_like_openai() {
        assert_eq!(format_reset(Duration::from_millis(17)), "17ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(1)), "1s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }

    #[test]
    fn priorities_combine_key_first() {
        use SchedulingPolicy::*;
        assert!(effective_priority(Fcfs, None, 1).is_err());
        assert_eq!(effective_priority(Fcfs, None, 0).unwrap(), 0);
        assert_eq!(effective_priority(Priority, None, -5).unwrap(), -5);
        assert!(effective_priority(Priority, None, 40_000).is_err());
        // Extremes still fit in an i32.
        let (keys, reqs) = (KEY_PRIORITY_RANGE, REQUEST_PRIORITY_RANGE);
        let lo = *keys.start() as i64 * 65536 + *reqs.start() as i64;
        let hi = *keys.end() as i64 * 65536 + *reqs.end() as i64;
        assert!(lo >= i32::MIN as i64 && hi <= i32::MAX as i64);
    }
}
