//! The optional JSONL log of a route: one line per routed request, for tuning thresholds.
//! No prompt text unless the route sets `log_prompts`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::Serialize;

/// One target's part in a routed request.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub target: String,
    /// `kept`, `escalated`, `failed`, or `final` (the last target: kept whatever it said).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub mean_logprob: Option<f64>,
    pub min_logprob: Option<f64>,
    pub finish_length: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parses: Option<bool>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_ms: u64,
}

/// One routed request.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub ts_ms: u64,
    pub route: String,
    pub api: &'static str,
    pub stream: bool,
    /// The target whose answer the client got; None: no target answered (an error went back).
    pub answered_by: Option<String>,
    pub escalated: bool,
    /// An answer of an earlier target went back because every later one failed.
    pub fallback: bool,
    pub attempts: Vec<Attempt>,
    pub latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<serde_json::Value>,
}

pub struct Telemetry {
    file: Mutex<File>,
}

impl Telemetry {
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening route telemetry {}", path.display()))?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// Appends one line (a write error is logged, never fails the request).
    pub fn write(&self, line: &Line) {
        let mut text = match serde_json::to_string(line) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("route telemetry: {e}");
                return;
            }
        };
        text.push('\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_all(text.as_bytes()).and_then(|()| f.flush()) {
            tracing::warn!("route telemetry: {e}");
        }
    }
}
