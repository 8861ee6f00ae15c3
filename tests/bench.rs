//! Benchmark pieces besides the serve client: dataset sampling (random and ShareGPT files), the
//! saved result's JSON schema, the SVG plots, and in-process throughput/latency runs on the
//! default model.
//!
//! The model tests need `python3 models/fetch_smollm2.py` (scripts/test.sh runs it).

use std::path::PathBuf;

use flare::bench::dataset::{
    file_requests, random_requests, FileSpec, RandomSpec, SampleRequest, TextTokenizer,
};
use flare::bench::error::Result as BenchResult;
use flare::bench::figures::plot_result;
use flare::bench::metrics::{compute, RequestRecord};
use flare::bench::offline::{
    run_latency, run_throughput, LatencyConfig, LatencyIteration, LatencyMetrics, OfflineRequest,
    ThroughputMetrics,
};
use flare::bench::plot::{plot_distributions, plot_sweep, Distribution, SweepPanel};
use flare::bench::result::{
    BenchKind, BenchResult as Saved, LatencyRun, Run, ServeRun, ThroughputRun, SCHEMA_VERSION,
};
use flare::engine::{build_engine, EngineArgs, LoadedEngine};
use flare::models::source;
use flare::scheduler::config::SchedulerConfig;
use indicatif::ProgressBar;
use serde_json::{json, Value};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flare-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// "w12 w5" <-> [12, 5]; other words are id 0. Round trips exactly.
struct WordTokenizer;

impl TextTokenizer for WordTokenizer {
    fn encode(&self, text: &str) -> BenchResult<Vec<u32>> {
        Ok(text
            .split_whitespace()
            .map(|w| {
                w.strip_prefix('w')
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            })
            .collect())
    }
    fn decode(&self, ids: &[u32]) -> BenchResult<String> {
        Ok(ids
            .iter()
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" "))
    }
    fn plain_token_ids(&self) -> Vec<u32> {
        (1..500).collect()
    }
}

fn spec(n: usize, input: usize, output: usize, ratio: f64, seed: u64) -> RandomSpec {
    RandomSpec {
        num_prompts: n,
        input_len: input,
        output_len: output,
        range_ratio: ratio,
        seed,
    }
}

#[test]
fn random_prompts_have_exact_lengths_and_repeat_with_the_seed() {
    let a = random_requests(&WordTokenizer, &spec(20, 37, 11, 0.0, 1)).unwrap();
    assert_eq!(a.len(), 20);
    for r in &a {
        assert_eq!((r.prompt_len(), r.expected_output_len), (37, 11));
        assert_eq!(WordTokenizer.encode(&r.prompt).unwrap(), r.prompt_ids);
    }
    assert_eq!(
        a,
        random_requests(&WordTokenizer, &spec(20, 37, 11, 0.0, 1)).unwrap()
    );
    assert_ne!(
        a,
        random_requests(&WordTokenizer, &spec(20, 37, 11, 0.0, 2)).unwrap()
    );
    // Prompts differ from each other (no accidental prefix-cache hits between requests).
    assert_ne!(a[0].prompt_ids[..4], a[1].prompt_ids[..4]);
}

#[test]
fn random_range_ratio_spreads_lengths_within_bounds() {
    let r = random_requests(&WordTokenizer, &spec(300, 100, 40, 0.5, 0)).unwrap();
    let ins: Vec<usize> = r.iter().map(SampleRequest::prompt_len).collect();
    let outs: Vec<usize> = r.iter().map(|x| x.expected_output_len).collect();
    assert!(ins.iter().all(|&l| (50..=150).contains(&l)));
    assert!(outs.iter().all(|&l| (20..=60).contains(&l)));
    // Uniform: both halves of the range are used, the mean near the middle.
    assert!(ins.iter().any(|&l| l < 70) && ins.iter().any(|&l| l > 130));
    let mean = ins.iter().sum::<usize>() as f64 / ins.len() as f64;
    assert!((mean - 100.0).abs() < 6.0, "mean {mean}");
    assert!(random_requests(&WordTokenizer, &spec(1, 10, 10, 1.0, 0)).is_err());
    assert!(random_requests(&WordTokenizer, &spec(1, 0, 10, 0.0, 0)).is_err());
}

fn words(n: usize) -> String {
    (1..=n)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn sharegpt_file_sampling_filters_like_vllm() {
    let entries = json!([
        {"id": "ok1", "conversations": [
            {"from": "human", "value": words(5)}, {"from": "gpt", "value": words(6)}]},
        {"id": "ok2", "conversations": [
            {"from": "human", "value": words(8)}, {"from": "gpt", "value": words(4)},
            {"from": "human", "value": "more"}]},
        {"id": "one-turn", "conversations": [{"from": "human", "value": words(9)}]},
        {"id": "short-prompt", "conversations": [
            {"from": "human", "value": words(3)}, {"from": "gpt", "value": words(9)}]},
        {"id": "short-reply", "conversations": [
            {"from": "human", "value": words(9)}, {"from": "gpt", "value": words(3)}]},
        {"id": "long-prompt", "conversations": [
            {"from": "human", "value": words(1025)}, {"from": "gpt", "value": words(9)}]},
        {"id": "long-total", "conversations": [
            {"from": "human", "value": words(1000)}, {"from": "gpt", "value": words(1049)}]},
        {"id": "openai-roles", "conversation": [
            {"role": "user", "content": words(6)}, {"role": "assistant", "content": words(7)}]},
    ]);
    let path = scratch("sharegpt.json");
    std::fs::write(&path, entries.to_string()).unwrap();
    let file = |n, out, seed| FileSpec {
        num_prompts: n,
        output_len: out,
        seed,
    };
    let got = file_requests(&WordTokenizer, &path, &file(10, None, 0)).unwrap();
    let mut shapes: Vec<(usize, usize)> = got
        .iter()
        .map(|r| (r.prompt_len(), r.expected_output_len))
        .collect();
    shapes.sort();
    // Output length = the reference reply's token count; the filtered entries are gone.
    assert_eq!(shapes, vec![(5, 6), (6, 7), (8, 4)]);
    assert_eq!(
        got,
        file_requests(&WordTokenizer, &path, &file(10, None, 0)).unwrap()
    );
    // Fewer than available: a seeded sample; a fixed output length overrides the replies and
    // lets short replies through.
    let two = file_requests(&WordTokenizer, &path, &file(2, Some(32), 5)).unwrap();
    assert_eq!(two.len(), 2);
    assert!(two.iter().all(|r| r.expected_output_len == 32));
    let orders: std::collections::HashSet<Vec<usize>> = (0..8)
        .map(|seed| {
            file_requests(&WordTokenizer, &path, &file(10, Some(32), seed))
                .unwrap()
                .iter()
                .map(SampleRequest::prompt_len)
                .collect()
        })
        .collect();
    assert!(orders.len() > 1, "the seed shuffles the file");

    // JSON lines with simple records.
    let jsonl = scratch("prompts.jsonl");
    std::fs::write(
        &jsonl,
        format!(
            "{}\n\n{}\n",
            json!({"prompt": words(5), "output_len": 9}),
            json!({"prompt": words(6), "completion": words(5)})
        ),
    )
    .unwrap();
    let got = file_requests(&WordTokenizer, &jsonl, &file(5, None, 0)).unwrap();
    let mut shapes: Vec<(usize, usize)> = got
        .iter()
        .map(|r| (r.prompt_len(), r.expected_output_len))
        .collect();
    shapes.sort();
    assert_eq!(shapes, vec![(5, 9), (6, 5)]);

    std::fs::write(&jsonl, "{\"prompt\": ").unwrap();
    let err = file_requests(&WordTokenizer, &jsonl, &file(5, None, 0)).unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
}

fn serve_record() -> RequestRecord {
    RequestRecord {
        prompt_len: 12,
        expected_output_len: 3,
        output_tokens: 3,
        output_tokens_from_usage: true,
        success: true,
        start_s: 0.5,
        ttft_s: 0.1,
        itl_s: vec![0.02, 0.03],
        latency_s: 0.15,
        generated_text: "a b c".into(),
        ..RequestRecord::default()
    }
}

#[test]
fn saved_result_json_schema() {
    let records = vec![serve_record()];
    let runs = vec![
        Run::Serve(ServeRun {
            max_concurrency: Some(4),
            request_rate: None,
            metrics: compute(&records, 1.0),
            requests: records,
        }),
        Run::Throughput(ThroughputRun {
            max_num_seqs: 8,
            metrics: ThroughputMetrics::default(),
            requests: vec![OfflineRequest::default()],
        }),
        Run::Latency(LatencyRun {
            metrics: LatencyMetrics::default(),
            iterations: vec![LatencyIteration {
                prefill_s: 0.1,
                decode_steps_s: vec![0.01, 0.02],
                total_s: 0.13,
                output_tokens: 3,
            }],
        }),
    ];
    let result = Saved::new(BenchKind::Serve, json!({"num_prompts": 1}), runs);
    let path = scratch("nested/result.json");
    result.save(&path).unwrap();
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();

    assert_eq!(v["schema_version"], SCHEMA_VERSION);
    assert_eq!(v["benchmark"], "serve");
    assert!(chrono::DateTime::parse_from_rfc3339(v["date"].as_str().unwrap()).is_ok());
    assert!(v["command"].as_array().is_some_and(|c| !c.is_empty()));
    assert_eq!(v["config"]["num_prompts"], 1);
    let env = &v["environment"];
    assert_eq!(env["flare_version"], env!("CARGO_PKG_VERSION"));
    for key in [
        "git_commit",
        "cpu",
        "num_cpus",
        "candle_num_threads",
        "load_average",
        "gpus",
        "os",
        "cuda_build",
    ] {
        assert!(env.get(key).is_some(), "environment.{key}");
    }
    assert!(env["gpus"].is_array() && env["num_cpus"].as_u64().unwrap() >= 1);

    let serve = &v["runs"][0];
    assert_eq!(serve["kind"], "serve");
    assert_eq!(serve["max_concurrency"], 4);
    assert!(serve["request_rate"].is_null(), "infinite rate is null");
    let m = &serve["metrics"];
    for key in [
        "completed",
        "failed",
        "duration_s",
        "total_input_tokens",
        "total_output_tokens",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "max_output_tokens_per_s",
        "max_concurrent_requests",
    ] {
        assert!(m.get(key).is_some(), "metrics.{key}");
    }
    for metric in ["ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"] {
        for stat in ["count", "mean", "std", "median", "p90", "p99", "min", "max"] {
            assert!(m[metric][stat].is_number(), "metrics.{metric}.{stat}");
        }
    }
    assert!((m["tpot_ms"]["mean"].as_f64().unwrap() - 25.0).abs() < 1e-9);
    let r = &serve["requests"][0];
    assert_eq!(r["itl_s"], json!([0.02, 0.03]));
    for key in [
        "prompt_len",
        "expected_output_len",
        "output_tokens",
        "output_tokens_from_usage",
        "success",
        "error",
        "start_s",
        "queue_s",
        "ttft_s",
        "latency_s",
        "generated_text",
    ] {
        assert!(r.get(key).is_some(), "requests[].{key}");
    }

    assert_eq!(v["runs"][1]["kind"], "throughput");
    assert_eq!(v["runs"][1]["max_num_seqs"], 8);
    for key in [
        "requests_per_s",
        "output_tokens_per_s",
        "total_tokens_per_s",
        "elapsed_s",
    ] {
        assert!(
            v["runs"][1]["metrics"].get(key).is_some(),
            "throughput.{key}"
        );
    }
    assert_eq!(v["runs"][2]["kind"], "latency");
    assert_eq!(
        v["runs"][2]["iterations"][0]["decode_steps_s"],
        json!([0.01, 0.02])
    );
    for key in [
        "prefill_ms",
        "decode_step_ms",
        "e2e_ms",
        "decode_tokens_per_s",
    ] {
        assert!(v["runs"][2]["metrics"].get(key).is_some(), "latency.{key}");
    }

    assert_eq!(Saved::load(&path).unwrap(), result);

    // Mixed kinds have no figure; one serve run gets its latency distributions, a serve sweep
    // its throughput/latency-vs-concurrency panels.
    let svg = scratch("result.svg");
    assert!(plot_result(&result, &svg).is_err());
    let serve_only = |runs: Vec<Run>| Saved::new(BenchKind::Serve, json!({}), runs);
    let run = |c| {
        let records = vec![serve_record()];
        Run::Serve(ServeRun {
            max_concurrency: Some(c),
            request_rate: Some(2.0),
            metrics: compute(&records, 1.0),
            requests: records,
        })
    };
    plot_result(&serve_only(vec![run(1)]), &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(["TTFT", "TPOT", "ITL", "E2EL"]
        .iter()
        .all(|m| text.contains(m)));
    plot_result(&serve_only(vec![run(1), run(2), run(4)]), &svg).unwrap();
    assert!(std::fs::read_to_string(&svg)
        .unwrap()
        .contains("vs max concurrency"));
}

#[test]
fn plots_write_svg() {
    let dist = scratch("dist.svg");
    plot_distributions(
        &dist,
        "latency",
        &[
            Distribution {
                name: "TTFT".into(),
                unit: "ms".into(),
                values: (0..100).map(|i| 10.0 + (i % 17) as f64).collect(),
            },
            Distribution {
                name: "ITL".into(),
                unit: "ms".into(),
                values: vec![5.0; 10], // all equal: still a valid axis
            },
            Distribution {
                name: "empty".into(),
                unit: "ms".into(),
                values: vec![],
            },
        ],
    )
    .unwrap();
    let svg = std::fs::read_to_string(&dist).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("TTFT (ms): median") && svg.contains("<rect"));
    assert!(
        !svg.contains("empty"),
        "panels without samples are left out"
    );

    let sweep = scratch("sweep.svg");
    let pts = vec![(1.0, 10.0), (2.0, 19.0), (4.0, 35.0), (8.0, 50.0)];
    plot_sweep(
        &sweep,
        "sweep",
        "max concurrency",
        &[SweepPanel {
            title: "throughput".into(),
            y_desc: "tokens/s".into(),
            lines: vec![("output".into(), pts)],
        }],
    )
    .unwrap();
    let svg = std::fs::read_to_string(&sweep).unwrap();
    assert!(svg.contains("max concurrency") && svg.contains("<polyline"));
    assert!(plot_distributions(&scratch("none.svg"), "x", &[]).is_err());
}

fn small_engine() -> LoadedEngine {
    let gguf = source::default_gguf_path();
    assert!(
        gguf.exists(),
        "{} missing: run `python3 models/fetch_smollm2.py`",
        gguf.display()
    );
    build_engine(&EngineArgs {
        model: Some(gguf.to_string_lossy().into_owned()),
        kv_cache_memory: Some(64 << 20),
        max_model_len: Some(256),
        scheduler: SchedulerConfig {
            max_num_seqs: 4,
            ..SchedulerConfig::default()
        },
        ..EngineArgs::default()
    })
    .expect("engine")
}

#[test]
fn smollm2_random_prompts_round_trip_and_offline_runs_count_tokens() {
    let mut loaded = small_engine();
    let tok = loaded.tokenizer.clone();

    // Random token ids become text that re-tokenizes to the recorded ids, of the asked length.
    let reqs = random_requests(&*tok, &spec(6, 24, 5, 0.0, 0)).unwrap();
    for r in &reqs {
        assert_eq!(
            TextTokenizer::encode(&*tok, &r.prompt).unwrap(),
            r.prompt_ids
        );
        assert!(
            r.prompt_len().abs_diff(24) <= 1,
            "length {}",
            r.prompt_len()
        );
    }
    let exact = reqs.iter().filter(|r| r.prompt_len() == 24).count();
    assert!(exact >= 5, "{exact} of 6 exact");

    // Throughput: 6 requests through a 4-sequence batch, every output token accounted for.
    let (m, per_req) = run_throughput(&mut loaded.engine, &reqs, &ProgressBar::hidden()).unwrap();
    assert_eq!(m.num_requests, 6);
    assert_eq!(m.total_output_tokens, 30);
    assert_eq!(
        m.total_input_tokens,
        reqs.iter().map(|r| r.prompt_len()).sum::<usize>()
    );
    assert!((m.output_tokens_per_s - 30.0 / m.elapsed_s).abs() < 1e-9);
    assert!(per_req
        .iter()
        .all(|r| r.output_len == 5 && r.first_token_s <= r.finish_s));
    assert!(per_req.iter().all(|r| r.finish_s <= m.elapsed_s));
    assert!(!loaded.engine.has_unfinished());

    // Latency: output 4 = prefill (first token) + 3 decode steps per iteration.
    let plain = tok.plain_token_ids();
    let cfg = LatencyConfig {
        batch_size: 2,
        input_len: 16,
        output_len: 4,
        warmup_iters: 1,
        iters: 2,
        seed: 0,
    };
    let (m, iters) = run_latency(&mut loaded.engine, &cfg, &plain, &ProgressBar::hidden()).unwrap();
    assert_eq!(iters.len(), 2);
    for it in &iters {
        assert_eq!(it.decode_steps_s.len(), 3);
        assert_eq!(it.output_tokens, 8);
        let sum = it.prefill_s + it.decode_steps_s.iter().sum::<f64>();
        assert!(it.prefill_s > 0.0 && sum <= it.total_s + 1e-9);
    }
    assert_eq!((m.iterations, m.decode_step_ms.count), (2, 6));
    assert!((m.decode_tokens_per_s - 2.0 / (m.decode_step_ms.median / 1e3)).abs() < 1e-6);
}
