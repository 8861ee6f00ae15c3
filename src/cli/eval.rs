//! `flare eval perplexity MODEL --text FILE`: llama-perplexity's chunked perplexity with its
//! standard error and the tokens/s of the forward passes.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use flare::eval::perplexity::{perplexity, PerplexityArgs};
use flare::models::{load_model_quantized, source};

use super::common::ModelArgs;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub what: EvalCommand,
}

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Perplexity of a text file, as llama.cpp's llama-perplexity computes it (chunks of
    /// --ctx-size tokens, the second half of each scored).
    Perplexity(PerplexityCli),
}

#[derive(Args, Debug)]
pub struct PerplexityCli {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text (UTF-8), tokenized whole.
    #[arg(long)]
    pub text: std::path::PathBuf,
    /// Tokens per chunk (llama-perplexity's -c).
    #[arg(long, default_value_t = 512)]
    pub ctx_size: usize,
    /// At most this many chunks (llama-perplexity's --chunks); default all.
    #[arg(long)]
    pub chunks: Option<usize>,
}

pub fn run(args: EvalArgs) -> Result<()> {
    match args.what {
        EvalCommand::Perplexity(p) => run_perplexity(p),
    }
}

fn run_perplexity(args: PerplexityCli) -> Result<()> {
    let engine = args.model.engine_args()?;
    let files = match engine.load_format {
        flare::engine::LoadFormat::Dummy => {
            anyhow::bail!("perplexity of random weights (--load-format dummy) means nothing")
        }
        _ => source::resolve(engine.model.as_deref(), engine.revision.as_deref())?,
    };
    let tokenizer = flare::engine::builder::load_tokenizer(&files)?;
    let t = Instant::now();
    let model = load_model_quantized(
        &files,
        engine.dtype,
        &engine.device,
        engine.quantization.as_deref(),
    )?;
    let load_s = t.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&args.text)
        .with_context(|| format!("reading {}", args.text.display()))?;
    let tokens = tokenizer.encode(&text, false)?;
    let bos = tokenizer
        .add_bos_token
        .then_some(tokenizer.bos_token_id)
        .flatten();
    let quant = model
        .config()
        .quantization
        .as_ref()
        .map_or_else(|| "none".to_string(), |q| q.name());
    eprintln!(
        "{}: {} tokens in {}, chunks of {} (BOS first: {}), quantization {quant}, dtype {:?}, \
         KV cache {}, loaded in {load_s:.1}s",
        files.path().display(),
        tokens.len(),
        args.text.display(),
        args.ctx_size,
        bos.is_some(),
        engine.dtype,
        engine.kv_cache_dtype.name(),
    );
    let p = PerplexityArgs {
        ctx: args.ctx_size,
        max_chunks: args.chunks,
        bos,
        block_size: engine.scheduler.block_size,
        kv_cache_dtype: engine.kv_cache_dtype,
    };
    let t = Instant::now();
    let mut chunks = 0;
    let stats = perplexity(model.as_ref(), &tokens, &p, |i, s| {
        chunks = i + 1;
        eprint!("[{}]{:.4},", i + 1, s.ppl());
    })?;
    let secs = t.elapsed().as_secs_f64();
    let evaluated = chunks * args.ctx_size;
    eprintln!();
    println!(
        "Final estimate: PPL = {:.4} +/- {:.5}  ({} scored of {evaluated} tokens in {chunks} chunks, \
         {:.1} tok/s, {secs:.1}s)",
        stats.ppl(),
        stats.ppl_stderr(),
        stats.count,
        evaluated as f64 / secs
    );
    println!(
        "{}",
        serde_json::json!({
            "model": files.path().display().to_string(),
            "text": args.text.display().to_string(),
            "quantization": quant,
            "dtype": format!("{:?}", engine.dtype),
            "kv_cache_dtype": engine.kv_cache_dtype.name(),
            "ctx_size": args.ctx_size,
            "chunks": chunks,
            "tokens_evaluated": evaluated,
            "tokens_scored": stats.count,
            "ppl": stats.ppl(),
            "ppl_stderr": stats.ppl_stderr(),
            "seconds": secs,
            "tokens_per_second": evaluated as f64 / secs,
            "rayon_threads": rayon::current_num_threads(),
        })
    );
    Ok(())
}
