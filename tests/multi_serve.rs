//! `flare serve --config`: several real models in one process (SmolLM2 GGUF Q4_1 and its f32
//! HF conversion), a model with a bad path failing alone, and a cascade route whose
//! escalations go to a second `flare serve` on loopback playing the remote provider.
//!
//! Needs the SmolLM2 files in ~/.cache/flare/models (models/fetch_smollm2.py --hf).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::client;
use common::process::FlareProcess;
use serde_json::{json, Value};

fn models_dir() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/flare/models")
}

fn gguf() -> String {
    models_dir()
        .join("SmolLM2-135M-Instruct.Q4_1.gguf")
        .display()
        .to_string()
}

fn hf() -> String {
    models_dir()
        .join("SmolLM2-135M-Instruct-hf")
        .display()
        .to_string()
}

/// `flare serve --config CONFIG ARGS...` on one thread, once /health says 200.
async fn serve_config(config: &Path, args: &[&str]) -> FlareProcess {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    FlareProcess::start_default(&all, &[("RAYON_NUM_THREADS", "1")]).await
}

/// The /health body.
async fn health(base: &str) -> Value {
    client()
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn post(base: &str, path: &str, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
    post_as(base, path, body, None).await
}

async fn post_as(
    base: &str,
    path: &str,
    body: Value,
    key: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = client().post(format!("{base}{path}"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

async fn metrics(base: &str) -> String {
    client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sample of `name` whose labels contain every one of `labels` (0 when absent).
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flare-multi-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn chat(model: &str, prompt: &str, max_tokens: u64) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

/// The server's one API key (`--api-key`), valid for every model.
const KEY: &str = "sk-multi-test";

const KV: &str = "kv_cache_memory = 134217728\nmax_model_len = 1024\nmax_num_seqs = 8";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_one_process_and_a_bad_entry_fails_alone() {
    let dir = tmpdir("two");
    let cfg = write(
        &dir,
        "models.toml",
        &format!(
            "[[models]]\nname = \"smol-q4\"\nmodel = \"{}\"\n{KV}\n\n\
             [[models]]\nname = \"smol-f32\"\naliases = [\"smol-full\"]\nmodel = \"{}\"\n{KV}\n\n\
             [[models]]\nname = \"broken\"\nmodel = \"{}\"\n",
            gguf(),
            hf(),
            dir.join("missing.gguf").display()
        ),
    );
    let mut p = serve_config(&cfg, &["--api-key", KEY]).await;
    let base = p.base.clone();
    let health = health(&base).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["models"]["smol-q4"]["status"], "ready");
    assert_eq!(health["models"]["smol-f32"]["status"], "ready");
    assert_eq!(health["models"]["broken"]["status"], "failed");
    assert!(
        health["models"]["broken"]["error"]
            .as_str()
            .unwrap()
            .contains("missing.gguf"),
        "{health}"
    );

    let models: Value = client()
        .get(format!("{base}/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["smol-q4", "smol-f32", "smol-full"]);

    // Each model answers by its name; its tokens show on its own series only.
    let before = metrics(&base).await;
    assert_eq!(
        sample(
            &before,
            "flare:generation_tokens_total",
            &["model_name=\"smol-q4\""]
        ),
        0.0
    );
    // One key for every model: checked once at the front.
    let (s, _, v) = post(
        &base,
        "/v1/chat/completions",
        chat("smol-q4", "What is 2+2?", 6),
    )
    .await;
    assert_eq!(s, 401, "{v}");
    let (s, h, v) = post_as(
        &base,
        "/v1/chat/completions",
        chat("smol-q4", "What is 2+2?", 6),
        Some(KEY),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], "smol-q4");
    assert_eq!(header(&h, "x-flare-model"), Some("smol-q4"));
    let q4_tokens = v["usage"]["completion_tokens"].as_f64().unwrap();
    let m = metrics(&base).await;
    assert_eq!(
        sample(
            &m,
            "flare:generation_tokens_total",
            &["model_name=\"smol-q4\""]
        ),
        q4_tokens
    );
    assert_eq!(
        sample(
            &m,
            "flare:generation_tokens_total",
            &["model_name=\"smol-f32\""]
        ),
        0.0
    );

    let (s, h, v) = post_as(&base, "/v1/completions", json!({
        "model": "smol-full", "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0
    }), Some(KEY))
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["model"], "smol-f32",
        "responses carry the first name, as one model does"
    );
    assert_eq!(header(&h, "x-flare-model"), Some("smol-f32"));
    let f32_tokens = v["usage"]["completion_tokens"].as_f64().unwrap();
    let m = metrics(&base).await;
    assert_eq!(
        sample(
            &m,
            "flare:generation_tokens_total",
            &["model_name=\"smol-q4\""]
        ),
        q4_tokens
    );
    assert_eq!(
        sample(
            &m,
            "flare:generation_tokens_total",
            &["model_name=\"smol-f32\""]
        ),
        f32_tokens
    );
    assert_eq!(
        m.matches("# TYPE flare:generation_tokens_total").count(),
        1,
        "one family"
    );

    // The failed model is refused by name with a 503 naming it; unknown names are 404.
    let (s, _, v) = post_as(
        &base,
        "/v1/chat/completions",
        chat("broken", "hi", 4),
        Some(KEY),
    )
    .await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "model_unavailable");
    let (s, _, v) = post_as(
        &base,
        "/v1/chat/completions",
        chat("nope", "hi", 4),
        Some(KEY),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["code"], "model_not_found");

    // SIGTERM: the process drains and exits 0.
    p.signal("TERM");
    let status = p.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

const PROMPTS: &[&str] = &[
    "What is the capital of France?",
    "What is 2+2?",
    "Name a primary color.",
    "Write one word that rhymes with cat.",
    "What is the largest ocean on Earth?",
    "Say hello in Spanish.",
];
const MAX_TOKENS: u64 = 12;

fn mean_logprob(v: &Value) -> f64 {
    let lps: Vec<f64> = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["logprob"].as_f64().unwrap())
        .collect();
    lps.iter().sum::<f64>() / lps.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_escalates_to_an_upstream_and_survives_its_loss() {
    let dir = tmpdir("cascade");
    // The "remote provider": a plain single-model flare serve of the f32 model.
    let upstream = FlareProcess::start(
        Path::new(&hf()),
        &[
            "--served-model-name",
            "big",
            "--kv-cache-memory",
            "134217728",
            "--max-model-len",
            "1024",
        ],
        &[("RAYON_NUM_THREADS", "1")],
    )
    .await;
    let (up_base, up_port) = (upstream.base.clone(), upstream.port);
    // First the local model alone, to learn each prompt's mean logprob and put the threshold
    // between them (the greedy answer and its logprobs are deterministic).
    let probe_cfg = write(
        &dir,
        "probe.toml",
        &format!(
            "[[models]]\nname = \"small\"\nmodel = \"{}\"\n{KV}\n",
            gguf()
        ),
    );
    let means = {
        let probe = serve_config(&probe_cfg, &[]).await;
        let base = probe.base.clone();
        let mut means = Vec::new();
        for p in PROMPTS {
            let mut body = chat("small", p, MAX_TOKENS);
            body["logprobs"] = json!(true);
            let (s, _, v) = post(&base, "/v1/chat/completions", body).await;
            assert_eq!(s, 200, "{v}");
            means.push(mean_logprob(&v));
        }
        means
    };
    let mut sorted = means.clone();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    assert!(
        sorted[mid - 1] < sorted[mid],
        "prompts must differ in confidence: {sorted:?}"
    );
    let threshold = (sorted[mid - 1] + sorted[mid]) / 2.0;
    let escalates: Vec<bool> = means.iter().map(|&m| m < threshold).collect();

    let telemetry = dir.join("route.jsonl");
    let cfg = write(
        &dir,
        "cascade.toml",
        &format!(
            "[[models]]\nname = \"small\"\nmodel = \"{}\"\n{KV}\n\n\
             [[routes]]\nname = \"auto\"\ntelemetry = \"{}\"\ncommit_after_tokens = 64\n\
             escalate = {{ min_mean_logprob = {threshold} }}\n\
             [[routes.targets]]\nmodel = \"small\"\n\
             [[routes.targets]]\nmodel = \"big\"\nurl = \"{up_base}/v1\"\nretries = 1\nbackoff_ms = 50\ntimeout_s = 60\n\n\
             [[routes]]\nname = \"early\"\ncommit_after_tokens = 2\n\
             escalate = {{ min_mean_logprob = {threshold}, on_length = true, on_parse_failure = true }}\n\
             [[routes.targets]]\nmodel = \"small\"\n\
             [[routes.targets]]\nmodel = \"big\"\nurl = \"{up_base}/v1\"\n",
            gguf(),
            telemetry.display()
        ),
    );
    let front = serve_config(&cfg, &[]).await;
    let base = front.base.clone();

    let mut seen = Vec::new();
    for (p, &esc) in PROMPTS.iter().zip(&escalates) {
        let (s, h, v) = post(&base, "/v1/chat/completions", chat("auto", p, MAX_TOKENS)).await;
        assert_eq!(s, 200, "{v}");
        let who = header(&h, "x-flare-model").unwrap().to_string();
        assert_eq!(v["model"], who.as_str(), "body and header agree");
        assert_eq!(who, if esc { "big" } else { "small" }, "prompt {p:?}");
        assert_eq!(
            header(&h, "x-flare-escalated"),
            esc.then_some("mean_logprob")
        );
        assert!(
            v["choices"][0]["logprobs"].is_null(),
            "logprobs the client did not ask for are stripped"
        );
        seen.push(who);
    }
    let n_up = seen.iter().filter(|w| *w == "big").count();
    assert!(
        n_up > 0 && n_up < PROMPTS.len(),
        "the threshold splits the set: {seen:?}"
    );

    // Streaming, with the commit point past max_tokens: the same decision, held back.
    for (i, p) in PROMPTS.iter().enumerate().take(2) {
        let mut body = chat("auto", p, MAX_TOKENS);
        body["stream"] = json!(true);
        let r = client()
            .post(format!("{base}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(header(r.headers(), "x-flare-model"), Some(seen[i].as_str()));
        let text = r.text().await.unwrap();
        let chunks: Vec<Value> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert!(!chunks.is_empty() && text.trim_end().ends_with("data: [DONE]"));
        assert!(
            chunks.iter().all(|c| c["model"] == seen[i].as_str()),
            "{text}"
        );
        seen.push(seen[i].clone());
    }

    // Counters and telemetry agree with what the client saw.
    let m = metrics(&base).await;
    let ups = seen.iter().filter(|w| *w == "big").count() as f64;
    assert_eq!(
        sample(
            &m,
            "flare:route_escalations_total",
            &["reason=\"mean_logprob\""]
        ),
        ups
    );
    assert_eq!(
        sample(&m, "flare:route_answered_total", &["target=\"big\""]),
        ups
    );
    assert_eq!(
        sample(&m, "flare:route_answered_total", &["target=\"small\""]),
        seen.len() as f64 - ups
    );
    assert_eq!(
        sample(&m, "flare:route_requests_total", &["target=\"small\""]),
        seen.len() as f64
    );
    assert!(
        sample(
            &m,
            "flare:route_target_completion_tokens_total",
            &["target=\"big\""]
        ) > 0.0
    );
    let lines: Vec<Value> = std::fs::read_to_string(&telemetry)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), seen.len());
    for (line, who) in lines.iter().zip(&seen) {
        assert_eq!(line["answered_by"], who.as_str(), "{line}");
        assert_eq!(line["escalated"], who == "big");
        assert!(line["attempts"][0]["mean_logprob"].is_number());
        assert!(line.get("prompt").is_none(), "no prompt text unless asked");
    }

    // A route that decides after 2 tokens: an escalated stream abandons the local request
    // mid-generation; whatever it decides, the answer is one model's and no KV block leaks.
    for p in PROMPTS {
        let mut body = chat("early", p, MAX_TOKENS);
        body["stream"] = json!(true);
        let r = client()
            .post(format!("{base}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let who = header(r.headers(), "x-flare-model").unwrap().to_string();
        let text = r.text().await.unwrap();
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        for d in text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
            if d != "[DONE]" {
                let c: Value = serde_json::from_str(d).unwrap();
                assert_eq!(c["model"], who.as_str(), "{text}");
            }
        }
    }
    let m = metrics(&base).await;
    println!(
        "route `early`: {} of {} streams escalated after 2 tokens",
        sample(
            &m,
            "flare:route_escalations_total",
            &["model_name=\"early\""]
        ),
        PROMPTS.len()
    );
    let start = Instant::now();
    loop {
        let m = metrics(&base).await;
        let held = sample(&m, "flare:kv_cache_used_blocks", &["model_name=\"small\""]);
        let running = sample(&m, "flare:num_requests_running", &["model_name=\"small\""]);
        if held == 0.0 && running == 0.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "KV blocks still held after the streams ended: {held}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The other two tests, end to end: an answer cut at max_tokens, and JSON that does not
    // parse under `response_format` (checked first).
    let (s, h, v) = post(
        &base,
        "/v1/chat/completions",
        chat("early", "Write a long story about a dragon.", 3),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(header(&h, "x-flare-escalated"), Some("length"));
    assert_eq!(header(&h, "x-flare-model"), Some("big"));
    let mut body = chat("early", "Give a JSON object with a name and an age.", 3);
    body["response_format"] = json!({"type": "json_object"});
    let (s, h, v) = post(&base, "/v1/chat/completions", body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(header(&h, "x-flare-escalated"), Some("parse_failure"));
    assert_eq!(v["model"], "big");

    // The upstream dies: an escalating request gets the local answer and a logged failure.
    drop(upstream);
    let esc_prompt = PROMPTS[escalates.iter().position(|&e| e).unwrap()];
    let (s, h, v) = post(
        &base,
        "/v1/chat/completions",
        chat("auto", esc_prompt, MAX_TOKENS),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], "small");
    assert_eq!(header(&h, "x-flare-model"), Some("small"));
    assert_eq!(header(&h, "x-flare-fallback"), Some("true"));
    let m = metrics(&base).await;
    assert_eq!(
        sample(&m, "flare:route_target_failures_total", &["target=\"big\""]),
        1.0
    );
    let last: Value = serde_json::from_str(
        std::fs::read_to_string(&telemetry)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["answered_by"], "small");
    assert_eq!(last["fallback"], true);
    assert_eq!(last["attempts"][1]["outcome"], "failed");
    assert!(last["attempts"][1]["error"]
        .as_str()
        .unwrap()
        .contains(&up_port.to_string()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn route_eval_prints_accuracy_and_escalation_per_threshold() {
    let dir = tmpdir("eval");
    let cfg = write(
        &dir,
        "route.toml",
        &format!(
            "[[models]]\nname = \"small\"\nmodel = \"{}\"\n{KV}\n\n\
             [[models]]\nname = \"large\"\nmodel = \"{}\"\n{KV}\n\n\
             [[routes]]\nname = \"auto\"\nescalate = {{ min_mean_logprob = -0.5 }}\n\
             [[routes.targets]]\nmodel = \"small\"\ncost_per_1k_tokens = 0.1\n\
             [[routes.targets]]\nmodel = \"large\"\ncost_per_1k_tokens = 1.0\n",
            gguf(),
            hf()
        ),
    );
    let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/route_eval.jsonl");
    let run = |json: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_flare"));
        c.args(["route", "eval", "--config", cfg.to_str().unwrap()])
            .args(["--prompts", prompts.to_str().unwrap()])
            .args(["--thresholds=-100,-1,0", "--max-tokens", "16"])
            .env("HF_HUB_OFFLINE", "1")
            .env("RUST_LOG", "flare=warn");
        if json {
            c.arg("--json");
        }
        let out = c.output().expect("flare binary");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let report: Value = serde_json::from_str(&run(true)).unwrap();
    assert_eq!(report["prompts"], 10);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "the configured threshold and three more");
    let row = |t: f64| {
        rows.iter()
            .find(|r| r["threshold"].as_f64() == Some(t))
            .unwrap()
    };
    // Nothing is below -100; every mean logprob is below 0.
    assert_eq!(row(-100.0)["escalation_rate"], 0.0);
    assert_eq!(row(0.0)["escalation_rate"], 1.0);
    assert_eq!(row(-100.0)["accuracy"], report["target_accuracy"][0]);
    assert_eq!(row(0.0)["accuracy"], report["target_accuracy"][1]);
    assert!(row(0.0)["cost"].as_f64().unwrap() > row(-100.0)["cost"].as_f64().unwrap());
    for r in rows {
        let a = r["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a));
    }
    assert!(
        report["target_accuracy"][1].as_f64().unwrap() >= 0.5,
        "the f32 model knows most of these: {report}"
    );
    let table = run(false);
    println!("{table}");
    assert!(
        table.contains("accuracy") && table.contains("escalation"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 2 + 4, "{table}");
    let _ = std::fs::remove_dir_all(&dir);
}
