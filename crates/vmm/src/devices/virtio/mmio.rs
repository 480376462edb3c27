//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2): the register window the
//! guest driver programs, the queues it describes and the interrupt status it acknowledges.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{status, DeviceEvent, VirtioDevice, VirtioError, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;

/// Register offsets (virtio 1.2, table 4.1).
pub mod regs {
    /// `MagicValue`, reads "virt".
    pub const MAGIC_VALUE: u64 = 0x000;
    /// `Version`, 2 for the non-legacy interface.
    pub const VERSION: u64 = 0x004;
    /// `DeviceID`.
    pub const DEVICE_ID: u64 = 0x008;
    /// `VendorID`.
    pub const VENDOR_ID: u64 = 0x00c;
    /// `DeviceFeatures`.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// `DeviceFeaturesSel`.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// `DriverFeatures`.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// `DriverFeaturesSel`.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// `QueueSel`.
    pub const QUEUE_SEL: u64 = 0x030;
    /// `QueueNumMax`.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// `QueueNum`.
    pub const QUEUE_NUM: u64 = 0x038;
    /// `QueueReady`.
    pub const QUEUE_READY: u64 = 0x044;
    /// `QueueNotify`.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// `InterruptStatus`.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// `InterruptACK`.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// `Status`.
    pub const STATUS: u64 = 0x070;
    /// `QueueDescLow`.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// `QueueDescHigh`.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// `QueueDriverLow` (available ring).
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// `QueueDriverHigh`.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// `QueueDeviceLow` (used ring).
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// `QueueDeviceHigh`.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// `ConfigGeneration`.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// "virt" in little-endian.
const MAGIC: u32 = 0x7472_6976;
const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest ("QEMU"'s id is 0x554d4551; this one is "isob").
const VENDOR: u32 = 0x626f_7369;
/// `InterruptStatus` bit: a used ring changed.
const INTERRUPT_USED_RING: u32 = 1;
/// `InterruptStatus` bit: the configuration changed (also raised on `DEVICE_NEEDS_RESET`).
const INTERRUPT_CONFIG: u32 = 2;
/// Logged errors per device; the counter keeps counting after that.
const ERROR_LOG_LIMIT: u64 = 10;

/// One virtio device's register window, queues and interrupt line.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    irq: EventFd,
    interrupt_status: u32,
    device_features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    queue_select: u32,
    status: u32,
    activated: bool,
    error_count: u64,
}

impl MmioTransport {
    /// A transport for `device`, raising `irq` and with one new eventfd per queue.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: EventFd,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut queue_events = Vec::new();
        for &max in device.queue_max_sizes() {
            let queue = Queue::new(max).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?;
            queues.push(queue);
            queue_events.push(EventFd::new(libc::EFD_NONBLOCK)?);
        }
        Ok(MmioTransport {
            device,
            mem,
            queues,
            queue_events,
            irq,
            interrupt_status: 0,
            device_features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            queue_select: 0,
            status: 0,
            activated: false,
            error_count: 0,
        })
    }

    /// The per-queue notification eventfds, in queue order, for ioeventfd registration.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The device's backend file descriptor, if it has one.
    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.device.backend_fd()
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Errors counted by the transport and the device.
    pub fn error_count(&self) -> u64 {
        self.error_count + self.device.error_count()
    }

    /// Features the driver acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn record_error(&mut self, error: &VirtioError) {
        self.error_count += 1;
        if self.error_count <= ERROR_LOG_LIMIT {
            tracing::error!(
                device = self.device.device_type(),
                %error,
                "virtio device failed; it needs a reset"
            );
        }
    }

    fn fail(&mut self, error: VirtioError) {
        self.record_error(&error);
        self.status |= status::DEVICE_NEEDS_RESET;
        self.raise(INTERRUPT_CONFIG);
    }

    fn raise(&mut self, bits: u32) {
        self.interrupt_status |= bits;
        if let Err(error) = self.irq.write(1) {
            tracing::error!(%error, "cannot raise a virtio interrupt");
        }
    }

    /// Handles work for the device: a queue notification or backend readiness. Ignored
    /// until the driver sets `DRIVER_OK`, and after the device failed.
    pub fn process(&mut self, event: DeviceEvent) {
        if !self.activated || self.status & status::DEVICE_NEEDS_RESET != 0 {
            return;
        }
        match self.device.process(event, &mut self.queues, &self.mem) {
            Ok(true) => self.raise(INTERRUPT_USED_RING),
            Ok(false) => {}
            Err(error) => self.fail(error),
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn reset(&mut self) {
        self.device.reset();
        for queue in &mut self.queues {
            queue.reset();
        }
        self.interrupt_status = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.acked_features = 0;
        self.queue_select = 0;
        self.status = 0;
        self.activated = false;
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits until it resets the device (virtio 1.2, 3.1.1).
        if value & self.status != self.status {
            self.error_count += 1;
            return;
        }
        let added = value & !self.status;
        let mut value = value;
        if added & status::FEATURES_OK != 0 {
            let offered = self.device.available_features();
            let acceptable = self.acked_features & !offered == 0
                && self.acked_features & VIRTIO_F_VERSION_1 != 0;
            if !acceptable {
                // Leaving FEATURES_OK clear signals to the driver that the subset was rejected.
                value &= !status::FEATURES_OK;
            }
        }
        self.status = value;
        if added & status::DRIVER_OK != 0 && value & status::FEATURES_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        for (index, queue) in self.queues.iter().enumerate() {
            if queue.ready() && !queue.is_valid(&self.mem) {
                self.fail(VirtioError::InvalidQueue(index));
                return;
            }
        }
        match self.device.activate(self.acked_features) {
            Ok(()) => {
                self.activated = true;
                // Work may have been queued before DRIVER_OK; process it now.
                for index in 0..self.queues.len() {
                    self.process(DeviceEvent::Queue(index));
                }
            }
            Err(error) => self.fail(error),
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_select as usize);
        match offset {
            regs::MAGIC_VALUE => MAGIC,
            regs::VERSION => MMIO_VERSION,
            regs::DEVICE_ID => self.device.device_type(),
            regs::VENDOR_ID => VENDOR,
            regs::DEVICE_FEATURES => match self.device_features_select {
                0 => self.device.available_features() as u32,
                1 => (self.device.available_features() >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => queue.map_or(0, |q| q.max_size() as u32),
            regs::QUEUE_READY => queue.map_or(0, |q| q.ready() as u32),
            regs::INTERRUPT_STATUS => self.interrupt_status,
            regs::STATUS => self.status,
            regs::CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        // Queue layout may change only before the driver starts the device.
        let configurable = !self.activated;
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_select = value,
            regs::DRIVER_FEATURES_SEL => self.driver_features_select = value,
            regs::DRIVER_FEATURES if self.status & status::FEATURES_OK == 0 => {
                match self.driver_features_select {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | value as u64,
                    1 => {
                        self.acked_features =
                            (self.acked_features & 0xffff_ffff) | ((value as u64) << 32)
                    }
                    _ => self.error_count += 1,
                }
            }
            regs::QUEUE_SEL => self.queue_select = value,
            regs::QUEUE_NUM if configurable => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_size(value as u16);
                }
            }
            regs::QUEUE_READY if configurable => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_ready(value == 1);
                }
            }
            regs::QUEUE_DESC_LOW if configurable => {
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_address(Some(value), None)
                }
            }
            regs::QUEUE_DESC_HIGH if configurable => {
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_address(None, Some(value))
                }
            }
            regs::QUEUE_DRIVER_LOW if configurable => {
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_address(Some(value), None)
                }
            }
            regs::QUEUE_DRIVER_HIGH if configurable => {
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_address(None, Some(value))
                }
            }
            regs::QUEUE_DEVICE_LOW if configurable => {
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_address(Some(value), None)
                }
            }
            regs::QUEUE_DEVICE_HIGH if configurable => {
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_address(None, Some(value))
                }
            }
            regs::QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd; this path serves a notification that did
                // not match it, through the same eventfd.
                match self.queue_events.get(value as usize) {
                    Some(event) => {
                        let _ = event.write(1);
                    }
                    None => self.error_count += 1,
                }
            }
            regs::INTERRUPT_ACK => self.interrupt_status &= !value,
            regs::STATUS => self.write_status(value),
            _ => self.error_count += 1,
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= regs::CONFIG {
            self.device.read_config(offset - regs::CONFIG, data);
        } else if data.len() == 4 && offset % 4 == 0 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            // Registers below the configuration space are 32 bits wide (virtio 1.2, 4.2.2.2).
            data.fill(0);
            self.error_count += 1;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= regs::CONFIG {
            self.device.write_config(offset - regs::CONFIG, data);
        } else if let (4, Ok(bytes)) = (data.len(), <[u8; 4]>::try_from(data)) {
            if offset % 4 == 0 {
                self.write_register(offset, u32::from_le_bytes(bytes));
            } else {
                self.error_count += 1;
            }
        } else {
            self.error_count += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::block::Block;
    use super::super::chain::testing;
    use super::*;

    fn transport() -> (MmioTransport, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "isobench-mmio-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let block = Block::open(&path, false).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let transport =
            MmioTransport::new(Box::new(block), testing::memory(0x10_0000), irq).unwrap();
        (transport, path)
    }

    fn read32(transport: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(transport: &mut MmioTransport, offset: u64, value: u32) {
        transport.write(offset, &value.to_le_bytes());
    }

    /// Programs queue 0 at the test ring addresses and sets DRIVER_OK.
    fn start_driver(transport: &mut MmioTransport, features_high: u32) {
        write32(
            transport,
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER,
        );
        write32(transport, regs::DRIVER_FEATURES_SEL, 1);
        write32(transport, regs::DRIVER_FEATURES, features_high);
        let negotiating = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        write32(transport, regs::STATUS, negotiating);
        write32(transport, regs::QUEUE_SEL, 0);
        write32(transport, regs::QUEUE_NUM, 8);
        write32(transport, regs::QUEUE_DESC_LOW, testing::DESC_TABLE as u32);
        write32(
            transport,
            regs::QUEUE_DRIVER_LOW,
            testing::AVAIL_RING as u32,
        );
        write32(transport, regs::QUEUE_DEVICE_LOW, testing::USED_RING as u32);
        write32(transport, regs::QUEUE_READY, 1);
        let status = read32(transport, regs::STATUS);
        write32(transport, regs::STATUS, status | status::DRIVER_OK);
    }

    #[test]
    fn mmio_identifies_version_2_block_device() {
        let (mut transport, path) = transport();
        assert_eq!(read32(&mut transport, regs::MAGIC_VALUE), MAGIC);
        assert_eq!(read32(&mut transport, regs::VERSION), 2);
        assert_eq!(read32(&mut transport, regs::DEVICE_ID), 2);
        write32(&mut transport, regs::DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            read32(&mut transport, regs::DEVICE_FEATURES),
            1,
            "VERSION_1 is bit 32"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn mmio_rejects_features_without_version_1() {
        let (mut transport, path) = transport();
        start_driver(&mut transport, 0);
        assert_eq!(transport.status() & status::FEATURES_OK, 0);
        assert_eq!(transport.status() & status::DRIVER_OK, status::DRIVER_OK);
        transport.process(DeviceEvent::Queue(0));
        assert_eq!(
            testing::used_index(&transport.mem),
            0,
            "an unstarted device does nothing"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn mmio_activates_with_version_1() {
        let (mut transport, path) = transport();
        start_driver(&mut transport, 1);
        assert_ne!(transport.status() & status::FEATURES_OK, 0);
        assert_eq!(transport.acked_features(), VIRTIO_F_VERSION_1);
        assert_eq!(transport.status() & status::DEVICE_NEEDS_RESET, 0);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn mmio_avail_index_past_size_fails_device() {
        let (mut transport, path) = transport();
        start_driver(&mut transport, 1);
        testing::set_avail_index(&transport.mem, 9);
        transport.process(DeviceEvent::Queue(0));
        assert_ne!(transport.status() & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(
            read32(&mut transport, regs::INTERRUPT_STATUS) & INTERRUPT_CONFIG,
            INTERRUPT_CONFIG
        );
        write32(&mut transport, regs::STATUS, 0);
        assert_eq!(transport.status(), 0, "a reset clears the failure");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn mmio_survives_odd_accesses() {
        let (mut transport, path) = transport();
        let before = transport.error_count();
        let mut wide = [0xffu8; 8];
        transport.read(regs::MAGIC_VALUE, &mut wide);
        assert_eq!(wide, [0; 8], "an 8-byte register read returns zeros");
        transport.write(regs::STATUS + 1, &[1, 2]);
        write32(&mut transport, regs::QUEUE_SEL, 77);
        write32(&mut transport, regs::QUEUE_NUM, 8);
        assert_eq!(
            read32(&mut transport, regs::QUEUE_NUM_MAX),
            0,
            "no queue 77"
        );
        write32(&mut transport, regs::QUEUE_NOTIFY, 1000);
        let mut config = [0u8; 4];
        transport.read(0xffc, &mut config);
        assert!(transport.error_count() > before);
        std::fs::remove_file(path).unwrap();
    }
}
