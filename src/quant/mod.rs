//! Quantized checkpoints: which format a model's `quantization_config` names (or `--quantization`
//! asks for), how each format's tensors unpack, and the activation quantization it prescribes.
//!
//! Every method and variant we do not implement is a load error naming it; nothing is cast.
//! The CPU path dequantizes weights at load into the dense `Linear` (exact for weight-only
//! formats) and fake-quantizes activations per token where the format quantizes them.

pub mod device;
pub mod formats;
pub mod fp8;
pub mod load;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// How a format quantizes a `Linear`'s input on the fly (round to the grid, then back to f32).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActQuant {
    /// FP8 e4m3 with one scale per token (`max|x| / 448`). Formats that ask for a dynamic
    /// per-tensor scale get this too: a scale over the whole batch would make a sequence's
    /// logits depend on its batch mates (batch invariance), and per-token is at least as exact.
    Fp8PerToken,
    /// FP8 e4m3 per token and per group of `n` inputs (DeepSeek-style 1x128 blocks).
    Fp8PerTokenGroup(usize),
    /// FP8 e4m3 with the checkpoint's static scale.
    Fp8Static(f32),
    /// Symmetric int8 with one scale per token (`max|x| / 127`).
    Int8PerToken,
    /// Symmetric int8 with the checkpoint's static scale.
    Int8Static(f32),
}

/// One weight scheme of a checkpoint (compressed-tensors may name several; we take one).
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// transformers' `fp8` (FineGrainedFP8): e4m3 `weight` with `weight_scale_inv`, per
    /// tensor or in `block` = (rows, cols) blocks.
    HfFp8 {
        block: Option<(usize, usize)>,
        dynamic: bool,
    },
    /// compressed-tensors (`float-quantized`, `int-quantized`/`naive-quantized`,
    /// `pack-quantized`).
    CompressedTensors(CtScheme),
    /// AutoAWQ GEMM: 4-bit, zero points, groups along the input.
    Awq { group_size: usize },
    /// GPTQ (v1 zeros are stored minus one; `gptq_v2` stores them as they are).
    Gptq {
        bits: u32,
        group_size: Option<usize>,
        sym: bool,
        v2: bool,
    },
    /// gpt-oss MXFP4 experts (`*_blocks`, `*_scales`); everything else is dense.
    Mxfp4,
    /// `--quantization fp8` on a dense checkpoint: per-channel e4m3 weights made at load,
    /// dynamic per-token FP8 activations (vLLM's online FP8).
    OnlineFp8,
    /// A GGUF file's weights (reported only; GGUF has its own loader), by their main type.
    Gguf(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtFormat {
    Float,
    Int,
    Pack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Tensor,
    Channel,
    Group(usize),
    Block(usize, usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CtScheme {
    pub format: CtFormat,
    pub bits: u32,
    pub strategy: Strategy,
    pub symmetric: bool,
    /// None: weight-only.
    pub input: Option<CtActivations>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CtActivations {
    pub float: bool,
    pub dynamic: bool,
    /// Per-token groups of this many inputs (compressed-tensors `group` strategy).
    pub group: Option<usize>,
}

/// A checkpoint's quantization: the method and the modules it leaves dense.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantConfig {
    pub method: Method,
    /// `ignore` / `modules_to_not_convert`: exact module names, suffixes, or `re:` regexes.
    pub ignore: Vec<String>,
}

impl QuantConfig {
    /// The short name `/v1/models` and the startup log report.
    pub fn name(&self) -> String {
        match &self.method {
            Method::HfFp8 { block: Some(b), .. } => format!("fp8 (block {}x{})", b.0, b.1),
            Method::HfFp8 { block: None, .. } => "fp8 (per-tensor)".into(),
            Method::CompressedTensors(s) => {
                let w = match s.format {
                    CtFormat::Float => "fp8".to_string(),
                    CtFormat::Int | CtFormat::Pack => format!("int{}", s.bits),
                };
                let a = match &s.input {
                    None => "weight-only".to_string(),
                    Some(a) if a.float => "fp8 activations".into(),
                    Some(_) => "int8 activations".into(),
                };
                format!("compressed-tensors {w} {a}")
            }
            Method::Awq { group_size } => format!("awq int4 (group {group_size})"),
            Method::Gptq { bits, v2, .. } => {
                format!("gptq{} int{bits}", if *v2 { "_v2" } else { "" })
            }
            Method::Mxfp4 => "mxfp4".into(),
            // The exact scheme, so the log and /v1/models say what runs.
            Method::OnlineFp8 => "fp8 (quantized at load: e4m3 weights per output channel, \
                                  dynamic per-token e4m3 activations; embeddings and lm_head \
                                  unquantized)"
                .into(),
            Method::Gguf(t) => format!("gguf {t}"),
        }
    }

    /// Whether the module `name` (e.g. `model.layers.0.mlp.up_proj`) is left dense.
    pub fn ignores(&self, name: &str) -> bool {
        self.ignore.iter().any(|pat| {
            if let Some(re) = pat.strip_prefix("re:") {
                regex::Regex::new(re).is_ok_and(|r| r.is_match(name))
            } else if pat.contains('*') {
                // gpt-oss style globs (`model.layers.*.self_attn`), matching a module or its parent.
                let re = format!("^{}(\\..*)?$", regex::escape(pat).replace("\\*", "[^.]+"));
                regex::Regex::new(&re).is_ok_and(|r| r.is_match(name))
            } else {
                name == pat
                    || name.ends_with(&format!(".{pat}"))
                    || name.starts_with(&format!("{pat}."))
            }
        })
    }

    /// The quantization named by `--quantization` for a dense checkpoint.
    pub fn online(name: &str) -> Result<Self> {
        match name {
            "fp8" => Ok(Self {
                method: Method::OnlineFp8,
                // vLLM leaves the output head (and so a tied embedding) in full precision.
                ignore: vec!["lm_head".into(), "model.embed_tokens".into()],
            }),
            other => bail!("unsupported --quantization `{other}` (supported: fp8)"),
        }
    }

    /// Parses a `config.json`'s `quantization_config`; unknown methods and variants are errors.
    pub fn from_hf(q: &Value) -> Result<Self> {
        let method = q
            .get("quant_method")
            .and_then(Value::as_str)
            .context("quantization_config without quant_method")?;
        let list = |key: &str| -> Vec<String> {
            q.get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut ignore = list("ignore");
        ignore.extend(list("modules_to_not_convert"));
        let method = match method {
            "fp8" => parse_hf_fp8(q)?,
            "compressed-tensors" => Method::CompressedTensors(parse_ct(q)?),
            "awq" => parse_awq(q)?,
            "gptq" => parse_gptq(q)?,
            "mxfp4" => Method::Mxfp4,
            other => bail!(
                "unsupported quantization method `{other}` in quantization_config (supported: fp8, \
                 compressed-tensors, awq, gptq, mxfp4)"
            ),
        };
        Ok(Self { method, ignore })
    }
}

fn parse_hf_fp8(q: &Value) -> Result<Method> {
    let fmt = q.get("fmt").and_then(Value::as_str).unwrap_or("e4m3");
    if fmt != "e4m3" {
        bail!("unsupported fp8 fmt `{fmt}` (supported: e4m3)");
    }
    let dynamic = match q
        .get("activation_scheme")
        .and_then(Value::as_str)
        .unwrap_or("dynamic")
    {
        "dynamic" => true,
        "static" => false,
        other => bail!("unsupported fp8 activation_scheme `{other}` (dynamic, static)"),
    };
    let block = match q.get("weight_block_size") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) if a.len() == 2 => {
            let d = |v: &Value| v.as_u64().filter(|&x| x > 0).map(|x| x as usize);
            Some((
                d(&a[0]).context("weight_block_size")?,
                d(&a[1]).context("weight_block_size")?,
            ))
        }
        Some(other) => bail!("unsupported fp8 weight_block_size {other}"),
    };
    Ok(Method::HfFp8 { block, dynamic })
}

fn parse_awq(q: &Value) -> Result<Method> {
    let bits = q.get("bits").or(q.get("w_bit")).and_then(Value::as_u64);
    if bits != Some(4) {
        bail!("unsupported awq bits {bits:?} (supported: 4)");
    }
    let version = q
        .get("version")
        .and_then(Value::as_str)
        .unwrap_or("gemm")
        .to_ascii_lowercase();
    if version != "gemm" {
        bail!("unsupported awq version `{version}` (supported: gemm)");
    }
    if q.get("zero_point").and_then(Value::as_bool) == Some(false) {
        bail!("unsupported awq variant zero_point: false (supported: zero_point true)");
    }
    let group_size = q
        .get("group_size")
        .or(q.get("q_group_size"))
        .and_then(Value::as_i64)
        .context("awq without group_size")?;
    if group_size <= 0 {
        bail!("unsupported awq group_size {group_size}");
    }
    Ok(Method::Awq {
        group_size: group_size as usize,
    })
}

fn parse_gptq(q: &Value) -> Result<Method> {
    let bits = q.get("bits").and_then(Value::as_u64).unwrap_or(0) as u32;
    if bits != 4 && bits != 8 {
        bail!("unsupported gptq bits {bits} (supported: 4, 8)");
    }
    let fmt = q
        .get("checkpoint_format")
        .and_then(Value::as_str)
        .unwrap_or("gptq");
    let v2 = match fmt {
        "gptq" => false,
        "gptq_v2" => true,
        other => bail!("unsupported gptq checkpoint_format `{other}` (supported: gptq, gptq_v2)"),
    };
    if let Some(b) = q.get("backend").and_then(Value::as_str) {
        if b.contains("marlin") || b.contains("bitblas") {
            bail!("unsupported gptq backend format `{b}`");
        }
    }
    let group_size = match q.get("group_size").and_then(Value::as_i64).unwrap_or(-1) {
        -1 => None,
        g if g > 0 => Some(g as usize),
        g => bail!("unsupported gptq group_size {g}"),
    };
    let sym = q.get("sym").and_then(Value::as_bool).unwrap_or(true);
    Ok(Method::Gptq {
        bits,
        group_size,
        sym,
        v2,
    })
}

fn parse_ct(q: &Value) -> Result<CtScheme> {
    let format = q
        .get("format")
        .and_then(Value::as_str)
        .context("compressed-tensors quantization_config without format")?;
    let format = match format {
        "float-quantized" => CtFormat::Float,
        "int-quantized" | "naive-quantized" => CtFormat::Int,
        "pack-quantized" => CtFormat::Pack,
        other => bail!(
            "unsupported compressed-tensors format `{other}` (supported: float-quantized, \
             int-quantized, naive-quantized, pack-quantized)"
        ),
    };
    if let Some(s) = q.get("quantization_status").and_then(Value::as_str) {
        if s != "compressed" && s != "frozen" {
            bail!("unsupported compressed-tensors quantization_status `{s}`");
        }
    }
    if q.get("sparsity_config").is_some_and(|v| !v.is_null()) {
        bail!("unsupported compressed-tensors sparsity_config (sparse checkpoints)");
    }
    if q.get("transform_config").is_some_and(|v| !v.is_null()) {
        bail!("unsupported compressed-tensors transform_config");
    }
    let groups = q
        .get("config_groups")
        .and_then(Value::as_object)
        .context("compressed-tensors without config_groups")?;
    let mut schemes = Vec::new();
    for (gname, g) in groups {
        if g.get("output_activations").is_some_and(|v| !v.is_null()) {
            bail!("unsupported compressed-tensors output_activations in {gname}");
        }
        let w = g
            .get("weights")
            .filter(|v| !v.is_null())
            .with_context(|| format!("compressed-tensors {gname} without weights"))?;
        schemes.push(parse_ct_group(
            &format,
            gname,
            w,
            g.get("input_activations"),
        )?);
    }
    let first = schemes
        .first()
        .context("compressed-tensors with empty config_groups")?
        .clone();
    if schemes.iter().any(|s| *s != first) {
        bail!("unsupported compressed-tensors config with several different config_groups");
    }
    Ok(first)
}

fn parse_ct_group(
    format: &CtFormat,
    gname: &str,
    w: &Value,
    input: Option<&Value>,
) -> Result<CtScheme> {
    let typ = w.get("type").and_then(Value::as_str).unwrap_or("int");
    let bits = w.get("num_bits").and_then(Value::as_u64).unwrap_or(0) as u32;
    let symmetric = w.get("symmetric").and_then(Value::as_bool).unwrap_or(true);
    match (format, typ, bits) {
        (CtFormat::Float, "float", 8) => {}
        (CtFormat::Int, "int", 8) => {}
        (CtFormat::Pack, "int", 4 | 8) => {}
        _ => bail!(
            "unsupported compressed-tensors weights type {typ} num_bits {bits} for {format:?} \
             format in {gname}"
        ),
    }
    if w.get("dynamic").and_then(Value::as_bool) == Some(true) {
        bail!("unsupported compressed-tensors dynamic weights in {gname}");
    }
    if let Some(a) = w.get("actorder").and_then(Value::as_str) {
        if a != "group" && a != "weight" && a != "static" {
            bail!("unsupported compressed-tensors actorder `{a}` in {gname}");
        }
    }
    if typ == "float" && !symmetric {
        bail!("unsupported compressed-tensors asymmetric float weights in {gname}");
    }
    let strategy = parse_strategy(w, gname)?;
    let input = match input {
        None | Some(Value::Null) => None,
        Some(a) => Some(parse_ct_act(a, gname)?),
    };
    Ok(CtScheme {
        format: format.clone(),
        bits,
        strategy,
        symmetric,
        input,
    })
}

fn parse_strategy(w: &Value, gname: &str) -> Result<Strategy> {
    let s = w
        .get("strategy")
        .and_then(Value::as_str)
        .unwrap_or("tensor");
    Ok(match s {
        "tensor" => Strategy::Tensor,
        "channel" => Strategy::Channel,
        "group" => {
            let g = w.get("group_size").and_then(Value::as_u64).unwrap_or(0) as usize;
            if g == 0 {
                bail!("compressed-tensors group strategy without group_size in {gname}");
            }
            Strategy::Group(g)
        }
        "block" => {
            let b = w
                .get("block_structure")
                .and_then(Value::as_array)
                .filter(|a| a.len() == 2)
                .and_then(|a| Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize)))
                .with_context(|| {
                    format!("compressed-tensors block without block_structure in {gname}")
                })?;
            Strategy::Block(b.0, b.1)
        }
        other => bail!("unsupported compressed-tensors weight strategy `{other}` in {gname}"),
    })
}

fn parse_ct_act(a: &Value, gname: &str) -> Result<CtActivations> {
    let typ = a.get("type").and_then(Value::as_str).unwrap_or("int");
    let bits = a.get("num_bits").and_then(Value::as_u64).unwrap_or(0);
    if bits != 8 || (typ != "float" && typ != "int") {
        bail!("unsupported compressed-tensors input_activations {typ} num_bits {bits} in {gname}");
    }
    if a.get("symmetric").and_then(Value::as_bool) == Some(false) {
        bail!("unsupported compressed-tensors asymmetric input_activations in {gname}");
    }
    let dynamic = match a.get("dynamic") {
        Some(Value::Bool(b)) => *b,
        None | Some(Value::Null) => false,
        Some(other) => {
            bail!("unsupported compressed-tensors input_activations dynamic {other} in {gname}")
        }
    };
    let strategy = a
        .get("strategy")
        .and_then(Value::as_str)
        .unwrap_or("tensor");
    let group = match strategy {
        "token" | "tensor" => None,
        "group" if dynamic => Some(
            a.get("group_size")
                .and_then(Value::as_u64)
                .filter(|&g| g > 0)
                .with_context(|| format!("input_activations group without group_size in {gname}"))?
                as usize,
        ),
        other => {
            bail!("unsupported compressed-tensors input_activations strategy `{other}` in {gname}")
        }
    };
    if !dynamic && strategy != "tensor" {
        bail!("unsupported compressed-tensors static {strategy} input_activations in {gname}");
    }
    Ok(CtActivations {
        float: typ == "float",
        dynamic,
        group,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refuses_unknown_methods_and_variants_by_name() {
        let err = |v: Value| QuantConfig::from_hf(&v).unwrap_err().to_string();
        assert!(err(json!({"quant_method": "bitsandbytes"})).contains("`bitsandbytes`"));
        assert!(err(
            json!({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"})
        )
        .contains("`gemv`"));
        assert!(err(json!({"quant_method": "gptq", "bits": 3})).contains("bits 3"));
        assert!(
            err(json!({"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"}))
                .contains("`marlin`")
        );
        assert!(err(
            json!({"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized"})
        )
        .contains("`nvfp4-pack-quantized`"));
        assert!(err(json!({"quant_method": "fp8", "fmt": "e5m2"})).contains("`e5m2`"));
    }

    #[test]
    fn parses_the_common_configs() {
        let q = QuantConfig::from_hf(
            &json!({"quant_method": "fp8", "activation_scheme": "dynamic",
            "weight_block_size": [128, 128]}),
        )
        .unwrap();
        assert_eq!(
            q.method,
            Method::HfFp8 {
                block: Some((128, 128)),
                dynamic: true
            }
        );
        let q = QuantConfig::from_hf(&json!({"quant_method": "compressed-tensors",
            "format": "pack-quantized", "ignore": ["lm_head", "re:.*gate$"],
            "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": null,
              "weights": {"num_bits": 4, "type": "int", "symmetric": false, "strategy": "group",
                          "group_size": 32, "dynamic": false}}}}))
        .unwrap();
        let Method::CompressedTensors(s) = &q.method else {
            panic!()
        };
        assert_eq!(s.strategy, Strategy::Group(32));
        assert!(!s.symmetric);
        assert!(q.ignores("lm_head"));
        assert!(q.ignores("model.layers.0.mlp.gate"));
        assert!(!q.ignores("model.layers.0.mlp.gate_proj"));
        let q = QuantConfig::from_hf(&json!({"quant_method": "mxfp4",
            "modules_to_not_convert": ["model.layers.*.self_attn"]}))
        .unwrap();
        assert!(q.ignores("model.layers.3.self_attn.q_proj"));
        assert!(!q.ignores("model.layers.3.mlp.experts"));
    }
}
