//! Scale-out behind a real gateway: the LiteLLM proxy (deploy/litellm.yaml, as committed) in
//! front of two `flare serve` replicas of SmolLM2 on loopback. 200 requests go through the
//! proxy; one replica is SIGKILLed mid-run. Every request must still succeed (the proxy's
//! retries move the in-flight ones to the survivor); both replicas must have served some.
//! Everything the test starts is stopped before it returns.
//!
//! Needs the LiteLLM proxy's Python packages (models/requirements.txt; `FLARE_LITELLM_PYTHON`
//! names another interpreter) and the SmolLM2 GGUF in ~/.cache/flare/models.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const REQUESTS: usize = 200;
const CONCURRENCY: usize = 6;
/// Replica B is killed when this many requests have completed.
const KILL_AT: usize = 80;
const REPLICA_KEY: &str = "sk-flare-replica";

/// A child in its own process group; dropped: the group gets SIGKILL and is reaped.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{}", self.child.id())])
            .status();
    }

    /// SIGTERM, then SIGKILL after `grace`; true once the process has exited.
    fn stop(&mut self, grace: Duration) -> bool {
        self.signal("-TERM");
        let start = Instant::now();
        while start.elapsed() < grace {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.signal("-KILL");
        self.child.wait().is_ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal("-KILL");
            let _ = self.child.wait();
        }
    }
}

fn spawn(name: &'static str, cmd: &mut Command) -> Proc {
    let child = cmd
        .process_group(0)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    Proc { child, name }
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
        .timeout(Duration::from_secs(180))
        .build()
        .unwrap()
}

fn python() -> String {
    std::env::var("FLARE_LITELLM_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn replica(port: u16) -> Proc {
    let gguf = PathBuf::from(std::env::var("HOME").unwrap())
        .join(".cache/flare/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    spawn(
        "replica",
        Command::new(env!("CARGO_BIN_EXE_flare"))
            .arg("serve")
            .arg(&gguf)
            .args(["--port", &port.to_string(), "--served-model-name", "flare"])
            .args(["--kv-cache-memory", "67108864", "--max-model-len", "1024"])
            .env("FLARE_API_KEY", REPLICA_KEY)
            .env("HF_HUB_OFFLINE", "1")
            .env("RAYON_NUM_THREADS", "1")
            .env("RUST_LOG", "flare=warn"),
    )
}

async fn wait_for(url: &str, p: &mut Proc, limit: Duration) {
    let start = Instant::now();
    loop {
        if let Ok(r) = client().get(url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        if let Some(status) = p.child.try_wait().unwrap() {
            panic!("{} exited early: {status}", p.name);
        }
        assert!(start.elapsed() < limit, "{url} not ready after {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Requests a replica finished (any finish reason).
async fn served(port: u16) -> f64 {
    let text = client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("flare:request_success_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn litellm_proxy_spreads_over_two_replicas_and_survives_a_sigkill() {
    let check = Command::new(python())
        .args(["-c", "import litellm.proxy.proxy_server"])
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .output()
        .expect("python");
    assert!(
        check.status.success(),
        "the LiteLLM proxy does not import with {} (install models/requirements.txt): {}",
        python(),
        String::from_utf8_lossy(&check.stderr)
    );

    let (pa, pb, pp) = (free_port(), free_port(), free_port());
    let mut a = replica(pa);
    let mut b = replica(pb);
    let master = format!(
        "sk-{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/litellm.yaml");
    let mut proxy = spawn(
        "litellm",
        Command::new(python())
            .args(["-m", "litellm.proxy.proxy_cli", "--config"])
            .arg(&config)
            .args(["--host", "127.0.0.1", "--port", &pp.to_string()])
            .args(["--telemetry", "False"])
            .env("FLARE_REPLICA_A", format!("http://127.0.0.1:{pa}/v1"))
            .env("FLARE_REPLICA_B", format!("http://127.0.0.1:{pb}/v1"))
            .env("FLARE_API_KEY", REPLICA_KEY)
            .env("LITELLM_MASTER_KEY", &master)
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .env("HF_HUB_OFFLINE", "1")
            .env("NO_PROXY", "*")
            .stderr(Stdio::null()),
    );
    wait_for(
        &format!("http://127.0.0.1:{pa}/health"),
        &mut a,
        Duration::from_secs(180),
    )
    .await;
    wait_for(
        &format!("http://127.0.0.1:{pb}/health"),
        &mut b,
        Duration::from_secs(180),
    )
    .await;
    wait_for(
        &format!("http://127.0.0.1:{pp}/health/readiness"),
        &mut proxy,
        Duration::from_secs(180),
    )
    .await;
    let base_a = served(pa).await;
    let base_b = served(pb).await;

    let url = format!("http://127.0.0.1:{pp}/v1/chat/completions");
    let done = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (url, master, done, next, failures) = (
            url.clone(),
            master.clone(),
            done.clone(),
            next.clone(),
            failures.clone(),
        );
        workers.push(tokio::spawn(async move {
            let c = client();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= REQUESTS {
                    return;
                }
                let body = json!({
                    "model": "flare",
                    "messages": [{"role": "user", "content": format!("Count to {}.", i % 10 + 2)}],
                    "max_tokens": 3,
                    "temperature": 0,
                });
                let r = c.post(&url).bearer_auth(&master).json(&body).send().await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        if v["choices"][0]["message"]["content"].as_str().is_none() {
                            failures.lock().unwrap().push(format!("request {i}: {v}"));
                        }
                    }
                    Ok(r) => {
                        let s = r.status();
                        let t = r.text().await.unwrap_or_default();
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("request {i}: {s} {t}"));
                    }
                    Err(e) => failures.lock().unwrap().push(format!("request {i}: {e}")),
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Kill replica B mid-run, with requests in flight on it.
    let b_before_kill = loop {
        if done.load(Ordering::SeqCst) >= KILL_AT {
            let n = served(pb).await - base_b;
            b.signal("-KILL");
            let _ = b.child.wait();
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = start.elapsed();
    let a_total = served(pa).await - base_a;
    let failures = failures.lock().unwrap().clone();
    println!(
        "litellm proxy: {REQUESTS} requests, concurrency {CONCURRENCY}, {:.1} s; replica A \
         finished {a_total}, replica B finished {b_before_kill} before its SIGKILL at {KILL_AT} \
         completed; failed requests: {}",
        elapsed.as_secs_f64(),
        failures.len()
    );
    for f in &failures {
        println!("  {f}");
    }

    // Stop everything this test started, and check that it is gone.
    assert!(proxy.stop(Duration::from_secs(15)), "proxy stopped");
    assert!(a.stop(Duration::from_secs(30)), "replica A stopped");
    for p in [&mut a, &mut b, &mut proxy] {
        assert!(
            p.child.try_wait().unwrap().is_some(),
            "{} still running",
            p.name
        );
    }
    assert!(b_before_kill > 0.0, "replica B served before it was killed");
    assert!(a_total > 0.0, "replica A served");
    assert!(
        failures.is_empty(),
        "{} requests failed through the proxy (num_retries 3 should have moved them)",
        failures.len()
    );
    assert_eq!(done.load(Ordering::SeqCst), REQUESTS);
}
