//! gpt-oss's harmony format, as decoded text with its special tokens: messages
//! `[<|start|>ROLE]<|channel|>CHANNEL [to=functions.NAME] [<|constrain|>json]<|message|>BODY`
//! ended by `<|end|>`, `<|call|>` or `<|return|>`. Shared by the gpt-oss tool-call and
//! reasoning parsers.

use std::ops::Range;

use super::json_scan::partial_marker_len;

const START: &str = "<|start|>";
const CHANNEL: &str = "<|channel|>";
const MESSAGE: &str = "<|message|>";
const ENDS: [&str; 3] = ["<|end|>", "<|call|>", "<|return|>"];
/// Every marker text may stop at; a partial one at the end of streamed text is held back.
const MARKERS: [&str; 5] = [START, CHANNEL, "<|end|>", "<|call|>", "<|return|>"];

/// One message, or a run of plain text outside any message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The whole message, header and end marker included.
    pub span: Range<usize>,
    /// Empty for plain text.
    pub channel: String,
    /// `NAME` of `to=functions.NAME`.
    pub recipient: Option<String>,
    pub body: Range<usize>,
    /// Its end marker was seen (plain text: always true).
    pub ended: bool,
    pub plain: bool,
}

/// The messages of `text`; while streaming (`last` false) a partial marker or an unfinished
/// header at the end is left out, so every result extends the previous one.
pub fn messages(text: &str, last: bool) -> Vec<Message> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        if rest.starts_with(START) || rest.starts_with(CHANNEL) {
            let Some(m) = rest.find(MESSAGE) else {
                if last {
                    // A header that never opened its body: plain text.
                    out.push(plain(i..text.len()));
                }
                return out;
            };
            let header = &rest[..m];
            let body_start = i + m + MESSAGE.len();
            let (body_end, next, ended) = match find_any(&text[body_start..], &ENDS) {
                Some((p, len)) => (body_start + p, body_start + p + len, true),
                None => {
                    // A following message may start without an end marker.
                    match text[body_start..].find(START) {
                        Some(p) => (body_start + p, body_start + p, true),
                        None => {
                            let held = if last { 0 } else { held(&text[body_start..]) };
                            (text.len() - held, text.len(), false)
                        }
                    }
                }
            };
            out.push(Message {
                span: i..next,
                channel: channel_of(header),
                recipient: recipient_of(header),
                body: body_start..body_end,
                ended,
                plain: false,
            });
            if !ended {
                return out;
            }
            i = next;
        } else if let Some((len, _)) = ENDS
            .iter()
            .map(|e| (e.len(), rest.starts_with(e)))
            .find(|&(_, yes)| yes)
        {
            i += len;
        } else {
            let stop = find_any(rest, &MARKERS).map(|(p, _)| p);
            match stop {
                Some(p) => {
                    out.push(plain(i..i + p));
                    i += p;
                }
                None => {
                    let h = if last { 0 } else { held(rest) };
                    if rest.len() > h {
                        out.push(plain(i..text.len() - h));
                    }
                    return out;
                }
            }
        }
    }
    out
}

fn plain(span: Range<usize>) -> Message {
    Message {
        body: span.clone(),
        span,
        channel: String::new(),
        recipient: None,
        ended: true,
        plain: true,
    }
}

fn held(s: &str) -> usize {
    MARKERS
        .iter()
        .map(|m| partial_marker_len(s, m))
        .max()
        .unwrap_or(0)
}

/// The first of `markers` in `s`: its position and length.
fn find_any(s: &str, markers: &[&str]) -> Option<(usize, usize)> {
    markers
        .iter()
        .filter_map(|m| s.find(m).map(|p| (p, m.len())))
        .min()
}

fn channel_of(header: &str) -> String {
    header
        .split(CHANNEL)
        .nth(1)
        .and_then(|c| c.split([' ', '<']).next())
        .unwrap_or_default()
        .to_string()
}

fn recipient_of(header: &str) -> Option<String> {
    let p = header.find("to=functions.")?;
    let name: String = header[p + "to=functions.".len()..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '<')
        .collect();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_channels_and_calls() {
        let t = "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}<|call|>";
        let m = messages(t, true);
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].channel.as_str(), &t[m[0].body.clone()]),
            ("analysis", "Think.")
        );
        assert_eq!(m[1].recipient.as_deref(), Some("get_weather"));
        assert_eq!(&t[m[1].body.clone()], "{\"city\":\"Paris\"}");
        // Streaming never shows a partial marker.
        for n in 0..t.len() {
            if !t.is_char_boundary(n) {
                continue;
            }
            for msg in messages(&t[..n], false) {
                assert!(!t[msg.body.clone()].contains("<|"), "{n}");
            }
        }
    }
}
