//! `flare bench latency`: one batch at a time on the in-process engine; prefill time and
//! per-step decode latency after warm-up.

use anyhow::Result;
use clap::Args;
use flare::bench::dataset::TextTokenizer;
use flare::bench::offline::{run_latency, LatencyConfig};
use flare::bench::result::{BenchKind, BenchResult, LatencyRun, Run};
use serde_json::json;

use super::common::{self, OutputArgs};
use super::report;
use crate::cli::common::ModelArgs;

#[derive(Args, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 32)]
    pub input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Untimed iterations first (caches, allocator, CPU frequency settle).
    #[arg(long, default_value_t = 10)]
    pub num_iters_warmup: usize,
    #[arg(long, default_value_t = 30)]
    pub num_iters: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub out: OutputArgs,
}

pub fn run(args: LatencyArgs) -> Result<()> {
    let batch_sizes = if args.out.sweep_concurrency.is_empty() {
        vec![args.batch_size]
    } else {
        args.out.sweep_concurrency.clone()
    };
    let mut loaded = common::load_engine(&args.model, None)?;
    let plain = loaded.tokenizer.plain_token_ids();
    let mut runs = Vec::new();
    for &batch_size in &batch_sizes {
        let cfg = LatencyConfig {
            batch_size,
            input_len: args.input_len,
            output_len: args.output_len,
            warmup_iters: args.num_iters_warmup,
            iters: args.num_iters,
            seed: args.seed,
        };
        let pb = common::progress(
            cfg.warmup_iters + cfg.iters,
            args.out.no_progress,
            &format!("batch {batch_size}"),
        );
        let (metrics, iterations) = run_latency(&mut loaded.engine, &cfg, &plain, &pb)?;
        pb.finish_and_clear();
        report::latency(&metrics);
        runs.push(LatencyRun {
            metrics,
            iterations,
        });
    }
    let config = json!({
        "engine": common::model_config(&args.model, &loaded),
        "input_len": args.input_len,
        "output_len": args.output_len,
        "batch_sizes": batch_sizes,
        "num_iters_warmup": args.num_iters_warmup,
        "num_iters": args.num_iters,
        "seed": args.seed,
        "sampling": "temperature 1.0, ignore_eos, fresh random prompts per iteration",
    });
    let result = BenchResult::new(
        BenchKind::Latency,
        config,
        runs.into_iter().map(Run::Latency).collect(),
    );
    common::finish(&result, &args.out)
}
