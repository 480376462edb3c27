//! Guest RAM: anonymous private mappings, faulted in lazily by default, one per range of
//! [`arch::layout::ram_ranges`](crate::arch::layout::ram_ranges). Loading a vmlinux may then
//! replace the kernel's pages inside a range with private mappings of its file
//! ([`boot::load_image`](crate::boot::load_image)), so guest RAM spans several host mappings
//! that all lie inside the ranges this module reports.

use std::io;

use vm_memory::{
    GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};

use crate::arch::layout;
use crate::config::MemoryOptions;
use crate::events::RamMapping;

/// Errors of creating guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// `mmap` failed for a range.
    #[error("cannot map {size_mib} MiB of guest memory{hint}")]
    Map {
        /// Size of the range.
        size_mib: u64,
        /// Advice for huge pages, empty otherwise.
        hint: &'static str,
        /// The mmap error.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The regions could not be assembled into a guest memory map.
    #[error("cannot assemble the guest memory map")]
    Assemble,
}

/// Name shown for guest RAM in `/proc/PID/maps` (Linux 5.17 and later with
/// `CONFIG_ANON_VMA_NAME`; older kernels ignore it).
pub const GUEST_RAM_NAME: &str = "isobench-guest-ram";

/// Maps `size` bytes of guest RAM with `options`.
pub fn create(size: u64, options: MemoryOptions) -> Result<GuestMemoryMmap, MemoryError> {
    let mut flags = libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE;
    if options.prefault {
        flags |= libc::MAP_POPULATE;
    }
    if options.hugepages {
        // Without MAP_NORESERVE the huge pages are reserved by mmap itself, so a shortage
        // fails here with ENOMEM instead of as a fault while the guest kernel is copied in.
        flags &= !libc::MAP_NORESERVE;
        flags |= libc::MAP_HUGETLB | libc::MAP_HUGE_2MB;
    }
    let mut regions = Vec::new();
    for (start, len) in layout::ram_ranges(size) {
        let region = MmapRegion::build(
            None,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
        )
        .map_err(|source| MemoryError::Map {
            size_mib: len >> 20,
            hint: if options.hugepages {
                ": reserve 2 MiB huge pages first (echo N > /proc/sys/vm/nr_hugepages)"
            } else {
                ""
            },
            source,
        })?;
        name_mapping(region.as_ptr(), region.size());
        regions.push(GuestRegionMmap::new(region, start).ok_or(MemoryError::Assemble)?);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|_| MemoryError::Assemble)
}

/// Host mappings of `mem`, for the `vcpus_running` event.
pub fn mappings(mem: &GuestMemoryMmap) -> Vec<RamMapping> {
    mem.iter()
        .map(|region| RamMapping {
            host_addr: region.as_ptr() as u64,
            size: region.len(),
        })
        .collect()
}

fn name_mapping(addr: *mut u8, size: usize) {
    const PR_SET_VMA: libc::c_int = 0x5356_4d41;
    const PR_SET_VMA_ANON_NAME: libc::c_ulong = 0;
    let name = c"isobench-guest-ram";
    // SAFETY: PR_SET_VMA only attaches a name to the mapping [addr, addr + size), which this
    // process created and owns; `name` is a NUL-terminated string that outlives the call. An
    // error (kernel without CONFIG_ANON_VMA_NAME) changes nothing and is ignored.
    let result = unsafe {
        libc::prctl(
            PR_SET_VMA,
            PR_SET_VMA_ANON_NAME,
            addr as libc::c_ulong,
            size as libc::c_ulong,
            name.as_ptr() as libc::c_ulong,
        )
    };
    if result != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "cannot name the guest RAM mapping");
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    #[test]
    fn memory_has_one_region_per_range() {
        let mem = create(64 << 20, MemoryOptions::default()).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress((64 << 20) - 1));
        mem.write_obj(0xabu8, GuestAddress((64 << 20) - 1)).unwrap();
        assert!(mem.write_obj(0xabu8, GuestAddress(64 << 20)).is_err());
    }

    #[test]
    fn memory_mappings_cover_guest_ram() {
        let mem = create(32 << 20, MemoryOptions::default()).unwrap();
        let maps = mappings(&mem);
        assert_eq!(maps.len(), 1);
        assert_eq!(maps[0].size, 32 << 20);
    }
}
