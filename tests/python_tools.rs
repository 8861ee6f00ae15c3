//! Tool calling end to end (issue 9, acceptance 3): builds the tool fixture (SmolLM2's weights
//! with a Qwen2.5/Hermes-style template, tests/fixtures/make_tool_model.py), serves it with
//! `flare serve` on a free loopback port, and runs tests/python_tools (the official `openai`
//! SDK): a named tool and `required` give calls whose arguments validate, streamed deltas
//! reassemble into the non-streamed call, and a follow-up with the tool result renders (as
//! transformers does) and answers.
//!
//! Needs models/requirements.txt and SmolLM2's HF conversion (models/fetch_smollm2.py --hf).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::process::{pytest, FlareProcess};

const MODEL: &str = "flare-tools";
const KEY: &str = "sk-flare-tools";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_tool_calling_round_trip() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir: PathBuf =
        std::env::temp_dir().join(format!("flare-tool-model-{}", std::process::id()));
    let built = Command::new("python3")
        .arg(format!("{root}/tests/fixtures/make_tool_model.py"))
        .arg(&dir)
        .status()
        .expect("python3");
    assert!(
        built.success(),
        "make_tool_model.py failed (models/fetch_smollm2.py --hf?)"
    );

    let server = FlareProcess::start(
        &dir,
        &[
            "--served-model-name",
            MODEL,
            "--max-model-len",
            "2048",
            "--kv-cache-memory",
            "268435456",
        ],
        &[("FLARE_API_KEY", KEY)],
    )
    .await;
    // The server is another process: blocking this worker while pytest runs is fine.
    let summary = pytest(
        "tests/python_tools",
        &[
            ("FLARE_BASE_URL", format!("{}/v1", server.base)),
            ("FLARE_MODEL", MODEL.to_string()),
            ("FLARE_API_KEY", KEY.to_string()),
            ("FLARE_TOOL_MODEL_DIR", dir.display().to_string()),
        ],
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{summary}");
}
