//! Runs tests/python (the official `openai` SDK and `litellm`) against a live `flare serve` of
//! the default model on a free loopback port, then stops it with SIGTERM while a stream is in
//! flight: the stream must finish and the server exit 0.
//!
//! Needs the Python packages of models/requirements.txt and the default model
//! (scripts/test.sh installs and fetches both).

mod common;

use std::time::Duration;

use common::client;
use common::process::{pytest, sdk_serve_args, FlareProcess};

const MODEL: &str = "flare-smollm2";
const KEY: &str = "sk-flare-conformance";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_and_litellm_against_flare_serve() {
    let mut server =
        FlareProcess::start_default(&sdk_serve_args(MODEL), &[("FLARE_API_KEY", KEY)]).await;
    let base = server.base.clone();
    let summary = tokio::task::spawn_blocking(move || {
        pytest(
            "tests/python",
            &[
                ("FLARE_BASE_URL", format!("{base}/v1")),
                ("FLARE_MODEL", MODEL.to_string()),
                ("FLARE_API_KEY", KEY.to_string()),
                ("LITELLM_LOCAL_MODEL_COST_MAP", "True".to_string()),
            ],
        )
    })
    .await
    .unwrap();
    eprintln!("{summary}");

    // SIGTERM with a stream in flight: it completes, then the server exits 0.
    let mut stream = client()
        .post(format!("{}/v1/completions", server.base))
        .bearer_auth(KEY)
        .json(
            &serde_json::json!({"prompt": "Once upon a time", "max_tokens": 24,
            "ignore_eos": true, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    let first = stream.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    server.signal("TERM");
    let mut rest = String::new();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    assert!(rest.contains("\"finish_reason\":\"length\""), "{rest}");
    let status = server.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{status}");
}
