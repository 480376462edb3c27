//! virtio-net (virtio 1.2, section 5.1) over a TAP device: one receive and one transmit
//! queue, checksum and TCP segmentation offloads in both directions, the MAC address and the
//! TAP's MTU in the configuration space.
//!
//! Frames move through a bounce buffer. A received frame is read from the TAP first and only
//! then given a receive chain, so a guest that posts no buffers loses no frame: the frame is
//! kept until the driver posts a buffer.

use std::io;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::chain::{self, Desc};
use super::tap::{self, Tap};
use super::{DeviceEvent, VirtioDevice, VirtioError, VIRTIO_F_VERSION_1};

/// virtio device id of a network device.
pub const DEVICE_ID: u32 = 1;
/// Receive queue index.
pub const RX_INDEX: usize = 0;
/// Transmit queue index.
pub const TX_INDEX: usize = 1;
const QUEUE_SIZES: &[u16] = &[256, 256];

/// `VIRTIO_NET_F_CSUM`: the device accepts frames with a partial checksum.
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
/// `VIRTIO_NET_F_GUEST_CSUM`: the driver accepts frames with a partial checksum.
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
/// `VIRTIO_NET_F_MTU`: the configuration space carries the MTU.
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
/// `VIRTIO_NET_F_MAC`: the configuration space carries the MAC address.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// `VIRTIO_NET_F_GUEST_TSO4`: the driver accepts TCPv4 segments larger than the MTU.
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
/// `VIRTIO_NET_F_GUEST_TSO6`: the driver accepts TCPv6 segments larger than the MTU.
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
/// `VIRTIO_NET_F_GUEST_ECN`: the driver accepts TSO frames with ECN.
pub const VIRTIO_NET_F_GUEST_ECN: u64 = 1 << 9;
/// `VIRTIO_NET_F_GUEST_UFO`: the driver accepts UDP fragmentation offload frames.
pub const VIRTIO_NET_F_GUEST_UFO: u64 = 1 << 10;
/// `VIRTIO_NET_F_HOST_TSO4`: the device accepts TCPv4 segments larger than the MTU.
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
/// `VIRTIO_NET_F_HOST_TSO6`: the device accepts TCPv6 segments larger than the MTU.
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;

/// Largest frame either way: the virtio-net header and a 64 KiB segmentation offload frame
/// with its Ethernet and VLAN headers.
pub const MAX_FRAME_SIZE: usize = tap::VNET_HDR_SIZE + 65_535 + 14 + 4;

/// The `TUN_F_*` offloads that match the features the driver negotiated: the TAP may hand
/// the guest only the offloads its driver accepted.
pub fn offloads_for(acked_features: u64) -> u32 {
    let mut flags = 0;
    if acked_features & VIRTIO_NET_F_GUEST_CSUM != 0 {
        flags |= tap::TUN_F_CSUM;
        // The tun driver ignores segmentation offloads without checksum offload, and so
        // does virtio: GUEST_TSO* require GUEST_CSUM (virtio 1.2, 5.1.3.1).
        if acked_features & VIRTIO_NET_F_GUEST_TSO4 != 0 {
            flags |= tap::TUN_F_TSO4;
        }
        if acked_features & VIRTIO_NET_F_GUEST_TSO6 != 0 {
            flags |= tap::TUN_F_TSO6;
        }
        if acked_features & VIRTIO_NET_F_GUEST_ECN != 0 {
            flags |= tap::TUN_F_TSO_ECN;
        }
        if acked_features & VIRTIO_NET_F_GUEST_UFO != 0 {
            flags |= tap::TUN_F_UFO;
        }
    }
    flags
}

/// Writes `frame` across the writable buffers of `descs`; returns the bytes written, or
/// `None` when the buffers are too small or not writable.
pub fn write_frame(descs: &[Desc], frame: &[u8], mem: &GuestMemoryMmap) -> Option<u32> {
    let capacity: u64 = descs
        .iter()
        .filter(|d| d.writable)
        .map(|d| d.len as u64)
        .sum();
    if descs.iter().any(|d| !d.writable) || capacity < frame.len() as u64 {
        return None;
    }
    let mut rest = frame;
    for desc in descs {
        if rest.is_empty() {
            break;
        }
        let count = rest.len().min(desc.len as usize);
        mem.write_slice(&rest[..count], desc.addr).ok()?;
        rest = &rest[count..];
    }
    Some(frame.len() as u32)
}

/// Gathers the readable buffers of `descs` into `out`; false when the chain has a writable
/// buffer or the frame would exceed [`MAX_FRAME_SIZE`].
pub fn gather_frame(descs: &[Desc], mem: &GuestMemoryMmap, out: &mut Vec<u8>) -> bool {
    out.clear();
    let total: u64 = descs.iter().map(|d| d.len as u64).sum();
    if descs.iter().any(|d| d.writable) || total > MAX_FRAME_SIZE as u64 {
        return false;
    }
    for desc in descs {
        let start = out.len();
        out.resize(start + desc.len as usize, 0);
        if mem.read_slice(&mut out[start..], desc.addr).is_err() {
            return false;
        }
    }
    true
}

/// A virtio-net device over a TAP device.
pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    mtu: u16,
    rx_buf: Vec<u8>,
    /// Length of a frame read from the TAP and not yet given to the guest.
    rx_pending: Option<usize>,
    tx_buf: Vec<u8>,
    error_count: u64,
}

impl Net {
    /// A device over `tap` with `mac`; the MTU is read from the TAP.
    pub fn new(tap: Tap, mac: [u8; 6]) -> Result<Self, tap::TapError> {
        let mtu = tap.mtu()?;
        Ok(Net {
            tap,
            mac,
            mtu,
            rx_buf: vec![0; MAX_FRAME_SIZE],
            rx_pending: None,
            tx_buf: Vec::with_capacity(MAX_FRAME_SIZE),
            error_count: 0,
        })
    }

    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, VirtioError> {
        chain::check_avail_index(queue, mem)?;
        let mut used = false;
        loop {
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.tap.read_frame(&mut self.rx_buf) {
                    Ok(len) => len,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => {
                        self.error_count += 1;
                        tracing::warn!(%error, "reading from the TAP device failed");
                        break;
                    }
                },
            };
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                self.rx_pending = Some(len);
                break;
            };
            self.rx_pending = None;
            let head = chain.head_index();
            let written = match chain::collect(chain, mem) {
                Ok(descs) => write_frame(&descs, &self.rx_buf[..len], mem),
                Err(_) => None,
            };
            if written.is_none() {
                // The frame is dropped; the chain is returned empty.
                self.error_count += 1;
            }
            queue.add_used(mem, head, written.unwrap_or(0))?;
            used = true;
        }
        Ok(used)
    }

    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, VirtioError> {
        chain::check_avail_index(queue, mem)?;
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let valid = match chain::collect(chain, mem) {
                Ok(descs) => gather_frame(&descs, mem, &mut self.tx_buf),
                Err(_) => false,
            };
            if !valid || self.tx_buf.len() < tap::VNET_HDR_SIZE {
                self.error_count += 1;
            } else if let Err(error) = self.tap.write_frame(&self.tx_buf) {
                // A full TAP queue drops the frame, as a congested link would.
                if error.kind() != io::ErrorKind::WouldBlock {
                    self.error_count += 1;
                    tracing::debug!(%error, "writing to the TAP device failed");
                }
            }
            queue.add_used(mem, head, 0)?;
            used = true;
        }
        Ok(used)
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn available_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_NET_F_CSUM
            | VIRTIO_NET_F_GUEST_CSUM
            | VIRTIO_NET_F_GUEST_TSO4
            | VIRTIO_NET_F_GUEST_TSO6
            | VIRTIO_NET_F_HOST_TSO4
            | VIRTIO_NET_F_HOST_TSO6
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_MTU
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu (le16 each).
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac);
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| config.get(at as usize).copied())
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, acked_features: u64) -> Result<(), VirtioError> {
        self.tap
            .set_offload(offloads_for(acked_features))
            .map_err(|e| VirtioError::Tap(io::Error::other(e.to_string())))
    }

    fn reset(&mut self) {
        self.rx_pending = None;
        if let Err(error) = self.tap.set_offload(0) {
            tracing::warn!(%error, "cannot clear the TAP offloads");
        }
    }

    fn process(
        &mut self,
        event: DeviceEvent,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<bool, VirtioError> {
        let [rx, tx] = queues else {
            return Ok(false);
        };
        match event {
            DeviceEvent::Queue(TX_INDEX) if tx.ready() => self.transmit(tx, mem),
            DeviceEvent::Queue(RX_INDEX) | DeviceEvent::Backend if rx.ready() => {
                self.receive(rx, mem)
            }
            _ => Ok(false),
        }
    }

    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.tap.as_raw_fd())
    }

    fn error_count(&self) -> u64 {
        self.error_count
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::super::chain::testing::memory;
    use super::*;

    #[test]
    fn tap_offloads_equal_negotiated_features() {
        let cases = [
            (0, 0),
            (VIRTIO_NET_F_GUEST_CSUM, tap::TUN_F_CSUM),
            (
                VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4,
                tap::TUN_F_CSUM | tap::TUN_F_TSO4,
            ),
            (
                VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6,
                tap::TUN_F_CSUM | tap::TUN_F_TSO4 | tap::TUN_F_TSO6,
            ),
            // Segmentation without checksum offload is not a valid negotiation: nothing.
            (VIRTIO_NET_F_GUEST_TSO4, 0),
            // Host-side features describe what the device accepts, not what the TAP may send.
            (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4, 0),
        ];
        for (features, expected) in cases {
            assert_eq!(offloads_for(features), expected, "features {features:#x}");
        }
    }

    #[test]
    fn frame_larger_than_buffers_is_dropped() {
        let mem = memory(0x10000);
        let descs = [Desc {
            addr: GuestAddress(0x1000),
            len: 16,
            writable: true,
        }];
        assert_eq!(write_frame(&descs, &[1u8; 16], &mem), Some(16));
        assert_eq!(write_frame(&descs, &[1u8; 17], &mem), None);
    }

    #[test]
    fn frame_spans_buffers() {
        let mem = memory(0x10000);
        let descs = [
            Desc {
                addr: GuestAddress(0x1000),
                len: 4,
                writable: true,
            },
            Desc {
                addr: GuestAddress(0x2000),
                len: 4,
                writable: true,
            },
        ];
        write_frame(&descs, &[1, 2, 3, 4, 5, 6], &mem).unwrap();
        let mut out = Vec::new();
        let readable: Vec<Desc> = descs
            .iter()
            .map(|d| Desc {
                writable: false,
                ..*d
            })
            .collect();
        assert!(gather_frame(&readable, &mem, &mut out));
        assert_eq!(&out[..6], &[1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn oversized_transmit_frame_is_rejected() {
        let mem = memory(0x40000);
        let descs = [Desc {
            addr: GuestAddress(0),
            len: MAX_FRAME_SIZE as u32 + 1,
            writable: false,
        }];
        let mut out = Vec::new();
        assert!(!gather_frame(&descs, &mem, &mut out));
    }
}
