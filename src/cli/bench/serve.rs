//! `flare bench serve`: the serving benchmark client, flags and output after `vllm bench serve`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use flare::bench::client::{first_model, Client, ClientConfig, Endpoint, LoadConfig};
use flare::bench::dataset::{file_requests, random_requests, FileSpec, RandomSpec, TextTokenizer};
use flare::bench::metrics::compute;
use flare::bench::result::{BenchKind, BenchResult, Run, ServeRun};
use serde_json::{json, Map, Value};

use super::common::{self, OutputArgs};
use super::report;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// /v1/completions (vLLM's `openai`).
    #[value(alias = "completions")]
    Openai,
    /// /v1/chat/completions (vLLM's `openai-chat`).
    #[value(alias = "chat")]
    OpenaiChat,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Server root, e.g. http://127.0.0.1:8000.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub base_url: String,
    #[arg(long, value_enum, default_value_t = Backend::Openai)]
    pub backend: Backend,
    /// The `model` of each request; default: the first model the server lists.
    #[arg(long)]
    pub model: Option<String>,
    /// tokenizer.json, HF directory, .gguf or hub id for prompt lengths; default: the local
    /// path or cached repo named by --model, else flare's default model.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// ShareGPT-style JSON/JSONL prompts instead of random ones.
    #[arg(long, value_name = "FILE")]
    pub dataset_path: Option<PathBuf>,
    /// Fixed max_tokens for file prompts (default: the reference reply's length).
    #[arg(long)]
    pub sharegpt_output_len: Option<usize>,
    #[arg(long, default_value_t = 1024)]
    pub random_input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub random_output_len: usize,
    #[arg(long, default_value_t = 0.0)]
    pub random_range_ratio: f64,
    #[arg(long, default_value_t = 1000)]
    pub num_prompts: usize,
    /// Requests per second (Poisson arrivals), or inf to send all at once.
    #[arg(long, default_value_t = f64::INFINITY)]
    pub request_rate: f64,
    /// Gamma shape of inter-arrival gaps: 1 is Poisson, below 1 burstier, above more regular.
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Most requests in flight at once (default: unlimited).
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Ask the server to ignore EOS so every request makes its full output length.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Sampling temperature to send (default: the server's).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// JSON object merged into every request body.
    #[arg(long)]
    pub extra_body: Option<String>,
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Untimed requests (the first prompt) before the run.
    #[arg(long, default_value_t = 0)]
    pub num_warmups: usize,
    /// Retry the first test request this long while the server comes up (0: one try).
    #[arg(long, default_value_t = 0)]
    pub ready_check_timeout_sec: u64,
    #[command(flatten)]
    pub out: OutputArgs,
}

pub fn run(args: ServeArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_async(args))
}

/// `--tokenizer`, else the served model's name if it names a local path or cached repo, else
/// flare's default model's (right for a `flare serve` of the default model).
fn tokenizer(args: &ServeArgs, model: &str) -> Result<Arc<dyn TextTokenizer>> {
    if let Some(spec) = args.tokenizer.as_deref() {
        return Ok(Arc::new(common::load_tokenizer(Some(spec))?));
    }
    match common::load_tokenizer(Some(model)) {
        Ok(t) => Ok(Arc::new(t)),
        Err(e) => {
            tracing::warn!("{e:#}; counting prompt tokens with the default model's tokenizer");
            Ok(Arc::new(common::load_tokenizer(None)?))
        }
    }
}

async fn ready_check(
    client: &Client,
    req: &flare::bench::dataset::SampleRequest,
    timeout: u64,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        match client.check(req).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

async fn run_async(args: ServeArgs) -> Result<()> {
    let model = match &args.model {
        Some(m) => m.clone(),
        None => first_model(&args.base_url, args.api_key.as_deref())
            .await
            .context("--model not given and the server's model list is unavailable")?,
    };
    let tok = tokenizer(&args, &model)?;
    let requests = match &args.dataset_path {
        Some(path) => file_requests(
            &*tok,
            path,
            &FileSpec {
                num_prompts: args.num_prompts,
                output_len: args.sharegpt_output_len,
                seed: args.seed,
            },
        )?,
        None => random_requests(
            &*tok,
            &RandomSpec {
                num_prompts: args.num_prompts,
                input_len: args.random_input_len,
                output_len: args.random_output_len,
                range_ratio: args.random_range_ratio,
                seed: args.seed,
            },
        )?,
    };
    if requests.is_empty() {
        bail!("no requests to send (--num-prompts 0?)");
    }
    let extra_body: Map<String, Value> = match &args.extra_body {
        Some(s) => serde_json::from_str(s).context("--extra-body must be a JSON object")?,
        None => Map::new(),
    };
    let client = Arc::new(Client::new(
        ClientConfig {
            base_url: args.base_url.clone(),
            endpoint: match args.backend {
                Backend::Openai => Endpoint::Completions,
                Backend::OpenaiChat => Endpoint::ChatCompletions,
            },
            model: model.clone(),
            ignore_eos: args.ignore_eos,
            temperature: args.temperature,
            api_key: args.api_key.clone(),
            extra_body,
        },
        Some(tok.clone()),
    )?);
    eprintln!(
        "Starting initial single prompt test run against {} ...",
        client.url()
    );
    ready_check(&client, &requests[0], args.ready_check_timeout_sec).await?;
    for _ in 0..args.num_warmups {
        client.send(&requests[0], Instant::now()).await;
    }
    let points: Vec<Option<usize>> = if args.out.sweep_concurrency.is_empty() {
        vec![args.max_concurrency]
    } else {
        args.out
            .sweep_concurrency
            .iter()
            .copied()
            .map(Some)
            .collect()
    };
    let mut runs = Vec::new();
    for max_concurrency in points {
        eprintln!(
            "Traffic request rate: {}, burstiness {}, max concurrency {}",
            args.request_rate,
            args.burstiness,
            max_concurrency.map_or("unlimited".into(), |c| c.to_string())
        );
        let pb = common::progress(requests.len(), args.out.no_progress, "requests");
        let load = LoadConfig {
            request_rate: args.request_rate,
            burstiness: args.burstiness,
            max_concurrency,
            seed: args.seed,
        };
        let outcome = client.run(&requests, &load, &pb).await?;
        pb.finish_and_clear();
        let metrics = compute(&outcome.records, outcome.duration_s);
        for (i, r) in outcome
            .records
            .iter()
            .filter(|r| !r.success)
            .take(10)
            .enumerate()
        {
            eprintln!("error {i}: {}", r.error.as_deref().unwrap_or("?"));
        }
        report::serve(&metrics, max_concurrency, args.request_rate);
        if metrics.completed == 0 {
            bail!("every request failed; check --base-url, --model and --backend");
        }
        runs.push(ServeRun {
            max_concurrency,
            request_rate: args.request_rate.is_finite().then_some(args.request_rate),
            metrics,
            requests: outcome.records,
        });
    }
    let config = json!({
        "base_url": args.base_url,
        "backend": format!("{:?}", args.backend).to_lowercase(),
        "model": model,
        "tokenizer": args.tokenizer,
        "dataset": args.dataset_path.as_ref().map_or("random".into(), |p| p.display().to_string()),
        "random_input_len": args.random_input_len,
        "random_output_len": args.random_output_len,
        "random_range_ratio": args.random_range_ratio,
        "sharegpt_output_len": args.sharegpt_output_len,
        "num_prompts": args.num_prompts,
        "request_rate": args.request_rate.is_finite().then_some(args.request_rate),
        "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency,
        "sweep_concurrency": args.out.sweep_concurrency,
        "ignore_eos": args.ignore_eos,
        "temperature": args.temperature,
        "seed": args.seed,
        "num_warmups": args.num_warmups,
    });
    let result = BenchResult::new(
        BenchKind::Serve,
        config,
        runs.into_iter().map(Run::Serve).collect(),
    );
    common::finish(&result, &args.out)
}
