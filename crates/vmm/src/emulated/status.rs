//! Status records the init script writes to the status port, one per line:
//! `<outer uptime in seconds> <event> [arguments]`, for example `4.12 exit 0`. Before the port
//! exists, failures go to the console framed as `\x1eisobench-emulated:<event> ...\x1f`.

use super::EmulatedError;

/// One event reported by the init script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StatusEvent {
    /// `/dev/kvm` exists.
    KvmReady,
    /// The command was started.
    CommandStarted,
    /// The command exited with this status.
    Exit(i32),
    /// The init script failed before the command could run.
    Error(String),
}

/// Parses the complete lines of a status stream, ignoring lines it does not understand.
pub(super) fn parse_status(text: &str) -> Vec<StatusEvent> {
    text.lines()
        .filter_map(|line| {
            let (_uptime, event) = line.split_once(' ')?;
            parse_event(event)
        })
        .collect()
}

/// Returns the outer uptime of the last complete status line, heartbeats included.
pub(super) fn last_uptime(text: &str) -> Option<&str> {
    let complete = &text[..text.rfind('\n')?];
    let line = complete.rsplit('\n').next()?;
    line.split(' ').next().filter(|uptime| !uptime.is_empty())
}

/// Returns the events framed in the console output.
pub(super) fn parse_console(console: &[u8]) -> Vec<StatusEvent> {
    const START: &[u8] = b"\x1eisobench-emulated:";
    let mut events = Vec::new();
    let mut rest = console;
    while let Some(start) = find(rest, START) {
        let after = &rest[start + START.len()..];
        let Some(end) = after.iter().position(|&byte| byte == 0x1f) else {
            break;
        };
        if let Some(event) = parse_event(&String::from_utf8_lossy(&after[..end])) {
            events.push(event);
        }
        rest = &after[end..];
    }
    events
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn parse_event(text: &str) -> Option<StatusEvent> {
    let mut words = text.trim().splitn(2, ' ');
    let event = match (words.next()?, words.next()) {
        ("kvm_ready", _) => StatusEvent::KvmReady,
        ("command_started", _) => StatusEvent::CommandStarted,
        // A sign of life every 5 s, which only the watch on the status file's size uses.
        ("heartbeat", _) => return None,
        ("exit", Some(code)) => StatusEvent::Exit(code.trim().parse().ok()?),
        ("error", Some(detail)) => StatusEvent::Error(detail.trim().to_owned()),
        _ => return None,
    };
    Some(event)
}

/// Turns an init failure into the error a caller can act on.
pub(super) fn init_error(detail: &str) -> EmulatedError {
    match detail {
        "nested_svm_missing" => EmulatedError::NestedSvmMissing,
        "kvm_missing" => EmulatedError::KvmMissing,
        other => EmulatedError::InitFailed(other.replace('_', " ")),
    }
}

/// Names an event for messages.
pub(super) fn describe(event: Option<&StatusEvent>) -> String {
    match event {
        None => "none".to_owned(),
        Some(StatusEvent::KvmReady) => "kvm_ready".to_owned(),
        Some(StatusEvent::CommandStarted) => "command_started".to_owned(),
        Some(StatusEvent::Exit(code)) => format!("exit {code}"),
        Some(StatusEvent::Error(detail)) => format!("error {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parsed_in_order() {
        let events = parse_status("3.91 kvm_ready\n3.95 command_started\n9.20 exit 3\n");
        assert_eq!(
            events,
            [
                StatusEvent::KvmReady,
                StatusEvent::CommandStarted,
                StatusEvent::Exit(3)
            ]
        );
    }

    #[test]
    fn status_partial_and_unknown_lines_ignored() {
        assert_eq!(parse_status("1.0 hello\n2.0 exit\n3.0 exit x\n"), []);
    }

    #[test]
    fn heartbeats_not_events_but_uptime_read() {
        let text = "3.91 kvm_ready\n8.93 heartbeat\n13.95 heartbeat\n14.0 exi";
        assert_eq!(parse_status(text), [StatusEvent::KvmReady]);
        assert_eq!(last_uptime(text), Some("13.95"));
    }

    #[test]
    fn last_uptime_none_without_complete_line() {
        assert_eq!(last_uptime("3.9"), None);
    }

    #[test]
    fn console_frames_found_between_kernel_lines() {
        let console =
            b"[ 1.0] kvm: x\n\x1eisobench-emulated:error insmod_failed kvm.ko\x1f\n[ 2.0]";
        assert_eq!(
            parse_console(console),
            [StatusEvent::Error("insmod_failed kvm.ko".to_owned())]
        );
    }

    #[test]
    fn console_unterminated_frame_ignored() {
        assert_eq!(
            parse_console(b"\x1eisobench-emulated:error kvm_missing"),
            []
        );
    }

    #[test]
    fn init_error_maps_known_failures() {
        assert!(matches!(
            init_error("nested_svm_missing"),
            EmulatedError::NestedSvmMissing
        ));
        assert!(matches!(
            init_error("kvm_missing"),
            EmulatedError::KvmMissing
        ));
        assert!(matches!(
            init_error("port_missing stdout"),
            EmulatedError::InitFailed(_)
        ));
    }
}
