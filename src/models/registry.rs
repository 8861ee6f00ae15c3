//! Which family serves a checkpoint: `config.json`'s `model_type` (or GGUF's
//! `general.architecture`) to the family's config reader and model builder.
//! Adding a family is one file under src/models/ plus one line in [`FAMILIES`].

use anyhow::{bail, Result};

use candle_core::quantized::gguf_file;

use super::config::ModelConfig;
use super::weights::Weights;
use super::CausalLm;

pub struct Family {
    pub name: &'static str,
    /// HF `model_type` values this family reads.
    pub model_types: &'static [&'static str],
    /// Fills the family's own keys into a config whose common (Llama) keys are already read.
    pub configure: fn(&serde_json::Value, &mut ModelConfig) -> Result<()>,
    /// GGUF `general.architecture` values this family reads (empty: no GGUF support yet).
    pub gguf_architectures: &'static [&'static str],
    /// Like `configure`, from GGUF metadata (`<arch>.*` keys) after the common keys.
    pub configure_gguf: fn(&gguf_file::Content, &mut ModelConfig) -> Result<()>,
    pub build: fn(ModelConfig, &Weights) -> Result<Box<dyn CausalLm>>,
}

pub static FAMILIES: &[&Family] = &[
    &super::llama::FAMILY,
    &super::qwen3::FAMILY,
    &super::gemma3::FAMILY,
    &super::mixtral::FAMILY,
    &super::qwen3_moe::FAMILY,
    &super::phi3::FAMILY,
    &super::gpt_oss::FAMILY,
    &super::deepseek::FAMILY_V3,
    &super::deepseek::FAMILY_V2,
];

pub fn family_for_model_type(model_type: &str) -> Result<&'static Family> {
    match FAMILIES
        .iter()
        .find(|f| f.model_types.contains(&model_type))
    {
        Some(f) => Ok(f),
        None => {
            let known: Vec<&str> = FAMILIES
                .iter()
                .flat_map(|f| f.model_types.iter().copied())
                .collect();
            bail!(
                "unsupported model_type `{model_type}` (supported: {})",
                known.join(", ")
            )
        }
    }
}

pub fn family_for_gguf_architecture(arch: &str) -> Result<&'static Family> {
    match FAMILIES
        .iter()
        .find(|f| f.gguf_architectures.contains(&arch))
    {
        Some(f) => Ok(f),
        None => {
            let known: Vec<&str> = FAMILIES
                .iter()
                .flat_map(|f| f.gguf_architectures.iter().copied())
                .collect();
            bail!(
                "unsupported GGUF architecture `{arch}` (supported: {})",
                known.join(", ")
            )
        }
    }
}

/// For families whose GGUF needs nothing beyond the common keys.
pub fn no_gguf_keys(_: &gguf_file::Content, _: &mut ModelConfig) -> Result<()> {
    Ok(())
}

/// Builds the model of a parsed config.
pub fn build(cfg: ModelConfig, w: &Weights) -> Result<Box<dyn CausalLm>> {
    let family = family_for_model_type(&cfg.model_type)?;
    (family.build)(cfg, w)
}
