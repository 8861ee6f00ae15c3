//! `flare serve`: load a model and serve the OpenAI-compatible API (flags as `vllm serve`).

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use flare::engine::EngineArgs;
use flare::models::source::DEFAULT_HUB_ID;
use flare::scheduler::SchedulingPolicy;
use flare::server::keys::{self, ApiKey, SINGLE_KEY_ID};
use flare::server::{self, AppState, ServerConfig};
use flare::tools::reasoning::ReasoningKind;
use flare::tools::ParserKind;

use super::common::ModelArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (0.0.0.0 to accept other hosts).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Name(s) clients use in `model` (repeatable; the first is reported); default: MODEL as
    /// given, or the default model's repo id.
    #[arg(long)]
    pub served_model_name: Vec<String>,
    /// Require `Authorization: Bearer <key>` on /v1/*.
    #[arg(long, env = "FLARE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// TOML file of API keys, each with an id and optional limits (concurrency, requests and
    /// tokens per minute, daily token budget, max_tokens cap, priority); see
    /// `flare::server::keys` (README, "API keys"). May be combined with --api-key (id `default`, no limits).
    #[arg(long)]
    pub api_keys: Option<std::path::PathBuf>,
    /// Requests that may wait beyond --max-num-seqs; more are refused with 429.
    #[arg(long, default_value_t = 4096)]
    pub max_queue_len: usize,
    /// Larger request bodies are refused with 413.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_request_bytes: usize,
    /// How `tool_choice: "auto"` output is parsed into tool calls: hermes, llama3_json,
    /// mistral, deepseek_v3, gpt_oss; default: detected from the chat template.
    #[arg(long)]
    pub tool_call_parser: Option<String>,
    /// Splits reasoning into `reasoning_content`: qwen3, deepseek_r1, gpt_oss.
    #[arg(long)]
    pub reasoning_parser: Option<String>,
    /// Also serve the gRPC API (proto/flare/v1/flare.proto) on this port, same host.
    #[arg(long)]
    pub grpc_port: Option<u16>,
    /// Seconds a stored Responses API response (`store: true`) stays retrievable and usable as
    /// `previous_response_id`.
    #[arg(long, default_value_t = 3600)]
    pub responses_ttl: u64,
    /// Most stored Responses API responses kept in memory (the oldest go first; 0: none).
    #[arg(long, default_value_t = 1024)]
    pub responses_store_size: usize,
    /// Seconds to let in-flight requests finish after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// TOML file of several models (and cascade routes) to serve from one process; the model
    /// flags above are every model's defaults (README, "Several models and cascade routes").
    #[arg(long, conflicts_with_all = ["model", "served_model_name"])]
    pub config: Option<std::path::PathBuf>,
    /// Seconds a client may take to send a request's headers, or sit idle between requests on
    /// a kept-alive connection; then the connection is closed (slowloris).
    #[arg(long, default_value_t = 10)]
    pub header_read_timeout: u64,
    /// Seconds a client may take to send a request body; then it gets 408.
    #[arg(long, default_value_t = 30)]
    pub body_read_timeout: u64,
    /// Seconds a client may go without accepting any response bytes (a stream it stopped
    /// reading); then the connection is closed and its request aborted.
    #[arg(long, default_value_t = 60)]
    pub write_stall_timeout: u64,
    /// Log one line per finished request (target `flare::requests`): id, API key id, model,
    /// finish reason, prompt/cached/completion tokens, latency. Never prompt or output text.
    #[arg(long)]
    pub log_requests: bool,
}

pub fn run(args: ServeArgs) -> Result<()> {
    if let Some(path) = args.config.clone() {
        return super::multi::run(args, &path);
    }
    let engine_args = args.model.engine_args()?;
    let model = args
        .model
        .model
        .clone()
        .unwrap_or_else(|| DEFAULT_HUB_ID.to_string());
    let api_key = args.api_key.clone().filter(|k| !k.is_empty());
    let api_keys = match &args.api_keys {
        Some(path) => flare::server::keys::load(path)?,
        None => Vec::new(),
    };
    let policy = args.model.scheduling_policy()?;
    check_keys(&api_keys, api_key.as_deref(), policy)?;
    let config = ServerConfig {
        served_model_names: if args.served_model_name.is_empty() {
            vec![model.clone()]
        } else {
            args.served_model_name.clone()
        },
        model_root: model,
        api_key,
        api_keys,
        scheduling_policy: policy,
        max_num_seqs: args.model.max_num_seqs,
        max_queue_len: args.max_queue_len,
        max_request_bytes: args.max_request_bytes,
        tool_call_parser: args
            .tool_call_parser
            .as_deref()
            .map(|n| {
                ParserKind::from_name(n).with_context(|| {
                    format!("unknown --tool-call-parser `{n}` ({})", ParserKind::NAMES)
                })
            })
            .transpose()?,
        reasoning_parser: args
            .reasoning_parser
            .as_deref()
            .map(|n| {
                ReasoningKind::from_name(n).with_context(|| {
                    format!(
                        "unknown --reasoning-parser `{n}` ({})",
                        ReasoningKind::NAMES
                    )
                })
            })
            .transpose()?,
        responses_ttl: Duration::from_secs(args.responses_ttl),
        responses_store_size: args.responses_store_size,
        header_read_timeout: Duration::from_secs(args.header_read_timeout.max(1)),
        body_read_timeout: Duration::from_secs(args.body_read_timeout.max(1)),
        write_stall_timeout: Duration::from_secs(args.write_stall_timeout.max(1)),
        log_requests: args.log_requests,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(serve(args, engine_args, config));
    // Connection tasks of clients that outlived the drain must not hold up the exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The key file and --api-key together must still be unambiguous, and a key priority needs the
/// priority policy (it would otherwise be ignored).
pub(crate) fn check_keys(
    keys: &[ApiKey],
    single: Option<&str>,
    policy: SchedulingPolicy,
) -> Result<()> {
    let mut all = keys.to_vec();
    if let Some(k) = single {
        all.push(ApiKey {
            id: SINGLE_KEY_ID.into(),
            key: k.to_string(),
            limits: Default::default(),
        });
    }
    if !all.is_empty() {
        keys::validate(&all).map_err(|e| anyhow::anyhow!("API keys: {e}"))?;
    }
    if policy == SchedulingPolicy::Fcfs {
        if let Some(k) = keys.iter().find(|k| k.limits.priority != 0) {
            anyhow::bail!(
                "API key `{}` sets a priority, which only --scheduling-policy priority honours",
                k.id
            );
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs, engine_args: EngineArgs, config: ServerConfig) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    tracing::info!(
        "listening on http://{} (model `{}`; /health is 503 until it is loaded)",
        listener.local_addr()?,
        config.served_model_names[0]
    );
    let state = AppState::new(config);
    if let Some(port) = args.grpc_port {
        serve_grpc(&args.host, port, state.clone()).await?;
    }
    let mut loader = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || server::load_into(&state, engine_args))
    };
    let mut server = tokio::spawn(server::serve(
        listener,
        state.clone(),
        server::shutdown_signal(),
        Duration::from_secs(args.shutdown_timeout),
    ));
    tokio::select! {
        res = &mut loader => {
            res.context("loader panicked")?.context("loading the model")?;
            tracing::info!("model loaded; serving");
        }
        res = &mut server => {
            // Stopped before the model was loaded.
            res??;
            return Ok(());
        }
    }
    let drained = server.await??;
    if let Some(engine) = state.engine().cloned() {
        if drained {
            let stats = tokio::task::spawn_blocking(move || {
                engine.shutdown();
                engine.stats()
            })
            .await?;
            // What an operator (and the fault runs) check after a drain: nothing left behind.
            tracing::info!(
                "stopped: {} requests running, {} waiting, {} KV blocks in use",
                stats.scheduler.num_running,
                stats.scheduler.num_waiting,
                stats.num_blocks - stats.num_free_blocks
            );
            return Ok(());
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Starts the gRPC server beside the HTTP one; it stops with the process (new calls get
/// `UNAVAILABLE` once shutdown begins, as HTTP requests get 503).
async fn serve_grpc(host: &str, port: u16, state: std::sync::Arc<AppState>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("binding {host}:{port} (--grpc-port)"))?;
    tracing::info!("gRPC (flare.v1) on {}", listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(e) = flare::grpc::serve(listener, state, std::future::pending()).await {
            tracing::error!("gRPC server stopped: {e}");
        }
    });
    Ok(())
}
