//! One sequence's grammar state: the allowed-token mask for its next position, the tokens it has
//! produced so far (committed after sampling) and rollback of the last ones.

use llguidance::Matcher;
use toktrie::SimpleVob;

/// Wraps an llguidance `Matcher`. The matcher holds every output token of the sequence, so it
/// survives preemption as is: recomputing the KV re-feeds it nothing.
pub struct GrammarMatcher {
    matcher: Matcher,
    /// The mask for the next token, computed before sampling; `None` once used or not yet made.
    mask: Option<SimpleVob>,
    /// Seconds spent computing masks (for the bench's per-token figure).
    mask_secs: f64,
    masks: u64,
}

impl GrammarMatcher {
    pub(super) fn new(matcher: Matcher) -> Self {
        Self {
            matcher,
            mask: None,
            mask_secs: 0.0,
            masks: 0,
        }
    }

    /// Computes the mask of the next token (EOS allowed only where the grammar may end).
    /// Called on a worker thread while the model's forward runs.
    pub fn compute_mask(&mut self) {
        let t = std::time::Instant::now();
        self.mask = self.matcher.compute_mask_or_eos().ok();
        self.mask_secs += t.elapsed().as_secs_f64();
        self.masks += 1;
    }

    /// Sets every disallowed token's logit to -inf (ids past the mask too). An error means the
    /// matcher failed and the sequence cannot go on under its grammar.
    pub fn apply_mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
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
        self.matcher
            .consume_token(token)
            .map_err(|e| format!("grammar rejected token {token}: {e}"))?;
        Ok(self.matcher.is_stopped())
    }

    /// Forgets the last `n` committed tokens (rejected speculative tokens).
    pub fn rollback(&mut self, n: usize) -> Result<(), String> {
        self.mask = None;
        self.matcher
            .rollback(n)
            .map_err(|e| format!("grammar rollback of {n} tokens: {e}"))
    }

    /// Whether the text so far is a complete match (EOS would be allowed).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    pub fn is_stopped(&self) -> bool {
        self.matcher.is_stopped()
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
