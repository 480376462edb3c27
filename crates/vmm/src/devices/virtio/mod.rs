//! virtio devices on the virtio-mmio transport (virtio 1.2, section 4.2), version 2 only.
//!
//! Each device implements [`VirtioDevice`]; [`mmio::MmioTransport`] owns its queues and
//! register state. Queue notifications arrive on ioeventfds and interrupts leave through an
//! irqfd, so the vCPU threads only see exits for register accesses.

pub mod block;
pub mod chain;
pub mod mmio;
pub mod net;
pub mod tap;

use std::os::fd::RawFd;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// `VIRTIO_F_VERSION_1`: the device follows virtio 1.x, not the legacy interface.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready to drive the device.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error and must be reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Errors of a virtio device. Each one is counted; a device that returns one from queue
/// processing is marked `DEVICE_NEEDS_RESET` and ignores its queues until the driver resets it.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// The available ring announces more chains than the queue holds.
    #[error("available ring index {avail} is more than {size} entries past {next}")]
    AvailIndexPastSize {
        /// The ring's index.
        avail: u16,
        /// The device's next index.
        next: u16,
        /// Queue size.
        size: u16,
    },
    /// The queue's rings are not in guest memory.
    #[error("queue {0} is not valid")]
    InvalidQueue(usize),
    /// Guest memory access failed on a ring.
    #[error("queue memory access failed: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// The TAP device failed.
    #[error("TAP device failed: {0}")]
    Tap(#[source] std::io::Error),
}

/// A source of work for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The driver notified queue `n`.
    Queue(usize),
    /// The device's backend file descriptor is readable.
    Backend,
}

/// A virtio device behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// virtio device id (2 block, 1 network).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers.
    fn available_features(&self) -> u64;
    /// Reads the device configuration space; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space; ignored by default.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with the negotiated features after `DRIVER_OK`.
    fn activate(&mut self, acked_features: u64) -> Result<(), VirtioError>;
    /// Returns the device to its state before negotiation.
    fn reset(&mut self);
    /// Processes `event`; returns whether a used ring changed and the driver should be
    /// interrupted.
    fn process(
        &mut self,
        event: DeviceEvent,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<bool, VirtioError>;
    /// File descriptor the event loop watches for [`DeviceEvent::Backend`] (edge-triggered).
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
    /// Count of malformed requests the device completed with an error or dropped.
    fn error_count(&self) -> u64;
}
