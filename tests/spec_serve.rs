//! `flare serve --speculative-config` end to end: the real binary with SmolLM2-135M (f32) as
//! target and its Q4_1 GGUF as draft answers greedy chat requests (plain and streamed, one of
//! them grammar-constrained) with exactly the text and token counts of a server without
//! speculation, and /metrics shows the drafts it proposed and accepted. A draft made for fewer
//! positions than the target's `max_model_len` proposes nothing past them (tiny-llama).
//!
//! Needs `python3 models/fetch_smollm2.py --hf` (scripts/test.sh runs it).

mod common;

use common::metric;
use common::process::FlareProcess;
use flare::models::source;
use serde_json::{json, Value};

const PROMPTS: &[&str] = &[
    "Repeat the following sentence exactly: The quick brown fox jumps over the lazy dog near the river bank.",
    "Copy this list: apples, oranges, bananas, grapes, pears, plums, cherries.",
];

/// Each prompt's greedy answer (text, completion tokens), then one streamed and one
/// regex-constrained answer of the first prompt.
async fn answers(server: &FlareProcess) -> Vec<(String, u64)> {
    let c = common::client();
    let url = format!("{}/v1/chat/completions", server.base);
    let body = |prompt: &str, extra: Value| {
        let mut b = json!({
            "model": "m",
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": 40,
        });
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let mut out = Vec::new();
    let regex = json!({"structured_outputs": {"regex": "[A-Za-z ,.]{1,80}"}});
    for b in PROMPTS
        .iter()
        .map(|p| body(p, json!({})))
        .chain([body(PROMPTS[0], regex)])
    {
        let r: Value = c
            .post(&url)
            .json(&b)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let text = r["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"));
        out.push((
            text.to_string(),
            r["usage"]["completion_tokens"].as_u64().unwrap(),
        ));
    }
    let stream = body(
        PROMPTS[1],
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let events = common::post_stream(&c, &url, stream).await;
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"].get(0)?["delta"]["content"].as_str())
        .collect();
    let tokens = events
        .iter()
        .find_map(|e| e["usage"]["completion_tokens"].as_u64())
        .unwrap();
    out.push((text, tokens));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_draft_model_answers_as_without_and_counts_drafts() {
    let target = source::default_hf_dir();
    let draft = source::default_gguf_path();
    assert!(
        target.exists() && draft.exists(),
        "run `python3 models/fetch_smollm2.py --hf`"
    );
    let args = [
        "--served-model-name",
        "m",
        "--max-model-len",
        "512",
        "--kv-cache-memory",
        "67108864",
    ];
    let base = FlareProcess::start(&target, &args, &[]).await;
    let want = answers(&base).await;
    drop(base);

    let spec = format!(
        r#"{{"method": "draft", "model": "{}", "num_speculative_tokens": 3}}"#,
        draft.display()
    );
    let mut with_spec = args.to_vec();
    with_spec.extend(["--speculative-config", &spec]);
    let server = FlareProcess::start(&target, &with_spec, &[]).await;
    let got = answers(&server).await;
    assert_eq!(got, want);
    assert!(want[0].0.contains("quick brown fox"), "{want:?}");

    let m = common::metrics(&common::client(), &server).await;
    let drafts = metric(&m, "flare:spec_decode_num_drafts_total").unwrap();
    let draft_tokens = metric(&m, "flare:spec_decode_num_draft_tokens_total").unwrap();
    let accepted = metric(&m, "flare:spec_decode_num_accepted_tokens_total").unwrap();
    let per_pos = metric(&m, "flare:spec_decode_num_accepted_tokens_per_pos_total").unwrap();
    assert!(drafts > 0.0 && accepted > 0.0, "{m}");
    assert!(
        accepted <= draft_tokens && draft_tokens <= 3.0 * drafts,
        "{m}"
    );
    assert_eq!(per_pos, accepted);
}

/// Through `flare serve`: a draft made for fewer positions than the target's `max_model_len`
/// (a copy of tiny-llama whose config says 64) proposes nothing for a sequence past its 64
/// positions, which still gets the answer of a server without speculation, and proposes for a
/// short one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_proposes_nothing_past_its_own_positions() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let target = fixtures.join("tiny-llama");
    let draft = std::env::temp_dir().join(format!("flare-short-draft-{}", std::process::id()));
    std::fs::create_dir_all(&draft).unwrap();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
    ] {
        std::fs::copy(target.join(f), draft.join(f)).unwrap();
    }
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(target.join("config.json")).unwrap())
            .unwrap();
    cfg["max_position_embeddings"] = json!(64);
    std::fs::write(draft.join("config.json"), cfg.to_string()).unwrap();

    let args = ["--served-model-name", "m", "--kv-cache-memory", "8000000"];
    let spec = format!(
        r#"{{"method": "draft", "model": "{}", "num_speculative_tokens": 3}}"#,
        draft.display()
    );
    let mut with_spec = args.to_vec();
    with_spec.extend(["--speculative-config", &spec]);
    let c = common::client();
    let complete = |server: &FlareProcess, len: u32| {
        let url = format!("{}/v1/completions", server.base);
        let prompt: Vec<u32> = (0..len).map(|i| 3 + (i * 7) % 200).collect();
        let body = json!({"model": "m", "prompt": prompt, "max_tokens": 8, "temperature": 0});
        let c = c.clone();
        async move {
            let (status, r) = common::post(&c, &url, body).await;
            assert_eq!(status, 200, "{r}");
            r["choices"][0]["text"].as_str().unwrap().to_string()
        }
    };
    let drafts = |m: String| metric(&m, "flare:spec_decode_num_draft_tokens_total").unwrap_or(0.0);
    let base = FlareProcess::start(&target, &args, &[]).await;
    let want = complete(&base, 100).await;
    drop(base);
    let server = FlareProcess::start(&target, &with_spec, &[]).await;
    assert_eq!(complete(&server, 100).await, want);
    assert_eq!(
        drafts(common::metrics(&c, &server).await),
        0.0,
        "drafted past the draft's 64 positions"
    );
    complete(&server, 10).await;
    assert!(
        drafts(common::metrics(&c, &server).await) > 0.0,
        "no drafts within the draft's positions"
    );
    std::fs::remove_dir_all(&draft).ok();
}
