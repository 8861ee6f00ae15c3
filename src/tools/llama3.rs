//! Llama 3.x JSON calls: the whole output is `{"name": ..., "parameters": {...}}` (several
//! separated by `;`), optionally after `<|python_tag|>`. Output that does not open with a JSON
//! object is content.

use super::json_scan::skip_ws;
use super::util::object_call;
use super::{CallFormat, Scan};

const PYTHON_TAG: &str = "<|python_tag|>";

pub struct Llama3Json;

impl CallFormat for Llama3Json {
    fn scan(&self, s: &str, last: bool) -> Scan {
        let mut scan = Scan::default();
        let mut i = skip_ws(s, 0);
        if s[i..].starts_with(PYTHON_TAG) {
            i = skip_ws(s, i + PYTHON_TAG.len());
        } else if !last && PYTHON_TAG.starts_with(&s[i..]) {
            // Only whitespace or part of the tag so far: undecided.
            return scan;
        }
        if !last && i == s.len() {
            return scan;
        }
        if !s[i..].starts_with('{') {
            scan.text(0..s.len());
            return scan;
        }
        loop {
            let (mut call, end, invalid) = object_call(s, i, i, &["parameters", "arguments"]);
            if invalid {
                scan.call(call);
                scan.malformed = last;
                return scan.finish(last);
            }
            let Some(end) = end else {
                scan.call(call);
                return scan.finish(last);
            };
            call.done = true;
            scan.call(call);
            let j = skip_ws(s, end);
            if j == s.len() {
                return scan.finish(last);
            }
            if !s[j..].starts_with(';') {
                scan.malformed = last;
                if last {
                    return scan.finish(last);
                }
                return scan;
            }
            i = skip_ws(s, j + 1);
            if i == s.len() {
                return scan.finish(last);
            }
        }
    }
}
