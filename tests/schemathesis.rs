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

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::process::FlareProcess;
use common::{client, get, metric, metrics, post};
use serde_json::json;

const MODEL: &str = "tiny";
/// ChatML, as SmolLM2 uses.
const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The refusals of cross-field constraints (see the module doc), by their error text.
const CROSS_FIELD: [&str; 2] = [
    // OpenAI's error (code `context_length_exceeded`) and Anthropic's carry this message.
    "This model's maximum context length is",
    "must not exceed `max_tokens`",
];

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_the_document_true() {
    let dir = model_dir("schemathesis");
    let log = dir.join("server.log");
    let server = FlareProcess::start_logged(
        &dir,
        &["--served-model-name", MODEL, "--max-model-len", "512"],
        &[],
        &log,
    )
    .await;
    let base = server.base.clone();

    // schemathesis runs in its own process: blocking this worker meanwhile is fine.
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
    let c = client();
    let m = metrics(&c, &server).await;
    for name in [
        "flare:num_requests_running",
        "flare:num_requests_waiting",
        "flare:kv_cache_used_blocks",
    ] {
        assert_eq!(metric(&m, name), Some(0.0), "{name}\n{m}");
    }
    assert_eq!(get(&c, &format!("{base}/health")).await.0, 200);
    let server_log = std::fs::read_to_string(&log).unwrap();
    assert!(!server_log.contains("panicked"), "{server_log}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--log-requests`: one `flare::requests` line per request with its counts, and never the
/// prompt or output text (here or in any other log line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_requests_logs_counts_and_never_text() {
    let dir = model_dir("log-requests");
    let log = dir.join("requests.log");
    let mut server = FlareProcess::start_logged(
        &dir,
        &[
            "--served-model-name",
            MODEL,
            "--max-model-len",
            "128",
            "--log-requests",
        ],
        &[("RUST_LOG", "flare=debug"), ("NO_COLOR", "1")],
        &log,
    )
    .await;
    let secret = "zebra-quartz-secret-prompt";
    let (status, body) = post(
        &client(),
        &format!("{}/v1/completions", server.base),
        json!({"prompt": secret, "max_tokens": 5, "ignore_eos": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let output = body["choices"][0]["text"].as_str().unwrap().to_string();
    server.signal("TERM");
    server.wait_exit(Duration::from_secs(30)).await;
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
