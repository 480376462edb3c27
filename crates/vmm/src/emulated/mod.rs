//! Emulated hardware-KVM host: a QEMU TCG virtual machine with nested SVM in which the VMM runs
//! when the host's own KVM cannot boot a stock guest kernel in useful time.
//!
//! Some hosts offer `/dev/kvm` through a paravirtual module (`kvm_pvm`) on which a stock Linux
//! guest spends minutes in emulated instructions before reaching init. One level down,
//! `qemu-system-x86_64 -accel tcg -cpu max` gives its guest AMD SVM with nested paging, and
//! Debian's cloud kernel loads `kvm_amd` there. This module builds that outer machine from
//! Debian's packages and runs a shell command inside it:
//!
//! 1. [`EmulatedHost::prepare`] downloads the cloud kernel package with `apt-get download`
//!    (without installing it), keeps its `vmlinuz` and the modules for KVM, virtio and TUN in
//!    dependency order, and writes a base initramfs with `busybox` and the init script. The
//!    result is cached under a folder named by the hash of those inputs.
//! 2. [`EmulatedHost::run`] appends the files of one [`EmulatedRun`] (binaries with the shared
//!    libraries `ldd` lists) to that initramfs, attaches its disks as virtio-blk devices,
//!    boots QEMU without any network (`-nic none`) and waits for it to power off.
//! 3. Inside, the init script loads the modules with the `module.option=value` settings of the
//!    outer kernel's command line, checks `/dev/kvm`, runs the command with its stdout and
//!    stderr on two virtio-serial ports and reports on a third one, the status port. The outer
//!    machine's console (kernel log and init messages) goes to a fourth file.
//! 4. While the command runs, the init script sends a heartbeat record every 5 s, each after a
//!    task has run on every outer processor in turn. When no record arrives for 60 s, the host
//!    side records the processors and interrupt controllers through QEMU's human monitor,
//!    sends an NMI, and kills QEMU with [`EmulatedError::Frozen`] unless a record arrives
//!    within 20 s more.
//!
//! Two environment variables change the outer machine for experiments: `ISOBENCH_EMULATED_CPU`
//! replaces QEMU's `-cpu max`, and the words of `ISOBENCH_EMULATED_APPEND` are appended to the
//! outer kernel's command line, where `kvm_amd.option=value` also sets a module option.
//!
//! Every duration measured here is an emulation timing: the outer machine runs under TCG, many
//! times slower than hardware, so these figures must never be mixed with real measurements.
//!
//! [`KvmHost`] chooses between running a command directly, on a host whose processor has
//! hardware virtualization, and running it in the emulated host.

mod cache;
mod cpio;
mod direct;
mod initramfs;
mod monitor;
mod program;
mod qemu;
mod status;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use cache::default_cache_dir;
pub use program::ProgramArg;

/// Checks that QEMU is installed and recent enough to run the emulated host.
pub fn check_qemu() -> Result<(), EmulatedError> {
    qemu::check_installed()
}

/// The Debian package whose dependency names the versioned cloud kernel package.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Errors of preparing and running the emulated host.
#[derive(Debug, thiserror::Error)]
pub enum EmulatedError {
    /// A host tool the emulated host needs is not installed.
    #[error("`{tool}` not found on this host: run scripts/setup-host (it installs {package})")]
    ToolMissing {
        /// The program that was looked up in `PATH`.
        tool: String,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// The installed QEMU is older than the emulated host needs.
    #[error(
        "{tool} {found} is too old for the emulated host, which needs QEMU {required} or newer \
         (QEMU 7.2's TCG stalled nested-SVM guests with 2 vCPUs): run scripts/setup-host, which \
         installs qemu-system-x86 from bookworm-backports"
    )]
    QemuTooOld {
        /// The program whose version was read.
        tool: String,
        /// The version it printed.
        found: String,
        /// The oldest version accepted, as `major.minor`.
        required: String,
    },
    /// A host tool ran but failed.
    #[error("`{command}` failed: {detail}")]
    ToolFailed {
        /// The command line that failed.
        command: String,
        /// Its exit status and the last line of its stderr.
        detail: String,
    },
    /// The versioned kernel package could not be resolved from the local package lists.
    #[error(
        "cannot resolve the package behind {KERNEL_METAPACKAGE} from the local package lists: \
         run `apt-get update`"
    )]
    KernelPackageUnknown,
    /// The downloaded kernel package lacks a file the emulated host needs.
    #[error("kernel package {package} has no {what}")]
    KernelPackageIncomplete {
        /// The package file name.
        package: String,
        /// The missing file or folder.
        what: String,
    },
    /// A file or folder could not be read or written.
    #[error("{action} {}", path.display())]
    Io {
        /// The failed action, e.g. "cannot read".
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A run was described with a value that cannot work.
    #[error("invalid emulated run: {0}")]
    InvalidRun(String),
    /// The processor QEMU emulates for the outer machine lacks SVM.
    #[error(
        "nested SVM is absent in the emulated host: this QEMU does not offer `svm` with \
         `-cpu max`"
    )]
    NestedSvmMissing,
    /// `/dev/kvm` did not appear inside the emulated host after loading the modules.
    #[error("/dev/kvm did not appear inside the emulated host: see its console for kvm_amd")]
    KvmMissing,
    /// The init script inside the emulated host reported another failure.
    #[error("emulated host init failed: {0}")]
    InitFailed(String),
    /// QEMU exited before the command's exit status was reported.
    #[error(
        "emulated host stopped without reporting the command's exit status (QEMU: {qemu_status}, \
         last status record: {last_record}, kernel fault: {kernel_fault})"
    )]
    NoExitStatus {
        /// QEMU's exit status, with the last line of its stderr.
        qemu_status: String,
        /// The last status record received, or "none".
        last_record: String,
        /// The first line of the emulated host's console that reports a kernel fault (soft
        /// lockup, panic, oops), or "none".
        kernel_fault: String,
        /// Everything collected until QEMU stopped.
        partial: Box<EmulatedOutput>,
    },
    /// The emulated host sent no status record, not even its heartbeat, for `silence`, nor
    /// after an NMI, so QEMU was killed.
    #[error(
        "emulated host frozen: no heartbeat for {silence:?} nor after an NMI, so QEMU was \
         killed (last status record: {last_record} at outer uptime {last_uptime}, kernel fault: \
         {kernel_fault})"
    )]
    Frozen {
        /// Time without a status record before the NMI.
        silence: Duration,
        /// The last status record other than a heartbeat, or "none".
        last_record: String,
        /// The outer uptime of the last status record, heartbeats included, or "none".
        last_uptime: String,
        /// The first line of the emulated host's console that reports a kernel fault, or "none".
        kernel_fault: String,
        /// State shown by QEMU's monitor before the NMI: processors, registers, interrupt
        /// controllers.
        monitor_record: String,
        /// Everything collected until QEMU was killed.
        partial: Box<EmulatedOutput>,
    },
    /// The run's cancel flag was set; QEMU (or the command on a direct host) was killed.
    #[error("emulated run cancelled after {elapsed:?}, and its QEMU (or command) was killed")]
    Cancelled {
        /// Time from QEMU start (or command start) to the cancellation.
        elapsed: Duration,
        /// Everything collected until the cancellation.
        partial: Box<EmulatedOutput>,
    },
    /// The run did not finish within its timeout; QEMU was killed.
    #[error(
        "emulated run timed out after {timeout:?} (last status record: {last_record}, kernel \
         fault: {kernel_fault})"
    )]
    TimedOut {
        /// The run's timeout.
        timeout: Duration,
        /// The last status record received, or "none".
        last_record: String,
        /// The first line of the emulated host's console that reports a kernel fault, or
        /// "none", which is all a direct host reports.
        kernel_fault: String,
        /// Everything collected until the timeout.
        partial: Box<EmulatedOutput>,
    },
}

impl EmulatedError {
    /// Returns the output collected before the run failed, when there is one.
    pub fn partial_output(&self) -> Option<&EmulatedOutput> {
        match self {
            EmulatedError::NoExitStatus { partial, .. }
            | EmulatedError::Cancelled { partial, .. }
            | EmulatedError::Frozen { partial, .. }
            | EmulatedError::TimedOut { partial, .. } => Some(partial),
            _ => None,
        }
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> EmulatedError {
    let path = path.to_owned();
    move |source| EmulatedError::Io {
        action,
        path,
        source,
    }
}

/// A host file carried into the emulated host.
#[derive(Debug, Clone)]
pub struct CarriedFile {
    /// The file on this host; symbolic links are followed.
    pub source: PathBuf,
    /// Absolute path of the copy inside the emulated host.
    pub path: String,
    /// Name of an environment variable the command receives with the file's path: the path inside
    /// the emulated host, or [`CarriedFile::source`] on a direct host.
    pub env: Option<String>,
    /// Whether to carry the shared libraries `ldd` lists for the file too, at their own paths.
    pub with_libraries: bool,
}

impl CarriedFile {
    /// Describes a dynamically linked program, carried with its shared libraries.
    pub fn program(source: impl Into<PathBuf>, path: &str, env: &str) -> Self {
        CarriedFile {
            source: source.into(),
            path: path.to_owned(),
            env: Some(env.to_owned()),
            with_libraries: true,
        }
    }

    /// Describes a data file, carried alone.
    pub fn data(source: impl Into<PathBuf>, path: &str, env: &str) -> Self {
        CarriedFile {
            source: source.into(),
            path: path.to_owned(),
            env: Some(env.to_owned()),
            with_libraries: false,
        }
    }
}

/// A host file attached to the emulated host as a virtio-blk disk, never copied.
#[derive(Debug, Clone)]
pub struct CarriedDisk {
    /// The disk image on this host.
    pub source: PathBuf,
    /// Whether the emulated host may only read it.
    pub read_only: bool,
    /// Name of an environment variable the command receives with the disk's path: its block
    /// device inside the emulated host (`/dev/vda`, ...), or [`CarriedDisk::source`] on a
    /// direct host.
    pub env: String,
}

/// One command to run on a KVM host, with what it needs.
#[derive(Debug, Clone)]
pub struct EmulatedRun {
    /// Files carried into the emulated host's initramfs.
    pub files: Vec<CarriedFile>,
    /// Disks attached to the emulated host.
    pub disks: Vec<CarriedDisk>,
    /// Further environment variables of the command.
    pub env: Vec<(String, String)>,
    /// Shell command, run by `sh` (busybox's inside the emulated host) in a scratch folder.
    pub command: String,
    /// Processors of the emulated host.
    pub vcpus: u8,
    /// Memory of the emulated host in MiB, in addition to what its initramfs takes.
    pub memory_mib: u32,
    /// Time from QEMU start (or command start on a direct host) to the end of the run.
    pub timeout: Duration,
    /// Flag that stops the run when set, for example by a Ctrl-C handler. The run polls it
    /// every 20 ms.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl EmulatedRun {
    /// Describes a run of `command` with no files and disks, 2 processors, 2048 MiB and a
    /// 10-minute timeout.
    pub fn new(command: impl Into<String>) -> Self {
        EmulatedRun {
            files: Vec::new(),
            disks: Vec::new(),
            env: Vec::new(),
            command: command.into(),
            vcpus: 2,
            memory_mib: 2048,
            timeout: Duration::from_secs(600),
            cancel: None,
        }
    }

    /// Returns whether the run's cancel flag is set.
    fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::Relaxed))
    }
}

/// Output of a run.
#[derive(Debug, Clone, Default)]
pub struct EmulatedOutput {
    /// The command's exit status as `sh` reports it (128 + N for signal N).
    pub exit_status: i32,
    /// The command's standard output.
    pub stdout: Vec<u8>,
    /// The command's standard error.
    pub stderr: Vec<u8>,
    /// The emulated host's console: its kernel log and init messages. Empty on a direct host.
    pub console: Vec<u8>,
    /// Emulation timings; `None` on a direct host.
    pub emulation_timings: Option<EmulationTimings>,
}

/// Wall-clock durations from QEMU start, measured on this host when each status record
/// arrived (polled every few tens of milliseconds). These are emulation timings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmulationTimings {
    /// Until `/dev/kvm` was ready inside.
    pub kvm_ready: Option<Duration>,
    /// Until the command started.
    pub command_started: Option<Duration>,
    /// Until the command's exit status arrived.
    pub command_exited: Option<Duration>,
    /// Until QEMU exited.
    pub qemu_exited: Option<Duration>,
}

/// The emulated host, prepared and cached: its kernel and base initramfs.
#[derive(Debug, Clone)]
pub struct EmulatedHost {
    kernel: PathBuf,
    base_initramfs: PathBuf,
}

impl EmulatedHost {
    /// Builds the emulated host's kernel and base initramfs under `cache_dir`, or reuses them
    /// when a previous call built them from the same inputs.
    pub fn prepare(cache_dir: &Path) -> Result<Self, EmulatedError> {
        qemu::check_installed()?;
        let prepared = cache::prepare(cache_dir)?;
        Ok(EmulatedHost {
            kernel: prepared.kernel,
            base_initramfs: prepared.base_initramfs,
        })
    }

    /// Returns the path of the outer machine's kernel (`vmlinuz` of the cloud kernel package).
    pub fn kernel(&self) -> &Path {
        &self.kernel
    }

    /// Boots the emulated host, runs `run.command` inside and returns its output once QEMU has
    /// exited. QEMU is killed and every temporary file removed on every return path.
    pub fn run(&self, run: &EmulatedRun) -> Result<EmulatedOutput, EmulatedError> {
        qemu::run(self, run)
    }
}

/// The host on which commands that need hardware-style KVM run.
#[derive(Debug, Clone)]
pub enum KvmHost {
    /// On this host: its processor has hardware virtualization.
    Direct,
    /// Inside the emulated host.
    Emulated(EmulatedHost),
}

impl KvmHost {
    /// Picks [`KvmHost::Direct`] when `/proc/cpuinfo` lists `vmx` or `svm` and `/dev/kvm`
    /// exists, and prepares the emulated host otherwise.
    pub fn detect(cache_dir: &Path) -> Result<Self, EmulatedError> {
        if has_hardware_virtualization() {
            Ok(KvmHost::Direct)
        } else {
            Ok(KvmHost::Emulated(EmulatedHost::prepare(cache_dir)?))
        }
    }

    /// Runs `run` on this host or in the emulated host. On a direct host the files and disks
    /// are used in place, through their environment variables.
    pub fn run(&self, run: &EmulatedRun) -> Result<EmulatedOutput, EmulatedError> {
        match self {
            KvmHost::Direct => direct::run(run),
            KvmHost::Emulated(host) => host.run(run),
        }
    }

    /// Returns whether figures measured through this host are emulation timings.
    pub fn is_emulated(&self) -> bool {
        matches!(self, KvmHost::Emulated(_))
    }
}

/// Returns whether this processor offers hardware virtualization to KVM: `vmx` or `svm` in
/// `/proc/cpuinfo` and a `/dev/kvm` device.
pub fn has_hardware_virtualization() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flagged = cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .any(|line| {
            line.split_whitespace()
                .any(|flag| flag == "vmx" || flag == "svm")
        });
    flagged && Path::new("/dev/kvm").exists()
}

/// Checks that `name` can be a shell variable name.
fn check_env_name(name: &str) -> Result<(), EmulatedError> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(EmulatedError::InvalidRun(format!(
            "{name:?} is not a valid environment variable name"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_name_accepts_shell_names() {
        assert!(check_env_name("ISOBENCH_VMM").is_ok());
        assert!(check_env_name("_x1").is_ok());
    }

    #[test]
    fn env_name_rejects_others() {
        assert!(check_env_name("").is_err());
        assert!(check_env_name("1A").is_err());
        assert!(check_env_name("A-B").is_err());
        assert!(check_env_name("A B").is_err());
    }
}
