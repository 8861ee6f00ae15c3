//! Flags and helpers shared by the bench subcommands: output files, sweeps,
//! load format, tokenizer loading, the progress bar.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use flare::bench::result::BenchResult;
use flare::engine::{build_engine, LoadedEngine};
use flare::models::source::{self, ModelFiles};
use flare::tokenizer::Tokenizer;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::cli::common::ModelArgs;

#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Write config, environment, metrics and raw per-request numbers to this JSON file.
    #[arg(long, value_name = "FILE.json")]
    pub save_result: Option<PathBuf>,
    /// Draw an SVG: latency distributions, or metrics against the swept concurrency.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Run once per value, e.g. 1,2,4,8 (serve: --max-concurrency; throughput: --max-num-seqs;
    /// latency: --batch-size).
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    pub sweep_concurrency: Vec<usize>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Loads the engine the flags describe (`preset:NAME` or `--load-format dummy` give random
/// weights), `max_num_seqs` overridden for a sweep point.
pub fn load_engine(model: &ModelArgs, max_num_seqs: Option<usize>) -> Result<LoadedEngine> {
    let mut model = model.clone();
    if let Some(n) = max_num_seqs {
        model.max_num_seqs = n;
    }
    build_engine(&model.engine_args()?)
}

/// The engine flags as JSON, for the result's `config`.
pub fn model_config(model: &ModelArgs, engine: &LoadedEngine) -> Value {
    json!({
        "model": model.model,
        "model_path": engine.model_files.path(),
        "load_format": model.load_format,
        "dtype": model.dtype,
        "device": model.device,
        "kv_cache_memory": model.kv_cache_memory,
        "max_model_len": engine.max_model_len,
        "num_kv_blocks": engine.num_blocks,
        "max_num_seqs": model.max_num_seqs,
        "max_num_batched_tokens": model.max_num_batched_tokens,
        "block_size": model.block_size,
        "prefix_caching": !model.no_prefix_caching,
    })
}

/// A progress bar on stderr (hidden when asked or when stderr is not a terminal).
pub fn progress(len: usize, hidden: bool, what: &str) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} (eta {eta})",
        )
        .expect("valid template"),
    );
    pb.set_message(what.to_string());
    pb
}

/// A tokenizer from a `tokenizer.json`, an HF directory, a `.gguf`, or a hub repo id (only its
/// tokenizer.json is fetched, never weights); None: the default model's.
pub fn load_tokenizer(spec: Option<&str>) -> Result<Tokenizer> {
    let Some(spec) = spec else {
        return tokenizer_of(&source::resolve(None, None)?);
    };
    let path = Path::new(spec);
    if path.is_file() && path.extension().is_some_and(|e| e == "json") {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        return Ok(Tokenizer::new(inner));
    }
    if path.exists() {
        return tokenizer_of(&source::resolve(Some(spec), None)?);
    }
    let repo = hf_hub::Cache::from_env().repo(hf_hub::Repo::model(spec.to_string()));
    if let Some(file) = repo.get("tokenizer.json") {
        let dir = file.parent().context("cache path")?;
        return Ok(Tokenizer::from_hf_dir(dir)?);
    }
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true") {
        bail!("no tokenizer for `{spec}`: not a local path and not in the HF cache (HF_HUB_OFFLINE is set); pass --tokenizer");
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env().build()?;
    let file = api
        .model(spec.to_string())
        .get("tokenizer.json")
        .with_context(|| format!("fetching the tokenizer of {spec}"))?;
    Ok(Tokenizer::from_hf_dir(
        file.parent().context("cache path")?,
    )?)
}

fn tokenizer_of(files: &ModelFiles) -> Result<Tokenizer> {
    Ok(match files {
        ModelFiles::HfDir(dir) => Tokenizer::from_hf_dir(dir)?,
        ModelFiles::Dummy(spec) => {
            flare::models::dummy::tokenizer(&flare::models::dummy::resolve(spec)?)?
        }
        ModelFiles::Gguf(path) => {
            let mut f =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let content = candle_core::quantized::gguf_file::Content::read(&mut f)
                .with_context(|| format!("reading {}", path.display()))?;
            Tokenizer::from_gguf(&content)?
        }
    })
}

/// Draws and writes what the flags ask for.
pub fn finish(result: &BenchResult, out: &OutputArgs) -> Result<()> {
    if let Some(path) = &out.plot {
        flare::bench::figures::plot_result(result, path)?;
        eprintln!("plotted {}", path.display());
    }
    if let Some(path) = &out.save_result {
        result.save(path)?;
        eprintln!("saved {}", path.display());
    }
    Ok(())
}
