//! Boots the emulated host in QEMU and supervises it until it powers off or times out.
//!
//! ```text
//!   this process                         QEMU (TCG, -cpu max, -nic none)
//!   ────────────                         ───────────────────────────────
//!   write initramfs (base + run) ──────► -kernel vmlinuz -initrd initramfs.cpio
//!   poll status file every 20 ms ◄────── virtserialport isobench.status (records)
//!                                ◄────── virtserialport isobench.stdout / isobench.stderr
//!                                ◄────── ttyS0 console (kernel log, init messages)
//!   QEMU exits ◄──────────────────────── init: `reboot -f` with -no-reboot
//! ```

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::monitor;
use super::status::{self, StatusEvent};
use super::{
    initramfs, io_error, EmulatedError, EmulatedHost, EmulatedOutput, EmulatedRun, EmulationTimings,
};

/// The QEMU system emulator, from Debian's `qemu-system-x86`.
const QEMU: &str = "qemu-system-x86_64";
/// Command line of the outer kernel.
///
/// - `panic=-1` turns a failing init or a kernel panic into a reboot, which `-no-reboot` turns
///   into QEMU's exit.
/// - `softlockup_panic=1` makes a CPU that stays in the kernel for 20 s (twice the default
///   `watchdog_thresh` of 10 s) panic, so a vCPU thread wedged inside the nested `KVM_RUN`
///   ends the run at once instead of at its timeout.
/// - `kvm_amd.vgif=0` (passed to insmod by the init script) keeps KVM from using virtual GIF,
///   which QEMU 7.2's TCG offers besides nested paging, so KVM intercepts STGI and CLGI
///   itself. NOTE: with virtual GIF on, one run of `tests/emulated_boot.rs` (single-threaded
///   TCG) saw an inner guest panic in its page-fault entry, and with it off four runs saw no
///   guest fault. That it caused the panic is a likely guess, not a proven cause.
/// - `hung_task_panic=1` makes a task that stays blocked for 120 s (the default
///   `hung_task_timeout_secs`) panic the kernel. With QEMU 10.0, one emulated compare run
///   stalled with one outer processor taking no interrupts and the tasks bound to it blocked.
///   The heartbeat's task on every processor catches such a stall too, and this stays as a
///   second guard.
const OUTER_CMDLINE: &str =
    "console=ttyS0 panic=-1 softlockup_panic=1 hung_task_panic=1 kvm_amd.vgif=0 quiet";
/// Console lines of the outer kernel that report a fault of its own.
const KERNEL_FAULT_MARKERS: [&str; 6] = [
    "soft lockup",
    "blocked for more than",
    "rcu_sched self-detected stall",
    "Kernel panic",
    "BUG:",
    "Oops",
];
/// Interval of polling QEMU and the status file.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Time without a new status record after which the emulated host counts as frozen. The init
/// script sends a heartbeat record every 5 s of outer uptime, and QEMU's TCG clock follows the
/// host's wall clock, so only a host whose timers stopped firing stays silent this long.
const HEARTBEAT_SILENCE: Duration = Duration::from_secs(60);
/// Time to wait for a heartbeat after sending a frozen host an NMI.
const NMI_GRACE: Duration = Duration::from_secs(20);
/// File name of QEMU's human monitor socket in the scratch folder.
const MONITOR_SOCKET: &str = "monitor.sock";
/// Longest path of a Unix socket (`sun_path` of `sockaddr_un`, terminating NUL included).
const MAX_SOCKET_PATH_BYTES: usize = 108;
/// Memory beyond the run's own for the outer kernel.
const OUTER_KERNEL_MIB: u64 = 256;

/// Oldest QEMU release accepted for the emulated host, as (major, minor).
///
/// NOTE: on an idle 2-core host, Debian 12's QEMU 7.2 stalled the emulated host in most 2-vCPU
/// guest boots, with interrupts pending in the outer local APIC but never delivered. There
/// `tests/emulated_boot.rs` failed 2 of 2 runs, and with 10.0.2 from bookworm-backports it
/// passed 2 of 2. Releases between were not tried.
const QEMU_MIN_VERSION: (u32, u32) = (10, 0);

/// Checks that QEMU is installed and not older than [`QEMU_MIN_VERSION`].
pub(super) fn check_installed() -> Result<(), EmulatedError> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(QEMU).is_file()));
    if !found {
        return Err(EmulatedError::ToolMissing {
            tool: QEMU.to_owned(),
            package: "qemu-system-x86",
        });
    }
    let output = Command::new(QEMU)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| EmulatedError::ToolFailed {
            command: format!("{QEMU} --version"),
            detail: source.to_string(),
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = parse_version(&text).ok_or_else(|| EmulatedError::ToolFailed {
        command: format!("{QEMU} --version"),
        detail: format!(
            "{}, with no version in its output: {:?}",
            output.status,
            text.lines().next().unwrap_or("")
        ),
    })?;
    if version < QEMU_MIN_VERSION {
        return Err(EmulatedError::QemuTooOld {
            tool: QEMU.to_owned(),
            found: format!("{}.{}", version.0, version.1),
            required: format!("{}.{}", QEMU_MIN_VERSION.0, QEMU_MIN_VERSION.1),
        });
    }
    Ok(())
}

/// Returns (major, minor) from the first line of `qemu-system-x86_64 --version`, such as
/// "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)".
fn parse_version(output: &str) -> Option<(u32, u32)> {
    let rest = output.lines().next()?.split("version ").nth(1)?;
    let mut numbers = rest.split(|c: char| !c.is_ascii_digit());
    let major = numbers.next()?.parse().ok()?;
    let minor = numbers.next()?.parse().ok()?;
    Some((major, minor))
}

/// A running QEMU, killed and reaped when dropped.
struct QemuProcess {
    child: Child,
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        // Killing an exited child fails harmlessly; `wait` then reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Output files of one run, inside the run's scratch folder.
struct RunFiles<'a> {
    scratch: &'a Path,
}

impl RunFiles<'_> {
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.scratch.join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        fs::read(self.path(name)).unwrap_or_default()
    }
}

pub(super) fn run(host: &EmulatedHost, run: &EmulatedRun) -> Result<EmulatedOutput, EmulatedError> {
    initramfs::validate(run)?;
    let scratch = tempfile::Builder::new()
        .prefix("isobench-emulated-")
        .tempdir()
        .map_err(io_error("cannot create a folder in", &std::env::temp_dir()))?;
    let files = RunFiles {
        scratch: scratch.path(),
    };
    let initrd = files.path("initramfs.cpio");
    let initrd_bytes = initramfs::write(&host.base_initramfs, run, &initrd)?;

    // The archive stays in memory until the kernel has unpacked it into its root filesystem,
    // so both copies need room.
    let memory_mib =
        u64::from(run.memory_mib) + 2 * initrd_bytes.div_ceil(1 << 20) + OUTER_KERNEL_MIB;
    let mut command = qemu_command(host, run, &files, &initrd, memory_mib);
    let qemu_stderr = fs::File::create(files.path("qemu.stderr"))
        .map_err(io_error("cannot create", &files.path("qemu.stderr")))?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(qemu_stderr);
    // SAFETY: the closure runs in the forked child before exec and calls only prctl, which is
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(set_parent_death_signal);
    }

    let start = Instant::now();
    let child = command.spawn().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => EmulatedError::ToolMissing {
            tool: QEMU.to_owned(),
            package: "qemu-system-x86",
        },
        _ => EmulatedError::Io {
            action: "cannot start",
            path: QEMU.into(),
            source,
        },
    })?;
    let mut qemu = QemuProcess { child };
    tracing::info!(
        pid = qemu.child.id(),
        vcpus = run.vcpus,
        memory_mib,
        "started the emulated host"
    );

    let mut timings = EmulationTimings::default();
    let mut stamped = 0;
    let mut heartbeat = HeartbeatWatch::new(start);
    let exit = loop {
        let status_text = String::from_utf8_lossy(&files.read("status")).into_owned();
        heartbeat.observe(status_text.len());
        let events = status::parse_status(&status_text);
        for event in &events[stamped..] {
            let slot = match event {
                StatusEvent::KvmReady => &mut timings.kvm_ready,
                StatusEvent::CommandStarted => &mut timings.command_started,
                StatusEvent::Exit(_) => &mut timings.command_exited,
                StatusEvent::Error(_) => continue,
            };
            *slot = Some(start.elapsed());
        }
        stamped = events.len();
        match qemu.child.try_wait() {
            Ok(Some(exit)) => break exit,
            Ok(None) => {}
            Err(source) => {
                return Err(EmulatedError::Io {
                    action: "cannot wait for",
                    path: QEMU.into(),
                    source,
                })
            }
        }
        if run.is_cancelled() {
            drop(qemu);
            let partial = collect_output(&files, timings, None);
            tracing::info!(elapsed = ?start.elapsed(), "stopped the emulated host on request");
            return Err(EmulatedError::Cancelled {
                elapsed: start.elapsed(),
                partial: Box::new(partial),
            });
        }
        match heartbeat.check(&files, run.vcpus, qemu.child.id()) {
            Heartbeat::Alive => {}
            Heartbeat::Frozen { monitor_record } => {
                drop(qemu);
                let events = collect_events(&files);
                let partial = collect_output(&files, timings, None);
                let status_text = String::from_utf8_lossy(&files.read("status")).into_owned();
                let last_uptime = status::last_uptime(&status_text)
                    .map_or_else(|| "none".to_owned(), |uptime| format!("{uptime} s"));
                tracing::error!(
                    silence = ?HEARTBEAT_SILENCE,
                    console_tail = %tail(&partial.console),
                    "the emulated host froze and did not resume after an NMI"
                );
                return Err(EmulatedError::Frozen {
                    silence: HEARTBEAT_SILENCE,
                    last_record: status::describe(events.last()),
                    last_uptime,
                    kernel_fault: kernel_fault(&partial.console),
                    monitor_record,
                    partial: Box::new(partial),
                });
            }
        }
        if start.elapsed() > run.timeout {
            drop(qemu);
            let events = collect_events(&files);
            let partial = collect_output(&files, timings, None);
            tracing::error!(timeout = ?run.timeout, console_tail = %tail(&partial.console), "the emulated run timed out");
            return Err(EmulatedError::TimedOut {
                timeout: run.timeout,
                last_record: status::describe(events.last()),
                kernel_fault: kernel_fault(&partial.console),
                partial: Box::new(partial),
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    timings.qemu_exited = Some(start.elapsed());
    drop(qemu);

    let events = collect_events(&files);
    let exit_status = events.iter().find_map(|event| match event {
        StatusEvent::Exit(code) => Some(*code),
        _ => None,
    });
    let output = collect_output(&files, timings, exit_status);
    tracing::info!(
        ?timings,
        ?exit_status,
        "the emulated host stopped (emulation timings)"
    );
    if let Some(detail) = events.iter().find_map(|event| match event {
        StatusEvent::Error(detail) => Some(detail),
        _ => None,
    }) {
        tracing::error!(console_tail = %tail(&output.console), "the emulated host's init failed");
        return Err(status::init_error(detail));
    }
    if exit_status.is_none() {
        let qemu_stderr = String::from_utf8_lossy(&files.read("qemu.stderr")).into_owned();
        let last_line = qemu_stderr
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty());
        tracing::error!(console_tail = %tail(&output.console), "the emulated host stopped early");
        return Err(EmulatedError::NoExitStatus {
            qemu_status: format!(
                "{exit}{}",
                last_line
                    .map(|line| format!(", {line}"))
                    .unwrap_or_default()
            ),
            last_record: status::describe(events.last()),
            kernel_fault: kernel_fault(&output.console),
            partial: Box::new(output),
        });
    }
    Ok(output)
}

/// Result of [`HeartbeatWatch::check`].
enum Heartbeat {
    /// Status records arrive, or the host is being given time to resume after an NMI.
    Alive,
    /// No record arrived for [`HEARTBEAT_SILENCE`], nor within [`NMI_GRACE`] after an NMI.
    Frozen {
        /// State shown by QEMU's monitor when the silence was noticed.
        monitor_record: String,
    },
}

/// Watches the status file for the init script's heartbeat records.
struct HeartbeatWatch {
    status_bytes: usize,
    last_growth: Instant,
    /// When the NMI was sent, and the monitor's record from just before.
    nmi: Option<(Instant, String)>,
}

impl HeartbeatWatch {
    fn new(start: Instant) -> Self {
        HeartbeatWatch {
            status_bytes: 0,
            last_growth: start,
            nmi: None,
        }
    }

    fn observe(&mut self, status_bytes: usize) {
        if status_bytes > self.status_bytes {
            self.status_bytes = status_bytes;
            self.last_growth = Instant::now();
        }
    }

    /// Records the host's state and sends it an NMI once the status file has been silent for
    /// [`HEARTBEAT_SILENCE`], then declares it frozen when nothing arrives within
    /// [`NMI_GRACE`].
    fn check(&mut self, files: &RunFiles, vcpus: u8, qemu_pid: u32) -> Heartbeat {
        let Some((sent, _)) = &self.nmi else {
            if self.last_growth.elapsed() > HEARTBEAT_SILENCE {
                let mut record = thread_states(qemu_pid);
                record.push_str(&monitor::record_frozen_state(
                    &files.path(MONITOR_SOCKET),
                    vcpus,
                ));
                tracing::warn!(
                    silence = ?self.last_growth.elapsed(),
                    monitor_record = %record,
                    "the emulated host sent no status record in time: sent it an NMI"
                );
                self.nmi = Some((Instant::now(), record));
            }
            return Heartbeat::Alive;
        };
        if self.last_growth > *sent {
            tracing::warn!(after = ?sent.elapsed(), "the emulated host resumed after an NMI");
            self.nmi = None;
            return Heartbeat::Alive;
        }
        if sent.elapsed() <= NMI_GRACE {
            return Heartbeat::Alive;
        }
        let monitor_record = self
            .nmi
            .take()
            .map(|(_, record)| record)
            .unwrap_or_default();
        Heartbeat::Frozen { monitor_record }
    }
}

/// Returns one line per thread of process `pid`: its id, name, scheduler state, the kernel
/// function it waits in and its CPU time in clock ticks, from `/proc/PID/task`.
fn thread_states(pid: u32) -> String {
    let mut lines = String::from("QEMU threads (tid name state wchan utime stime):\n");
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return lines;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let stat = fs::read_to_string(path.join("stat")).unwrap_or_default();
        let wchan = fs::read_to_string(path.join("wchan")).unwrap_or_default();
        // The name is in brackets and may contain spaces, but the fields after it are plain.
        let (name, rest) = match (stat.find('('), stat.rfind(')')) {
            (Some(open), Some(close)) if open < close => {
                (&stat[open + 1..close], &stat[close + 1..])
            }
            _ => ("?", ""),
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |index: usize| fields.get(index).copied().unwrap_or("?");
        lines.push_str(&format!(
            "  {} {name} {} {wchan} {} {}\n",
            task.file_name().to_string_lossy(),
            field(0),
            field(11),
            field(12)
        ));
    }
    lines
}

/// Makes the kernel kill QEMU with SIGKILL when the thread that spawned it dies, so that QEMU
/// does not outlive a caller killed without running the guard's Drop (for example by SIGKILL).
fn set_parent_death_signal() -> std::io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and no pointers.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn qemu_command(
    host: &EmulatedHost,
    run: &EmulatedRun,
    files: &RunFiles,
    initrd: &Path,
    memory_mib: u64,
) -> Command {
    // Experiment knobs for the outer machine: a `-cpu` model and words appended to the outer
    // kernel's command line (which also carries `kvm_amd.option=value` module options).
    let cpu = std::env::var("ISOBENCH_EMULATED_CPU").unwrap_or_else(|_| "max".to_owned());
    let cmdline = match std::env::var("ISOBENCH_EMULATED_APPEND") {
        Ok(extra) => format!("{OUTER_CMDLINE} {extra}"),
        Err(_) => OUTER_CMDLINE.to_owned(),
    };
    let mut command = Command::new(QEMU);
    command
        .args(["-accel", "tcg", "-cpu", &cpu, "-machine", "pc"])
        .args([
            "-m",
            &format!("{memory_mib}M"),
            "-smp",
            &run.vcpus.to_string(),
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-nic", "none"]);
    // The human monitor lets a frozen host's state be recorded before it is killed.
    let socket = files.path(MONITOR_SOCKET);
    if socket.as_os_str().len() < MAX_SOCKET_PATH_BYTES {
        command.arg("-monitor").arg(format!(
            "unix:{},server=on,wait=off",
            escape_option(&socket)
        ));
    } else {
        tracing::warn!(path = %socket.display(), "socket path too long: QEMU runs without a monitor");
        command.args(["-monitor", "none"]);
    }
    command
        .arg("-kernel")
        .arg(&host.kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &cmdline]);
    command
        .arg("-chardev")
        .arg(format!(
            "file,id=console,path={}",
            escape_option(&files.path("console"))
        ))
        .args(["-serial", "chardev:console"]);
    command.args(["-device", "virtio-serial-pci,id=ports"]);
    for port in ["status", "stdout", "stderr"] {
        command
            .arg("-chardev")
            .arg(format!(
                "file,id={port},path={}",
                escape_option(&files.path(port))
            ))
            .arg("-device")
            .arg(format!(
                "virtserialport,bus=ports.0,chardev={port},name=isobench.{port}"
            ));
    }
    for (index, disk) in run.disks.iter().enumerate() {
        let read_only = if disk.read_only { "on" } else { "off" };
        command
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=disk{index},readonly={read_only}",
                escape_option(&disk.source)
            ))
            .arg("-device")
            .arg(format!(
                "virtio-blk-pci,drive=disk{index},serial={}",
                initramfs::disk_serial(index)
            ));
    }
    command
}

/// Escapes a path for a QEMU option list, in which a comma is written twice.
fn escape_option(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

fn collect_events(files: &RunFiles) -> Vec<StatusEvent> {
    let mut events = status::parse_status(&String::from_utf8_lossy(&files.read("status")));
    events.extend(status::parse_console(&files.read("console")));
    events
}

fn collect_output(
    files: &RunFiles,
    timings: EmulationTimings,
    exit_status: Option<i32>,
) -> EmulatedOutput {
    EmulatedOutput {
        exit_status: exit_status.unwrap_or(-1),
        stdout: files.read("stdout"),
        stderr: files.read("stderr"),
        console: files.read("console"),
        emulation_timings: Some(timings),
    }
}

/// Returns the first console line that reports a fault of the outer kernel, or "none".
fn kernel_fault(console: &[u8]) -> String {
    String::from_utf8_lossy(console)
        .lines()
        .find(|line| {
            KERNEL_FAULT_MARKERS
                .iter()
                .any(|marker| line.contains(marker))
        })
        .map(|line| line.trim().to_owned())
        .unwrap_or_else(|| "none".to_owned())
}

/// Returns the last lines of `console` for a log message.
fn tail(console: &[u8]) -> String {
    let text = String::from_utf8_lossy(console);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_fault_finds_soft_lockup() {
        let console = b"[ 1.0] kvm: Nested Paging enabled\n\
            [ 60.2] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [isobench-vmm:93]\n\
            [ 60.3] Kernel panic - not syncing: softlockup: hung tasks\n";
        assert_eq!(
            kernel_fault(console),
            "[ 60.2] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [isobench-vmm:93]"
        );
    }

    #[test]
    fn kernel_fault_none_on_clean_console() {
        assert_eq!(kernel_fault(b"[ 1.0] kvm: Nested Paging enabled\n"), "none");
    }

    #[test]
    fn version_parsed_from_debian_builds() {
        let backports = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n\
            Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers\n";
        assert_eq!(parse_version(backports), Some((10, 0)));
        let bookworm = "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18+b2)\n";
        assert_eq!(parse_version(bookworm), Some((7, 2)));
        assert!(parse_version(bookworm).unwrap() < QEMU_MIN_VERSION);
    }

    #[test]
    fn version_missing_gives_none() {
        assert_eq!(parse_version("qemu-system-x86_64: unknown option\n"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn option_commas_doubled() {
        assert_eq!(escape_option(Path::new("/tmp/a,b")), "/tmp/a,,b");
    }
}
