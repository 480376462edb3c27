//! The MP table (Intel MultiProcessor Specification 1.4), which describes to the guest kernel
//! its vCPUs, the ISA bus and the IOAPIC when there is no ACPI.
//!
//! The table is written as bytes in the little-endian layout of the specification's chapter 4
//! rather than through packed structs, so no unaligned field access is needed.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR, MPTABLE_ADDR, MPTABLE_MAX_SIZE};

/// Errors of writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// The vCPU count does not fit the table's space.
    #[error("{count} vCPUs do not fit the MP table: the maximum is {max}")]
    TooManyVcpus {
        /// Requested vCPU count.
        count: u32,
        /// Maximum the table can describe.
        max: u32,
    },
    /// Guest memory could not be written.
    #[error("cannot write the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

const FLOATING_POINTER_SIZE: u64 = 16;
const CONFIG_HEADER_SIZE: u64 = 44;
const PROCESSOR_ENTRY_SIZE: u64 = 20;
const SMALL_ENTRY_SIZE: u64 = 8;
/// Bytes of the table besides the processor entries: floating pointer, header, one bus, one
/// IOAPIC, one interrupt source per IOAPIC pin and the two local interrupt entries.
const FIXED_SIZE: u64 =
    FLOATING_POINTER_SIZE + CONFIG_HEADER_SIZE + SMALL_ENTRY_SIZE * (2 + IOAPIC_PINS as u64 + 2);

const SPEC_REVISION: u8 = 4;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INTERRUPT_TYPE_INT: u8 = 0;
const INTERRUPT_TYPE_NMI: u8 = 1;
const INTERRUPT_TYPE_EXTINT: u8 = 3;
const CPU_FLAG_ENABLED: u8 = 1;
const CPU_FLAG_BOOT_PROCESSOR: u8 = 2;
/// Version of KVM's in-kernel LAPIC (`APIC_VERSION` in `arch/x86/kvm/lapic.c`).
const LAPIC_VERSION: u8 = 0x14;
/// Version of KVM's in-kernel IOAPIC (`IOAPIC_VERSION_ID` in `arch/x86/kvm/ioapic.h`).
const IOAPIC_VERSION: u8 = 0x11;
/// Family 6 signature in the processor entries; Linux reads the real one from CPUID.
const CPU_SIGNATURE: u32 = 0x600;
/// Feature flags of the processor entries: FPU and on-chip APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// Maximum number of vCPUs the MP table can describe in its space, [`MPTABLE_MAX_SIZE`]
/// bytes.
pub const fn max_vcpus() -> u32 {
    ((MPTABLE_MAX_SIZE - FIXED_SIZE) / PROCESSOR_ENTRY_SIZE) as u32
}

/// Size in bytes of the MP table for `vcpu_count` vCPUs.
pub const fn table_size(vcpu_count: u32) -> u64 {
    FIXED_SIZE + PROCESSOR_ENTRY_SIZE * vcpu_count as u64
}

fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

/// Builds the MP table for `vcpu_count` vCPUs with APIC ids `0..vcpu_count`, located at
/// `base`; the IOAPIC takes id `vcpu_count`.
pub fn build(vcpu_count: u32, base: u64) -> Result<Vec<u8>, MptableError> {
    if vcpu_count == 0 || vcpu_count > max_vcpus() {
        return Err(MptableError::TooManyVcpus {
            count: vcpu_count,
            max: max_vcpus(),
        });
    }
    let ioapic_id = vcpu_count as u8;
    let config_addr = base + FLOATING_POINTER_SIZE;

    let mut entries = Vec::new();
    let mut entry_count: u16 = 0;
    for apic_id in 0..vcpu_count {
        let mut flags = CPU_FLAG_ENABLED;
        if apic_id == 0 {
            flags |= CPU_FLAG_BOOT_PROCESSOR;
        }
        entries.extend_from_slice(&[ENTRY_PROCESSOR, apic_id as u8, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        entry_count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entry_count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    entry_count += 1;
    for pin in 0..IOAPIC_PINS as u8 {
        // Conforming polarity and trigger mode (flags 0), ISA bus 0, IRQ n to IOAPIC pin n.
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INTERRUPT_TYPE_INT, 0, 0]);
        entries.extend_from_slice(&[0, pin, ioapic_id, pin]);
        entry_count += 1;
    }
    // LINT0 is the 8259's ExtINT line and LINT1 the NMI line on every LAPIC (id 0xff).
    for (kind, lint) in [(INTERRUPT_TYPE_EXTINT, 0u8), (INTERRUPT_TYPE_NMI, 1u8)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, 0, 0, 0xff, lint]);
        entry_count += 1;
    }

    let config_len = (CONFIG_HEADER_SIZE as usize + entries.len()) as u16;
    let mut config = Vec::with_capacity(config_len as usize);
    config.extend_from_slice(b"PCMP");
    config.extend_from_slice(&config_len.to_le_bytes());
    config.push(SPEC_REVISION);
    config.push(0); // checksum, filled below
    config.extend_from_slice(b"ISOBENCH");
    config.extend_from_slice(b"MICROVM     ");
    config.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    config.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    config.extend_from_slice(&entry_count.to_le_bytes());
    config.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    config.extend_from_slice(&0u32.to_le_bytes()); // extended table length and checksum
    config.extend_from_slice(&entries);
    config[7] = checksum(&config);

    let mut table = Vec::with_capacity(FLOATING_POINTER_SIZE as usize + config.len());
    table.extend_from_slice(b"_MP_");
    table.extend_from_slice(&(config_addr as u32).to_le_bytes());
    table.push(1); // length in 16-byte units
    table.push(SPEC_REVISION);
    table.push(0); // checksum, filled below
    table.extend_from_slice(&[0; 5]); // feature bytes: 0 means "configuration table present"
    table[10] = checksum(&table[..FLOATING_POINTER_SIZE as usize]);
    table.extend_from_slice(&config);
    debug_assert_eq!(table.len() as u64, table_size(vcpu_count));
    Ok(table)
}

/// Writes the MP table for `vcpu_count` vCPUs at [`MPTABLE_ADDR`].
pub fn write(mem: &GuestMemoryMmap, vcpu_count: u32) -> Result<(), MptableError> {
    let table = build(vcpu_count, MPTABLE_ADDR)?;
    mem.write_slice(&table, GuestAddress(MPTABLE_ADDR))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    #[test]
    fn mptable_fits_its_space_for_every_count() {
        for count in 1..=max_vcpus() {
            let table = build(count, MPTABLE_ADDR).unwrap();
            assert!(table.len() as u64 <= MPTABLE_MAX_SIZE, "{count} vCPUs");
        }
    }

    #[test]
    fn mptable_rejects_counts_it_cannot_describe() {
        assert!(build(0, MPTABLE_ADDR).is_err());
        assert!(build(max_vcpus() + 1, MPTABLE_ADDR).is_err());
    }

    #[test]
    fn mptable_checksums_are_zero() {
        let table = build(2, MPTABLE_ADDR).unwrap();
        assert_eq!(sum(&table[..16]), 0, "floating pointer");
        assert_eq!(sum(&table[16..]), 0, "configuration table");
    }

    #[test]
    fn mptable_lists_every_vcpu_once() {
        let count = 3;
        let table = build(count, MPTABLE_ADDR).unwrap();
        let entries = &table[16 + CONFIG_HEADER_SIZE as usize..];
        for apic_id in 0..count as usize {
            let entry = &entries[apic_id * 20..apic_id * 20 + 20];
            assert_eq!(entry[0], ENTRY_PROCESSOR);
            assert_eq!(entry[1] as usize, apic_id);
            let boot = entry[3] & CPU_FLAG_BOOT_PROCESSOR != 0;
            assert_eq!(boot, apic_id == 0, "only vCPU 0 is the boot processor");
        }
        let pointer = u32::from_le_bytes(table[4..8].try_into().unwrap());
        assert_eq!(pointer as u64, MPTABLE_ADDR + 16);
    }
}
