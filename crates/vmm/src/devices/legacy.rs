//! The i8042 controller, which only implements the CPU reset command, and the boot-marker
//! port the guest entrypoint writes its progress codes to.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use super::BusDevice;
use crate::events::{marker_name, monotonic_us, Event, EventSink, ExitReason, ShutdownReason};
use crate::vcpu::ExitLatch;

/// First port of the i8042 (data port 0x60); the command port is 0x64.
pub const I8042_PORT: u64 = 0x60;
/// Ports from the data port through the command port.
pub const I8042_PORTS: u64 = 5;
/// The boot-marker port.
pub const MARKER_PORT: u64 = 0x440;

/// Ends the VM with [`ShutdownReason::Reset`] when the guest pulses the reset line.
pub struct ResetTrigger(pub Arc<ExitLatch>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::Guest(ShutdownReason::Reset));
        Ok(())
    }
}

/// The i8042 on the port bus.
pub struct I8042(pub I8042Device<ResetTrigger>);

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 {
            data[0] = self.0.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 {
            let _ = self.0.write(offset as u8, data[0]);
        }
    }
}

/// Emits one `guest_marker` event per byte written, stamped when the VM exit is handled.
pub struct MarkerPort {
    events: Arc<EventSink>,
}

impl MarkerPort {
    /// A marker port emitting to `events`.
    pub fn new(events: Arc<EventSink>) -> Self {
        MarkerPort { events }
    }
}

impl BusDevice for MarkerPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let monotonic_us = monotonic_us();
        // Only the low byte counts: `outb` writes one byte, a wider write keeps its first.
        if let Some(&code) = data.first() {
            tracing::debug!(code, "guest marker");
            self.events.emit(&Event::GuestMarker {
                monotonic_us,
                code,
                name: marker_name(code).to_string(),
            });
        }
    }
}
