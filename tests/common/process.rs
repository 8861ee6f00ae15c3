//! A `flare serve` child process on a free loopback port, and pytest runs against it: for the
//! tests that drive the server with the official Python SDKs.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Killed when dropped.
pub struct FlareProcess {
    child: Child,
    pub port: u16,
    pub base: String,
}

impl Drop for FlareProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FlareProcess {
    /// `flare serve MODEL --port P ARGS...` (offline, quiet), once /health says 200.
    pub async fn start(model: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_with_stderr(Some(model), args, envs, Stdio::inherit()).await
    }

    /// As [`Self::start`] with no model argument: the default model, as a user's first
    /// `flare serve` runs.
    pub async fn start_default(args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_with_stderr(None, args, envs, Stdio::inherit()).await
    }

    /// As [`Self::start`], with the server's log (stderr) written to `log`. `envs` come last,
    /// so they may override `RUST_LOG`.
    pub async fn start_logged(
        model: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        log: &Path,
    ) -> Self {
        let file = std::fs::File::create(log).expect("server log file");
        Self::start_with_stderr(Some(model), args, envs, Stdio::from(file)).await
    }

    async fn start_with_stderr(
        model: Option<&Path>,
        args: &[&str],
        envs: &[(&str, &str)],
        stderr: Stdio,
    ) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_flare"))
            .arg("serve")
            .args(model)
            .args(["--port", &port.to_string()])
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .env("RUST_LOG", "flare=warn")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("flare binary");
        let mut p = Self {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = super::client();
        let start = Instant::now();
        loop {
            if let Ok(r) = client.get(format!("{}/health", p.base)).send().await {
                if r.status().is_success() {
                    return p;
                }
            }
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("flare serve exited early: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "not healthy after 3 minutes"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends `kill -SIG` (e.g. "TERM") to the server.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to exit, at most `limit` (then panics).
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.exited() {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "flare serve did not exit in {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The `flare serve` flags the SDK tests share: the name clients ask for, and a context and
/// cache (256 MiB) small enough for CI.
pub fn sdk_serve_args(served_name: &str) -> Vec<&str> {
    vec![
        "--served-model-name",
        served_name,
        "--max-model-len",
        "2048",
        "--kv-cache-memory",
        "268435456",
    ]
}

/// The tool fixture (SmolLM2's weights with a Qwen2.5/Hermes-style template,
/// tests/fixtures/make_tool_model.py) built into a fresh temporary directory named by `tag`.
/// Needs SmolLM2's HF conversion (models/fetch_smollm2.py --hf).
pub fn build_tool_model(tag: &str) -> PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = std::env::temp_dir().join(format!("flare-{tag}-{}", std::process::id()));
    let built = Command::new("python3")
        .arg(format!("{root}/tests/fixtures/make_tool_model.py"))
        .arg(&dir)
        .status()
        .expect("python3");
    assert!(
        built.success(),
        "make_tool_model.py failed (models/fetch_smollm2.py --hf?)"
    );
    dir
}

/// Runs `python3 -m pytest DIR -q` from the repository root with `envs` (and the offline
/// variables); panics with the log on failure, returns the summary line.
pub fn pytest(dir: &str, envs: &[(&str, String)]) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .args(["-m", "pytest", dir, "-q", "-p", "no:cacheprovider"])
        .current_dir(root)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .expect("python3");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pytest {dir} failed:\n{log}");
    log.lines().last().unwrap_or("").to_string()
}
