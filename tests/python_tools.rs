//! Tool calling end to end (issue 9, acceptance 3): builds the tool fixture (SmolLM2's weights
//! with a Qwen2.5/Hermes-style template, tests/fixtures/make_tool_model.py), serves it with
//! `flare serve` on a free loopback port, and runs tests/python_tools (the official `openai`
//! SDK): a named tool and `required` give calls whose arguments validate, streamed deltas
//! reassemble into the non-streamed call, and a follow-up with the tool result renders (as
//! transformers does) and answers.
//!
//! Needs models/requirements.txt and SmolLM2's HF conversion (models/fetch_smollm2.py --hf).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "flare-tools";
const KEY: &str = "sk-flare-tools";

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_flare"))
        .arg("serve")
        .arg(&dir)
        .args(["--port", &port.to_string(), "--served-model-name", MODEL])
        .args(["--max-model-len", "2048", "--kv-cache-memory", "268435456"])
        .env("FLARE_API_KEY", KEY)
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_LOG", "flare=warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("flare binary");
    let mut server = Server(child);
    let start = Instant::now();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    loop {
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("flare serve exited early: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "not healthy after 3 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The server is another process: blocking this worker while pytest runs is fine.
    let pytest = Command::new("python3")
        .args([
            "-m",
            "pytest",
            "tests/python_tools",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .current_dir(root)
        .env("FLARE_BASE_URL", format!("{base}/v1"))
        .env("FLARE_MODEL", MODEL)
        .env("FLARE_API_KEY", KEY)
        .env("FLARE_TOOL_MODEL_DIR", &dir)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output();
    let out = pytest.expect("python3");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "pytest failed:\n{log}");
    eprintln!("{}", log.lines().last().unwrap_or(""));
}
