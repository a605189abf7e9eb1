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
    /// No separator starts in `buffer` before this offset: what an earlier
    /// feed looked through is not looked through again.
    scanned: usize,
}

impl SseReader {
    /// Adds bytes and returns the data of every event they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, EventTooLarge> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some((end, separator)) = find_event_end(&self.buffer, self.scanned) {
            let event = self.buffer.split_to(end);
            self.buffer.advance(separator);
            self.scanned = 0;
            if let Some(data) = event_data(&event) {
                events.push(data);
            }
        }
        // A separator (at most 4 bytes) may end in the next read.
        self.scanned = self.buffer.len().saturating_sub(3);
        if self.buffer.len() > EVENT_MAX_BYTES {
            return Err(EventTooLarge);
        }
        Ok(events)
    }
}

/// Where the first complete event ends (an event's first separator,
/// `\n\n` or `\r\n\r\n`, starting at `from` or later), and how long its
/// separator is. One pass over the line feeds: a read holding many events
/// is not searched again from its start for each (which cost the square of
/// the read — 66 events of one read were 66 searches through it).
fn find_event_end(buffer: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut at = from;
    while let Some(offset) = buffer.get(at..)?.iter().position(|&b| b == b'\n') {
        let lf = at + offset;
        // `\r\n\r\n` is seen at its first line feed and starts a byte before.
        if lf >= 1 && buffer[lf - 1] == b'\r' && buffer.get(lf + 1..lf + 3) == Some(b"\r\n") {
            return Some((lf - 1, 4));
        }
        if buffer.get(lf + 1) == Some(&b'\n') {
            return Some((lf, 2));
        }
        at = lf + 1;
    }
    None
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

    /// Many events of one read, with both separators, read whole and byte
    /// by byte (every split of every separator): the same events.
    #[test]
    fn events_are_the_same_however_the_reads_split_them() {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for i in 0..40 {
            let separator: &[u8] = if i % 3 == 0 { b"\r\n\r\n" } else { b"\n\n" };
            stream.extend_from_slice(format!("data: {{\"n\":{i}}}").as_bytes());
            stream.extend_from_slice(separator);
            expected.push(format!("{{\"n\":{i}}}"));
        }
        stream.extend_from_slice(b"data: a\r\ndata: b\n\n: comment\n\n");
        expected.push("a\nb".to_owned());
        assert_eq!(SseReader::default().feed(&stream).unwrap(), expected);
        let mut reader = SseReader::default();
        let mut events = Vec::new();
        for byte in &stream {
            events.extend(reader.feed(std::slice::from_ref(byte)).unwrap());
        }
        assert_eq!(events, expected);
    }

    #[test]
    fn oversized_events_are_refused() {
        let mut reader = SseReader::default();
        let big = vec![b'x'; EVENT_MAX_BYTES + 1];
        assert_eq!(reader.feed(&big), Err(EventTooLarge));
    }
}
