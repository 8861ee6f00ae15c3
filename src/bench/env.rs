//! The machine a result was measured on: CPU and GPU names, thread count, flare version and
//! commit, so a number in benches/results/ can be traced to its hardware and code.

use std::process::Command;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Environment {
    pub flare_version: String,
    /// `git describe`-style commit of the working tree the command ran in, `-dirty` if modified.
    pub git_commit: Option<String>,
    pub cpu: Option<String>,
    pub num_cpus: usize,
    /// CANDLE_NUM_THREADS as set (candle's CPU kernels use this many threads).
    pub candle_num_threads: Option<String>,
    /// /proc/loadavg when the run ended: other work on the machine skews CPU numbers.
    pub load_average: Option<String>,
    /// One entry per GPU `nvidia-smi` lists; empty without one.
    pub gpus: Vec<String>,
    pub os: String,
    /// Whether the binary was built with the `cuda` feature.
    pub cuda_build: bool,
}

impl Environment {
    pub fn detect() -> Self {
        Self {
            flare_version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: git_commit(),
            cpu: cpu_name(),
            num_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            candle_num_threads: std::env::var("CANDLE_NUM_THREADS").ok(),
            load_average: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
            gpus: gpu_names(),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            cuda_build: cfg!(feature = "cuda"),
        }
    }
}

fn output_of(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git_commit() -> Option<String> {
    if let Some(c) = option_env!("FLARE_GIT_COMMIT") {
        return Some(c.to_string());
    }
    let commit = output_of("git", &["rev-parse", "--short=12", "HEAD"])?;
    let dirty = output_of("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

fn cpu_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn gpu_names() -> Vec<String> {
    output_of(
        "nvidia-smi",
        &[
            "--query-gpu=name,memory.total,driver_version",
            "--format=csv,noheader",
        ],
    )
    .map(|s| s.lines().map(|l| l.trim().to_string()).collect())
    .unwrap_or_default()
}
