//! Every tiny model family end to end, against transformers' greedy run (tests/fixtures/
//! greedy.json, made by make_greedy.py): through `flare serve` `/v1/completions` with token-id
//! prompts and logprobs, alone and as 16 concurrent requests, and through `flare generate`.
//! Tokens must equal the reference up to its first near-tie; logprobs agree to 1e-4.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use flare::engine::EngineArgs;
use flare::server::{AppState, ServerConfig};
use serde::Deserialize;
use serde_json::{json, Value};

const FAMILIES: [&str; 13] = [
    "tiny-llama",
    "tiny-qwen2",
    "tiny-mistral-swa",
    "tiny-qwen3",
    "tiny-gemma3",
    "tiny-mixtral",
    "tiny-qwen3-moe",
    "tiny-mistral",
    "tiny-phi3",
    "tiny-phi3-longrope",
    "tiny-gpt-oss",
    "tiny-deepseek-v3",
    "tiny-deepseek-v2",
];
/// Margins below this are ties at f32 noise (our logits differ from the reference by ~1e-5).
const NEAR_TIE: f32 = 1e-3;

#[derive(Deserialize)]
struct Greedy {
    prompts: Vec<Vec<u32>>,
    max_new_tokens: usize,
    outputs: Vec<Vec<u32>>,
    margins: Vec<Vec<f32>>,
    logprobs: Vec<Vec<f32>>,
}

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn greedy(name: &str) -> Greedy {
    serde_json::from_str(&std::fs::read_to_string(dir(name).join("greedy.json")).unwrap()).unwrap()
}

/// How many leading tokens must match: up to and including the first near-tie's choice
/// excluded (after a tie either token is right).
fn checked_len(g: &Greedy, i: usize) -> usize {
    g.margins[i]
        .iter()
        .position(|&m| m < NEAR_TIE)
        .unwrap_or(g.outputs[i].len())
}

fn word_ids(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .map(|w| w.strip_prefix('t').unwrap().parse().unwrap())
        .collect()
}

fn check(name: &str, g: &Greedy, i: usize, got: &[u32], logprobs: Option<&[f32]>, how: &str) {
    let n = checked_len(g, i);
    assert!(
        got.len() >= n,
        "{name} {how}: prompt {i}: {got:?} too short"
    );
    assert_eq!(got[..n], g.outputs[i][..n], "{name} {how}: prompt {i}");
    if let Some(lp) = logprobs {
        for (k, (a, b)) in lp[..n].iter().zip(&g.logprobs[i]).enumerate() {
            let tol = 1e-4 * b.abs().max(1.0);
            assert!(
                (a - b).abs() < tol,
                "{name} {how}: prompt {i} step {k}: logprob {a} vs {b}"
            );
        }
    }
}

async fn complete(base: &str, g: &Greedy, i: usize) -> (Vec<u32>, Vec<f32>) {
    let (s, v) = post(
        &client(),
        &format!("{base}/v1/completions"),
        json!({"prompt": g.prompts[i], "max_tokens": g.max_new_tokens, "temperature": 0,
               "ignore_eos": true, "logprobs": 0}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let tokens: Vec<u32> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| word_ids(t.as_str().unwrap()))
        .collect();
    let logprobs = lp["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(Value::as_f64)
        .map(|x| x.unwrap() as f32)
        .collect();
    (tokens, logprobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_serves_reference_greedy_tokens_alone_and_in_a_batch_of_16() {
    for name in FAMILIES {
        let g = greedy(name);
        let state = AppState::new(ServerConfig {
            served_model_names: vec![name.into()],
            ..ServerConfig::default()
        });
        let args = EngineArgs {
            model: Some(dir(name).to_string_lossy().into_owned()),
            kv_cache_memory: Some(8 << 20),
            ..EngineArgs::default()
        };
        flare::server::load_into(&state, args).expect("model loads");
        let server = serve(state).await;
        let base = server.base.clone();

        let (s, models) = get(&client(), &server.url("/v1/models")).await;
        assert_eq!(s, 200);
        let models: Value = serde_json::from_str(&models).unwrap();
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(dir(name).join("config.json")).unwrap())
                .unwrap();
        assert_eq!(models["data"][0]["architecture"], cfg["model_type"]);
        assert_eq!(models["data"][0]["max_model_len"], derived_max_len(&cfg));

        for i in 0..g.prompts.len() {
            let (tokens, lp) = complete(&base, &g, i).await;
            check(name, &g, i, &tokens, Some(&lp), "alone");
        }
        let batch: Vec<_> = (0..16)
            .map(|k| {
                let (base, g) = (base.clone(), greedy(name));
                tokio::spawn(async move { (k % 3, complete(&base, &g, k % 3).await) })
            })
            .collect();
        for h in batch {
            let (i, (tokens, lp)) = h.await.unwrap();
            check(name, &g, i, &tokens, Some(&lp), "batch of 16");
        }
        assert!(server.stop().await);
    }
}

fn generate(name: &str, prompt_args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_flare"))
        .arg("generate")
        .arg(dir(name))
        .args(prompt_args)
        .args(["--max-tokens", "8", "--temperature", "0", "--ignore-eos"])
        .args(["--kv-cache-memory", "8000000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn words(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| format!("t{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn every_family_generates_reference_greedy_tokens_alone_and_batched() {
    let scratch = std::env::temp_dir().join(format!("flare-families-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    for name in FAMILIES {
        let g = greedy(name);
        let alone = generate(name, &["--prompt", &words(&g.prompts[2])]);
        check(name, &g, 2, &word_ids(&alone), None, "generate");

        let file = scratch.join(format!("{name}.txt"));
        let lines: Vec<String> = g.prompts.iter().map(|p| words(p)).collect();
        std::fs::write(&file, lines.join("\n")).unwrap();
        let batched = generate(name, &["--prompts-file", file.to_str().unwrap()]);
        for (i, line) in lines.iter().enumerate() {
            let block = batched
                .split(&format!("### {line}\n"))
                .nth(1)
                .unwrap_or_else(|| panic!("{name}: no output for prompt {i}: {batched}"));
            let text = block.split("\n\n").next().unwrap();
            check(name, &g, i, &word_ids(text), None, "generate batched");
        }
    }
    std::fs::remove_dir_all(&scratch).ok();
}

/// MLA's cache holds (kv_lora_rank + qk_rope_head_dim) values per token and layer, nothing per
/// head, and the engine's log says so: (24 + 8) x 3 layers x 4 bytes (f32) for the tiny config.
#[test]
fn deepseek_kv_cache_holds_only_the_latent_and_rope_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_flare"))
        .arg("generate")
        .arg(dir("tiny-deepseek-v3"))
        .args([
            "--prompt",
            "t1 t2 t3",
            "--max-tokens",
            "2",
            "--kv-cache-memory",
            "8000000",
        ])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&format!("{} bytes per token", (24 + 8) * 3 * 4)),
        "{log}"
    );
}

/// vLLM's derived context length of a config.json: `max_position_embeddings`, for YaRN its
/// `original_max_position_embeddings` times the factor (the tiny gpt-oss: 64 x 4).
fn derived_max_len(cfg: &Value) -> u64 {
    let base = cfg["max_position_embeddings"].as_u64().unwrap();
    let rope = &cfg["rope_scaling"];
    match rope["rope_type"].as_str().or(rope["type"].as_str()) {
        Some("yarn") => {
            let original = rope["original_max_position_embeddings"].as_u64().unwrap();
            (original as f64 * rope["factor"].as_f64().unwrap()) as u64
        }
        Some("linear") => (base as f64 * rope["factor"].as_f64().unwrap()) as u64,
        _ => base,
    }
}

/// Through `flare serve`: a `--max-model-len` past the checkpoint's 512 positions ends the
/// process with an error naming the flag and the way to allow it; allowed, the server reports
/// that length and completes a prompt that runs past position 512.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_max_model_len_past_the_positions_unless_allowed() {
    use common::process::{free_port, FlareProcess};
    let scratch = std::env::temp_dir().join(format!("flare-long-len-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let log = scratch.join("refused.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_flare"))
        .arg("serve")
        .arg(dir("tiny-llama"))
        .args([
            "--port",
            &free_port().to_string(),
            "--max-model-len",
            "1000",
        ])
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_LOG", "flare=warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().ok();
            panic!("flare serve kept running with --max-model-len 1000 on 512 positions");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("--max-model-len 1000 is greater than the 512 positions")
            && err.contains("FLARE_ALLOW_LONG_MAX_MODEL_LEN=1"),
        "{err}"
    );

    let server = FlareProcess::start(
        &dir("tiny-llama"),
        &["--max-model-len", "1000", "--kv-cache-memory", "8000000"],
        &[("FLARE_ALLOW_LONG_MAX_MODEL_LEN", "1")],
    )
    .await;
    let (s, models) = get(&client(), &format!("{}/v1/models", server.base)).await;
    assert_eq!(s, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["max_model_len"], 1000);
    let prompt: Vec<u32> = (0..600).map(|i| 3 + i % 50).collect();
    let r = client()
        .post(format!("{}/v1/completions", server.base))
        .json(
            &json!({"model": dir("tiny-llama"), "prompt": prompt, "max_tokens": 4,
                      "temperature": 0}),
        )
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 600, "{body}");
    std::fs::remove_dir_all(&scratch).ok();
}
