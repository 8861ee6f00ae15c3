//! Which family serves a checkpoint: `config.json`'s `model_type` (or GGUF's
//! `general.architecture`) to the family's config reader and model builder.
//! Adding a family is one file under src/models/ plus one line in [`FAMILIES`].

use anyhow::{bail, Result};

use super::config::ModelConfig;
use super::weights::Weights;
use super::CausalLm;

pub struct Family {
    pub name: &'static str,
    /// HF `model_type` values this family reads.
    pub model_types: &'static [&'static str],
    /// Fills the family's own keys into a config whose common (Llama) keys are already read.
    pub configure: fn(&serde_json::Value, &mut ModelConfig) -> Result<()>,
    pub build: fn(ModelConfig, &Weights) -> Result<Box<dyn CausalLm>>,
}

pub static FAMILIES: &[&Family] = &[
    &super::llama::FAMILY,
    &super::qwen3::FAMILY,
    &super::gemma3::FAMILY,
    &super::mixtral::FAMILY,
    &super::qwen3_moe::FAMILY,
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

/// Builds the model of a parsed config.
pub fn build(cfg: ModelConfig, w: &Weights) -> Result<Box<dyn CausalLm>> {
    let family = family_for_model_type(&cfg.model_type)?;
    (family.build)(cfg, w)
}
