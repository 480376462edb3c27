//! The Jupyter side of a trial as the trial loop sees it: connect and wait for ready, read
//! `/proc/meminfo` inside the workload, run the suite, shut down.
//!
//! [`Workload`] is the seam between the trial loop and the Jupyter client, so the loop's
//! scheduling, failure and cleanup paths are testable without a real Jupyter kernel.

use std::net::Ipv4Addr;
use std::time::Instant;

use async_trait::async_trait;

use crate::backend::{ChannelPorts, GuestMeminfo};
use crate::results::CellRecord;

/// Failure of a Jupyter step.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WorkloadError {
    /// The Jupyter kernel did not become ready.
    #[error("Jupyter kernel not ready: {0}")]
    NotReady(String),
    /// A cell failed, timed out or returned a wrong answer.
    #[error("cell {cell:?} failed: {message}")]
    Cell {
        /// Cell name.
        cell: String,
        /// What went wrong, with the expected and the received answer.
        message: String,
    },
    /// Any other protocol or connection failure.
    #[error("{0}")]
    Protocol(String),
}

/// Where a launched Jupyter kernel listens and the key its messages are signed with.
#[derive(Debug, Clone)]
pub struct KernelTarget {
    /// Address reached from the host.
    pub address: Ipv4Addr,
    /// Channel ports at that address.
    pub ports: ChannelPorts,
    /// HMAC-SHA256 key, hex.
    pub key: String,
}

/// Host instants at which the Jupyter kernel became ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyTimes {
    /// Arrival of the `kernel_info_reply` whose parent matches the request.
    pub reply_at: Instant,
    /// Arrival of the first IOPub `status` message.
    pub first_status_at: Instant,
    /// Both have arrived: the later of the two.
    pub ready_at: Instant,
    /// `kernel_info_request` messages sent.
    pub attempts: u32,
}

/// Progress callback of [`KernelSession::run_suite`]: cell name, repetitions done, total.
pub type CellProgress<'a> = &'a (dyn Fn(&str, u32, u32) + Send + Sync);

/// The Jupyter client side of trials.
#[async_trait]
pub trait Workload: Send + Sync {
    /// Name of the suite this workload runs.
    fn suite_name(&self) -> String;

    /// Connects to the Jupyter kernel and waits until it is ready, sending
    /// `kernel_info_request` until both the matching reply and an IOPub `status` arrived, or
    /// `deadline` passed.
    async fn connect(
        &self,
        target: &KernelTarget,
        deadline: Instant,
    ) -> Result<Box<dyn KernelSession>, WorkloadError>;
}

/// A connected, ready Jupyter kernel.
#[async_trait]
pub trait KernelSession: Send {
    /// When the kernel became ready.
    fn ready(&self) -> ReadyTimes;

    /// Reads `MemTotal` and `MemAvailable` from `/proc/meminfo` inside the workload by running
    /// a cell.
    async fn guest_meminfo(&mut self) -> Result<GuestMeminfo, WorkloadError>;

    /// Runs every cell of the suite, checking each answer; a wrong answer is an error.
    async fn run_suite(
        &mut self,
        progress: CellProgress<'_>,
    ) -> Result<Vec<CellRecord>, WorkloadError>;

    /// Asks the Jupyter kernel to shut down.
    async fn shutdown(&mut self) -> Result<(), WorkloadError>;
}
