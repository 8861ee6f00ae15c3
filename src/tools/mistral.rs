//! Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (v0.3 tokenizers) or
//! `[TOOL_CALLS]name[ARGS]{...}` per call (v11+). `[TOOL_CALLS]` is a special token.

use super::json_scan::{skip_ws, value_end, ValueEnd};
use super::util::{expect, object_call, text_until};
use super::{CallFormat, CallPiece, Scan};

const CALLS: &str = "[TOOL_CALLS]";
const ARGS: &str = "[ARGS]";

pub struct Mistral;

impl CallFormat for Mistral {
    fn scan(&self, s: &str, last: bool) -> Scan {
        let mut scan = Scan::default();
        let mut i = 0;
        while let Some(open) = text_until(s, i, CALLS, last, &mut scan) {
            let j = skip_ws(s, open + CALLS.len());
            if j == s.len() {
                scan.malformed = last;
                return scan.finish(last);
            }
            if s[j..].starts_with('[') {
                return array(s, open, j, last, scan);
            }
            // name[ARGS]{...}
            let Some(p) = s[j..].find(ARGS) else {
                scan.malformed = last;
                return scan.finish(last);
            };
            let name = s[j..j + p].trim().to_string();
            let at = skip_ws(s, j + p + ARGS.len());
            let mut call = CallPiece {
                start: open,
                name: Some(name),
                args: None,
                done: false,
            };
            match value_end(s, at) {
                ValueEnd::Complete(e) => {
                    call.args = Some(at..e);
                    call.done = true;
                    scan.call(call);
                    i = e;
                }
                ValueEnd::Partial => {
                    call.args = (at < s.len()).then_some(at..s.len());
                    scan.call(call);
                    return scan.finish(last);
                }
                ValueEnd::Invalid => {
                    scan.call(call);
                    scan.malformed = last;
                    return scan.finish(last);
                }
            }
        }
        scan.finish(last)
    }

    fn needs_special_tokens(&self) -> bool {
        true
    }
}

/// A JSON array of call objects at `at`; `keys` name the arguments member.
pub(crate) fn array_calls(
    s: &str,
    start: usize,
    at: usize,
    keys: &[&str],
    last: bool,
    scan: &mut Scan,
) -> Option<usize> {
    let mut i = skip_ws(s, at + 1);
    loop {
        if i >= s.len() {
            return None;
        }
        if s[i..].starts_with(']') {
            return Some(i + 1);
        }
        let (mut call, end, invalid) =
            object_call(s, if i == skip_ws(s, at + 1) { start } else { i }, i, keys);
        if invalid {
            scan.call(call);
            scan.malformed = last;
            return None;
        }
        let Some(end) = end else {
            scan.call(call);
            return None;
        };
        call.done = true;
        scan.call(call);
        let j = skip_ws(s, end);
        match expect(s, j, ",") {
            Some(true) => i = skip_ws(s, j + 1),
            _ if s[j..].starts_with(']') => return Some(j + 1),
            None => return None,
            Some(false) => {
                scan.malformed = last;
                return None;
            }
        }
    }
}

fn array(s: &str, open: usize, at: usize, last: bool, mut scan: Scan) -> Scan {
    match array_calls(s, open, at, &["arguments"], last, &mut scan) {
        Some(end) => {
            text_until(s, end, CALLS, last, &mut scan);
            scan.finish(last)
        }
        None => {
            if last && !scan.malformed {
                // Unterminated array: the calls inside it may be done, the markup is not.
                if let Some(super::Piece::Call(c)) = scan.pieces.last_mut() {
                    c.done = false;
                }
            }
            scan.finish(last)
        }
    }
}
