//! The 16550 UART on COM1 (vm-superio's model) and the console sink behind it.
//!
//! The guest's console writes are VM exits on a vCPU thread, so they must never wait for the
//! destination. Bytes are gathered into lines and handed to a drain thread through a bounded
//! channel; when the channel is full the line is dropped and counted, and the guest goes on.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;
use crate::config::Destination;

/// Port of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// Number of ports the UART decodes.
pub const UART_PORTS: u64 = 8;
/// Lines buffered between the vCPU and the drain thread before output is dropped.
const CHANNEL_LINES: usize = 1024;
/// A line is handed over at a newline or at this many bytes.
const LINE_MAX: usize = 256;

/// An interrupt line backed by an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The writer the UART sends its output to; never blocks.
pub struct ConsoleWriter {
    tx: Option<SyncSender<Vec<u8>>>,
    pending: Vec<u8>,
    dropped_bytes: Arc<AtomicU64>,
}

impl ConsoleWriter {
    fn hand_over(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.pending);
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(line)) => {
                self.dropped_bytes
                    .fetch_add(line.len() as u64, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => self.tx = None,
        }
    }

    /// Hands over what is buffered and closes the channel, so the drain thread ends.
    pub fn close(&mut self) {
        self.hand_over();
        self.tx = None;
    }

    /// Bytes dropped because the destination did not keep up.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes.load(Ordering::Relaxed)
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.tx.is_none() {
            return Ok(buf.len());
        }
        for &byte in buf {
            self.pending.push(byte);
            if byte == b'\n' || self.pending.len() >= LINE_MAX {
                self.hand_over();
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // The UART flushes after every byte; lines are handed over at newlines instead.
        Ok(())
    }
}

/// The drain thread of a console; join it after closing the writer so the tail is written.
pub struct ConsoleDrain {
    handle: JoinHandle<()>,
}

impl ConsoleDrain {
    /// Waits until everything handed over is written.
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

/// Opens `destination` and starts its drain thread.
pub fn open_console(
    destination: &Destination,
) -> io::Result<(ConsoleWriter, Option<ConsoleDrain>)> {
    let out: Box<dyn Write + Send> = match destination {
        Destination::None => {
            let writer = ConsoleWriter {
                tx: None,
                pending: Vec::new(),
                dropped_bytes: Arc::new(AtomicU64::new(0)),
            };
            return Ok((writer, None));
        }
        Destination::Stdout => Box::new(io::stdout()),
        Destination::Stderr => Box::new(io::stderr()),
        Destination::File(path) => Box::new(File::create(path)?),
        Destination::Fd(fd) => Box::new(file_from_fd(*fd)?),
    };
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(CHANNEL_LINES);
    let handle = std::thread::Builder::new()
        .name("console".to_string())
        .spawn(move || {
            let mut out = out;
            for line in rx {
                if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                    // The reader went away: keep draining so the guest never waits.
                    continue;
                }
            }
        })?;
    let writer = ConsoleWriter {
        tx: Some(tx),
        pending: Vec::new(),
        dropped_bytes: Arc::new(AtomicU64::new(0)),
    };
    Ok((writer, Some(ConsoleDrain { handle })))
}

/// Takes ownership of an inherited file descriptor after checking that it is open.
pub fn file_from_fd(fd: i32) -> io::Result<File> {
    // SAFETY: F_GETFD only reads the descriptor's flags; an invalid descriptor fails with
    // EBADF and changes nothing.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("file descriptor {fd} is not open"),
        ));
    }
    // SAFETY: the descriptor is open (checked above) and was passed to this process for its
    // exclusive use, so the File may own and close it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// COM1: vm-superio's 16550 with its interrupt on an irqfd.
pub struct SerialDevice {
    serial: Serial<IrqTrigger, NoEvents, ConsoleWriter>,
    error_count: u64,
}

impl SerialDevice {
    /// A UART that raises `irq` and writes to `out`.
    pub fn new(irq: EventFd, out: ConsoleWriter) -> Self {
        SerialDevice {
            serial: Serial::new(IrqTrigger(irq), out),
            error_count: 0,
        }
    }

    /// Hands over the buffered output and closes the console.
    pub fn close(&mut self) {
        self.serial.writer_mut().close();
        let dropped = self.serial.writer().dropped_bytes();
        if dropped > 0 || self.error_count > 0 {
            tracing::warn!(
                dropped,
                errors = self.error_count,
                "console output was lost"
            );
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < UART_PORTS {
            data[0] = self.serial.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1
            && offset < UART_PORTS
            && self.serial.write(offset as u8, data[0]).is_err()
        {
            self.error_count += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_full_channel_drops_without_blocking() {
        let (tx, rx) = mpsc::sync_channel(1);
        let mut writer = ConsoleWriter {
            tx: Some(tx),
            pending: Vec::new(),
            dropped_bytes: Arc::new(AtomicU64::new(0)),
        };
        writer.write_all(b"first\nsecond\n").unwrap();
        assert_eq!(writer.dropped_bytes(), 7, "the second line did not fit");
        assert_eq!(rx.recv().unwrap(), b"first\n");
    }

    #[test]
    fn serial_writes_reach_the_file() {
        let path = std::env::temp_dir().join(format!("isobench-console-{}", std::process::id()));
        let (writer, drain) = open_console(&Destination::File(path.clone())).unwrap();
        let mut serial = SerialDevice::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), writer);
        for byte in b"hello\n" {
            serial.write(0, &[*byte]);
        }
        serial.write(0, b"xy"); // a two-byte access is ignored
        serial.close();
        drain.unwrap().join();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello\n");
        std::fs::remove_file(&path).unwrap();
    }
}
