//! Feeds arbitrary guest memory and register writes to the virtio-mmio transport and the
//! virtio-blk and virtio-net request parsers: whatever the guest writes, the VMM must neither
//! panic nor hang.
//!
//! Input layout: byte 0 picks the queue size (1 << (b % 5), so 1 to 16 entries). Then come the
//! descriptor table (16 bytes per entry), the available ring (4 + 2 bytes per entry) and up to
//! `BUFFER_SIZE` bytes of buffers at `BUFFER_ADDR`, each written where `chain::testing` places
//! it. The rest is a list of 7-byte register accesses (offset le16, value le32, flags) on a
//! virtio-blk device's MMIO window.

#![no_main]

use std::sync::OnceLock;

use isobench_vmm::devices::virtio::block::{parse_request, Block};
use isobench_vmm::devices::virtio::chain::{self, testing};
use isobench_vmm::devices::virtio::mmio::MmioTransport;
use isobench_vmm::devices::virtio::net::{gather_frame, write_frame};
use isobench_vmm::devices::BusDevice;
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// Guest memory of every run: the rings at 0x1000-0x3fff and the buffers after them.
const MEMORY_SIZE: usize = 0x6000;
/// Guest address of the buffer bytes.
const BUFFER_ADDR: u64 = 0x4000;
/// Bytes of buffers taken from the input.
const BUFFER_SIZE: usize = 0x2000;

/// Splits `count` bytes off the front of `input`, or fewer when it is shorter.
fn take<'a>(input: &mut &'a [u8], count: usize) -> &'a [u8] {
    let (head, tail) = input.split_at(input.len().min(count));
    *input = tail;
    head
}

/// Path of a small disk image that exists only while the fuzzer runs: the file is unlinked
/// right after creation and reached through `/proc/self/fd`, so no run leaves it behind.
fn disk_path() -> &'static std::path::Path {
    static DISK: OnceLock<(std::fs::File, std::path::PathBuf)> = OnceLock::new();
    let (_, path) = DISK.get_or_init(|| {
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join(format!("isobench-fuzz-disk-{}", std::process::id()));
        std::fs::write(&path, vec![0x5a; 8 * 512]).expect("the fuzz disk is writable");
        let file = std::fs::File::open(&path).expect("the fuzz disk opens");
        std::fs::remove_file(&path).expect("the fuzz disk is removable");
        let fd_path = std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        (file, fd_path)
    });
    path
}

fuzz_target!(|data: &[u8]| {
    let Some((&size_byte, rest)) = data.split_first() else {
        return;
    };
    let queue_size = 1u16 << (size_byte % 5);
    let mut input = rest;
    let mem = testing::memory(MEMORY_SIZE);
    let layout = [
        (testing::DESC_TABLE, 16 * queue_size as usize),
        (testing::AVAIL_RING, 4 + 2 * queue_size as usize),
        (BUFFER_ADDR, BUFFER_SIZE),
    ];
    for (addr, len) in layout {
        let bytes = take(&mut input, len);
        mem.write_slice(bytes, GuestAddress(addr))
            .expect("fits guest memory");
    }
    let accesses = input;

    // Queue processing straight on a device.
    let mut block = Block::open(disk_path(), false).expect("the fuzz disk opens");
    let mut queue = testing::queue(queue_size);
    let _ = block.process_queue(&mut queue, &mem);

    // Chain parsing and the frame helpers on the same memory.
    let mut queue = testing::queue(queue_size);
    if chain::check_avail_index(&queue, &mem).is_ok() {
        let mut frame = Vec::new();
        for _ in 0..queue_size {
            let Some(head) = queue.pop_descriptor_chain(&mem) else {
                break;
            };
            if let Ok(descs) = chain::collect(head, &mem) {
                let _ = parse_request(&descs, &mem);
                let _ = gather_frame(&descs, &mem, &mut frame);
                let _ = write_frame(&descs, &frame, &mem);
            }
        }
    }

    // Register accesses on the MMIO transport, queue notifications included.
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let device = Block::open(disk_path(), false).expect("the fuzz disk opens");
    let mut transport = MmioTransport::new(Box::new(device), mem.clone(), irq).expect("transport");
    for access in accesses.chunks_exact(7) {
        let offset = u16::from_le_bytes([access[0], access[1]]) as u64 % 0x1000;
        let value = [access[2], access[3], access[4], access[5]];
        let flags = access[6];
        let width = [1usize, 2, 4, 8][(flags >> 1) as usize % 4];
        let mut buffer = [0u8; 8];
        buffer[..4].copy_from_slice(&value);
        if flags & 1 == 1 {
            transport.write(offset, &buffer[..width]);
        } else {
            transport.read(offset, &mut buffer[..width]);
        }
        if flags & 0x80 != 0 {
            transport.process(isobench_vmm::devices::virtio::DeviceEvent::Queue(0));
        }
    }
});
