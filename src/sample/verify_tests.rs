//! Speculative verification against exact distributions: the first emitted token of
//! `verify` is distributed as plain sampling's, whatever the draft, and wrong rules fail.

use super::*;

const CTX: SampleContext<'static> = SampleContext {
    prompt_tokens: &[],
    output_tokens: &[],
    eos_token_ids: &[],
};

/// softmax, nucleus 0.9 (most likely first), renormalized.
fn target(logits: &[f32]) -> Vec<f64> {
    let e: Vec<f64> = logits.iter().map(|&l| (l as f64).exp()).collect();
    let z: f64 = e.iter().sum();
    let mut order: Vec<usize> = (0..e.len()).collect();
    order.sort_by(|&a, &b| e[b].total_cmp(&e[a]));
    let mut p = vec![0.0; e.len()];
    let mut cum = 0.0;
    for i in order {
        p[i] = e[i] / z;
        cum += p[i];
        if cum >= 0.9 - 1e-6 {
            break;
        }
    }
    let s: f64 = p.iter().sum();
    p.iter().map(|x| x / s).collect()
}

/// Pearson's statistic of the first emitted tokens against `p`.
fn chi2(first: &[u32], p: &[f64]) -> f64 {
    let n = first.len() as f64;
    let mut counts = vec![0.0; p.len()];
    for &t in first {
        counts[t as usize] += 1.0;
    }
    let mut stat = 0.0;
    for (c, &q) in counts.iter().zip(p) {
        if q == 0.0 {
            if *c > 0.0 {
                return f64::INFINITY;
            }
            continue;
        }
        stat += (c - n * q).powi(2) / (n * q);
    }
    stat
}

fn first_tokens(logits: &[f32], draft: u32, rule: AcceptRule, n: usize) -> Vec<u32> {
    let params = SamplingParams {
        top_p: 0.9,
        seed: Some(7),
        ..SamplingParams::default()
    };
    let mut s = SequenceSampler::new(&params);
    let next = [0.5f32, 0.1, 0.0, -0.3, 0.2, -1.0];
    // One position per trial: the RNG is counted by position (no penalties read the ids).
    let history = vec![0u32; n];
    (0..n)
        .map(|i| {
            let ctx = SampleContext {
                output_tokens: &history[..i],
                ..CTX
            };
            s.verify_with(&[logits, &next], &[draft], &ctx, rule)[0].token
        })
        .collect()
}

#[test]
fn first_token_keeps_the_target_distribution_for_any_draft() {
    let logits = [1.5f32, 0.2, 0.9, -0.5, 0.4, -2.0];
    let p = target(&logits);
    // 5 cells with mass (the nucleus drops the last token): 4 degrees of freedom, 0.1% level.
    let critical = 18.47;
    for draft in [0, 2, 3, 5] {
        let stat = chi2(&first_tokens(&logits, draft, AcceptRule::Exact, 20_000), &p);
        assert!(stat < critical, "draft {draft}: chi2 {stat}");
    }
    // Power: accepting every draft is caught.
    for draft in [0, 2] {
        let stat = chi2(
            &first_tokens(&logits, draft, AcceptRule::AlwaysAccept, 20_000),
            &p,
        );
        assert!(
            stat > critical,
            "always-accept of {draft} passed: chi2 {stat}"
        );
    }
}

#[test]
fn accepted_drafts_count_as_outputs_for_the_next_row() {
    // Greedy with a repetition penalty: after accepting draft 1, row 2's token 1 is penalized.
    let params = SamplingParams {
        repetition_penalty: 10.0,
        ..SamplingParams::greedy(8)
    };
    let mut s = SequenceSampler::new(&params);
    let rows: [&[f32]; 2] = [&[0.0, 2.0, 1.0], &[0.0, 2.0, 1.5]];
    let got: Vec<u32> = s
        .verify(&rows, &[1], &CTX)
        .iter()
        .map(|t| t.token)
        .collect();
    assert_eq!(got, vec![1, 2]);
    // A rejected draft ends the verification with the target's own choice.
    let got: Vec<u32> = s
        .verify(&rows, &[2], &CTX)
        .iter()
        .map(|t| t.token)
        .collect();
    assert_eq!(got, vec![1]);
}
