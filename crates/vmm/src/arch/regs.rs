//! Initial vCPU state: segments and control registers for the PVH (32-bit protected mode) and
//! 64-bit boot entries, the boot MSRs, the FPU and the LAPIC's LINT0/LINT1 wiring.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_STACK_ADDR, GDT_ADDR, IDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR, ZERO_PAGE_ADDR,
};

/// Errors of setting up a vCPU's registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM ioctl on the vCPU failed.
    #[error("cannot set the vCPU's {what}")]
    Kvm {
        /// Which state.
        what: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer MSRs than were passed.
    #[error("KVM accepted {set} of {wanted} boot MSRs")]
    Msrs {
        /// MSRs written.
        set: usize,
        /// MSRs passed.
        wanted: usize,
    },
    /// The GDT or page tables could not be written to guest memory.
    #[error("cannot write the boot {what} to guest memory")]
    Memory {
        /// Which structure.
        what: &'static str,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Entry mode of the guest kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, `ebx` = start info address.
    Pvh,
    /// Linux 64-bit boot protocol: long mode with an identity map of the first 1 GiB,
    /// `rsi` = zero page address.
    Long64,
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// GDT access and flag bits (the descriptor's bytes 5 and 6) of each boot segment.
const GDT_CODE32: u16 = 0xc09b;
const GDT_CODE64: u16 = 0xa09b;
const GDT_DATA: u16 = 0xc093;
const GDT_TSS: u16 = 0x808b;
const SELECTOR_CODE: u16 = 0x08;
const SELECTOR_DATA: u16 = 0x10;
const SELECTOR_TSS: u16 = 0x18;

/// Encodes a segment descriptor (Intel SDM vol. 3, 3.4.5) from its flags word, base and limit.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | ((flags & 0xff) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((flags >> 12) & 0xf) << 52)
        | (((base >> 24) & 0xff) << 56)
}

/// The `kvm_segment` KVM expects for a descriptor built by [`gdt_entry`].
fn segment(flags: u16, base: u32, limit: u32, selector: u16) -> kvm_segment {
    let granular = (flags >> 15) & 1;
    kvm_segment {
        base: base as u64,
        limit: if granular == 1 {
            (limit << 12) | 0xfff
        } else {
            limit
        },
        selector,
        type_: (flags & 0xf) as u8,
        present: ((flags >> 7) & 1) as u8,
        dpl: ((flags >> 5) & 3) as u8,
        db: ((flags >> 14) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((flags >> 13) & 1) as u8,
        g: granular as u8,
        avl: ((flags >> 12) & 1) as u8,
        unusable: if (flags >> 7) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

fn memory_error(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> RegsError {
    move |source| RegsError::Memory { what, source }
}

fn kvm_error(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// Writes the boot GDT and the identity-map page tables (used only by [`EntryMode::Long64`],
/// harmless otherwise) to guest memory.
pub fn write_boot_tables(mem: &GuestMemoryMmap, mode: EntryMode) -> Result<(), RegsError> {
    let code = match mode {
        EntryMode::Pvh => GDT_CODE32,
        EntryMode::Long64 => GDT_CODE64,
    };
    let gdt = [
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(GDT_DATA, 0, 0xfffff),
        gdt_entry(GDT_TSS, 0, 0xfffff),
    ];
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + i as u64 * 8))
            .map_err(memory_error("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(memory_error("IDT"))?;

    if mode == EntryMode::Long64 {
        // PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] maps 2 MiB page i: present, writable, huge.
        mem.write_obj(PDPT_ADDR | 0x03, GuestAddress(PML4_ADDR))
            .map_err(memory_error("page tables"))?;
        mem.write_obj(PD_ADDR | 0x03, GuestAddress(PDPT_ADDR))
            .map_err(memory_error("page tables"))?;
        for i in 0..512u64 {
            mem.write_obj((i << 21) | 0x83, GuestAddress(PD_ADDR + i * 8))
                .map_err(memory_error("page tables"))?;
        }
    }
    Ok(())
}

/// Special registers for entering the guest kernel in `mode`, starting from `sregs` as KVM
/// created them.
pub fn boot_sregs(mut sregs: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    let code = match mode {
        EntryMode::Pvh => GDT_CODE32,
        EntryMode::Long64 => GDT_CODE64,
    };
    sregs.cs = segment(code, 0, 0xfffff, SELECTOR_CODE);
    let data = segment(GDT_DATA, 0, 0xfffff, SELECTOR_DATA);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(GDT_TSS, 0, 0xfffff, SELECTOR_TSS);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 0;

    match mode {
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Long64 => {
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 = X86_CR4_PAE;
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    sregs
}

/// General registers for entering the guest kernel at `entry` in `mode`; `boot_info` is the
/// PVH start info or zero page address.
pub fn boot_regs(mode: EntryMode, entry: u64, boot_info: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh => regs.rbx = boot_info,
        EntryMode::Long64 => {
            regs.rsp = BOOT_STACK_ADDR;
            regs.rbp = BOOT_STACK_ADDR;
            regs.rsi = boot_info;
        }
    }
    regs
}

/// Default zero page address for the 64-bit entry.
pub const fn zero_page_addr() -> u64 {
    ZERO_PAGE_ADDR
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled (bit 11) with write-back (6) as the default memory type.
const MTRR_DEF_TYPE_ENABLED_WB: u64 = (1 << 11) | 6;

/// The boot MSRs and their values, in the order they are written.
pub fn boot_msr_entries() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_ENABLED_WB),
    ]
}

/// Writes the boot MSRs KVM supports (those in `supported`, the host's MSR index list).
pub fn set_msrs(vcpu: &VcpuFd, supported: &[u32]) -> Result<(), RegsError> {
    let entries: Vec<kvm_msr_entry> = boot_msr_entries()
        .into_iter()
        .filter(|(index, _)| supported.contains(index))
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs {
        set: 0,
        wanted: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm_error("MSRs"))?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

/// Sets the FPU to its power-on control word and MXCSR.
pub fn set_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_error("FPU"))
}

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_DELIVERY_MODE_EXTINT: u32 = 0b111;
const APIC_DELIVERY_MODE_NMI: u32 = 0b100;

fn set_delivery_mode(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *byte as std::os::raw::c_char;
    }
}

/// Wires LINT0 to the 8259 (ExtINT) and LINT1 to NMI, as a PC's local APICs are wired.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm_error("LAPIC"))?;
    set_delivery_mode(&mut lapic.regs, APIC_LVT_LINT0, APIC_DELIVERY_MODE_EXTINT);
    set_delivery_mode(&mut lapic.regs, APIC_LVT_LINT1, APIC_DELIVERY_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(kvm_error("LAPIC"))
}

/// Sets general and special registers for the boot entry.
pub fn set_boot_registers(
    vcpu: &VcpuFd,
    mode: EntryMode,
    entry: u64,
    boot_info: u64,
) -> Result<(), RegsError> {
    let sregs = vcpu.get_sregs().map_err(kvm_error("special registers"))?;
    vcpu.set_sregs(&boot_sregs(sregs, mode))
        .map_err(kvm_error("special registers"))?;
    vcpu.set_regs(&boot_regs(mode, entry, boot_info))
        .map_err(kvm_error("registers"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entry_encodes_flat_code_segment() {
        // The flat 64-bit code segment every x86_64 boot loader uses.
        assert_eq!(gdt_entry(GDT_CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(GDT_CODE32, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(GDT_DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn segment_of_flat_code_is_4gib() {
        let cs = segment(GDT_CODE32, 0, 0xfffff, SELECTOR_CODE);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.db, 1);
        assert_eq!(cs.l, 0);
        assert_eq!(cs.present, 1);
        let cs64 = segment(GDT_CODE64, 0, 0xfffff, SELECTOR_CODE);
        assert_eq!(cs64.l, 1);
        assert_eq!(cs64.db, 0);
    }

    #[test]
    fn lint_delivery_modes() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        set_delivery_mode(&mut regs, APIC_LVT_LINT0, APIC_DELIVERY_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT_LINT0 + 1] as u8, 0x07);
        set_delivery_mode(&mut regs, APIC_LVT_LINT1, APIC_DELIVERY_MODE_NMI);
        assert_eq!(regs[APIC_LVT_LINT1 + 1] as u8, 0x04);
    }
}
