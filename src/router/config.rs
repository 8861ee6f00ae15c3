//! The `flare serve --config FILE` TOML: the models one process serves and the cascade routes
//! over them. Parsing and checking only; what the engine flags mean lives with `ModelArgs`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiConfig {
    /// Local models, each with its own engine, scheduler and KV budget.
    #[serde(default, rename = "models")]
    pub models: Vec<ModelEntry>,
    /// Virtual model names that cascade over targets.
    #[serde(default, rename = "routes")]
    pub routes: Vec<RouteConfig>,
}

/// One local model (the engine flags of `flare serve`, under the same names).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The name clients put in `model` (reported in responses).
    pub name: String,
    /// Further names that reach the same model.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Local HF directory, .gguf file or hub repo id; a relative path is taken from the
    /// config file's directory.
    pub model: String,
    #[serde(default)]
    pub load_format: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
    /// Bytes of memory for this model's KV cache.
    #[serde(default)]
    pub kv_cache_memory: Option<usize>,
    /// On a GPU without `kv_cache_memory`: this model's share (0..1] of
    /// `--gpu-memory-utilization`; the shares of all models add up to at most 1.
    #[serde(default)]
    pub gpu_memory_share: Option<f64>,
    #[serde(default)]
    pub max_model_len: Option<usize>,
    #[serde(default)]
    pub max_num_seqs: Option<usize>,
    #[serde(default)]
    pub max_num_batched_tokens: Option<usize>,
    #[serde(default)]
    pub block_size: Option<usize>,
    #[serde(default)]
    pub prefix_caching: Option<bool>,
    #[serde(default)]
    pub scheduling_policy: Option<String>,
    #[serde(default)]
    pub tool_call_parser: Option<String>,
    #[serde(default)]
    pub reasoning_parser: Option<String>,
}

impl ModelEntry {
    /// Every name this model answers to, the reported one first.
    pub fn names(&self) -> Vec<String> {
        std::iter::once(self.name.clone())
            .chain(self.aliases.iter().cloned())
            .collect()
    }
}

/// A cascade: the first target answers; when one of the confidence tests fails, the next one
/// is asked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The virtual model name (for example `auto`).
    pub name: String,
    /// In order; the last one's answer is final.
    pub targets: Vec<TargetConfig>,
    #[serde(default)]
    pub escalate: EscalateConfig,
    /// Streaming: how many tokens of a target are held back before the route commits to it
    /// (judged on those tokens); an answer that ends sooner is judged whole.
    #[serde(default = "default_commit_after")]
    pub commit_after_tokens: usize,
    /// JSONL telemetry: one line per routed request.
    #[serde(default)]
    pub telemetry: Option<PathBuf>,
    /// Put the prompt text into the telemetry lines (off by default).
    #[serde(default)]
    pub log_prompts: bool,
}

fn default_commit_after() -> usize {
    32
}

/// When an answer is passed on to the next target. Every test is off unless set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalateConfig {
    /// Escalate when the mean token logprob of the answer is below this.
    #[serde(default)]
    pub min_mean_logprob: Option<f64>,
    /// Escalate when any token's logprob is below this.
    #[serde(default)]
    pub min_token_logprob: Option<f64>,
    /// Escalate when the answer stopped at `max_tokens` (finish reason `length`).
    #[serde(default)]
    pub on_length: bool,
    /// Escalate when the request has a JSON `response_format` and the answer does not parse.
    #[serde(default)]
    pub on_parse_failure: bool,
}

/// A local model (by its name) or an upstream OpenAI-compatible endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Local: a model name of this file. Upstream: the model name the endpoint expects.
    pub model: String,
    /// Upstream base URL up to `/v1` (for example `http://10.0.0.2:8000/v1`); absent: local.
    #[serde(default)]
    pub url: Option<String>,
    /// Environment variable holding the upstream's API key (sent as a bearer token).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The name reported in `model` and `x-flare-model` (default: `model`).
    #[serde(default)]
    pub name: Option<String>,
    /// Retries of an upstream after a connect error, a 5xx or a 429.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First backoff between retries; doubled after each.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Whole-request timeout of an upstream call, in seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Price per 1000 tokens (prompt and completion), for `flare route eval`'s cost column.
    #[serde(default)]
    pub cost_per_1k_tokens: f64,
}

fn default_retries() -> u32 {
    2
}
fn default_backoff_ms() -> u64 {
    100
}
fn default_timeout_s() -> u64 {
    120
}

impl TargetConfig {
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.model)
    }

    pub fn is_upstream(&self) -> bool {
        self.url.is_some()
    }
}

impl MultiConfig {
    /// Reads and checks `path`; relative model paths become relative to its directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut cfg: MultiConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for m in &mut cfg.models {
            m.model = resolve(dir, &m.model);
        }
        for r in &mut cfg.routes {
            if let Some(t) = &r.telemetry {
                if t.is_relative() {
                    r.telemetry = Some(dir.join(t));
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: MultiConfig = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Names are unique across models and routes, targets exist, shares fit.
    pub fn validate(&self) -> Result<()> {
        if self.models.is_empty() && self.routes.is_empty() {
            bail!("the config names no [[models]] and no [[routes]]");
        }
        let mut seen = HashSet::new();
        for name in self
            .models
            .iter()
            .flat_map(|m| m.names())
            .chain(self.routes.iter().map(|r| r.name.clone()))
        {
            if name.is_empty() {
                bail!("a model or route name is empty");
            }
            if !seen.insert(name.clone()) {
                bail!("the name `{name}` is used twice");
            }
        }
        let share: f64 = self.models.iter().filter_map(|m| m.gpu_memory_share).sum();
        for m in &self.models {
            if let Some(s) = m.gpu_memory_share {
                if !(s > 0.0 && s <= 1.0) {
                    bail!("model `{}`: gpu_memory_share must be in (0, 1]", m.name);
                }
            }
        }
        if share > 1.0 + 1e-9 {
            bail!("the models' gpu_memory_share values add up to {share}, more than 1");
        }
        let local: HashSet<String> = self.models.iter().flat_map(|m| m.names()).collect();
        for r in &self.routes {
            if r.targets.is_empty() {
                bail!("route `{}` has no targets", r.name);
            }
            for t in &r.targets {
                match &t.url {
                    None if !local.contains(&t.model) => bail!(
                        "route `{}`: target `{}` is not a model of this file (give `url` for an \
                         upstream)",
                        r.name,
                        t.model
                    ),
                    None if t.api_key_env.is_some() => bail!(
                        "route `{}`: target `{}` is local; `api_key_env` is for upstreams",
                        r.name,
                        t.model
                    ),
                    Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                        bail!("route `{}`: target url `{u}` is not http(s)", r.name)
                    }
                    _ => {}
                }
            }
            if r.commit_after_tokens == 0 {
                bail!("route `{}`: commit_after_tokens must be at least 1", r.name);
            }
        }
        Ok(())
    }
}

fn resolve(dir: &Path, model: &str) -> String {
    if let Some(rest) = model.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest).display().to_string();
        }
    }
    let p = Path::new(model);
    let candidate = dir.join(p);
    // A hub id (org/name) is left alone unless a file of that name sits beside the config.
    if p.is_relative()
        && (candidate.exists() || model.starts_with("./") || model.starts_with("../"))
    {
        candidate.display().to_string()
    } else {
        model.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
        [[models]]
        name = "small"
        model = "a.gguf"
        kv_cache_memory = 1000

        [[models]]
        name = "big"
        aliases = ["large"]
        model = "b"

        [[routes]]
        name = "auto"
        escalate = { min_mean_logprob = -1.0, on_length = true }
        [[routes.targets]]
        model = "small"
        [[routes.targets]]
        model = "gpt"
        url = "http://127.0.0.1:9/v1"
        api_key_env = "UP_KEY"
    "#;

    #[test]
    fn parses_models_and_routes() {
        let c = MultiConfig::from_toml(OK).unwrap();
        assert_eq!(c.models.len(), 2);
        assert_eq!(c.models[1].names(), ["big", "large"]);
        let r = &c.routes[0];
        assert_eq!(r.escalate.min_mean_logprob, Some(-1.0));
        assert!(r.escalate.on_length && !r.escalate.on_parse_failure);
        assert!(r.targets[1].is_upstream());
        assert_eq!(r.targets[1].retries, 2);
        assert_eq!(r.commit_after_tokens, 32);
    }

    #[test]
    fn refuses_unknown_fields_duplicates_and_missing_targets() {
        let typo = OK.replace("kv_cache_memory", "kv_cache_mem");
        assert!(MultiConfig::from_toml(&typo).is_err());
        let dup = OK.replace("name = \"auto\"", "name = \"large\"");
        let e = MultiConfig::from_toml(&dup).unwrap_err().to_string();
        assert!(e.contains("`large` is used twice"), "{e}");
        let missing = OK.replace(
            "model = \"small\"\n        [[routes",
            "model = \"tiny\"\n        [[routes",
        );
        let e = MultiConfig::from_toml(&missing).unwrap_err().to_string();
        assert!(e.contains("`tiny` is not a model"), "{e}");
    }
}
