//! `flare serve --config FILE`: several models (and cascade routes) in one process.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use flare::engine::EngineArgs;
use flare::router::config::ModelEntry;
use flare::router::{serve as multi, MultiConfig};
use flare::server::{self, ServerConfig};
use flare::tools::reasoning::ReasoningKind;
use flare::tools::ParserKind;

use super::common::ModelArgs;
use super::serve::{check_keys, ServeArgs};

/// One model's engine flags: the command line's, overridden by its entry.
pub fn model_args(base: &ModelArgs, m: &ModelEntry) -> ModelArgs {
    let mut a = base.clone();
    a.model = Some(m.model.clone());
    let set = |dst: &mut String, v: &Option<String>| {
        if let Some(v) = v {
            dst.clone_from(v);
        }
    };
    set(&mut a.load_format, &m.load_format);
    set(&mut a.dtype, &m.dtype);
    set(&mut a.scheduling_policy, &m.scheduling_policy);
    if m.revision.is_some() {
        a.revision.clone_from(&m.revision);
    }
    if m.device.is_some() {
        a.device.clone_from(&m.device);
    }
    if m.kv_cache_memory.is_some() {
        a.kv_cache_memory = m.kv_cache_memory;
    }
    if let Some(share) = m.gpu_memory_share {
        a.gpu_memory_utilization = base.gpu_memory_utilization * share;
    }
    if m.max_model_len.is_some() {
        a.max_model_len = m.max_model_len;
    }
    a.max_num_seqs = m.max_num_seqs.unwrap_or(a.max_num_seqs);
    a.max_num_batched_tokens = m.max_num_batched_tokens.unwrap_or(a.max_num_batched_tokens);
    a.block_size = m.block_size.unwrap_or(a.block_size);
    if let Some(p) = m.prefix_caching {
        a.no_prefix_caching = !p;
    }
    a
}

fn parsers(
    tool: Option<&str>,
    reasoning: Option<&str>,
) -> Result<(Option<ParserKind>, Option<ReasoningKind>)> {
    let tool = tool
        .map(|n| {
            ParserKind::from_name(n)
                .with_context(|| format!("unknown tool_call_parser `{n}` ({})", ParserKind::NAMES))
        })
        .transpose()?;
    let reasoning = reasoning
        .map(|n| {
            ReasoningKind::from_name(n).with_context(|| {
                format!("unknown reasoning_parser `{n}` ({})", ReasoningKind::NAMES)
            })
        })
        .transpose()?;
    Ok((tool, reasoning))
}

pub fn run(args: ServeArgs, path: &Path) -> Result<()> {
    anyhow::ensure!(
        args.grpc_port.is_none(),
        "--grpc-port is not served with --config yet (gRPC serves one model)"
    );
    let cfg = MultiConfig::load(path)?;
    let api_key = args.api_key.clone().filter(|k| !k.is_empty());
    let api_keys = match &args.api_keys {
        Some(p) => server::keys::load(p)?,
        None => Vec::new(),
    };
    let policy = args.model.scheduling_policy()?;
    check_keys(&api_keys, api_key.as_deref(), policy)?;
    let base = ServerConfig {
        served_model_names: vec![multi::ALL_MODELS.into()],
        model_root: String::new(),
        api_key,
        api_keys,
        scheduling_policy: policy,
        max_num_seqs: args.model.max_num_seqs,
        max_queue_len: args.max_queue_len,
        max_request_bytes: args.max_request_bytes,
        tool_call_parser: None,
        reasoning_parser: None,
        responses_ttl: Duration::from_secs(args.responses_ttl),
        responses_store_size: args.responses_store_size,
        header_read_timeout: Duration::from_secs(args.header_read_timeout.max(1)),
        body_read_timeout: Duration::from_secs(args.body_read_timeout.max(1)),
        write_stall_timeout: Duration::from_secs(args.write_stall_timeout.max(1)),
        log_requests: args.log_requests,
    };
    // A bad entry (unknown dtype, device, parser) fails that model alone, as a bad path does.
    let mut configs = Vec::new();
    let mut engine_args: Vec<Result<EngineArgs, String>> = Vec::new();
    for m in &cfg.models {
        let margs = model_args(&args.model, m);
        let checked = (|| -> Result<(EngineArgs, ServerConfig)> {
            let (tool, reasoning) = parsers(
                m.tool_call_parser
                    .as_deref()
                    .or(args.tool_call_parser.as_deref()),
                m.reasoning_parser
                    .as_deref()
                    .or(args.reasoning_parser.as_deref()),
            )?;
            let policy = margs.scheduling_policy()?;
            let sc = ServerConfig {
                served_model_names: m.names(),
                model_root: m.model.clone(),
                scheduling_policy: policy,
                max_num_seqs: margs.max_num_seqs,
                tool_call_parser: tool,
                reasoning_parser: reasoning,
                ..base.clone()
            };
            Ok((margs.engine_args()?, sc))
        })();
        match checked {
            Ok((ea, sc)) => {
                configs.push(sc);
                engine_args.push(Ok(ea));
            }
            Err(e) => {
                configs.push(ServerConfig {
                    served_model_names: m.names(),
                    model_root: m.model.clone(),
                    ..base.clone()
                });
                engine_args.push(Err(format!("model `{}`: {e:#}", m.name)));
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        let front = multi::build(&cfg, &base, configs)?;
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        tracing::info!(
            "listening on http://{} ({} models, {} routes; /health is 503 until they are loaded)",
            listener.local_addr()?,
            front.models.len(),
            front.routes.len()
        );
        let loader = {
            let front = front.clone();
            tokio::spawn(async move { multi::load_all(&front, engine_args).await })
        };
        let drained = multi::serve(
            listener,
            front.clone(),
            server::shutdown_signal(),
            Duration::from_secs(args.shutdown_timeout),
        )
        .await?;
        loader.abort();
        if drained {
            for m in &front.models {
                if let Some(engine) = m.state.engine().cloned() {
                    tokio::task::spawn_blocking(move || engine.shutdown()).await?;
                }
            }
        }
        tracing::info!("stopped");
        anyhow::Ok(())
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}
