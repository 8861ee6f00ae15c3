//! FP8 e4m3 (OCP `e4m3fn`: bias 7, no infinities, max 448) and int8 rounding on the CPU, and
//! the activation fake-quantization op the quantized `Linear` applies to its input.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::ActQuant;

pub const E4M3_MAX: f32 = 448.0;

/// The value of an e4m3fn byte (NaN for 0x7f/0xff).
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((b >> 3) & 0x0f) as i32;
    let man = (b & 0x07) as f32;
    if exp == 0x0f && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    let mag = if exp == 0 {
        man * (2f32).powi(-9)
    } else {
        (1.0 + man / 8.0) * (2f32).powi(exp - 7)
    };
    sign * mag
}

/// `v` rounded to the nearest e4m3 value (ties to even), saturating at ±448: what
/// `torch.Tensor.to(torch.float8_e4m3fn)` gives after a clamp.
pub fn round_e4m3(v: f32) -> f32 {
    if v.is_nan() {
        return v;
    }
    let a = v.abs().min(E4M3_MAX);
    // Spacing of the grid: 2^(e - 3) for normals (e >= -6), 2^-9 for subnormals.
    let e = ((a.to_bits() >> 23) & 0xff) as i32 - 127;
    let step = (2f32).powi(e.max(-6) - 3);
    let r = (a / step).round_ties_even() * step;
    r.min(E4M3_MAX).copysign(v)
}

/// The e4m3fn byte nearest `v` (after saturation; NaN stays NaN).
pub fn f32_to_e4m3(v: f32) -> u8 {
    if v.is_nan() {
        return 0x7f;
    }
    let r = round_e4m3(v);
    let sign = if r.is_sign_negative() { 0x80 } else { 0 };
    let a = r.abs();
    // `r` lies on the grid, so its f32 mantissa has at most 3 significant bits.
    let mag = if a < E4M3_MIN_NORMAL {
        (a * 512.0) as u8 // subnormal: a multiple of 2^-9
    } else {
        let bits = a.to_bits();
        let exp = ((bits >> 23) & 0xff) as i32 - 127 + 7;
        ((exp as u8) << 3) | ((bits >> 20) & 0x7) as u8
    };
    sign | mag
}

/// Smallest normal e4m3 value, 2^-6.
const E4M3_MIN_NORMAL: f32 = 0.015625;

/// Every e4m3fn byte's value, for decoding cache rows in the attention kernel.
pub static E4M3_TABLE: std::sync::LazyLock<[f32; 256]> =
    std::sync::LazyLock::new(|| std::array::from_fn(|b| e4m3_to_f32(b as u8)));

/// `xs[i] * (1 / scale)` as e4m3fn bytes (saturating at ±448), how the FP8 KV cache stores a
/// row (the CUDA kernel multiplies by the same f32 reciprocal, so both give the same bytes).
pub fn encode_e4m3_scaled(xs: &[f32], scale: f32, out: &mut Vec<u8>) {
    let inv = 1.0 / scale;
    let mut nan = false;
    out.extend(xs.iter().map(|&x| {
        let b = f32_to_e4m3(x * inv);
        nan |= b & 0x7f == 0x7f;
        b
    }));
    if nan {
        note_nan_bytes_written();
    }
}

/// Set once this process has written a NaN byte into a CPU FP8 cache (see
/// [`nan_bytes_written`]).
static NAN_BYTES_WRITTEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a NaN byte may be in some CPU FP8 cache: false until [`encode_e4m3_scaled`] first
/// writes one (a NaN activation), then true for good. The CPU attention kernel reads NaN
/// bytes as finite values and finds them in a pass of its own, about a fifth of its time;
/// while this is false no cache can hold one, so it skips that pass. A latch for the whole
/// process, because a cache is a plain candle buffer with no room for a flag of its own: a
/// NaN anywhere only brings the pass back everywhere.
pub fn nan_bytes_written() -> bool {
    NAN_BYTES_WRITTEN.load(std::sync::atomic::Ordering::Acquire)
}

/// Records that a NaN byte went into a CPU FP8 cache (tests that write cache bytes directly
/// call it too).
pub fn note_nan_bytes_written() {
    NAN_BYTES_WRITTEN.store(true, std::sync::atomic::Ordering::Release);
}

/// Symmetric int8 rounding of `v / scale` (ties to even, like `torch.round`), clamped.
pub fn round_int8(v: f32) -> f32 {
    v.round_ties_even().clamp(-128.0, 127.0)
}

/// Rounds one row of activations to the format's grid and back, in place.
fn fake_quant_row(row: &mut [f32], q: ActQuant) {
    let fp8 = |xs: &mut [f32], scale: f32| {
        if scale > 0.0 {
            xs.iter_mut()
                .for_each(|x| *x = round_e4m3(*x / scale) * scale);
        }
    };
    let int8 = |xs: &mut [f32], scale: f32| {
        if scale > 0.0 {
            xs.iter_mut()
                .for_each(|x| *x = round_int8(*x / scale) * scale);
        }
    };
    let amax = |xs: &[f32]| xs.iter().fold(0f32, |m, x| m.max(x.abs()));
    match q {
        ActQuant::Fp8PerToken => {
            let s = amax(row) / E4M3_MAX;
            fp8(row, s)
        }
        ActQuant::Fp8PerTokenGroup(g) => {
            for chunk in row.chunks_mut(g) {
                let s = amax(chunk) / E4M3_MAX;
                fp8(chunk, s)
            }
        }
        ActQuant::Fp8Static(s) => fp8(row, s),
        ActQuant::Int8PerToken => {
            let s = amax(row) / 127.0;
            int8(row, s)
        }
        ActQuant::Int8Static(s) => int8(row, s),
    }
}

/// `x: [.., in]` with every row fake-quantized (same dtype as `x`).
pub fn quantize_activations(x: &Tensor, q: ActQuant) -> Result<Tensor> {
    let dtype = x.dtype();
    x.to_dtype(DType::F32)?
        .contiguous()?
        .apply_op1_no_bwd(&FakeQuant(q))?
        .to_dtype(dtype)
}

struct FakeQuant(ActQuant);

impl CustomOp1 for FakeQuant {
    fn name(&self) -> &'static str {
        "flare-act-fake-quant"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), Some((a, b))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("activation quantization: needs contiguous f32 input");
        };
        let k = *l.shape().dims().last().unwrap_or(&1);
        let mut out = x[a..b].to_vec();
        for row in out.chunks_mut(k.max(1)) {
            fake_quant_row(row, self.0);
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_grid_round_trips() {
        for b in 0..=255u8 {
            let v = e4m3_to_f32(b);
            if v.is_nan() {
                continue;
            }
            assert_eq!(round_e4m3(v), v, "byte {b:#x}");
            assert_eq!(e4m3_to_f32(f32_to_e4m3(v)), v);
            assert_eq!(E4M3_TABLE[b as usize].to_bits(), v.to_bits());
            if v != 0.0 {
                assert_eq!(f32_to_e4m3(v), b, "{v}");
            }
        }
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(round_e4m3(1000.0), 448.0);
        // 1.0625 lies halfway between 1.0 and 1.125: ties to even (1.0).
        assert_eq!(round_e4m3(1.0625), 1.0);
        assert_eq!(round_e4m3(1.1875), 1.25);
    }

    #[test]
    fn per_token_quantization_is_row_local() {
        let mut a = vec![0.1, -3.0, 2.5, 0.01];
        let mut b = a.clone();
        fake_quant_row(&mut a, ActQuant::Fp8PerToken);
        fake_quant_row(&mut b, ActQuant::Fp8PerToken);
        assert_eq!(a, b);
        assert_eq!(a[1], -3.0); // the row's max maps to 448 exactly
        let mut c = vec![1.0, -127.0, 63.4];
        fake_quant_row(&mut c, ActQuant::Int8PerToken);
        assert_eq!(c, vec![1.0, -127.0, 63.0]);
    }
}
