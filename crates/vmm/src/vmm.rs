//! Building and running one microVM: KVM objects, guest RAM, devices, the guest kernel and
//! the vCPUs, in the order the crate documentation lists, except that the memory slot is
//! installed before the interrupt controllers (see [`Machine::create_with_memory`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, MsrList, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vm_superio::I8042Device;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::{self, SERIAL_IRQ, VIRTIO_IRQ_BASE};
use crate::arch::regs;
use crate::arch::{cpuid, mptable};
use crate::boot::{self, BootError, KernelEntry, LoadedKernel, VirtioMmioEntry};
use crate::config::{ConfigError, VmConfig};
use crate::devices::legacy::{
    MarkerPort, ResetTrigger, I8042, I8042_PORT, I8042_PORTS, MARKER_PORT,
};
use crate::devices::serial::{open_console, ConsoleDrain, SerialDevice, COM1_PORT, UART_PORTS};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mmio::{regs as mmio_regs, MmioTransport};
use crate::devices::virtio::net::Net;
use crate::devices::virtio::tap::{Tap, TapError};
use crate::devices::virtio::VirtioDevice;
use crate::devices::{lock, Bus, DevicesError};
use crate::event_loop::EventLoop;
use crate::events::{EventSink, ExitReason};
use crate::memory::{self, MemoryError};
use crate::vcpu::{install_kick_handler, ExitCounters, ExitLatch, VcpuShared, VcpuThreads};

/// How long vCPU threads get to leave `KVM_RUN` once the VM stops.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of building or starting a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// A configuration value is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `/dev/kvm` does not exist.
    #[error("/dev/kvm not found: enable virtualization and load the kvm module (modprobe kvm_intel or kvm_amd)")]
    KvmMissing,
    /// `/dev/kvm` cannot be opened by this user.
    #[error("permission denied opening /dev/kvm: add this user to the kvm group or run as root")]
    KvmPermission,
    /// `/dev/kvm` lacks a capability the VMM needs.
    #[error("KVM lacks the {0} capability, which the VMM needs")]
    KvmCapability(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// The serial console's destination cannot be opened.
    #[error(
        "cannot open the console destination {destination} ({error}): pass --console none, \
         stdout, stderr, fd:N or file:PATH with a writable PATH"
    )]
    Console {
        /// The destination, as given.
        destination: String,
        /// Why.
        error: std::io::Error,
    },
    /// The vCPU count exceeds what KVM supports here.
    #[error("vCPU count {count} is out of range: this host's KVM supports at most {max}")]
    TooManyVcpus {
        /// Requested.
        count: u32,
        /// KVM's limit.
        max: u32,
    },
    /// Guest RAM could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The guest kernel could not be loaded.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The root disk could not be opened.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The TAP device could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The MP table could not be written.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// Devices could not be placed.
    #[error(transparent)]
    Devices(#[from] DevicesError),
    /// A host facility (eventfd, thread, file) failed.
    #[error("cannot {what}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs one setup step and logs its start and end on `CLOCK_MONOTONIC`, in microseconds, so
/// that a parent can line the steps up with its own clock.
fn timed<T>(step: &'static str, run: impl FnOnce() -> T) -> T {
    let start_us = crate::events::monotonic_us();
    let result = run();
    log_step(step, start_us);
    result
}

/// Logs the end of one setup step. One call site instead of one per step keeps the binary's
/// code, and so the VMM's resident memory, smaller.
#[inline(never)]
fn log_step(step: &'static str, start_us: u64) {
    let end_us = crate::events::monotonic_us();
    tracing::debug!(step, start_us, end_us, "setup step");
}

fn kvm_error(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

fn io_error(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

/// Opens `/dev/kvm`, telling a missing device from a permission problem.
pub fn open_kvm() -> Result<Kvm, VmmError> {
    Kvm::new().map_err(|error| match error.errno() {
        libc::ENOENT | libc::ENXIO | libc::ENODEV => VmmError::KvmMissing,
        libc::EACCES | libc::EPERM => VmmError::KvmPermission,
        _ => VmmError::Kvm {
            what: "open /dev/kvm",
            source: error,
        },
    })
}

/// Sets the TSS and identity-map addresses and creates the in-kernel PIC, IOAPIC, LAPICs and
/// PIT.
fn create_controllers(kvm: &Kvm, vm: &VmFd) -> Result<(), VmmError> {
    if kvm.check_extension(Cap::SetTssAddr) {
        timed("set TSS address", || {
            vm.set_tss_address(layout::KVM_TSS_ADDR as usize)
        })
        .map_err(kvm_error("set TSS address"))?;
    }
    if kvm.check_extension(Cap::SetIdentityMapAddr) {
        timed("set identity map address", || {
            vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
        })
        .map_err(kvm_error("set identity map address"))?;
    }
    timed("create irqchip", || vm.create_irq_chip()).map_err(kvm_error("create irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    timed("create PIT", || vm.create_pit2(pit)).map_err(kvm_error("create PIT"))
}

/// Installs one KVM memory slot per guest RAM region.
fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let region_info = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping of exactly `memory_size` bytes owned by `mem`,
        // which the Machine keeps until the VM is dropped. Slots do not overlap because the
        // RAM ranges do not.
        unsafe { vm.set_user_memory_region(region_info) }
            .map_err(kvm_error("set memory region"))?;
    }
    Ok(())
}

/// CPUID entries and MSR indices this host's KVM supports for vCPU setup. The query took
/// 0.3 ms on a 2-core AMD EPYC cloud VM with `kvm_pvm`, so [`run_vm`] runs it beside VM
/// creation.
pub struct HostCpu {
    supported: CpuId,
    msr_list: MsrList,
}

impl HostCpu {
    /// Queries the supported CPUID entries and the MSR index list from `kvm`.
    pub fn query(kvm: &Kvm) -> Result<Self, VmmError> {
        let supported = timed("get supported CPUID", || {
            kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        })
        .map_err(kvm_error("get supported CPUID"))?;
        let msr_list = timed("get MSR list", || kvm.get_msr_index_list())
            .map_err(kvm_error("get MSR list"))?;
        Ok(HostCpu {
            supported,
            msr_list,
        })
    }
}

/// A created VM with its memory and devices, before its vCPUs run.
pub struct Machine {
    kvm: Kvm,
    vm: VmFd,
    mem: GuestMemoryMmap,
    vcpu_count: u32,
    latch: Arc<ExitLatch>,
    events: Arc<EventSink>,
    pio: Bus,
    mmio: Bus,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    virtio_entries: Vec<VirtioMmioEntry>,
    serial: Arc<Mutex<SerialDevice>>,
    console_drain: Option<ConsoleDrain>,
    vcpus: Vec<VcpuFd>,
}

impl Machine {
    /// Creates the VM, guest RAM and every device of `config`.
    pub fn create(config: &VmConfig, events: Arc<EventSink>) -> Result<Self, VmmError> {
        let mem = memory::create(config.memory_bytes(), config.memory)?;
        Self::create_with_memory(config, events, mem)
    }

    /// Creates the VM and every device of `config` around guest RAM `mem`.
    pub fn create_with_memory(
        config: &VmConfig,
        events: Arc<EventSink>,
        mem: GuestMemoryMmap,
    ) -> Result<Self, VmmError> {
        let kvm = timed("open /dev/kvm", open_kvm)?;
        for (cap, name) in [
            (Cap::Irqchip, "IRQCHIP"),
            (Cap::Irqfd, "IRQFD"),
            (Cap::Ioeventfd, "IOEVENTFD"),
            (Cap::UserMemory, "USER_MEMORY"),
            (Cap::Pit2, "PIT2"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmmError::KvmCapability(name));
            }
        }
        let max_vcpus = kvm.get_max_vcpus() as u32;
        if config.vcpus > max_vcpus {
            return Err(VmmError::TooManyVcpus {
                count: config.vcpus,
                max: max_vcpus,
            });
        }

        let vm = timed("create VM", || kvm.create_vm()).map_err(kvm_error("create VM"))?;
        // Installing the memory slot and creating the interrupt controllers each wait for SRCU
        // grace periods in the host kernel. On the 2-core paravirtual KVM host, slot first and
        // then the controllers on one thread took 5.9 ms median to the first KVM_RUN, against
        // 9.3 ms with the two on separate threads and 11.5 ms with the controllers first (100
        // interleaved starts each at load 5; Mann-Whitney p = 0.014 and 0.013).
        timed("memory slots", || register_memory(&vm, &mem))?;
        timed("irqchip and PIT", || create_controllers(&kvm, &vm))?;

        let latch =
            Arc::new(ExitLatch::new(events.clone()).map_err(io_error("create an eventfd"))?);
        let mut machine = Machine {
            kvm,
            vm,
            mem,
            vcpu_count: config.vcpus,
            latch,
            events,
            pio: Bus::new(),
            mmio: Bus::new(),
            transports: Vec::new(),
            virtio_entries: Vec::new(),
            serial: Arc::new(Mutex::new(SerialDevice::new(
                EventFd::new(libc::EFD_NONBLOCK).map_err(io_error("create an eventfd"))?,
                open_console(&crate::config::Destination::None)
                    .map_err(io_error("open the console"))?
                    .0,
            ))),
            console_drain: None,
            vcpus: Vec::new(),
        };
        timed("legacy devices", || machine.add_legacy_devices(config))?;
        if let Some(rootfs) = &config.rootfs {
            timed("block device", || -> Result<(), VmmError> {
                let block = Block::open(rootfs, config.rootfs_writable)?;
                machine.add_virtio(Box::new(block))
            })?;
        }
        if let Some(net) = &config.net {
            timed("net device", || -> Result<(), VmmError> {
                let tap = Tap::open(&net.tap)?;
                if tap.created() {
                    tap.configure(net.host_ip, net.netmask)?;
                }
                machine.add_virtio(Box::new(Net::new(tap, net.mac)?))
            })?;
        }
        Ok(machine)
    }

    fn add_legacy_devices(&mut self, config: &VmConfig) -> Result<(), VmmError> {
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_error("create an eventfd"))?;
        self.vm
            .register_irqfd(&irq, SERIAL_IRQ)
            .map_err(kvm_error("register the serial irqfd"))?;
        let (writer, drain) = open_console(&config.console).map_err(|error| VmmError::Console {
            destination: config.console.to_string(),
            error,
        })?;
        self.serial = Arc::new(Mutex::new(SerialDevice::new(irq, writer)));
        self.console_drain = drain;
        self.pio
            .insert(COM1_PORT, UART_PORTS, self.serial.clone())?;

        let i8042 = I8042(I8042Device::new(ResetTrigger(self.latch.clone())));
        self.pio
            .insert(I8042_PORT, I8042_PORTS, Arc::new(Mutex::new(i8042)))?;
        let marker = MarkerPort::new(self.events.clone());
        self.pio
            .insert(MARKER_PORT, 1, Arc::new(Mutex::new(marker)))?;
        Ok(())
    }

    fn add_virtio(&mut self, device: Box<dyn VirtioDevice>) -> Result<(), VmmError> {
        let index = self.transports.len();
        let addr = layout::virtio_mmio_addr(index);
        let irq_line = VIRTIO_IRQ_BASE + index as u32;
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_error("create an eventfd"))?;
        self.vm
            .register_irqfd(&irq, irq_line)
            .map_err(kvm_error("register a virtio irqfd"))?;
        let transport = MmioTransport::new(device, self.mem.clone(), irq)
            .map_err(io_error("create a virtio transport"))?;
        for (queue, event) in transport.queue_events().iter().enumerate() {
            self.vm
                .register_ioevent(
                    event,
                    &IoEventAddress::Mmio(addr + mmio_regs::QUEUE_NOTIFY),
                    queue as u32,
                )
                .map_err(kvm_error("register a virtio ioeventfd"))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(addr, layout::VIRTIO_MMIO_SIZE, transport.clone())?;
        self.transports.push(transport);
        self.virtio_entries.push(VirtioMmioEntry {
            addr,
            irq: irq_line,
        });
        Ok(())
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Builds the command line and writes it with the boot parameters of the loaded `kernel`
    /// and the MP table.
    pub fn write_boot_params(
        &self,
        config: &VmConfig,
        kernel: &LoadedKernel,
    ) -> Result<KernelEntry, VmmError> {
        let cmdline = boot::build_cmdline(config, &self.virtio_entries)?;
        let entry = boot::write_boot_params(&self.mem, kernel, &cmdline, config.memory_bytes())?;
        mptable::write(&self.mem, self.vcpu_count)?;
        Ok(entry)
    }

    /// Creates and configures the vCPUs to enter at `entry`.
    pub fn create_vcpus(&mut self, entry: &KernelEntry) -> Result<(), VmmError> {
        let host_cpu = HostCpu::query(&self.kvm)?;
        self.create_vcpus_with(entry, &host_cpu)
    }

    /// Creates and configures the vCPUs to enter at `entry`, from CPUID and MSR lists queried
    /// before.
    pub fn create_vcpus_with(
        &mut self,
        entry: &KernelEntry,
        host_cpu: &HostCpu,
    ) -> Result<(), VmmError> {
        timed("boot page tables", || {
            regs::write_boot_tables(&self.mem, entry.mode)
        })?;
        let HostCpu {
            supported,
            msr_list,
        } = host_cpu;
        for index in 0..self.vcpu_count {
            let vcpu = timed("create vCPU", || self.vm.create_vcpu(index as u64))
                .map_err(kvm_error("create vCPU"))?;
            let mut cpuid = supported.clone();
            cpuid::patch(&mut cpuid, index, self.vcpu_count);
            timed("set CPUID", || vcpu.set_cpuid2(&cpuid)).map_err(kvm_error("set CPUID"))?;
            timed("set MSRs", || regs::set_msrs(&vcpu, msr_list.as_slice()))?;
            timed("set FPU", || regs::set_fpu(&vcpu))?;
            timed("set registers", || {
                regs::set_boot_registers(&vcpu, entry.mode, entry.entry, entry.boot_info)
            })?;
            timed("set LINT", || regs::set_lint(&vcpu))?;
            self.vcpus.push(vcpu);
        }
        Ok(())
    }

    /// Runs the VM until it ends and tears it down; returns how it ended.
    pub fn run(mut self) -> Result<ExitReason, VmmError> {
        timed("kick handler", install_kick_handler)
            .map_err(io_error("install the vCPU kick handler"))?;
        let mut event_loop = timed("event loop", || {
            EventLoop::new(self.latch.clone(), self.transports.clone())
        })
        .map_err(io_error("create the event loop"))?;
        let shared = Arc::new(VcpuShared {
            pio: std::mem::take(&mut self.pio),
            mmio: std::mem::take(&mut self.mmio),
            latch: self.latch.clone(),
            events: self.events.clone(),
            counters: ExitCounters::default(),
            guest_ram: memory::mappings(&self.mem),
            vcpu_count: self.vcpu_count,
        });
        let threads = timed("start vCPU threads", || {
            VcpuThreads::start(std::mem::take(&mut self.vcpus), shared.clone())
        })
        .map_err(io_error("start the vCPU threads"))?;
        let reason = event_loop.run();
        threads.stop(VCPU_STOP_TIMEOUT);
        lock(&self.serial).close();
        if let Some(drain) = self.console_drain.take() {
            drain.join();
        }
        for transport in &self.transports {
            let errors = lock(transport).error_count();
            if errors > 0 {
                tracing::warn!(errors, "a virtio device saw malformed requests");
            }
        }
        Ok(reason)
    }
}

/// Builds the VM described by `config`, boots its guest kernel and runs it until it ends.
pub fn run_vm(config: &VmConfig, events: Arc<EventSink>) -> Result<ExitReason, VmmError> {
    let format = timed("validate", || config.validate())?;
    let mem = timed("map guest RAM", || {
        memory::create(config.memory_bytes(), config.memory)
    })?;

    // Mapping the kernel file would undo prefaulting, and a file cannot back huge pages.
    let map_file = !config.memory.prefault && !config.memory.hugepages;
    // The loader thread also queries the host's CPUID and MSR lists, which need no VM.
    let load = || {
        let kernel = timed("load guest kernel", || {
            boot::load_image(&mem, &config.kernel, format, map_file)
        });
        (kernel, open_kvm().and_then(|kvm| HostCpu::query(&kvm)))
    };
    // Loading the guest kernel overlaps with the KVM ioctls of VM creation, which spend their
    // time in the host kernel.
    let (machine, loaded) = std::thread::scope(|scope| {
        let loader = std::thread::Builder::new()
            .name("loader".into())
            .spawn_scoped(scope, load);
        let machine = Machine::create_with_memory(config, events, mem.clone());
        let loaded = match loader {
            Ok(handle) => handle.join().unwrap_or_else(|_| {
                let panicked = BootError::Load {
                    path: config.kernel.display().to_string(),
                    detail: "the loader thread panicked".into(),
                };
                let no_query = VmmError::Io {
                    what: "query the host CPU",
                    source: std::io::Error::other("the loader thread panicked"),
                };
                (Err(panicked), Err(no_query))
            }),
            Err(error) => {
                // No thread: load on this one.
                tracing::debug!(%error, "cannot start the loader thread");
                load()
            }
        };
        (machine, loaded)
    });
    let mut machine = machine?;
    let (kernel, host_cpu) = loaded;
    let kernel = kernel?;
    let host_cpu = host_cpu?;
    kernel.stop_vm_on_file_change(machine.latch.clone());
    tracing::debug!(mapped = kernel.is_mapped(), "guest kernel loaded");

    let entry = timed("boot parameters", || {
        machine.write_boot_params(config, &kernel)
    })?;
    machine.create_vcpus_with(&entry, &host_cpu)?;
    machine.run()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::PathBuf;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::arch::regs::EntryMode;
    use crate::config::Destination;
    use crate::events::{Event, ShutdownReason};

    /// Collects event lines in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn events(&self) -> Vec<Event> {
            let text = String::from_utf8(lock(&self.0).clone()).unwrap();
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("isobench-vmm-{name}-{}", std::process::id()))
    }

    /// 32-bit protected-mode code: reads the virtio-mmio magic and prints its low byte on
    /// COM1, writes marker 1, sets the device status to ACKNOWLEDGE, reads it back and writes
    /// it as a marker, then pulses the i8042 reset line.
    const GUEST_CODE: &[u8] = &[
        0xa1, 0x00, 0x00, 0x00, 0xd0, // mov eax, [0xd0000000]
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al
        0xb0, 0x0a, // mov al, '\n'
        0xee, // out dx, al
        0xb0, 0x01, // mov al, 1
        0x66, 0xba, 0x40, 0x04, // mov dx, 0x440
        0xee, // out dx, al
        0xc7, 0x05, 0x70, 0x00, 0x00, 0xd0, 0x01, 0x00, 0x00,
        0x00, // mov dword [0xd0000070], 1
        0xa1, 0x70, 0x00, 0x00, 0xd0, // mov eax, [0xd0000070]
        0xee, // out dx, al
        0xb0, 0xfe, // mov al, 0xfe
        0xe6, 0x64, // out 0x64, al
        0xf4, // hlt
        0xeb, 0xfd, // jmp hlt
    ];
    const CODE_ADDR: u64 = 0x1000;

    #[test]
    fn mapped_kernel_runs_and_resets() {
        use crate::boot::mapping::tests::{build_elf, load};
        use crate::config::KernelFormat;

        if !std::path::Path::new("/dev/kvm").exists() {
            eprintln!("skipped: /dev/kvm is missing");
            return;
        }
        // GUEST_CODE at the start of a two-page segment at 16 MiB, so that its page is mapped
        // from the file, not copied, after the memory slot was installed.
        const KERNEL_ADDR: u64 = 0x100_0000;
        const SEGMENT_OFFSET: u64 = 0x2000;
        let mut image = build_elf(
            KERNEL_ADDR,
            &[load(1, SEGMENT_OFFSET, KERNEL_ADDR, 0x2000, 0x2000)],
            Some(KERNEL_ADDR as u32),
        );
        let code_at = SEGMENT_OFFSET as usize;
        image[code_at..code_at + GUEST_CODE.len()].copy_from_slice(GUEST_CODE);
        let dir = tempfile::tempdir().unwrap();
        let kernel_path = dir.path().join("vmlinux");
        std::fs::write(&kernel_path, &image).unwrap();
        let disk = dir.path().join("disk");
        std::fs::write(&disk, vec![0u8; 4096]).unwrap();
        let console = dir.path().join("console");
        let mut config = VmConfig::new(kernel_path.clone());
        config.memory_mib = 32;
        config.rootfs = Some(disk);
        config.console = Destination::File(console.clone());
        let captured = Captured::default();
        let events = Arc::new(EventSink::new(Box::new(captured.clone())));

        let mut machine = Machine::create(&config, events).unwrap();
        let kernel =
            boot::load_image(machine.memory(), &kernel_path, KernelFormat::Elf, true).unwrap();
        if !kernel.is_mapped() {
            eprintln!("skipped: the temporary folder's file system takes no lease");
            return;
        }
        kernel.stop_vm_on_file_change(machine.latch.clone());
        let entry = KernelEntry {
            mode: EntryMode::Pvh,
            entry: KERNEL_ADDR,
            boot_info: 0,
        };
        machine.create_vcpus(&entry).unwrap();
        let reason = machine.run().unwrap();

        assert_eq!(reason, ExitReason::Guest(ShutdownReason::Reset));
        assert_eq!(
            std::fs::read(&console).unwrap(),
            b"v\n",
            "low byte of \"virt\""
        );
    }

    #[test]
    fn guest_code_reaches_every_device_and_resets() {
        if !std::path::Path::new("/dev/kvm").exists() {
            eprintln!("skipped: /dev/kvm is missing");
            return;
        }
        let disk = temp_path("disk");
        std::fs::write(&disk, vec![0u8; 4096]).unwrap();
        let console = temp_path("console");
        let mut config = VmConfig::new("unused".into());
        config.vcpus = 2;
        config.memory_mib = 32;
        config.rootfs = Some(disk.clone());
        config.console = Destination::File(console.clone());
        let captured = Captured::default();
        let events = Arc::new(EventSink::new(Box::new(captured.clone())));

        let mut machine = Machine::create(&config, events).unwrap();
        machine
            .memory()
            .write_slice(GUEST_CODE, GuestAddress(CODE_ADDR))
            .unwrap();
        let entry = KernelEntry {
            mode: EntryMode::Pvh,
            entry: CODE_ADDR,
            boot_info: 0,
        };
        machine.create_vcpus(&entry).unwrap();
        let reason = machine.run().unwrap();

        assert_eq!(reason, ExitReason::Guest(ShutdownReason::Reset));
        assert_eq!(reason.status(), 0);
        assert_eq!(
            std::fs::read(&console).unwrap(),
            b"v\n",
            "low byte of \"virt\""
        );
        let events = captured.events();
        let names: Vec<&str> = events.iter().map(|e| e.name()).collect();
        assert_eq!(
            names,
            [
                "vcpus_running",
                "init_started",
                "init_started",
                "guest_shutdown"
            ],
            "marker 1 twice: once written, once read back from the status register"
        );
        let stamps: Vec<u64> = events.iter().map(|e| e.monotonic_us()).collect();
        assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
        std::fs::remove_file(disk).unwrap();
        std::fs::remove_file(console).unwrap();
    }
}
