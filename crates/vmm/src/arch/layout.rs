//! Guest physical memory layout and the e820 memory map derived from it.
//!
//! ```text
//!   0x0000_0500  GDT                 0x0000_9000  PML4, then PDPT and PD (64-bit boot)
//!   0x0000_0520  IDT (empty)         0x0002_0000  kernel command line
//!   0x0000_6000  PVH start info      0x0009_fc00  MP table (EBDA, up to 0xa_0000)
//!   0x0000_6040  PVH memory map      0x0010_0000  kernel (high memory start)
//!   0x0000_7000  zero page           0xd000_0000  MMIO gap: virtio-mmio devices, IOAPIC,
//!   0x0000_8ff0  boot stack                       LAPIC, TSS; up to 4 GiB
//!                                    0x1_0000_0000 RAM above the gap, when there is more
//! ```

use vm_memory::GuestAddress;

/// Global descriptor table used while entering the guest kernel.
pub const GDT_ADDR: u64 = 0x500;
/// Interrupt descriptor table loaded with limit 0 until the guest kernel sets its own.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info` structure, passed to the guest kernel in `ebx`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH memory map entries (`hvm_memmap_table_entry`), right after the start info.
pub const PVH_MEMMAP_ADDR: u64 = 0x6040;
/// Maximum number of PVH memory map entries the layout leaves room for.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = 8;
/// Linux zero page (`boot_params`) for the 64-bit boot protocol, passed in `rsi`.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Size of the zero page.
pub const ZERO_PAGE_SIZE: u64 = 0x1000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_ADDR: u64 = 0x8ff0;
/// Page map level 4 of the identity mapping used by the 64-bit boot protocol.
pub const PML4_ADDR: u64 = 0x9000;
/// Page directory pointer table of the identity mapping.
pub const PDPT_ADDR: u64 = 0xa000;
/// Page directory of the identity mapping: 512 entries of 2 MiB cover the first 1 GiB.
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Maximum command line length including its terminating NUL: Linux's `COMMAND_LINE_SIZE`
/// on x86 (`arch/x86/include/asm/setup.h`, 2048 bytes).
pub const CMDLINE_CAPACITY: usize = 2048;
/// Start of the extended BIOS data area; the MP table lives in its first KiB, one of the
/// places Linux scans for the MP floating pointer.
pub const EBDA_START: u64 = 0x9_fc00;
/// Address of the MP floating pointer structure and the MP configuration table after it.
pub const MPTABLE_ADDR: u64 = EBDA_START;
/// Bytes available to the MP table: the first KiB of the EBDA, up to 640 KiB.
pub const MPTABLE_MAX_SIZE: u64 = 0xa_0000 - EBDA_START;
/// First byte of high memory, where the guest kernel is loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap that guest RAM never covers.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End (exclusive) of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Three pages KVM uses for the real-mode TSS on Intel, inside the MMIO gap.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// One page KVM uses for the real-mode identity map on Intel, right below the TSS.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// IOAPIC register window, as the MP table announces it.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// LAPIC register window, as the MP table announces it.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// First virtio-mmio device window; each device takes [`VIRTIO_MMIO_SIZE`] bytes after it.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC pin of the first virtio-mmio device; the following devices take the next pins.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// IOAPIC pin of COM1.
pub const SERIAL_IRQ: u32 = 4;
/// Number of IOAPIC pins KVM's in-kernel IOAPIC provides.
pub const IOAPIC_PINS: u32 = 24;

/// e820 entry type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 entry type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One entry of the e820 memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte of the range.
    pub addr: u64,
    /// Length of the range in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

impl E820Entry {
    /// First byte after the range.
    pub fn end(&self) -> u64 {
        self.addr + self.size
    }
}

/// Guest RAM ranges for `mem_size` bytes of RAM: everything below the MMIO gap from address 0,
/// and the remainder from 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    let low = mem_size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if mem_size > MMIO_GAP_START {
        ranges.push((GuestAddress(MMIO_GAP_END), mem_size - MMIO_GAP_START));
    }
    ranges
}

/// The e820 memory map for `mem_size` bytes of RAM, which must exceed [`HIMEM_START`]: base
/// memory below the EBDA, the EBDA and BIOS area reserved, high memory up to the MMIO gap and
/// the remainder above 4 GiB. No entry ever covers the MMIO gap.
pub fn e820_entries(mem_size: u64) -> Vec<E820Entry> {
    let mut entries = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        entries.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_size > MMIO_GAP_START {
        entries.push(E820Entry {
            addr: MMIO_GAP_END,
            size: mem_size - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    entries
}

/// Guest address of the virtio-mmio window of device `index`.
pub fn virtio_mmio_addr(index: usize) -> u64 {
    VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 0x1000;

    fn overlaps_gap(entry: &E820Entry) -> bool {
        entry.addr < MMIO_GAP_END && entry.end() > MMIO_GAP_START
    }

    #[test]
    fn e820_just_under_gap_start() {
        let mem_size = MMIO_GAP_START - PAGE;
        let entries = e820_entries(mem_size);
        assert!(entries.iter().all(|e| !overlaps_gap(e)));
        let last = entries.last().unwrap();
        assert_eq!(last.end(), mem_size);
        assert_eq!(last.kind, E820_RAM);
        assert_eq!(entries.len(), 3, "no range above 4 GiB");
    }

    #[test]
    fn e820_at_gap_start() {
        let entries = e820_entries(MMIO_GAP_START);
        assert!(entries.iter().all(|e| !overlaps_gap(e)));
        assert_eq!(entries.last().unwrap().end(), MMIO_GAP_START);
        assert_eq!(entries.len(), 3, "no range above 4 GiB");
    }

    #[test]
    fn e820_over_gap_start() {
        let mem_size = MMIO_GAP_START + PAGE;
        let entries = e820_entries(mem_size);
        assert!(entries.iter().all(|e| !overlaps_gap(e)));
        assert_eq!(entries[2].end(), MMIO_GAP_START);
        let high = entries.last().unwrap();
        assert_eq!(high.addr, MMIO_GAP_END);
        assert_eq!(high.size, PAGE);
    }

    #[test]
    fn e820_ram_adds_up_to_memory_size() {
        for mem_size in [64 << 20, MMIO_GAP_START - PAGE, MMIO_GAP_START, 6 << 30] {
            let ram: u64 = e820_entries(mem_size)
                .iter()
                .filter(|e| e.kind == E820_RAM)
                .map(|e| e.size)
                .sum();
            let reserved = HIMEM_START - EBDA_START;
            assert_eq!(ram + reserved, mem_size, "memory size {mem_size:#x}");
        }
    }

    #[test]
    fn ram_ranges_split_at_gap() {
        let mem_size = MMIO_GAP_START + PAGE;
        let ranges = ram_ranges(mem_size);
        assert_eq!(ranges[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(ranges[1], (GuestAddress(MMIO_GAP_END), PAGE));
        assert_eq!(ram_ranges(MMIO_GAP_START).len(), 1);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let pvh_memmap_end = PVH_MEMMAP_ADDR + 24 * PVH_MEMMAP_MAX_ENTRIES as u64;
        let ranges = [
            ("gdt", GDT_ADDR, IDT_ADDR),
            ("idt", IDT_ADDR, IDT_ADDR + 8),
            ("pvh start info", PVH_INFO_ADDR, PVH_MEMMAP_ADDR),
            ("pvh memmap", PVH_MEMMAP_ADDR, pvh_memmap_end),
            ("zero page", ZERO_PAGE_ADDR, ZERO_PAGE_ADDR + ZERO_PAGE_SIZE),
            ("page tables", PML4_ADDR, PD_ADDR + PAGE),
            (
                "cmdline",
                CMDLINE_ADDR,
                CMDLINE_ADDR + CMDLINE_CAPACITY as u64,
            ),
            ("mptable", MPTABLE_ADDR, MPTABLE_ADDR + MPTABLE_MAX_SIZE),
        ];
        for (i, a) in ranges.iter().enumerate() {
            assert!(
                a.2 <= EBDA_START || a.0 == "mptable",
                "{} below the EBDA",
                a.0
            );
            for b in &ranges[i + 1..] {
                assert!(a.2 <= b.1 || b.2 <= a.1, "{} overlaps {}", a.0, b.0);
            }
        }
        const { assert!(BOOT_STACK_ADDR > ZERO_PAGE_ADDR + ZERO_PAGE_SIZE) };
        const { assert!(BOOT_STACK_ADDR < PML4_ADDR) };
        assert!(pvh_memmap_end <= ZERO_PAGE_ADDR);
    }
}
