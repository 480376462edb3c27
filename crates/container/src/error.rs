//! Errors of the Docker Engine driver.

use std::path::PathBuf;
use std::time::Duration;

/// Failure of a Docker Engine operation; each message names the value involved and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The daemon address (`DOCKER_HOST`) has a form the driver cannot connect to.
    #[error(
        "invalid Docker host {host:?}: expected unix:///PATH, tcp://HOST:PORT or http://HOST:PORT"
    )]
    InvalidHost {
        /// The rejected address.
        host: String,
        /// bollard's parse error.
        #[source]
        source: bollard::errors::Error,
    },

    /// The daemon did not accept the connection or did not respond to the version request.
    #[error("cannot reach the Docker engine at {host}; start it with scripts/setup-host")]
    EngineUnreachable {
        /// Socket or URL the driver tried.
        host: String,
        /// The connection failure.
        #[source]
        source: bollard::errors::Error,
    },

    /// A call got no response within its timeout, so the daemon is stopped or hung.
    #[error(
        "the Docker engine at {host} timed out on {operation} after {timeout:?}; \
         check that it is running (scripts/setup-host starts it)"
    )]
    Timeout {
        /// Socket or URL of the daemon.
        host: String,
        /// The call that timed out, with the object it concerned.
        operation: String,
        /// How long the driver waited.
        timeout: Duration,
    },

    /// The daemon returned an error response, or the connection broke during the call.
    #[error("Docker engine call {operation} failed")]
    Api {
        /// The call that failed, with the object it concerned.
        operation: String,
        /// The daemon's error or the transport failure.
        #[source]
        source: bollard::errors::Error,
    },

    /// The guest image's tag is not in the daemon's image store.
    #[error("image {tag} not found in the Docker engine; build it with `isobench image build`")]
    ImageMissing {
        /// The missing tag.
        tag: String,
    },

    /// An image tag without a repository or with a malformed tag part.
    #[error("invalid image tag {tag:?}: expected REPOSITORY:TAG, such as isobench-guest:0123abcd")]
    InvalidTag {
        /// The rejected tag.
        tag: String,
    },

    /// The root filesystem archive cannot be opened or read.
    #[error(
        "cannot read root filesystem archive {}; build it with `isobench image build`",
        path.display()
    )]
    RootfsTar {
        /// Path of the archive.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },

    /// The daemon rejected the root filesystem archive during the import.
    #[error("importing {} as image {tag} failed", path.display())]
    Import {
        /// Path of the archive.
        path: PathBuf,
        /// The tag being imported.
        tag: String,
        /// The daemon's error.
        #[source]
        source: bollard::errors::Error,
    },

    /// A run id that cannot be part of a Docker object name.
    #[error(
        "invalid run id {run_id:?}: expected at most 64 letters, digits, '_', '.' or '-', \
         starting with a letter or digit"
    )]
    InvalidRunId {
        /// The rejected run id.
        run_id: String,
    },

    /// A container or network of that name exists and is not this run's.
    #[error(
        "a {kind} named {name} already exists and belongs to another run or was started \
         already; remove it (docker rm -f / docker network rm) or use another run id"
    )]
    NameClash {
        /// `container` or `network`.
        kind: &'static str,
        /// The clashing name.
        name: String,
    },

    /// Every candidate subnet overlaps a host route, a host interface or a Docker network.
    #[error(
        "no free /{prefix_len} subnet in {pool}: every candidate overlaps a host route, \
         interface or Docker network; remove unused Docker networks (docker network prune)"
    )]
    NoFreeSubnet {
        /// Pool searched.
        pool: crate::subnet::Ipv4Subnet,
        /// Prefix length of each candidate.
        prefix_len: u8,
    },

    /// The host's routes or interface addresses could not be read.
    #[error("cannot read the host's IPv4 routes or interface addresses")]
    HostNetwork {
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },

    /// The network named in the launch configuration does not exist.
    #[error("Docker network {network} not found; create it with Engine::create_network first")]
    NetworkMissing {
        /// The missing network.
        network: String,
    },

    /// The CPU limit is zero.
    #[error("invalid CPU limit {vcpus}: expected at least 1 CPU")]
    InvalidCpuLimit {
        /// The rejected count.
        vcpus: u32,
    },

    /// The memory limit is below the engine's minimum.
    #[error("memory limit {memory_mib} MiB is below the Docker engine's minimum of {min_mib} MiB")]
    MemoryLimitTooSmall {
        /// The rejected limit.
        memory_mib: u32,
        /// The engine's minimum.
        min_mib: u32,
    },

    /// The daemon has no OCI runtime of that name.
    #[error(
        "unknown OCI runtime {runtime:?}: the Docker engine has {}; install it and add it to \
         the daemon's runtimes, or choose one of those",
        available.join(", ")
    )]
    UnknownRuntime {
        /// The requested runtime.
        runtime: String,
        /// Runtimes the daemon reports.
        available: Vec<String>,
    },

    /// The started container has no address on the run's network.
    #[error("container {container} has no IPv4 address on network {network}")]
    AddressMissing {
        /// The container's name.
        container: String,
        /// The network it should be on.
        network: String,
    },

    /// The container still runs where an exit was expected.
    #[error("container {container} is still running")]
    StillRunning {
        /// The container's name.
        container: String,
    },

    /// The engine reported no host PID for the container's first process, so its cgroup and
    /// processes cannot be found; the container is not running.
    #[error("container {container} has no host PID: it is not running")]
    NoInitPid {
        /// The container's name.
        container: String,
    },

    /// No memory cgroup was found for the container's process.
    #[error("no memory cgroup found for PID {pid} in /proc/{pid}/cgroup and /proc/self/mountinfo")]
    CgroupNotFound {
        /// The container's first process.
        pid: u32,
    },

    /// A cgroup file has a format the driver does not know.
    #[error("unexpected contents in {}: expected cgroup v1 or v2 memory figures", path.display())]
    CgroupFormat {
        /// The file.
        path: PathBuf,
    },

    /// A file under `/proc` or `/sys/fs/cgroup` could not be read.
    #[error("cannot read {}", path.display())]
    Proc {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
}

impl ContainerError {
    /// Returns the HTTP status of the daemon's error response, if this is an API error.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            ContainerError::Api { source, .. } | ContainerError::Import { source, .. } => {
                status_code(source)
            }
            _ => None,
        }
    }
}

/// Returns the HTTP status of a daemon error response.
pub(crate) fn status_code(error: &bollard::errors::Error) -> Option<u16> {
    match error {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}
