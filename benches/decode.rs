//! Batch-1 decode tokens/s of the default model, GGUF Q4_1 and f32 safetensors, on this
//! machine's CPU (or GPU with `--features cuda` and FLARE_BENCH_DEVICE=cuda).
//!
//! `cargo bench --bench decode` (set CANDLE_NUM_THREADS for steadier numbers); prints one
//! line per format. Needs `python3 models/fetch_smollm2.py --hf` first.

use std::time::Instant;

use candle_core::{DType, Device};
use flare::models::{load_model, source};
use flare::runner::candle::{CandleForward, StepSeq};

const BLOCK: usize = 16;

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn bench(name: &str, files: source::ModelFiles, device: &Device, prompt_len: usize, decode: usize) {
    let t0 = Instant::now();
    let model = load_model(&files, DType::F32, device).expect("load model");
    let load_s = t0.elapsed().as_secs_f64();
    let blocks_needed = (prompt_len + decode).div_ceil(BLOCK);
    let fwd = CandleForward::new(model, blocks_needed, BLOCK, DType::F32).unwrap();
    let table: Vec<u32> = (0..blocks_needed as u32).collect();
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| 100 + (i * 37) % 5000)
        .collect();
    let t1 = Instant::now();
    let logits = fwd
        .step(&[StepSeq {
            new_tokens: &prompt,
            num_computed: 0,
            block_table: &table,
            logit_rows: 1,
            prompt_len,
            seq_id: None,
        }])
        .unwrap();
    let prefill_s = t1.elapsed().as_secs_f64();
    let mut tok = argmax(&logits[0]);
    let t2 = Instant::now();
    for i in 0..decode {
        let ids = [tok];
        let out = fwd
            .step(&[StepSeq {
                new_tokens: &ids,
                num_computed: prompt_len + i,
                block_table: &table,
                logit_rows: 1,
                prompt_len,
                seq_id: None,
            }])
            .unwrap();
        tok = argmax(&out[0]);
    }
    let decode_s = t2.elapsed().as_secs_f64();
    println!(
        "{name}: load {load_s:.2}s, prefill {prompt_len} tok {:.1} tok/s, decode {decode} tok {:.2} tok/s (batch 1, threads {})",
        prompt_len as f64 / prefill_s,
        decode as f64 / decode_s,
        candle_core::utils::get_num_threads()
    );
}

fn main() {
    let device = match std::env::var("FLARE_BENCH_DEVICE").as_deref() {
        Ok("cuda") => Device::new_cuda(0).expect("cuda device"),
        _ => Device::Cpu,
    };
    let decode: usize = std::env::var("FLARE_BENCH_TOKENS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let gguf = source::default_gguf_path();
    let hf = source::default_hf_dir();
    assert!(
        gguf.exists() && hf.exists(),
        "run `python3 models/fetch_smollm2.py --hf` first"
    );
    bench(
        "SmolLM2-135M GGUF Q4_1",
        source::ModelFiles::Gguf(gguf),
        &device,
        64,
        decode,
    );
    bench(
        "SmolLM2-135M f32 safetensors",
        source::ModelFiles::HfDir(hf),
        &device,
        64,
        decode,
    );
}
