//! The `--save-result` JSON: what ran (command, config), where (environment), and for each run
//! its metrics and the raw per-request or per-iteration numbers they came from.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::env::Environment;
use super::error::{BenchError, Result};
use super::metrics::{RequestRecord, ServeMetrics};
use super::offline::{LatencyIteration, LatencyMetrics, OfflineRequest, ThroughputMetrics};

/// Bumped when a field changes meaning or goes away (adding fields keeps it).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BenchKind {
    Serve,
    Throughput,
    Latency,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    pub schema_version: u32,
    pub benchmark: BenchKind,
    /// RFC 3339, local time with offset.
    pub date: String,
    /// The command line, argv[0] included.
    pub command: Vec<String>,
    /// Every setting of the benchmark (flags after defaults were applied).
    pub config: Value,
    pub environment: Environment,
    /// One per sweep point (a single one without a sweep).
    pub runs: Vec<Run>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Run {
    Serve(ServeRun),
    Throughput(ThroughputRun),
    Latency(LatencyRun),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServeRun {
    /// None: unlimited.
    pub max_concurrency: Option<usize>,
    /// Requests per second; None: infinite (JSON has no infinity).
    pub request_rate: Option<f64>,
    pub metrics: ServeMetrics,
    pub requests: Vec<RequestRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThroughputRun {
    pub max_num_seqs: usize,
    pub metrics: ThroughputMetrics,
    pub requests: Vec<OfflineRequest>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyRun {
    pub metrics: LatencyMetrics,
    pub iterations: Vec<LatencyIteration>,
}

impl BenchResult {
    /// A result stamped with the current time, command line and environment.
    pub fn new(benchmark: BenchKind, config: Value, runs: Vec<Run>) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            benchmark,
            date: chrono::Local::now().to_rfc3339(),
            command: std::env::args().collect(),
            config,
            environment: Environment::detect(),
            runs,
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |source| BenchError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text).map_err(io)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(serde_json::from_str(&text)?)
    }
}
