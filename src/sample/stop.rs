//! Whether a freshly sampled token ends its sequence (stop strings are handled elsewhere).

use crate::request::{FinishReason, SamplingParams};

/// Finish reason after `token` was sampled, if the sequence ends here.
///
/// `num_output_tokens` counts the generated tokens *including* `token`. EOS (unless
/// `ignore_eos`) and `stop_token_ids` end the sequence only once `min_tokens` tokens
/// exist; `max_tokens` ends it regardless. A stop token on the last allowed position
/// reports `Stop`, as in vLLM.
pub fn stop_reason(
    params: &SamplingParams,
    token: u32,
    num_output_tokens: usize,
    eos_token_ids: &[u32],
) -> Option<FinishReason> {
    if num_output_tokens >= params.min_tokens {
        let is_eos = !params.ignore_eos && eos_token_ids.contains(&token);
        if is_eos || params.stop_token_ids.contains(&token) {
            return Some(FinishReason::Stop);
        }
    }
    (num_output_tokens >= params.max_tokens).then_some(FinishReason::Length)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EOS: &[u32] = &[2, 128009];

    fn params() -> SamplingParams {
        SamplingParams {
            max_tokens: 10,
            stop_token_ids: vec![7],
            ..SamplingParams::default()
        }
    }

    #[test]
    fn eos_and_stop_ids_stop() {
        let p = params();
        assert_eq!(stop_reason(&p, 2, 1, EOS), Some(FinishReason::Stop));
        assert_eq!(stop_reason(&p, 128009, 3, EOS), Some(FinishReason::Stop));
        assert_eq!(stop_reason(&p, 7, 3, EOS), Some(FinishReason::Stop));
        assert_eq!(stop_reason(&p, 5, 3, EOS), None);
    }

    #[test]
    fn length_at_max_tokens() {
        let p = params();
        assert_eq!(stop_reason(&p, 5, 9, EOS), None);
        assert_eq!(stop_reason(&p, 5, 10, EOS), Some(FinishReason::Length));
        // A stop token on the last position is a stop, not a truncation.
        assert_eq!(stop_reason(&p, 2, 10, EOS), Some(FinishReason::Stop));
    }

    #[test]
    fn ignore_eos_keeps_going_but_stop_ids_still_stop() {
        let p = SamplingParams {
            ignore_eos: true,
            ..params()
        };
        assert_eq!(stop_reason(&p, 2, 1, EOS), None);
        assert_eq!(stop_reason(&p, 7, 1, EOS), Some(FinishReason::Stop));
        assert_eq!(stop_reason(&p, 2, 10, EOS), Some(FinishReason::Length));
    }

    #[test]
    fn min_tokens_defers_stopping() {
        let p = SamplingParams {
            min_tokens: 3,
            ..params()
        };
        assert_eq!(stop_reason(&p, 2, 2, EOS), None);
        assert_eq!(stop_reason(&p, 7, 2, EOS), None);
        assert_eq!(stop_reason(&p, 2, 3, EOS), Some(FinishReason::Stop));
        assert_eq!(stop_reason(&p, 7, 3, EOS), Some(FinishReason::Stop));
    }
}
