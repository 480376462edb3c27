//! Scanner for the guest entrypoint's text markers, `\x1eisobench-marker:NAME\x1f`, in a byte
//! stream that arrives in arbitrary chunks.
//!
//! The entrypoint writes each marker with one `write(2)`, but the attach stream may still split
//! or join writes, so the scanner keeps a partial frame across chunks and never waits for a
//! newline.

/// Byte that opens a marker frame (ASCII record separator).
const FRAME_START: u8 = 0x1e;
/// Byte that closes a marker frame (ASCII unit separator).
const FRAME_END: u8 = 0x1f;
/// Text between the frame start and the marker's name.
const MARKER_PREFIX: &[u8] = b"isobench-marker:";
/// Maximum marker name length in bytes; a longer frame is ordinary output, not a marker.
const MAX_NAME_BYTES: usize = 64;

/// Incremental scanner that returns the names of complete marker frames.
#[derive(Debug, Default)]
pub struct MarkerScanner {
    /// Bytes after an unmatched frame start, kept until the frame closes or proves invalid.
    partial: Option<Vec<u8>>,
}

impl MarkerScanner {
    /// Creates a scanner with no partial frame.
    pub fn new() -> MarkerScanner {
        MarkerScanner::default()
    }

    /// Scans one chunk of output and returns the names of the markers it completes, in order.
    pub fn scan(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        for &byte in chunk {
            match (&mut self.partial, byte) {
                // A new frame start abandons any unfinished frame: that one was plain output.
                (_, FRAME_START) => self.partial = Some(Vec::new()),
                (Some(frame), FRAME_END) => {
                    if let Some(name) = marker_name(frame) {
                        names.push(name);
                    }
                    self.partial = None;
                }
                (Some(frame), byte) => {
                    frame.push(byte);
                    if frame.len() > MARKER_PREFIX.len() + MAX_NAME_BYTES {
                        self.partial = None;
                    }
                }
                (None, _) => {}
            }
        }
        names
    }
}

/// Returns the marker name of a frame's contents, or `None` when it is no marker.
fn marker_name(frame: &[u8]) -> Option<String> {
    let name = frame.strip_prefix(MARKER_PREFIX)?;
    let valid = !name.is_empty()
        && name
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || *byte == b'_');
    valid.then(|| String::from_utf8_lossy(name).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_finds_marker_in_one_chunk() {
        let mut scanner = MarkerScanner::new();
        let names = scanner.scan(b"boot\x1eisobench-marker:init_started\x1fmore");
        assert_eq!(names, vec!["init_started"]);
    }

    #[test]
    fn scanner_finds_marker_split_across_chunks() {
        let mut scanner = MarkerScanner::new();
        assert!(scanner.scan(b"\x1eisobench-mar").is_empty());
        assert!(scanner.scan(b"ker:exec_ker").is_empty());
        assert_eq!(scanner.scan(b"nel\x1f"), vec!["exec_kernel"]);
    }

    #[test]
    fn scanner_finds_markers_byte_by_byte() {
        let stream = b"\x1eisobench-marker:init_started\x1f\x1eisobench-marker:exec_kernel\x1f";
        let mut scanner = MarkerScanner::new();
        let mut names = Vec::new();
        for byte in stream {
            names.extend(scanner.scan(std::slice::from_ref(byte)));
        }
        assert_eq!(names, vec!["init_started", "exec_kernel"]);
    }

    #[test]
    fn scanner_needs_no_newline() {
        let mut scanner = MarkerScanner::new();
        let names = scanner.scan(b"\x1eisobench-marker:a\x1f\x1eisobench-marker:b\x1f");
        assert_eq!(names, vec!["a", "b"]);
    }

    #[test]
    fn scanner_ignores_frames_without_prefix() {
        let mut scanner = MarkerScanner::new();
        assert!(scanner.scan(b"\x1eother:init_started\x1f").is_empty());
    }

    #[test]
    fn scanner_ignores_empty_or_invalid_names() {
        let mut scanner = MarkerScanner::new();
        assert!(scanner.scan(b"\x1eisobench-marker:\x1f").is_empty());
        assert!(scanner.scan(b"\x1eisobench-marker:a b\x1f").is_empty());
    }

    #[test]
    fn scanner_drops_overlong_frame() {
        let mut scanner = MarkerScanner::new();
        let mut stream = b"\x1eisobench-marker:".to_vec();
        stream.extend(std::iter::repeat_n(b'a', MAX_NAME_BYTES + 1));
        stream.push(FRAME_END);
        assert!(scanner.scan(&stream).is_empty());
    }

    #[test]
    fn scanner_restarts_at_new_frame_start() {
        let mut scanner = MarkerScanner::new();
        let names = scanner.scan(b"\x1egarbage\x1eisobench-marker:exec_kernel\x1f");
        assert_eq!(names, vec!["exec_kernel"]);
    }
}
