//! The human-readable summaries `flare bench` prints (vLLM's table layout for serve).

use flare::bench::metrics::ServeMetrics;
use flare::bench::offline::{LatencyMetrics, ThroughputMetrics};
use flare::bench::stats::Summary;

fn row(name: &str, value: impl std::fmt::Display) {
    println!("{name:<40} {value:<10}");
}

fn section(title: &str, fill: char) {
    let title = format!(" {title} ");
    let pad = 50usize.saturating_sub(title.chars().count());
    let left = fill.to_string().repeat(pad / 2);
    let right = fill.to_string().repeat(pad - pad / 2);
    println!("{left}{title}{right}");
}

fn summary_rows(label: &str, s: &Summary) {
    row(&format!("Mean {label} (ms):"), format!("{:.2}", s.mean));
    row(&format!("Median {label} (ms):"), format!("{:.2}", s.median));
    row(&format!("P90 {label} (ms):"), format!("{:.2}", s.p90));
    row(&format!("P99 {label} (ms):"), format!("{:.2}", s.p99));
}

pub fn serve(m: &ServeMetrics, max_concurrency: Option<usize>, request_rate: f64) {
    section("Serving Benchmark Result", '=');
    row("Successful requests:", m.completed);
    row("Failed requests:", m.failed);
    if let Some(c) = max_concurrency {
        row("Maximum request concurrency:", c);
    }
    if request_rate.is_finite() {
        row(
            "Request rate configured (RPS):",
            format!("{request_rate:.2}"),
        );
    }
    row("Benchmark duration (s):", format!("{:.2}", m.duration_s));
    row("Total input tokens:", m.total_input_tokens);
    row("Total generated tokens:", m.total_output_tokens);
    row(
        "Request throughput (req/s):",
        format!("{:.2}", m.request_throughput),
    );
    row(
        "Output token throughput (tok/s):",
        format!("{:.2}", m.output_throughput),
    );
    row(
        "Peak output token throughput (tok/s):",
        format!("{:.2}", m.max_output_tokens_per_s),
    );
    row("Peak concurrent requests:", m.max_concurrent_requests);
    row(
        "Total token throughput (tok/s):",
        format!("{:.2}", m.total_token_throughput),
    );
    section("Time to First Token", '-');
    summary_rows("TTFT", &m.ttft_ms);
    section("Time per Output Token (excl. 1st token)", '-');
    summary_rows("TPOT", &m.tpot_ms);
    section("Inter-token Latency", '-');
    summary_rows("ITL", &m.itl_ms);
    section("End-to-end Latency", '-');
    summary_rows("E2EL", &m.e2el_ms);
    println!("{}", "=".repeat(50));
}

pub fn throughput(m: &ThroughputMetrics, max_num_seqs: usize) {
    println!(
        "Throughput: {:.2} requests/s, {:.2} total tokens/s, {:.2} output tokens/s \
         ({} requests, {} input + {} output tokens in {:.2} s, {} steps, max_num_seqs {max_num_seqs})",
        m.requests_per_s,
        m.total_tokens_per_s,
        m.output_tokens_per_s,
        m.num_requests,
        m.total_input_tokens,
        m.total_output_tokens,
        m.elapsed_s,
        m.num_steps,
    );
}

pub fn latency(m: &LatencyMetrics) {
    section(
        &format!(
            "Latency: batch {}, input {}, output {}",
            m.batch_size, m.input_len, m.output_len
        ),
        '=',
    );
    row("Iterations:", m.iterations);
    summary_rows("prefill", &m.prefill_ms);
    summary_rows("decode step", &m.decode_step_ms);
    summary_rows("end-to-end", &m.e2e_ms);
    row(
        "Prefill (tok/s, median):",
        format!("{:.1}", m.prefill_tokens_per_s),
    );
    row(
        "Decode (tok/s, median step):",
        format!("{:.1}", m.decode_tokens_per_s),
    );
    println!("{}", "=".repeat(50));
}

/// Speculative decoding over a run: acceptance rate and mean accepted length.
pub fn speculation(s: &flare::spec::SpecStats) {
    section("Speculative Decoding", '-');
    row("Drafts (verifications):", s.num_drafts);
    row("Draft tokens:", s.num_draft_tokens);
    row("Accepted draft tokens:", s.num_accepted_tokens);
    row("Acceptance rate:", format!("{:.3}", s.acceptance_rate()));
    row(
        "Mean accepted length:",
        format!("{:.3}", s.mean_accepted_length()),
    );
    row(
        "Accepted per position:",
        format!("{:?}", s.accepted_per_position),
    );
}
