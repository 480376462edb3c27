//! Emulated devices and the buses that route port I/O and MMIO exits to them.

pub mod legacy;
pub mod serial;
pub mod virtio;

use std::sync::{Arc, Mutex};

/// A device on the port I/O or MMIO bus. `offset` is relative to the device's base address.
/// Implementations never panic on any offset or data length: the guest controls both.
pub trait BusDevice: Send {
    /// Handles a read of `data.len()` bytes at `offset`; `data` arrives zeroed.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors of building a bus.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    /// Two devices claim overlapping ranges.
    #[error("device range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

struct BusEntry {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Address ranges mapped to devices; one for port I/O and one for MMIO.
#[derive(Default)]
pub struct Bus {
    entries: Vec<BusEntry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Bus::default()
    }

    /// Maps `[base, base + len)` to `device`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), DevicesError> {
        let end = base
            .checked_add(len)
            .ok_or(DevicesError::Overlap { base, len })?;
        if len == 0
            || self
                .entries
                .iter()
                .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(DevicesError::Overlap { base, len });
        }
        self.entries.push(BusEntry { base, len, device });
        self.entries.sort_by_key(|e| e.base);
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&BusEntry, u64)> {
        let index = self
            .entries
            .partition_point(|e| e.base <= addr)
            .checked_sub(1)?;
        let entry = &self.entries[index];
        let offset = addr - entry.base;
        // The whole access must fall inside the device's range.
        (offset.checked_add(size as u64)? <= entry.len).then_some((entry, offset))
    }

    /// Routes a read; returns false when no device covers the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((entry, offset)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write; returns false when no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((entry, offset)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering it from a poisoned lock: a device's state stays usable even if
/// another thread panicked while holding it.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);

    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn bus_routes_by_range() {
        let mut bus = Bus::new();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Echo(1)))).unwrap();
        bus.insert(0x20, 4, Arc::new(Mutex::new(Echo(7)))).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x13, &mut data));
        assert_eq!(data[0], 4);
        assert!(bus.read(0x20, &mut data));
        assert_eq!(data[0], 7);
        assert!(!bus.read(0x14, &mut data), "one past the first range");
        assert!(!bus.read(0x0f, &mut data), "one before the first range");
    }

    #[test]
    fn bus_rejects_access_crossing_range_end() {
        let mut bus = Bus::new();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Echo(1)))).unwrap();
        let mut data = [0u8; 4];
        assert!(bus.read(0x10, &mut data));
        assert!(!bus.read(0x11, &mut data));
    }

    #[test]
    fn bus_rejects_overlap() {
        let mut bus = Bus::new();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Echo(1)))).unwrap();
        assert!(bus.insert(0x13, 4, Arc::new(Mutex::new(Echo(1)))).is_err());
        assert!(bus.insert(0x14, 4, Arc::new(Mutex::new(Echo(1)))).is_ok());
    }
}
