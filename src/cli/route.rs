//! `flare route eval`: how a cascade route would do on a prompt set at several thresholds.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use flare::engine::EngineArgs;
use flare::router::{eval, serve as multi, MultiConfig};
use flare::server::ServerConfig;

use super::common::ModelArgs;
use super::multi::model_args;

#[derive(Args, Debug)]
pub struct RouteArgs {
    #[command(subcommand)]
    pub command: RouteCommand,
}

#[derive(Subcommand, Debug)]
pub enum RouteCommand {
    /// Replay a JSONL prompt set (`prompt` or `messages`, and `expected`) through every target
    /// of a route; print accuracy, escalation rate and cost per mean-logprob threshold.
    Eval(EvalArgs),
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The `flare serve --config` file that defines the route and its models.
    #[arg(long)]
    pub config: PathBuf,
    /// The route's name; default: the file's only route.
    #[arg(long)]
    pub route: Option<String>,
    /// JSONL prompt set.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Thresholds of the mean token logprob test to try (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        default_value = "-0.25,-0.5,-1,-2"
    )]
    pub thresholds: Vec<f64>,
    /// max_tokens of prompts that do not set their own.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: u64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Engine flags every model of the file starts from (as `flare serve`).
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: RouteArgs) -> Result<()> {
    match args.command {
        RouteCommand::Eval(a) => run_eval(a),
    }
}

fn run_eval(args: EvalArgs) -> Result<()> {
    let cfg = MultiConfig::load(&args.config)?;
    let route = match &args.route {
        Some(name) => cfg
            .routes
            .iter()
            .find(|r| &r.name == name)
            .with_context(|| format!("no route `{name}` in {}", args.config.display()))?,
        None if cfg.routes.len() == 1 => &cfg.routes[0],
        None => bail!(
            "the config has {} routes; name one with --route",
            cfg.routes.len()
        ),
    }
    .clone();
    let items = eval::load_items(&args.prompts)?;
    // Only the models the route uses are loaded.
    let used: Vec<String> = route.targets.iter().map(|t| t.model.clone()).collect();
    let base = ServerConfig {
        served_model_names: vec![multi::ALL_MODELS.into()],
        ..ServerConfig::default()
    };
    let mut configs = Vec::new();
    let mut engine_args: Vec<Result<EngineArgs, String>> = Vec::new();
    for m in &cfg.models {
        configs.push(ServerConfig {
            served_model_names: m.names(),
            model_root: m.model.clone(),
            ..base.clone()
        });
        if m.names().iter().any(|n| used.contains(n)) {
            engine_args.push(
                model_args(&args.model, m)
                    .engine_args()
                    .map_err(|e| format!("{e:#}")),
            );
        } else {
            engine_args.push(Err("not used by the route".into()));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let front = multi::build(&cfg, &base, configs)?;
        multi::load_all(&front, engine_args).await;
        for m in &front.models {
            if let Some(e) = m
                .failure()
                .filter(|_| m.names.iter().any(|n| used.contains(n)))
            {
                bail!("model `{}` did not load: {e}", m.names[0]);
            }
        }
        let r = front
            .routes
            .iter()
            .find(|r| r.name() == route.name)
            .expect("built from the same config");
        let report = eval::evaluate(r, &items, &args.thresholds, args.max_tokens).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", eval::render(&report));
        }
        for m in &front.models {
            if let Some(engine) = m.state.engine().cloned() {
                tokio::task::spawn_blocking(move || engine.shutdown()).await?;
            }
        }
        Ok(())
    })
}
