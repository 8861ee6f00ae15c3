//! Per-request timings of a serving run and the metrics `vllm bench serve` derives from them.
//!
//! Definitions (vLLM's `calculate_metrics`): TTFT is the time from sending a request to its
//! first streamed chunk with a choice; ITL is the gap between consecutive such chunks; E2EL is
//! send to the last such chunk; TPOT is `(E2EL - TTFT) / (output_tokens - 1)` for requests with
//! more than one output token. Output tokens come from the usage chunk. Throughputs divide by
//! the wall time of the whole run.

use serde::{Deserialize, Serialize};

use super::stats::Summary;

/// What the client saw of one request.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Prompt tokens: the server's usage count when it sent one, else the client's count.
    pub prompt_len: usize,
    /// `max_tokens` asked for.
    pub expected_output_len: usize,
    /// Output tokens: the usage count, else the client's re-tokenization of the text.
    pub output_tokens: usize,
    /// Whether `output_tokens` came from the server's usage chunk.
    pub output_tokens_from_usage: bool,
    pub success: bool,
    pub error: Option<String>,
    /// When the request was sent, seconds after the run started.
    pub start_s: f64,
    /// Time waiting for a `--max-concurrency` slot before sending.
    pub queue_s: f64,
    pub ttft_s: f64,
    /// Gaps between consecutive content chunks, seconds.
    pub itl_s: Vec<f64>,
    /// Send to the last content chunk, seconds.
    pub latency_s: f64,
    pub generated_text: String,
}

/// Aggregate metrics of one serving run; latencies in milliseconds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ServeMetrics {
    pub completed: usize,
    pub failed: usize,
    pub duration_s: f64,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub ttft_ms: Summary,
    pub tpot_ms: Summary,
    pub itl_ms: Summary,
    pub e2el_ms: Summary,
    /// Most output tokens that arrived within one whole second of the run.
    pub max_output_tokens_per_s: f64,
    /// Most requests in flight at once (half-open intervals [start, start + E2EL)).
    pub max_concurrent_requests: usize,
}

/// TPOT of one request, or None when it produced at most one token (vLLM leaves those out).
pub fn tpot_s(r: &RequestRecord) -> Option<f64> {
    (r.output_tokens > 1).then(|| (r.latency_s - r.ttft_s) / (r.output_tokens - 1) as f64)
}

/// Metrics of a run whose wall time was `duration_s`; failed requests count only as failed.
pub fn compute(records: &[RequestRecord], duration_s: f64) -> ServeMetrics {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.success).collect();
    let ttfts: Vec<f64> = ok.iter().map(|r| r.ttft_s).collect();
    let tpots: Vec<f64> = ok.iter().filter_map(|r| tpot_s(r)).collect();
    let itls: Vec<f64> = ok.iter().flat_map(|r| r.itl_s.iter().copied()).collect();
    let e2els: Vec<f64> = ok.iter().map(|r| r.latency_s).collect();
    let total_input: usize = ok.iter().map(|r| r.prompt_len).sum();
    let total_output: usize = ok.iter().map(|r| r.output_tokens).sum();
    let per_s = |x: f64| {
        if duration_s > 0.0 {
            x / duration_s
        } else {
            0.0
        }
    };
    ServeMetrics {
        completed: ok.len(),
        failed: records.len() - ok.len(),
        duration_s,
        total_input_tokens: total_input,
        total_output_tokens: total_output,
        request_throughput: per_s(ok.len() as f64),
        output_throughput: per_s(total_output as f64),
        total_token_throughput: per_s((total_input + total_output) as f64),
        ttft_ms: Summary::of(&ttfts).scaled(1e3),
        tpot_ms: Summary::of(&tpots).scaled(1e3),
        itl_ms: Summary::of(&itls).scaled(1e3),
        e2el_ms: Summary::of(&e2els).scaled(1e3),
        max_output_tokens_per_s: peak_chunks_per_second(&ok),
        max_concurrent_requests: peak_concurrency(&ok),
    }
}

/// Content chunks (≈ tokens) per one-second bucket from the first send, maximum over buckets.
fn peak_chunks_per_second(ok: &[&RequestRecord]) -> f64 {
    let Some(t0) = ok.iter().map(|r| r.start_s).min_by(f64::total_cmp) else {
        return 0.0;
    };
    let mut buckets: Vec<u32> = Vec::new();
    for r in ok {
        let mut t = r.start_s + r.ttft_s;
        for gap in std::iter::once(0.0).chain(r.itl_s.iter().copied()) {
            t += gap;
            let b = (t - t0).max(0.0) as usize;
            if buckets.len() <= b {
                buckets.resize(b + 1, 0);
            }
            buckets[b] += 1;
        }
    }
    buckets.into_iter().max().unwrap_or(0) as f64
}

fn peak_concurrency(ok: &[&RequestRecord]) -> usize {
    let mut events: Vec<(f64, i32)> = ok
        .iter()
        .flat_map(|r| [(r.start_s, 1), (r.start_s + r.latency_s, -1)])
        .collect();
    // An end and a start at the same instant do not overlap: ends sort first.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        peak = peak.max(now);
    }
    peak as usize
}
