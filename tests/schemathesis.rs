//! schemathesis (models/requirements.txt) against a live `flare serve` of the tiny llama fixture
//! (with a ChatML template added, so the chat endpoint is served too) on a free loopback port:
//! every check (`--checks all`), the coverage, fuzzing and stateful phases, 30 examples per
//! operation in deterministic mode (the same cases on every run).
//!
//! The served /openapi.json must describe the server: a request it calls valid is accepted, one
//! it calls invalid is refused with a documented status, responses and SSE events match their
//! schemas, and nothing is a 5xx. Afterwards no request may run and no KV block may be held, and
//! the server must not have panicked.
//!
//! Every operation is run, the Responses and Anthropic Messages POSTs included.
//!
//! Two constraints relate two fields and JSON Schema cannot state them: prompt tokens plus
//! `max_tokens` fit in `max_model_len` (400 `context_length_exceeded`), and `min_tokens` does
//! not exceed `max_tokens`. schemathesis reports those as "schema-valid request rejected"; the
//! test accepts exactly those two refusals, recognised by their error, and fails on any other
//! finding.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "tiny";
/// ChatML, as SmolLM2 uses.
const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The refusals of cross-field constraints (see the module doc), by their error text.
const CROSS_FIELD: [&str; 2] = [
    // OpenAI's error (code `context_length_exceeded`) and Anthropic's carry this message.
    "This model's maximum context length is",
    "must not exceed `max_tokens`",
];

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

/// A plain HTTP/1.1 GET on loopback: (status, body).
fn get(base: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split(' ').nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// The tiny llama fixture plus a chat template, in a temporary directory.
fn model_dir(tag: &str) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    let dir = std::env::temp_dir().join(format!("flare-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    std::fs::write(dir.join("chat_template.jinja"), CHATML).unwrap();
    dir
}

/// The failure blocks of schemathesis' text output: (title line, response body line).
fn failures(out: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = out.lines().collect();
    let mut found = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(title) = l.strip_prefix("- ") {
            let body = lines[i..]
                .iter()
                .skip(1)
                .take_while(|l| !l.starts_with("- ") && !l.contains("Test Case ID"))
                .find(|l| l.trim_start().starts_with('`'))
                .map(|l| l.trim().to_string())
                .unwrap_or_default();
            found.push((title.to_string(), body));
        }
    }
    found
}

#[test]
fn schemathesis_finds_the_document_true() {
    let dir = model_dir("schemathesis");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = dir.join("server.log");
    let child = Command::new(env!("CARGO_BIN_EXE_flare"))
        .arg("serve")
        .arg(&dir)
        .args(["--port", &port.to_string(), "--served-model-name", MODEL])
        .args(["--max-model-len", "512"])
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_LOG", "flare=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("flare binary");
    let mut server = Server(child);
    let start = Instant::now();
    while get(&base, "/health").map(|r| r.0) != Some(200) {
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("flare serve exited early: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(120), "not healthy");
        std::thread::sleep(Duration::from_millis(100));
    }

    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let out = Command::new("python3")
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("{base}/openapi.json"))
        .args([
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
        ])
        .args(["--max-examples", "30", "--generation-deterministic"])
        .args([
            "--continue-on-failure",
            "--request-timeout",
            "30",
            "--no-color",
        ])
        // Its caches (.hypothesis, .schemathesis) go to the temporary directory.
        .current_dir(&dir)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", &hooks)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Schemathesis v"),
        "schemathesis did not run (pip install -r models/requirements.txt?):\n{text}"
    );
    let summary: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect();
    eprintln!("{}", summary.join("\n"));
    assert!(
        !text.contains("Errors:") && !text.contains("🚫"),
        "schemathesis errors:\n{text}"
    );
    let found = failures(&text);
    let unexpected: Vec<_> = found
        .iter()
        .filter(|(title, body)| {
            !(title.contains("Schema-valid request rejected")
                && CROSS_FIELD.iter().any(|m| body.contains(m)))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "schemathesis failures: {unexpected:#?}\n{text}"
    );
    let generated = text
        .lines()
        .find(|l| l.contains(" generated"))
        .unwrap_or("?")
        .trim();
    eprintln!(
        "schemathesis: {generated}; {} accepted cross-field refusals, 0 other failures",
        found.len()
    );

    // Nothing left running or held, and no panic.
    let (s, m) = get(&base, "/metrics").unwrap();
    assert_eq!(s, 200);
    for name in [
        "flare:num_requests_running",
        "flare:num_requests_waiting",
        "flare:kv_cache_used_blocks",
    ] {
        assert_eq!(metric(&m, name), 0.0, "{name}\n{m}");
    }
    assert_eq!(get(&base, "/health").unwrap().0, 200);
    let server_log = std::fs::read_to_string(&log).unwrap();
    assert!(!server_log.contains("panicked"), "{server_log}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--log-requests`: one `flare::requests` line per request with its counts, and never the
/// prompt or output text (here or in any other log line).
#[test]
fn log_requests_logs_counts_and_never_text() {
    let dir = model_dir("log-requests");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = dir.join("requests.log");
    let child = Command::new(env!("CARGO_BIN_EXE_flare"))
        .arg("serve")
        .arg(&dir)
        .args(["--port", &port.to_string(), "--served-model-name", MODEL])
        .args(["--max-model-len", "128", "--log-requests"])
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_LOG", "flare=debug")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("flare binary");
    let mut server = Server(child);
    let start = Instant::now();
    while get(&base, "/health").map(|r| r.0) != Some(200) {
        assert!(server.0.try_wait().unwrap().is_none(), "flare serve exited");
        assert!(start.elapsed() < Duration::from_secs(120), "not healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    let secret = "zebra-quartz-secret-prompt";
    let body = format!(r#"{{"prompt":"{secret}","max_tokens":5,"ignore_eos":true}}"#);
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let text: serde_json::Value =
        serde_json::from_str(resp.split_once("\r\n\r\n").unwrap().1).unwrap();
    let output = text["choices"][0]["text"].as_str().unwrap().to_string();
    let _ = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status();
    let _ = server.0.wait();
    let logged = std::fs::read_to_string(&log).unwrap();
    let line = logged
        .lines()
        .find(|l| l.contains("flare::requests"))
        .unwrap_or_else(|| panic!("no request line:\n{logged}"));
    for field in [
        "outcome=\"length\"",
        "completion_tokens=5",
        "key=\"-\"",
        "latency_ms=",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    assert!(!logged.contains(secret), "the prompt was logged:\n{logged}");
    if output.trim().len() > 3 {
        assert!(
            !logged.contains(output.trim()),
            "the output was logged:\n{logged}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
