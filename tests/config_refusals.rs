//! No silent acceptance at load: checkpoint features that flare does not implement are errors
//! that name them (each case is a real tiny config with one key changed).

use flare::models::config::ModelConfig;
use serde_json::{json, Value};

fn config(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/{name}/config.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn refused(name: &str, edit: impl FnOnce(&mut Value), needle: &str) {
    let mut c = config(name);
    ModelConfig::from_hf_json(&c.to_string()).unwrap_or_else(|e| panic!("{name} as is: {e:#}"));
    edit(&mut c);
    let err = ModelConfig::from_hf_json(&c.to_string())
        .map(|_| ())
        .expect_err(&format!("{name} with {needle} loaded"));
    let msg = format!("{err:#}");
    assert!(msg.contains(needle), "{name}: {msg}");
}

#[test]
fn unimplemented_checkpoint_features_are_load_errors_naming_them() {
    // Longrope with factors that do not fit the rotary dims (6 for 12 of 16 dims), or without
    // its original context length; a partial rotary factor outside (0, 1].
    refused(
        "tiny-phi3-longrope",
        |c| {
            for key in ["rope_scaling", "rope_parameters"] {
                c[key]["short_factor"] = json!(vec![1.0; 8]);
            }
        },
        "longrope with 8 short and 6 long factors",
    );
    refused(
        "tiny-phi3-longrope",
        |c| {
            c.as_object_mut()
                .unwrap()
                .remove("original_max_position_embeddings");
            for key in ["rope_scaling", "rope_parameters"] {
                c[key]
                    .as_object_mut()
                    .unwrap()
                    .remove("original_max_position_embeddings");
            }
        },
        "original_max_position_embeddings",
    );
    refused(
        "tiny-phi3",
        |c| c["partial_rotary_factor"] = json!(1.5),
        "partial_rotary_factor",
    );
    refused(
        "tiny-gpt-oss",
        // MXFP4 experts load (tests/quant_formats.rs); other methods are not wired for gpt-oss.
        |c| c["quantization_config"] = json!({"quant_method": "gptq", "bits": 4}),
        "gptq",
    );
    refused(
        "tiny-deepseek-v3",
        |c| c["quantization_config"] = json!({"quant_method": "fp8"}),
        "fp8",
    );
    refused(
        "tiny-deepseek-v2",
        |c| c["topk_method"] = json!("sparsemixer"),
        "sparsemixer",
    );
    refused(
        "tiny-gemma3",
        |c| c["attn_logit_softcapping"] = json!(50.0),
        "attn_logit_softcapping",
    );
    refused(
        "tiny-gemma3",
        |c| c["use_bidirectional_attention"] = json!(true),
        "use_bidirectional_attention",
    );
    refused(
        "tiny-gemma3",
        |c| c["hidden_activation"] = json!("relu"),
        "relu",
    );
    refused(
        "tiny-deepseek-v3",
        |c| c["scoring_func"] = json!("softmax"),
        "scoring_func",
    );
    refused("tiny-qwen3", |c| c["model_type"] = json!("mamba"), "mamba");
    refused(
        "tiny-qwen3",
        |c| c["architectures"] = json!(["Qwen3ForSequenceClassification"]),
        "Qwen3ForSequenceClassification",
    );
}

/// A `--max-model-len` past the positions a checkpoint was made for is a load error naming the
/// flag (vLLM's rule); up to them it loads. The tiny gpt-oss config: 512 positions but YaRN
/// from 64 by 4, so 256.
#[test]
fn a_max_model_len_past_the_checkpoints_positions_is_refused() {
    use flare::engine::{build_engine, EngineArgs};
    let build = |name: &str, len: usize| {
        build_engine(&EngineArgs {
            model: Some(format!(
                "{}/tests/fixtures/{name}",
                env!("CARGO_MANIFEST_DIR")
            )),
            kv_cache_memory: Some(8 << 20),
            max_model_len: Some(len),
            ..EngineArgs::default()
        })
    };
    for (name, most) in [("tiny-llama", 512), ("tiny-gpt-oss", 256)] {
        let loaded = build(name, most).unwrap_or_else(|e| panic!("{name} at {most}: {e:#}"));
        assert_eq!(loaded.max_model_len, most);
        let err = build(name, most + 1)
            .err()
            .expect("loaded past its positions");
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("--max-model-len {}", most + 1))
                && msg.contains("FLARE_ALLOW_LONG_MAX_MODEL_LEN"),
            "{name}: {msg}"
        );
    }
}
