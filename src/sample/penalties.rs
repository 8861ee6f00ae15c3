//! Logit processors applied before sampling: bias, min_tokens masking and repetition penalties.
//!
//! Token ids outside the row (e.g. a bias for an id the model does not have) are ignored.

use std::collections::HashMap;

pub(super) fn apply_logit_bias(logits: &mut [f32], bias: &HashMap<u32, f32>) {
    for (&token, &b) in bias {
        if let Some(l) = logits.get_mut(token as usize) {
            *l += b;
        }
    }
}

/// Sets the given tokens to -inf so they can be neither argmax nor drawn.
pub(super) fn mask_tokens(logits: &mut [f32], tokens: &[u32]) {
    for &token in tokens {
        if let Some(l) = logits.get_mut(token as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// HF/vLLM repetition penalty: each distinct token seen in the prompt or the output
/// is penalized once, dividing positive logits and multiplying negative ones, so that
/// the penalty always makes the token less likely.
///
/// `marks` is vocab-sized scratch that is all zero on entry and on return; marking and
/// clearing only the seen ids keeps the cost proportional to the context, not the vocab.
pub(super) fn apply_repetition_penalty(
    logits: &mut [f32],
    prompt: &[u32],
    output: &[u32],
    penalty: f32,
    marks: &mut Vec<u32>,
) {
    if marks.len() < logits.len() {
        marks.resize(logits.len(), 0);
    }
    let seen = || prompt.iter().chain(output).map(|&t| t as usize);
    for t in seen() {
        if let Some(m) = marks.get_mut(t) {
            *m = 1;
        }
    }
    for t in seen() {
        if t < logits.len() && marks[t] == 1 {
            marks[t] = 0;
            let l = &mut logits[t];
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
    debug_assert!(marks.iter().all(|&m| m == 0));
}

/// OpenAI frequency and presence penalties over the generated tokens only:
/// `logit -= frequency * count + presence * (count > 0)`.
///
/// `counts` is vocab-sized scratch, all zero on entry and on return.
pub(super) fn apply_frequency_presence(
    logits: &mut [f32],
    output: &[u32],
    frequency: f32,
    presence: f32,
    counts: &mut Vec<u32>,
) {
    if counts.len() < logits.len() {
        counts.resize(logits.len(), 0);
    }
    for &t in output {
        if let Some(c) = counts.get_mut(t as usize) {
            *c += 1;
        }
    }
    for &t in output {
        let t = t as usize;
        if t < logits.len() && counts[t] > 0 {
            logits[t] -= frequency * counts[t] as f32 + presence;
            counts[t] = 0;
        }
    }
    debug_assert!(counts.iter().all(|&c| c == 0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_once() {
        let mut logits = vec![2.0, -2.0, 2.0, 1.0];
        let mut scratch = Vec::new();
        // Token 0 appears three times across prompt and output: still penalized once.
        apply_repetition_penalty(&mut logits, &[0, 1, 0], &[0], 2.0, &mut scratch);
        assert_eq!(logits, vec![1.0, -4.0, 2.0, 1.0]);
        assert!(scratch.iter().all(|&m| m == 0));
    }

    #[test]
    fn repetition_penalty_covers_prompt_only_tokens() {
        let mut logits = vec![3.0, 3.0];
        apply_repetition_penalty(&mut logits, &[1], &[], 1.5, &mut Vec::new());
        assert_eq!(logits, vec![3.0, 2.0]);
    }

    #[test]
    fn frequency_and_presence_count_output_occurrences() {
        let mut logits = vec![0.0; 4];
        let mut scratch = Vec::new();
        apply_frequency_presence(&mut logits, &[1, 2, 1, 1], 0.5, 0.25, &mut scratch);
        assert_eq!(logits, vec![0.0, -1.75, -0.75, 0.0]);
        assert!(scratch.iter().all(|&c| c == 0));
    }

    #[test]
    fn out_of_vocab_ids_are_ignored() {
        let mut logits = vec![1.0, 1.0];
        let bias = HashMap::from([(7, 5.0), (1, 1.0)]);
        apply_logit_bias(&mut logits, &bias);
        mask_tokens(&mut logits, &[9]);
        apply_repetition_penalty(&mut logits, &[9], &[9], 2.0, &mut Vec::new());
        apply_frequency_presence(&mut logits, &[9], 1.0, 1.0, &mut Vec::new());
        assert_eq!(logits, vec![1.0, 2.0]);
    }
}
