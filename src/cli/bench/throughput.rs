//! `flare bench throughput`: every prompt queued at once on the in-process engine.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use flare::bench::dataset::{file_requests, random_requests, FileSpec, RandomSpec};
use flare::bench::result::{BenchKind, BenchResult, Run, ThroughputRun};
use flare::request::Constraint;
use serde_json::json;

use super::common::{self, OutputArgs};
use super::report;
use crate::cli::common::ModelArgs;

#[derive(Args, Debug)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// ShareGPT-style JSON/JSONL prompts instead of random ones.
    #[arg(long, value_name = "FILE")]
    pub dataset_path: Option<PathBuf>,
    /// A built-in dataset instead of random prompts: `grounded` (quote, rewrite or edit text
    /// given in the prompt; the workload of prompt-lookup speculation).
    #[arg(long, conflicts_with = "dataset_path")]
    pub dataset: Option<String>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Let requests end at EOS (default: EOS is ignored, every request yields --output-len).
    #[arg(long)]
    pub no_ignore_eos: bool,
    /// Prompt tokens of each random prompt.
    #[arg(long, default_value_t = 128)]
    pub input_len: usize,
    /// Output tokens per request (EOS ignored); with --dataset-path, overrides the reference
    /// completion's length.
    #[arg(long)]
    pub output_len: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub num_prompts: usize,
    /// Random lengths vary uniformly within len * (1 ± ratio).
    #[arg(long, default_value_t = 0.0)]
    pub range_ratio: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Constrain every request's output by this JSON schema (structured outputs).
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutputArgs,
}

const DEFAULT_OUTPUT_LEN: usize = 128;

pub fn run(args: ThroughputArgs) -> Result<()> {
    let points: Vec<Option<usize>> = if args.out.sweep_concurrency.is_empty() {
        vec![None]
    } else {
        args.out
            .sweep_concurrency
            .iter()
            .copied()
            .map(Some)
            .collect()
    };
    let constraint = match &args.json_schema {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let schema = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            Some(Constraint::JsonSchema(schema))
        }
        None => None,
    };
    let mut runs = Vec::new();
    let mut config = None;
    for point in points {
        let mut loaded = common::load_engine(&args.model, point)?;
        let tok = loaded.tokenizer.clone();
        let requests = match (&args.dataset_path, args.dataset.as_deref()) {
            (_, Some("grounded")) => flare::bench::grounded::grounded_requests(
                &tok,
                args.num_prompts,
                args.output_len.unwrap_or(DEFAULT_OUTPUT_LEN),
            )?,
            (_, Some(other)) => anyhow::bail!("unknown --dataset `{other}` (grounded)"),
            (Some(path), None) => file_requests(
                &*tok,
                path,
                &FileSpec {
                    num_prompts: args.num_prompts,
                    output_len: args.output_len,
                    seed: args.seed,
                },
            )?,
            (None, None) => random_requests(
                &*tok,
                &RandomSpec {
                    num_prompts: args.num_prompts,
                    input_len: args.input_len,
                    output_len: args.output_len.unwrap_or(DEFAULT_OUTPUT_LEN),
                    range_ratio: args.range_ratio,
                    seed: args.seed,
                },
            )?,
        };
        let max_num_seqs = point.unwrap_or(args.model.max_num_seqs);
        let pb = common::progress(
            requests.len(),
            args.out.no_progress,
            &format!("max_num_seqs {max_num_seqs}"),
        );
        let spec_before = loaded.engine.spec_stats().cloned();
        let (mut metrics, records) = flare::bench::offline::run_throughput_sampled(
            &mut loaded.engine,
            &requests,
            constraint.as_ref(),
            flare::bench::offline::BenchSampling {
                temperature: args.temperature,
                ignore_eos: !args.no_ignore_eos,
            },
            &pb,
        )?;
        pb.finish_and_clear();
        if let (Some(after), Some(before)) = (loaded.engine.spec_stats(), &spec_before) {
            let s = after.since(before);
            metrics.spec = Some(s.clone());
            report::speculation(&s);
        }
        let masks = loaded.engine.runner().mask_stats();
        metrics.grammar_masks = masks.masks;
        metrics.grammar_mask_s = masks.seconds;
        if masks.masks > 0 {
            println!(
                "grammar masks: {} in {:.3} s ({:.1} us per masked token, on worker threads beside the forward)",
                masks.masks,
                masks.seconds,
                masks.seconds * 1e6 / masks.masks as f64
            );
        }
        report::throughput(&metrics, max_num_seqs);
        config.get_or_insert_with(|| {
            json!({
                "engine": common::model_config(&args.model, &loaded),
                "dataset": args.dataset.clone().unwrap_or_else(|| args.dataset_path.as_ref().map_or("random".into(), |p| p.display().to_string())),
                "temperature": args.temperature,
                "ignore_eos": !args.no_ignore_eos,
                "speculative_config": args.model.speculative_config,
                "input_len": args.input_len,
                "output_len": args.output_len.unwrap_or(DEFAULT_OUTPUT_LEN),
                "num_prompts": args.num_prompts,
                "range_ratio": args.range_ratio,
                "seed": args.seed,
                "sweep_max_num_seqs": args.out.sweep_concurrency,
                "sampling": "seed = request index",
                "json_schema": args.json_schema.as_ref().map(|p| p.display().to_string()),
            })
        });
        runs.push(ThroughputRun {
            max_num_seqs,
            metrics,
            requests: records,
        });
    }
    let result = BenchResult::new(
        BenchKind::Throughput,
        config.unwrap_or_default(),
        runs.into_iter().map(Run::Throughput).collect(),
    );
    common::finish(&result, &args.out)
}
