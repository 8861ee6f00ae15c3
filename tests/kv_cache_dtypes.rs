//! `--kv-cache-dtype`: K and V stored narrower than the model computes, in the CPU paged
//! attention path.
//!
//! fp8: e4m3 bytes with per-tensor scales. The logits match transformers with its K/V rounded
//! through torch's e4m3 cast (within 1e-4), and stay within a stated bound of an f32 cache's;
//! a sequence's logits alone and batched agree as with any cache; the checkpoint's
//! `k_scale`/`v_scale` are used; the block pool holds 4x the tokens of an f32 cache and 2x a
//! bf16 one in the same memory; MLA models and unknown dtypes are refused by name. Also: e4m3
//! rounding bit for bit against torch, and the CPU kernel over fp8 bytes against tensor ops
//! over the decoded values.
//!
//! fp16 and bf16 (an f32 model with a 16-bit cache, llama.cpp's default on GGUF): the logits
//! match transformers with K/V rounded through torch's float16/bfloat16 casts, alone == batched
//! bit for bit, twice an f32 cache's tokens; refused for MLA.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use flare::engine::{build_engine, EngineArgs};
use flare::kv::{Fp8Scales, KvCache, KvCacheDtype};
use flare::layers::attention::{
    paged_attention_kv, paged_attention_tensor_ops, AttnMetadata, SeqAttn,
};
use flare::models::{load_model, source::ModelFiles, CausalLm};
use flare::quant::fp8::{e4m3_to_f32, f32_to_e4m3, round_e4m3};

const BLOCK: usize = 4;
const PROMPTS: [&[u32]; 3] = [
    &[231],
    &[156, 209, 4, 130, 48, 196, 219],
    &[
        46, 19, 112, 51, 123, 161, 24, 25, 173, 38, 26, 46, 243, 33, 208, 251, 115, 195, 101, 64,
        27, 125, 250,
    ],
];
/// Largest per-row `max|fp8 - f32| / max|f32|` of the logits allowed against an f32 cache.
const FP8_KV_TOL: f32 = 0.5;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(path: PathBuf) -> Box<dyn CausalLm> {
    load_model(&ModelFiles::HfDir(path.clone()), DType::F32, &Device::Cpu)
        .unwrap_or_else(|e| panic!("loading {}: {e:#}", path.display()))
}

/// Logits of every token of `prompts`: the first `split` tokens of each as one prefill step
/// (all prompts in one ragged batch), then the rest one token a step, so later tokens read
/// earlier ones back from the cache.
fn logits(model: &dyn CausalLm, kv: &KvCache, prompts: &[&[u32]]) -> Vec<Vec<Vec<f32>>> {
    let blocks: Vec<Vec<u32>> = {
        let mut next = 0u32;
        prompts
            .iter()
            .map(|p| {
                let n = p.len().div_ceil(BLOCK) as u32;
                next += n;
                (next - n..next).collect()
            })
            .collect()
    };
    let mut done = vec![0usize; prompts.len()];
    let mut out = vec![Vec::new(); prompts.len()];
    while done.iter().zip(prompts).any(|(d, p)| *d < p.len()) {
        let (mut ids, mut metas) = (Vec::new(), Vec::new());
        let mut who = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            if done[i] == p.len() {
                continue;
            }
            let take = if done[i] == 0 { p.len().div_ceil(2) } else { 1 };
            metas.push(SeqAttn {
                query_start: ids.len(),
                query_len: take,
                context_len: done[i] + take,
                block_table: blocks[i].clone(),
                prompt_len: p.len(),
            });
            ids.extend_from_slice(&p[done[i]..done[i] + take]);
            who.push((i, take));
            done[i] += take;
        }
        let n = ids.len();
        let meta = AttnMetadata::new(metas.clone(), BLOCK, &Device::Cpu).unwrap();
        let rows = Tensor::arange(0u32, n as u32, &Device::Cpu).unwrap();
        let step = model
            .forward(&Tensor::new(ids, &Device::Cpu).unwrap(), &meta, kv, &rows)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (m, (i, take)) in metas.iter().zip(who) {
            out[i].extend_from_slice(&step[m.query_start..m.query_start + take]);
        }
    }
    out
}

fn rel_err(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>]) -> f32 {
    let mut worst = 0f32;
    for (ra, rb) in a.iter().flatten().zip(b.iter().flatten()) {
        let scale = rb.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let d = ra
            .iter()
            .zip(rb)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        worst = worst.max(d / scale);
    }
    worst
}

fn cache(model: &dyn CausalLm, dtype: KvCacheDtype) -> KvCache {
    model
        .new_kv_cache(32, BLOCK, dtype.cache_dtype(model.dtype()))
        .unwrap()
}

/// transformers with every cached key (after rotary) and value rounded through torch's
/// float8_e4m3fn cast (tests/fixtures/make_kv_cache_reference.py), each prompt alone.
fn fp8_kv_reference(key: &str) -> Vec<Vec<Vec<f32>>> {
    reference("quant/fp8_kv_logits.json", key)
}

fn reference(file: &str, key: &str) -> Vec<Vec<Vec<f32>>> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(file)).unwrap()).unwrap();
    serde_json::from_value(v[key].clone()).unwrap_or_else(|e| panic!("{file} {key}: {e}"))
}

/// Within f32 rounding of the reference (an element landing on the other side of an e4m3
/// rounding boundary would show as a far larger error).
const REFERENCE_TOL: f32 = 1e-4;

/// Llama and Qwen3 (q/k norms) with an fp8 cache, batched and decoded token by token, against
/// transformers with fp8-rounded K/V; each prompt alone agrees with the batch.
#[test]
fn fp8_kv_matches_transformers_with_fp8_rounded_kv() {
    for name in ["tiny-llama", "tiny-qwen3"] {
        let model = load(fixture(name));
        let fp8 = cache(model.as_ref(), KvCacheDtype::Fp8E4m3);
        assert_eq!(fp8.layer(0).0.dtype(), DType::U8);
        let got = logits(model.as_ref(), &fp8, &PROMPTS);
        let err = rel_err(&got, &fp8_kv_reference(name));
        eprintln!("{name}: fp8 KV vs transformers fp8 KV {err:.3e}");
        assert!(err <= REFERENCE_TOL, "{name}: {err} > {REFERENCE_TOL}");
        for (i, p) in PROMPTS.iter().enumerate() {
            let alone = logits(
                model.as_ref(),
                &cache(model.as_ref(), KvCacheDtype::Fp8E4m3),
                &[p],
            );
            let e = rel_err(&alone, &got[i..i + 1]);
            // Bit-identical: the cache encoding is per element with a fixed scale, and the f32
            // matmuls do not depend on the batch (`cpu::dense`).
            assert!(
                alone[..] == got[i..i + 1],
                "{name}: prompt {i} alone vs batched {e}"
            );
        }
    }
}

/// Against an f32 cache: these tiny random models have peaked attention (weights drawn with
/// std 0.2), so e4m3's ~3% per-element error moves their logits by up to 11-32% of the row's
/// largest logit (measured: llama 0.21, qwen3 0.11, gemma3 0.21, gpt-oss 0.32); the bound is
/// 0.5, a gross-error check; exactness is the test above. (SmolLM2's perplexity with an fp8 cache is the real
/// quality figure: benches/results/ppl_smollm2.md.) Gemma 3 (sliding window) and gpt-oss
/// (attention sinks) run the fp8 path too.
#[test]
fn fp8_kv_logits_stay_close_to_f32_kv() {
    for name in ["tiny-llama", "tiny-qwen3", "tiny-gemma3", "tiny-gpt-oss"] {
        let model = load(fixture(name));
        let got = logits(
            model.as_ref(),
            &cache(model.as_ref(), KvCacheDtype::Fp8E4m3),
            &PROMPTS,
        );
        let want = logits(
            model.as_ref(),
            &cache(model.as_ref(), KvCacheDtype::Auto),
            &PROMPTS,
        );
        let err = rel_err(&got, &want);
        eprintln!("{name}: fp8 KV vs f32 KV max relative logit error {err:.3e}");
        assert!(err <= FP8_KV_TOL, "{name}: {err} > {FP8_KV_TOL}");
        assert!(err > 0.0, "{name}: fp8 KV changed nothing");
    }
}

/// A copy of tiny-llama with `k_scale`/`v_scale` in every layer: the scales are read (the
/// logits differ from scales 1.0) and decoding by them keeps the logits close to f32 KV.
#[test]
fn checkpoint_kv_scales_are_used() {
    let src = fixture("tiny-llama");
    let dir = std::env::temp_dir().join(format!("flare-kv-scales-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "generation_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut ts =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    for l in 0..2 {
        let a = format!("model.layers.{l}.self_attn");
        ts.insert(
            format!("{a}.k_scale"),
            Tensor::new(0.02f32, &Device::Cpu).unwrap(),
        );
        ts.insert(
            format!("{a}.v_scale"),
            Tensor::new(0.03f32, &Device::Cpu).unwrap(),
        );
    }
    candle_core::safetensors::save(&ts, dir.join("model.safetensors")).unwrap();
    let scaled = load(dir.clone());
    let plain = load(src);
    let kv = cache(scaled.as_ref(), KvCacheDtype::Fp8E4m3);
    assert_eq!(kv.fp8_scales(1).map(|s| (s.k, s.v)), Some((0.02, 0.03)));
    let with_scales = logits(scaled.as_ref(), &kv, &PROMPTS);
    let unit = logits(
        plain.as_ref(),
        &cache(plain.as_ref(), KvCacheDtype::Fp8E4m3),
        &PROMPTS,
    );
    let f32_kv = logits(
        plain.as_ref(),
        &cache(plain.as_ref(), KvCacheDtype::Auto),
        &PROMPTS,
    );
    assert!(rel_err(&with_scales, &unit) > 0.0);
    let err = rel_err(&with_scales, &fp8_kv_reference("tiny-llama-scaled"));
    assert!(err <= REFERENCE_TOL, "scaled fp8 KV vs transformers {err}");
    assert!(rel_err(&with_scales, &f32_kv) <= FP8_KV_TOL);
    // f32 and bf16/f16 caches ignore the scales.
    assert_eq!(
        rel_err(
            &logits(
                scaled.as_ref(),
                &cache(scaled.as_ref(), KvCacheDtype::Auto),
                &PROMPTS
            ),
            &f32_kv
        ),
        0.0
    );
    std::fs::remove_dir_all(dir).ok();
}

/// A key whose f32 value differs from transformers' in the last bit can round to the other
/// 16-bit neighbour: one such element moves a tiny model's logits by ~1e-4 of the row's largest.
const HALF_REFERENCE_TOL: f32 = 3e-4;

/// Llama and Qwen3 with fp16 and bf16 caches under an f32 model, batched and decoded token by
/// token, against transformers with K/V rounded through torch's casts (the rounding is the
/// same round-to-nearest-even, and reading widens exactly), far closer than an f32 cache is;
/// each prompt alone agrees with the batch bit for bit.
#[test]
fn half_kv_matches_transformers_with_half_rounded_kv() {
    for name in ["tiny-llama", "tiny-qwen3"] {
        let model = load(fixture(name));
        let f32_kv = logits(
            model.as_ref(),
            &cache(model.as_ref(), KvCacheDtype::Auto),
            &PROMPTS,
        );
        for (tag, kv, dtype) in [
            ("fp16", KvCacheDtype::Fp16, DType::F16),
            ("bf16", KvCacheDtype::Bf16, DType::BF16),
        ] {
            let c = cache(model.as_ref(), kv);
            assert_eq!(c.layer(0).0.dtype(), dtype);
            let got = logits(model.as_ref(), &c, &PROMPTS);
            let want = reference("quant/half_kv_logits.json", &format!("{name}-{tag}"));
            let err = rel_err(&got, &want);
            // An f32 cache misses the reference by the rounding itself.
            let unrounded = rel_err(&f32_kv, &want);
            eprintln!(
                "{name}: {tag} KV vs transformers {tag}-rounded KV {err:.3e} (f32 KV: \
                 {unrounded:.3e})"
            );
            assert!(
                err <= HALF_REFERENCE_TOL,
                "{name} {tag}: {err} > {HALF_REFERENCE_TOL}"
            );
            assert!(
                unrounded > 4.0 * err,
                "{name} {tag}: the rounding does not show"
            );
            for (i, p) in PROMPTS.iter().enumerate() {
                let alone = logits(model.as_ref(), &cache(model.as_ref(), kv), &[p]);
                assert!(
                    alone[..] == got[i..i + 1],
                    "{name} {tag}: prompt {i} alone vs batched"
                );
            }
        }
    }
}

/// Gemma 3 (sliding window, head_dim 32) and gpt-oss (attention sinks) take the 16-bit cache
/// through the same kernels: close to an f32 cache (f16 keeps 11 bits, bf16 8), and not equal.
#[test]
fn half_kv_logits_stay_close_to_f32_kv() {
    for name in ["tiny-gemma3", "tiny-gpt-oss"] {
        let model = load(fixture(name));
        let want = logits(
            model.as_ref(),
            &cache(model.as_ref(), KvCacheDtype::Auto),
            &PROMPTS,
        );
        for (kv, tol) in [(KvCacheDtype::Fp16, 5e-3), (KvCacheDtype::Bf16, 5e-2)] {
            let got = logits(model.as_ref(), &cache(model.as_ref(), kv), &PROMPTS);
            let err = rel_err(&got, &want);
            eprintln!("{name}: {} KV vs f32 KV {err:.3e}", kv.name());
            assert!(err <= tol && err > 0.0, "{name} {}: {err}", kv.name());
        }
    }
}

/// The same `--kv-cache-memory` holds 4x the tokens of an f32 cache, 2x a bf16 one.
#[test]
fn fp8_kv_capacity_doubles_vs_bf16_and_quadruples_vs_f32() {
    let blocks = |dtype: DType, kv: KvCacheDtype| {
        let args = EngineArgs {
            model: Some(fixture("tiny-llama").display().to_string()),
            dtype,
            kv_cache_memory: Some(1 << 20),
            max_model_len: Some(64),
            kv_cache_dtype: kv,
            ..EngineArgs::default()
        };
        build_engine(&args).unwrap().num_blocks
    };
    let f32_blocks = blocks(DType::F32, KvCacheDtype::Auto);
    let bf16_blocks = blocks(DType::BF16, KvCacheDtype::Auto);
    let fp8_blocks = blocks(DType::BF16, KvCacheDtype::Fp8E4m3);
    assert_eq!(bf16_blocks, 2 * f32_blocks);
    assert_eq!(fp8_blocks, 2 * bf16_blocks);
    assert_eq!(blocks(DType::F32, KvCacheDtype::Fp8E4m3), 4 * f32_blocks);
    assert_eq!(blocks(DType::F32, KvCacheDtype::Fp16), 2 * f32_blocks);
    assert_eq!(blocks(DType::F32, KvCacheDtype::Bf16), 2 * f32_blocks);
}

#[test]
fn unsupported_kv_cache_dtypes_are_refused_by_name() {
    let e = KvCacheDtype::parse("fp8_e5m2").unwrap_err().to_string();
    assert!(e.contains("`fp8_e5m2`"), "{e}");
    assert_eq!(KvCacheDtype::parse("fp8").unwrap(), KvCacheDtype::Fp8E4m3);
    assert_eq!(
        KvCacheDtype::parse("fp8_e4m3").unwrap(),
        KvCacheDtype::Fp8E4m3
    );
    assert_eq!(KvCacheDtype::parse("fp16").unwrap(), KvCacheDtype::Fp16);
    assert_eq!(KvCacheDtype::parse("bfloat16").unwrap(), KvCacheDtype::Bf16);
    // MLA's latent cache is read by tensor ops that know no FP8 bytes: a load error.
    let model = load(fixture("tiny-deepseek-v2"));
    let e = model
        .new_kv_cache(8, BLOCK, DType::F8E4M3)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--kv-cache-dtype fp8") && e.contains("MLA"),
        "{e}"
    );
    let e = model
        .new_kv_cache(8, BLOCK, DType::F16)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--kv-cache-dtype fp16") && e.contains("MLA"),
        "{e}"
    );
}

/// Bit for bit what torch's `clamp(-448, 448).to(float8_e4m3fn)` gives
/// (tests/fixtures/make_e4m3_reference.py): grid points, ties, neighbours of ties,
/// saturation, subnormals and random values over 25 binades.
#[test]
fn e4m3_rounding_matches_torch() {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/quant/e4m3_reference.json")).unwrap();
    let bits = v["bits"].as_array().unwrap();
    let want = v["e4m3"].as_array().unwrap();
    assert!(bits.len() > 5000 && bits.len() == want.len());
    for (b, w) in bits.iter().zip(want) {
        let x = f32::from_bits(b.as_i64().unwrap() as i32 as u32);
        let w = w.as_u64().unwrap() as u8;
        assert_eq!(f32_to_e4m3(x), w, "{x:e}");
        assert_eq!(round_e4m3(x).to_bits(), e4m3_to_f32(w).to_bits(), "{x:e}");
    }
}

/// An FP8 cache (e4m3 bytes written by `write_kv`, per-tensor scales): the kernel equals
/// the tensor-op version over the decoded values (`byte * scale` as f32), within f32
/// rounding; a sequence's rows are bit-identical alone and batched; and the tensor-op path
/// refuses the bytes instead of reading them as numbers.
#[test]
fn fp8_cache_reads_decoded_values_and_rows_are_batch_invariant() {
    let dev = Device::Cpu;
    let (bs, kvh, heads, d) = (4, 2, 6, 32);
    let scales = Fp8Scales { k: 0.02, v: 0.5 };
    let seqs = vec![
        SeqAttn {
            query_start: 0,
            query_len: 1,
            context_len: 9,
            block_table: vec![7, 2, 11],
            prompt_len: 0,
        },
        SeqAttn {
            query_start: 1,
            query_len: 6,
            context_len: 6,
            block_table: vec![9, 4],
            prompt_len: 0,
        },
    ];
    // Fill every slot the sequences use through write_kv, as a model step would.
    let k = Tensor::randn(0f32, 2.0, (15, kvh, d), &dev).unwrap();
    let v = Tensor::randn(0f32, 2.0, (15, kvh, d), &dev).unwrap();
    let fill = vec![
        SeqAttn {
            query_start: 0,
            query_len: 9,
            context_len: 9,
            block_table: vec![7, 2, 11],
            prompt_len: 0,
        },
        SeqAttn {
            query_start: 9,
            query_len: 6,
            context_len: 6,
            block_table: vec![9, 4],
            prompt_len: 0,
        },
    ];
    let kc = Tensor::zeros((16 * bs, kvh, d), DType::U8, &dev).unwrap();
    let vc = kc.zeros_like().unwrap();
    AttnMetadata::new(fill, bs, &dev)
        .unwrap()
        .write_kv(&k, &v, &kc, &vc, Some(scales))
        .unwrap();
    let decode = |c: &Tensor, s: f32| {
        let b = c.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        let f: Vec<f32> = b
            .iter()
            .map(|&x| flare::quant::fp8::e4m3_to_f32(x) * s)
            .collect();
        Tensor::from_vec(f, c.shape(), &dev).unwrap()
    };
    let (kf, vf) = (decode(&kc, scales.k), decode(&vc, scales.v));
    // Values are on the grid, within 1/16 relative of what was written.
    let k_rows = kf.narrow(0, 7 * bs, 1).unwrap().flatten_all().unwrap();
    let k_want = k.narrow(0, 0, 1).unwrap().flatten_all().unwrap();
    let rel = ((&k_rows - &k_want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap())
    .to_scalar::<f32>()
    .unwrap()
        / k_want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
    assert!(rel > 0.0 && rel <= 1.0 / 16.0, "{rel}");
    let meta = AttnMetadata::new(seqs.clone(), bs, &dev).unwrap();
    let q = Tensor::randn(0f32, 1.0, (7, heads, d), &dev).unwrap();
    let run = |q: &Tensor, meta: &AttnMetadata| {
        paged_attention_kv(q, &kc, &vc, meta, 0.3, None, None, Some(scales)).unwrap()
    };
    let a = run(&q, &meta);
    let b = paged_attention_tensor_ops(&q, &kf, &vf, &meta, 0.3, None, None).unwrap();
    let diff = (&a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff < 1e-5,
        "fp8 kernel vs tensor ops on decoded values: {diff}"
    );
    // The second sequence alone: the same bits as its rows of the batch.
    let mut s = seqs[1].clone();
    s.query_start = 0;
    let alone = run(
        &q.narrow(0, 1, 6).unwrap(),
        &AttnMetadata::new(vec![s], bs, &dev).unwrap(),
    );
    assert_eq!(
        alone.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        a.narrow(0, 1, 6)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
    // Scales and cache dtype must agree.
    assert!(paged_attention_kv(&q, &kc, &vc, &meta, 0.3, None, None, None).is_err());
    assert!(paged_attention_kv(&q, &kf, &vf, &meta, 0.3, None, None, Some(scales)).is_err());
}

/// A NaN written into an FP8 cache through `write_kv` (the real encoder, which is what tells
/// the CPU kernel that NaN bytes may exist: `fp8::nan_bytes_written`) reads back as NaN, as an
/// f32 cache's would: the rows attending to that position get NaN outputs, the earlier rows
/// of its sequence and the other sequence the same bits as without it. Both CPU layouts, as
/// `KvCache` allocates them: one KV head (slot-major) and two (head-major in groups).
#[test]
fn a_nan_written_into_an_fp8_cache_reads_back_as_nan() {
    let dev = Device::Cpu;
    let (bs, heads, d) = (4, 2, 32);
    let scales = Fp8Scales { k: 1.0, v: 1.0 };
    let seq = |start, len, table: Vec<u32>| SeqAttn {
        query_start: start,
        query_len: len,
        context_len: len,
        block_table: table,
        prompt_len: 0,
    };
    let seqs = vec![seq(0, 6, vec![3, 1]), seq(6, 5, vec![0, 2])];
    let q = Tensor::randn(0f32, 1.0, (11, heads, d), &dev).unwrap();
    for kvh in [1, 2] {
        let k = Tensor::randn(0f32, 1.0, (11, kvh, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (11, kvh, d), &dev).unwrap();
        let run = |v: &Tensor| {
            let cache = KvCache::new(1, 4, bs, kvh, d, DType::F8E4M3, &dev).unwrap();
            let (kc, vc) = cache.layer(0);
            assert_eq!(kc.rank(), if kvh == 1 { 3 } else { 5 });
            let meta = AttnMetadata::new(seqs.clone(), bs, &dev).unwrap();
            meta.write_kv(&k, v, kc, vc, Some(scales)).unwrap();
            let out = paged_attention_kv(&q, kc, vc, &meta, 0.2, None, None, Some(scales)).unwrap();
            out.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let clean = run(&v);
        assert!(clean.iter().all(|x| x.is_finite()));
        // One element of token 3's V (position 3 of the first sequence: rows 3..6 attend to
        // it), in its last KV head.
        let mut x = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        x[(3 * kvh + kvh - 1) * d + 5] = f32::NAN;
        let got = run(&Tensor::from_vec(x, (11, kvh, d), &dev).unwrap());
        // Token t's row: its query heads, those of the poisoned KV head last.
        let group = heads / kvh;
        for (t, (r, c)) in got
            .chunks(heads * d)
            .zip(clean.chunks(heads * d))
            .enumerate()
        {
            let (other, hit) = r.split_at((heads - group) * d);
            let bits = |y: &[f32]| y.iter().map(|z| z.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(other),
                bits(&c[..other.len()]),
                "{kvh} heads: token {t}"
            );
            if (3..6).contains(&t) {
                assert!(hit.iter().all(|x| x.is_nan()), "{kvh} heads: token {t}");
            } else {
                assert_eq!(bits(hit), bits(&c[other.len()..]), "{kvh} heads: token {t}");
            }
        }
    }
    assert!(flare::quant::fp8::nan_bytes_written());
}
