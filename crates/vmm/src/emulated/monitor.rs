//! A client of QEMU's human monitor (HMP) on a Unix socket, used to record the state of an
//! emulated host that stopped sending heartbeats before it is killed.
//!
//! QEMU prints a banner and the prompt `(qemu) ` when a client connects, echoes each command
//! line and prints the prompt again after the command's output.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// The prompt QEMU's human monitor prints when it is ready for the next command.
const PROMPT: &[u8] = b"(qemu) ";
/// Time to wait for one command's output.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes kept of one command's output: `info registers -a` prints about 2 KiB per processor.
const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// Errors of talking to QEMU's monitor.
#[derive(Debug, thiserror::Error)]
pub(super) enum MonitorError {
    /// The socket could not be connected, read or written.
    #[error("QEMU monitor socket {path}: {source}")]
    Io {
        /// The socket's path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// QEMU did not print its prompt in time.
    #[error("QEMU monitor did not answer `{command}` within {COMMAND_TIMEOUT:?}")]
    TimedOut {
        /// The command line, or "connect" for the banner.
        command: String,
    },
}

/// A connection to QEMU's human monitor.
pub(super) struct Monitor {
    stream: UnixStream,
    path: String,
}

impl Monitor {
    /// Connects to the monitor socket at `path` and reads QEMU's banner.
    pub(super) fn connect(path: &Path) -> Result<Self, MonitorError> {
        let display = path.display().to_string();
        let io_error = |source| MonitorError::Io {
            path: display.clone(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(io_error)?;
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(io_error)?;
        let mut monitor = Monitor {
            stream,
            path: display,
        };
        monitor.read_until_prompt("connect")?;
        Ok(monitor)
    }

    /// Sends one command line and returns its output without the echo and the prompt.
    pub(super) fn command(&mut self, line: &str) -> Result<String, MonitorError> {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|source| MonitorError::Io {
                path: self.path.clone(),
                source,
            })?;
        let output = self.read_until_prompt(line)?;
        Ok(clean_output(&output, line))
    }

    fn read_until_prompt(&mut self, command: &str) -> Result<Vec<u8>, MonitorError> {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut output = Vec::new();
        let mut buffer = [0u8; 4096];
        while !output.ends_with(PROMPT) {
            if Instant::now() > deadline {
                return Err(MonitorError::TimedOut {
                    command: command.to_owned(),
                });
            }
            match self.stream.read(&mut buffer) {
                Ok(0) => {
                    return Err(MonitorError::Io {
                        path: self.path.clone(),
                        source: io::ErrorKind::UnexpectedEof.into(),
                    })
                }
                Ok(count) => {
                    output.extend_from_slice(&buffer[..count]);
                    if output.len() > MAX_OUTPUT_BYTES {
                        let excess = output.len() - MAX_OUTPUT_BYTES;
                        output.drain(..excess);
                    }
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(source) => {
                    return Err(MonitorError::Io {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(output)
    }
}

/// Removes the terminal escape sequences, carriage returns, the echoed command line and the
/// trailing prompt from a command's raw output.
fn clean_output(raw: &[u8], line: &str) -> String {
    let raw = raw.strip_suffix(PROMPT).unwrap_or(raw);
    let mut text = String::with_capacity(raw.len());
    let mut bytes = raw.iter().copied().peekable();
    while let Some(byte) = bytes.next() {
        match byte {
            // CSI sequence: ESC '[' parameters, ended by a byte in 0x40..=0x7e.
            0x1b => {
                if bytes.peek() == Some(&b'[') {
                    bytes.next();
                    for next in bytes.by_ref() {
                        if (0x40..=0x7e).contains(&next) {
                            break;
                        }
                    }
                }
            }
            b'\r' => {}
            _ => text.push(char::from(byte)),
        }
    }
    let mut lines: Vec<&str> = text.lines().collect();
    if lines
        .first()
        .is_some_and(|first| first.trim().ends_with(line))
    {
        lines.remove(0);
    }
    lines.join("\n")
}

/// Records the processors' state, interrupt controllers and interrupt counts of a frozen
/// emulated host through its monitor, then sends it an NMI. Returns the text for the log, which
/// contains the error instead of a command's output when the monitor fails.
pub(super) fn record_frozen_state(socket: &Path, vcpus: u8) -> String {
    let mut monitor = match Monitor::connect(socket) {
        Ok(monitor) => monitor,
        Err(error) => return format!("cannot record the frozen state: {error}"),
    };
    let mut commands = vec![
        "info cpus".to_owned(),
        "info registers -a".to_owned(),
        "info pic".to_owned(),
        "info irq".to_owned(),
    ];
    for cpu in 0..vcpus {
        commands.push(format!("cpu {cpu}"));
        commands.push("info lapic".to_owned());
    }
    commands.push("nmi".to_owned());
    let mut record = String::new();
    for command in commands {
        record.push_str(&format!("(qemu) {command}\n"));
        match monitor.command(&command) {
            Ok(output) => record.push_str(&output),
            Err(error) => {
                record.push_str(&format!("failed: {error}"));
                break;
            }
        }
        record.push('\n');
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_output_drops_echo_escapes_and_prompt() {
        let raw =
            b"info cpus\r\n\x1b[K* CPU #0: thread_id=123\r\n  CPU #1: thread_id=124\r\n(qemu) ";
        assert_eq!(
            clean_output(raw, "info cpus"),
            "* CPU #0: thread_id=123\n  CPU #1: thread_id=124"
        );
    }

    #[test]
    fn clean_output_keeps_output_without_echo() {
        assert_eq!(
            clean_output(b"EAX=00000000\r\n(qemu) ", "info registers"),
            "EAX=00000000"
        );
    }
}
