//! Reads a quantized `Linear`'s tensors (by the format's own names) from safetensors and
//! dequantizes them to the dense `[out, in]` weight, with the activation quantization the
//! format prescribes.

use anyhow::{bail, ensure, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::formats::{self, ScaleGrid};
use super::fp8::{round_e4m3, E4M3_MAX};
use super::{ActQuant, CtFormat, Method, QuantConfig, Strategy};

/// A dequantized weight and how the layer's input is to be quantized.
pub struct Dequantized {
    /// `[out, in]` row-major.
    pub dense: Vec<f32>,
    pub out: usize,
    pub inp: usize,
    pub act: Option<ActQuant>,
}

fn view<'a>(st: &'a MmapedSafetensors, name: &str) -> Option<TensorView<'a>> {
    st.get(name).ok()
}

fn need<'a>(st: &'a MmapedSafetensors, name: &str) -> Result<TensorView<'a>> {
    st.get(name)
        .map_err(|_| anyhow::anyhow!("quantized checkpoint is missing tensor {name}"))
}

pub fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// Any float tensor as f32.
pub fn f32s(v: &TensorView) -> Result<Vec<f32>> {
    let b = v.data();
    Ok(match v.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        other => bail!("expected a float tensor, found {other:?}"),
    })
}

/// Any integer tensor as i32 values.
fn ints(v: &TensorView) -> Result<Vec<i32>> {
    let b = v.data();
    Ok(match v.dtype() {
        Dtype::I32 | Dtype::U32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as i32)
            .collect(),
        Dtype::I16 => b
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes(c.try_into().unwrap()) as i32)
            .collect(),
        Dtype::I8 => b.iter().map(|&x| x as i8 as i32).collect(),
        Dtype::U8 => b.iter().map(|&x| x as i32).collect(),
        other => bail!("expected an integer tensor, found {other:?}"),
    })
}

/// Packed 32-bit words.
fn words(v: &TensorView) -> Result<Vec<u32>> {
    ensure!(
        matches!(v.dtype(), Dtype::I32 | Dtype::U32),
        "expected packed int32 words, found {:?}",
        v.dtype()
    );
    Ok(v.data()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

fn dims2(v: &TensorView, name: &str) -> Result<(usize, usize)> {
    match v.shape() {
        [a, b] => Ok((*a, *b)),
        s => bail!("{name} has shape {s:?}, expected 2-D"),
    }
}

/// A scale's grid shape: scalars and `[n]` vectors as `[1, 1]` / `[n, 1]`.
fn grid_shape(v: &TensorView) -> (usize, usize) {
    match v.shape() {
        [] => (1, 1),
        [n] if *n == 1 => (1, 1),
        [n] => (*n, 1),
        [a, b] => (*a, *b),
        s => (s.iter().product(), 1),
    }
}

fn scalar(st: &MmapedSafetensors, names: &[String]) -> Result<f32> {
    for n in names {
        if let Some(v) = view(st, n) {
            let s = f32s(&v)?;
            ensure!(
                s.len() == 1,
                "{n} has {} values; only per-tensor static scales are supported",
                s.len()
            );
            return Ok(s[0]);
        }
    }
    bail!("static activation scale missing: none of {names:?}")
}

/// The module `name`'s weight dequantized, or None when the checkpoint keeps it dense (an
/// ignored module, or one the method leaves alone such as lm_head in AWQ/GPTQ).
pub fn linear(st: &MmapedSafetensors, q: &QuantConfig, name: &str) -> Result<Option<Dequantized>> {
    let w = view(st, &format!("{name}.weight"));
    let float_weight = w.as_ref().is_some_and(|v| is_float(v.dtype()));
    if q.ignores(name) {
        return Ok(None);
    }
    let t = |suffix: &str| format!("{name}.{suffix}");
    match &q.method {
        Method::Mxfp4 | Method::Gguf(_) => Ok(None),
        Method::OnlineFp8 => {
            let v = need(st, &t("weight"))?;
            ensure!(
                is_float(v.dtype()),
                "--quantization fp8 needs a float checkpoint; {} is {:?}",
                t("weight"),
                v.dtype()
            );
            let (out, inp) = dims2(&v, &t("weight"))?;
            Ok(Some(Dequantized {
                dense: fp8_per_channel(&f32s(&v)?, inp),
                out,
                inp,
                act: Some(ActQuant::Fp8PerToken),
            }))
        }
        _ if float_weight => Ok(None),
        Method::HfFp8 { block, dynamic } => {
            let w = need(st, &t("weight"))?;
            ensure!(
                w.dtype() == Dtype::F8_E4M3,
                "{} is {:?}, expected F8_E4M3",
                t("weight"),
                w.dtype()
            );
            let (out, inp) = dims2(&w, &t("weight"))?;
            let s = need(st, &t("weight_scale_inv"))?;
            let shape = grid_shape(&s);
            let strategy = match (shape, block) {
                ((1, 1), _) => Strategy::Tensor,
                (_, Some((b0, b1))) => Strategy::Block(*b0, *b1),
                (s, None) => bail!(
                    "{} has shape {s:?} but the config has no weight_block_size",
                    t("weight_scale_inv")
                ),
            };
            let grid = ScaleGrid::new(strategy, shape, out, inp)?;
            let dense = formats::fp8(w.data(), out, inp, &f32s(&s)?, grid)?;
            let act = match (dynamic, block) {
                (true, Some((_, b1))) => ActQuant::Fp8PerTokenGroup(*b1),
                (true, None) => ActQuant::Fp8PerToken,
                (false, _) => {
                    ActQuant::Fp8Static(scalar(st, &[t("input_scale"), t("activation_scale")])?)
                }
            };
            Ok(Some(Dequantized {
                dense,
                out,
                inp,
                act: Some(act),
            }))
        }
        Method::CompressedTensors(s) => {
            let scale = need(st, &t("weight_scale"))?;
            let scales = f32s(&scale)?;
            let g_idx = view(st, &t("weight_g_idx")).map(|v| ints(&v)).transpose()?;
            let (dense, out, inp) = match s.format {
                CtFormat::Float | CtFormat::Int => {
                    let w = need(st, &t("weight"))?;
                    let (out, inp) = dims2(&w, &t("weight"))?;
                    let grid = ScaleGrid::new(s.strategy, grid_shape(&scale), out, inp)
                        .with_context(|| t("weight_scale"))?;
                    let dense = if s.format == CtFormat::Float {
                        ensure!(
                            w.dtype() == Dtype::F8_E4M3,
                            "{} is {:?}, expected F8_E4M3",
                            t("weight"),
                            w.dtype()
                        );
                        formats::fp8(w.data(), out, inp, &scales, grid)?
                    } else {
                        ensure!(
                            w.dtype() == Dtype::I8,
                            "{} is {:?}, expected I8",
                            t("weight"),
                            w.dtype()
                        );
                        let zero = match s.symmetric {
                            true => None,
                            false => Some(ints(&need(st, &t("weight_zero_point"))?)?),
                        };
                        formats::affine(
                            &ints(&w)?,
                            out,
                            inp,
                            &scales,
                            zero.as_deref(),
                            grid,
                            g_idx.as_deref(),
                        )?
                    };
                    (dense, out, inp)
                }
                CtFormat::Pack => {
                    let shape = ints(&need(st, &t("weight_shape"))?)?;
                    ensure!(shape.len() == 2, "{} is not [out, in]", t("weight_shape"));
                    let (out, inp) = (shape[0] as usize, shape[1] as usize);
                    let packed = words(&need(st, &t("weight_packed"))?)?;
                    let grid = ScaleGrid::new(s.strategy, grid_shape(&scale), out, inp)
                        .with_context(|| t("weight_scale"))?;
                    let zero = match s.symmetric {
                        true => None,
                        false => Some(words(&need(st, &t("weight_zero_point"))?)?),
                    };
                    let dense = formats::ct_packed(
                        &packed,
                        out,
                        inp,
                        s.bits,
                        &scales,
                        zero.as_deref(),
                        grid,
                        g_idx.as_deref(),
                    )?;
                    (dense, out, inp)
                }
            };
            let act = match &s.input {
                None => None,
                Some(a) => Some(match (a.float, a.dynamic, a.group) {
                    (true, true, Some(g)) => ActQuant::Fp8PerTokenGroup(g),
                    (true, true, None) => ActQuant::Fp8PerToken,
                    (true, false, _) => ActQuant::Fp8Static(scalar(st, &[t("input_scale")])?),
                    (false, true, None) => ActQuant::Int8PerToken,
                    (false, false, _) => ActQuant::Int8Static(scalar(st, &[t("input_scale")])?),
                    (false, true, Some(_)) => {
                        bail!("unsupported compressed-tensors int8 group activations")
                    }
                }),
            };
            Ok(Some(Dequantized {
                dense,
                out,
                inp,
                act,
            }))
        }
        Method::Awq { group_size } => {
            let qw = need(st, &t("qweight"))?;
            let (inp, packed_out) = dims2(&qw, &t("qweight"))?;
            let out = packed_out * 8;
            let dense = formats::awq(
                &words(&qw)?,
                &words(&need(st, &t("qzeros"))?)?,
                &f32s(&need(st, &t("scales"))?)?,
                inp,
                out,
                *group_size,
            )?;
            Ok(Some(Dequantized {
                dense,
                out,
                inp,
                act: None,
            }))
        }
        Method::Gptq {
            bits,
            group_size,
            v2,
            ..
        } => {
            let qw = need(st, &t("qweight"))?;
            let (packed_in, out) = dims2(&qw, &t("qweight"))?;
            let inp = packed_in * 32 / *bits as usize;
            let g_idx = match view(st, &t("g_idx")) {
                Some(v) => ints(&v)?,
                None => {
                    let g = group_size.unwrap_or(inp);
                    (0..inp).map(|i| (i / g) as i32).collect()
                }
            };
            let dense = formats::gptq(
                &words(&qw)?,
                &words(&need(st, &t("qzeros"))?)?,
                &f32s(&need(st, &t("scales"))?)?,
                &g_idx,
                inp,
                out,
                *bits,
                *v2,
            )?;
            Ok(Some(Dequantized {
                dense,
                out,
                inp,
                act: None,
            }))
        }
    }
}

/// Per-output-channel e4m3 weights (`scale = max|row| / 448`), dequantized again: what an FP8
/// GEMM with scales in its epilogue computes with.
pub fn fp8_per_channel(w: &[f32], inp: usize) -> Vec<f32> {
    w.chunks(inp.max(1))
        .flat_map(|row| {
            let s = row.iter().fold(0f32, |m, x| m.max(x.abs())) / E4M3_MAX;
            row.iter()
                .map(move |&x| if s > 0.0 { round_e4m3(x / s) * s } else { 0.0 })
        })
        .collect()
}

/// gpt-oss's stacked MXFP4 experts `{prefix}.{kind}_blocks`/`_scales` as the dense
/// `[experts, in, out]` tensor the bf16 checkpoints store under `{prefix}.{kind}`.
pub fn mxfp4_stacked(
    st: &MmapedSafetensors,
    prefix: &str,
    kind: &str,
) -> Result<Option<(Vec<f32>, [usize; 3])>> {
    let Some(blocks) = view(st, &format!("{prefix}.{kind}_blocks")) else {
        return Ok(None);
    };
    let scales = need(st, &format!("{prefix}.{kind}_scales"))?;
    let [e, rows, nb, 16] = blocks.shape() else {
        bail!(
            "{prefix}.{kind}_blocks has shape {:?}, expected [experts, rows, blocks, 16]",
            blocks.shape()
        );
    };
    let (e, rows, cols) = (*e, *rows, nb * 32);
    ensure!(
        blocks.dtype() == Dtype::U8 && scales.dtype() == Dtype::U8,
        "mxfp4 blocks/scales must be U8"
    );
    let dense = formats::mxfp4(blocks.data(), scales.data(), e * rows, cols)?;
    // [e, rows(out), cols(in)] -> [e, in, out].
    let mut t = vec![0f32; dense.len()];
    for x in 0..e {
        for r in 0..rows {
            for c in 0..cols {
                t[x * rows * cols + c * rows + r] = dense[x * rows * cols + r * cols + c];
            }
        }
    }
    Ok(Some((t, [e, cols, rows])))
}
