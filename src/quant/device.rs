//! The layouts the GPU's quantized GEMMs take (kernels/fp8_gemm.cu, kernels/w4a16_gemm.cu),
//! built at load from each format's tensors, so quantized weights stay quantized on the GPU.
//!
//! Two forms cover every format:
//! - [`Fp8Packed`]: e4m3 bytes `[out, in]` and one f32 scale per (row, `gw` inputs): per-tensor
//!   and per-channel scales (`gw = in`), blocks (`gw` = the block's width, each row its block's
//!   scale), with the activation quantization of the format (`gx`, a static scale).
//! - [`IntPacked`]: unsigned 4- or 8-bit values `[out, in]` packed in u32 words along the input,
//!   and per (row, group of `g` inputs) a (scale, offset) pair, `w = q * scale + offset`:
//!   zero points become `offset = -zero * scale`, GGUF's mins fit as they are. GPTQ's `g_idx`
//!   (desc_act) becomes a permutation of the inputs, applied to the activations too.
//!
//! Each builder returns None where the kernels' shape rules do not hold (then the layer keeps
//! the dense dequantized weight): the input a multiple of 64, groups of 32 (FP8) or 16 (int)
//! dividing it. `dequantize` gives back the dense weight for tests against `quant::load`.

use anyhow::{ensure, Context, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use safetensors::Dtype;

use super::formats::unpack_dense;
use super::fp8::{e4m3_to_f32, E4M3_MAX};
use super::load::{f32s, is_float};
use super::{ActQuant, CtFormat, Method, QuantConfig, Strategy};

/// FP8 weights and the activation quantization the GEMM applies to the layer's input.
#[derive(Debug, Clone)]
pub struct Fp8Packed {
    pub out: usize,
    pub inp: usize,
    /// e4m3 bytes `[out, in]`.
    pub bytes: Vec<u8>,
    /// `[out, in / gw]`.
    pub scales: Vec<f32>,
    pub gw: usize,
    /// Activation scale groups along the input (`in` for per-token).
    pub gx: usize,
    /// A static activation scale (None: dynamic, `max|x| / 448` per token and group).
    pub static_scale: Option<f32>,
}

/// Integer weights, 4 or 8 bits, with per-group (scale, offset).
#[derive(Debug, Clone)]
pub struct IntPacked {
    pub out: usize,
    pub inp: usize,
    pub bits: u32,
    /// `[out, in * bits / 32]`: value `k` at bits `(k % (32 / bits)) * bits` of word `k / (32 / bits)`.
    pub words: Vec<u32>,
    /// `[out, in / g, 2]`: (scale, offset).
    pub scale_offset: Vec<f32>,
    pub g: usize,
    /// The activations' input order (`x[:, perm]`), when `g_idx` reorders the groups.
    pub perm: Option<Vec<u32>>,
}

/// A layer's weight in the GPU's quantized form.
#[derive(Debug, Clone)]
pub enum DevicePacked {
    Fp8(Fp8Packed),
    Int(IntPacked),
}

/// The e4m3fn byte nearest `v` (ties to even, saturating at ±448): what kernels/mma.cuh's
/// `f32_to_e4m3` computes, in integer arithmetic (fast enough to quantize 8B weights at load).
pub fn encode_e4m3(v: f32) -> u8 {
    let u = v.to_bits();
    let sign = ((u >> 24) & 0x80) as u8;
    let ua = u & 0x7fff_ffff;
    if ua > 0x7f80_0000 {
        return sign | 0x7f;
    }
    if ua >= 0x43e0_0000 {
        return sign | 0x7e;
    }
    if ua < 0x3c80_0000 {
        return sign | (f32::from_bits(ua) * 512.0).round_ties_even() as u8;
    }
    let r = (ua + 0x7ffff + ((ua >> 20) & 1)) & !0xfffff;
    let e = (r >> 23) as i32 - 127;
    sign | (((e + 7) << 3) as u8) | ((r >> 20) & 7) as u8
}

impl Fp8Packed {
    /// `[out, in]` dense weights of the form (tests).
    pub fn dequantize(&self) -> Vec<f32> {
        let groups = self.inp / self.gw;
        (0..self.out * self.inp)
            .map(|k| {
                let (o, i) = (k / self.inp, k % self.inp);
                e4m3_to_f32(self.bytes[k]) * self.scales[o * groups + i / self.gw]
            })
            .collect()
    }

    /// The activation quantization this form applies (the CPU path's `ActQuant`).
    pub fn act_quant(&self) -> ActQuant {
        match (self.static_scale, self.gx == self.inp) {
            (Some(s), _) => ActQuant::Fp8Static(s),
            (None, true) => ActQuant::Fp8PerToken,
            (None, false) => ActQuant::Fp8PerTokenGroup(self.gx),
        }
    }

    /// Per-output-channel e4m3 of dense weights `[out, in]` (`--quantization fp8`), the same
    /// values as `load::fp8_per_channel`.
    pub fn per_channel(w: &[f32], out: usize, inp: usize) -> Option<Self> {
        if !shape_ok(inp, 32) {
            return None;
        }
        let mut bytes = Vec::with_capacity(w.len());
        let mut scales = Vec::with_capacity(out);
        for row in w.chunks(inp) {
            let s = row.iter().fold(0f32, |m, x| m.max(x.abs())) / E4M3_MAX;
            scales.push(s);
            bytes.extend(
                row.iter()
                    .map(|&x| if s > 0.0 { encode_e4m3(x / s) } else { 0 }),
            );
        }
        Some(Self {
            out,
            inp,
            bytes,
            scales,
            gw: inp,
            gx: inp,
            static_scale: None,
        })
    }
}

impl IntPacked {
    /// `[out, in]` dense weights in the checkpoint's input order (tests).
    pub fn dequantize(&self) -> Vec<f32> {
        let per = 32 / self.bits as usize;
        let mask = (1u32 << self.bits) - 1;
        let groups = self.inp / self.g;
        let row_words = self.inp / per;
        let mut dense = vec![0f32; self.out * self.inp];
        for o in 0..self.out {
            for k in 0..self.inp {
                let q =
                    (self.words[o * row_words + k / per] >> ((k % per) as u32 * self.bits)) & mask;
                let so = 2 * (o * groups + k / self.g);
                let v = (q as f32).mul_add(self.scale_offset[so], self.scale_offset[so + 1]);
                let i = self.perm.as_ref().map_or(k, |p| p[k] as usize);
                dense[o * self.inp + i] = v;
            }
        }
        dense
    }

    /// Packs unsigned values `q [out, in]` (input order already permuted) with per
    /// (row, group) (scale, offset).
    fn from_parts(
        q: &[u32],
        out: usize,
        inp: usize,
        bits: u32,
        g: usize,
        scale_offset_of: impl Fn(usize, usize) -> (f32, f32),
        perm: Option<Vec<u32>>,
    ) -> Self {
        let per = 32 / bits as usize;
        let mut words = vec![0u32; out * inp / per];
        for (k, &v) in q.iter().enumerate() {
            words[k / per] |= v << ((k % per) as u32 * bits);
        }
        let groups = inp / g;
        let mut scale_offset = Vec::with_capacity(out * groups * 2);
        for o in 0..out {
            for gi in 0..groups {
                let (s, off) = scale_offset_of(o, gi);
                scale_offset.push(s);
                scale_offset.push(off);
            }
        }
        Self {
            out,
            inp,
            bits,
            words,
            scale_offset,
            g,
            perm,
        }
    }
}

/// `(q - zero) * scale` as `q * scale + offset` (one rounding of the exact offset).
fn with_zero(scale: f32, zero: f32) -> (f32, f32) {
    (scale, (-(zero as f64) * scale as f64) as f32)
}

/// The kernels' shape rule: the input a multiple of 64, the group a multiple of `unit`
/// dividing it.
fn shape_ok(inp: usize, group: usize) -> bool {
    inp > 0 && inp.is_multiple_of(64) && group > 0 && inp.is_multiple_of(group)
}

fn need<'a>(st: &'a MmapedSafetensors, name: &str) -> Result<safetensors::tensor::TensorView<'a>> {
    st.get(name)
        .map_err(|_| anyhow::anyhow!("quantized checkpoint is missing tensor {name}"))
}

fn words(v: &safetensors::tensor::TensorView) -> Result<Vec<u32>> {
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

fn ints(v: &safetensors::tensor::TensorView) -> Result<Vec<i64>> {
    let b = v.data();
    Ok(match v.dtype() {
        Dtype::I32 | Dtype::U32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        Dtype::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        other => anyhow::bail!("expected an integer tensor, found {other:?}"),
    })
}

/// The input permutation that makes groups contiguous (stable sort by group), and whether the
/// permuted groups are the plain `k / g` (else the kernels cannot take it: None).
fn group_perm(g_idx: &[i64], g: usize) -> Option<Option<Vec<u32>>> {
    let mut perm: Vec<u32> = (0..g_idx.len() as u32).collect();
    perm.sort_by_key(|&i| g_idx[i as usize]);
    if perm
        .iter()
        .enumerate()
        .any(|(k, &i)| g_idx[i as usize] != (k / g) as i64)
    {
        return None;
    }
    let identity = perm.iter().enumerate().all(|(k, &i)| k as u32 == i);
    Some((!identity).then_some(perm))
}

/// `q [out, in]` with the inputs taken in `perm`'s order.
fn permute_inputs(q: Vec<u32>, inp: usize, perm: Option<&[u32]>) -> Vec<u32> {
    match perm {
        None => q,
        Some(p) => q
            .chunks(inp)
            .flat_map(|row| p.iter().map(move |&i| row[i as usize]))
            .collect(),
    }
}

/// The module `name` of a quantized checkpoint in the GPU's form, or None where the layer
/// stays dense (an ignored or dense module, a format or shape the kernels do not take).
pub fn linear(st: &MmapedSafetensors, q: &QuantConfig, name: &str) -> Result<Option<DevicePacked>> {
    if q.ignores(name) {
        return Ok(None);
    }
    let t = |suffix: &str| format!("{name}.{suffix}");
    let weight = st.get(&t("weight")).ok();
    if !matches!(q.method, Method::OnlineFp8)
        && weight.as_ref().is_some_and(|v| is_float(v.dtype()))
    {
        return Ok(None);
    }
    Ok(match &q.method {
        Method::OnlineFp8 => {
            let Some(w) = weight else { return Ok(None) };
            let [out, inp] = w.shape() else {
                return Ok(None);
            };
            Fp8Packed::per_channel(&f32s(&w)?, *out, *inp).map(DevicePacked::Fp8)
        }
        Method::HfFp8 { block, dynamic } => {
            let w = need(st, &t("weight"))?;
            let s = f32s(&need(st, &t("weight_scale_inv"))?)?;
            let [out, inp] = w.shape() else {
                return Ok(None);
            };
            // As quant::load: dynamic activations go in groups of the block's width whenever
            // the config names blocks, whatever the scale's shape.
            let gx = block.map_or(*inp, |b| b.1);
            let strategy = match block {
                Some((b0, b1)) if s.len() > 1 => Strategy::Block(*b0, *b1),
                None if s.len() > 1 => return Ok(None),
                _ => Strategy::Tensor,
            };
            let static_scale = match dynamic {
                true => None,
                false => Some(static_scale(
                    st,
                    &[t("input_scale"), t("activation_scale")],
                )?),
            };
            fp8_from(w.data(), *out, *inp, &s, strategy, gx, static_scale)
        }
        Method::CompressedTensors(sch) => {
            let scale = f32s(&need(st, &t("weight_scale"))?)?;
            match (&sch.format, &sch.input) {
                (CtFormat::Float, Some(a)) if a.float => {
                    let w = need(st, &t("weight"))?;
                    let [out, inp] = w.shape() else {
                        return Ok(None);
                    };
                    let gx = a.group.unwrap_or(*inp);
                    let static_scale = match a.dynamic {
                        true => None,
                        false => Some(static_scale(st, &[t("input_scale")])?),
                    };
                    fp8_from(w.data(), *out, *inp, &scale, sch.strategy, gx, static_scale)
                }
                (CtFormat::Pack, None) => {
                    let shape = ints(&need(st, &t("weight_shape"))?)?;
                    let (out, inp) = (shape[0] as usize, shape[1] as usize);
                    let g = match sch.strategy {
                        Strategy::Group(g) => g,
                        Strategy::Channel | Strategy::Tensor => inp,
                        Strategy::Block(..) => return Ok(None),
                    };
                    if !shape_ok(inp, g) || !g.is_multiple_of(16) {
                        return Ok(None);
                    }
                    let bits = sch.bits;
                    let offset = 1u32 << (bits - 1);
                    let packed = words(&need(st, &t("weight_packed"))?)?;
                    let per_row = packed.len() / out.max(1);
                    let q: Vec<u32> = packed
                        .chunks(per_row)
                        .flat_map(|r| unpack_dense(r, bits, inp))
                        .collect();
                    let groups = inp / g;
                    let zeros: Option<Vec<u32>> = match sch.symmetric {
                        true => None,
                        false => {
                            // Packed along the output: [ceil(out*bits/32), groups].
                            let zp = words(&need(st, &t("weight_zero_point"))?)?;
                            let wpc = out.div_ceil(32 / bits as usize);
                            ensure!(
                                zp.len() == wpc * groups,
                                "{}: shape",
                                t("weight_zero_point")
                            );
                            let mut z = vec![0u32; out * groups];
                            for c in 0..groups {
                                let col: Vec<u32> = (0..wpc).map(|w| zp[w * groups + c]).collect();
                                for (r, v) in unpack_dense(&col, bits, out).into_iter().enumerate()
                                {
                                    z[r * groups + c] = v;
                                }
                            }
                            Some(z)
                        }
                    };
                    let perm = match st.get(&t("weight_g_idx")) {
                        Ok(v) => match group_perm(&ints(&v)?, g) {
                            Some(p) => p,
                            None => return Ok(None),
                        },
                        Err(_) => None,
                    };
                    let q = permute_inputs(q, inp, perm.as_deref());
                    let scale_of = |o: usize, gi: usize| match sch.strategy {
                        Strategy::Tensor => scale[0],
                        Strategy::Channel => scale[o],
                        _ => scale[o * groups + gi],
                    };
                    ensure!(scale.len() >= out * groups || sch.strategy != Strategy::Group(g));
                    Some(DevicePacked::Int(IntPacked::from_parts(
                        &q,
                        out,
                        inp,
                        bits,
                        g,
                        |o, gi| {
                            let z = zeros.as_ref().map_or(offset, |z| z[o * groups + gi]);
                            with_zero(scale_of(o, gi), z as f32)
                        },
                        perm,
                    )))
                }
                _ => None,
            }
        }
        Method::Awq { group_size } => {
            let g = *group_size;
            let qw = words(&need(st, &t("qweight"))?)?;
            let qz = words(&need(st, &t("qzeros"))?)?;
            let scales = f32s(&need(st, &t("scales"))?)?;
            let inp = need(st, &t("qweight"))?.shape()[0];
            let out = qw.len() / inp.max(1) * 8;
            if !shape_ok(inp, g) || !g.is_multiple_of(16) {
                return Ok(None);
            }
            const AWQ_NIBBLE: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];
            let nib = |words: &[u32], row: usize, col: usize| -> u32 {
                (words[row * (out / 8) + col / 8] >> (4 * AWQ_NIBBLE[col % 8])) & 0xf
            };
            let mut q = vec![0u32; out * inp];
            for i in 0..inp {
                for o in 0..out {
                    q[o * inp + i] = nib(&qw, i, o);
                }
            }
            Some(DevicePacked::Int(IntPacked::from_parts(
                &q,
                out,
                inp,
                4,
                g,
                |o, gi| with_zero(scales[gi * out + o], nib(&qz, gi, o) as f32),
                None,
            )))
        }
        Method::Gptq {
            bits,
            group_size,
            v2,
            ..
        } => {
            let bits = *bits;
            let per = 32 / bits as usize;
            let qwv = need(st, &t("qweight"))?;
            let [packed_in, out] = qwv.shape() else {
                return Ok(None);
            };
            let (inp, out) = (packed_in * per, *out);
            let g = group_size.unwrap_or(inp);
            if !shape_ok(inp, g) || !g.is_multiple_of(16) {
                return Ok(None);
            }
            let qw = words(&qwv)?;
            let qz = words(&need(st, &t("qzeros"))?)?;
            let scales = f32s(&need(st, &t("scales"))?)?;
            let g_idx = match st.get(&t("g_idx")) {
                Ok(v) => ints(&v)?,
                Err(_) => (0..inp).map(|i| (i / g) as i64).collect(),
            };
            let groups = scales.len() / out;
            if groups != inp / g {
                return Ok(None);
            }
            let Some(perm) = group_perm(&g_idx, g) else {
                return Ok(None);
            };
            let mask = (1u32 << bits) - 1;
            let mut q = vec![0u32; out * inp];
            for i in 0..inp {
                for o in 0..out {
                    q[o * inp + i] =
                        (qw[(i / per) * out + o] >> (bits as usize * (i % per))) & mask;
                }
            }
            let q = permute_inputs(q, inp, perm.as_deref());
            let zero = |gi: usize, o: usize| {
                let zs = (qz[gi * (out / per) + o / per] >> (bits as usize * (o % per))) & mask;
                if *v2 {
                    zs
                } else {
                    (zs + 1) & mask
                }
            };
            Some(DevicePacked::Int(IntPacked::from_parts(
                &q,
                out,
                inp,
                bits,
                g,
                |o, gi| with_zero(scales[gi * out + o], zero(gi, o) as f32),
                perm,
            )))
        }
        Method::Mxfp4 | Method::Gguf(_) => None,
    })
}

fn static_scale(st: &MmapedSafetensors, names: &[String]) -> Result<f32> {
    for n in names {
        if let Ok(v) = st.get(n) {
            let s = f32s(&v)?;
            ensure!(s.len() == 1, "{n}: only per-tensor static scales");
            ensure!(
                s[0] > 0.0,
                "{n}: static activation scale {} is not positive",
                s[0]
            );
            return Ok(s[0]);
        }
    }
    anyhow::bail!("static activation scale missing: none of {names:?}")
}

/// FP8 bytes with scales on `strategy`'s grid as one scale per (row, `gw` inputs).
fn fp8_from(
    bytes: &[u8],
    out: usize,
    inp: usize,
    scale: &[f32],
    strategy: Strategy,
    gx: usize,
    static_scale: Option<f32>,
) -> Option<DevicePacked> {
    let (gw, row_of): (usize, Box<dyn Fn(usize, usize) -> f32 + '_>) = match strategy {
        Strategy::Tensor => (inp, Box::new(|_, _| scale[0])),
        Strategy::Channel => (inp, Box::new(|o, _| scale[o])),
        Strategy::Group(g) => (g, Box::new(move |o, gi| scale[o * (inp / g) + gi])),
        Strategy::Block(b0, b1) => (
            b1,
            Box::new(move |o, gi| scale[(o / b0) * inp.div_ceil(b1) + gi]),
        ),
    };
    if !shape_ok(inp, gw) || !shape_ok(inp, gx) || !gw.is_multiple_of(32) || !gx.is_multiple_of(32)
    {
        return None;
    }
    let groups = inp / gw;
    let scales = (0..out * groups)
        .map(|k| row_of(k / groups, k % groups))
        .collect();
    Some(DevicePacked::Fp8(Fp8Packed {
        out,
        inp,
        bytes: bytes.to_vec(),
        scales,
        gw,
        gx,
        static_scale,
    }))
}

/// A GGUF weight `[out, in]` of a type the int kernels take (Q4_0, Q4_1, Q4_K as 4-bit; Q8_0,
/// Q6_K as 8-bit), read on the CPU; None for other types and shapes.
pub fn gguf(qt: &QTensor) -> Result<Option<IntPacked>> {
    let (out, inp) = qt.shape().dims2()?;
    let dtype = qt.dtype();
    let (bits, g) = match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q4K => (4, 32),
        GgmlDType::Q8_0 => (8, 32),
        GgmlDType::Q6K => (8, 16),
        _ => return Ok(None),
    };
    if !shape_ok(inp, dtype.block_size()) {
        return Ok(None);
    }
    let data = qt.data().context("GGUF tensor data")?;
    let block_bytes = dtype.type_size();
    let groups = inp / g;
    let mut q = vec![0u32; out * inp];
    let mut so = vec![(0f32, 0f32); out * groups];
    let f16 = |b: &[u8], at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
    for (bi, b) in data.chunks_exact(block_bytes).enumerate() {
        let base = bi * dtype.block_size(); // element index of the block's first value
        let (o, i0) = (base / inp, base % inp);
        let q = &mut q[o * inp + i0..o * inp + i0 + dtype.block_size()];
        let so = &mut so[o * groups + i0 / g..];
        match dtype {
            GgmlDType::Q4_0 | GgmlDType::Q4_1 => {
                let (d, m, qs) = match dtype {
                    GgmlDType::Q4_0 => (f16(b, 0), None, &b[2..18]),
                    _ => (f16(b, 0), Some(f16(b, 2)), &b[4..20]),
                };
                for j in 0..16 {
                    q[j] = (qs[j] & 0xf) as u32;
                    q[j + 16] = (qs[j] >> 4) as u32;
                }
                // Q4_0: (q - 8) * d; Q4_1: q * d + m.
                so[0] = match m {
                    None => (d, -8.0 * d),
                    Some(m) => (d, m),
                };
            }
            GgmlDType::Q8_0 => {
                let d = f16(b, 0);
                for j in 0..32 {
                    q[j] = (b[2 + j] as i8 as i32 + 128) as u32;
                }
                so[0] = (d, -128.0 * d);
            }
            GgmlDType::Q4K => {
                let (d, dmin) = (f16(b, 0), f16(b, 2));
                let sc = &b[4..16];
                let qs = &b[16..144];
                for j in 0..4 {
                    let (s1, m1) = scale_min_k4(2 * j, sc);
                    let (s2, m2) = scale_min_k4(2 * j + 1, sc);
                    for l in 0..32 {
                        q[64 * j + l] = (qs[32 * j + l] & 0xf) as u32;
                        q[64 * j + 32 + l] = (qs[32 * j + l] >> 4) as u32;
                    }
                    // d * scale * q - dmin * min, as llama.cpp computes it.
                    so[2 * j] = (d * s1 as f32, -(dmin * m1 as f32));
                    so[2 * j + 1] = (d * s2 as f32, -(dmin * m2 as f32));
                }
            }
            GgmlDType::Q6K => {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16(b, 208);
                for n in 0..2 {
                    let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
                    for l in 0..32 {
                        let y = 128 * n + l;
                        q[y] = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as u32;
                        q[y + 32] = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as u32;
                        q[y + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as u32;
                        q[y + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as u32;
                    }
                    for (k, &s) in sc[..8].iter().enumerate() {
                        // Groups of 16: (q - 32) * d * scale.
                        let scale = d * s as i8 as f32;
                        so[8 * n + k] = (scale, -32.0 * scale);
                    }
                }
            }
            _ => unreachable!(),
        }
    }
    Ok(Some(IntPacked::from_parts(
        &q,
        out,
        inp,
        bits,
        g,
        |o, gi| so[o * groups + gi],
        None,
    )))
}

/// llama.cpp's `get_scale_min_k4`: the 6-bit scale and min of Q4_K sub-block `j`.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
