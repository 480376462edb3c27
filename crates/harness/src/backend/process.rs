//! The `process` backend, the baseline every ratio is taken against: the guest image's root
//! filesystem tree under `chroot`, with no namespaces and no resource limits.
//!
//! Launch steps:
//!
//! 1. Bind the tree read-only at a per-trial mount point and mount `/proc`, `/dev`, and tmpfs
//!    on `/tmp` and `/run` inside it ([`mounts::TrialRoot`]).
//! 2. Fork, `chroot` into the trial root, start a new session (so ipykernel's `SIGINT` to its
//!    process group on `interrupt_request` reaches only the kernel) and exec
//!    `/sbin/isobench-init`, which reads its parameters from the environment and execs
//!    ipykernel in the same process.
//! 3. Scan the entrypoint's standard output for boot markers as bytes arrive.
//! 4. Wait until the kernel process owns listening sockets on all five ports. A kernel that
//!    exits reporting "Address already in use" is started again on new free ports.
//!
//! The kernel is tracked by PID and killed (with its process group) on every exit path,
//! including when the instance is dropped; the mounts are removed after it.

mod mounts;
mod output;
mod procfs;

use std::ffi::{CStr, CString};
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use isobench_workload::is_address_in_use;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::{
    Backend, BackendError, BackendKind, ChannelPorts, ExitInfo, GuestMeminfo, Instance, LaunchSpec,
    MemorySample, PhaseMark,
};
use mounts::TrialRoot;
use output::{MarkerScanner, OutputTail};

/// Path of the guest entrypoint inside the root filesystem tree.
const ENTRYPOINT: &str = "/sbin/isobench-init";

/// Prefix of every trial directory, followed by the run id; [`ProcessBackend::sweep`] removes
/// leftovers that carry it.
const TRIAL_DIR_PREFIX: &str = "isobench-process-";

/// Kernel starts tried when ports turn out to be taken.
const MAX_PORT_ATTEMPTS: u32 = 3;

/// Interval between checks of the kernel's listening sockets during launch.
const LISTEN_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Time a kernel is given to exit on its own in [`Instance::stop`] before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Time allowed for the reader tasks to pass on the last output after the kernel exited.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Host environment variables passed to the kernel unchanged. OpenBLAS reads these two to
/// pick a CPU kernel, and some hosts set them because older OpenBLAS builds compute wrong
/// results or crash on their processors.
const PASSED_ENVIRONMENT: &[&str] = &["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"];

/// Distinguishes trial directories of concurrent trials within one harness process.
static TRIAL_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The no-isolation baseline: the Jupyter kernel as a plain process under `chroot`.
#[derive(Debug, Default)]
pub struct ProcessBackend {
    /// Directory under which trial directories are created; the system's temporary directory
    /// unless set.
    work_dir: Option<PathBuf>,
}

impl ProcessBackend {
    /// Creates the backend with trial directories under the system's temporary directory.
    pub fn new() -> ProcessBackend {
        ProcessBackend::default()
    }

    /// Creates the backend with trial directories under `work_dir`.
    pub fn with_work_dir(work_dir: impl Into<PathBuf>) -> ProcessBackend {
        ProcessBackend {
            work_dir: Some(work_dir.into()),
        }
    }

    fn work_dir(&self) -> PathBuf {
        self.work_dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    /// Checks that this host can run the backend: root privileges for `chroot` and `mount`.
    pub fn check_available() -> Result<(), BackendError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(BackendError::Unavailable {
                backend: BackendKind::Process,
                reason: "chroot and mount need root: run isobench as root".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for ProcessBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Process
    }

    fn name(&self) -> String {
        "process".into()
    }

    async fn launch(
        &self,
        spec: &LaunchSpec,
        t0: Instant,
    ) -> Result<Box<dyn Instance>, BackendError> {
        ProcessBackend::check_available()?;
        let tree = &spec.image.rootfs_tree;
        let entrypoint = tree.join(ENTRYPOINT.trim_start_matches('/'));
        if !entrypoint.is_file() {
            return Err(BackendError::Launch(format!(
                "guest entrypoint {} not found: build the guest image with `isobench image build`",
                entrypoint.display()
            )));
        }
        let deadline = t0 + spec.ready_deadline;
        let mut marks = Vec::new();
        let dir = self.work_dir().join(format!(
            "{TRIAL_DIR_PREFIX}{}-t{}-{}-{}",
            sanitize(&spec.run_id),
            spec.trial,
            std::process::id(),
            TRIAL_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let root = TrialRoot::mount(tree, &dir)
            .map_err(|error| BackendError::Launch(error.to_string()))?;
        marks.push(mark("mounts_done"));

        let mut ports = spec.ports;
        for attempt in 1..=MAX_PORT_ATTEMPTS {
            let mut kernel = KernelProcess::spawn(root.root(), &spec.key, ports, marks.clone())?;
            match kernel.wait_listening(&ports, deadline).await {
                Listening::Yes => {
                    return Ok(Box::new(ProcessInstance {
                        kernel,
                        ports,
                        _root: root,
                    }))
                }
                Listening::Exited(info)
                    if attempt < MAX_PORT_ATTEMPTS && is_address_in_use(&info.last_output) =>
                {
                    let taken = ports;
                    ports = ChannelPorts::pick_free_loopback()
                        .map_err(|error| BackendError::Launch(error.to_string()))?;
                    tracing::warn!(
                        ?taken,
                        ?ports,
                        attempt,
                        "a Jupyter port was taken; starting the kernel again on new ports"
                    );
                    marks.push(mark("port_retry"));
                }
                Listening::Exited(info) => return Err(BackendError::Exited(info)),
                Listening::TimedOut => {
                    let printed = kernel.last_output();
                    let printed = if printed.trim().is_empty() {
                        "; it printed nothing".to_owned()
                    } else {
                        format!("; last output: {printed}")
                    };
                    return Err(BackendError::Launch(format!(
                        "the Jupyter kernel did not listen on ports {} within {:?} of launch{printed}",
                        ports.to_list(),
                        spec.ready_deadline,
                    )));
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn sweep(&self) -> Result<(), BackendError> {
        sweep_leftovers(&self.work_dir());
        Ok(())
    }
}

/// One running kernel process of the `process` backend.
pub struct ProcessInstance {
    // Field order matters: the kernel is killed before its mounts are removed.
    kernel: KernelProcess,
    ports: ChannelPorts,
    _root: TrialRoot,
}

impl ProcessInstance {
    /// PID of the Jupyter kernel process on the host.
    pub fn pid(&self) -> u32 {
        self.kernel.pid
    }
}

#[async_trait]
impl Instance for ProcessInstance {
    fn address(&self) -> Ipv4Addr {
        Ipv4Addr::LOCALHOST
    }

    fn ports(&self) -> ChannelPorts {
        self.ports
    }

    fn marks(&self) -> Vec<PhaseMark> {
        self.kernel
            .shared
            .lock()
            .map(|s| s.marks.clone())
            .unwrap_or_default()
    }

    async fn wait_exit(&mut self) -> ExitInfo {
        self.kernel.wait_exit().await
    }

    async fn memory(&mut self) -> Result<MemorySample, BackendError> {
        let pids = procfs::process_tree(self.kernel.pid);
        let host_pss_bytes = procfs::pss_bytes(&pids);
        // The chroot shares the host's /proc/meminfo, so the kernel reads the same figures.
        let meminfo = Path::new("/proc/meminfo");
        let guest_view = procfs::read_kib_field(meminfo, "MemTotal:")
            .zip(procfs::read_kib_field(meminfo, "MemAvailable:"))
            .map(|(total, available)| GuestMeminfo {
                mem_total_bytes: total * 1024,
                mem_available_bytes: available * 1024,
            });
        Ok(MemorySample {
            host_pss_bytes,
            guest_view,
            ..MemorySample::default()
        })
    }

    async fn stop(mut self: Box<Self>) -> Result<Option<ExitInfo>, BackendError> {
        // A kernel that just got `shutdown_request` exits on its own within moments; only one
        // that is still running after the grace period is killed.
        let exited = tokio::time::timeout(STOP_GRACE, self.kernel.wait_exit()).await;
        if exited.is_err() {
            self.kernel.kill();
        }
        let info = self.kernel.wait_exit().await;
        // Dropping `self` removes the mounts and the trial directory.
        Ok(Some(info))
    }
}

/// Output and marks shared between the reader tasks and the instance.
#[derive(Default)]
struct Shared {
    marks: Vec<PhaseMark>,
    tail: OutputTail,
}

enum Listening {
    Yes,
    Exited(ExitInfo),
    TimedOut,
}

/// The kernel process with its output readers.
struct KernelProcess {
    pid: u32,
    child: Child,
    shared: Arc<Mutex<Shared>>,
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitInfo>,
}

impl KernelProcess {
    fn spawn(
        root: &Path,
        key: &str,
        ports: ChannelPorts,
        marks: Vec<PhaseMark>,
    ) -> Result<KernelProcess, BackendError> {
        let root_c = CString::new(root.as_os_str().as_bytes())
            .map_err(|_| BackendError::Launch(format!("invalid trial root {}", root.display())))?;
        let mut command = Command::new(ENTRYPOINT);
        command
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("ISOBENCH_IP", Ipv4Addr::LOCALHOST.to_string())
            .env("ISOBENCH_KEY", key)
            .env("ISOBENCH_PORTS", ports.to_list())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for name in PASSED_ENVIRONMENT {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        // SAFETY: the closure runs in the forked child before exec and only makes the
        // async-signal-safe calls chroot, chdir and setsid on memory prepared before the fork.
        unsafe {
            command.pre_exec(move || enter_trial_root(&root_c));
        }

        let mut child = command.spawn().map_err(|error| {
            BackendError::Launch(format!(
                "failed to start {ENTRYPOINT} under chroot {}: {error}",
                root.display()
            ))
        })?;
        let pid = child
            .id()
            .ok_or_else(|| BackendError::Launch("the kernel process exited at once".into()))?;
        let mut marks = marks;
        marks.push(mark("process_spawned"));
        let shared = Arc::new(Mutex::new(Shared {
            marks,
            tail: OutputTail::default(),
        }));

        let mut readers = Vec::new();
        if let Some(mut stdout) = child.stdout.take() {
            let shared = Arc::clone(&shared);
            readers.push(tokio::spawn(async move {
                let mut scanner = MarkerScanner::default();
                let mut buffer = vec![0u8; 8192];
                while let Ok(count @ 1..) = stdout.read(&mut buffer).await {
                    let at = Instant::now();
                    let Ok(mut shared) = shared.lock() else { break };
                    let shared = &mut *shared;
                    for name in scanner.feed(&buffer[..count], &mut shared.tail) {
                        tracing::debug!(marker = %name, "boot marker");
                        shared.marks.push(PhaseMark { name, at });
                    }
                }
            }));
        }
        if let Some(mut stderr) = child.stderr.take() {
            let shared = Arc::clone(&shared);
            readers.push(tokio::spawn(async move {
                let mut buffer = vec![0u8; 8192];
                while let Ok(count @ 1..) = stderr.read(&mut buffer).await {
                    let Ok(mut shared) = shared.lock() else { break };
                    shared.tail.extend(&buffer[..count]);
                }
            }));
        }
        Ok(KernelProcess {
            pid,
            child,
            shared,
            readers,
            exit: None,
        })
    }

    async fn wait_listening(&mut self, ports: &ChannelPorts, deadline: Instant) -> Listening {
        let ports = ports.as_array();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Listening::Exited(self.wait_exit().await);
            }
            if procfs::listens_on_all(self.pid, &ports) {
                if let Ok(mut shared) = self.shared.lock() {
                    shared.marks.push(mark("kernel_listening"));
                }
                return Listening::Yes;
            }
            if Instant::now() >= deadline {
                return Listening::TimedOut;
            }
            tokio::time::sleep(LISTEN_POLL_INTERVAL).await;
        }
    }

    fn last_output(&self) -> String {
        self.shared
            .lock()
            .map(|s| s.tail.text())
            .unwrap_or_default()
    }

    /// Sends `SIGKILL` to the kernel's process group and to the kernel, unless it was reaped.
    fn kill(&mut self) {
        if self.exit.is_some() || !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let pid = self.pid as libc::pid_t;
        // SAFETY: the child has not been reaped (checked just above), so `pid` still names it
        // and, as a session leader, its process group; kill has no memory preconditions.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }

    async fn wait_exit(&mut self) -> ExitInfo {
        if let Some(info) = &self.exit {
            return info.clone();
        }
        let status = self.child.wait().await;
        for reader in self.readers.drain(..) {
            // The pipes close when the kernel exits; the readers then end on their own.
            let _ = tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, reader).await;
        }
        let status = match status {
            Ok(status) => describe_exit(status),
            Err(error) => format!("unknown: waiting failed: {error}"),
        };
        let info = ExitInfo {
            status,
            oom_killed: false,
            last_output: self.last_output(),
        };
        self.exit = Some(info.clone());
        info
    }
}

impl Drop for KernelProcess {
    fn drop(&mut self) {
        self.kill();
        for reader in &self.readers {
            reader.abort();
        }
    }
}

/// Makes the forked child's root the trial root and starts a new session, so the kernel is the
/// leader of its own process group. Runs between fork and exec.
fn enter_trial_root(root: &CStr) -> std::io::Result<()> {
    // SAFETY: `root` is a NUL-terminated string owned by the caller.
    if unsafe { libc::chroot(root.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the argument is a NUL-terminated string literal.
    if unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: setsid has no memory preconditions.
    if unsafe { libc::setsid() } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Describes an exit status in words: `exit status 1`, `killed by SIGKILL`.
fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal() {
        Some(signal) => format!("killed by {}", signal_name(signal)),
        None => "unknown exit".into(),
    }
}

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGTERM => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}

fn mark(name: &str) -> PhaseMark {
    PhaseMark {
        name: name.into(),
        at: Instant::now(),
    }
}

/// Keeps letters, digits, `-` and `_` of a run id for use in a directory name.
fn sanitize(run_id: &str) -> String {
    run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Removes trial directories under `work_dir` whose harness process is gone: kills the kernels
/// whose root is inside one, unmounts what is mounted there and removes the directories.
/// Processes are found by their root directory, which carries the trial prefix, never by name;
/// directories of live harness processes (this one included) are left alone.
fn sweep_leftovers(work_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = owner_pid(&name) else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists; kill has no memory
        // preconditions.
        if unsafe { libc::kill(owner, 0) } == 0 {
            continue;
        }
        sweep_trial_dir(&entry.path());
    }
}

/// PID of the harness process that created a trial directory, from its name
/// `isobench-process-RUN-tTRIAL-PID-COUNTER`.
fn owner_pid(dir_name: &str) -> Option<i32> {
    let rest = dir_name.strip_prefix(TRIAL_DIR_PREFIX)?;
    let mut fields = rest.rsplitn(3, '-');
    let _counter: u32 = fields.next()?.parse().ok()?;
    let pid = fields.next()?.parse().ok()?;
    fields.next()?;
    Some(pid)
}

fn sweep_trial_dir(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let is_inside = |path: &str| path == prefix || path.starts_with(&format!("{prefix}/"));

    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(root) = std::fs::read_link(entry.path().join("root")) else {
                continue;
            };
            if is_inside(&root.to_string_lossy()) {
                tracing::warn!(pid, root = %root.display(), "killing a leftover kernel");
                // SAFETY: kill has no memory preconditions; the PID was read just now and its
                // root directory lies in a leftover trial directory.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    // Deepest mount points first, so each parent is unmounted after its children.
    let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4).map(str::to_owned))
        .filter(|point| is_inside(point))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        let Ok(point_c) = CString::new(point.as_bytes()) else {
            continue;
        };
        tracing::warn!(mount_point = %point, "unmounting a leftover trial mount");
        // SAFETY: `point_c` is a NUL-terminated string that outlives the call.
        unsafe { libc::umount2(point_c.as_ptr(), libc::MNT_DETACH) };
    }

    // Only empty directories go: a mount that is still there keeps its tree.
    let _ = std::fs::remove_dir(dir.join("root"));
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_safe_characters() {
        assert_eq!(sanitize("run-1_a"), "run-1_a");
        assert_eq!(sanitize("a/b c"), "a_b_c");
    }

    #[test]
    fn exit_status_in_words() {
        assert_eq!(describe_exit(ExitStatus::from_raw(1 << 8)), "exit status 1");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "killed by SIGKILL");
    }

    #[test]
    fn owner_pid_parses_trial_dir_name() {
        assert_eq!(owner_pid("isobench-process-run-a-t3-1234-7"), Some(1234));
        assert_eq!(owner_pid("isobench-process-x"), None);
        assert_eq!(owner_pid("other-1234-7"), None);
    }
}
