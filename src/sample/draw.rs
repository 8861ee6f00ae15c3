//! Choosing the token: greedy argmax, and inverse-CDF draws that spend one uniform number.

use crate::cpu::vmath;

/// Blocks of the row whose sums the draw skips over without walking them one by one.
const DRAW_BLOCK: usize = 1024;

/// Index of the largest logit; ties go to the lowest id. NaN never wins.
pub(super) fn argmax(logits: &[f32]) -> u32 {
    let max = vmath::max(logits);
    logits.iter().position(|&l| l == max).unwrap_or(0) as u32
}

/// Inverse-CDF draw over a candidate list: walks it in its (deterministic) order and
/// returns the first token whose cumulative weight exceeds `u * total`, so one uniform
/// `u` in [0, 1) decides the token.
pub(super) fn draw(candidates: &[(u32, f32)], u: f64) -> u32 {
    let total: f64 = candidates.iter().map(|c| c.1 as f64).sum();
    let target = u * total;
    let mut cum = 0.0f64;
    for &(token, w) in candidates {
        cum += w as f64;
        if cum > target {
            return token;
        }
    }
    // Only reachable through rounding with u just below 1.
    candidates.last().expect("draw from no candidates").0
}

/// Inverse-CDF draw over a whole row of weights in id order, as `draw`. Whole blocks are
/// skipped by their (vectorized) sums; only the block holding the target is walked.
pub(super) fn draw_row(weights: &[f32], u: f64) -> u32 {
    let total: f64 = weights.chunks(DRAW_BLOCK).map(vmath::sum).sum();
    let target = u * total;
    let mut cum = 0.0f64;
    for (b, block) in weights.chunks(DRAW_BLOCK).enumerate() {
        let block_sum = vmath::sum(block);
        if cum + block_sum > target {
            let mut last_positive = 0;
            for (i, &w) in block.iter().enumerate() {
                if w > 0.0 {
                    last_positive = i;
                    cum += w as f64;
                    if cum > target {
                        break;
                    }
                }
            }
            // Without a break, rounding put the target past the walked sum: the block's
            // last token with weight is the right one.
            return (b * DRAW_BLOCK + last_positive) as u32;
        }
        cum += block_sum;
    }
    // Only reachable through rounding with u just below 1.
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_lowest_id_on_ties_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, f32::NAN]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
    }

    #[test]
    fn draw_inverts_the_cdf() {
        let c = [(3, 1.0), (5, 2.0), (9, 1.0)];
        assert_eq!(draw(&c, 0.0), 3);
        assert_eq!(draw(&c, 0.24), 3);
        assert_eq!(draw(&c, 0.26), 5);
        assert_eq!(draw(&c, 0.74), 5);
        assert_eq!(draw(&c, 0.76), 9);
        assert_eq!(draw(&c, 0.999_999), 9);
    }

    #[test]
    fn draw_row_matches_a_walk_over_the_list() {
        // Several blocks, zero weights (including at the end) and uneven mass.
        let row: Vec<f32> = (0..3 * DRAW_BLOCK + 17)
            .map(|i| {
                if i % 5 == 0 || i > 3 * DRAW_BLOCK {
                    0.0
                } else {
                    (i % 7) as f32
                }
            })
            .collect();
        let list: Vec<(u32, f32)> = (0..row.len() as u32)
            .map(|i| (i, row[i as usize]))
            .filter(|c| c.1 > 0.0)
            .collect();
        for step in 0..1000 {
            let u = step as f64 / 1000.0 + 0.000_37;
            let token = draw_row(&row, u);
            assert!(row[token as usize] > 0.0);
            assert_eq!(token, draw(&list, u), "u = {u}");
        }
        assert_eq!(draw_row(&row, 0.999_999_999), list.last().unwrap().0);
    }
}
