//! Per-request text output: incremental detokenization and stop strings.

use crate::request::SamplingParams;
use crate::tokenizer::{
    detokenizer::IncrementalDetokenizer, stop::StopStringMatcher, Tokenizer, TokenizerError,
};

pub struct OutputProcessor {
    detok: IncrementalDetokenizer,
    stop: StopStringMatcher,
    /// With special tokens kept, the one that ends the generation is still left out.
    keep_special: Option<Vec<u32>>,
}

impl OutputProcessor {
    pub fn new(prompt: &[u32], params: &SamplingParams) -> Self {
        Self {
            detok: IncrementalDetokenizer::with_prompt(prompt, params.skip_special_tokens),
            stop: StopStringMatcher::new(params.stop.iter().cloned()),
            keep_special: (!params.skip_special_tokens).then(|| params.stop_token_ids.clone()),
        }
    }

    /// Text to emit for `new_tokens`, and whether a stop string ended the generation.
    /// `finished`: the scheduler ended the sequence, so held-back text is released.
    pub fn process(
        &mut self,
        tok: &Tokenizer,
        new_tokens: &[u32],
        finished: bool,
    ) -> Result<(String, bool), TokenizerError> {
        self.process_counted(tok, new_tokens, finished)
            .map(|(text, stop, _)| (text, stop))
    }

    /// As [`process`](Self::process), also returning how many of `new_tokens` were consumed:
    /// all of them, or those up to the one that completed a stop string (several tokens of
    /// one step, as speculative decoding yields, may run past it; the rest are dropped).
    pub fn process_counted(
        &mut self,
        tok: &Tokenizer,
        new_tokens: &[u32],
        finished: bool,
    ) -> Result<(String, bool, usize), TokenizerError> {
        let all = new_tokens.len();
        let mut text = String::new();
        let mut new_tokens = new_tokens;
        if let (true, Some(stop_ids), Some((&last, rest))) =
            (finished, &self.keep_special, new_tokens.split_last())
        {
            if tok.is_eos(last) || stop_ids.contains(&last) {
                new_tokens = rest;
            }
        }
        for (i, &t) in new_tokens.iter().enumerate() {
            let delta = self.detok.step(tok, t)?;
            let m = self.stop.push(&delta);
            text.push_str(&m.text);
            if m.is_stop() {
                return Ok((text, true, i + 1));
            }
        }
        if finished {
            let delta = self.detok.flush(tok)?;
            let m = self.stop.push(&delta);
            text.push_str(&m.text);
            if m.is_stop() {
                return Ok((text, true, all));
            }
            text.push_str(&self.stop.flush());
        }
        Ok((text, false, all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::test_util::byte_level_content;

    /// Kept special tokens show in the text, except the one that ends the generation.
    #[test]
    fn special_tokens_kept_but_not_the_final_eos() {
        let tok = Tokenizer::from_gguf(&byte_level_content()).unwrap();
        let start = tok.token_to_id("<|im_start|>").unwrap();
        let end = tok.token_to_id("<|im_end|>").unwrap();
        assert!(tok.is_eos(end));
        let hello = tok.encode("hello", false).unwrap();
        let mut ids = vec![start];
        ids.extend(&hello);
        ids.push(end);
        let run = |skip: bool| {
            let params = SamplingParams {
                skip_special_tokens: skip,
                ..SamplingParams::default()
            };
            let mut p = OutputProcessor::new(&[], &params);
            let (a, _) = p.process(&tok, &ids[..2], false).unwrap();
            let (b, _) = p.process(&tok, &ids[2..], true).unwrap();
            a + &b
        };
        assert_eq!(run(true), "hello");
        assert_eq!(run(false), "<|im_start|>hello");
    }
}
