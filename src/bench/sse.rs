//! Incremental server-sent-events decoder: bytes as they arrive in, `data` payloads of complete
//! events out. Chunk boundaries fall anywhere (mid-line, mid-UTF-8), so bytes are buffered until
//! a line ends.

/// Splits a byte stream into SSE events and yields each event's `data` (lines joined by `\n`).
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    data: Vec<String>,
    has_data: bool,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `bytes`; returns the data of every event they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let mut line = &self.buf[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            if let Some(ev) = self.line(&line) {
                events.push(ev);
            }
            start = end + 1;
        }
        self.buf.drain(..start);
        events
    }

    /// Ends the stream: an event not closed by a blank line still counts (some servers omit it).
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        let rest = String::from_utf8_lossy(&rest).trim_end().to_string();
        if !rest.is_empty() {
            if let Some(ev) = self.line(&rest) {
                return Some(ev);
            }
        }
        self.dispatch()
    }

    fn line(&mut self, line: &str) -> Option<String> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None; // comment / keep-alive ping
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            self.data.push(value.to_string());
            self.has_data = true;
        }
        None
    }

    fn dispatch(&mut self) -> Option<String> {
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(std::mem::take(&mut self.data).join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_arbitrary_chunks() {
        let stream = "data: {\"a\":1}\n\n: ping\n\ndata: {\"b\":\"é\"}\r\n\r\nevent: x\ndata: l1\ndata: l2\n\ndata: [DONE]\n\n";
        let bytes = stream.as_bytes();
        for chunk in [1, 2, 3, 7, bytes.len()] {
            let mut d = SseDecoder::new();
            let mut got = Vec::new();
            for c in bytes.chunks(chunk) {
                got.extend(d.push(c));
            }
            got.extend(d.finish());
            assert_eq!(
                got,
                vec!["{\"a\":1}", "{\"b\":\"é\"}", "l1\nl2", "[DONE]"],
                "chunk size {chunk}"
            );
        }
    }

    #[test]
    fn unterminated_last_event_is_kept() {
        let mut d = SseDecoder::new();
        assert!(d.push(b"data: {\"x\":2}").is_empty());
        assert_eq!(d.finish().as_deref(), Some("{\"x\":2}"));
        assert_eq!(d.finish(), None);
    }
}
