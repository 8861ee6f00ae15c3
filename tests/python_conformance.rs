//! Runs tests/python (the official `openai` SDK and `litellm`) against a live `flare serve` of
//! the default model on a free loopback port, then stops it with SIGTERM while a stream is in
//! flight: the stream must finish and the server exit 0.
//!
//! Needs the Python packages of models/requirements.txt and the default model
//! (scripts/test.sh installs and fetches both).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "flare-smollm2";
const KEY: &str = "sk-flare-conformance";

/// Kills the server if the test fails before it stopped it.
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

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn wait_healthy(base: &str, server: &mut Server) {
    let start = Instant::now();
    loop {
        if let Ok(r) = client().get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("flare serve exited early: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "flare serve not healthy after 3 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_and_litellm_against_flare_serve() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_flare"))
        .args(["serve", "--port", &port.to_string()])
        .args(["--served-model-name", MODEL])
        .args(["--max-model-len", "2048", "--kv-cache-memory", "268435456"])
        .env("FLARE_API_KEY", KEY)
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_LOG", "flare=warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("flare binary");
    let mut server = Server(child);
    wait_healthy(&base, &mut server).await;

    let root = env!("CARGO_MANIFEST_DIR");
    let out = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            Command::new("python3")
                .args([
                    "-m",
                    "pytest",
                    "tests/python",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                ])
                .current_dir(root)
                .env("FLARE_BASE_URL", format!("{base}/v1"))
                .env("FLARE_MODEL", MODEL)
                .env("FLARE_API_KEY", KEY)
                .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                .env("HF_HUB_OFFLINE", "1")
                .env("NO_PROXY", "127.0.0.1,localhost")
                .output()
                .expect("python3")
        }
    })
    .await
    .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "pytest failed (pip install -r models/requirements.txt?):\n{log}"
    );
    eprintln!("{}", log.lines().last().unwrap_or(""));

    // SIGTERM with a stream in flight: it completes, then the server exits 0.
    let mut stream = client()
        .post(format!("{base}/v1/completions"))
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
    let status = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    assert!(rest.contains("\"finish_reason\":\"length\""), "{rest}");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "{status}");
}
