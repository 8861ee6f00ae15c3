//! `flare bench`: offline throughput and batch latency of the in-process engine, and a serving
//! benchmark client for any OpenAI-compatible server.

mod common;
mod latency;
mod plot;
mod report;
mod serve;
mod throughput;

use anyhow::Result;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Offline throughput: queue every prompt at once, report requests/s and tokens/s.
    Throughput(throughput::ThroughputArgs),
    /// Batch latency: prefill time and per-token decode latency over timed iterations.
    Latency(latency::LatencyArgs),
    /// Serving benchmark against an OpenAI-compatible server (flare, vLLM, llama.cpp, ...).
    Serve(serve::ServeArgs),
    /// Draw the figure of a saved result (--save-result JSON) again.
    Plot(plot::PlotArgs),
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.command {
        BenchCommand::Throughput(a) => throughput::run(a),
        BenchCommand::Latency(a) => latency::run(a),
        BenchCommand::Serve(a) => serve::run(a),
        BenchCommand::Plot(a) => plot::run(a),
    }
}
