//! End-to-end tests of `SequenceSampler` through its public API.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

const NO_CTX: SampleContext<'static> = SampleContext {
    prompt_tokens: &[],
    output_tokens: &[],
    eos_token_ids: &[],
};

fn seeded(seed: u64) -> SamplingParams {
    SamplingParams {
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

fn greedy() -> SamplingParams {
    SamplingParams::greedy(16)
}

fn sample_once(params: &SamplingParams, logits: &[f32], ctx: &SampleContext) -> u32 {
    SequenceSampler::new(params).sample(logits, ctx).token
}

fn softmax(logits: &[f32], temperature: f32) -> Vec<f64> {
    let scaled: Vec<f64> = logits.iter().map(|&l| (l / temperature) as f64).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = scaled.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// Generated tokens to stand for a sequence's history: the RNG is counted by position, so
/// repeated draws from one row need a context that advances (no penalties read the ids).
static HISTORY: [u32; 20_000] = [0; 20_000];

/// The context of the `i`-th token of a sequence with an empty prompt.
fn at(i: usize) -> SampleContext<'static> {
    SampleContext {
        output_tokens: &HISTORY[..i],
        ..NO_CTX
    }
}

/// Empirical token frequencies over `draws` samples from one seeded sampler, one per position.
fn frequencies(params: &SamplingParams, logits: &[f32], draws: usize) -> Vec<f64> {
    let mut sampler = SequenceSampler::new(params);
    let mut counts = vec![0usize; logits.len()];
    for i in 0..draws {
        counts[sampler.sample(logits, &at(i)).token as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / draws as f64).collect()
}

fn assert_close(actual: &[f64], expected: &[f64], tol: f64) {
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tol,
            "token {i}: {a} vs {e} (all: {actual:?})"
        );
    }
}

fn support(freqs: &[f64]) -> Vec<u32> {
    (0..freqs.len() as u32)
        .filter(|&i| freqs[i as usize] > 0.0)
        .collect()
}

#[test]
fn greedy_is_argmax_with_lowest_id_on_ties() {
    let logits = [0.1, 3.0, 3.0, -1.0];
    assert_eq!(sample_once(&greedy(), &logits, &NO_CTX), 1);
    assert_eq!(sample_once(&greedy(), &[-5.0, -2.0, -3.0], &NO_CTX), 1);
}

#[test]
fn low_temperature_tends_to_greedy() {
    let params = SamplingParams {
        temperature: 0.001,
        ..seeded(1)
    };
    let freqs = frequencies(&params, &[1.0, 1.2, 0.9, 1.15], 500);
    assert_eq!(freqs, vec![0.0, 1.0, 0.0, 0.0]);
}

#[test]
fn empirical_frequencies_match_softmax_at_each_temperature() {
    let logits = [1.0, 2.0, 0.5, -1.0, 0.0];
    for (seed, temperature) in [(3, 1.0), (4, 0.5), (5, 2.5)] {
        let params = SamplingParams {
            temperature,
            ..seeded(seed)
        };
        let freqs = frequencies(&params, &logits, 20_000);
        // 0.015 is over four standard deviations at 20k draws.
        assert_close(&freqs, &softmax(&logits, temperature), 0.015);
    }
}

#[test]
fn high_temperature_flattens_towards_uniform() {
    let logits = [1.0, 2.0, 0.5, -1.0, 0.0];
    let params = SamplingParams {
        temperature: 100.0,
        ..seeded(6)
    };
    let freqs = frequencies(&params, &logits, 20_000);
    assert_close(&freqs, &[0.2; 5], 0.02);
    // At temperature 1 the same row is far from uniform.
    assert!(softmax(&logits, 1.0)[1] > 0.45);
}

#[test]
fn top_k_only_yields_the_k_best() {
    let logits = [0.3, 1.0, 0.9, -2.0, 0.95, 0.2, 0.0, 0.5];
    let params = SamplingParams {
        top_k: 3,
        ..seeded(7)
    };
    let freqs = frequencies(&params, &logits, 5_000);
    assert_eq!(support(&freqs), vec![1, 2, 4]);
    let p = softmax(&[1.0, 0.9, 0.95], 1.0);
    assert_close(&[freqs[1], freqs[2], freqs[4]], &p, 0.03);
}

#[test]
fn top_p_drops_the_tail_at_the_boundary() {
    let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
    let at_boundary = SamplingParams {
        top_p: 0.8,
        ..seeded(8)
    };
    let freqs = frequencies(&at_boundary, &logits, 5_000);
    assert_eq!(support(&freqs), vec![0, 1]);
    assert_close(&freqs, &[0.625, 0.375, 0.0], 0.03);

    let past_boundary = SamplingParams {
        top_p: 0.81,
        ..seeded(8)
    };
    assert_eq!(
        support(&frequencies(&past_boundary, &logits, 5_000)),
        vec![0, 1, 2]
    );
}

#[test]
fn min_p_drops_tokens_below_a_fraction_of_the_best() {
    let logits = [0.0, 0.5f32.ln(), 0.1f32.ln(), 0.05f32.ln()];
    let params = SamplingParams {
        min_p: 0.2,
        ..seeded(9)
    };
    let freqs = frequencies(&params, &logits, 5_000);
    assert_eq!(support(&freqs), vec![0, 1]);
    assert_close(&freqs, &[2.0 / 3.0, 1.0 / 3.0, 0.0, 0.0], 0.03);
}

#[test]
fn repetition_penalty_hits_positive_and_negative_logits_in_prompt_and_output() {
    let params = SamplingParams {
        repetition_penalty: 2.0,
        ..greedy()
    };
    // Positive logit seen in the prompt: 2.0 / 2 = 1.0 < 1.5.
    let prompt = SampleContext {
        prompt_tokens: &[0],
        ..NO_CTX
    };
    assert_eq!(sample_once(&greedy(), &[2.0, 1.5], &prompt), 0);
    assert_eq!(sample_once(&params, &[2.0, 1.5], &prompt), 1);
    // Negative logit seen in the output: -1.0 * 2 = -2.0 < -1.5.
    let output = SampleContext {
        output_tokens: &[0],
        ..NO_CTX
    };
    assert_eq!(sample_once(&params, &[-1.0, -1.5], &output), 1);
    // Repeated occurrences are penalized once: 2.0 / 2 = 1.0 > 0.9.
    let repeated = SampleContext {
        prompt_tokens: &[0, 0, 0],
        output_tokens: &[0, 0],
        ..NO_CTX
    };
    assert_eq!(sample_once(&params, &[2.0, 0.9], &repeated), 0);
}

#[test]
fn presence_penalty_changes_argmax() {
    let logits = [2.0, 1.8, 0.0];
    let params = SamplingParams {
        presence_penalty: 0.5,
        ..greedy()
    };
    let ctx = SampleContext {
        output_tokens: &[0, 0, 0],
        ..NO_CTX
    };
    assert_eq!(sample_once(&greedy(), &logits, &ctx), 0);
    // Once, whatever the count: 2.0 - 0.5 = 1.5 < 1.8.
    assert_eq!(sample_once(&params, &logits, &ctx), 1);
    let small = SamplingParams {
        presence_penalty: 0.1,
        ..greedy()
    };
    assert_eq!(sample_once(&small, &logits, &ctx), 0);
}

#[test]
fn frequency_penalty_scales_with_count_and_ignores_the_prompt() {
    let logits = [2.0, 1.8, 0.0];
    let params = SamplingParams {
        frequency_penalty: 0.1,
        ..greedy()
    };
    // One occurrence: 1.9 > 1.8; three: 1.7 < 1.8.
    let once = SampleContext {
        output_tokens: &[0],
        ..NO_CTX
    };
    let thrice = SampleContext {
        output_tokens: &[0, 2, 0, 0],
        ..NO_CTX
    };
    assert_eq!(sample_once(&params, &logits, &once), 0);
    assert_eq!(sample_once(&params, &logits, &thrice), 1);
    let prompt_only = SampleContext {
        prompt_tokens: &[0; 10],
        ..NO_CTX
    };
    assert_eq!(sample_once(&params, &logits, &prompt_only), 0);
}

#[test]
fn logit_bias_forces_and_bans_tokens() {
    let logits = [1.0, 3.0, 0.5, 2.0];
    let force = SamplingParams {
        logit_bias: HashMap::from([(2, 100.0)]),
        ..seeded(10)
    };
    assert_eq!(frequencies(&force, &logits, 200), vec![0.0, 0.0, 1.0, 0.0]);

    let ban = SamplingParams {
        logit_bias: HashMap::from([(1, -100.0)]),
        ..greedy()
    };
    assert_eq!(sample_once(&ban, &logits, &NO_CTX), 3);
    let ban_random = SamplingParams {
        logit_bias: HashMap::from([(1, -100.0)]),
        ..seeded(11)
    };
    assert_eq!(frequencies(&ban_random, &logits, 2_000)[1], 0.0);
}

#[test]
fn min_tokens_masks_eos_and_stop_ids_until_reached() {
    // eos = 1 and stop id 2 dominate the row.
    let logits = [0.0, 10.0, 9.0, 1.0];
    let params = SamplingParams {
        min_tokens: 2,
        stop_token_ids: vec![2],
        ..greedy()
    };
    let at = |output: &[u32]| {
        let ctx = SampleContext {
            output_tokens: output,
            eos_token_ids: &[1],
            ..NO_CTX
        };
        sample_once(&params, &logits, &ctx)
    };
    assert_eq!(at(&[]), 3);
    assert_eq!(at(&[3]), 3);
    assert_eq!(at(&[3, 3]), 1);

    // Random sampling never draws a masked token either, even with ignore_eos.
    let random = SamplingParams {
        min_tokens: 1,
        stop_token_ids: vec![2],
        ignore_eos: true,
        ..seeded(12)
    };
    let ctx = SampleContext {
        eos_token_ids: &[1],
        ..NO_CTX
    };
    let mut sampler = SequenceSampler::new(&random);
    for _ in 0..500 {
        let token = sampler.sample(&logits, &ctx).token;
        assert!(token == 0 || token == 3, "masked token {token} drawn");
    }
}

#[test]
fn ignore_eos_leaves_eos_sampleable_but_not_stopping() {
    let logits = [0.0, 10.0, 1.0];
    let params = SamplingParams {
        ignore_eos: true,
        ..greedy()
    };
    let ctx = SampleContext {
        eos_token_ids: &[1],
        ..NO_CTX
    };
    assert_eq!(sample_once(&params, &logits, &ctx), 1);
    assert_eq!(stop_reason(&params, 1, 1, &[1]), None);
}

/// A flat-ish row over 64 tokens so that different seeds visibly diverge.
fn wide_row() -> Vec<f32> {
    (0..64).map(|i| ((i * 37) % 11) as f32 * 0.1).collect()
}

fn run(params: &SamplingParams, steps: usize) -> Vec<u32> {
    let logits = wide_row();
    let mut sampler = SequenceSampler::new(params);
    (0..steps)
        .map(|i| sampler.sample(&logits, &at(i)).token)
        .collect()
}

#[test]
fn same_seed_same_tokens_different_seed_different_tokens() {
    let a = run(&seeded(42), 100);
    assert_eq!(a, run(&seeded(42), 100));
    assert_ne!(a, run(&seeded(43), 100));
    // Unseeded samplers draw from OS entropy and still produce valid tokens.
    assert!(run(&SamplingParams::default(), 10).iter().all(|&t| t < 64));
}

#[test]
fn seeded_sampler_is_unaffected_by_its_batch_neighbours() {
    let params_a = SamplingParams {
        top_k: 20,
        ..seeded(1)
    };
    let params_b = SamplingParams {
        temperature: 0.7,
        top_p: 0.9,
        ..seeded(2)
    };
    let alone_a = run(&params_a, 100);
    let alone_b = run(&params_b, 100);

    let logits = wide_row();
    let mut a = SequenceSampler::new(&params_a);
    let mut b = SequenceSampler::new(&params_b);
    let mut unseeded = SequenceSampler::new(&SamplingParams::default());
    let mut batch_a = Vec::new();
    let mut batch_b = Vec::new();
    for step in 0..100 {
        batch_a.push(a.sample(&logits, &at(step)).token);
        // Neighbours sampling a varying number of times in between must not matter.
        for i in 0..step % 3 {
            unseeded.sample(&logits, &at(step + i));
        }
        batch_b.push(b.sample(&logits, &at(step)).token);
    }
    assert_eq!(batch_a, alone_a);
    assert_eq!(batch_b, alone_b);
}

#[test]
fn logprobs_come_from_the_raw_logits() {
    let logits = [1.0, 3.0, 0.5, 2.0, 2.0];
    let params = SamplingParams {
        logprobs: Some(3),
        temperature: 0.3,
        repetition_penalty: 1.7,
        presence_penalty: 0.4,
        logit_bias: HashMap::from([(0, 100.0)]),
        ..seeded(13)
    };
    let ctx = SampleContext {
        prompt_tokens: &[1, 3],
        output_tokens: &[3],
        ..NO_CTX
    };
    let out = SequenceSampler::new(&params).sample(&logits, &ctx);
    let raw: Vec<f64> = softmax(&logits, 1.0).iter().map(|p| p.ln()).collect();

    // The bias forces token 0, the least likely token of the raw row but one; its
    // logprob is reported even though it is not among the top 3.
    assert_eq!(out.token, 0);
    assert!((out.logprob as f64 - raw[0]).abs() < 1e-5);
    let ids: Vec<u32> = out.top_logprobs.iter().map(|&(t, _)| t).collect();
    assert_eq!(ids, vec![1, 3, 4]);
    for &(t, lp) in &out.top_logprobs {
        assert!((lp as f64 - raw[t as usize]).abs() < 1e-5);
    }
}

#[test]
fn logprobs_are_empty_unless_requested() {
    let logits = [1.0, 2.0];
    for logprobs in [None, Some(0)] {
        let params = SamplingParams {
            logprobs,
            ..greedy()
        };
        let out = SequenceSampler::new(&params).sample(&logits, &NO_CTX);
        assert!(out.top_logprobs.is_empty());
        assert!((out.logprob - (2.0 - (1f32.exp() + 2f32.exp()).ln())).abs() < 1e-6);
    }
}

prop_compose! {
    fn random_case()(vocab in 2usize..200)(
        logits in prop::collection::vec(-30.0f32..30.0, vocab),
        masked in prop::collection::vec(0..vocab as u32, 0..4),
        temperature in prop_oneof![Just(0.0f32), 0.05f32..3.0],
        top_k in 0usize..20,
        top_p in 0.05f32..=1.0,
        min_p in prop_oneof![Just(0.0f32), 0.0f32..0.5],
        seed in any::<u64>(),
    ) -> (Vec<f32>, Vec<u32>, SamplingParams) {
        // The masked ids are eos ids while min_tokens is not reached.
        let params = SamplingParams {
            temperature, top_k, top_p, min_p,
            min_tokens: 1,
            seed: Some(seed),
            logprobs: Some(5),
            ..SamplingParams::default()
        };
        (logits, masked, params)
    }
}

proptest! {
    #[test]
    fn sampled_tokens_survive_every_filter((logits, masked, params) in random_case()) {
        let ctx = SampleContext { eos_token_ids: &masked, ..NO_CTX };
        let mut sampler = SequenceSampler::new(&params);
        for _ in 0..5 {
            let out = sampler.sample(&logits, &ctx);
            let token = out.token;
            prop_assert!((token as usize) < logits.len());
            prop_assert!(out.logprob.is_finite() && out.logprob <= 0.0);
            prop_assert_eq!(out.top_logprobs.len(), 5.min(logits.len()));
            for w in out.top_logprobs.windows(2) {
                prop_assert!(w[0].1 >= w[1].1 && w[0].1.is_finite());
            }

            let alive: Vec<f32> = logits
                .iter()
                .enumerate()
                .filter(|(i, _)| !masked.contains(&(*i as u32)))
                .map(|(_, &l)| l)
                .collect();
            if alive.is_empty() {
                // Everything masked: the documented fallback is the lowest id.
                prop_assert_eq!(token, 0);
                continue;
            }
            prop_assert!(!masked.contains(&token), "masked token {} drawn", token);
            let l = logits[token as usize];
            let better = alive.iter().filter(|&&x| x > l).count();
            if params.is_greedy() {
                prop_assert_eq!(better, 0);
                continue;
            }
            if params.top_k > 0 {
                prop_assert!(better < params.top_k);
            }
            let probs = softmax(&alive, params.temperature);
            let max = alive.iter().fold(f32::MIN, |m, &x| m.max(x));
            let ratio_to_best = ((l - max) / params.temperature).exp() as f64;
            if params.top_k == 0 {
                // Tokens strictly more likely than the drawn one did not fill the nucleus.
                let mass: f64 = alive.iter().zip(&probs)
                    .filter(|(&x, _)| x > l)
                    .map(|(_, p)| p)
                    .sum();
                prop_assert!(mass < params.top_p as f64 + 1e-4);
            }
            prop_assert!(ratio_to_best >= params.min_p as f64 - 1e-4);
        }
    }
}
