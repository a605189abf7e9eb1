//! A minimal Server-Sent Events reader: bytes in, `data:` payloads out.
//!
//! Events end at a blank line; an event's `data:` lines are joined with
//! `\n`; other fields (`event:`, `id:`, comments) are ignored, as OpenAI's
//! stream uses none of them. One event may be at most [`EVENT_MAX_BYTES`].

use bytes::{Buf, BytesMut};

/// The largest event accepted from an upstream: a bound on memory per stream.
pub const EVENT_MAX_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an upstream event is larger than {EVENT_MAX_BYTES} bytes")]
pub struct EventTooLarge;

#[derive(Default)]
pub struct SseReader {
    buffer: BytesMut,
}

impl SseReader {
    /// Adds bytes and returns the data of every event they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, EventTooLarge> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some((end, separator)) = find_event_end(&self.buffer) {
            let event = self.buffer.split_to(end);
            self.buffer.advance(separator);
            if let Some(data) = event_data(&event) {
                events.push(data);
            }
        }
        if self.buffer.len() > EVENT_MAX_BYTES {
            return Err(EventTooLarge);
        }
        Ok(events)
    }
}

/// Where the first complete event ends, and how long its separator is.
fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn event_data(event: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(event);
    let mut data: Option<String> = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("data:") else {
            continue;
        };
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        match &mut data {
            Some(d) => {
                d.push('\n');
                d.push_str(rest);
            }
            None => data = Some(rest.to_owned()),
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_and_separators() {
        let mut reader = SseReader::default();
        assert_eq!(reader.feed(b"data: {\"a\"").unwrap(), Vec::<String>::new());
        assert_eq!(
            reader
                .feed(b":1}\n\n: comment\n\ndata: x\r\n\r\ndata: [DONE]\n\n")
                .unwrap(),
            vec!["{\"a\":1}".to_owned(), "x".to_owned(), "[DONE]".to_owned()]
        );
        assert_eq!(reader.feed(b"data: a\ndata: b\n\n").unwrap(), vec!["a\nb"]);
    }

    #[test]
    fn oversized_events_are_refused() {
        let mut reader = SseReader::default();
        let big = vec![b'x'; EVENT_MAX_BYTES + 1];
        assert_eq!(reader.feed(&big), Err(EventTooLarge));
    }
}
