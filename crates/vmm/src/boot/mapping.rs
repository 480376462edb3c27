//! Loading an ELF guest kernel by mapping its `PT_LOAD` segments from the file into guest RAM
//! (`MAP_PRIVATE | MAP_FIXED`) instead of copying them.
//!
//! Copying a 9 MB vmlinux into lazily faulted anonymous pages is the slowest step of setup:
//! each 4 KiB page takes a fault, a zeroing and a copy. Mapping the file costs a few system
//! calls. The guest then faults the kernel's pages in from the page cache as it touches them,
//! and a page the guest writes becomes a private copy. The guest sees the same bytes as with
//! the copying loader: whole pages inside a segment's file range are mapped, and the partial
//! first and last pages are copied, so the bytes past `p_filesz` (the BSS) stay the zeroes of
//! fresh anonymous memory, as they do with linux-loader, which does not write them either.
//!
//! The result mirrors linux-loader 0.14's `Elf::load` with no kernel offset: its header
//! checks, its `kernel_end` and its PVH note lookup. Whenever this module cannot show that
//! mapping gives the same guest memory (a segment whose file offset and guest address differ
//! modulo the page size, overlapping segments, a segment across two guest RAM regions, a file
//! shorter than its segments, a header linux-loader would reject), it returns
//! [`Mapped::NotMappable`] and the caller copies with linux-loader, which also produces the
//! error message for a bad image.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::KernelLoaderResult;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::layout::HIMEM_START;

/// Errors of mapping a guest kernel's segments, after the mapping has started.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// Reading a partial page from the kernel file failed.
    #[error("cannot read {len} bytes at offset {offset:#x} of the guest kernel")]
    Read {
        /// File offset.
        offset: u64,
        /// Bytes requested.
        len: usize,
        /// The read error.
        #[source]
        source: io::Error,
    },
    /// Writing a partial page into guest memory failed.
    #[error("cannot write the guest kernel at guest address {addr:#x}")]
    Write {
        /// Guest physical address.
        addr: u64,
        /// The guest memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// `mmap` of a file range over guest RAM failed.
    #[error("cannot map {len} bytes of the guest kernel at guest address {addr:#x}")]
    Map {
        /// Guest physical address.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// The mmap error.
        #[source]
        source: io::Error,
    },
}

/// Page size of the host mappings.
const PAGE_SIZE: u64 = 4096;
/// `PT_LOAD` and `PT_NOTE` program header types (ELF gABI).
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// Sizes of `Elf64_Ehdr`, `Elf64_Phdr` and `Elf64_Nhdr`.
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const NHDR_SIZE: u64 = 12;
/// Note type of the PVH entry (`XEN_ELFNOTE_PHYS32_ENTRY`) and its owner name.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const XEN_NOTE_NAME: [u8; 4] = *b"Xen\0";

/// One program header, with the fields the loader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// `p_type`.
    pub kind: u32,
    /// `p_offset`: where the segment starts in the file.
    pub offset: u64,
    /// `p_paddr`: where the segment is loaded in guest physical memory.
    pub paddr: u64,
    /// `p_filesz`: bytes taken from the file.
    pub filesz: u64,
    /// `p_memsz`: bytes the segment occupies in memory; the rest after `filesz` is zero.
    pub memsz: u64,
}

/// The parts of an ELF image that loading needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfLayout {
    /// `e_entry`.
    pub entry: u64,
    /// Program headers in file order.
    pub segments: Vec<Segment>,
}

/// Outcome of [`map_elf`].
#[derive(Debug)]
pub enum Mapped {
    /// The kernel is in guest RAM; the same result linux-loader would return.
    Loaded(KernelLoaderResult),
    /// Mapping cannot be shown to give the same guest memory, for the reason in the text.
    NotMappable(String),
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
}

/// Reads the ELF header and program headers of `file`, applying linux-loader's header checks.
/// Returns `Err` with the reason when linux-loader would reject the header.
pub fn read_layout(file: &File) -> Result<ElfLayout, String> {
    let mut ehdr = [0u8; EHDR_SIZE];
    file.read_exact_at(&mut ehdr, 0)
        .map_err(|e| format!("cannot read the ELF header: {e}"))?;
    if ehdr[..4] != *b"\x7fELF" {
        return Err("no ELF magic".into());
    }
    // EI_DATA: 1 is ELFDATA2LSB.
    if ehdr[5] != 1 {
        return Err("not a little-endian ELF file".into());
    }
    let entry = u64_at(&ehdr, 24);
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u16_at(&ehdr, 54) as usize;
    let phnum = u16_at(&ehdr, 56) as usize;
    if phentsize != PHDR_SIZE {
        return Err(format!(
            "program header size {phentsize} is not {PHDR_SIZE}"
        ));
    }
    if phoff < EHDR_SIZE as u64 {
        return Err(format!(
            "program header offset {phoff} is inside the ELF header"
        ));
    }
    if entry < HIMEM_START {
        return Err(format!("entry {entry:#x} is below {HIMEM_START:#x}"));
    }
    let mut table = vec![0u8; phnum * PHDR_SIZE];
    file.read_exact_at(&mut table, phoff)
        .map_err(|e| format!("cannot read the program headers: {e}"))?;
    let segments = table
        .chunks_exact(PHDR_SIZE)
        .map(|phdr| Segment {
            kind: u32_at(phdr, 0),
            offset: u64_at(phdr, 8),
            paddr: u64_at(phdr, 24),
            filesz: u64_at(phdr, 32),
            memsz: u64_at(phdr, 40),
        })
        .collect();
    Ok(ElfLayout { entry, segments })
}

fn align_up_4(value: u64) -> u64 {
    (value + 3) & !3
}

/// Looks up the PVH entry note in one `PT_NOTE` segment, walking the notes as linux-loader
/// does.
fn find_pvh_entry(file: &File, note: &Segment) -> Result<PvhBootCapability, String> {
    let read_error = |e: io::Error| format!("cannot read the ELF notes: {e}");
    let mut position = 0u64;
    while position < note.filesz {
        let mut nhdr = [0u8; NHDR_SIZE as usize];
        file.read_exact_at(&mut nhdr, note.offset + position)
            .map_err(read_error)?;
        let namesz = u32_at(&nhdr, 0) as u64;
        let descsz = u32_at(&nhdr, 4) as u64;
        let kind = u32_at(&nhdr, 8);
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && namesz == XEN_NOTE_NAME.len() as u64 {
            let mut name = [0u8; 4];
            file.read_exact_at(&mut name, note.offset + position + NHDR_SIZE)
                .map_err(read_error)?;
            if name == XEN_NOTE_NAME {
                if descsz < 4 {
                    return Err(format!("PVH note descriptor of {descsz} bytes"));
                }
                let mut desc = [0u8; 4];
                let desc_at = note.offset + position + NHDR_SIZE + align_up_4(namesz);
                file.read_exact_at(&mut desc, desc_at).map_err(read_error)?;
                let entry = u32::from_le_bytes(desc) as u64;
                return Ok(PvhBootCapability::PvhEntryPresent(GuestAddress(entry)));
            }
        }
        position += NHDR_SIZE + align_up_4(namesz) + align_up_4(descsz);
    }
    Ok(PvhBootCapability::PvhEntryNotPresent)
}

/// Checks that mapping `layout` into `mem` gives the same guest memory as copying it.
fn check_mappable(layout: &ElfLayout, mem: &GuestMemoryMmap, file_size: u64) -> Result<(), String> {
    let loads: Vec<&Segment> = layout
        .segments
        .iter()
        .filter(|s| s.kind == PT_LOAD && s.filesz > 0)
        .collect();
    for (index, segment) in loads.iter().enumerate() {
        let file_end = segment.offset.checked_add(segment.filesz);
        if file_end.is_none_or(|end| end > file_size) {
            return Err(format!("segment {index} ends past the end of the file"));
        }
        if segment.offset % PAGE_SIZE != segment.paddr % PAGE_SIZE {
            return Err(format!(
                "segment {index}: file offset {:#x} and guest address {:#x} differ modulo the \
                 page size",
                segment.offset, segment.paddr
            ));
        }
        let in_one_region = mem
            .find_region(GuestAddress(segment.paddr))
            .is_some_and(|r| {
                segment.paddr + segment.memsz.max(segment.filesz)
                    <= r.start_addr().0 + GuestMemoryRegion::len(r)
            });
        if !in_one_region {
            return Err(format!(
                "segment {index} at {:#x} is not inside one guest RAM region",
                segment.paddr
            ));
        }
        for other in &loads[..index] {
            let disjoint = segment.paddr + segment.filesz <= other.paddr
                || other.paddr + other.filesz <= segment.paddr;
            if !disjoint {
                return Err(format!("segment {index} overlaps an earlier segment"));
            }
        }
    }
    Ok(())
}

/// Copies `len` bytes at file offset `offset` to guest address `addr`.
fn copy_range(
    mem: &GuestMemoryMmap,
    file: &File,
    offset: u64,
    addr: u64,
    len: usize,
) -> Result<(), MappingError> {
    if len == 0 {
        return Ok(());
    }
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|source| MappingError::Read {
            offset,
            len,
            source,
        })?;
    mem.write_slice(&buf, GuestAddress(addr))
        .map_err(|source| MappingError::Write { addr, source })
}

/// Maps the page-aligned range `[addr, addr + len)` of guest RAM to the file at `offset`.
fn map_range(
    mem: &GuestMemoryMmap,
    file: &File,
    offset: u64,
    addr: u64,
    len: u64,
) -> Result<(), MappingError> {
    let map_error = |source| MappingError::Map { addr, len, source };
    let host = mem
        .get_host_address(GuestAddress(addr))
        .map_err(|e| map_error(io::Error::other(e.to_string())))?;
    // SAFETY: [host, host + len) lies inside one mapping owned by `mem` (checked by
    // `check_mappable`), so MAP_FIXED replaces only guest RAM pages, with the same protection
    // and MAP_PRIVATE sharing. The old pages were never written, because `mem` is fresh and
    // no vCPU runs yet. `mem` unmaps its whole range when dropped, including this part. The
    // file range lies inside the file (checked against its size under the lease).
    let mapped = unsafe {
        libc::mmap(
            host.cast(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if mapped == libc::MAP_FAILED {
        return Err(map_error(io::Error::last_os_error()));
    }
    Ok(())
}

/// Maps or copies one `PT_LOAD` segment, whose file offset and guest address are congruent
/// modulo the page size.
fn load_segment(mem: &GuestMemoryMmap, file: &File, segment: &Segment) -> Result<(), MappingError> {
    let start = segment.paddr;
    let end = segment.paddr + segment.filesz;
    let whole_start = start.next_multiple_of(PAGE_SIZE);
    let whole_end = end / PAGE_SIZE * PAGE_SIZE;
    if whole_end <= whole_start {
        // No whole page: the segment fits in at most two partial pages.
        return copy_range(mem, file, segment.offset, start, segment.filesz as usize);
    }
    let file_at = |addr: u64| segment.offset + (addr - start);
    copy_range(
        mem,
        file,
        segment.offset,
        start,
        (whole_start - start) as usize,
    )?;
    map_range(
        mem,
        file,
        file_at(whole_start),
        whole_start,
        whole_end - whole_start,
    )?;
    copy_range(
        mem,
        file,
        file_at(whole_end),
        whole_end,
        (end - whole_end) as usize,
    )
}

/// Maps the ELF kernel `file`, of `file_size` bytes, into the fresh guest RAM `mem`. The
/// caller must keep the file from changing while it is mapped ([`super::lease`]).
// NOTE: a disk read error while a kernel page is faulted in later makes KVM_RUN fail, or raises
// SIGBUS if the VMM itself reads that page. The copying loader reports such an error at load.
pub fn map_elf(
    mem: &GuestMemoryMmap,
    file: &File,
    layout: &ElfLayout,
    file_size: u64,
) -> Result<Mapped, MappingError> {
    if let Err(reason) = check_mappable(layout, mem, file_size) {
        return Ok(Mapped::NotMappable(reason));
    }
    let mut result = KernelLoaderResult {
        kernel_load: GuestAddress(layout.entry),
        ..Default::default()
    };
    // linux-loader keeps the outcome of the last PT_NOTE segment.
    for note in layout.segments.iter().filter(|s| s.kind == PT_NOTE) {
        match find_pvh_entry(file, note) {
            Ok(capability) => result.pvh_boot_cap = capability,
            Err(reason) => return Ok(Mapped::NotMappable(reason)),
        }
    }
    for segment in layout
        .segments
        .iter()
        .filter(|s| s.kind == PT_LOAD && s.filesz > 0)
    {
        load_segment(mem, file, segment)?;
        result.kernel_end = result.kernel_end.max(segment.paddr + segment.memsz);
    }
    Ok(Mapped::Loaded(result))
}

#[cfg(test)]
pub(crate) mod tests {
    use linux_loader::loader::elf::Elf;
    use linux_loader::loader::KernelLoader;

    use super::*;
    use crate::config::MemoryOptions;

    /// Guest RAM of the tests: 64 MiB.
    const MEM_SIZE: u64 = 64 << 20;

    /// Builds an ELF image whose segments take their bytes from a counting pattern, with a
    /// PVH note in its own `PT_NOTE` segment at the end of the file.
    pub(crate) fn build_elf(entry: u64, segments: &[Segment], pvh_entry: Option<u32>) -> Vec<u8> {
        let mut note = Vec::new();
        // An unrelated note first, so that the lookup has to skip one.
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&6u32.to_le_bytes());
        note.extend_from_slice(&1u32.to_le_bytes());
        note.extend_from_slice(b"GNU\0abcdef\0\0");
        if let Some(pvh) = pvh_entry {
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&8u32.to_le_bytes());
            note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
            note.extend_from_slice(&XEN_NOTE_NAME);
            note.extend_from_slice(&(pvh as u64).to_le_bytes());
        }
        let file_end = segments
            .iter()
            .map(|s| s.offset + s.filesz)
            .max()
            .unwrap_or(0)
            .max(0x1000);
        let note_offset = file_end.next_multiple_of(8);
        let phnum = segments.len() + 1;
        let mut image: Vec<u8> = (0..note_offset as usize + note.len())
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        let mut ehdr = [0u8; EHDR_SIZE];
        ehdr[..4].copy_from_slice(b"\x7fELF");
        ehdr[4] = 2; // ELFCLASS64
        ehdr[5] = 1; // ELFDATA2LSB
        ehdr[6] = 1; // EV_CURRENT
        ehdr[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        ehdr[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        ehdr[24..32].copy_from_slice(&entry.to_le_bytes());
        ehdr[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
        ehdr[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        ehdr[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        ehdr[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        image[..EHDR_SIZE].copy_from_slice(&ehdr);
        let note_segment = Segment {
            kind: PT_NOTE,
            offset: note_offset,
            paddr: 0,
            filesz: note.len() as u64,
            memsz: note.len() as u64,
        };
        for (index, segment) in segments.iter().chain([&note_segment]).enumerate() {
            let at = EHDR_SIZE + index * PHDR_SIZE;
            let phdr = &mut image[at..at + PHDR_SIZE];
            phdr.fill(0);
            phdr[0..4].copy_from_slice(&segment.kind.to_le_bytes());
            phdr[8..16].copy_from_slice(&segment.offset.to_le_bytes());
            phdr[16..24].copy_from_slice(&segment.paddr.to_le_bytes());
            phdr[24..32].copy_from_slice(&segment.paddr.to_le_bytes());
            phdr[32..40].copy_from_slice(&segment.filesz.to_le_bytes());
            phdr[40..48].copy_from_slice(&segment.memsz.to_le_bytes());
        }
        image[note_offset as usize..].copy_from_slice(&note);
        image
    }

    pub(crate) fn load(kind: u32, offset: u64, paddr: u64, filesz: u64, memsz: u64) -> Segment {
        Segment {
            kind,
            offset,
            paddr,
            filesz,
            memsz,
        }
    }

    pub(crate) fn write_temp(name: &str, bytes: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        (dir, File::open(&path).unwrap())
    }

    /// Reads all of guest RAM.
    fn guest_bytes(mem: &GuestMemoryMmap) -> Vec<u8> {
        let mut bytes = vec![0u8; mem.last_addr().0 as usize + 1];
        mem.read_slice(&mut bytes, GuestAddress(0)).unwrap();
        bytes
    }

    /// Loads `image` both ways and checks that guest memory and the result are identical.
    fn assert_same_as_copy(image: &[u8]) {
        let (_dir, mut file) = write_temp("vmlinux", image);
        let copied = crate::memory::create(MEM_SIZE, MemoryOptions::default()).unwrap();
        let expected =
            Elf::load(&copied, None, &mut file, Some(GuestAddress(HIMEM_START))).unwrap();
        let mapped = crate::memory::create(MEM_SIZE, MemoryOptions::default()).unwrap();
        let layout = read_layout(&file).unwrap();
        let Mapped::Loaded(result) = map_elf(&mapped, &file, &layout, image.len() as u64).unwrap()
        else {
            panic!("the image is mappable");
        };
        assert_eq!(result.kernel_load, expected.kernel_load, "kernel_load");
        assert_eq!(result.kernel_end, expected.kernel_end, "kernel_end");
        assert_eq!(result.pvh_boot_cap, expected.pvh_boot_cap, "pvh_boot_cap");
        assert!(
            result.setup_header.is_none(),
            "an ELF image has no setup header"
        );
        let (want, got) = (guest_bytes(&copied), guest_bytes(&mapped));
        let first_difference = want.iter().zip(&got).position(|(a, b)| a != b);
        assert_eq!(
            first_difference, None,
            "guest memory differs at this address"
        );
    }

    #[test]
    fn mapping_matches_copy_for_aligned_segments() {
        let image = build_elf(
            0x100_0000,
            &[
                load(PT_LOAD, 0x1000, 0x100_0000, 0x3000, 0x3000),
                load(PT_LOAD, 0x4000, 0x100_4000, 0x2000, 0x5000),
            ],
            Some(0x100_0040),
        );
        assert_same_as_copy(&image);
    }

    #[test]
    fn mapping_matches_copy_for_partial_pages_and_bss() {
        // Segments start and end inside pages, share a page, and one ends with a BSS whose
        // first bytes sit in the same page as file bytes that must not leak into the guest.
        let image = build_elf(
            0x100_0000,
            &[
                load(PT_LOAD, 0x1234, 0x100_0234, 0x4100, 0x4100),
                load(PT_LOAD, 0x5334, 0x100_4334, 0x2a10, 0x9000),
                load(PT_LOAD, 0x8100, 0x100_f100, 0x80, 0x80),
            ],
            Some(0x100_0234),
        );
        assert_same_as_copy(&image);
    }

    #[test]
    fn mapping_matches_copy_without_pvh_note() {
        let image = build_elf(
            0x100_0000,
            &[load(PT_LOAD, 0x2000, 0x100_0000, 0x2000, 0x2000)],
            None,
        );
        assert_same_as_copy(&image);
    }

    #[test]
    fn mapping_rejects_incongruent_offset() {
        let image = build_elf(
            0x100_0000,
            &[load(PT_LOAD, 0x1010, 0x100_0000, 0x2000, 0x2000)],
            Some(0x100_0000),
        );
        let (_dir, file) = write_temp("vmlinux", &image);
        let mem = crate::memory::create(MEM_SIZE, MemoryOptions::default()).unwrap();
        let layout = read_layout(&file).unwrap();
        let outcome = map_elf(&mem, &file, &layout, image.len() as u64).unwrap();
        assert!(matches!(outcome, Mapped::NotMappable(_)), "{outcome:?}");
    }

    #[test]
    fn mapping_rejects_overlapping_segments() {
        let image = build_elf(
            0x100_0000,
            &[
                load(PT_LOAD, 0x1000, 0x100_0000, 0x3000, 0x3000),
                load(PT_LOAD, 0x4000, 0x100_2000, 0x2000, 0x2000),
            ],
            Some(0x100_0000),
        );
        let (_dir, file) = write_temp("vmlinux", &image);
        let mem = crate::memory::create(MEM_SIZE, MemoryOptions::default()).unwrap();
        let layout = read_layout(&file).unwrap();
        let outcome = map_elf(&mem, &file, &layout, image.len() as u64).unwrap();
        assert!(matches!(outcome, Mapped::NotMappable(_)), "{outcome:?}");
    }

    #[test]
    fn mapping_rejects_segment_past_file_end() {
        let image = build_elf(
            0x100_0000,
            &[load(PT_LOAD, 0x1000, 0x100_0000, 0x3000, 0x3000)],
            Some(0x100_0000),
        );
        let (_dir, file) = write_temp("vmlinux", &image);
        let mem = crate::memory::create(MEM_SIZE, MemoryOptions::default()).unwrap();
        let layout = read_layout(&file).unwrap();
        let outcome = map_elf(&mem, &file, &layout, 0x2000).unwrap();
        assert!(matches!(outcome, Mapped::NotMappable(_)), "{outcome:?}");
    }

    #[test]
    fn layout_rejects_entry_below_high_memory() {
        let image = build_elf(0x1000, &[], None);
        let (_dir, file) = write_temp("vmlinux", &image);
        assert!(read_layout(&file).is_err());
    }

    #[test]
    fn mapping_matches_copy_for_built_vmlinux() {
        // The guest image's vmlinux, when this machine has built one.
        let Some(path) = std::env::var_os("ISOBENCH_TEST_VMLINUX") else {
            eprintln!("skipped: set ISOBENCH_TEST_VMLINUX to a vmlinux to compare it");
            return;
        };
        let image = std::fs::read(path).unwrap();
        let (_dir, mut file) = write_temp("vmlinux", &image);
        let layout = read_layout(&file).unwrap();
        let end = layout
            .segments
            .iter()
            .map(|s| s.paddr + s.memsz)
            .max()
            .unwrap();
        let size = (end + (1 << 20)).next_multiple_of(1 << 20);
        let copied = crate::memory::create(size, MemoryOptions::default()).unwrap();
        let expected =
            Elf::load(&copied, None, &mut file, Some(GuestAddress(HIMEM_START))).unwrap();
        let mapped = crate::memory::create(size, MemoryOptions::default()).unwrap();
        let Mapped::Loaded(result) = map_elf(&mapped, &file, &layout, image.len() as u64).unwrap()
        else {
            panic!("the vmlinux is mappable");
        };
        assert_eq!(result.kernel_end, expected.kernel_end, "kernel_end");
        assert_eq!(result.pvh_boot_cap, expected.pvh_boot_cap, "pvh_boot_cap");
        assert!(
            guest_bytes(&copied) == guest_bytes(&mapped),
            "guest memory differs"
        );
        assert_eq!(mapped.num_regions(), 1);
    }
}
