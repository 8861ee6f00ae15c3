//! Finds stop strings in streamed text, holding back what might be the start of one.
//!
//! Text arrives in deltas that split stop strings anywhere, so the matcher keeps the longest
//! tail of the text seen so far that is still a proper prefix of some stop string. Any match that
//! starts before that tail has been ruled out, so everything before it is safe to emit. The text
//! before a stop string is emitted; the stop string and everything after it never are.

/// The result of feeding one delta to a [`StopStringMatcher`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopMatch {
    /// Text safe to send to the client now.
    pub text: String,
    /// Index (into the matcher's stop strings) of the stop string that ended generation.
    pub stop_index: Option<usize>,
}

impl StopMatch {
    pub fn is_stop(&self) -> bool {
        self.stop_index.is_some()
    }
}

/// Per-sequence stop-string state.
#[derive(Debug, Clone)]
pub struct StopStringMatcher {
    stops: Vec<String>,
    /// Text that could still begin a stop string.
    held: String,
    stopped: Option<usize>,
}

impl StopStringMatcher {
    /// A matcher for `stops`; empty strings are ignored since they would match everywhere.
    pub fn new<S: Into<String>>(stops: impl IntoIterator<Item = S>) -> Self {
        Self {
            stops: stops
                .into_iter()
                .map(Into::into)
                .filter(|s: &String| !s.is_empty())
                .collect(),
            held: String::new(),
            stopped: None,
        }
    }

    pub fn stop_strings(&self) -> &[String] {
        &self.stops
    }

    /// The stop string that was hit, once one has been.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.map(|i| self.stops[i].as_str())
    }

    /// Feeds the next piece of generated text. After a stop, further deltas yield nothing.
    pub fn push(&mut self, delta: &str) -> StopMatch {
        if self.stopped.is_some() {
            return StopMatch::default();
        }
        self.held.push_str(delta);
        if let Some((pos, index)) = self.earliest_match() {
            self.held.truncate(pos);
            self.stopped = Some(index);
            return StopMatch {
                text: std::mem::take(&mut self.held),
                stop_index: Some(index),
            };
        }
        let keep = self.longest_partial_suffix();
        let text = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        StopMatch {
            text,
            stop_index: None,
        }
    }

    /// Releases held-back text at the end of generation (nothing if a stop string was hit).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The leftmost stop-string occurrence in the held text; at equal positions the longer
    /// stop string wins, as it is the more specific one.
    fn earliest_match(&self) -> Option<(usize, usize)> {
        self.stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|pos| (pos, i)))
            .min_by_key(|&(pos, i)| (pos, std::cmp::Reverse(self.stops[i].len())))
    }

    /// Byte length of the longest suffix of the held text that is a proper prefix of a stop
    /// string; cut on character boundaries only.
    fn longest_partial_suffix(&self) -> usize {
        self.stops
            .iter()
            .flat_map(|stop| {
                stop.char_indices()
                    .skip(1)
                    .map(|(end, _)| &stop[..end])
                    .filter(|prefix| self.held.ends_with(prefix))
                    .map(str::len)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds all deltas; returns everything emitted (flushing at the end) and the stop hit.
    fn run(stops: &[&str], deltas: &[&str]) -> (String, Option<String>) {
        let mut m = StopStringMatcher::new(stops.iter().copied());
        let mut out = String::new();
        for d in deltas {
            let step = m.push(d);
            out.push_str(&step.text);
            if step.is_stop() {
                return (out, m.stopped().map(str::to_string));
            }
        }
        out.push_str(&m.flush());
        (out, None)
    }

    #[test]
    fn stop_within_one_delta() {
        assert_eq!(
            run(&["STOP"], &["abc STOP def"]),
            ("abc ".into(), Some("STOP".into()))
        );
    }

    #[test]
    fn stop_spanning_deltas() {
        assert_eq!(
            run(&["</answer>"], &["42 </", "ans", "wer> tail"]),
            ("42 ".into(), Some("</answer>".into()))
        );
    }

    #[test]
    fn partial_prefix_is_held_then_released() {
        let mut m = StopStringMatcher::new(["STOP"]);
        assert_eq!(m.push("go ST").text, "go ");
        assert_eq!(m.push("O").text, "");
        // "STOx" rules the prefix out; it is released at once.
        assert_eq!(m.push("x").text, "STOx");
        assert_eq!(m.push("ST").text, "");
        assert_eq!(m.flush(), "ST");
        assert!(m.stopped().is_none());
    }

    #[test]
    fn overlapping_prefixes() {
        // "abab" then "c" completes "ababc" starting at the second "ab".
        assert_eq!(
            run(&["ababc"], &["xab", "ab", "ab", "c!"]),
            ("xab".into(), Some("ababc".into()))
        );
        assert_eq!(
            run(&["abab", "ababc"], &["xab", "ab"]),
            ("x".into(), Some("abab".into()))
        );
        // Equal start: the longer, more specific stop is reported.
        assert_eq!(
            run(&["abab", "ababc"], &["xababc"]),
            ("x".into(), Some("ababc".into()))
        );
        assert_eq!(run(&["ababc"], &["ababab"]), ("ababab".into(), None));
    }

    #[test]
    fn multiple_stop_strings_earliest_wins() {
        assert_eq!(
            run(&["END", "\n\n"], &["one\n", "\ntwo END"]),
            ("one".into(), Some("\n\n".into()))
        );
        let mut m = StopStringMatcher::new(["END", "\n\n"]);
        let step = m.push("a END b\n\n");
        assert_eq!(step.text, "a ");
        assert_eq!(step.stop_index, Some(0));
    }

    #[test]
    fn unicode_stop_strings_and_boundaries() {
        assert_eq!(
            run(&["終わり"], &["日本", "語の終", "わり です"]),
            ("日本語の".into(), Some("終わり".into()))
        );
        // A held prefix never cuts a character in half.
        let mut m = StopStringMatcher::new(["é!"]);
        assert_eq!(m.push("café").text, "caf");
        assert_eq!(m.push("?").text, "é?");
    }

    #[test]
    fn stop_at_the_very_start() {
        assert_eq!(
            run(&["<|"], &["<|", "im_end|>"]),
            ("".into(), Some("<|".into()))
        );
        assert_eq!(run(&["Hi"], &["Hi there"]), ("".into(), Some("Hi".into())));
    }

    #[test]
    fn after_stop_nothing_more_and_empty_stops_ignored() {
        let mut m = StopStringMatcher::new(["", "x"]);
        assert_eq!(m.stop_strings(), ["x"]);
        assert!(m.push("ax").is_stop());
        assert_eq!(m.push("more"), StopMatch::default());
        assert_eq!(m.flush(), "");
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), None));
    }
}
