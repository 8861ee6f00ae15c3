//! The `flare` command line.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "flare",
    version,
    about = "Self-hosted inference engine for open-weight LLMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text for one prompt or a file of prompts (one continuous batch), streaming to stdout.
    Generate(cli::generate::GenerateArgs),
    /// Serve the OpenAI-compatible HTTP API (chat and text completions) for one model.
    Serve(cli::serve::ServeArgs),
    /// Benchmarks: offline throughput, batch latency, or a client against a serving endpoint.
    Bench(cli::bench::BenchArgs),
    /// Cascade routes: `route eval` replays a prompt set through a route at several thresholds.
    Route(cli::route::RouteArgs),
    /// Model quality checks: perplexity of a text (llama-perplexity's method).
    Eval(cli::eval::EvalArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "flare=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Generate(args) => cli::generate::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Route(args) => cli::route::run(args),
        Command::Eval(args) => cli::eval::run(args),
    }
}
