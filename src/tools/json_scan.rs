//! Scans JSON as it streams in: where a value ends, and the `name` and arguments of a call
//! object before the object is complete. Structure only; a complete value is then checked with
//! serde_json.

/// How far a JSON value starting at a position has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueEnd {
    /// The value ends at this byte offset (exclusive).
    Complete(usize),
    /// The text ends inside the value.
    Partial,
    /// Not JSON.
    Invalid,
}

/// Skips JSON whitespace.
pub fn skip_ws(s: &str, mut i: usize) -> usize {
    let b = s.as_bytes();
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Where the JSON value starting at `start` ends (checked for structure: balanced brackets,
/// closed strings; a complete value is then parsed by the caller).
pub fn value_end(s: &str, start: usize) -> ValueEnd {
    let b = s.as_bytes();
    if start >= b.len() {
        return ValueEnd::Partial;
    }
    match b[start] {
        b'{' | b'[' => {
            let mut stack = Vec::new();
            let mut i = start;
            while i < b.len() {
                match b[i] {
                    b'{' => stack.push(b'}'),
                    b'[' => stack.push(b']'),
                    c @ (b'}' | b']') => {
                        if stack.pop() != Some(c) {
                            return ValueEnd::Invalid;
                        }
                        if stack.is_empty() {
                            return ValueEnd::Complete(i + 1);
                        }
                    }
                    b'"' => match string_end(s, i) {
                        ValueEnd::Complete(e) => {
                            i = e;
                            continue;
                        }
                        other => return other,
                    },
                    _ => {}
                }
                i += 1;
            }
            ValueEnd::Partial
        }
        b'"' => string_end(s, start),
        b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
            let mut i = start;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'.' | b'-' | b'+'))
            {
                i += 1;
            }
            if i == b.len() {
                ValueEnd::Partial
            } else {
                ValueEnd::Complete(i)
            }
        }
        _ => ValueEnd::Invalid,
    }
}

/// End of the string literal whose opening quote is at `start`.
fn string_end(s: &str, start: usize) -> ValueEnd {
    let b = s.as_bytes();
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return ValueEnd::Complete(i + 1),
            c if c < 0x20 => return ValueEnd::Invalid,
            _ => i += 1,
        }
    }
    ValueEnd::Partial
}

/// A `{"name": ..., "arguments": {...}}` object seen so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallObject {
    /// The function name, once its string is complete.
    pub name: Option<String>,
    /// Byte range of the arguments value so far, and whether it is complete.
    pub args: Option<(usize, usize, bool)>,
    /// Offset just past the closing brace, once the object is complete.
    pub end: Option<usize>,
    pub invalid: bool,
}

/// Scans the call object at `start` (its `{`); `args_keys` name the arguments member
/// (`arguments`, `parameters`).
pub fn call_object(s: &str, start: usize, args_keys: &[&str]) -> CallObject {
    let mut out = CallObject::default();
    let b = s.as_bytes();
    if start >= b.len() {
        return out;
    }
    if b[start] != b'{' {
        out.invalid = true;
        return out;
    }
    let mut i = start + 1;
    loop {
        i = skip_ws(s, i);
        if i >= b.len() {
            return out;
        }
        if b[i] == b'}' {
            out.end = Some(i + 1);
            return out;
        }
        if b[i] != b'"' {
            out.invalid = true;
            return out;
        }
        let key_end = match string_end(s, i) {
            ValueEnd::Complete(e) => e,
            ValueEnd::Partial => return out,
            ValueEnd::Invalid => {
                out.invalid = true;
                return out;
            }
        };
        let Ok(key) = serde_json::from_str::<String>(&s[i..key_end]) else {
            out.invalid = true;
            return out;
        };
        i = skip_ws(s, key_end);
        if i >= b.len() {
            return out;
        }
        if b[i] != b':' {
            out.invalid = true;
            return out;
        }
        let vstart = skip_ws(s, i + 1);
        let end = value_end(s, vstart);
        let is_args = args_keys.contains(&key.as_str());
        match end {
            ValueEnd::Invalid => {
                out.invalid = true;
                return out;
            }
            ValueEnd::Partial => {
                if is_args && vstart < b.len() {
                    out.args = Some((vstart, b.len(), false));
                }
                return out;
            }
            ValueEnd::Complete(vend) => {
                if key == "name" {
                    match serde_json::from_str::<String>(&s[vstart..vend]) {
                        Ok(n) => out.name = Some(n),
                        Err(_) => {
                            out.invalid = true;
                            return out;
                        }
                    }
                } else if is_args {
                    out.args = Some((vstart, vend, true));
                }
                i = skip_ws(s, vend);
            }
        }
        if i >= b.len() {
            return out;
        }
        match b[i] {
            b',' => i += 1,
            b'}' => {
                out.end = Some(i + 1);
                return out;
            }
            _ => {
                out.invalid = true;
                return out;
            }
        }
    }
}

/// The longest suffix of `s` that is a proper prefix of `marker`: text that must be held back
/// while streaming because the marker may be starting. Respects char boundaries.
pub fn partial_marker_len(s: &str, marker: &str) -> usize {
    let max = marker.len().saturating_sub(1).min(s.len());
    (1..=max)
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && marker.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_ends() {
        assert_eq!(value_end(r#"{"a": "}"} x"#, 0), ValueEnd::Complete(10));
        assert_eq!(value_end(r#"{"a": [1, {"b": "\""}]"#, 0), ValueEnd::Partial);
        assert_eq!(value_end(r#"{"a": ]"#, 0), ValueEnd::Invalid);
        assert_eq!(value_end("12,", 0), ValueEnd::Complete(2));
        assert_eq!(value_end("12", 0), ValueEnd::Partial);
        assert_eq!(value_end("x", 0), ValueEnd::Invalid);
    }

    #[test]
    fn call_objects_grow() {
        let full = r#"{"name": "get_weather", "arguments": {"city": "Paris"}} tail"#;
        let keys = ["arguments"];
        let done = call_object(full, 0, &keys);
        assert_eq!(done.name.as_deref(), Some("get_weather"));
        let (a, b, complete) = done.args.unwrap();
        assert_eq!((&full[a..b], complete), (r#"{"city": "Paris"}"#, true));
        assert_eq!(done.end, Some(full.len() - 5));
        // Every prefix: never invalid, the name appears once complete, arguments only grow.
        let mut last_args = 0;
        for n in 0..full.len() {
            let c = call_object(&full[..n], 0, &keys);
            assert!(!c.invalid, "{n}");
            if let Some((_, e, _)) = c.args {
                assert!(e >= last_args);
                last_args = e;
            }
        }
        assert!(call_object(r#"{"name": 3}"#, 0, &keys).invalid);
        assert!(call_object(r#"{"name" "x"}"#, 0, &keys).invalid);
    }

    #[test]
    fn partial_markers() {
        assert_eq!(partial_marker_len("abc<tool", "<tool_call>"), 5);
        assert_eq!(partial_marker_len("abc", "<tool_call>"), 0);
        assert_eq!(partial_marker_len("<tool_call>", "<tool_call>"), 0);
    }
}
