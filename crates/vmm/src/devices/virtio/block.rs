//! virtio-blk (virtio 1.2, section 5.2): the root disk, read-only unless asked otherwise, with
//! flush and get-id. Requests run synchronously on the event loop thread with `pread` and
//! `pwrite` straight into guest memory.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::chain::{self, ChainError, Desc};
use super::{DeviceEvent, VirtioDevice, VirtioError, VIRTIO_F_VERSION_1};

/// virtio device id of a block device.
pub const DEVICE_ID: u32 = 2;
/// Sector size of the virtio-blk interface.
pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZES: &[u16] = &[256];
/// `VIRTIO_BLK_F_RO`.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// `VIRTIO_BLK_F_FLUSH`.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Request types.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Write request.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Flush request.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Device id request.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error or malformed request.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: unsupported request type.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Length of the request header: type, reserved, sector.
pub const HEADER_SIZE: u32 = 16;
/// Length of the device id string.
pub const ID_SIZE: usize = 20;
/// `BLKGETSIZE64`, `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// Errors of opening the backing file.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The file or device could not be opened.
    #[error("cannot open root disk {path}")]
    Open {
        /// Path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Its size could not be read.
    #[error("cannot read the size of root disk {path}")]
    Size {
        /// Path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A parsed request, every buffer already checked against guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Request type from the header.
    pub kind: u32,
    /// First sector.
    pub sector: u64,
    /// Data buffers between header and status.
    pub data: Vec<Desc>,
    /// Address of the one-byte status.
    pub status: GuestAddress,
}

/// Reasons a request cannot run. A request with a status byte still completes, with an error status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain itself is invalid; nothing is written.
    #[error("invalid chain: {0}")]
    Chain(#[from] ChainError),
    /// No writable status descriptor at the end; nothing is written.
    #[error("request has no status descriptor")]
    NoStatus,
    /// The request is malformed but has a status byte.
    #[error("malformed request: {reason}")]
    Malformed {
        /// Address of its status byte.
        status: GuestAddress,
        /// Description of the problem.
        reason: &'static str,
    },
}

/// Parses a validated chain into a request (virtio 1.2, 5.2.6): a readable header of at least
/// 16 bytes, data buffers, and a writable status byte last.
pub fn parse_request(descs: &[Desc], mem: &GuestMemoryMmap) -> Result<Request, RequestError> {
    let status_desc = match descs {
        [_, .., last] if last.writable && last.len >= 1 => last,
        _ => return Err(RequestError::NoStatus),
    };
    // The status is the last byte of the last descriptor.
    let status = GuestAddress(status_desc.addr.0 + status_desc.len as u64 - 1);
    let malformed = |reason| RequestError::Malformed { status, reason };
    let header = &descs[0];
    if header.writable || header.len < HEADER_SIZE {
        return Err(malformed("header is writable or shorter than 16 bytes"));
    }
    let mut bytes = [0u8; HEADER_SIZE as usize];
    mem.read_slice(&mut bytes, header.addr)
        .map_err(|_| malformed("header is not readable"))?;
    let kind = u32::from_le_bytes(bytes[0..4].try_into().unwrap_or_default());
    let sector = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default());

    let mut data: Vec<Desc> = descs[1..descs.len() - 1].to_vec();
    // A status descriptor longer than one byte carries data before the status byte.
    if status_desc.len > 1 {
        data.push(Desc {
            addr: status_desc.addr,
            len: status_desc.len - 1,
            writable: true,
        });
    }
    let device_writes = matches!(kind, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID);
    if matches!(
        kind,
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_GET_ID
    ) && data.iter().any(|d| d.writable != device_writes)
    {
        return Err(malformed("data buffer has the wrong direction"));
    }
    Ok(Request {
        kind,
        sector,
        data,
        status,
    })
}

/// A virtio-blk device over a file or block device.
pub struct Block {
    disk: File,
    capacity_sectors: u64,
    read_only: bool,
    id: [u8; ID_SIZE],
    error_count: u64,
}

impl Block {
    /// Opens `path` (a regular file or a block device), read-only unless `writable`.
    pub fn open(path: &Path, writable: bool) -> Result<Self, BlockError> {
        let display = path.display().to_string();
        let disk = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: display.clone(),
                source,
            })?;
        let size = disk_size(&disk).map_err(|source| BlockError::Size {
            path: display,
            source,
        })?;
        let mut id = [0u8; ID_SIZE];
        let name = b"isobench-rootfs";
        id[..name.len()].copy_from_slice(name);
        Ok(Block {
            disk,
            capacity_sectors: size / SECTOR_SIZE,
            read_only: !writable,
            id,
            error_count: 0,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    fn execute(&mut self, request: &Request, mem: &GuestMemoryMmap) -> (u8, u32) {
        let data_len: u64 = request.data.iter().map(|d| d.len as u64).sum();
        match request.kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let is_read = request.kind == VIRTIO_BLK_T_IN;
                if data_len == 0 || data_len % SECTOR_SIZE != 0 {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let end = request
                    .sector
                    .checked_add(data_len / SECTOR_SIZE)
                    .filter(|end| *end <= self.capacity_sectors);
                if end.is_none() {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                if !is_read && self.read_only {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let mut offset = request.sector * SECTOR_SIZE;
                for desc in &request.data {
                    if let Err(error) = self.transfer(mem, desc, offset, is_read) {
                        tracing::warn!(%error, offset, "virtio-blk I/O failed");
                        return (VIRTIO_BLK_S_IOERR, 0);
                    }
                    offset += desc.len as u64;
                }
                (VIRTIO_BLK_S_OK, if is_read { data_len as u32 } else { 0 })
            }
            VIRTIO_BLK_T_FLUSH => {
                if !self.read_only && self.disk.sync_data().is_err() {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                (VIRTIO_BLK_S_OK, 0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let mut written = 0usize;
                for desc in &request.data {
                    let count = (desc.len as usize).min(ID_SIZE - written);
                    if count == 0 {
                        break;
                    }
                    if mem
                        .write_slice(&self.id[written..written + count], desc.addr)
                        .is_err()
                    {
                        return (VIRTIO_BLK_S_IOERR, 0);
                    }
                    written += count;
                }
                (VIRTIO_BLK_S_OK, written as u32)
            }
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }

    /// Moves one buffer between the disk at `offset` and guest memory.
    fn transfer(
        &self,
        mem: &GuestMemoryMmap,
        desc: &Desc,
        offset: u64,
        is_read: bool,
    ) -> io::Result<()> {
        let slice = mem
            .get_slice(desc.addr, desc.len as usize)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let guard = slice.ptr_guard_mut();
        let base = guard.as_ptr();
        let mut done = 0usize;
        while done < desc.len as usize {
            let remaining = desc.len as usize - done;
            let position = (offset + done as u64) as libc::off_t;
            let ptr = base.wrapping_add(done);
            let result = if is_read {
                // SAFETY: [base, base + len) is one mapped guest RAM slice (get_slice checked
                // it against the region), kept mapped by `guard`; pread writes at most
                // `remaining` bytes from `base + done`, inside that slice.
                unsafe { libc::pread(self.disk.as_raw_fd(), ptr.cast(), remaining, position) }
            } else {
                // SAFETY: as above; pwrite only reads those bytes.
                unsafe { libc::pwrite(self.disk.as_raw_fd(), ptr.cast(), remaining, position) }
            };
            match result {
                0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                n if n > 0 => done += n as usize,
                _ => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
            }
        }
        Ok(())
    }

    /// Processes every available chain of `queue`; returns whether any was completed.
    pub fn process_queue(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, VirtioError> {
        chain::check_avail_index(queue, mem)?;
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let used_len = match chain::collect(chain, mem)
                .map_err(RequestError::from)
                .and_then(|descs| parse_request(&descs, mem))
            {
                Ok(request) => {
                    let (status, written) = self.execute(&request, mem);
                    if status != VIRTIO_BLK_S_OK {
                        self.error_count += 1;
                    }
                    self.write_status(mem, request.status, status, written)
                }
                Err(RequestError::Malformed { status, reason }) => {
                    self.error_count += 1;
                    tracing::debug!(reason, "malformed virtio-blk request");
                    self.write_status(mem, status, VIRTIO_BLK_S_IOERR, 0)
                }
                Err(error) => {
                    // Nothing can be written back; completing the chain keeps the queue moving.
                    self.error_count += 1;
                    tracing::debug!(%error, "invalid virtio-blk chain");
                    0
                }
            };
            queue.add_used(mem, head, used_len)?;
            used = true;
        }
        Ok(used)
    }

    fn write_status(
        &mut self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        status: u8,
        written: u32,
    ) -> u32 {
        match mem.write_obj(status, addr) {
            Ok(()) => written + 1,
            Err(_) => {
                self.error_count += 1;
                written
            }
        }
    }
}

fn disk_size(disk: &File) -> io::Result<u64> {
    let metadata = disk.metadata()?;
    if metadata.file_type().is_block_device() {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
        let result = unsafe { libc::ioctl(disk.as_raw_fd(), BLKGETSIZE64, &mut size) };
        if result == 0 {
            return Ok(size);
        }
    }
    let mut file = disk;
    file.seek(SeekFrom::End(0))
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn available_features(&self) -> u64 {
        let mut features = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH;
        if self.read_only {
            features |= VIRTIO_BLK_F_RO;
        }
        features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Only `capacity` (le64 at offset 0) is provided; the rest reads as 0.
        let config = self.capacity_sectors.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| config.get(at as usize).copied())
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, _acked_features: u64) -> Result<(), VirtioError> {
        Ok(())
    }

    fn reset(&mut self) {}

    fn process(
        &mut self,
        event: DeviceEvent,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<bool, VirtioError> {
        match (event, queues.first_mut()) {
            (DeviceEvent::Queue(0), Some(queue)) if queue.ready() => self.process_queue(queue, mem),
            _ => Ok(false),
        }
    }

    fn error_count(&self) -> u64 {
        self.error_count
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::super::chain::testing::*;
    use super::*;

    const MEM_SIZE: usize = 0x10_0000;
    const HEADER_ADDR: u64 = 0x8000;
    const DATA_ADDR: u64 = 0x9000;
    const STATUS_ADDR: u64 = 0xa000;

    fn disk(sectors: u64) -> (Block, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "isobench-blk-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut file = File::create(&path).unwrap();
        let content: Vec<u8> = (0..sectors * SECTOR_SIZE)
            .map(|i| (i % 251) as u8)
            .collect();
        file.write_all(&content).unwrap();
        (Block::open(&path, false).unwrap(), path)
    }

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        mem.write_obj(kind, GuestAddress(HEADER_ADDR)).unwrap();
        mem.write_obj(0u32, GuestAddress(HEADER_ADDR + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(HEADER_ADDR + 8))
            .unwrap();
    }

    fn status(mem: &GuestMemoryMmap) -> u8 {
        mem.read_obj(GuestAddress(STATUS_ADDR)).unwrap()
    }

    #[test]
    fn block_read_copies_sectors() {
        let (mut block, path) = disk(8);
        let mem = memory(MEM_SIZE);
        let mut queue = queue(8);
        header(&mem, VIRTIO_BLK_T_IN, 1);
        write_desc(&mem, 0, HEADER_ADDR, HEADER_SIZE, F_NEXT, 1);
        write_desc(&mem, 1, DATA_ADDR, SECTOR_SIZE as u32, F_NEXT | F_WRITE, 2);
        write_desc(&mem, 2, STATUS_ADDR, 1, F_WRITE, 0);
        publish(&mem, &[0]);
        mem.write_obj(0xffu8, GuestAddress(STATUS_ADDR)).unwrap();
        assert!(block.process_queue(&mut queue, &mem).unwrap());
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        let first: u8 = mem.read_obj(GuestAddress(DATA_ADDR)).unwrap();
        assert_eq!(
            first,
            (SECTOR_SIZE % 251) as u8,
            "sector 1 starts at byte 512"
        );
        assert_eq!(used_len(&mem, 0), SECTOR_SIZE as u32 + 1);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn block_header_and_status_only_fails_with_ioerr() {
        let (mut block, path) = disk(8);
        let mem = memory(MEM_SIZE);
        let mut queue = queue(8);
        header(&mem, VIRTIO_BLK_T_IN, 0);
        write_desc(&mem, 0, HEADER_ADDR, HEADER_SIZE, F_NEXT, 1);
        write_desc(&mem, 1, STATUS_ADDR, 1, F_WRITE, 0);
        publish(&mem, &[0]);
        assert!(block.process_queue(&mut queue, &mem).unwrap());
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        assert_eq!(used_index(&mem), 1, "the queue moved on");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn block_header_only_completes_and_queue_moves() {
        let (mut block, path) = disk(8);
        let mem = memory(MEM_SIZE);
        let mut queue = queue(8);
        header(&mem, VIRTIO_BLK_T_IN, 0);
        write_desc(&mem, 0, HEADER_ADDR, HEADER_SIZE, 0, 0);
        // A second, valid request behind it.
        write_desc(&mem, 1, HEADER_ADDR, HEADER_SIZE, F_NEXT, 2);
        write_desc(&mem, 2, DATA_ADDR, SECTOR_SIZE as u32, F_NEXT | F_WRITE, 3);
        write_desc(&mem, 3, STATUS_ADDR, 1, F_WRITE, 0);
        publish(&mem, &[0, 1]);
        assert!(block.process_queue(&mut queue, &mem).unwrap());
        assert_eq!(used_index(&mem), 2);
        assert_eq!(
            used_len(&mem, 0),
            0,
            "nothing written for the header-only request"
        );
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK, "the request behind it ran");
        assert_eq!(block.error_count(), 1);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn block_write_to_read_only_disk_fails() {
        let (mut block, path) = disk(8);
        let mem = memory(MEM_SIZE);
        let mut queue = queue(8);
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        write_desc(&mem, 0, HEADER_ADDR, HEADER_SIZE, F_NEXT, 1);
        write_desc(&mem, 1, DATA_ADDR, SECTOR_SIZE as u32, F_NEXT, 2);
        write_desc(&mem, 2, STATUS_ADDR, 1, F_WRITE, 0);
        publish(&mem, &[0]);
        block.process_queue(&mut queue, &mem).unwrap();
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk[0], 0, "the disk is unchanged");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn block_read_past_capacity_fails() {
        let (mut block, path) = disk(8);
        let mem = memory(MEM_SIZE);
        let mut queue = queue(8);
        header(&mem, VIRTIO_BLK_T_IN, 8);
        write_desc(&mem, 0, HEADER_ADDR, HEADER_SIZE, F_NEXT, 1);
        write_desc(&mem, 1, DATA_ADDR, SECTOR_SIZE as u32, F_NEXT | F_WRITE, 2);
        write_desc(&mem, 2, STATUS_ADDR, 1, F_WRITE, 0);
        publish(&mem, &[0]);
        block.process_queue(&mut queue, &mem).unwrap();
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn block_data_larger_than_ram_leaves_memory_unchanged() {
        let (mut block, path) = disk(8);
        let mem = memory(MEM_SIZE);
        let mut queue = queue(8);
        header(&mem, VIRTIO_BLK_T_IN, 0);
        write_desc(&mem, 0, HEADER_ADDR, HEADER_SIZE, F_NEXT, 1);
        write_desc(&mem, 1, DATA_ADDR, MEM_SIZE as u32, F_NEXT | F_WRITE, 2);
        write_desc(&mem, 2, STATUS_ADDR, 1, F_WRITE, 0);
        publish(&mem, &[0]);
        mem.write_obj(0x5au8, GuestAddress(STATUS_ADDR)).unwrap();
        block.process_queue(&mut queue, &mem).unwrap();
        let data: u8 = mem.read_obj(GuestAddress(DATA_ADDR)).unwrap();
        assert_eq!(data, 0, "no byte was read into the buffer");
        assert_eq!(status(&mem), 0x5a, "not even the status was written");
        assert_eq!(used_index(&mem), 1);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn block_get_id_and_unsupported_type() {
        let (mut block, path) = disk(8);
        let mem = memory(MEM_SIZE);
        let mut queue = queue(8);
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        write_desc(&mem, 0, HEADER_ADDR, HEADER_SIZE, F_NEXT, 1);
        write_desc(&mem, 1, DATA_ADDR, ID_SIZE as u32, F_NEXT | F_WRITE, 2);
        write_desc(&mem, 2, STATUS_ADDR, 1, F_WRITE, 0);
        publish(&mem, &[0]);
        block.process_queue(&mut queue, &mem).unwrap();
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        let mut id = [0u8; 8];
        mem.read_slice(&mut id, GuestAddress(DATA_ADDR)).unwrap();
        assert_eq!(&id, b"isobench");

        header(&mem, 99, 0);
        mem.write_obj(1u16, GuestAddress(AVAIL_RING + 4 + 2))
            .unwrap();
        write_desc(&mem, 1, STATUS_ADDR, 1, F_WRITE, 0);
        set_avail_index(&mem, 2);
        // Head 0 again: header then (now) the status descriptor at index 1.
        mem.write_obj(0u16, GuestAddress(AVAIL_RING + 4 + 2))
            .unwrap();
        block.process_queue(&mut queue, &mem).unwrap();
        assert_eq!(status(&mem), VIRTIO_BLK_S_UNSUPP);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn block_capacity_from_file_size() {
        let (block, path) = disk(8);
        assert_eq!(block.capacity_sectors(), 8);
        let mut config = [0u8; 8];
        block.read_config(0, &mut config);
        assert_eq!(u64::from_le_bytes(config), 8);
        let mut past = [0xffu8; 4];
        block.read_config(u64::MAX - 1, &mut past);
        assert_eq!(past, [0; 4]);
        std::fs::remove_file(path).unwrap();
    }
}
