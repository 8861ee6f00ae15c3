//! `flare bench plot`: the figure of a saved result, e.g. one fetched from the GPU machine.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use flare::bench::figures::plot_result;
use flare::bench::result::BenchResult;

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// A result written by --save-result.
    pub result: PathBuf,
    /// The SVG to write (default: the result's path with .svg).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

pub fn run(args: PlotArgs) -> Result<()> {
    let result = BenchResult::load(&args.result)?;
    let out = args
        .output
        .unwrap_or_else(|| args.result.with_extension("svg"));
    plot_result(&result, &out)?;
    eprintln!("plotted {}", out.display());
    Ok(())
}
