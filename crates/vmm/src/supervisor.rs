//! The API a parent process uses to run `isobench-vmm` as a child, as Firecracker runs as its
//! own process: build its command line, read its events, place their timestamps on the
//! parent's `Instant` timeline and measure its memory overhead.
//!
//! ```no_run
//! use isobench_vmm::supervisor::{locate_binary, parse_event, VmmCommand};
//! let mut command = VmmCommand::new(locate_binary().unwrap(), "vmlinux".into());
//! command.rootfs = Some("rootfs.ext4".into());
//! let mut child = command.command().spawn().unwrap();
//! // Read child.stdout line by line and pass each line to parse_event.
//! ```

use std::ffi::OsString;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::config::Destination;
use crate::events::{exit_status, monotonic_us, Event, RamMapping};

/// Name of the VMM binary.
pub const BINARY_NAME: &str = "isobench-vmm";
/// Environment variable that overrides where the VMM binary is looked up.
pub const BINARY_ENV: &str = "ISOBENCH_VMM";

/// Errors of the supervisor API.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The VMM binary was not found.
    #[error("{BINARY_NAME} not found next to this program, in ${BINARY_ENV} or in PATH: build it with `cargo build --release -p isobench-vmm`")]
    BinaryNotFound,
    /// An event line is not valid JSON of a known event.
    #[error("invalid event line {line:?}: {detail}")]
    InvalidEvent {
        /// The line.
        line: String,
        /// The parser's message.
        detail: String,
    },
    /// Reading `/proc` failed.
    #[error("cannot read {path}")]
    Proc {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The network link of a VMM child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapLink {
    /// TAP device name.
    pub name: String,
    /// Guest address.
    pub guest_ip: Ipv4Addr,
    /// Host address on the TAP device.
    pub host_ip: Ipv4Addr,
    /// Netmask.
    pub netmask: Ipv4Addr,
}

/// The command line of one `isobench-vmm` child; events go to its standard output.
#[derive(Debug, Clone)]
pub struct VmmCommand {
    /// Path of the VMM binary.
    pub binary: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Root disk.
    pub rootfs: Option<PathBuf>,
    /// Attach the root disk writable.
    pub rootfs_writable: bool,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Fault guest RAM in at start.
    pub prefault: bool,
    /// Back guest RAM with huge pages.
    pub hugepages: bool,
    /// Network link.
    pub tap: Option<TapLink>,
    /// Extra kernel command-line arguments.
    pub extra_args: Vec<String>,
    /// Serial console destination.
    pub console: Destination,
    /// Log level of the VMM's standard error.
    pub log_level: String,
}

impl VmmCommand {
    /// A command for `kernel` with the VMM's defaults: 1 vCPU, 256 MiB, no disk, no network,
    /// console discarded.
    pub fn new(binary: PathBuf, kernel: PathBuf) -> Self {
        VmmCommand {
            binary,
            kernel,
            rootfs: None,
            rootfs_writable: false,
            vcpus: 1,
            memory_mib: 256,
            prefault: false,
            hugepages: false,
            tap: None,
            extra_args: Vec::new(),
            console: Destination::None,
            log_level: "warn".to_string(),
        }
    }

    /// The arguments after the binary name.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--kernel".into(), self.kernel.clone().into()];
        if let Some(rootfs) = &self.rootfs {
            args.push("--rootfs".into());
            args.push(rootfs.clone().into());
        }
        if self.rootfs_writable {
            args.push("--rootfs-writable".into());
        }
        args.push("--vcpus".into());
        args.push(self.vcpus.to_string().into());
        args.push("--memory".into());
        args.push(self.memory_mib.to_string().into());
        if self.prefault {
            args.push("--prefault".into());
        }
        if self.hugepages {
            args.push("--hugepages".into());
        }
        if let Some(tap) = &self.tap {
            for (flag, value) in [
                ("--tap", tap.name.clone()),
                ("--guest-ip", tap.guest_ip.to_string()),
                ("--host-ip", tap.host_ip.to_string()),
                ("--netmask", tap.netmask.to_string()),
            ] {
                args.push(flag.into());
                args.push(value.into());
            }
        }
        for extra in &self.extra_args {
            args.push("--extra-args".into());
            args.push(extra.into());
        }
        args.push("--console".into());
        args.push(self.console.to_string().into());
        args.push("--events".into());
        args.push("stdout".into());
        args.push("--log-level".into());
        args.push(self.log_level.clone().into());
        args
    }

    /// A `Command` ready to spawn: events on a piped standard output, standard error piped
    /// for the one-line error of a failed setup, standard input closed.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }
}

/// Finds the VMM binary: `$ISOBENCH_VMM`, then next to the running program (and its parent
/// folder, for test binaries under `target/*/deps`), then `PATH`.
pub fn locate_binary() -> Result<PathBuf, SupervisorError> {
    if let Some(path) = std::env::var_os(BINARY_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(SupervisorError::BinaryNotFound)
        };
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join(BINARY_NAME);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(BINARY_NAME))
        .find(|candidate| candidate.is_file())
        .ok_or(SupervisorError::BinaryNotFound)
}

/// Parses one event line.
pub fn parse_event(line: &str) -> Result<Event, SupervisorError> {
    serde_json::from_str(line.trim_end()).map_err(|error| SupervisorError::InvalidEvent {
        line: line.to_string(),
        detail: error.to_string(),
    })
}

/// A pair of readings of `Instant` and `CLOCK_MONOTONIC` taken back to back, to convert
/// event timestamps into `Instant`s. Both read the same clock on Linux, so the conversion
/// is exact up to the microsecond rounding and the gap between the two readings.
#[derive(Debug, Clone, Copy)]
pub struct ClockMapping {
    instant: Instant,
    monotonic_us: u64,
}

impl ClockMapping {
    /// Takes the two readings now.
    pub fn now() -> Self {
        let instant = Instant::now();
        ClockMapping {
            instant,
            monotonic_us: monotonic_us(),
        }
    }

    /// The `Instant` of an event's `monotonic_us`.
    pub fn instant_of(&self, monotonic_us: u64) -> Instant {
        if monotonic_us >= self.monotonic_us {
            self.instant + Duration::from_micros(monotonic_us - self.monotonic_us)
        } else {
            self.instant
                .checked_sub(Duration::from_micros(self.monotonic_us - monotonic_us))
                .unwrap_or(self.instant)
        }
    }
}

/// Describes how the VMM process ended, by its exit status.
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        return format!("killed by signal {signal}");
    }
    let code = status.code().unwrap_or(-1);
    let meaning = match code {
        exit_status::GUEST_SHUTDOWN => "guest reset or powered off",
        exit_status::SETUP_FAILED => "setup failed",
        exit_status::USAGE => "invalid usage",
        exit_status::VCPU_FAILED => "vCPU failed",
        exit_status::TRIPLE_FAULT => "guest triple fault",
        exit_status::EVENT_LOOP_FAILED => "event loop failed",
        code if code > exit_status::SIGNAL_BASE => "stopped by signal",
        _ => "unknown",
    };
    format!("exit status {code} ({meaning})")
}

/// Sums the `Rss:` lines of `/proc/PID/smaps` for mappings that are, and are not, inside the
/// guest RAM mappings; returns (guest RAM, everything else) in bytes.
pub fn parse_smaps_rss(smaps: &str, guest_ram: &[RamMapping]) -> (u64, u64) {
    let mut in_guest = false;
    let mut guest_bytes = 0;
    let mut other_bytes = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else {
            continue;
        };
        if let Some((start, end)) = first.split_once('-').and_then(|(s, e)| {
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            ))
        }) {
            in_guest = guest_ram
                .iter()
                .any(|m| start >= m.host_addr && end <= m.host_addr + m.size);
        } else if first == "Rss:" {
            let kib: u64 = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            if in_guest {
                guest_bytes += kib * 1024;
            } else {
                other_bytes += kib * 1024;
            }
        }
    }
    (guest_bytes, other_bytes)
}

/// VMM overhead of process `pid`: its RSS minus the RSS of its guest RAM mappings
/// (Firecracker's definition).
pub fn vmm_overhead_bytes(pid: u32, guest_ram: &[RamMapping]) -> Result<u64, SupervisorError> {
    let path = format!("/proc/{pid}/smaps");
    let smaps =
        std::fs::read_to_string(&path).map_err(|source| SupervisorError::Proc { path, source })?;
    Ok(parse_smaps_rss(&smaps, guest_ram).1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_args_carry_every_setting() {
        let mut command = VmmCommand::new("isobench-vmm".into(), "vmlinux".into());
        command.rootfs = Some("rootfs.ext4".into());
        command.vcpus = 2;
        command.tap = Some(TapLink {
            name: "isb0".into(),
            guest_ip: Ipv4Addr::new(172, 30, 0, 2),
            host_ip: Ipv4Addr::new(172, 30, 0, 1),
            netmask: Ipv4Addr::new(255, 255, 255, 252),
        });
        command.extra_args = vec!["isobench.key=ab".into()];
        let args: Vec<String> = command
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.contains("--kernel vmlinux --rootfs rootfs.ext4"),
            "{joined}"
        );
        assert!(joined.contains("--vcpus 2"));
        assert!(joined.contains("--tap isb0 --guest-ip 172.30.0.2 --host-ip 172.30.0.1"));
        assert!(joined.contains("--extra-args isobench.key=ab"));
        assert!(joined.contains("--events stdout"));
    }

    #[test]
    fn clock_mapping_round_trips() {
        let mapping = ClockMapping::now();
        let later = monotonic_us() + 1_000;
        let at = mapping.instant_of(later);
        let delta = at.duration_since(mapping.instant);
        assert!(delta >= Duration::from_micros(1_000));
        assert!(mapping.instant_of(0) <= mapping.instant);
    }

    #[test]
    fn smaps_split_guest_ram_from_overhead() {
        let smaps = "\
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:               40960 kB
55d2c6300000-55d2c6400000 r-xp 00000000 08:01 1234  /usr/bin/isobench-vmm
Size:               1024 kB
Rss:                 900 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0  [stack]
Rss:                  24 kB
";
        let guest = [RamMapping {
            host_addr: 0x7f00_0000_0000,
            size: 0x1000_0000,
        }];
        assert_eq!(parse_smaps_rss(smaps, &guest), (40960 * 1024, 924 * 1024));
    }

    #[test]
    fn exit_descriptions() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(0)),
            "exit status 0 (guest reset or powered off)"
        );
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "killed by signal 9");
        assert_eq!(
            describe_exit(ExitStatus::from_raw(143 << 8)),
            "exit status 143 (stopped by signal)"
        );
    }
}
