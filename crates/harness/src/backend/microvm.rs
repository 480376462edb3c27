//! The `microvm` backend: the guest image booted by our own KVM hypervisor, `isobench-vmm`,
//! which runs as a child process so its memory and CPU are attributable to it.
//!
//! Launch steps:
//!
//! 1. Pick a free /30 link in 172.30.0.0/16 (no local address or route in it) and a TAP name
//!    derived from the run id. The VMM creates the TAP device and sets the host address on it,
//!    and the guest's address through the kernel's `ip=` parameter. The TAP device is not persistent, so
//!    it disappears with the VMM process, whatever way that ends.
//! 2. Spawn `isobench-vmm` with the Jupyter parameters on the kernel command line, its events
//!    on a pipe and its console in a per-trial file.
//! 3. Turn each event into a phase mark at the event's own `CLOCK_MONOTONIC` timestamp
//!    (`vmm_started`, `vcpus_running`, `init_started`, `mounts_done`, `exec_kernel`), and
//!    return once the vCPUs run; the trial's client then waits for the Jupyter kernel.
//!
//! Stopping sends SIGTERM, waits for the VMM to exit and removes the trial folder.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use isobench_vmm::config::Destination;
use isobench_vmm::events::{Event, RamMapping};
use isobench_vmm::supervisor::{
    describe_exit, locate_binary, parse_event, vmm_overhead_bytes, ClockMapping, TapLink,
    VmmCommand,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Child;
use tokio::task::JoinHandle;

use super::{
    Backend, BackendError, BackendKind, ChannelPorts, ExitInfo, Instance, LaunchSpec, MemorySample,
    PhaseMark,
};

/// Path of the guest entrypoint inside the root filesystem.
const ENTRYPOINT: &str = "/sbin/isobench-init";
/// Prefix of trial folders; [`MicrovmBackend::sweep`] removes leftovers that carry it.
const TRIAL_DIR_PREFIX: &str = "isobench-microvm-";
/// Prefix of TAP device names.
pub const TAP_PREFIX: &str = "isb";
/// Address block the /30 links are taken from.
const LINK_BLOCK: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 0);
const LINK_NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 252);
/// Time the VMM gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of console and standard error kept for error messages.
const TAIL_BYTES: usize = 4096;
/// Interval of the checks for `vcpus_running` during launch.
const LAUNCH_POLL_INTERVAL: Duration = Duration::from_millis(2);

static TRIAL_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Guest kernel file the microVM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestKernel {
    /// The uncompressed `vmlinux` through the PVH entry.
    #[default]
    Vmlinux,
    /// The `bzImage` through the Linux 64-bit boot protocol.
    BzImage,
}

/// The microVM backend.
#[derive(Debug, Clone)]
pub struct MicrovmBackend {
    binary: PathBuf,
    kernel: GuestKernel,
    work_dir: Option<PathBuf>,
}

impl MicrovmBackend {
    /// The backend with the `isobench-vmm` binary found next to this program, in
    /// `$ISOBENCH_VMM` or in `PATH`.
    pub fn new() -> Result<MicrovmBackend, BackendError> {
        let binary = locate_binary().map_err(|error| BackendError::Unavailable {
            backend: BackendKind::Microvm,
            reason: error.to_string(),
        })?;
        Ok(MicrovmBackend::with_binary(binary))
    }

    /// The backend with the given VMM binary.
    pub fn with_binary(binary: PathBuf) -> MicrovmBackend {
        MicrovmBackend {
            binary,
            kernel: GuestKernel::default(),
            work_dir: None,
        }
    }

    /// Boots `kernel` instead of the default `vmlinux`.
    pub fn with_kernel(mut self, kernel: GuestKernel) -> MicrovmBackend {
        self.kernel = kernel;
        self
    }

    /// Creates trial folders under `work_dir` instead of the system's temporary folder.
    pub fn with_work_dir(mut self, work_dir: impl Into<PathBuf>) -> MicrovmBackend {
        self.work_dir = Some(work_dir.into());
        self
    }

    fn work_dir(&self) -> PathBuf {
        self.work_dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    /// Checks that this host can run the backend: `/dev/kvm` and `/dev/net/tun` usable.
    pub fn check_available() -> Result<(), BackendError> {
        let unavailable = |reason: String| BackendError::Unavailable {
            backend: BackendKind::Microvm,
            reason,
        };
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map_err(|error| unavailable(format!("cannot open /dev/kvm: {error}")))?;
        if !Path::new("/dev/net/tun").exists() {
            return Err(unavailable(
                "/dev/net/tun not found: load the tun module (modprobe tun)".into(),
            ));
        }
        Ok(())
    }

    /// The VMM command line for one trial.
    fn command(&self, spec: &LaunchSpec, link: TapLink, console: PathBuf) -> VmmCommand {
        let kernel = match self.kernel {
            GuestKernel::Vmlinux => spec.image.vmlinux.clone(),
            GuestKernel::BzImage => spec.image.bzimage.clone(),
        };
        let ports = spec.ports;
        let mut command = VmmCommand::new(self.binary.clone(), kernel);
        command.rootfs = Some(spec.image.rootfs_ext4.clone());
        command.vcpus = spec.vcpus;
        command.memory_mib = spec.memory_mib as u64;
        command.console = Destination::File(console);
        command.extra_args = guest_args(&spec.key, ports, link.guest_ip);
        command.tap = Some(link);
        command
    }
}

/// Kernel command-line arguments for the guest entrypoint: its path, the Jupyter kernel's bind
/// address, key and ports. `quiet` keeps the boot log off the serial console, where every
/// byte is a VM exit.
pub fn guest_args(key: &str, ports: ChannelPorts, guest_ip: Ipv4Addr) -> Vec<String> {
    vec![
        "quiet".into(),
        format!("init={ENTRYPOINT}"),
        format!("isobench.ip={guest_ip}"),
        format!("isobench.key={key}"),
        format!(
            "isobench.ports={},{},{},{},{}",
            ports.shell, ports.iopub, ports.stdin, ports.control, ports.heartbeat
        ),
    ]
}

#[async_trait]
impl Backend for MicrovmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Microvm
    }

    fn name(&self) -> String {
        match self.kernel {
            GuestKernel::Vmlinux => "microvm".into(),
            GuestKernel::BzImage => "microvm+bzimage".into(),
        }
    }

    async fn launch(
        &self,
        spec: &LaunchSpec,
        t0: Instant,
    ) -> Result<Box<dyn Instance>, BackendError> {
        MicrovmBackend::check_available()?;
        let dir = TrialDir::create(&self.work_dir(), &spec.run_id, spec.trial)?;
        let link = free_link(&spec.run_id, spec.trial)
            .ok_or_else(|| BackendError::Launch("no free /30 link in 172.30.0.0/16".into()))?;
        let command = self.command(spec, link.clone(), dir.console());
        let mut vmm = VmmProcess::spawn(&command)?;

        let deadline = t0 + spec.ready_deadline;
        loop {
            if vmm.has_mark("vcpus_running") {
                break;
            }
            if let Ok(Some(_)) = vmm.child.try_wait() {
                let info = vmm.wait_exit(&dir).await;
                return Err(BackendError::Launch(format!(
                    "isobench-vmm exited before its vCPUs ran: {}: {}",
                    info.status,
                    info.last_output.trim()
                )));
            }
            if Instant::now() >= deadline {
                return Err(BackendError::Launch(format!(
                    "isobench-vmm did not start its vCPUs within {:?}",
                    spec.ready_deadline
                )));
            }
            tokio::time::sleep(LAUNCH_POLL_INTERVAL).await;
        }
        Ok(Box::new(MicrovmInstance {
            vmm,
            guest_ip: link.guest_ip,
            ports: spec.ports,
            dir,
        }))
    }

    async fn sweep(&self) -> Result<(), BackendError> {
        TrialDir::sweep(&self.work_dir());
        Ok(())
    }
}

/// A per-trial folder holding the console file; removed when dropped.
struct TrialDir {
    path: PathBuf,
}

impl TrialDir {
    fn create(parent: &Path, run_id: &str, trial: u32) -> Result<TrialDir, BackendError> {
        let run: String = run_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        let path = parent.join(format!(
            "{TRIAL_DIR_PREFIX}{run}-t{trial}-{}-{}",
            std::process::id(),
            TRIAL_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).map_err(|error| {
            BackendError::Launch(format!("cannot create {}: {error}", path.display()))
        })?;
        Ok(TrialDir { path })
    }

    fn console(&self) -> PathBuf {
        self.path.join("console.log")
    }

    fn console_tail(&self) -> String {
        let bytes = std::fs::read(self.console()).unwrap_or_default();
        let start = bytes.len().saturating_sub(TAIL_BYTES);
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Removes trial folders whose harness process (the pid in the name) is gone.
    fn sweep(parent: &Path) {
        let Ok(entries) = std::fs::read_dir(parent) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(TRIAL_DIR_PREFIX) else {
                continue;
            };
            let pid = rest.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                if let Err(error) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), %error, "cannot remove a leftover trial folder");
                }
            }
        }
    }
}

impl Drop for TrialDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// State shared by the event reader and the instance.
#[derive(Default)]
struct Shared {
    marks: Vec<PhaseMark>,
    guest_ram: Vec<RamMapping>,
    stderr: VecDeque<u8>,
}

/// The VMM child with its event and standard-error readers.
struct VmmProcess {
    pid: u32,
    child: Child,
    shared: Arc<Mutex<Shared>>,
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitInfo>,
}

impl VmmProcess {
    fn spawn(command: &VmmCommand) -> Result<VmmProcess, BackendError> {
        let clock = ClockMapping::now();
        let mut child = tokio::process::Command::from(command.command())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| {
                BackendError::Launch(format!(
                    "cannot start {}: {error}",
                    command.binary.display()
                ))
            })?;
        let pid = child
            .id()
            .ok_or_else(|| BackendError::Launch("isobench-vmm exited at once".into()))?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            let shared = Arc::clone(&shared);
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match parse_event(&line) {
                        Ok(event) => record_event(&shared, &clock, event),
                        Err(error) => tracing::warn!(%error, "unexpected output from isobench-vmm"),
                    }
                }
            }));
        }
        if let Some(mut stderr) = child.stderr.take() {
            let shared = Arc::clone(&shared);
            readers.push(tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                while let Ok(count @ 1..) = stderr.read(&mut buffer).await {
                    let Ok(mut shared) = shared.lock() else { break };
                    shared.stderr.extend(&buffer[..count]);
                    let excess = shared.stderr.len().saturating_sub(TAIL_BYTES);
                    shared.stderr.drain(..excess);
                }
            }));
        }
        Ok(VmmProcess {
            pid,
            child,
            shared,
            readers,
            exit: None,
        })
    }

    fn has_mark(&self, name: &str) -> bool {
        self.shared
            .lock()
            .map(|s| s.marks.iter().any(|m| m.name == name))
            .unwrap_or(false)
    }

    fn stderr_tail(&self) -> String {
        self.shared
            .lock()
            .map(|s| {
                String::from_utf8_lossy(&s.stderr.iter().copied().collect::<Vec<u8>>()).into_owned()
            })
            .unwrap_or_default()
    }

    async fn wait_exit(&mut self, dir: &TrialDir) -> ExitInfo {
        if let Some(info) = &self.exit {
            return info.clone();
        }
        let status = self.child.wait().await;
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
        }
        let status = match status {
            Ok(status) => describe_exit(status),
            Err(error) => format!("unknown: waiting failed: {error}"),
        };
        let mut last_output = dir.console_tail();
        let stderr = self.stderr_tail();
        if !stderr.trim().is_empty() {
            last_output.push_str(&stderr);
        }
        let info = ExitInfo {
            status,
            oom_killed: false,
            last_output,
        };
        self.exit = Some(info.clone());
        info
    }

    fn signal(&mut self, signal: i32) {
        if self.exit.is_some() || !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // SAFETY: the child has not been reaped (checked just above), so `pid` still names
        // it; kill has no memory preconditions.
        unsafe { libc::kill(self.pid as libc::pid_t, signal) };
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        for reader in &self.readers {
            reader.abort();
        }
    }
}

fn record_event(shared: &Mutex<Shared>, clock: &ClockMapping, event: Event) {
    let Ok(mut shared) = shared.lock() else {
        return;
    };
    if let Event::VcpusRunning { guest_ram, .. } = &event {
        shared.guest_ram = guest_ram.clone();
    }
    if matches!(event, Event::VmmExit { .. }) {
        return;
    }
    tracing::debug!(event = event.name(), "microVM event");
    shared.marks.push(PhaseMark {
        name: event.name().to_string(),
        at: clock.instant_of(event.monotonic_us()),
    });
}

/// One running microVM.
pub struct MicrovmInstance {
    // Field order matters: the VMM is killed before its trial folder is removed.
    vmm: VmmProcess,
    guest_ip: Ipv4Addr,
    ports: ChannelPorts,
    dir: TrialDir,
}

impl MicrovmInstance {
    /// PID of the VMM process.
    pub fn pid(&self) -> u32 {
        self.vmm.pid
    }
}

#[async_trait]
impl Instance for MicrovmInstance {
    fn address(&self) -> Ipv4Addr {
        self.guest_ip
    }

    fn ports(&self) -> ChannelPorts {
        self.ports
    }

    fn marks(&self) -> Vec<PhaseMark> {
        self.vmm
            .shared
            .lock()
            .map(|s| s.marks.clone())
            .unwrap_or_default()
    }

    async fn wait_exit(&mut self) -> ExitInfo {
        self.vmm.wait_exit(&self.dir).await
    }

    async fn memory(&mut self) -> Result<MemorySample, BackendError> {
        let pid = self.vmm.pid;
        let guest_ram = self
            .vmm
            .shared
            .lock()
            .map(|s| s.guest_ram.clone())
            .unwrap_or_default();
        let host_pss_bytes = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|text| kib_field(&text, "Pss:"))
            .map(|kib| kib * 1024);
        let vmm_overhead_bytes = vmm_overhead_bytes(pid, &guest_ram).ok();
        Ok(MemorySample {
            host_pss_bytes,
            vmm_overhead_bytes,
            ..MemorySample::default()
        })
    }

    async fn stop(mut self: Box<Self>) -> Result<Option<ExitInfo>, BackendError> {
        self.vmm.signal(libc::SIGTERM);
        let info = match tokio::time::timeout(STOP_TIMEOUT, self.vmm.wait_exit(&self.dir)).await {
            Ok(info) => info,
            Err(_) => {
                tracing::warn!(
                    pid = self.vmm.pid,
                    "isobench-vmm ignored SIGTERM; killing it"
                );
                self.vmm.signal(libc::SIGKILL);
                self.vmm.wait_exit(&self.dir).await
            }
        };
        Ok(Some(info))
    }
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
}

/// A TAP name from the run id and trial, within the 15 characters Linux allows.
pub fn tap_name(run_id: &str, trial: u32) -> String {
    let hash = run_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut name = format!("{TAP_PREFIX}{:06x}t{trial}", hash & 0xff_ffff);
    name.truncate(15);
    name
}

/// The first /30 of 172.30.0.0/16 with no local address and no route in it, and a TAP name
/// that no existing link has.
// NOTE: the link is free when chosen, not reserved: two launches from one harness at the same
// time could pick the same /30 before either VMM has set its address. Trials run one at a time.
fn free_link(run_id: &str, trial: u32) -> Option<TapLink> {
    let used = local_ipv4_addresses();
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let base = u32::from(LINK_BLOCK);
    let mut name = tap_name(run_id, trial);
    let mut suffix = 0u32;
    while Path::new("/sys/class/net").join(&name).exists() {
        suffix += 1;
        name = format!("{}{suffix}", &tap_name(run_id, trial)[..12]);
    }
    (0..(1u32 << 14))
        .map(|index| base + index * 4)
        .find_map(|network| {
            let in_use = used.iter().any(|addr| u32::from(*addr) & !3 == network)
                || route_covers(&routes, network);
            (!in_use).then(|| TapLink {
                name: name.clone(),
                host_ip: Ipv4Addr::from(network + 1),
                guest_ip: Ipv4Addr::from(network + 2),
                netmask: LINK_NETMASK,
            })
        })
}

/// Whether `/proc/net/route` has a non-default route whose destination covers `network`.
fn route_covers(routes: &str, network: u32) -> bool {
    routes.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(dest), Some(mask)) = (fields.get(1), fields.get(7)) else {
            return false;
        };
        // The file prints addresses as host-order hex of network-order bytes.
        let parse = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::from_be);
        match (parse(dest), parse(mask)) {
            (Some(dest), Some(mask)) if mask != 0 => network & mask == dest & mask,
            _ => false,
        }
    })
}

fn local_ipv4_addresses() -> Vec<Ipv4Addr> {
    let mut addresses = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `list`; checked for failure below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return addresses;
    }
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr of the family it names.
            let family = unsafe { (*entry.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let addr = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                addresses.push(Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)));
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_name_fits_linux_limit() {
        let name = tap_name("20261204T150000Z-abcdef", 123_456);
        assert!(name.len() <= 15, "{name}");
        assert!(name.starts_with(TAP_PREFIX));
        assert_ne!(tap_name("run-a", 1), tap_name("run-b", 1));
    }

    #[test]
    fn guest_args_carry_jupyter_parameters() {
        let args = guest_args(
            "00ff",
            ChannelPorts::GUEST_DEFAULT,
            Ipv4Addr::new(172, 30, 0, 2),
        );
        assert!(args.contains(&"init=/sbin/isobench-init".to_string()));
        assert!(args.contains(&"isobench.key=00ff".to_string()));
        assert!(args.contains(&"isobench.ports=50001,50002,50003,50004,50005".to_string()));
        assert!(args.contains(&"isobench.ip=172.30.0.2".to_string()));
    }

    #[test]
    fn route_covering_link_is_detected() {
        // 172.30.0.0/24 via eth0, as /proc/net/route prints it (little-endian hex).
        let routes = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                      eth0\t00001EAC\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert!(route_covers(
            routes,
            u32::from(Ipv4Addr::new(172, 30, 0, 4))
        ));
        assert!(!route_covers(
            routes,
            u32::from(Ipv4Addr::new(172, 30, 1, 0))
        ));
    }

    #[test]
    fn free_link_is_a_slash_30() {
        let link = free_link("test-run", 0).unwrap();
        assert_eq!(u32::from(link.guest_ip), u32::from(link.host_ip) + 1);
        assert_eq!(link.netmask, LINK_NETMASK);
    }
}
