//! What every handler shares: configuration, the model once loaded, metrics, admission count.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::error::ApiError;
use super::keys::{ApiKey, KeyLimits, SINGLE_KEY_ID};
use super::limits::KeyRegistry;
use super::metrics::Metrics;
use super::response_store::ResponseStore;
use crate::chat_template::ChatTemplate;
use crate::engine::EngineHandle;
use crate::guidance::Guidance;
use crate::scheduler::SchedulingPolicy;
use crate::tokenizer::Tokenizer;
use crate::tools::reasoning::ReasoningKind;
use crate::tools::ParserKind;

/// Server options (`flare serve` flags, vLLM's names).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Names clients may put in `model`; the first is the one responses carry.
    pub served_model_names: Vec<String>,
    /// What was loaded (shown as `root` in /v1/models).
    pub model_root: String,
    /// Required as `Authorization: Bearer <key>` on /v1/* when set (a key with id `default`
    /// and no limits).
    pub api_key: Option<String>,
    /// Keys with ids and limits (`--api-keys FILE`); with any key, /v1/* needs one of them.
    pub api_keys: Vec<ApiKey>,
    /// The engine's waiting-queue order; under FCFS a nonzero `priority` field is a 400.
    pub scheduling_policy: SchedulingPolicy,
    /// The engine's running-batch limit; requests past it count against `max_queue_len`.
    pub max_num_seqs: usize,
    /// Requests (each of `n` choices counts) that may wait beyond `max_num_seqs`; more get 429.
    pub max_queue_len: usize,
    /// Larger request bodies get 413.
    pub max_request_bytes: usize,
    /// `--tool-call-parser`; None: detected from the chat template.
    pub tool_call_parser: Option<ParserKind>,
    /// `--reasoning-parser`; None: reasoning stays in the content.
    pub reasoning_parser: Option<ReasoningKind>,
    /// How long a stored Responses API response is kept (`--responses-ttl`).
    pub responses_ttl: std::time::Duration,
    /// Most stored responses (`--responses-store-size`); the oldest go first.
    pub responses_store_size: usize,
    /// A connection that takes longer to send a request's headers (or sits idle between
    /// requests) is closed: slowloris clients cannot hold connections.
    pub header_read_timeout: std::time::Duration,
    /// A request body that takes longer to arrive gets 408.
    pub body_read_timeout: std::time::Duration,
    /// A connection whose client accepts no response bytes for this long is closed (its
    /// request aborted): a client that never reads cannot hold a request's output and slot.
    pub write_stall_timeout: std::time::Duration,
    /// `--log-requests`: one `flare::requests` line per finished engine request (ids, key id,
    /// token counts, latency; never prompt or output text).
    pub log_requests: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            served_model_names: vec!["flare".into()],
            model_root: String::new(),
            api_key: None,
            api_keys: Vec::new(),
            scheduling_policy: SchedulingPolicy::Fcfs,
            max_num_seqs: 256,
            max_queue_len: 4096,
            max_request_bytes: 8 << 20,
            tool_call_parser: None,
            reasoning_parser: None,
            responses_ttl: std::time::Duration::from_secs(3600),
            responses_store_size: 1024,
            header_read_timeout: std::time::Duration::from_secs(10),
            body_read_timeout: std::time::Duration::from_secs(30),
            write_stall_timeout: std::time::Duration::from_secs(60),
            log_requests: false,
        }
    }
}

/// The model side, available once loading finished.
pub struct Loaded {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    /// Err: the model has no chat template, or one we cannot compile (the reason).
    pub template: Result<ChatTemplate, String>,
    pub max_model_len: usize,
    /// The checkpoint's `model_type` (`llama`, `qwen3_moe`, ...), for /v1/models.
    pub architecture: String,
    /// How `tool_choice: "auto"` output is parsed: the flag, else what the template teaches.
    pub tool_parser: Option<ParserKind>,
    pub reasoning_parser: Option<ReasoningKind>,
    /// The engine's grammar compiler; Err: why structured outputs are unavailable.
    pub guidance: Result<Arc<Guidance>, String>,
}

pub struct AppState {
    pub config: ServerConfig,
    pub metrics: Metrics,
    /// Stored Responses API responses.
    pub responses: ResponseStore,
    keys: KeyRegistry,
    loaded: OnceLock<Loaded>,
    /// Engine requests admitted by this server and not yet ended.
    inflight: AtomicUsize,
    shutting_down: AtomicBool,
    /// The weights' quantization format once loaded (None inside: dense).
    quantization: OnceLock<Option<String>>,
}

impl AppState {
    pub fn new(config: ServerConfig) -> Arc<Self> {
        assert!(
            !config.served_model_names.is_empty(),
            "at least one served model name"
        );
        let metrics = Metrics::new(&config.served_model_names[0]);
        let mut keys = config.api_keys.clone();
        if let Some(key) = &config.api_key {
            keys.push(ApiKey {
                id: SINGLE_KEY_ID.into(),
                key: key.clone(),
                limits: KeyLimits::default(),
            });
        }
        Arc::new(Self {
            responses: ResponseStore::new(config.responses_ttl, config.responses_store_size),
            keys: KeyRegistry::new(keys, &metrics),
            metrics,
            config,
            loaded: OnceLock::new(),
            inflight: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            quantization: OnceLock::new(),
        })
    }

    /// Records the loaded weights' quantization format (for /v1/models).
    pub fn set_quantization(&self, q: Option<String>) {
        let _ = self.quantization.set(q);
    }

    /// The loaded weights' quantization format; None: dense or not recorded.
    pub fn quantization(&self) -> Option<String> {
        self.quantization.get().cloned().flatten()
    }

    /// Makes the model available; /health turns 200 from here on.
    pub fn set_loaded(
        &self,
        engine: EngineHandle,
        tokenizer: Arc<Tokenizer>,
        max_model_len: usize,
        architecture: String,
    ) {
        let none =
            Err("structured outputs are not available: the engine has no grammar compiler".into());
        self.set_loaded_with_guidance(engine, tokenizer, max_model_len, architecture, none);
    }

    /// As [`AppState::set_loaded`], with the engine's grammar compiler for structured outputs.
    pub fn set_loaded_with_guidance(
        &self,
        engine: EngineHandle,
        tokenizer: Arc<Tokenizer>,
        max_model_len: usize,
        architecture: String,
        guidance: Result<Arc<Guidance>, String>,
    ) {
        let template = match ChatTemplate::from_tokenizer(&tokenizer) {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err("The model has no chat template; use /v1/completions.".to_string()),
            Err(e) => {
                tracing::warn!("chat template unusable: {e}");
                Err(format!("The model's chat template is unusable: {e}"))
            }
        };
        let tool_parser = self.config.tool_call_parser.or_else(|| {
            tokenizer
                .chat_template
                .as_deref()
                .and_then(ParserKind::detect)
        });
        if let Some(p) = tool_parser {
            tracing::info!("tool-call parser: {}", p.name());
        }
        let loaded = Loaded {
            engine,
            tokenizer,
            template,
            max_model_len,
            architecture,
            tool_parser,
            reasoning_parser: self.config.reasoning_parser,
            guidance,
        };
        if self.loaded.set(loaded).is_err() {
            tracing::warn!("model was already loaded; ignoring the second one");
        }
    }

    pub fn loaded(&self) -> Result<&Loaded, ApiError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(ApiError::Unavailable);
        }
        self.loaded.get().ok_or(ApiError::NotReady)
    }

    /// The engine handle, whether or not the server is shutting down.
    pub fn engine(&self) -> Option<&EngineHandle> {
        self.loaded.get().map(|l| &l.engine)
    }

    /// Model loaded, engine loop alive, not shutting down.
    pub fn is_healthy(&self) -> bool {
        !self.shutting_down.load(Ordering::Relaxed)
            && self.loaded.get().is_some_and(|l| l.engine.is_alive())
    }

    /// New requests get 503 from now on; running ones go on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// The configured API keys (empty: no authentication).
    pub fn keys(&self) -> &KeyRegistry {
        &self.keys
    }

    pub fn model_name(&self) -> &str {
        &self.config.served_model_names[0]
    }

    /// A request's `model` must be one of the served names; absent means the served model.
    pub fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
        match requested {
            Some(m) if !m.is_empty() && !self.config.served_model_names.iter().any(|n| n == m) => {
                Err(ApiError::ModelNotFound(m.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// Reserves `n` engine requests against `max_num_seqs + max_queue_len`; each slot is given
    /// back when dropped.
    pub fn reserve(self: &Arc<Self>, n: usize) -> Result<Vec<Slot>, ApiError> {
        let limit = self.config.max_num_seqs + self.config.max_queue_len;
        let before = self.inflight.fetch_add(n, Ordering::SeqCst);
        if before + n > limit {
            self.inflight.fetch_sub(n, Ordering::SeqCst);
            return Err(ApiError::QueueFull(limit));
        }
        Ok((0..n)
            .map(|_| Slot {
                state: self.clone(),
            })
            .collect())
    }

    pub fn num_inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }
}

/// One admitted engine request's place in the server's limit.
pub struct Slot {
    state: Arc<AppState>,
}

impl Slot {
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}
