//! Where a speculative step's time goes on this machine (issue 10): the f32 target's forward
//! of one sequence computing 1..=K+1 tokens (the verify-cost curve), the same at batch 16,
//! the Q4_1 draft's one-token forward, and the host-side pieces (logits to the host, argmax).
//!
//! `cargo run --release --example spec_profile` (RAYON_NUM_THREADS / CANDLE_NUM_THREADS set the
//! threads; SPEC_PROFILE_REPS the repetitions, default 20; SPEC_PROFILE_K the most tokens per
//! sequence minus one, default 5; SPEC_PROFILE_MODELS `target,draft`; SPEC_PROFILE_BATCHES
//! `1,16`; FLARE_CPU_QGEMM=off for candle's own matmuls). Needs
//! `python3 models/fetch_smollm2.py --hf`. Prints one line per measurement: median ms.

use std::time::Instant;

use candle_core::{DType, Device};
use flare::models::{load_model, source};
use flare::runner::candle::{CandleForward, StepSeq};

const BLOCK: usize = 16;
const PROMPT: usize = 128;
const MAX_K: usize = 8;

fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

struct Loaded {
    fwd: CandleForward,
    tables: Vec<Vec<u32>>,
}

/// A model with `batch` sequences of PROMPT tokens prefilled.
fn load(files: source::ModelFiles, batch: usize) -> Loaded {
    let model = load_model(&files, DType::F32, &Device::Cpu).expect("load model");
    let per_seq = (PROMPT + MAX_K + 1).div_ceil(BLOCK);
    let fwd = CandleForward::new(model, per_seq * batch, BLOCK, DType::F32).unwrap();
    let tables: Vec<Vec<u32>> = (0..batch)
        .map(|b| ((b * per_seq) as u32..((b + 1) * per_seq) as u32).collect())
        .collect();
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| 100 + (i * 37) % 5000).collect();
    for t in &tables {
        fwd.step(&[StepSeq {
            seq_id: None,
            new_tokens: &prompt,
            num_computed: 0,
            block_table: t,
            logit_rows: 1,
            prompt_len: PROMPT,
        }])
        .unwrap();
    }
    Loaded { fwd, tables }
}

/// One forward in which each of `batch` sequences computes `n` tokens and wants `n` rows.
fn forward_ms(m: &Loaded, batch: usize, n: usize, reps: usize, to_host: bool) -> f64 {
    let new: Vec<u32> = (0..n as u32).map(|i| 200 + i).collect();
    let steps: Vec<StepSeq> = m.tables[..batch]
        .iter()
        .map(|t| StepSeq {
            seq_id: None,
            new_tokens: &new,
            num_computed: PROMPT,
            block_table: t,
            logit_rows: n,
            prompt_len: PROMPT,
        })
        .collect();
    median_ms(reps, || {
        let logits = m.fwd.step_logits(&steps).unwrap().unwrap();
        if to_host {
            let _ = logits.to_vec2::<f32>().unwrap();
        } else {
            let _ = flare::ops::sampling::argmax(&logits)
                .unwrap()
                .to_vec1::<u32>();
        }
    })
}

fn main() {
    let reps: usize = std::env::var("SPEC_PROFILE_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let k: usize = std::env::var("SPEC_PROFILE_K")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .min(MAX_K)
        + 1;
    println!(
        "threads {} (candle), RAYON_NUM_THREADS={:?}, context {PROMPT}, median of {reps}",
        candle_core::utils::get_num_threads(),
        std::env::var("RAYON_NUM_THREADS").ok()
    );
    let batches: Vec<usize> = std::env::var("SPEC_PROFILE_BATCHES")
        .unwrap_or_else(|_| "1,16".into())
        .split(',')
        .map(|b| b.trim().parse().expect("SPEC_PROFILE_BATCHES: 1,16"))
        .collect();
    let max_batch = batches.iter().copied().max().unwrap_or(1).min(16);
    let which = std::env::var("SPEC_PROFILE_MODELS").unwrap_or_else(|_| "target,draft".into());
    if which.contains("kernel") {
        kernel(reps);
    }
    let mut models = Vec::new();
    if which.contains("target") {
        let files = source::ModelFiles::HfDir(source::default_hf_dir());
        models.push(("target f32", load(files, max_batch)));
    }
    if which.contains("draft") {
        let files = source::ModelFiles::Gguf(source::default_gguf_path());
        models.push(("draft Q4_1", load(files, max_batch)));
    }
    for (name, m) in &models {
        for &batch in batches.iter().filter(|&&b| b <= max_batch) {
            let one = forward_ms(m, batch, 1, reps, false);
            for n in 1..=k {
                let argmax = if n == 1 {
                    one
                } else {
                    forward_ms(m, batch, n, reps, false)
                };
                let host = forward_ms(m, batch, n, reps, true);
                println!(
                    "{name} batch {batch:>2} tokens/seq {n}: forward+argmax {argmax:7.2} ms ({:4.2}x one token), forward+logits to host {host:7.2} ms",
                    argmax / one
                );
            }
        }
    }
}

/// The batch-invariant dense kernel against candle's matmul on one MLP-sized weight.
fn kernel(reps: usize) {
    let (n, k) = (1536, 576);
    let w = candle_core::Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
    let wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let packed = flare::cpu::dense::DenseWeight::pack(&wv, n, k);
    for m in [1, 2, 4, 8, 16, 64] {
        let x = candle_core::Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut out = vec![0f32; m * n];
        let ours = median_ms(reps * 10, || packed.matmul(&xv, m, &mut out));
        let wt = w.t().unwrap();
        let candle = median_ms(reps * 10, || {
            let _ = x.matmul(&wt).unwrap();
        });
        println!("kernel [{m},{k}]x[{n},{k}]^T: dense {ours:.3} ms, candle {candle:.3} ms");
    }
}
