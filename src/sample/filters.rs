//! The random-sampling filters: temperature, top-k, top-p (nucleus) and min-p.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::logprobs::by_value_desc;
use crate::cpu::vmath;

/// The random-sampling options, as `keep_candidates` applies them (in this order).
#[derive(Debug, Clone, Copy)]
pub(super) struct Filters {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
}

/// Slack on the top-p target so that rounding in the running sum does not pull in one
/// more token when the nucleus ends exactly at `top_p` (e.g. 0.5 + 0.3 vs top_p = 0.8).
const TOP_P_SLACK: f64 = 1e-6;

/// Where `keep_candidates` left the weights of the tokens that survived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kept {
    /// Every logit was -inf or NaN; the row is untouched.
    Nothing,
    /// No top-k or top-p: the row itself now holds the weights, 0 for dropped tokens.
    Row,
    /// The candidate list holds `(token, weight)` for the survivors only.
    Candidates,
}

/// Applies temperature, top-k, top-p and min-p, in this order.
///
/// Weights are probabilities up to one common factor: the most likely token has weight
/// exactly 1, so no temperature can overflow them and min-p compares against 1.
pub(super) fn keep_candidates(
    row: &mut [f32],
    filters: Filters,
    candidates: &mut Vec<(u32, f32)>,
) -> Kept {
    let max = vmath::max(row);
    // All masked, or a penalty overflowed a logit to +inf (a repetition penalty that is 0 as
    // f32): weights would be NaN and nothing kept; the caller takes the argmax instead.
    if !max.is_finite() {
        return Kept::Nothing;
    }
    // Capped so that a subnormal temperature gives 0 * MAX = 0 for the best token
    // rather than 0 * inf = NaN.
    let scale = (1.0 / filters.temperature).min(f32::MAX);
    // Relative to the most likely token, which every filter keeps.
    let min_weight = filters.min_p.min(1.0);
    let top_p = filters.top_p < 1.0;

    if filters.top_k > 0 && filters.top_k < row.len() {
        // Top-k commutes with the monotone exp, so only the k survivors get weights.
        top_k_logits(row, filters.top_k, candidates);
        for c in candidates.iter_mut() {
            c.1 = vmath::exp((c.1 - max) * scale);
        }
        candidates.retain(|c| c.1 > 0.0);
        if top_p {
            let total = candidates.iter().map(|c| c.1 as f64).sum();
            keep_nucleus(candidates, total, filters.top_p);
        }
    } else {
        vmath::exp_in_place(row, max, scale);
        if !top_p {
            if min_weight > 0.0 {
                row.iter_mut()
                    .for_each(|w| *w = if *w >= min_weight { *w } else { 0.0 });
            }
            return Kept::Row;
        }
        let total = vmath::sum(row);
        // Tokens with probability below (1 - top_p) / n sum to less than 1 - top_p, so
        // the others alone exceed top_p and the nucleus closes before reaching any of
        // them. Skipping them leaves far fewer tokens to sort than the vocabulary.
        let floor = (1.0 - filters.top_p as f64) * total / row.len() as f64;
        candidates.clear();
        candidates.extend(
            row.iter()
                .enumerate()
                .filter(|&(_, &w)| w > 0.0 && w as f64 >= floor)
                .map(|(i, &w)| (i as u32, w)),
        );
        keep_nucleus(candidates, total, filters.top_p);
    }

    if min_weight > 0.0 {
        candidates.retain(|c| c.1 >= min_weight);
    }
    if candidates.is_empty() {
        return Kept::Nothing;
    }
    Kept::Candidates
}

/// A `(token, value)` ordered so that the heap's top is the worst one kept.
#[derive(Debug, Clone, Copy)]
struct Worst((u32, f32));

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Worst {}

impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        by_value_desc(&self.0, &other.0)
    }
}

/// Sets `out` to the k largest `(token, logit)` of the row (ties: lower id), unordered.
///
/// One scan with a k-entry heap: past the first k tokens a token only costs a compare
/// with the heap's worst, so there is no full-row copy or selection.
fn top_k_logits(row: &[f32], k: usize, out: &mut Vec<(u32, f32)>) {
    let mut heap = BinaryHeap::with_capacity(k);
    let mut tokens = row
        .iter()
        .enumerate()
        .filter(|&(_, &l)| l > f32::NEG_INFINITY)
        .map(|(i, &l)| (i as u32, l));
    heap.extend(tokens.by_ref().take(k).map(Worst));
    if let Some(&Worst((_, mut worst))) = heap.peek().filter(|_| heap.len() == k) {
        for (token, l) in tokens {
            // Equal values arrive in increasing id order and lose to the kept one.
            if l > worst {
                // Replacing through `PeekMut` sifts the new entry down when it drops.
                *heap.peek_mut().expect("heap holds k > 0 entries") = Worst((token, l));
                worst = heap.peek().expect("heap holds k > 0 entries").0 .1;
            }
        }
    }
    out.clear();
    out.extend(heap.into_iter().map(|w| w.0));
}

/// Keeps the smallest set of most likely candidates whose weights sum to `top_p * total`
/// (at least one), sorted most likely first. `total` covers tokens already skipped.
fn keep_nucleus(candidates: &mut Vec<(u32, f32)>, total: f64, top_p: f32) {
    candidates.sort_unstable_by(by_value_desc);
    let target = (top_p as f64 - TOP_P_SLACK) * total;
    let mut cum = 0.0f64;
    let mut keep = candidates.len();
    for (i, c) in candidates.iter().enumerate() {
        cum += c.1 as f64;
        if cum >= target {
            keep = i + 1;
            break;
        }
    }
    candidates.truncate(keep);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{Just, Strategy};

    use super::*;

    fn ids(candidates: &[(u32, f32)]) -> Vec<u32> {
        let mut ids: Vec<u32> = candidates.iter().map(|c| c.0).collect();
        ids.sort_unstable();
        ids
    }

    /// The surviving `(token, weight)` pairs, whichever form `keep_candidates` used.
    fn survivors(logits: &[f32], filters: Filters) -> Vec<(u32, f32)> {
        let mut row = logits.to_vec();
        let mut c = Vec::new();
        match keep_candidates(&mut row, filters, &mut c) {
            Kept::Nothing => Vec::new(),
            Kept::Row => (0..row.len() as u32)
                .map(|i| (i, row[i as usize]))
                .filter(|c| c.1 > 0.0)
                .collect(),
            Kept::Candidates => c,
        }
    }

    fn kept(logits: &[f32], filters: Filters) -> Vec<u32> {
        ids(&survivors(logits, filters))
    }

    const OFF: Filters = Filters {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
    };

    #[test]
    fn no_filter_keeps_every_unmasked_token() {
        assert_eq!(kept(&[0.0, f32::NEG_INFINITY, -3.0], OFF), vec![0, 2]);
        let mut row = [f32::NEG_INFINITY; 3];
        let kept = keep_candidates(&mut row, OFF, &mut Vec::new());
        assert_eq!(kept, Kept::Nothing);
    }

    #[test]
    fn an_infinite_logit_leaves_the_choice_to_argmax() {
        // A repetition penalty of 0 (as f32) divides positive logits into +inf.
        for filters in [
            OFF,
            Filters { top_p: 0.5, ..OFF },
            Filters { top_k: 2, ..OFF },
        ] {
            let mut row = [1.0, f32::INFINITY, -2.0];
            let kept = keep_candidates(&mut row, filters, &mut Vec::new());
            assert_eq!(kept, Kept::Nothing, "{filters:?}");
        }
    }

    #[test]
    fn top_k_keeps_exactly_the_k_largest() {
        let logits = [0.1, 5.0, -1.0, 4.0, 3.0, 2.0];
        assert_eq!(kept(&logits, Filters { top_k: 3, ..OFF }), vec![1, 3, 4]);
        assert_eq!(kept(&logits, Filters { top_k: 10, ..OFF }).len(), 6);
        // Masked tokens do not count towards k.
        let masked = [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, 0.0];
        assert_eq!(kept(&masked, Filters { top_k: 3, ..OFF }), vec![1, 3]);
    }

    #[test]
    fn top_p_cuts_exactly_at_the_boundary() {
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        assert_eq!(kept(&logits, Filters { top_p: 0.8, ..OFF }), vec![0, 1]);
        assert_eq!(kept(&logits, Filters { top_p: 0.81, ..OFF }), vec![0, 1, 2]);
        assert_eq!(kept(&logits, Filters { top_p: 0.5, ..OFF }), vec![0]);
        assert_eq!(kept(&logits, Filters { top_p: 0.51, ..OFF }), vec![0, 1]);
        // Always at least one token.
        assert_eq!(kept(&logits, Filters { top_p: 0.0, ..OFF }), vec![0]);
    }

    #[test]
    fn top_p_applies_to_the_top_k_renormalized_distribution() {
        // After top-k = 2 the probabilities are 0.625 / 0.375; top-p 0.6 keeps one.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let f = Filters {
            top_k: 2,
            top_p: 0.6,
            ..OFF
        };
        assert_eq!(kept(&logits, f), vec![0]);
        // Without top-k, 0.5 < 0.6 and the nucleus needs two tokens.
        assert_eq!(kept(&logits, Filters { top_p: 0.6, ..OFF }), vec![0, 1]);
    }

    #[test]
    fn min_p_is_relative_to_the_most_likely_token() {
        // Probabilities proportional to 1, 0.5, 0.1, 0.05.
        let logits = [0.0, 0.5f32.ln(), 0.1f32.ln(), 0.05f32.ln()];
        for top_k in [0, 3] {
            let f = Filters { top_k, ..OFF };
            assert_eq!(kept(&logits, Filters { min_p: 0.09, ..f }), vec![0, 1, 2]);
            assert_eq!(kept(&logits, Filters { min_p: 0.2, ..f }), vec![0, 1]);
            assert_eq!(kept(&logits, Filters { min_p: 5.0, ..f }), vec![0]);
        }
    }

    #[test]
    fn temperature_scales_weights_without_overflow() {
        let logits = [1.0, 0.0];
        let half = Filters {
            temperature: 0.5,
            ..OFF
        };
        let w = survivors(&logits, half);
        assert_eq!(w[0], (0, 1.0));
        assert!((w[1].1 - (-2.0f32).exp()).abs() < 1e-6);
        // A temperature so small that l / t would overflow still picks the largest logit.
        let tiny = Filters {
            temperature: 1e-39,
            ..OFF
        };
        assert_eq!(kept(&logits, tiny), vec![0]);
    }

    /// The nucleus without the prefilter: sort every token, cut at the same target.
    fn naive_nucleus(logits: &[f32], top_p: f32) -> Vec<u32> {
        let mut row = logits.to_vec();
        vmath::exp_in_place(&mut row, vmath::max(logits), 1.0);
        let total = vmath::sum(&row);
        let mut w: Vec<(u32, f32)> = (0..row.len() as u32)
            .map(|i| (i, row[i as usize]))
            .filter(|c| c.1 > 0.0)
            .collect();
        w.sort_unstable_by(by_value_desc);
        let target = (top_p as f64 - TOP_P_SLACK) * total;
        let mut cum = 0.0;
        let keep = w
            .iter()
            .position(|c| {
                cum += c.1 as f64;
                cum >= target
            })
            .map_or(w.len(), |i| i + 1);
        ids(&w[..keep])
    }

    proptest::proptest! {
        #[test]
        fn top_k_heap_matches_a_full_sort(
            logits in proptest::collection::vec(
                proptest::prop_oneof![Just(f32::NEG_INFINITY), (-3i8..3).prop_map(f32::from)],
                1..200,
            ),
            k in 1usize..50,
        ) {
            let mut out = Vec::new();
            top_k_logits(&logits, k, &mut out);
            let mut all: Vec<(u32, f32)> = (0..logits.len() as u32)
                .map(|i| (i, logits[i as usize]))
                .filter(|c| c.1 > f32::NEG_INFINITY)
                .collect();
            all.sort_unstable_by(by_value_desc);
            all.truncate(k);
            proptest::prop_assert_eq!(ids(&out), ids(&all));
        }

        #[test]
        fn nucleus_prefilter_matches_a_full_sort(
            logits in proptest::collection::vec(-20.0f32..20.0, 1..400),
            top_p in 0.0f32..1.0,
        ) {
            proptest::prop_assert_eq!(
                kept(&logits, Filters { top_p, ..OFF }),
                naive_nucleus(&logits, top_p)
            );
        }
    }
}
