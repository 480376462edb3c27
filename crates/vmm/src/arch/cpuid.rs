//! CPUID patching: the supported set KVM reports, adjusted per vCPU so that the guest kernel
//! sees one package with `count` cores of one thread each, its own APIC id and the hypervisor
//! bit. Intel topology leaves (0x4, 0xb, 0x1f) and AMD ones (0x8000_0008, 0x8000_001d,
//! 0x8000_001e) are both handled because the VMM runs on either vendor.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// The processor vendor as CPUID leaf 0 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuVendor {
    /// `GenuineIntel`.
    Intel,
    /// `AuthenticAMD` or `HygonGenuine`, which follow AMD's topology leaves.
    Amd,
    /// Any other vendor string; only vendor-neutral leaves are patched.
    Other,
}

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMETERS: u32 = 0x4;
const LEAF_PERFORMANCE_MONITORING: u32 = 0xa;
const LEAF_EXTENDED_TOPOLOGY: u32 = 0xb;
const LEAF_EXTENDED_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZE_IDENTIFIERS: u32 = 0x8000_0008;
const LEAF_AMD_CACHE_TOPOLOGY: u32 = 0x8000_001d;
const LEAF_AMD_EXTENDED_APIC_ID: u32 = 0x8000_001e;

const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const AMD_ECX_CMP_LEGACY: u32 = 1 << 1;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Reads the vendor from leaf 0 of `cpuid`.
pub fn vendor(cpuid: &CpuId) -> CpuVendor {
    let Some(leaf) = cpuid
        .as_slice()
        .iter()
        .find(|entry| entry.function == LEAF_VENDOR)
    else {
        return CpuVendor::Other;
    };
    let mut name = [0u8; 12];
    name[0..4].copy_from_slice(&leaf.ebx.to_le_bytes());
    name[4..8].copy_from_slice(&leaf.edx.to_le_bytes());
    name[8..12].copy_from_slice(&leaf.ecx.to_le_bytes());
    match &name {
        b"GenuineIntel" => CpuVendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => CpuVendor::Amd,
        _ => CpuVendor::Other,
    }
}

/// Number of APIC id bits that number `count` cores: ceil(log2(count)).
fn core_id_bits(count: u32) -> u32 {
    u32::BITS - count.saturating_sub(1).leading_zeros()
}

/// Patches `cpuid` for the vCPU with APIC id `apic_id` out of `count` vCPUs.
pub fn patch(cpuid: &mut CpuId, apic_id: u32, count: u32) {
    let vendor = vendor(cpuid);
    for entry in cpuid.as_mut_slice() {
        patch_entry(entry, vendor, apic_id, count);
    }
}

fn patch_entry(entry: &mut kvm_cpuid_entry2, vendor: CpuVendor, apic_id: u32, count: u32) {
    let core_bits = core_id_bits(count);
    match entry.function {
        LEAF_FEATURES => {
            // EBX: [31:24] initial APIC id, [23:16] addressable logical processors,
            // [15:8] CLFLUSH line size in 8-byte units (kept from the host).
            entry.ebx = (apic_id << 24) | ((count & 0xff) << 16) | (entry.ebx & 0xff00);
            entry.ecx |= LEAF1_ECX_HYPERVISOR;
            if count > 1 {
                entry.edx |= LEAF1_EDX_HTT;
            } else {
                entry.edx &= !LEAF1_EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMETERS if vendor == CpuVendor::Intel => {
            // EAX: [31:26] cores per package - 1, [25:14] logical processors sharing this
            // cache - 1 (the package for level 3, one core below).
            let level = (entry.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count - 1 } else { 0 };
            entry.eax = (entry.eax & 0x3fff) | ((sharing & 0xfff) << 14) | ((count - 1) << 26);
        }
        LEAF_PERFORMANCE_MONITORING => {
            // No virtual PMU: the guest kernel must not program counters KVM may not back.
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        LEAF_EXTENDED_TOPOLOGY | LEAF_EXTENDED_TOPOLOGY_V2 => {
            entry.edx = apic_id;
            match entry.index {
                0 => {
                    entry.eax = 0; // one thread per core: no SMT bits
                    entry.ebx = 1;
                    entry.ecx = (TOPOLOGY_LEVEL_SMT << 8) | entry.index;
                }
                1 => {
                    entry.eax = core_bits;
                    entry.ebx = count;
                    entry.ecx = (TOPOLOGY_LEVEL_CORE << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        LEAF_AMD_FEATURES if vendor == CpuVendor::Amd => {
            if count > 1 {
                entry.ecx |= AMD_ECX_CMP_LEGACY;
            } else {
                entry.ecx &= !AMD_ECX_CMP_LEGACY;
            }
        }
        LEAF_AMD_SIZE_IDENTIFIERS if vendor == CpuVendor::Amd => {
            // ECX: [15:12] APIC id bits for the core id, [7:0] number of cores - 1.
            entry.ecx = (entry.ecx & !0xf0ff) | (core_bits << 12) | ((count - 1) & 0xff);
        }
        LEAF_AMD_CACHE_TOPOLOGY if vendor == CpuVendor::Amd => {
            // EAX: [25:14] logical processors sharing this cache - 1.
            let level = (entry.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count - 1 } else { 0 };
            entry.eax = (entry.eax & !(0xfff << 14)) | ((sharing & 0xfff) << 14);
        }
        LEAF_AMD_EXTENDED_APIC_ID if vendor == CpuVendor::Amd => {
            // EAX extended APIC id; EBX [15:8] threads per core - 1 and [7:0] core id;
            // ECX [10:8] nodes per processor - 1 and [7:0] node id: one node, one thread.
            entry.eax = apic_id;
            entry.ebx = apic_id & 0xff;
            entry.ecx = 0;
            entry.edx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn with_vendor(vendor: &[u8; 12], leaves: &[kvm_cpuid_entry2]) -> CpuId {
        let mut leaf0 = entry(0, 0);
        leaf0.ebx = u32::from_le_bytes(vendor[0..4].try_into().unwrap());
        leaf0.edx = u32::from_le_bytes(vendor[4..8].try_into().unwrap());
        leaf0.ecx = u32::from_le_bytes(vendor[8..12].try_into().unwrap());
        let mut all = vec![leaf0];
        all.extend_from_slice(leaves);
        CpuId::from_entries(&all).unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn core_id_bits_rounds_up() {
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(2), 1);
        assert_eq!(core_id_bits(3), 2);
        assert_eq!(core_id_bits(4), 2);
        assert_eq!(core_id_bits(5), 3);
    }

    #[test]
    fn cpuid_leaf1_carries_apic_id_and_hypervisor_bit() {
        let mut cpuid = with_vendor(b"GenuineIntel", &[entry(1, 0)]);
        patch(&mut cpuid, 3, 4);
        let leaf = find(&cpuid, 1, 0);
        assert_eq!(leaf.ebx >> 24, 3);
        assert_eq!((leaf.ebx >> 16) & 0xff, 4);
        assert_ne!(leaf.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(leaf.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn cpuid_intel_extended_topology() {
        let mut cpuid = with_vendor(b"GenuineIntel", &[entry(0xb, 0), entry(0xb, 1)]);
        patch(&mut cpuid, 1, 2);
        let smt = find(&cpuid, 0xb, 0);
        let core = find(&cpuid, 0xb, 1);
        assert_eq!(smt.ebx, 1);
        assert_eq!(core.ebx, 2);
        assert_eq!(core.eax, 1);
        assert_eq!(core.edx, 1, "x2APIC id");
    }

    #[test]
    fn cpuid_amd_topology() {
        let leaves = [
            entry(LEAF_AMD_FEATURES, 0),
            entry(LEAF_AMD_SIZE_IDENTIFIERS, 0),
            entry(LEAF_AMD_EXTENDED_APIC_ID, 0),
        ];
        let mut cpuid = with_vendor(b"AuthenticAMD", &leaves);
        assert_eq!(vendor(&cpuid), CpuVendor::Amd);
        patch(&mut cpuid, 1, 2);
        assert_ne!(
            find(&cpuid, LEAF_AMD_FEATURES, 0).ecx & AMD_ECX_CMP_LEGACY,
            0
        );
        let sizes = find(&cpuid, LEAF_AMD_SIZE_IDENTIFIERS, 0);
        assert_eq!(sizes.ecx & 0xff, 1, "cores - 1");
        assert_eq!((sizes.ecx >> 12) & 0xf, 1, "core id bits");
        assert_eq!(find(&cpuid, LEAF_AMD_EXTENDED_APIC_ID, 0).eax, 1);
    }
}
