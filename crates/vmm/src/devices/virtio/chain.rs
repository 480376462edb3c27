//! Validation of what the driver puts in a queue, before any device acts on it: the available
//! ring index, and every descriptor of a chain against guest RAM. A request is executed only
//! after its whole chain passed, so a bad descriptor never leaves guest memory half-written.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::VirtioError;

/// One validated descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// First guest byte.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device may write it (`VIRTQ_DESC_F_WRITE`).
    pub writable: bool,
}

/// Reasons a descriptor chain is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain has no descriptor.
    #[error("empty descriptor chain")]
    Empty,
    /// The chain loops, is longer than the queue, or points outside the descriptor table.
    #[error("descriptor chain does not terminate within the queue size")]
    Unterminated,
    /// A descriptor's buffer is not entirely in guest RAM.
    #[error("descriptor buffer {addr:#x}+{len:#x} is not in guest RAM")]
    OutOfRange {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
}

/// Checks the available ring's index: it may be at most the queue size ahead of the next
/// entry the device reads (virtio 1.2, 2.7.6), or the device would process entries twice.
pub fn check_avail_index(queue: &Queue, mem: &GuestMemoryMmap) -> Result<(), VirtioError> {
    let avail = queue.avail_idx(mem, Ordering::Acquire)?;
    let next = Wrapping(queue.next_avail());
    if (avail - next).0 > queue.size() {
        return Err(VirtioError::AvailIndexPastSize {
            avail: avail.0,
            next: next.0,
            size: queue.size(),
        });
    }
    Ok(())
}

/// Reads and validates every descriptor of `chain`.
pub fn collect(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
) -> Result<Vec<Desc>, ChainError> {
    let mut descs = Vec::new();
    let mut terminated = false;
    // The iterator stops after queue-size descriptors or at an index outside the table; a
    // chain cut off that way still has NEXT set on its last descriptor.
    for desc in chain {
        terminated = !desc.has_next();
        descs.push(Desc {
            addr: desc.addr(),
            len: desc.len(),
            writable: desc.is_write_only(),
        });
    }
    if descs.is_empty() {
        return Err(ChainError::Empty);
    }
    if !terminated {
        return Err(ChainError::Unterminated);
    }
    for desc in &descs {
        check_buffer(mem, desc.addr, desc.len)?;
    }
    Ok(descs)
}

/// Checks that `[addr, addr + len)` lies entirely in guest RAM. An empty buffer is accepted at
/// any address because nothing is accessed.
pub fn check_buffer(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> Result<(), ChainError> {
    if len == 0 {
        return Ok(());
    }
    let in_range =
        addr.checked_add(len as u64 - 1).is_some() && mem.check_range(addr, len as usize);
    if in_range {
        Ok(())
    } else {
        Err(ChainError::OutOfRange {
            addr: addr.raw_value(),
            len,
        })
    }
}

/// Test helpers that lay out a split queue in guest memory the way a driver would.
#[cfg(any(test, feature = "fuzzing"))]
pub mod testing {
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// Descriptor table address of [`queue`].
    pub const DESC_TABLE: u64 = 0x1000;
    /// Available ring address of [`queue`].
    pub const AVAIL_RING: u64 = 0x2000;
    /// Used ring address of [`queue`].
    pub const USED_RING: u64 = 0x3000;
    /// `VIRTQ_DESC_F_NEXT`.
    pub const F_NEXT: u16 = 1;
    /// `VIRTQ_DESC_F_WRITE`.
    pub const F_WRITE: u16 = 2;

    /// Guest memory of `size` bytes from address 0.
    pub fn memory(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    /// A ready queue of `size` entries at the fixed ring addresses.
    pub fn queue(size: u16) -> Queue {
        let mut queue = Queue::new(size).unwrap();
        queue.set_size(size);
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_ready(true);
        queue
    }

    /// Writes descriptor `index` of the table.
    pub fn write_desc(
        mem: &GuestMemoryMmap,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let base = DESC_TABLE + index as u64 * 16;
        mem.write_obj(addr, GuestAddress(base)).unwrap();
        mem.write_obj(len, GuestAddress(base + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(base + 12)).unwrap();
        mem.write_obj(next, GuestAddress(base + 14)).unwrap();
    }

    /// Publishes `heads` in the available ring and sets its index to `heads.len()`.
    pub fn publish(mem: &GuestMemoryMmap, heads: &[u16]) {
        for (slot, head) in heads.iter().enumerate() {
            mem.write_obj(*head, GuestAddress(AVAIL_RING + 4 + slot as u64 * 2))
                .unwrap();
        }
        set_avail_index(mem, heads.len() as u16);
    }

    /// Sets the available ring's index.
    pub fn set_avail_index(mem: &GuestMemoryMmap, index: u16) {
        mem.write_obj(index, GuestAddress(AVAIL_RING + 2)).unwrap();
    }

    /// The used ring's index.
    pub fn used_index(mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(USED_RING + 2)).unwrap()
    }

    /// Length the device reported in used element `slot`.
    pub fn used_len(mem: &GuestMemoryMmap, slot: u16) -> u32 {
        mem.read_obj(GuestAddress(USED_RING + 4 + slot as u64 * 8 + 4))
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestMemoryBackend};

    use super::testing::*;
    use super::*;

    const MEM_SIZE: usize = 0x10_0000;

    fn first_chain(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<Vec<Desc>, ChainError> {
        let chain = queue
            .pop_descriptor_chain(mem)
            .expect("a chain is available");
        collect(chain, mem)
    }

    #[test]
    fn descriptor_ending_at_last_byte_accepted() {
        let mem = memory(MEM_SIZE);
        let mut queue = queue(4);
        let len = 0x100;
        write_desc(&mem, 0, MEM_SIZE as u64 - len as u64, len, 0, 0);
        publish(&mem, &[0]);
        assert!(first_chain(&mut queue, &mem).is_ok());
    }

    #[test]
    fn descriptor_one_byte_past_ram_rejected() {
        let mem = memory(MEM_SIZE);
        let mut queue = queue(4);
        let len = 0x100;
        write_desc(&mem, 0, MEM_SIZE as u64 - len as u64 + 1, len, 0, 0);
        publish(&mem, &[0]);
        assert!(matches!(
            first_chain(&mut queue, &mem),
            Err(ChainError::OutOfRange { .. })
        ));
    }

    #[test]
    fn descriptor_larger_than_ram_rejected() {
        let mem = memory(MEM_SIZE);
        let mut queue = queue(4);
        write_desc(&mem, 0, 0, u32::MAX, F_WRITE, 0);
        publish(&mem, &[0]);
        assert!(matches!(
            first_chain(&mut queue, &mem),
            Err(ChainError::OutOfRange { .. })
        ));
    }

    #[test]
    fn descriptor_address_wrapping_rejected() {
        let mem = memory(MEM_SIZE);
        assert!(check_buffer(&mem, GuestAddress(u64::MAX), 2).is_err());
        assert!(check_buffer(&mem, GuestAddress(u64::MAX), 0).is_ok());
    }

    #[test]
    fn looping_chain_rejected() {
        let mem = memory(MEM_SIZE);
        let mut queue = queue(4);
        // 0 -> 1 -> 0 -> ...
        write_desc(&mem, 0, 0x8000, 16, F_NEXT, 1);
        write_desc(&mem, 1, 0x9000, 16, F_NEXT, 0);
        publish(&mem, &[0]);
        assert_eq!(first_chain(&mut queue, &mem), Err(ChainError::Unterminated));
    }

    #[test]
    fn chain_longer_than_queue_rejected() {
        let mem = memory(MEM_SIZE);
        let mut queue = queue(4);
        // Four descriptors that all have NEXT set, the last pointing past the table.
        for index in 0..4 {
            write_desc(&mem, index, 0x8000, 16, F_NEXT, index + 1);
        }
        publish(&mem, &[0]);
        assert_eq!(first_chain(&mut queue, &mem), Err(ChainError::Unterminated));
    }

    #[test]
    fn chain_filling_the_queue_accepted() {
        let mem = memory(MEM_SIZE);
        let mut queue = queue(4);
        for index in 0..3 {
            write_desc(&mem, index, 0x8000, 16, F_NEXT, index + 1);
        }
        write_desc(&mem, 3, 0x8000, 16, 0, 0);
        publish(&mem, &[0]);
        assert_eq!(first_chain(&mut queue, &mem).unwrap().len(), 4);
    }

    #[test]
    fn avail_index_past_queue_size_rejected() {
        let mem = memory(MEM_SIZE);
        let queue = queue(4);
        set_avail_index(&mem, 4);
        assert!(
            check_avail_index(&queue, &mem).is_ok(),
            "exactly the queue size"
        );
        set_avail_index(&mem, 5);
        assert!(matches!(
            check_avail_index(&queue, &mem),
            Err(VirtioError::AvailIndexPastSize { .. })
        ));
    }

    #[test]
    fn rejected_chain_leaves_memory_unchanged() {
        let mem = memory(MEM_SIZE);
        let mut queue = queue(4);
        write_desc(&mem, 0, 0x8000, 16, F_NEXT | F_WRITE, 1);
        write_desc(&mem, 1, 0, MEM_SIZE as u32 + 1, F_WRITE, 0);
        publish(&mem, &[0]);
        let before: Vec<u8> = (0..MEM_SIZE as u64)
            .step_by(4096)
            .map(|a| mem.read_obj::<u8>(GuestAddress(a)).unwrap())
            .collect();
        assert!(first_chain(&mut queue, &mem).is_err());
        let after: Vec<u8> = (0..MEM_SIZE as u64)
            .step_by(4096)
            .map(|a| mem.read_obj::<u8>(GuestAddress(a)).unwrap())
            .collect();
        assert_eq!(before, after);
        assert_eq!(mem.last_addr(), GuestAddress(MEM_SIZE as u64 - 1));
    }
}
