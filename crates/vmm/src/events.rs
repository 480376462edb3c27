//! Machine-readable events: one JSON object per line, each stamped with the host's
//! `CLOCK_MONOTONIC` in microseconds (`monotonic_us`), the clock behind Rust's
//! `std::time::Instant` on Linux, so a parent process can place them on its own timeline.
//!
//! ```text
//! {"event":"vmm_started","monotonic_us":812345678,"pid":4242,"clock":"CLOCK_MONOTONIC"}
//! {"event":"vcpus_running","monotonic_us":812349001,"vcpus":2,"guest_ram":[...]}
//! {"event":"guest_marker","monotonic_us":813001234,"code":1,"name":"init_started"}
//! {"event":"guest_shutdown","monotonic_us":839000000,"reason":"reset"}
//! {"event":"vmm_exit","monotonic_us":839000300,"reason":"guest reset","status":0}
//! ```

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Name of the clock every `monotonic_us` is read from.
pub const CLOCK_NAME: &str = "CLOCK_MONOTONIC";

/// Reads `CLOCK_MONOTONIC` in microseconds.
pub fn monotonic_us() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec and CLOCK_MONOTONIC is always available on
    // Linux, so the call only writes `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// One host mapping that backs guest RAM, for telling guest RAM from VMM overhead in
/// `/proc/PID/smaps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamMapping {
    /// Host virtual address of the mapping's first byte.
    pub host_addr: u64,
    /// Length in bytes.
    pub size: u64,
}

/// Why the guest stopped, as reported in `guest_shutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownReason {
    /// The guest pulsed the reset line through the i8042 controller (a Linux `reboot`).
    Reset,
    /// KVM reported a system shutdown event.
    Poweroff,
    /// The guest triple-faulted.
    TripleFault,
}

/// Names of the boot-marker codes the guest entrypoint writes to the marker port.
pub fn marker_name(code: u8) -> &'static str {
    match code {
        1 => "init_started",
        2 => "mounts_done",
        3 => "exec_kernel",
        _ => "unknown",
    }
}

/// One event line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The VMM's `main` started.
    VmmStarted {
        /// Time of the event.
        monotonic_us: u64,
        /// The VMM's process id.
        pid: u32,
        /// Clock of every `monotonic_us` ([`CLOCK_NAME`]).
        clock: String,
    },
    /// Setup is complete and the boot vCPU is about to enter `KVM_RUN` for the first time.
    VcpusRunning {
        /// Time of the event.
        monotonic_us: u64,
        /// Number of vCPU threads started.
        vcpus: u32,
        /// Host mappings of guest RAM.
        guest_ram: Vec<RamMapping>,
    },
    /// The guest wrote a boot-marker code to the marker port, stamped at the VM exit.
    GuestMarker {
        /// Time of the VM exit.
        monotonic_us: u64,
        /// The byte written.
        code: u8,
        /// Its name ([`marker_name`]).
        name: String,
    },
    /// The guest reset, powered off or triple-faulted.
    GuestShutdown {
        /// Time of the VM exit.
        monotonic_us: u64,
        /// What the guest did.
        reason: ShutdownReason,
    },
    /// The VMM is about to exit; the last event.
    VmmExit {
        /// Time of the event.
        monotonic_us: u64,
        /// How the VM ended, in words.
        reason: String,
        /// The process exit status that follows.
        status: i32,
    },
}

impl Event {
    /// The event's `monotonic_us`.
    pub fn monotonic_us(&self) -> u64 {
        match self {
            Event::VmmStarted { monotonic_us, .. }
            | Event::VcpusRunning { monotonic_us, .. }
            | Event::GuestMarker { monotonic_us, .. }
            | Event::GuestShutdown { monotonic_us, .. }
            | Event::VmmExit { monotonic_us, .. } => *monotonic_us,
        }
    }

    /// The event's name, or for a guest marker the marker's name.
    pub fn name(&self) -> &str {
        match self {
            Event::VmmStarted { .. } => "vmm_started",
            Event::VcpusRunning { .. } => "vcpus_running",
            Event::GuestMarker { name, .. } => name,
            Event::GuestShutdown { .. } => "guest_shutdown",
            Event::VmmExit { .. } => "vmm_exit",
        }
    }
}

/// Process exit statuses of `isobench-vmm`.
pub mod exit_status {
    /// The guest reset or powered off.
    pub const GUEST_SHUTDOWN: i32 = 0;
    /// Setup failed: a bad input or a missing host facility (the one-line error says which).
    pub const SETUP_FAILED: i32 = 1;
    /// Invalid command-line usage.
    pub const USAGE: i32 = 2;
    /// A vCPU failed: KVM internal error, failed entry or an exit the VMM cannot handle.
    pub const VCPU_FAILED: i32 = 3;
    /// The guest triple-faulted (a crash early in boot, for instance).
    pub const TRIPLE_FAULT: i32 = 4;
    /// The event loop failed.
    pub const EVENT_LOOP_FAILED: i32 = 5;
    /// Base of "stopped by signal N": the status is 128 + N, as shells report it.
    pub const SIGNAL_BASE: i32 = 128;
}

/// How a running VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest stopped itself.
    Guest(ShutdownReason),
    /// A vCPU failed; the text says how.
    VcpuFailed(String),
    /// The event loop failed; the text says how.
    EventLoopFailed(String),
    /// The VMM received this signal.
    Signal(i32),
}

impl ExitReason {
    /// The process exit status for this reason ([`exit_status`]).
    pub fn status(&self) -> i32 {
        match self {
            ExitReason::Guest(ShutdownReason::Reset | ShutdownReason::Poweroff) => {
                exit_status::GUEST_SHUTDOWN
            }
            ExitReason::Guest(ShutdownReason::TripleFault) => exit_status::TRIPLE_FAULT,
            ExitReason::VcpuFailed(_) => exit_status::VCPU_FAILED,
            ExitReason::EventLoopFailed(_) => exit_status::EVENT_LOOP_FAILED,
            ExitReason::Signal(signal) => exit_status::SIGNAL_BASE + signal,
        }
    }

    /// The reason in words, for the `vmm_exit` event and logs.
    pub fn describe(&self) -> String {
        match self {
            ExitReason::Guest(ShutdownReason::Reset) => "guest reset".to_string(),
            ExitReason::Guest(ShutdownReason::Poweroff) => "guest powered off".to_string(),
            ExitReason::Guest(ShutdownReason::TripleFault) => "guest triple fault".to_string(),
            ExitReason::VcpuFailed(text) => format!("vCPU failed: {text}"),
            ExitReason::EventLoopFailed(text) => format!("event loop failed: {text}"),
            ExitReason::Signal(signal) => format!("stopped by signal {signal}"),
        }
    }
}

/// Writes events as JSON lines; shared by the vCPU threads and the event loop. A sink whose
/// reader went away is closed after the first failed write, and the VM keeps running.
pub struct EventSink {
    out: Mutex<Option<Box<dyn Write + Send>>>,
}

impl EventSink {
    /// A sink writing to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        EventSink {
            out: Mutex::new(Some(out)),
        }
    }

    /// A sink that discards every event.
    pub fn discard() -> Self {
        EventSink {
            out: Mutex::new(None),
        }
    }

    /// A sink writing to `file`.
    pub fn to_file(file: File) -> Self {
        Self::new(Box::new(file))
    }

    /// Writes `event` as one line.
    pub fn emit(&self, event: &Event) {
        let mut line = match serde_json::to_vec(event) {
            Ok(line) => line,
            Err(error) => {
                tracing::error!(%error, "cannot serialize an event");
                return;
            }
        };
        line.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(writer) = out.as_mut() {
            if let Err(error) = writer.write_all(&line).and_then(|()| writer.flush()) {
                tracing::warn!(%error, "event output failed; no further events are written");
                *out = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trips_through_json() {
        let event = Event::GuestMarker {
            monotonic_us: 17,
            code: 1,
            name: marker_name(1).to_string(),
        };
        let line = serde_json::to_string(&event).unwrap();
        assert_eq!(
            line,
            r#"{"event":"guest_marker","monotonic_us":17,"code":1,"name":"init_started"}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);
    }

    #[test]
    fn exit_status_by_reason() {
        assert_eq!(ExitReason::Guest(ShutdownReason::Reset).status(), 0);
        assert_eq!(ExitReason::Signal(libc::SIGTERM).status(), 143);
        assert_eq!(ExitReason::VcpuFailed(String::new()).status(), 3);
    }

    #[test]
    fn monotonic_clock_advances() {
        let first = monotonic_us();
        let second = monotonic_us();
        assert!(second >= first);
    }
}
