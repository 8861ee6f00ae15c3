//! DeepSeek V3 / R1: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n
//! ```json\n{...}\n```<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>`; V3.1 drops the type and the
//! fence: `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>`.

use super::json_scan::{skip_ws, value_end, ValueEnd};
use super::util::{expect, text_until};
use super::{CallFormat, CallPiece, Scan};

const CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
const CALLS_END: &str = "<｜tool▁calls▁end｜>";
const CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
const CALL_END: &str = "<｜tool▁call▁end｜>";
const SEP: &str = "<｜tool▁sep｜>";
const FENCE_OPEN: &str = "```json";
const FENCE_CLOSE: &str = "```";

pub struct DeepSeekV3;

impl CallFormat for DeepSeekV3 {
    fn scan(&self, s: &str, last: bool) -> Scan {
        let mut scan = Scan::default();
        let Some(begin) = text_until(s, 0, CALLS_BEGIN, last, &mut scan) else {
            return scan.finish(last);
        };
        let mut i = skip_ws(s, begin + CALLS_BEGIN.len());
        loop {
            match expect(s, i, CALLS_END) {
                Some(true) => {
                    text_until(s, i + CALLS_END.len(), "\u{0}", true, &mut scan);
                    return scan.finish(last);
                }
                None if i == s.len() => return eof(scan, last),
                _ => {}
            }
            match expect(s, i, CALL_BEGIN) {
                Some(true) => {}
                None => return eof(scan, last),
                Some(false) => return broken(scan, last),
            }
            let head = i + CALL_BEGIN.len();
            let Some(p) = s[head..].find(SEP) else {
                return eof(scan, last);
            };
            let before = &s[head..head + p];
            let mut j = head + p + SEP.len();
            let name = if before == "function" {
                // V3: the name runs to the end of the line.
                let Some(nl) = s[j..].find('\n') else {
                    return eof(scan, last);
                };
                let name = s[j..j + nl].trim().to_string();
                j += nl;
                j = skip_ws(s, j);
                match expect(s, j, FENCE_OPEN) {
                    Some(true) => j += FENCE_OPEN.len(),
                    None => return eof_named(scan, i, name, last),
                    Some(false) => {}
                }
                name
            } else {
                before.trim().to_string()
            };
            let at = skip_ws(s, j);
            let mut call = CallPiece {
                start: i,
                name: Some(name),
                args: None,
                done: false,
            };
            let end = match value_end(s, at) {
                ValueEnd::Complete(e) => e,
                ValueEnd::Partial => {
                    call.args = (at < s.len()).then_some(at..s.len());
                    scan.call(call);
                    return scan.finish(last);
                }
                ValueEnd::Invalid => {
                    scan.call(call);
                    return broken(scan, last);
                }
            };
            call.args = Some(at..end);
            let mut k = skip_ws(s, end);
            if s[k..].starts_with(FENCE_CLOSE) {
                k = skip_ws(s, k + FENCE_CLOSE.len());
            }
            match expect(s, k, CALL_END) {
                Some(true) => {
                    call.done = true;
                    scan.call(call);
                    i = skip_ws(s, k + CALL_END.len());
                }
                None => {
                    scan.call(call);
                    return scan.finish(last);
                }
                Some(false) => {
                    scan.call(call);
                    return broken(scan, last);
                }
            }
        }
    }

    /// DeepSeek tokenizers may mark the call markers special; keep them either way.
    fn needs_special_tokens(&self) -> bool {
        true
    }
}

fn eof(scan: Scan, last: bool) -> Scan {
    let mut scan = scan;
    if last
        && scan
            .pieces
            .iter()
            .all(|p| !matches!(p, super::Piece::Call(_)))
    {
        scan.malformed = true;
    }
    scan.finish(last)
}

fn eof_named(mut scan: Scan, start: usize, name: String, last: bool) -> Scan {
    scan.call(CallPiece {
        start,
        name: Some(name),
        args: None,
        done: false,
    });
    scan.finish(last)
}

fn broken(mut scan: Scan, last: bool) -> Scan {
    scan.malformed = last;
    scan.finish(last)
}
