//! One sequence's grammar state: the allowed-token mask for its next position, the tokens it has
//! produced so far (committed after sampling) and rollback of the last ones.

use llguidance::Matcher;
use toktrie::SimpleVob;

use super::gate::{Gate, Phase};

/// Wraps an llguidance `Matcher`. The matcher holds every output token of the sequence, so it
/// survives preemption as is: recomputing the KV re-feeds it nothing.
pub struct GrammarMatcher {
    matcher: Matcher,
    /// Holds the grammar back until a reasoning model's answer starts.
    gate: Option<Gate>,
    /// Tokens the grammar consumed.
    answer_tokens: usize,
    /// The mask for the next token, computed before sampling; `None` once used or not yet made.
    mask: Option<SimpleVob>,
    /// Seconds spent computing masks (for the bench's per-token figure).
    mask_secs: f64,
    masks: u64,
}

impl GrammarMatcher {
    pub(super) fn new(matcher: Matcher, gate: Option<Gate>) -> Self {
        Self {
            matcher,
            gate,
            answer_tokens: 0,
            mask: None,
            mask_secs: 0.0,
            masks: 0,
        }
    }

    /// Computes the mask of the next token (EOS allowed only where the grammar may end).
    /// Called on a worker thread while the model's forward runs.
    pub fn compute_mask(&mut self) {
        let phase = self.phase();
        if phase == Phase::Reasoning {
            return;
        }
        let t = std::time::Instant::now();
        self.mask = self.matcher.compute_mask_or_eos().ok();
        if let (Phase::Undecided { opener }, Some(mask)) = (phase, self.mask.as_mut()) {
            mask.allow_token(opener);
        }
        self.mask_secs += t.elapsed().as_secs_f64();
        self.masks += 1;
    }

    /// Sets every disallowed token's logit to -inf (ids past the mask too). An error means the
    /// matcher failed and the sequence cannot go on under its grammar.
    pub fn apply_mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        if let Some(gate) = self.gate.as_ref().filter(|g| g.phase() == Phase::Reasoning) {
            // The reasoning is free text, but it must end before the sequence does.
            for &eos in gate.eos_tokens() {
                if let Some(l) = logits.get_mut(eos as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
            return Ok(());
        }
        if self.mask.is_none() {
            self.compute_mask();
        }
        let Some(mask) = self.mask.take() else {
            return Err(self.error());
        };
        let words = mask.as_slice();
        for (w, chunk) in logits.chunks_mut(32).enumerate() {
            let bits = words.get(w).copied().unwrap_or(0);
            if bits == u32::MAX {
                continue;
            }
            for (b, l) in chunk.iter_mut().enumerate() {
                if bits & (1 << b) == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        Ok(())
    }

    /// Advances the grammar past `token`, which must have been allowed. Returns whether the
    /// grammar is now complete (nothing but the end may follow).
    pub fn commit(&mut self, token: u32) -> Result<bool, String> {
        self.mask = None;
        if self.gate.as_mut().is_some_and(|g| g.take(token)) {
            return Ok(false);
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| format!("grammar rejected token {token}: {e}"))?;
        self.answer_tokens += 1;
        Ok(self.matcher.is_stopped())
    }

    /// Forgets the last `n` committed tokens (rejected speculative tokens), back into the
    /// reasoning if need be.
    pub fn rollback(&mut self, n: usize) -> Result<(), String> {
        self.mask = None;
        let from_answer = match &self.gate {
            Some(_) => n.min(self.answer_tokens),
            None => n,
        };
        if from_answer > 0 {
            self.matcher
                .rollback(from_answer)
                .map_err(|e| format!("grammar rollback of {n} tokens: {e}"))?;
            self.answer_tokens = self.answer_tokens.saturating_sub(from_answer);
        }
        if let Some(gate) = self.gate.as_mut() {
            let rest = n - from_answer;
            if rest > gate.tokens_before_answer() {
                return Err(format!(
                    "grammar rollback of {n} tokens: fewer were committed"
                ));
            }
            gate.rollback(rest);
        }
        Ok(())
    }

    /// Whether the text so far is a complete match (EOS would be allowed).
    pub fn is_accepting(&mut self) -> bool {
        self.phase() == Phase::Answer && self.matcher.is_accepting().unwrap_or(false)
    }

    pub fn is_stopped(&self) -> bool {
        self.phase() == Phase::Answer && self.matcher.is_stopped()
    }

    fn phase(&self) -> Phase {
        self.gate.as_ref().map_or(Phase::Answer, Gate::phase)
    }

    fn error(&self) -> String {
        self.matcher
            .get_error()
            .unwrap_or_else(|| "grammar matcher failed".into())
    }

    /// Masks computed and the seconds they took.
    pub fn mask_stats(&self) -> (u64, f64) {
        (self.masks, self.mask_secs)
    }
}
