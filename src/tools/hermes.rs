//! Hermes / Qwen2.5 / Qwen3: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
//! one block per call, text before (and between) the blocks is content.

use super::json_scan::skip_ws;
use super::util::{expect, object_call, text_until};
use super::{CallFormat, Scan};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

pub struct Hermes;

impl CallFormat for Hermes {
    fn scan(&self, s: &str, last: bool) -> Scan {
        let mut scan = Scan::default();
        let mut i = 0;
        while let Some(open) = text_until(s, i, OPEN, last, &mut scan) {
            let (mut call, end, invalid) = object_call(s, open, open + OPEN.len(), &["arguments"]);
            if invalid {
                scan.call(call);
                scan.malformed = last;
                return scan.finish(last);
            }
            let Some(end) = end else {
                scan.call(call);
                return scan.finish(last);
            };
            let j = skip_ws(s, end);
            match expect(s, j, CLOSE) {
                Some(true) => {
                    call.done = true;
                    i = j + CLOSE.len();
                }
                // The model stopped right after the object (EOS before the closing tag).
                None if last && j == s.len() => {
                    call.done = true;
                    i = s.len();
                }
                None => {
                    scan.call(call);
                    return scan.finish(last);
                }
                Some(false) => {
                    scan.call(call);
                    scan.malformed = last;
                    return scan.finish(last);
                }
            }
            scan.call(call);
        }
        scan.finish(last)
    }
}
