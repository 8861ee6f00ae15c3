//! `--load-format dummy`: random weights for a real config, made on the target device in the
//! target dtype, so 8B-scale speed can be measured without downloading weights (vLLM's
//! `--load-format dummy`).
//!
//! The values are uniform with the std of HF's `initializer_range` (0.02) and norm weights of
//! one, so activations and logits stay finite through every layer. Large tensors are filled
//! in row chunks of at most `CHUNK` elements: the only f32 staging is one chunk, never the model.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use rand::{Rng, SeedableRng};

use super::config::ModelConfig;
use super::weights::Weights;
use super::CausalLm;
use crate::tokenizer::Tokenizer;

/// Bundled HF `config.json` files of real models (`preset:NAME`).
pub const PRESETS: &[(&str, &str)] = &[
    (
        "llama-3.1-8b",
        include_str!("../../models/presets/llama-3.1-8b.json"),
    ),
    (
        "llama-3.2-1b",
        include_str!("../../models/presets/llama-3.2-1b.json"),
    ),
    (
        "qwen2.5-7b",
        include_str!("../../models/presets/qwen2.5-7b.json"),
    ),
    (
        "qwen2.5-0.5b",
        include_str!("../../models/presets/qwen2.5-0.5b.json"),
    ),
    (
        "smollm2-135m",
        include_str!("../../models/presets/smollm2-135m.json"),
    ),
    (
        "smollm2-360m",
        include_str!("../../models/presets/smollm2-360m.json"),
    ),
    // Mixture-of-experts widths for GPU runs of the MoE kernels (bf16 dims; gpt-oss without
    // its MXFP4 `quantization_config`).
    (
        "qwen3-30b-a3b",
        include_str!("../../models/presets/qwen3-30b-a3b.json"),
    ),
    (
        "mixtral-8x7b",
        include_str!("../../models/presets/mixtral-8x7b.json"),
    ),
    (
        "gpt-oss-20b",
        include_str!("../../models/presets/gpt-oss-20b.json"),
    ),
    (
        "deepseek-v2-lite",
        include_str!("../../models/presets/deepseek-v2-lite.json"),
    ),
];

/// Prefix of a model argument that names a bundled preset.
pub const PRESET_PREFIX: &str = "preset:";

/// std of the random values (HF `initializer_range`).
const INIT_STD: f64 = 0.02;
/// Elements generated at once (256 MiB of f32).
const CHUNK: usize = 1 << 26;

/// The config.json text of a bundled preset (case-insensitive name).
pub fn preset(name: &str) -> Option<&'static str> {
    PRESETS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, json)| *json)
}

fn preset_names() -> String {
    PRESETS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a dummy model's config comes from, and the directory holding its tokenizer if any.
#[derive(Debug, Clone)]
pub struct DummySource {
    pub config: ModelConfig,
    /// A directory with the config (and perhaps tokenizer.json); None for presets.
    pub dir: Option<PathBuf>,
}

/// Reads the config named by `spec`: `preset:NAME` (or a bare preset name), an HF directory
/// with config.json, or a config .json file.
pub fn resolve(spec: &str) -> Result<DummySource> {
    let name = spec.strip_prefix(PRESET_PREFIX);
    if let Some(json) = preset(name.unwrap_or(spec)) {
        return Ok(DummySource {
            config: ModelConfig::from_hf_json(json)?,
            dir: None,
        });
    }
    if let Some(name) = name {
        bail!("unknown preset `{name}` (bundled: {})", preset_names());
    }
    let path = Path::new(spec);
    let (cfg_path, dir) = if path.is_dir() {
        (path.join("config.json"), path.to_path_buf())
    } else if path.is_file() {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        (path.to_path_buf(), dir)
    } else {
        bail!(
            "dummy model `{spec}` is neither a preset ({}) nor a config.json or HF directory",
            preset_names()
        );
    };
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("reading {}", cfg_path.display()))?;
    Ok(DummySource {
        config: ModelConfig::from_hf_json(&text)?,
        dir: Some(dir),
    })
}

/// A model of `cfg` with random weights on `device` in `dtype`. `seed` makes CPU weights
/// reproducible; on CUDA it seeds the device generator.
pub fn load(
    cfg: &ModelConfig,
    dtype: DType,
    device: &Device,
    seed: u64,
) -> Result<Box<dyn CausalLm>> {
    load_quantized(cfg, dtype, device, seed, None)
}

/// [`load`] with the linear layers (all but lm_head) in a quantized GPU form (`--quantization
/// fp8` or `w4a16` with dummy weights), to measure quantized speed at 8B scale.
pub fn load_quantized(
    cfg: &ModelConfig,
    dtype: DType,
    device: &Device,
    seed: u64,
    quantization: Option<&str>,
) -> Result<Box<dyn CausalLm>> {
    let mut d = DummyWeights::new(cfg, dtype, device, seed)?;
    d.quant = match quantization {
        None => None,
        Some("fp8") => Some(DummyQuant::Fp8),
        Some("w4a16") => Some(DummyQuant::W4a16),
        Some(other) => {
            bail!("unsupported --quantization `{other}` for dummy weights (supported: fp8, w4a16)")
        }
    };
    if d.quant.is_some() {
        tracing::info!(
            "dummy weights quantized: {}",
            quantization.unwrap_or_default()
        );
    }
    let w = Weights::Dummy(Box::new(d));
    super::registry::build(cfg.clone(), &w)
}

/// The quantized forms dummy weights can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DummyQuant {
    /// e4m3 weights with per-channel scales, dynamic per-token FP8 activations.
    Fp8,
    /// int4 weights in groups of 128 (64 where the input is not a multiple of 128).
    W4a16,
}

/// The tokenizer next to the config if there is one, else a byte-level tokenizer (ids 0..256
/// are bytes; other ids decode to nothing), enough to drive the engine with text prompts.
pub fn tokenizer(src: &DummySource) -> Result<Tokenizer> {
    if let Some(dir) = &src.dir {
        if dir.join("tokenizer.json").exists() {
            return Ok(Tokenizer::from_hf_dir(dir)?);
        }
    }
    byte_tokenizer(&src.config)
}

fn byte_tokenizer(cfg: &ModelConfig) -> Result<Tokenizer> {
    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let alphabet = ByteLevel::alphabet();
    let mut chars: Vec<char> = alphabet.into_iter().collect();
    chars.sort_by_key(|c| byte_of(*c));
    let vocab: tokenizers::models::bpe::Vocab = chars
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .build()
        .map_err(|e| anyhow::anyhow!("byte tokenizer: {e}"))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(ByteLevel::new(false, false, false)));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    let mut tok = Tokenizer::new(inner);
    tok.eos_token_ids = cfg.eos_token_ids.clone();
    Ok(tok)
}

/// The byte GPT-2's byte-level alphabet maps to `c` (printable bytes map to themselves,
/// the others to 256 + their rank).
fn byte_of(c: char) -> u32 {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let u = c as u32;
    if u < 256 && printable(u) {
        return u;
    }
    let mut rank = u - 256;
    (0..256u32)
        .find(|&b| {
            if printable(b) {
                return false;
            }
            if rank == 0 {
                return true;
            }
            rank -= 1;
            false
        })
        .unwrap_or(u)
}

/// Random parameters by HF name for `Weights::Dummy`.
pub struct DummyWeights {
    cfg: ModelConfig,
    dtype: DType,
    device: Device,
    rng: Mutex<rand::rngs::StdRng>,
    /// Tied models ask for the embedding twice (table and lm_head): hand out one tensor.
    embed: Mutex<Option<Tensor>>,
    /// Linear layers in a quantized form (None: dense).
    quant: Option<DummyQuant>,
}

impl DummyWeights {
    pub fn new(cfg: &ModelConfig, dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        if device.is_cuda() {
            device.set_seed(seed)?;
        }
        Ok(Self {
            cfg: cfg.clone(),
            dtype,
            device: device.clone(),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            embed: Mutex::new(None),
            quant: None,
        })
    }

    /// `name`'s weight in the quantized form asked for, random (None: dense, or lm_head,
    /// which stays dense as in vLLM, or a shape the kernels do not take).
    pub fn quantized_linear(
        &self,
        name: &str,
    ) -> Result<Option<crate::quant::device::DevicePacked>> {
        use crate::quant::device::{DevicePacked, Fp8Packed, IntPacked};
        let Some(q) = self.quant else {
            return Ok(None);
        };
        let Some(shape) = self.shape(&format!("{name}.weight")) else {
            return Ok(None);
        };
        let (out, inp) = shape.dims2()?;
        if name == "lm_head" || !inp.is_multiple_of(64) {
            return Ok(None);
        }
        let mut rng = self.rng.lock().expect("rng lock");
        Ok(Some(match q {
            DummyQuant::Fp8 => {
                let mut bytes = vec![0u8; out * inp];
                rng.fill(&mut bytes[..]);
                // Exponent field <= 7: |values| < 2, times a scale of 0.01.
                bytes.iter_mut().for_each(|b| *b &= 0xbf);
                DevicePacked::Fp8(Fp8Packed {
                    out,
                    inp,
                    bytes,
                    scales: vec![0.01; out],
                    gw: inp,
                    gx: inp,
                    static_scale: None,
                })
            }
            DummyQuant::W4a16 => {
                let g = if inp.is_multiple_of(128) { 128 } else { 64 };
                let mut words = vec![0u32; out * inp / 8];
                rng.fill(&mut words[..]);
                // Values (q - 8) * 0.005: within +-0.04, like the dense dummy weights.
                let scale_offset = [0.005f32, -0.04].repeat(out * inp / g);
                DevicePacked::Int(IntPacked {
                    out,
                    inp,
                    bits: 4,
                    words,
                    scale_offset,
                    g,
                    perm: None,
                })
            }
        }))
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether a checkpoint of this config has `name.weight`.
    pub fn contains(&self, name: &str) -> bool {
        self.shape(&format!("{name}.weight")).is_some()
    }

    /// `name.suffix` with random values (norm weights: ones).
    pub fn tensor(&self, name: &str, suffix: &str) -> Result<Tensor> {
        let full = format!("{name}.{suffix}");
        let shape = self
            .shape(&full)
            .with_context(|| format!("no tensor {full} in a {} model", self.cfg.model_type))?;
        if name.ends_with("norm") {
            return Ok(Tensor::ones(shape, self.dtype, &self.device)?);
        }
        if full == "model.embed_tokens.weight" {
            let mut embed = self.embed.lock().expect("embed lock");
            if let Some(t) = embed.as_ref() {
                return Ok(t.clone());
            }
            let t = self.random(&shape)?;
            *embed = Some(t.clone());
            return Ok(t);
        }
        self.random(&shape)
    }

    /// The shape an HF checkpoint of this config gives `full`, None if it has no such tensor.
    fn shape(&self, full: &str) -> Option<Shape> {
        let c = &self.cfg;
        let (hidden, inter) = (c.hidden_size, c.intermediate_size);
        let heads = c.num_attention_heads;
        let q = heads * c.head_dim;
        let kv = c.num_key_value_heads * c.head_dim;
        let (name, suffix) = full.rsplit_once('.')?;
        let bias = suffix == "bias";
        let matrix = |out: usize, inp: usize, has_bias: bool| -> Option<Shape> {
            match (suffix, bias) {
                ("weight", _) => Some(Shape::from((out, inp))),
                (_, true) if has_bias => Some(Shape::from(out)),
                _ => None,
            }
        };
        let vector = |n: usize| (suffix == "weight").then(|| Shape::from(n));
        let table = (suffix == "weight").then(|| Shape::from((c.vocab_size, hidden)));
        match name {
            "model.embed_tokens" => return table,
            "lm_head" if !c.tie_word_embeddings => return table,
            "model.norm" => return vector(hidden),
            _ => {}
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (idx, tail) = rest.split_once('.')?;
        let layer = idx.parse::<usize>().ok()?;
        if layer >= c.num_hidden_layers {
            return None;
        }
        if let Some(shape) = self.moe_shape(layer, tail, suffix) {
            return shape;
        }
        if let Some(m) = &c.mla {
            let qk = m.qk_nope_head_dim + m.qk_rope_head_dim;
            let (lora, rope) = (m.kv_lora_rank, m.qk_rope_head_dim);
            let ab = c.qkv_bias;
            match (tail, m.q_lora_rank) {
                ("self_attn.q_a_proj", Some(r)) => return matrix(r, hidden, ab),
                ("self_attn.q_a_layernorm", Some(r)) => return vector(r),
                ("self_attn.q_b_proj", Some(r)) => return matrix(heads * qk, r, false),
                ("self_attn.q_proj", None) => return matrix(heads * qk, hidden, false),
                ("self_attn.kv_a_proj_with_mqa", _) => return matrix(lora + rope, hidden, ab),
                ("self_attn.kv_a_layernorm", _) => return vector(lora),
                ("self_attn.kv_b_proj", _) => {
                    return matrix(heads * (m.qk_nope_head_dim + m.v_head_dim), lora, false)
                }
                ("self_attn.o_proj", _) => return matrix(hidden, heads * m.v_head_dim, c.o_bias),
                _ => {}
            }
        }
        let sandwich = c.sandwich_norms;
        match tail {
            "input_layernorm" | "post_attention_layernorm" => vector(hidden),
            "pre_feedforward_layernorm" | "post_feedforward_layernorm" if sandwich => {
                vector(hidden)
            }
            "self_attn.q_norm" | "self_attn.k_norm" if c.qk_norm => vector(c.head_dim),
            "self_attn" if suffix == "sinks" && c.attention_sinks => Some(Shape::from(heads)),
            "self_attn.qkv_proj" if c.fused_projections => matrix(q + 2 * kv, hidden, c.qkv_bias),
            "mlp.gate_up_proj" if c.fused_projections => matrix(2 * inter, hidden, c.mlp_bias),
            "self_attn.q_proj" => matrix(q, hidden, c.qkv_bias),
            "self_attn.k_proj" | "self_attn.v_proj" => matrix(kv, hidden, c.qkv_bias),
            "self_attn.o_proj" => matrix(hidden, q, c.o_bias),
            "mlp.gate_proj" | "mlp.up_proj" => matrix(inter, hidden, c.mlp_bias),
            "mlp.down_proj" => matrix(hidden, inter, c.mlp_bias),
            _ => None,
        }
    }

    /// Shapes under a sparse layer's MLP (`Some(None)`: such a tensor does not exist); None
    /// when `tail` is not a MoE name of this config.
    fn moe_shape(&self, layer: usize, tail: &str, suffix: &str) -> Option<Option<Shape>> {
        let c = &self.cfg;
        let m = c.moe.as_ref().filter(|m| m.sparse_layers[layer])?;
        let (hidden, inter, e) = (c.hidden_size, m.expert_intermediate_size, m.num_experts);
        let n = &m.names;
        let gated = |rest: &str, inter: usize| -> Option<Shape> {
            let (out, inp) = if rest == n.down {
                (hidden, inter)
            } else {
                (inter, hidden)
            };
            match suffix {
                "weight" if [n.gate, n.up, n.down].contains(&rest) => Some(Shape::from((out, inp))),
                _ => None,
            }
        };
        if tail == n.router {
            return Some(match suffix {
                "weight" => Some(Shape::from((e, hidden))),
                "bias" if m.router_bias => Some(Shape::from(e)),
                "e_score_correction_bias" if m.correction_bias => Some(Shape::from(e)),
                _ => None,
            });
        }
        if tail == n.experts && m.stacked_experts {
            return Some(match suffix {
                "gate_up_proj" => Some(Shape::from((e, hidden, 2 * inter))),
                "gate_up_proj_bias" => Some(Shape::from((e, 2 * inter))),
                "down_proj" => Some(Shape::from((e, inter, hidden))),
                "down_proj_bias" => Some(Shape::from((e, hidden))),
                _ => None,
            });
        }
        if let Some(rest) = tail
            .strip_prefix(n.experts)
            .and_then(|r| r.strip_prefix('.'))
        {
            let (j, rest) = rest.split_once('.')?;
            return Some(
                j.parse::<usize>()
                    .ok()
                    .filter(|&j| j < e)
                    .and_then(|_| gated(rest, inter)),
            );
        }
        if let (Some(shared), Some(rest)) = (
            m.shared_intermediate_size,
            tail.strip_prefix("mlp.shared_experts."),
        ) {
            return Some(gated(rest, shared));
        }
        None
    }

    /// Uniform values of std `INIT_STD`, generated `CHUNK` elements at a time on the device.
    fn random(&self, shape: &Shape) -> Result<Tensor> {
        let n = shape.elem_count();
        if n <= CHUNK {
            return self.random_chunk(shape.clone());
        }
        let dims = shape.dims();
        let rows = dims[0];
        let row_len = n / rows;
        let per = (CHUNK / row_len).max(1);
        let out = Tensor::zeros(shape, self.dtype, &self.device)?;
        let mut r0 = 0;
        while r0 < rows {
            let k = per.min(rows - r0);
            let mut chunk_dims = dims.to_vec();
            chunk_dims[0] = k;
            out.slice_set(&self.random_chunk(Shape::from(chunk_dims))?, 0, r0)?;
            r0 += k;
        }
        Ok(out)
    }

    fn random_chunk(&self, shape: Shape) -> Result<Tensor> {
        let a = INIT_STD * 3f64.sqrt();
        let t = if self.device.is_cpu() {
            let mut rng = self.rng.lock().expect("rng lock");
            let a = a as f32;
            let data: Vec<f32> = (0..shape.elem_count())
                .map(|_| rng.random_range(-a..a))
                .collect();
            Tensor::from_vec(data, shape, &self.device)?
        } else {
            Tensor::rand(-a as f32, a as f32, shape, &self.device)?
        };
        Ok(t.to_dtype(self.dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_with_their_real_sizes() {
        let params = |name: &str| {
            let c = resolve(&format!("preset:{name}")).unwrap().config;
            let w = DummyWeights::new(&c, DType::BF16, &Device::Cpu, 0).unwrap();
            let mut names = vec![
                "model.embed_tokens".to_string(),
                "lm_head".into(),
                "model.norm".into(),
            ];
            for i in 0..c.num_hidden_layers {
                for t in [
                    "input_layernorm",
                    "post_attention_layernorm",
                    "self_attn.q_proj",
                    "self_attn.k_proj",
                    "self_attn.v_proj",
                    "self_attn.o_proj",
                    "mlp.gate_proj",
                    "mlp.up_proj",
                    "mlp.down_proj",
                ] {
                    names.push(format!("model.layers.{i}.{t}"));
                }
            }
            names
                .iter()
                .flat_map(|n| [format!("{n}.weight"), format!("{n}.bias")])
                .filter_map(|n| w.shape(&n))
                .map(|s| s.elem_count())
                .sum::<usize>()
        };
        // Parameter counts as the model cards give them.
        assert_eq!(params("llama-3.1-8b"), 8_030_261_248);
        assert_eq!(params("llama-3.2-1b"), 1_235_814_400);
        assert_eq!(params("Qwen2.5-7B"), 7_615_616_512);
        assert!(resolve("preset:nope").is_err());
    }

    /// Every tensor name any family's checkpoint has in layer `i` (a superset: the shapes
    /// say which exist).
    fn layer_tensor_names(c: &ModelConfig, i: usize) -> Vec<String> {
        let mut tails: Vec<String> = [
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "self_attn.qkv_proj",
            "self_attn.q_norm",
            "self_attn.k_norm",
            "self_attn.q_a_proj",
            "self_attn.q_a_layernorm",
            "self_attn.q_b_proj",
            "self_attn.kv_a_proj_with_mqa",
            "self_attn.kv_a_layernorm",
            "self_attn.kv_b_proj",
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        // A sparse layer has no dense MLP (the dummy shapes would still answer for one).
        if !c.moe.as_ref().is_some_and(|m| m.sparse_layers[i]) {
            for t in [
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
                "mlp.gate_up_proj",
            ] {
                tails.push(t.to_string());
            }
        }
        let mut full = vec![format!("model.layers.{i}.self_attn.sinks")];
        if let Some(m) = &c.moe {
            let n = &m.names;
            tails.push(n.router.to_string());
            for suffix in [
                "gate_up_proj",
                "gate_up_proj_bias",
                "down_proj",
                "down_proj_bias",
            ] {
                full.push(format!("model.layers.{i}.{}.{suffix}", n.experts));
            }
            full.push(format!(
                "model.layers.{i}.{}.e_score_correction_bias",
                n.router
            ));
            for proj in [n.gate, n.up, n.down] {
                tails.push(format!("mlp.shared_experts.{proj}"));
                // Stacked experts (gpt-oss) have no per-expert tensors.
                for j in (0..m.num_experts).filter(|_| !m.stacked_experts) {
                    tails.push(format!("{}.{j}.{proj}", n.experts));
                }
            }
        }
        let mut names: Vec<String> = tails
            .iter()
            .flat_map(|t| ["weight", "bias"].map(|s| format!("model.layers.{i}.{t}.{s}")))
            .chain(full)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The MoE presets parse with their routing and give the model cards' parameter counts
    /// (shapes only: nothing is allocated).
    #[test]
    fn moe_presets_parse_with_their_real_sizes() {
        let total = |name: &str| -> (ModelConfig, usize) {
            let c = resolve(&format!("preset:{name}")).unwrap().config;
            let w = DummyWeights::new(&c, DType::BF16, &Device::Cpu, 0).unwrap();
            let mut names = vec![
                "model.embed_tokens.weight".to_string(),
                "lm_head.weight".into(),
                "model.norm.weight".into(),
            ];
            for i in 0..c.num_hidden_layers {
                names.extend(layer_tensor_names(&c, i));
            }
            let n = names
                .iter()
                .filter_map(|n| w.shape(n))
                .map(|s| s.elem_count())
                .sum();
            (c, n)
        };
        let near = |got: usize, card: f64, name: &str| {
            let rel = (got as f64 / card - 1.0).abs();
            assert!(rel < 0.01, "{name}: {got} parameters, model card {card:e}");
        };
        let (c, n) = total("qwen3-30b-a3b");
        near(n, 30.5e9, "qwen3-30b-a3b");
        let m = c.moe.as_ref().unwrap();
        assert_eq!(
            (m.num_experts, m.top_k, m.expert_intermediate_size),
            (128, 8, 768)
        );
        assert!(m.sparse_layers.iter().all(|&s| s) && m.norm_topk_prob);

        let (c, n) = total("mixtral-8x7b");
        near(n, 46.7e9, "mixtral-8x7b");
        let m = c.moe.as_ref().unwrap();
        assert_eq!((m.num_experts, m.top_k), (8, 2));

        let (c, n) = total("gpt-oss-20b");
        near(n, 20.9e9, "gpt-oss-20b");
        let m = c.moe.as_ref().unwrap();
        assert_eq!((m.num_experts, m.top_k), (32, 4));
        assert!(m.stacked_experts && c.attention_sinks);
        assert_eq!((c.window(0), c.window(1)), (Some(128), None));

        let (c, n) = total("deepseek-v2-lite");
        near(n, 15.7e9, "deepseek-v2-lite");
        let m = c.moe.as_ref().unwrap();
        assert_eq!((m.num_experts, m.top_k), (64, 6));
        assert_eq!(m.shared_intermediate_size, Some(2 * 1408));
        assert!(!m.sparse_layers[0] && m.sparse_layers[1..].iter().all(|&s| s));
        assert_eq!(c.mla.as_ref().unwrap().kv_lora_rank, 512);
    }

    #[test]
    fn byte_tokenizer_round_trips_bytes() {
        let c = resolve("preset:llama-3.2-1b").unwrap();
        let tok = tokenizer(&c).unwrap();
        let ids = tok.encode("Hé, 42!", false).unwrap();
        assert_eq!(ids, "Hé, 42!".bytes().map(u32::from).collect::<Vec<_>>());
        assert_eq!(tok.decode(&ids, false).unwrap(), "Hé, 42!");
    }
}
