//! In-process runs on an [`EngineCore`]: offline throughput (every prompt queued at once, as
//! `vllm bench throughput`) and batch latency (prefill time and per-step decode latency, as
//! `vllm bench latency`, split by phase).

use std::collections::HashMap;
use std::time::Instant;

use indicatif::ProgressBar;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::dataset::SampleRequest;
use super::error::{BenchError, Result};
use super::stats::Summary;
use crate::engine::EngineCore;
use crate::request::{Constraint, SamplingParams};
use crate::runner::ModelRunner;

/// vLLM's benchmark sampling: temperature 1, no filters, EOS ignored so every request makes
/// exactly the tokens asked for; seeded per request so reruns sample the same tokens.
fn bench_params(max_tokens: usize, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        max_tokens,
        ignore_eos: true,
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

/// How offline throughput requests sample: by default temperature 1 with EOS ignored, so every
/// request generates exactly its output length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchSampling {
    pub temperature: f32,
    pub ignore_eos: bool,
}

impl Default for BenchSampling {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            ignore_eos: true,
        }
    }
}

/// One request of an offline run: its sizes and when (seconds after the start) its first
/// token and its last came out.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OfflineRequest {
    pub prompt_len: usize,
    pub output_len: usize,
    pub first_token_s: f64,
    pub finish_s: f64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ThroughputMetrics {
    pub num_requests: usize,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    pub total_tokens_per_s: f64,
    /// Scheduler steps the run took (how much batching happened).
    pub num_steps: usize,
    /// With a structured-output constraint on every request: grammar masks computed and the
    /// seconds they took (summed over worker threads; they overlap the forward).
    #[serde(default)]
    pub grammar_masks: u64,
    #[serde(default)]
    pub grammar_mask_s: f64,
    /// With speculative decoding: its counters over the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<crate::spec::SpecStats>,
}

/// Queues every request, steps the engine until all finish and times the whole.
pub fn run_throughput<R: ModelRunner>(
    engine: &mut EngineCore<R>,
    requests: &[SampleRequest],
    progress: &ProgressBar,
) -> Result<(ThroughputMetrics, Vec<OfflineRequest>)> {
    run_throughput_with(engine, requests, None, progress)
}

/// As [`run_throughput`], with `constraint` (e.g. a JSON schema) on every request.
pub fn run_throughput_with<R: ModelRunner>(
    engine: &mut EngineCore<R>,
    requests: &[SampleRequest],
    constraint: Option<&Constraint>,
    progress: &ProgressBar,
) -> Result<(ThroughputMetrics, Vec<OfflineRequest>)> {
    run_throughput_sampled(
        engine,
        requests,
        constraint,
        BenchSampling::default(),
        progress,
    )
}

/// As [`run_throughput_with`], sampling as `sampling` says.
pub fn run_throughput_sampled<R: ModelRunner>(
    engine: &mut EngineCore<R>,
    requests: &[SampleRequest],
    constraint: Option<&Constraint>,
    sampling: BenchSampling,
    progress: &ProgressBar,
) -> Result<(ThroughputMetrics, Vec<OfflineRequest>)> {
    // Compiled before the clock starts, as the server compiles before queueing.
    if let (Some(c), Ok(g)) = (constraint, engine.guidance()) {
        g.compile(c)
            .map_err(|e| BenchError::Engine(anyhow::anyhow!("{e}")))?;
    }
    let start = Instant::now();
    let mut index = HashMap::with_capacity(requests.len());
    let mut records = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        let params = SamplingParams {
            constraint: constraint.cloned(),
            temperature: sampling.temperature,
            ignore_eos: sampling.ignore_eos,
            ..bench_params(r.expected_output_len, i as u64)
        };
        let id = engine
            .add_request(r.prompt_ids.clone(), params, 0)
            .map_err(BenchError::Engine)?;
        index.insert(id, i);
        records.push(OfflineRequest {
            prompt_len: r.prompt_len(),
            ..OfflineRequest::default()
        });
    }
    let mut num_steps = 0;
    while engine.has_unfinished() {
        let outputs = engine.step().map_err(BenchError::Engine)?;
        num_steps += 1;
        let now = start.elapsed().as_secs_f64();
        for out in outputs {
            let rec = &mut records[index[&out.id]];
            if rec.output_len == 0 && !out.token_ids.is_empty() {
                rec.first_token_s = now;
            }
            rec.output_len = out.num_output_tokens;
            if out.finish_reason.is_some() {
                rec.finish_s = now;
                progress.inc(1);
            }
        }
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let total_input_tokens = records.iter().map(|r| r.prompt_len).sum();
    let total_output_tokens = records.iter().map(|r| r.output_len).sum();
    let per_s = |x: usize| x as f64 / elapsed_s;
    let metrics = ThroughputMetrics {
        num_requests: records.len(),
        total_input_tokens,
        total_output_tokens,
        elapsed_s,
        requests_per_s: per_s(records.len()),
        output_tokens_per_s: per_s(total_output_tokens),
        total_tokens_per_s: per_s(total_input_tokens + total_output_tokens),
        num_steps,
        grammar_masks: 0,
        grammar_mask_s: 0.0,
        spec: None,
    };
    Ok((metrics, records))
}

/// One timed batch: the prefill phase (until every sequence has its first token) and each
/// later step, in which every sequence gets one more token.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencyIteration {
    pub prefill_s: f64,
    pub decode_steps_s: Vec<f64>,
    pub total_s: f64,
    pub output_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyConfig {
    pub batch_size: usize,
    pub input_len: usize,
    pub output_len: usize,
    pub warmup_iters: usize,
    pub iters: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencyMetrics {
    pub batch_size: usize,
    pub input_len: usize,
    pub output_len: usize,
    pub iterations: usize,
    /// Time to the batch's first tokens, per iteration.
    pub prefill_ms: Summary,
    /// One decode step (one token for each sequence of the batch), over all iterations' steps.
    pub decode_step_ms: Summary,
    /// Whole batch, per iteration (what `vllm bench latency` reports).
    pub e2e_ms: Summary,
    /// batch_size / median decode step.
    pub decode_tokens_per_s: f64,
    /// batch_size * input_len / median prefill.
    pub prefill_tokens_per_s: f64,
}

impl LatencyMetrics {
    pub fn from_iterations(cfg: &LatencyConfig, iters: &[LatencyIteration]) -> Self {
        let prefill: Vec<f64> = iters.iter().map(|i| i.prefill_s).collect();
        let steps: Vec<f64> = iters
            .iter()
            .flat_map(|i| i.decode_steps_s.iter().copied())
            .collect();
        let e2e: Vec<f64> = iters.iter().map(|i| i.total_s).collect();
        let (prefill, steps) = (Summary::of(&prefill), Summary::of(&steps));
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        Self {
            batch_size: cfg.batch_size,
            input_len: cfg.input_len,
            output_len: cfg.output_len,
            iterations: iters.len(),
            prefill_ms: prefill.scaled(1e3),
            decode_step_ms: steps.scaled(1e3),
            e2e_ms: Summary::of(&e2e).scaled(1e3),
            decode_tokens_per_s: rate(cfg.batch_size, steps.median),
            prefill_tokens_per_s: rate(cfg.batch_size * cfg.input_len, prefill.median),
        }
    }
}

/// Runs `batch_size` fresh random prompts of `input_len` tokens to `output_len` tokens each.
///
/// Fresh prompts every iteration: repeating one would hit the prefix cache from the second
/// iteration on and measure a prefill that never happens.
pub fn latency_iteration<R: ModelRunner>(
    engine: &mut EngineCore<R>,
    cfg: &LatencyConfig,
    plain_ids: &[u32],
    rng: &mut StdRng,
) -> Result<LatencyIteration> {
    if plain_ids.is_empty() || cfg.batch_size == 0 || cfg.input_len == 0 || cfg.output_len == 0 {
        return Err(BenchError::Config(
            "latency: batch size, input and output lengths must be at least 1".into(),
        ));
    }
    let start = Instant::now();
    let mut waiting_first = std::collections::HashSet::new();
    for _ in 0..cfg.batch_size {
        let prompt: Vec<u32> = (0..cfg.input_len)
            .map(|_| plain_ids[rng.random_range(0..plain_ids.len())])
            .collect();
        let id = engine
            .add_request(prompt, bench_params(cfg.output_len, rng.random()), 0)
            .map_err(BenchError::Engine)?;
        waiting_first.insert(id);
    }
    let mut it = LatencyIteration::default();
    let mut prefilled = false;
    let mut step_start = start;
    while engine.has_unfinished() {
        let outputs = engine.step().map_err(BenchError::Engine)?;
        let now = Instant::now();
        for out in &outputs {
            it.output_tokens += out.token_ids.len();
            if !out.token_ids.is_empty() {
                waiting_first.remove(&out.id);
            }
        }
        if !prefilled {
            if waiting_first.is_empty() {
                prefilled = true;
                it.prefill_s = (now - start).as_secs_f64();
            }
        } else {
            it.decode_steps_s.push((now - step_start).as_secs_f64());
        }
        step_start = now;
    }
    it.total_s = start.elapsed().as_secs_f64();
    Ok(it)
}

/// Warm-up iterations (discarded), then `iters` timed ones.
pub fn run_latency<R: ModelRunner>(
    engine: &mut EngineCore<R>,
    cfg: &LatencyConfig,
    plain_ids: &[u32],
    progress: &ProgressBar,
) -> Result<(LatencyMetrics, Vec<LatencyIteration>)> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    for _ in 0..cfg.warmup_iters {
        latency_iteration(engine, cfg, plain_ids, &mut rng)?;
        progress.inc(1);
    }
    let mut iters = Vec::with_capacity(cfg.iters);
    for _ in 0..cfg.iters {
        iters.push(latency_iteration(engine, cfg, plain_ids, &mut rng)?);
        progress.inc(1);
    }
    Ok((LatencyMetrics::from_iterations(cfg, &iters), iters))
}
