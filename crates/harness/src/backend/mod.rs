//! The backend interface: one way to launch, observe and stop the guest image's Jupyter kernel
//! under each isolation mechanism.
//!
//! A trial drives an [`Instance`] through these steps, all timed on the host's
//! `CLOCK_MONOTONIC` (`std::time::Instant`):
//!
//! ```text
//!   t0 = Instant::now()
//!   backend.launch(spec, t0) ──► Instance ──► phase marks arrive (instance.marks())
//!                                  │
//!   workload client: ready ◄───────┘ connection()   (memory probe at idle, suite, probe again)
//!                                  │
//!   instance.stop() ───────────────┘ everything the instance created is gone afterwards
//! ```

pub mod docker;
pub mod microvm;
pub mod process;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Isolation mechanisms that isobench measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Our own KVM hypervisor, `isobench-vmm`, booting the guest kernel.
    Microvm,
    /// A container run by the Docker Engine through its API.
    Docker,
    /// No isolation: the root filesystem under `chroot`, the baseline for every ratio.
    Process,
}

/// Paths of one built guest image, the same bytes for every backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestImagePaths {
    /// Image id: the hash over the guest kernel and root filesystem recipes.
    pub id: String,
    /// Uncompressed guest kernel, booted through the PVH entry.
    pub vmlinux: PathBuf,
    /// Compressed guest kernel, booted through the Linux 64-bit boot protocol.
    pub bzimage: PathBuf,
    /// Root filesystem as a tar archive, imported into Docker.
    pub rootfs_tar: PathBuf,
    /// Root filesystem as an ext4 disk image, the microVM's virtio-blk root.
    pub rootfs_ext4: PathBuf,
    /// Root filesystem as a directory tree, the `process` baseline's `chroot`.
    pub rootfs_tree: PathBuf,
    /// Docker image tag, `isobench-guest:<id>`.
    pub docker_tag: String,
}

/// Ports of the five Jupyter channels, the workload crate's type, so ports pass between the
/// backends and the Jupyter client without conversion.
pub use isobench_workload::ChannelPorts;

/// Inputs a backend needs to launch one trial.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// Run id; everything the backend creates carries it (label, name prefix).
    pub run_id: String,
    /// Trial number within the run, for names.
    pub trial: u32,
    /// The guest image.
    pub image: GuestImagePaths,
    /// HMAC-SHA256 key for the Jupyter connection, as the hex string ipykernel expects.
    pub key: String,
    /// Ports the Jupyter kernel binds. Fixed inside a guest or container; free loopback ports
    /// chosen by the caller for the `process` baseline.
    pub ports: ChannelPorts,
    /// Number of vCPUs (microVM) or CPU limit (container); the baseline ignores it.
    pub vcpus: u32,
    /// Memory limit in MiB: guest RAM for the microVM, cgroup limit for the container.
    pub memory_mib: u32,
    /// Time allowed from `t0` to a ready Jupyter kernel.
    pub ready_deadline: Duration,
}

/// A named instant of a trial's startup, taken on the host when the event arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseMark {
    /// Event name, such as `vcpus_running`, `container_started` or `init_started`.
    pub name: String,
    /// Host `CLOCK_MONOTONIC` time of arrival.
    pub at: Instant,
}

/// End of an instance's workload: its status and last output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit status or signal, in words (`exit status 1`, `killed by SIGKILL`, `out of memory`).
    pub status: String,
    /// Whether the exit was caused by the memory limit.
    pub oom_killed: bool,
    /// The last bytes of the workload's console or standard output, for error messages.
    pub last_output: String,
}

/// One memory sample of a running instance, each figure under its own definition; a figure
/// the backend cannot provide is `None`, never zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemorySample {
    /// Sum of PSS over every host process the trial owns, in bytes.
    pub host_pss_bytes: Option<u64>,
    /// VMM RSS minus its guest-RAM mappings, in bytes (microVM only).
    pub vmm_overhead_bytes: Option<u64>,
    /// Container cgroup usage minus inactive file cache, in bytes (container only).
    pub cgroup_working_set_bytes: Option<u64>,
    /// Raw container cgroup usage, in bytes, kept beside the working set.
    pub cgroup_usage_bytes: Option<u64>,
    /// `MemTotal` and `MemAvailable` as `/proc/meminfo` reads inside the workload, in bytes.
    pub guest_view: Option<GuestMeminfo>,
}

/// `/proc/meminfo` totals as seen from inside the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMeminfo {
    /// `MemTotal`, in bytes.
    pub mem_total_bytes: u64,
    /// `MemAvailable`, in bytes.
    pub mem_available_bytes: u64,
}

/// Failure of a backend operation, with the value involved and what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot run on this host; the message gives the reason and the fix.
    #[error("{backend:?} backend is unavailable: {reason}")]
    Unavailable {
        /// Which backend.
        backend: BackendKind,
        /// Why, and what to do.
        reason: String,
    },
    /// Launching failed before the workload started.
    #[error("launch failed: {0}")]
    Launch(String),
    /// The workload exited when it should still run.
    #[error("workload exited: {}", .0.status)]
    Exited(ExitInfo),
    /// Any other failure, with its message.
    #[error("{0}")]
    Other(String),
}

/// An isolation mechanism that launches the guest image's Jupyter kernel.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Returns the mechanism this backend uses.
    fn kind(&self) -> BackendKind;

    /// Name shown in results and the report, such as `docker` or `docker+crun`.
    fn name(&self) -> String;

    /// Launches one instance. `t0` is the trial's start point, taken by the caller
    /// immediately before this call, so every backend shares the same definition.
    async fn launch(
        &self,
        spec: &LaunchSpec,
        t0: Instant,
    ) -> Result<Box<dyn Instance>, BackendError>;

    /// Removes leftovers of earlier runs that carry isobench's label or name prefix.
    async fn sweep(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Removes what the backend keeps across the trials of a run, such as the `docker`
    /// backend's network; called once when the run ends, also after an error or Ctrl-C.
    async fn finish(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// One launched Jupyter kernel under a backend.
#[async_trait]
pub trait Instance: Send {
    /// Address the Jupyter kernel is reached at from the host.
    fn address(&self) -> Ipv4Addr;

    /// Ports the Jupyter kernel listens on at [`Instance::address`].
    fn ports(&self) -> ChannelPorts;

    /// Phase marks received so far, in order of arrival.
    fn marks(&self) -> Vec<PhaseMark>;

    /// Waits until the workload exits; used to report a kernel that dies before ready.
    ///
    /// Must be cancel-safe and callable again: the trial races it against each step in
    /// `select!`, drops it when the step wins, and calls it again for the next step.
    async fn wait_exit(&mut self) -> ExitInfo;

    /// Samples memory under every definition this backend supports.
    async fn memory(&mut self) -> Result<MemorySample, BackendError>;

    /// Stops the workload and removes everything this instance created.
    async fn stop(self: Box<Self>) -> Result<Option<ExitInfo>, BackendError>;
}
