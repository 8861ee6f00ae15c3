//! Reads weights by their Hugging Face names from safetensors or from a GGUF file.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::quantized::{gguf_file, QMatMul, QStorage, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::layers::linear::Linear;
use crate::ops::qgemm::QuantWeight;
use crate::quant::{device as qdevice, load as qload, QuantConfig};

/// Whether quantized weights stay quantized on `device` (a GPU, unless
/// `FLARE_GPU_QGEMM=off`, which keeps the dense dequantized path for A/B measurements).
fn gpu_qgemm(device: &Device) -> bool {
    device.is_cuda() && std::env::var("FLARE_GPU_QGEMM").map_or(true, |v| v != "off" && v != "0")
}

pub enum Weights {
    Safetensors {
        vb: VarBuilder<'static>,
        dtype: DType,
        /// The same files, read raw: quantized tensors keep their stored dtype.
        raw: Arc<MmapedSafetensors>,
        /// The checkpoint's `quantization_config` or `--quantization`.
        quant: Option<Arc<QuantConfig>>,
    },
    Gguf {
        content: gguf_file::Content,
        /// `general.architecture`: tensor names and row order differ by it.
        arch: String,
        path: PathBuf,
        device: Device,
        /// Dequantize every weight to this dtype (dense matmuls, e.g. bf16 on a GPU) instead
        /// of keeping candle's quantized matmul with f32 activations.
        dense: Option<DType>,
    },
    /// Random weights of a config (`--load-format dummy`).
    Dummy(Box<super::dummy::DummyWeights>),
}

/// llama.cpp's tensor name for an HF parameter path (without `.weight`/`.bias`) in a GGUF of
/// architecture `arch`. Gemma's sandwich norms reuse HF's `post_attention_layernorm` for the
/// norm after attention, which in Llama is the norm before the MLP.
fn gguf_name(arch: &str, hf: &str) -> String {
    if let Some(rest) = hf.strip_prefix("model.layers.") {
        let (idx, tail) = rest.split_once('.').unwrap_or((rest, ""));
        let gemma = arch.starts_with("gemma");
        let t = match tail {
            "post_attention_layernorm" if gemma => "post_attention_norm",
            "pre_feedforward_layernorm" => "ffn_norm",
            "post_feedforward_layernorm" => "post_ffw_norm",
            "self_attn.q_norm" => "attn_q_norm",
            "self_attn.qkv_proj" => "attn_qkv",
            // MoE routers (Mixtral's and Qwen-MoE's names).
            "block_sparse_moe.gate" | "mlp.gate" => "ffn_gate_inp",
            // Phi-3's gate rows then up rows, as llama.cpp's fused up-projection holds them.
            "mlp.gate_up_proj" => "ffn_up",
            "self_attn.k_norm" => "attn_k_norm",
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            "input_layernorm" => "attn_norm",
            "post_attention_layernorm" => "ffn_norm",
            other => other,
        };
        return format!("blk.{idx}.{t}");
    }
    match hf {
        "model.embed_tokens" => "token_embd",
        "model.norm" => "output_norm",
        "lm_head" => "output",
        other => other,
    }
    .to_string()
}

impl Weights {
    /// Memory-maps `files` (one or several shards of one checkpoint).
    pub fn safetensors(files: &[PathBuf], dtype: DType, device: &Device) -> Result<Self> {
        Self::safetensors_quantized(files, dtype, device, None)
    }

    /// Like [`Weights::safetensors`] for a checkpoint quantized as `quant` says.
    pub fn safetensors_quantized(
        files: &[PathBuf],
        dtype: DType,
        device: &Device,
        quant: Option<QuantConfig>,
    ) -> Result<Self> {
        // SAFETY: the files are not modified while mapped (they are model files we only read).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device)? };
        let raw = Arc::new(unsafe { MmapedSafetensors::multi(files)? });
        Ok(Self::Safetensors {
            vb,
            dtype,
            raw,
            quant: quant.map(Arc::new),
        })
    }

    /// The quantization the weights are read with, if any.
    pub fn quantization(&self) -> Option<&QuantConfig> {
        match self {
            Weights::Safetensors { quant, .. } => quant.as_deref(),
            _ => None,
        }
    }

    /// `name`'s weight dequantized as a `[out, in]` tensor in the activation dtype, with its
    /// activation quantization; None when the checkpoint keeps it dense.
    fn dequantized(&self, name: &str) -> Result<Option<(Tensor, Option<crate::quant::ActQuant>)>> {
        let Weights::Safetensors {
            raw,
            quant: Some(q),
            dtype,
            vb,
        } = self
        else {
            return Ok(None);
        };
        let Some(d) = qload::linear(raw, q, name).with_context(|| format!("loading {name}"))?
        else {
            return Ok(None);
        };
        let w = Tensor::from_vec(d.dense, (d.out, d.inp), vb.device())?.to_dtype(*dtype)?;
        Ok(Some((w, d.act)))
    }

    /// On a GPU, `name`'s quantized weight in the layout of our quantized GEMMs (kept
    /// quantized); None on the CPU, for dense modules, and where the kernels do not apply
    /// (then the dense dequantized path runs).
    fn device_quantized(&self, name: &str, bias: &Option<Tensor>) -> Result<Option<Linear>> {
        let Weights::Safetensors {
            raw,
            quant: Some(q),
            dtype,
            vb,
        } = self
        else {
            return Ok(None);
        };
        if !gpu_qgemm(vb.device()) {
            return Ok(None);
        }
        let Some(p) = qdevice::linear(raw, q, name).with_context(|| format!("loading {name}"))?
        else {
            return Ok(None);
        };
        // The int kernels take bf16 activations: other dtypes keep the dense path.
        if matches!(p, qdevice::DevicePacked::Int(_)) && *dtype != DType::BF16 {
            return Ok(None);
        }
        let w = QuantWeight::upload(&p, vb.device())?;
        Ok(Some(Linear::device_quantized(w, bias.clone())))
    }

    /// A GGUF weight (read on the CPU) kept quantized on the GPU, where the weights would
    /// otherwise be densified (a bf16 model on CUDA) and the type has a kernel.
    fn gguf_on_gpu(&self, qt: &QTensor, bias: &Option<Tensor>) -> Result<Option<Linear>> {
        let Weights::Gguf {
            device,
            dense: Some(DType::BF16),
            ..
        } = self
        else {
            return Ok(None);
        };
        if !gpu_qgemm(device) {
            return Ok(None);
        }
        let Some(p) = qdevice::gguf(qt)? else {
            return Ok(None);
        };
        let w = QuantWeight::upload(&qdevice::DevicePacked::Int(p), device)?;
        Ok(Some(Linear::device_quantized(w, bias.clone())))
    }

    /// `dense`: dequantize to that dtype at load (None: quantized matmuls, f32 activations).
    pub fn gguf(path: &Path, device: &Device, dense: Option<DType>) -> Result<Self> {
        let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let content = gguf_file::Content::read(&mut f)
            .with_context(|| format!("reading GGUF {}", path.display()))?;
        let arch = content
            .metadata
            .get("general.architecture")
            .context("GGUF without general.architecture")?
            .to_string()?
            .clone();
        Ok(Self::Gguf {
            content,
            arch,
            path: path.to_path_buf(),
            device: device.clone(),
            dense,
        })
    }

    /// dtype of activations: GGUF quantized matmuls take f32.
    pub fn activation_dtype(&self) -> DType {
        match self {
            Weights::Safetensors { dtype, .. } => *dtype,
            Weights::Gguf { dense, .. } => dense.unwrap_or(DType::F32),
            Weights::Dummy(d) => d.dtype(),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Weights::Safetensors { vb, .. } => vb.device().clone(),
            Weights::Gguf { device, .. } => device.clone(),
            Weights::Dummy(d) => d.device().clone(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            Weights::Safetensors { vb, .. } => ["weight", "qweight", "weight_packed"]
                .iter()
                .any(|s| vb.contains_tensor(&format!("{name}.{s}"))),
            Weights::Gguf { content, arch, .. } => content
                .tensor_infos
                .contains_key(&format!("{}.weight", gguf_name(arch, name))),
            Weights::Dummy(d) => d.contains(name),
        }
    }

    /// The FP8 KV-cache scales of the attention block `attn` (`model.layers.N.self_attn`) as
    /// vLLM / compressed-tensors / ModelOpt checkpoints store them (`{attn}.k_scale`, or the
    /// older `{attn}.k_proj.output_scale`); 1.0 where a checkpoint has none.
    pub fn kv_cache_scales(&self, attn: &str) -> Result<crate::kv::Fp8Scales> {
        let Weights::Safetensors { raw, .. } = self else {
            return Ok(Default::default());
        };
        let scalar = |names: [String; 2]| -> Result<f32> {
            for n in &names {
                if let Ok(v) = raw.get(n) {
                    let s = qload::f32s(&v).with_context(|| format!("reading {n}"))?;
                    anyhow::ensure!(
                        s.len() == 1 && s[0].is_finite() && s[0] > 0.0,
                        "{n}: only one positive per-tensor KV cache scale is supported, found {s:?}"
                    );
                    return Ok(s[0]);
                }
            }
            Ok(1.0)
        };
        Ok(crate::kv::Fp8Scales {
            k: scalar([
                format!("{attn}.k_scale"),
                format!("{attn}.k_proj.output_scale"),
            ])?,
            v: scalar([
                format!("{attn}.v_scale"),
                format!("{attn}.v_proj.output_scale"),
            ])?,
        })
    }

    /// The GGUF tensor `{hf name}.{suffix}` (`weight`, `bias`) on the weights' device.
    fn gguf_param(&self, name: &str, suffix: &str) -> Result<QTensor> {
        let Weights::Gguf { arch, .. } = self else {
            unreachable!()
        };
        self.gguf_qtensor(&format!("{}.{suffix}", gguf_name(arch, name)))
    }

    fn gguf_qtensor(&self, full: &str) -> Result<QTensor> {
        let Weights::Gguf { device, .. } = self else {
            unreachable!()
        };
        self.gguf_qtensor_on(full, device)
    }

    fn gguf_qtensor_on(&self, full: &str, device: &Device) -> Result<QTensor> {
        let Weights::Gguf { content, path, .. } = self else {
            unreachable!()
        };
        let mut f = File::open(path)?;
        content
            .tensor(&mut f, full, device)
            .with_context(|| format!("GGUF tensor {full}"))
    }

    /// A dense tensor in the activation dtype (norm weights, biases, embedding table).
    pub fn tensor(&self, name: &str, suffix: &str) -> Result<Tensor> {
        match self {
            Weights::Safetensors {
                vb,
                raw,
                quant,
                dtype,
            } => {
                let full = format!("{name}.{suffix}");
                match raw.get(&full) {
                    // A quantized tensor read as a plain one would be cast without its scales.
                    Ok(v) if !qload::is_float(v.dtype()) => anyhow::bail!(
                        "tensor {full} is stored as {:?}: a quantized weight{}",
                        v.dtype(),
                        match quant {
                            Some(q) => format!(" that {} does not cover here", q.name()),
                            None => " but config.json has no quantization_config".to_string(),
                        }
                    ),
                    Ok(_) => {}
                    Err(_) => {}
                }
                // gpt-oss MXFP4: the stacked experts' projections come as `_blocks`/`_scales`.
                let mxfp4 =
                    matches!(quant.as_deref(), Some(q) if q.method == crate::quant::Method::Mxfp4);
                if mxfp4 && name.ends_with(".experts") && !suffix.ends_with("_bias") {
                    let (data, shape) =
                        qload::mxfp4_stacked(raw, name, suffix)?.with_context(|| {
                            format!("quantization_config says mxfp4 but {full}_blocks is missing")
                        })?;
                    return Ok(Tensor::from_vec(data, &shape, vb.device())?.to_dtype(*dtype)?);
                }
                vb.get_unchecked(&full)
                    .with_context(|| format!("missing tensor {full}"))
            }
            Weights::Gguf { device, .. } => {
                let q = self.gguf_param(name, suffix)?;
                Ok(q.dequantize(device)?.to_dtype(self.activation_dtype())?)
            }
            Weights::Dummy(d) => d.tensor(name, suffix),
        }
    }

    /// `name.weight` (`[out, in]`) and, when `bias`, `name.bias`.
    pub fn linear(&self, name: &str, bias: bool) -> Result<Linear> {
        let b = if bias {
            Some(self.tensor(name, "bias")?)
        } else {
            None
        };
        if let Some(l) = self.device_quantized(name, &b)? {
            return Ok(l);
        }
        if let Weights::Dummy(d) = self {
            if let Some(p) = d.quantized_linear(name)? {
                let w = QuantWeight::upload(&p, d.device())?;
                return Ok(Linear::device_quantized(w, b));
            }
        }
        if let Some((w, act)) = self.dequantized(name)? {
            return Ok(Linear::quantized(w, act, b));
        }
        if let Weights::Gguf {
            dense: Some(_),
            arch,
            device,
            ..
        } = self
        {
            if !gpu_qgemm(device) {
                return Ok(Linear::new(
                    QMatMul::Tensor(self.tensor(name, "weight")?),
                    b,
                ));
            }
            let qt =
                self.gguf_qtensor_on(&format!("{}.weight", gguf_name(arch, name)), &Device::Cpu)?;
            if let Some(l) = self.gguf_on_gpu(&qt, &b)? {
                return Ok(l);
            }
        }
        let w = match self {
            Weights::Safetensors { .. } | Weights::Dummy(_) => {
                QMatMul::Tensor(self.tensor(name, "weight")?)
            }
            Weights::Gguf { dense: Some(_), .. } => QMatMul::Tensor(self.tensor(name, "weight")?),
            Weights::Gguf { dense: None, .. } => {
                QMatMul::from_qtensor(self.gguf_param(name, "weight")?)?
            }
        };
        Ok(Linear::new(w, b))
    }

    /// Rows `start..start + len` of the dense `name.weight` (and bias): one part of a fused
    /// projection such as Phi-3's `qkv_proj`.
    pub fn linear_rows(&self, name: &str, start: usize, len: usize, bias: bool) -> Result<Linear> {
        if let Weights::Gguf {
            arch,
            device,
            dense: None,
            ..
        } = self
        {
            // Quantized rows are whole blocks: the part is a byte range of the tensor.
            let q =
                self.gguf_qtensor_on(&format!("{}.weight", gguf_name(arch, name)), &Device::Cpu)?;
            let (rows, cols) = q.shape().dims2()?;
            anyhow::ensure!(
                start + len <= rows,
                "{name}: rows {start}..{} of {rows}",
                start + len
            );
            let dtype = q.dtype();
            let row_bytes = cols / dtype.block_size() * dtype.type_size();
            let data = q.data()?;
            let part = data[start * row_bytes..(start + len) * row_bytes].to_vec();
            let storage = QStorage::from_data(std::borrow::Cow::Owned(part), device, dtype)?;
            let w = QMatMul::from_qtensor(QTensor::new(storage, (len, cols))?)?;
            let b = match bias {
                true => Some(
                    self.tensor(name, "bias")?
                        .narrow(0, start, len)?
                        .contiguous()?,
                ),
                false => None,
            };
            return Ok(Linear::new(w, b));
        }
        let part = |suffix: &str| -> Result<Tensor> {
            Ok(self
                .tensor(name, suffix)?
                .narrow(0, start, len)?
                .contiguous()?)
        };
        let b = if bias { Some(part("bias")?) } else { None };
        if let Some((w, act)) = self.dequantized(name)? {
            let w = w.narrow(0, start, len)?.contiguous()?;
            return Ok(Linear::quantized(w, act, b));
        }
        Ok(Linear::new(QMatMul::Tensor(part("weight")?), b))
    }

    /// A GGUF's experts of one layer's `kind` (`gate`, `up`, `down`): llama.cpp stacks them in
    /// `blk.N.ffn_{kind}_exps` `[experts, out, in]`; each expert is a row range (whole quantized
    /// blocks), read once for all experts. None for other formats (one tensor per expert).
    pub fn gguf_experts(&self, layer: usize, kind: &str) -> Result<Option<Vec<Linear>>> {
        let Weights::Gguf { device, dense, .. } = self else {
            return Ok(None);
        };
        let q =
            self.gguf_qtensor_on(&format!("blk.{layer}.ffn_{kind}_exps.weight"), &Device::Cpu)?;
        let (experts, rows, cols) = q.shape().dims3()?;
        let dtype = q.dtype();
        let row_bytes = cols / dtype.block_size() * dtype.type_size();
        let data = q.data()?;
        (0..experts)
            .map(|j| {
                let part = &data[j * rows * row_bytes..(j + 1) * rows * row_bytes];
                let storage =
                    QStorage::from_data(std::borrow::Cow::Owned(part.to_vec()), device, dtype)?;
                let qt = QTensor::new(storage, (rows, cols))?;
                let w = match dense {
                    Some(dt) => {
                        let cpu = QStorage::from_data(
                            std::borrow::Cow::Borrowed(part),
                            &Device::Cpu,
                            dtype,
                        )?;
                        if let Some(l) =
                            self.gguf_on_gpu(&QTensor::new(cpu, (rows, cols))?, &None)?
                        {
                            return Ok(l);
                        }
                        QMatMul::Tensor(qt.dequantize(device)?.to_dtype(*dt)?)
                    }
                    None => QMatMul::from_qtensor(qt)?,
                };
                Ok(Linear::new(w, None))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Like [`Weights::linear`] for q/k projections, whose rows llama.cpp stores permuted for
    /// interleaved (GPT-J) rotary in `llama`-arch GGUF files: the rows are put back in HF's
    /// half-split order, so one rotary convention serves every format.
    pub fn rotary_linear(&self, name: &str, num_heads: usize, bias: bool) -> Result<Linear> {
        let Weights::Gguf { arch, device, .. } = self else {
            return self.linear(name, bias);
        };
        if arch != "llama" {
            return self.linear(name, bias);
        }
        let q = self.gguf_qtensor_on(&format!("{}.weight", gguf_name(arch, name)), &Device::Cpu)?;
        let (rows, cols) = q.shape().dims2()?;
        let dtype = q.dtype();
        let row_bytes = cols / dtype.block_size() * dtype.type_size();
        let order = unpermute_rows(rows, num_heads);
        let data = q.data()?;
        let mut out = Vec::with_capacity(data.len());
        for &r in &order {
            out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
        }
        let b = if bias {
            let idx: Vec<u32> = order.iter().map(|&r| r as u32).collect();
            let idx = Tensor::from_vec(idx, rows, device)?;
            Some(self.tensor(name, "bias")?.index_select(&idx, 0)?)
        } else {
            None
        };
        let cpu = QStorage::from_data(std::borrow::Cow::Borrowed(&out[..]), &Device::Cpu, dtype)?;
        if let Some(l) = self.gguf_on_gpu(&QTensor::new(cpu, (rows, cols))?, &b)? {
            return Ok(l);
        }
        let storage = QStorage::from_data(std::borrow::Cow::Owned(out), device, dtype)?;
        let qt = QTensor::new(storage, (rows, cols))?;
        let w = match self {
            Weights::Gguf {
                dense: Some(dt), ..
            } => QMatMul::Tensor(qt.dequantize(device)?.to_dtype(*dt)?),
            _ => QMatMul::from_qtensor(qt)?,
        };
        Ok(Linear::new(w, b))
    }

    pub fn gguf_content(&self) -> Option<&gguf_file::Content> {
        match self {
            Weights::Gguf { content, .. } => Some(content),
            _ => None,
        }
    }
}

/// For each HF row, the GGUF row holding it. llama.cpp's convert script maps HF row
/// `j * d/2 + i` of each head (half-split rotary pairs) to row `2i + j` (adjacent pairs).
fn unpermute_rows(rows: usize, num_heads: usize) -> Vec<usize> {
    let d = rows / num_heads;
    let half = d / 2;
    (0..rows)
        .map(|r| {
            let (h, within) = (r / d, r % d);
            let (j, i) = (within / half, within % half);
            h * d + 2 * i + j
        })
        .collect()
}

/// The safetensors files of an HF checkpoint directory: the index's shards, or the one file.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: HashMap<String, String>,
        }
        let idx: Index = serde_json::from_str(&std::fs::read_to_string(&index)?)
            .with_context(|| format!("parsing {}", index.display()))?;
        let mut files: Vec<String> = idx.weight_map.into_values().collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no *.safetensors in {}", dir.display());
    Ok(files)
}

#[cfg(test)]
mod tests {
    #[test]
    fn unpermutes_llama_cpp_rotary_rows() {
        // One head of dim 4: GGUF rows [a0, b0, a1, b1] hold HF rows [a0, a1, b0, b1].
        assert_eq!(super::unpermute_rows(4, 1), vec![0, 2, 1, 3]);
        assert_eq!(super::unpermute_rows(8, 2), vec![0, 2, 1, 3, 4, 6, 5, 7]);
    }

    #[test]
    fn maps_hf_names_to_gguf() {
        assert_eq!(
            super::gguf_name("llama", "model.layers.12.self_attn.o_proj"),
            "blk.12.attn_output"
        );
        assert_eq!(
            super::gguf_name("llama", "model.layers.0.post_attention_layernorm"),
            "blk.0.ffn_norm"
        );
        assert_eq!(super::gguf_name("llama", "lm_head"), "output");
        assert_eq!(
            super::gguf_name("gemma3", "model.layers.3.post_attention_layernorm"),
            "blk.3.post_attention_norm"
        );
        assert_eq!(
            super::gguf_name("gemma3", "model.layers.3.pre_feedforward_layernorm"),
            "blk.3.ffn_norm"
        );
    }
}
