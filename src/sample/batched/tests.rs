//! The batched sampler against the exact distribution, against `SequenceSampler`, and
//! alone against in a batch.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::sample::SequenceSampler;

fn params(temperature: f32, top_k: usize, top_p: f32, min_p: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p,
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

fn ctx<'a>(prompt: &'a [u32], output: &'a [u32]) -> SampleContext<'a> {
    SampleContext {
        prompt_tokens: prompt,
        output_tokens: output,
        eos_token_ids: &[],
    }
}

/// Samples `logits` once per position `0..n` (one batch of n rows).
fn draws(logits: &[f32], p: &SamplingParams, n: usize) -> Vec<u32> {
    let mut b = BatchedSampler::new();
    let prompt: Vec<u32> = vec![];
    let outputs = vec![0u32; n];
    for i in 0..n {
        // The position is prompt + output length; no penalties are set, so the outputs'
        // values do not matter.
        b.push_row(p, p.seed.unwrap(), &ctx(&prompt, &outputs[..i]));
    }
    let rows: Vec<f32> = (0..n).flat_map(|_| logits.iter().copied()).collect();
    let t = Tensor::from_vec(rows, (n, logits.len()), &Device::Cpu).unwrap();
    b.sample(&t).unwrap()
}

/// The exact distribution of the filters, in f64 (ties do not occur in these rows).
fn exact(logits: &[f32], p: &SamplingParams) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut w: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, ((l as f64 - max) / p.temperature as f64).exp()))
        .collect();
    w.sort_by(|a, b| b.1.total_cmp(&a.1));
    if p.top_k > 0 {
        w.truncate(p.top_k);
    }
    if p.top_p < 1.0 {
        let total: f64 = w.iter().map(|c| c.1).sum();
        let mut cum = 0.0;
        let keep = w
            .iter()
            .position(|c| {
                cum += c.1;
                cum >= p.top_p as f64 * total
            })
            .map_or(w.len(), |i| i + 1);
        w.truncate(keep);
    }
    w.retain(|c| c.1 >= p.min_p as f64);
    let total: f64 = w.iter().map(|c| c.1).sum();
    let mut probs = vec![0.0; logits.len()];
    for (i, v) in w {
        probs[i] = v / total;
    }
    probs
}

/// Pearson's statistic over the tokens the exact distribution allows; any draw outside them
/// fails at once.
fn chi_squared(samples: &[u32], probs: &[f64]) -> (f64, usize) {
    let mut counts = vec![0usize; probs.len()];
    for &s in samples {
        assert!(
            probs[s as usize] > 0.0,
            "token {s} is outside the support {probs:?}"
        );
        counts[s as usize] += 1;
    }
    let n = samples.len() as f64;
    let support: Vec<usize> = (0..probs.len()).filter(|&i| probs[i] > 0.0).collect();
    let stat = support
        .iter()
        .map(|&i| (counts[i] as f64 - n * probs[i]).powi(2) / (n * probs[i]))
        .sum();
    (stat, support.len() - 1)
}

/// Critical values of chi-squared at p = 0.001 by degrees of freedom (0 to 7).
const CHI2_999: [f64; 8] = [0.0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32];

#[test]
fn draws_follow_the_exact_filtered_distribution() {
    let logits = [1.0f32, 2.5, 0.3, 2.0, -1.0, 1.7, 0.9, 2.2];
    let cases = [
        params(1.0, 0, 1.0, 0.0, 11),
        params(0.7, 0, 1.0, 0.0, 12),
        params(1.5, 4, 1.0, 0.0, 13),
        params(1.0, 0, 0.75, 0.0, 14),
        params(1.0, 0, 1.0, 0.3, 15),
        params(1.2, 6, 0.9, 0.1, 16),
    ];
    for p in &cases {
        let probs = exact(&logits, p);
        let samples = draws(&logits, p, 20_000);
        let (stat, df) = chi_squared(&samples, &probs);
        assert!(
            stat < CHI2_999[df],
            "{p:?}: chi2 {stat:.1} with {df} dof over {probs:?}"
        );
    }
}

#[test]
fn a_wrong_temperature_fails_the_same_test() {
    // The test above has power: draws at temperature 1.3 do not pass for 1.0.
    let logits = [1.0f32, 2.5, 0.3, 2.0, -1.0, 1.7, 0.9, 2.2];
    let samples = draws(&logits, &params(1.3, 0, 1.0, 0.0, 21), 20_000);
    let (stat, df) = chi_squared(&samples, &exact(&logits, &params(1.0, 0, 1.0, 0.0, 21)));
    assert!(stat > CHI2_999[df], "chi2 {stat}");
}

fn random_row(rng: &mut StdRng, vocab: usize) -> Vec<f32> {
    (0..vocab).map(|_| rng.random_range(-4.0f32..4.0)).collect()
}

fn random_params(rng: &mut StdRng, vocab: u32) -> SamplingParams {
    let mut p = params(
        [0.0, 0.5, 1.0, 1.7][rng.random_range(0..4)],
        [0, 0, 5, 40][rng.random_range(0..4)],
        [1.0, 1.0, 0.8, 0.95][rng.random_range(0..4)],
        [0.0, 0.0, 0.05][rng.random_range(0..3)],
        rng.random(),
    );
    if rng.random_bool(0.5) {
        p.repetition_penalty = 1.3;
        p.frequency_penalty = 0.4;
        p.presence_penalty = 0.2;
        p.logit_bias = HashMap::from([(rng.random_range(0..vocab), 3.0), (vocab + 7, 1.0)]);
        p.min_tokens = 4;
        p.stop_token_ids = vec![rng.random_range(0..vocab)];
    }
    p
}

#[test]
fn a_row_draws_the_same_token_alone_and_in_any_batch() {
    let mut rng = StdRng::seed_from_u64(5);
    let vocab = 300;
    let rows: Vec<(Vec<f32>, SamplingParams, Vec<u32>)> = (0..24)
        .map(|_| {
            let outputs = (0..rng.random_range(0..8))
                .map(|_| rng.random_range(0..vocab as u32))
                .collect();
            (
                random_row(&mut rng, vocab),
                random_params(&mut rng, vocab as u32),
                outputs,
            )
        })
        .collect();
    let prompt = [1u32, 2, 3];
    let run = |which: &[usize]| {
        let mut b = BatchedSampler::new();
        let mut data = Vec::new();
        for &i in which {
            let (row, p, out) = &rows[i];
            let c = SampleContext {
                eos_token_ids: &[0],
                ..ctx(&prompt, out)
            };
            b.push_row(p, p.seed.unwrap(), &c);
            data.extend_from_slice(row);
        }
        let t = Tensor::from_vec(data, (which.len(), vocab), &Device::Cpu).unwrap();
        b.sample(&t).unwrap()
    };
    let all: Vec<usize> = (0..rows.len()).collect();
    let batch = run(&all);
    let reversed: Vec<usize> = all.iter().rev().copied().collect();
    let batch_reversed = run(&reversed);
    for i in all {
        assert_eq!(run(&[i])[0], batch[i], "row {i} alone");
        assert_eq!(
            batch_reversed[rows.len() - 1 - i],
            batch[i],
            "row {i} reordered"
        );
    }
}

#[test]
fn agrees_with_the_sequence_sampler_token_for_token() {
    // Same processors, same Philox number: the same token except where summation order
    // moves a CDF boundary across the number (not expected in 2,000 draws).
    let mut rng = StdRng::seed_from_u64(9);
    let vocab = 500;
    let prompt = [4u32, 9, 4];
    let eos = [2u32];
    let mut differ = 0;
    for _ in 0..2000 {
        let row = random_row(&mut rng, vocab);
        let p = random_params(&mut rng, vocab as u32);
        let outputs: Vec<u32> = (0..rng.random_range(0..8))
            .map(|_| rng.random_range(0..vocab as u32))
            .collect();
        let c = SampleContext {
            eos_token_ids: &eos,
            ..ctx(&prompt, &outputs)
        };
        let host = SequenceSampler::new(&p).sample(&row, &c).token;
        let mut b = BatchedSampler::new();
        b.push_row(&p, p.seed.unwrap(), &c);
        let t = Tensor::from_vec(row, (1, vocab), &Device::Cpu).unwrap();
        differ += usize::from(b.sample(&t).unwrap()[0] != host);
    }
    assert!(differ <= 1, "{differ} of 2000 draws differ");
}

#[test]
fn seeded_rows_depend_on_seed_and_position_only() {
    let logits: Vec<f32> = (0..64).map(|i| (i % 7) as f32 * 0.1).collect();
    let a = draws(&logits, &params(1.0, 0, 1.0, 0.0, 42), 50);
    assert_eq!(a, draws(&logits, &params(1.0, 0, 1.0, 0.0, 42), 50));
    assert_ne!(a, draws(&logits, &params(1.0, 0, 1.0, 0.0, 43), 50));
}
