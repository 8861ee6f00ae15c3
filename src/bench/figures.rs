//! Which figure a result gets: a sweep (several runs) is drawn as metrics against the swept
//! value, a single run as the distributions of its raw numbers. Works on saved results too
//! (`flare bench plot`).

use std::path::Path;

use super::error::{BenchError, Result};
use super::metrics::tpot_s;
use super::plot::{plot_distributions, plot_sweep, Distribution, SweepPanel};
use super::result::{BenchResult, LatencyRun, Run, ServeRun, ThroughputRun};

pub fn plot_result(result: &BenchResult, path: &Path) -> Result<()> {
    let runs = &result.runs;
    if let Some(serve) = all(runs, |r| match r {
        Run::Serve(s) => Some(s),
        _ => None,
    }) {
        return if serve.len() > 1 {
            serve_sweep(&serve, path)
        } else {
            serve_distributions(serve[0], path)
        };
    }
    if let Some(tp) = all(runs, |r| match r {
        Run::Throughput(t) => Some(t),
        _ => None,
    }) {
        return if tp.len() > 1 {
            throughput_sweep(&tp, path)
        } else {
            throughput_distributions(tp[0], path)
        };
    }
    if let Some(lat) = all(runs, |r| match r {
        Run::Latency(l) => Some(l),
        _ => None,
    }) {
        return if lat.len() > 1 {
            latency_sweep(&lat, path)
        } else {
            latency_distributions(lat[0], path)
        };
    }
    Err(BenchError::Plot(
        "the result holds no runs, or runs of different kinds".into(),
    ))
}

/// Every run as one kind, or None if any is another kind (or there are none).
fn all<'a, T>(runs: &'a [Run], pick: impl Fn(&'a Run) -> Option<&'a T>) -> Option<Vec<&'a T>> {
    let picked: Option<Vec<&T>> = runs.iter().map(pick).collect();
    picked.filter(|p| !p.is_empty())
}

fn line<T>(runs: &[&T], x: impl Fn(&T) -> f64, y: impl Fn(&T) -> f64) -> Vec<(f64, f64)> {
    runs.iter().map(|r| (x(r), y(r))).collect()
}

fn panel(title: &str, y_desc: &str, lines: Vec<(&str, Vec<(f64, f64)>)>) -> SweepPanel {
    SweepPanel {
        title: title.into(),
        y_desc: y_desc.into(),
        lines: lines
            .into_iter()
            .map(|(n, pts)| (n.to_string(), pts))
            .collect(),
    }
}

fn ms(name: &str, seconds: impl Iterator<Item = f64>) -> Distribution {
    Distribution {
        name: name.into(),
        unit: "ms".into(),
        values: seconds.map(|s| s * 1e3).collect(),
    }
}

fn serve_sweep(runs: &[&ServeRun], path: &Path) -> Result<()> {
    // Unlimited concurrency has no x; it is left out of a sweep plot.
    let runs: Vec<&ServeRun> = runs
        .iter()
        .copied()
        .filter(|r| r.max_concurrency.is_some())
        .collect();
    let x = |r: &ServeRun| r.max_concurrency.unwrap_or(0) as f64;
    let pair = |title: &str, f: fn(&ServeRun) -> (f64, f64)| {
        panel(
            title,
            "ms",
            vec![
                ("median", line(&runs, x, |r| f(r).0)),
                ("p99", line(&runs, x, |r| f(r).1)),
            ],
        )
    };
    plot_sweep(
        path,
        "flare bench serve: throughput and latency vs max concurrency",
        "max concurrency",
        &[
            panel(
                "token throughput",
                "tokens/s",
                vec![
                    ("output", line(&runs, x, |r| r.metrics.output_throughput)),
                    (
                        "total",
                        line(&runs, x, |r| r.metrics.total_token_throughput),
                    ),
                ],
            ),
            pair("TTFT", |r| {
                (r.metrics.ttft_ms.median, r.metrics.ttft_ms.p99)
            }),
            pair("TPOT", |r| {
                (r.metrics.tpot_ms.median, r.metrics.tpot_ms.p99)
            }),
            pair("ITL", |r| (r.metrics.itl_ms.median, r.metrics.itl_ms.p99)),
        ],
    )
}

fn serve_distributions(run: &ServeRun, path: &Path) -> Result<()> {
    let ok: Vec<_> = run.requests.iter().filter(|r| r.success).collect();
    let title = format!(
        "flare bench serve: {} requests, max concurrency {}",
        ok.len(),
        run.max_concurrency
            .map_or("unlimited".into(), |c| c.to_string())
    );
    plot_distributions(
        path,
        &title,
        &[
            ms("TTFT", ok.iter().map(|r| r.ttft_s)),
            ms("TPOT", ok.iter().filter_map(|r| tpot_s(r))),
            ms("ITL", ok.iter().flat_map(|r| r.itl_s.iter().copied())),
            ms("E2EL", ok.iter().map(|r| r.latency_s)),
        ],
    )
}

fn throughput_sweep(runs: &[&ThroughputRun], path: &Path) -> Result<()> {
    let x = |r: &ThroughputRun| r.max_num_seqs as f64;
    plot_sweep(
        path,
        "flare bench throughput: offline throughput vs max_num_seqs",
        "max_num_seqs",
        &[
            panel(
                "tokens/s",
                "tokens/s",
                vec![
                    ("output", line(runs, x, |r| r.metrics.output_tokens_per_s)),
                    ("total", line(runs, x, |r| r.metrics.total_tokens_per_s)),
                ],
            ),
            panel(
                "requests/s",
                "requests/s",
                vec![("requests", line(runs, x, |r| r.metrics.requests_per_s))],
            ),
        ],
    )
}

fn throughput_distributions(run: &ThroughputRun, path: &Path) -> Result<()> {
    let seconds = |name: &str, v: Vec<f64>| Distribution {
        name: name.into(),
        unit: "s".into(),
        values: v,
    };
    plot_distributions(
        path,
        &format!(
            "flare bench throughput: {} requests, {:.1} output tokens/s",
            run.metrics.num_requests, run.metrics.output_tokens_per_s
        ),
        &[
            seconds(
                "time to first token",
                run.requests.iter().map(|r| r.first_token_s).collect(),
            ),
            seconds(
                "finish time",
                run.requests.iter().map(|r| r.finish_s).collect(),
            ),
        ],
    )
}

fn latency_sweep(runs: &[&LatencyRun], path: &Path) -> Result<()> {
    let x = |r: &LatencyRun| r.metrics.batch_size as f64;
    plot_sweep(
        path,
        "flare bench latency vs batch size",
        "batch size",
        &[
            panel(
                "decode tokens/s (batch / median step)",
                "tokens/s",
                vec![("decode", line(runs, x, |r| r.metrics.decode_tokens_per_s))],
            ),
            panel(
                "decode step latency",
                "ms",
                vec![
                    ("median", line(runs, x, |r| r.metrics.decode_step_ms.median)),
                    ("p99", line(runs, x, |r| r.metrics.decode_step_ms.p99)),
                ],
            ),
            panel(
                "prefill latency",
                "ms",
                vec![
                    ("median", line(runs, x, |r| r.metrics.prefill_ms.median)),
                    ("p99", line(runs, x, |r| r.metrics.prefill_ms.p99)),
                ],
            ),
        ],
    )
}

fn latency_distributions(run: &LatencyRun, path: &Path) -> Result<()> {
    let m = &run.metrics;
    plot_distributions(
        path,
        &format!(
            "flare bench latency: batch {}, input {}, output {}",
            m.batch_size, m.input_len, m.output_len
        ),
        &[
            ms("prefill", run.iterations.iter().map(|i| i.prefill_s)),
            ms(
                "decode step",
                run.iterations
                    .iter()
                    .flat_map(|i| i.decode_steps_s.iter().copied()),
            ),
        ],
    )
}
