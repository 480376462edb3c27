//! Jupyter client side shared by every backend: connection parameters, ready detection, cells
//! and suites.
//!
//! A trial connects a [`KernelClient`] to the kernel a backend launched, waits until it is
//! ready ([`KernelClient::wait_ready`]), runs each [`Cell`] of a [`Suite`] with
//! [`KernelClient::run_cell`] (which checks every answer), and shuts the kernel down.
#![deny(missing_docs)]

pub mod client;
pub mod connection;
pub mod suite;

#[cfg(test)]
mod signature_tests;

pub use client::{
    CellOutcome, CellRun, ClientError, ControlHandle, ExecuteOutcome, ExecuteStatus, KernelClient,
    ReadyReport, LISTEN_PROBE_INTERVAL,
};
pub use connection::{is_address_in_use, ChannelPorts, ConnectionError, ConnectionInfo};
pub use suite::{Cell, Expected, MeminfoTotals, Metric, Suite, SuiteError, MEMINFO_CELL};
