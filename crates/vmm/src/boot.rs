//! Loading the guest kernel and writing what it reads at entry: the command line, the memory
//! map (PVH start info or zero page), the MP table and the boot GDT.

mod lease;
pub(crate) mod mapping;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader, KernelLoaderResult};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::layout::{
    self, CMDLINE_ADDR, CMDLINE_CAPACITY, HIMEM_START, PVH_INFO_ADDR, PVH_MEMMAP_ADDR,
    ZERO_PAGE_ADDR,
};
use crate::arch::regs::EntryMode;
use crate::config::{KernelFormat, VmConfig};
use crate::vcpu::ExitLatch;

pub use lease::{lease_signal, KernelFileLease, LeaseError};
pub use mapping::MappingError;

/// Errors of loading the guest kernel and writing its boot structures.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened.
    #[error("cannot open guest kernel {path}")]
    Open {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// linux-loader rejected the kernel image.
    #[error("cannot load guest kernel {path}: {detail}: pass a vmlinux built with CONFIG_PVH=y or a bzImage")]
    Load {
        /// The path.
        path: String,
        /// linux-loader's message.
        detail: String,
    },
    /// The ELF kernel has no PVH entry note.
    #[error(
        "guest kernel {0} has no PVH entry note: build it with CONFIG_PVH=y or boot its bzImage"
    )]
    NoPvhEntry(String),
    /// The command line is invalid or too long.
    #[error("invalid kernel command line: {0} (at most {CMDLINE_CAPACITY} bytes)")]
    Cmdline(String),
    /// The boot parameters could not be written.
    #[error("cannot write the boot parameters: {0}")]
    BootParams(String),
    /// Mapping the kernel's segments into guest RAM failed part way.
    #[error("cannot map guest kernel {path} into guest RAM")]
    Map {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: MappingError,
    },
}

/// Entry point and mode of the boot vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelEntry {
    /// Boot protocol.
    pub mode: EntryMode,
    /// Entry address (`rip`).
    pub entry: u64,
    /// Address of the PVH start info or zero page.
    pub boot_info: u64,
}

/// One virtio-mmio device as the kernel command line announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioEntry {
    /// Guest address of the device's register window.
    pub addr: u64,
    /// IOAPIC pin.
    pub irq: u32,
}

/// Builds the kernel command line: the base arguments, the root disk, the guest's network
/// address, one `virtio_mmio.device=` entry per device and then the extra arguments.
pub fn build_cmdline(config: &VmConfig, devices: &[VirtioMmioEntry]) -> Result<Cmdline, BootError> {
    let invalid = |error: linux_loader::cmdline::Error| BootError::Cmdline(error.to_string());
    let mut cmdline = Cmdline::new(CMDLINE_CAPACITY).map_err(invalid)?;
    if !config.boot_args.trim().is_empty() {
        cmdline
            .insert_str(config.boot_args.trim())
            .map_err(invalid)?;
    }
    if config.rootfs.is_some() {
        cmdline
            .insert_str("root=/dev/vda rootfstype=ext4")
            .map_err(invalid)?;
        cmdline
            .insert_str(if config.rootfs_writable { "rw" } else { "ro" })
            .map_err(invalid)?;
    }
    if let Some(net) = &config.net {
        // ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>
        let ip = format!(
            "{}::{}:{}::eth0:off",
            net.guest_ip, net.host_ip, net.netmask
        );
        cmdline.insert("ip", ip.as_str()).map_err(invalid)?;
    }
    for device in devices {
        cmdline
            .add_virtio_mmio_device(
                layout::VIRTIO_MMIO_SIZE,
                GuestAddress(device.addr),
                device.irq,
                None,
            )
            .map_err(invalid)?;
    }
    for arg in &config.extra_args {
        if !arg.trim().is_empty() {
            cmdline.insert_str(arg.trim()).map_err(invalid)?;
        }
    }
    Ok(cmdline)
}

/// A guest kernel image loaded into guest memory, before its boot parameters are written.
#[derive(Debug)]
pub struct LoadedKernel {
    format: KernelFormat,
    result: KernelLoaderResult,
    /// Held while the image's pages are mapped from its file; `None` when it was copied.
    lease: Option<KernelFileLease>,
}

impl LoadedKernel {
    /// Returns whether the image's segments are mapped from its file rather than copied.
    pub fn is_mapped(&self) -> bool {
        self.lease.is_some()
    }

    /// Stops the VM through `latch` if another process opens the mapped kernel file for
    /// writing or truncates it. A copied kernel needs no such guard, so this does nothing.
    pub fn stop_vm_on_file_change(&self, latch: Arc<ExitLatch>) {
        if let Some(lease) = &self.lease {
            lease.stop_vm_on_break(latch);
        }
    }
}

/// Loads the guest kernel at `path` into the fresh guest RAM `mem`, and may run while the VM is
/// being created. With `map_file`, an ELF kernel's segments are mapped from the file under a
/// read lease when every segment can be mapped to exactly the bytes a copy would give. Otherwise,
/// and always for a bzImage, the image is copied into guest RAM, which takes milliseconds for a
/// 9 MB vmlinux.
pub fn load_image(
    mem: &GuestMemoryMmap,
    path: &Path,
    format: KernelFormat,
    map_file: bool,
) -> Result<LoadedKernel, BootError> {
    let display = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::Open {
        path: display.clone(),
        source,
    })?;
    if format == KernelFormat::Elf && map_file {
        if let Some((result, lease)) = map_kernel(mem, &file, &display)? {
            check_pvh_entry(&result, &display)?;
            return Ok(LoadedKernel {
                format,
                result,
                lease: Some(lease),
            });
        }
    }
    let load_error = |error: linux_loader::loader::Error| BootError::Load {
        path: display.clone(),
        detail: error.to_string(),
    };
    let highmem = Some(GuestAddress(HIMEM_START));
    let result = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut file, highmem).map_err(load_error)?,
        KernelFormat::BzImage => {
            BzImage::load(mem, None, &mut file, highmem).map_err(load_error)?
        }
    };
    if format == KernelFormat::Elf {
        check_pvh_entry(&result, &display)?;
    }
    Ok(LoadedKernel {
        format,
        result,
        lease: None,
    })
}

fn check_pvh_entry(result: &KernelLoaderResult, path: &str) -> Result<(), BootError> {
    match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(_) => Ok(()),
        _ => Err(BootError::NoPvhEntry(path.to_string())),
    }
}

/// Maps the ELF kernel `file` into `mem` under a read lease. Returns `None`, with the reason
/// logged, when the kernel has to be copied instead.
fn map_kernel(
    mem: &GuestMemoryMmap,
    file: &File,
    path: &str,
) -> Result<Option<(KernelLoaderResult, KernelFileLease)>, BootError> {
    let copy_instead = |reason: &dyn std::fmt::Display| {
        tracing::debug!(path, %reason, "copying the guest kernel instead of mapping it");
        Ok(None)
    };
    // The lease comes first, so that the headers and the size read below cannot change.
    let lease = match KernelFileLease::acquire(file, path) {
        Ok(lease) => lease,
        Err(error) => return copy_instead(&error),
    };
    let layout = match mapping::read_layout(file) {
        Ok(layout) => layout,
        Err(reason) => return copy_instead(&reason),
    };
    let size = match file.metadata() {
        Ok(metadata) => metadata.len(),
        Err(error) => return copy_instead(&error),
    };
    match mapping::map_elf(mem, file, &layout, size) {
        Ok(mapping::Mapped::Loaded(result)) => Ok(Some((result, lease))),
        Ok(mapping::Mapped::NotMappable(reason)) => copy_instead(&reason),
        Err(source) => Err(BootError::Map {
            path: path.to_string(),
            source,
        }),
    }
}

/// Writes the command line and the memory map for `mem_size` bytes of RAM (PVH start info or
/// zero page) for a loaded kernel, and returns its entry.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    mem_size: u64,
) -> Result<KernelEntry, BootError> {
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?
        .as_bytes_with_nul()
        .len();
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;

    match kernel.format {
        KernelFormat::Elf => {
            let PvhBootCapability::PvhEntryPresent(entry) = kernel.result.pvh_boot_cap else {
                return Err(BootError::BootParams("the kernel has no PVH entry".into()));
            };
            write_pvh_start_info(mem, mem_size)?;
            Ok(KernelEntry {
                mode: EntryMode::Pvh,
                entry: entry.0,
                boot_info: PVH_INFO_ADDR,
            })
        }
        KernelFormat::BzImage => {
            let header = kernel
                .result
                .setup_header
                .ok_or_else(|| BootError::BootParams("the bzImage has no setup header".into()))?;
            write_zero_page(mem, header, cmdline_len, mem_size)?;
            // The 64-bit entry point, startup_64, sits 0x200 bytes into the protected-mode
            // kernel (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol").
            Ok(KernelEntry {
                mode: EntryMode::Long64,
                entry: kernel.result.kernel_load.0 + 0x200,
                boot_info: ZERO_PAGE_ADDR,
            })
        }
    }
}

/// PVH start info magic (`XEN_HVM_START_MAGIC_VALUE`).
const PVH_START_MAGIC: u32 = 0x336e_c578;

fn write_pvh_start_info(mem: &GuestMemoryMmap, mem_size: u64) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = layout::e820_entries(mem_size)
        .iter()
        .map(|entry| hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind,
            reserved: 0,
        })
        .collect();
    let start_info = hvm_start_info {
        magic: PVH_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|e| BootError::BootParams(e.to_string()))
}

/// `boot_flag` and `header` values every setup header carries.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HEADER_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` of a boot loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;

fn write_zero_page(
    mem: &GuestMemoryMmap,
    header: linux_loader::loader::bootparam::setup_header,
    cmdline_len: usize,
    mem_size: u64,
) -> Result<(), BootError> {
    let mut params = boot_params {
        hdr: header,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HEADER_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
    }
    let entries = layout::e820_entries(mem_size);
    if entries.len() > params.e820_table.len() {
        return Err(BootError::BootParams("too many e820 entries".to_string()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&entries) {
        slot.addr = entry.addr;
        slot.size = entry.size;
        slot.r#type = entry.kind;
    }
    params.e820_entries = entries.len() as u8;
    let boot = BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR));
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&boot, mem)
        .map_err(|e| BootError::BootParams(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::config::NetConfig;

    fn config() -> VmConfig {
        let mut config = VmConfig::new("vmlinux".into());
        config.rootfs = Some("rootfs.ext4".into());
        config.net = Some(NetConfig {
            tap: "isb0".into(),
            guest_ip: Ipv4Addr::new(172, 16, 0, 2),
            host_ip: Ipv4Addr::new(172, 16, 0, 1),
            netmask: Ipv4Addr::new(255, 255, 255, 252),
            mac: [6, 0, 172, 16, 0, 2],
        });
        config.extra_args = vec!["isobench.key=00ff".into()];
        config
    }

    #[test]
    fn cmdline_carries_devices_and_addresses() {
        let devices = [VirtioMmioEntry {
            addr: 0xd000_0000,
            irq: 5,
        }];
        let cmdline = build_cmdline(&config(), &devices).unwrap();
        let text = cmdline.as_cstring().unwrap().into_string().unwrap();
        assert!(
            text.contains("virtio_mmio.device=4K@0xd0000000:5"),
            "{text}"
        );
        assert!(text.contains("ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off"));
        assert!(text.contains("root=/dev/vda"));
        assert!(text.contains(" ro"));
        assert!(text.ends_with("isobench.key=00ff"));
    }

    #[test]
    fn cmdline_too_long_is_rejected() {
        let mut config = config();
        config.extra_args = vec!["x".repeat(CMDLINE_CAPACITY)];
        assert!(matches!(
            build_cmdline(&config, &[]),
            Err(BootError::Cmdline(_))
        ));
    }

    #[test]
    fn boot_structures_leave_cmdline_intact() {
        use crate::arch::mptable;
        use vm_memory::Bytes;

        let mem_size = 64 << 20;
        let mem = crate::memory::create(mem_size, Default::default()).unwrap();
        let mut config = config();
        config.extra_args = vec!["x".repeat(CMDLINE_CAPACITY - 400)];
        let cmdline = build_cmdline(&config, &[]).unwrap();
        let text = cmdline.as_cstring().unwrap();
        let bytes = text.as_bytes_with_nul();
        load_cmdline(&mem, GuestAddress(CMDLINE_ADDR), &cmdline).unwrap();

        write_pvh_start_info(&mem, mem_size).unwrap();
        write_zero_page(&mem, Default::default(), bytes.len(), mem_size).unwrap();
        mptable::write(&mem, mptable::max_vcpus()).unwrap();
        crate::arch::regs::write_boot_tables(&mem, EntryMode::Long64).unwrap();

        let mut read_back = vec![0u8; bytes.len()];
        mem.read_slice(&mut read_back, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(
            read_back, bytes,
            "the command line survived every other structure"
        );
        let table = mptable::build(mptable::max_vcpus(), layout::MPTABLE_ADDR).unwrap();
        let mut written = vec![0u8; table.len()];
        mem.read_slice(&mut written, GuestAddress(layout::MPTABLE_ADDR))
            .unwrap();
        assert_eq!(
            written, table,
            "the MP table survived the zero page and page tables"
        );
        let magic: u32 = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(
            magic, PVH_START_MAGIC,
            "the PVH start info survived the zero page"
        );
    }

    /// Writes a small ELF kernel with a PVH note to a temporary folder.
    fn small_elf() -> (tempfile::TempDir, std::path::PathBuf) {
        use mapping::tests::{build_elf, load};
        const PT_LOAD: u32 = 1;
        let image = build_elf(
            0x100_0000,
            &[
                load(PT_LOAD, 0x1000, 0x100_0000, 0x5000, 0x5000),
                load(PT_LOAD, 0x6000, 0x100_6000, 0x1800, 0x4000),
            ],
            Some(0x100_0000),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, image).unwrap();
        (dir, path)
    }

    #[test]
    fn load_image_copies_without_map_file() {
        let (_dir, path) = small_elf();
        let mem = crate::memory::create(64 << 20, Default::default()).unwrap();
        let kernel = load_image(&mem, &path, KernelFormat::Elf, false).unwrap();
        assert!(!kernel.is_mapped());
    }

    #[test]
    fn load_image_maps_inside_guest_ram() {
        let (_dir, path) = small_elf();
        let mem = crate::memory::create(64 << 20, Default::default()).unwrap();
        let kernel = load_image(&mem, &path, KernelFormat::Elf, true).unwrap();
        if !kernel.is_mapped() {
            eprintln!("skipped: the temporary folder's file system takes no lease");
            return;
        }

        // Every mapping of the kernel file lies inside guest RAM, so the VMM overhead, which
        // subtracts the guest RAM ranges, never counts the kernel's pages.
        let ram = crate::memory::mappings(&mem);
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let file_ranges: Vec<(u64, u64)> = maps
            .lines()
            .filter(|line| line.ends_with(path.to_str().unwrap()))
            .map(|line| {
                let (start, end) = line
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .split_once('-')
                    .unwrap();
                let parse = |hex| u64::from_str_radix(hex, 16).unwrap();
                (parse(start), parse(end))
            })
            .collect();
        assert_eq!(file_ranges.len(), 2, "one mapping per segment: {maps}");
        for (start, end) in file_ranges {
            let inside = ram
                .iter()
                .any(|m| start >= m.host_addr && end <= m.host_addr + m.size);
            assert!(inside, "{start:#x}-{end:#x} lies outside guest RAM");
        }
        assert!(matches!(
            kernel.result.pvh_boot_cap,
            PvhBootCapability::PvhEntryPresent(GuestAddress(0x100_0000))
        ));
    }
}
