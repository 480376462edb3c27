//! Reading the guest entrypoint's output: boot markers framed as `\x1eisobench-marker:NAME\x1f`
//! and the last bytes of everything else, kept for error messages.
//!
//! A marker is found by scanning bytes as they arrive, never by waiting for a newline, so its
//! time of arrival is the time the `write(2)` reached the pipe.

use std::collections::VecDeque;

/// Byte that opens a marker frame (ASCII record separator).
const FRAME_START: u8 = 0x1e;

/// Byte that closes a marker frame (ASCII unit separator).
const FRAME_END: u8 = 0x1f;

/// Text that follows [`FRAME_START`] in every marker.
const MARKER_PREFIX: &[u8] = b"isobench-marker:";

/// Maximum length of a frame body; a longer one is kept as ordinary output.
const MAX_FRAME_BYTES: usize = 64;

/// Bytes of ordinary output kept for error messages.
pub const TAIL_BYTES: usize = 4096;

/// Splits a byte stream into marker names and ordinary output.
#[derive(Debug, Default)]
pub struct MarkerScanner {
    /// Body of the frame being read, when inside one.
    frame: Option<Vec<u8>>,
}

impl MarkerScanner {
    /// Feeds the next chunk; returns the names of the markers completed in it, in order, and
    /// appends every other byte to `tail`.
    pub fn feed(&mut self, chunk: &[u8], tail: &mut OutputTail) -> Vec<String> {
        let mut names = Vec::new();
        for &byte in chunk {
            match (&mut self.frame, byte) {
                (None, FRAME_START) => self.frame = Some(Vec::new()),
                (None, _) => tail.push(byte),
                (Some(frame), FRAME_END) => {
                    match frame.strip_prefix(MARKER_PREFIX) {
                        Some(name) => names.push(String::from_utf8_lossy(name).into_owned()),
                        None => tail.extend(frame),
                    }
                    self.frame = None;
                }
                (Some(frame), _) if frame.len() >= MAX_FRAME_BYTES => {
                    frame.push(byte);
                    tail.extend(frame);
                    self.frame = None;
                }
                (Some(frame), _) => frame.push(byte),
            }
        }
        names
    }
}

/// The last [`TAIL_BYTES`] bytes of output.
#[derive(Debug, Default)]
pub struct OutputTail {
    bytes: VecDeque<u8>,
}

impl OutputTail {
    /// Appends one byte, dropping the oldest beyond [`TAIL_BYTES`].
    pub fn push(&mut self, byte: u8) {
        if self.bytes.len() == TAIL_BYTES {
            self.bytes.pop_front();
        }
        self.bytes.push_back(byte);
    }

    /// Appends bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.push(byte);
        }
    }

    /// The kept output as text, with invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        let (front, back) = self.bytes.as_slices();
        let mut joined = Vec::with_capacity(self.bytes.len());
        joined.extend_from_slice(front);
        joined.extend_from_slice(back);
        String::from_utf8_lossy(&joined).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_finds_marker_between_output() {
        let mut scanner = MarkerScanner::default();
        let mut tail = OutputTail::default();
        let names = scanner.feed(
            b"before\x1eisobench-marker:init_started\x1fafter",
            &mut tail,
        );
        assert_eq!(names, vec!["init_started"]);
        assert_eq!(tail.text(), "beforeafter");
    }

    #[test]
    fn scanner_joins_marker_split_across_chunks() {
        let mut scanner = MarkerScanner::default();
        let mut tail = OutputTail::default();
        assert!(scanner.feed(b"\x1eisobench-mar", &mut tail).is_empty());
        assert_eq!(
            scanner.feed(b"ker:exec_kernel\x1f", &mut tail),
            vec!["exec_kernel"]
        );
        assert_eq!(tail.text(), "");
    }

    #[test]
    fn scanner_keeps_foreign_frame_as_output() {
        let mut scanner = MarkerScanner::default();
        let mut tail = OutputTail::default();
        assert!(scanner.feed(b"\x1eother\x1f", &mut tail).is_empty());
        assert_eq!(tail.text(), "other");
    }

    #[test]
    fn scanner_gives_up_on_long_frame() {
        let mut scanner = MarkerScanner::default();
        let mut tail = OutputTail::default();
        let long = [b'a'; MAX_FRAME_BYTES + 10];
        let mut chunk = vec![FRAME_START];
        chunk.extend_from_slice(&long);
        assert!(scanner.feed(&chunk, &mut tail).is_empty());
        assert_eq!(tail.text().len(), long.len());
    }

    #[test]
    fn tail_keeps_last_bytes() {
        let mut tail = OutputTail::default();
        tail.extend(&vec![b'a'; TAIL_BYTES]);
        tail.extend(b"end");
        let text = tail.text();
        assert_eq!(text.len(), TAIL_BYTES);
        assert!(text.ends_with("end"));
    }
}
