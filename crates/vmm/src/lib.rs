//! A small KVM virtual machine monitor that boots the isobench guest image.
//!
//! The binary `isobench-vmm` runs one microVM per process, as Firecracker does, so that its
//! memory and CPU are attributable to it. The boot steps, in order:
//!
//! 1. open `/dev/kvm`, create the VM with its TSS and identity-map addresses, the in-kernel
//!    interrupt controllers (PIC, IOAPIC, LAPIC) and PIT ([`vmm`]);
//! 2. map guest RAM as lazily faulted anonymous memory, one KVM slot per range on either side
//!    of the MMIO gap below 4 GiB ([`memory`], [`arch::layout`]);
//! 3. create the devices: 16550 serial on COM1, i8042 (reset only), the boot-marker port and
//!    virtio-mmio (version 2) block and network devices ([`devices`]);
//! 4. load the guest kernel, either an ELF `vmlinux` entered through PVH or a `bzImage`
//!    entered through the Linux 64-bit boot protocol, and write the command line, the memory
//!    map and the MP table ([`boot`], [`arch`]);
//! 5. create one vCPU per thread with patched CPUID, MSRs, registers and LAPIC ([`vcpu`]);
//! 6. serve queue notifications, TAP traffic and signals from one epoll loop until the guest
//!    resets, fails or the process receives SIGTERM ([`event_loop`]).
//!
//! Not supported: PCI, ACPI, interrupt remapping, more than one queue pair, snapshots.
//!
//! [`supervisor`] is the API a parent process uses to spawn `isobench-vmm` and read its
//! JSON-lines [`events`].
#![deny(missing_docs)]

pub mod arch;
pub mod boot;
pub mod config;
pub mod devices;
pub mod emulated;
pub mod event_loop;
pub mod events;
pub mod logger;
pub mod memory;
pub mod supervisor;
pub mod vcpu;
pub mod vmm;

pub use config::VmConfig;
pub use events::{Event, ExitReason};
pub use vmm::{run_vm, VmmError};
