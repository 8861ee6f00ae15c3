//! Log-probabilities of the raw model distribution: log-normalizer and top-n alternatives.

use std::cmp::Ordering;

use crate::cpu::vmath;

/// `log(sum(exp(logits)))`, shifted by the max for stability; `scratch` holds the
/// exponentials so that the exp loop and the sum both vectorize.
pub(super) fn log_sum_exp(logits: &[f32], scratch: &mut Vec<f32>) -> f32 {
    let max = vmath::max(logits);
    if !max.is_finite() {
        return max;
    }
    scratch.clear();
    scratch.extend_from_slice(logits);
    vmath::exp_in_place(scratch, max, 1.0);
    (max as f64 + vmath::sum(scratch).ln()) as f32
}

/// Higher value first, then lower id: the order of `top_logprobs`.
pub(super) fn by_value_desc(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The `n` most likely tokens with their logprobs, most likely first.
///
/// Uses a selection, not a full sort, so the cost is O(vocab + n log n).
pub(super) fn top_logprobs(
    logits: &[f32],
    log_z: f32,
    n: usize,
    scratch: &mut Vec<(u32, f32)>,
) -> Vec<(u32, f32)> {
    scratch.clear();
    scratch.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
    let n = n.min(scratch.len());
    if n < scratch.len() {
        scratch.select_nth_unstable_by(n, by_value_desc);
        scratch.truncate(n);
    }
    scratch.sort_unstable_by(by_value_desc);
    scratch.iter().map(|&(t, l)| (t, l - log_z)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_sum_exp_matches_naive_and_survives_large_logits() {
        let logits = [0.5f32, -1.0, 2.0];
        let naive = logits.iter().map(|l| l.exp()).sum::<f32>().ln();
        assert!((log_sum_exp(&logits, &mut Vec::new()) - naive).abs() < 1e-6);
        let big = [1000.0f32, 1000.0];
        assert!((log_sum_exp(&big, &mut Vec::new()) - (1000.0 + 2f32.ln())).abs() < 1e-3);
    }

    #[test]
    fn top_logprobs_orders_by_value_then_id() {
        let logits = [1.0f32, 3.0, 3.0, 2.0, 0.0];
        let z = log_sum_exp(&logits, &mut Vec::new());
        let top = top_logprobs(&logits, z, 3, &mut Vec::new());
        let ids: Vec<u32> = top.iter().map(|&(t, _)| t).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert!((top[2].1 - (2.0 - z)).abs() < 1e-6);
        // Asking for more than the vocabulary returns the whole vocabulary.
        assert_eq!(top_logprobs(&logits, z, 10, &mut Vec::new()).len(), 5);
    }
}
