//! Tool calling end to end (issue 9, acceptance 3): builds the tool fixture (SmolLM2's weights
//! with a Qwen2.5/Hermes-style template, tests/fixtures/make_tool_model.py), serves it with
//! `flare serve` on a free loopback port, and runs tests/python_tools (the official `openai`
//! SDK): a named tool and `required` give calls whose arguments validate, streamed deltas
//! reassemble into the non-streamed call, and a follow-up with the tool result renders (as
//! transformers does) and answers.
//!
//! Needs models/requirements.txt and SmolLM2's HF conversion (models/fetch_smollm2.py --hf).

mod common;

use common::process::{build_tool_model, pytest, sdk_serve_args, FlareProcess};

const MODEL: &str = "flare-tools";
const KEY: &str = "sk-flare-tools";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_tool_calling_round_trip() {
    let dir = build_tool_model("tool-model");
    let server = FlareProcess::start(&dir, &sdk_serve_args(MODEL), &[("FLARE_API_KEY", KEY)]).await;
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
