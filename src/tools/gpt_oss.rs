//! gpt-oss: a call is a harmony message addressed `to=functions.NAME` whose body is the JSON
//! arguments; other messages' bodies are content (the analysis channel is taken out before by
//! the gpt-oss reasoning parser).

use super::harmony;
use super::json_scan::{skip_ws, value_end, ValueEnd};
use super::{CallFormat, CallPiece, Scan};

pub struct GptOss;

impl CallFormat for GptOss {
    fn scan(&self, s: &str, last: bool) -> Scan {
        let mut scan = Scan::default();
        for m in harmony::messages(s, last) {
            let Some(name) = m.recipient else {
                scan.text(m.body);
                continue;
            };
            let at = skip_ws(s, m.body.start).min(m.body.end);
            let body = &s[..m.body.end];
            let mut call = CallPiece {
                start: m.span.start,
                name: Some(name),
                args: None,
                done: false,
            };
            match value_end(body, at) {
                ValueEnd::Complete(e) => {
                    call.args = Some(at..e);
                    call.done = m.ended || last;
                }
                ValueEnd::Partial => call.args = (at < m.body.end).then_some(at..m.body.end),
                ValueEnd::Invalid => scan.malformed = last,
            }
            scan.call(call);
        }
        scan.finish(last)
    }

    fn needs_special_tokens(&self) -> bool {
        true
    }
}
