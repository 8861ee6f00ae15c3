//! Named models for benchmarks (`--preset`): where real weights come from, and the model's
//! `config.json` (models/presets/), which is all a random-weight (`--load-format dummy`) run
//! needs, so a GPU machine without the checkpoint can still benchmark the shape.

use crate::models::config::LlamaConfig;

use super::error::{BenchError, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    /// Hub repo id of the real weights; None: flare's default model (GGUF in its cache).
    pub hub_id: Option<&'static str>,
    /// The HF config.json of the model.
    pub config_json: &'static str,
}

macro_rules! preset_config {
    ($file:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/presets/",
            $file
        ))
    };
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "smollm2-135m-q4",
        hub_id: None,
        config_json: preset_config!("smollm2-135m.json"),
    },
    Preset {
        name: "smollm2-135m",
        hub_id: Some("HuggingFaceTB/SmolLM2-135M-Instruct"),
        config_json: preset_config!("smollm2-135m.json"),
    },
    Preset {
        name: "smollm2-360m",
        hub_id: Some("HuggingFaceTB/SmolLM2-360M-Instruct"),
        config_json: preset_config!("smollm2-360m.json"),
    },
    Preset {
        name: "qwen2.5-0.5b",
        hub_id: Some("Qwen/Qwen2.5-0.5B-Instruct"),
        config_json: preset_config!("qwen2.5-0.5b.json"),
    },
    Preset {
        name: "llama-3.2-1b",
        hub_id: Some("meta-llama/Llama-3.2-1B-Instruct"),
        config_json: preset_config!("llama-3.2-1b.json"),
    },
    Preset {
        name: "llama-3.1-8b",
        hub_id: Some("meta-llama/Llama-3.1-8B-Instruct"),
        config_json: preset_config!("llama-3.1-8b.json"),
    },
];

pub fn find(name: &str) -> Result<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        BenchError::Config(format!(
            "unknown preset `{name}` (known: {})",
            names.join(", ")
        ))
    })
}

impl Preset {
    pub fn config(&self) -> Result<LlamaConfig> {
        LlamaConfig::from_hf_json(self.config_json)
            .map_err(|e| BenchError::Config(format!("preset {}: {e:#}", self.name)))
    }
}

/// Parameters of a Llama-family model, biases and untied LM head included (for reports of
/// model size and of bytes read per decode step).
pub fn num_params(c: &LlamaConfig) -> u64 {
    let (h, hd) = (c.hidden_size as u64, c.head_dim as u64);
    let (q, kv) = (
        c.num_attention_heads as u64 * hd,
        c.num_key_value_heads as u64 * hd,
    );
    let inter = c.intermediate_size as u64;
    let mut layer = h * q + 2 * h * kv + q * h + 3 * h * inter + 2 * h;
    if c.qkv_bias {
        layer += q + 2 * kv;
    }
    if c.o_bias {
        layer += h;
    }
    if c.mlp_bias {
        layer += 2 * inter + h;
    }
    let embed = c.vocab_size as u64 * h;
    let head = if c.tie_word_embeddings { 0 } else { embed };
    embed + c.num_hidden_layers as u64 * layer + h + head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_configs_parse_to_the_published_parameter_counts() {
        // Counts as the model cards state them (safetensors metadata).
        let expected = [
            ("smollm2-135m", 134_515_008u64),
            ("smollm2-360m", 361_821_120),
            ("qwen2.5-0.5b", 494_032_768),
            ("llama-3.2-1b", 1_235_814_400),
            ("llama-3.1-8b", 8_030_261_248),
        ];
        for (name, params) in expected {
            let cfg = find(name).unwrap().config().unwrap();
            assert_eq!(num_params(&cfg), params, "{name}");
        }
        assert!(find("smollm2-135m-q4").unwrap().hub_id.is_none());
        assert!(find("gpt-5").is_err());
    }
}
