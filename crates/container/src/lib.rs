//! Docker Engine driver that runs the isobench guest image as a container.
//!
//! Every call goes to the Engine API through `bollard`; nothing shells out to the `docker`
//! command-line client. A run takes these steps, in order:
//!
//! 1. [`Engine::connect`] reaches the daemon (`DOCKER_HOST` or the local Unix socket) and
//!    negotiates the API version; [`Engine::sweep`] removes leftovers of dead runs.
//! 2. [`Engine::ensure_image`] imports the guest image's `rootfs.tar` under its tag, streaming
//!    the file, with `/sbin/isobench-init` as the entrypoint.
//! 3. [`Engine::create_network`] creates the run's internal bridge network on a free subnet.
//! 4. [`Engine::launch`] starts one container per trial; [`Container::memory`] samples it and
//!    [`Container::stop`] removes it.
//! 5. [`Engine::remove_network`] removes the network when the run ends.
//!
//! Everything created carries the run id in the label [`RUN_ID_LABEL`] and its creating
//! process in [`OWNER_LABEL`], so a sweep can distinguish leftovers from resources in use.
//!
//! Limits: the daemon is reached over `unix://`, `tcp://` or `http://` only (no TLS, no
//! `ssh://`), networks are IPv4 only, and the owner check assumes every isobench process
//! shares one PID namespace with the others. The cgroup v2 formulas are unit-tested but were
//! only run against a real daemon on a cgroup v1 (hybrid) host.
#![deny(missing_docs)]

mod container;
mod engine;
mod error;
mod image;
mod launch;
mod markers;
mod memory;
mod network;
mod owner;
mod subnet;
mod sweep;

pub use container::{Container, ContainerExit, Mark};
pub use engine::{
    Engine, EngineVersion, DEFAULT_CALL_TIMEOUT, DEFAULT_HOST, DEFAULT_IMPORT_TIMEOUT,
};
pub use error::ContainerError;
pub use image::{ImageStatus, GUEST_ENTRYPOINT};
pub use launch::{JupyterParams, LaunchConfig, MIN_MEMORY_MIB, STOP_TIMEOUT_S};
pub use markers::MarkerScanner;
pub use memory::{CgroupMemory, CgroupVersion, EngineMemory, MemoryReading};
pub use network::{Network, NAME_PREFIX, SUBNET_POOL, SUBNET_PREFIX_LEN};
pub use owner::{OWNER_LABEL, RUN_ID_LABEL};
pub use subnet::{Ipv4Subnet, SubnetParseError};
pub use sweep::{SweepReport, SweepScope};
