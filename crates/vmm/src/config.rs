//! The resolved configuration of one microVM, validated before any KVM call so that each bad
//! input ends in a one-line error that names the value and what to do.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::str::FromStr;

use crate::arch::mptable;

/// Kernel command line the VMM starts from, before the root disk, network and virtio-mmio
/// entries and the caller's extra arguments. `reboot=k` makes a guest reboot use the i8042
/// reset line, which ends the VMM with status 0.
pub const DEFAULT_BOOT_ARGS: &str =
    "console=ttyS0 reboot=k pci=off nomodule i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// Smallest guest RAM accepted, in MiB.
pub const MIN_MEMORY_MIB: u64 = 32;

/// Maximum vCPUs of a microVM: as many processor entries as the MP table has space for. Every
/// entry point (`isobench-vmm`, `isobench vm boot`, `run` and `compare`) checks `--vcpus`
/// against it with [`check_vcpus`]. KVM's own limit is checked when the VM is created.
pub const MAX_VCPUS: u32 = mptable::max_vcpus();

/// Checks a `--vcpus` value against 1 to [`MAX_VCPUS`].
pub fn check_vcpus(count: u32) -> Result<(), ConfigError> {
    if count == 0 || count > MAX_VCPUS {
        return Err(ConfigError::VcpusOutOfRange {
            count,
            max: MAX_VCPUS,
        });
    }
    Ok(())
}

/// Errors of validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The guest kernel file does not exist or cannot be read.
    #[error("guest kernel {path} cannot be read: {source}")]
    KernelUnreadable {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The guest kernel file is neither an ELF `vmlinux` nor a `bzImage`.
    #[error("guest kernel {0} is neither an ELF vmlinux nor a bzImage: pass the vmlinux or bzImage from the guest image")]
    NotAKernel(PathBuf),
    /// The root disk does not exist or cannot be opened.
    #[error("root disk {path} cannot be opened: {source}")]
    RootfsUnreadable {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The vCPU count is outside what the MP table can describe.
    #[error("invalid --vcpus {count}: use 1 to {max}, the vCPU limit of the microVM's MP table")]
    VcpusOutOfRange {
        /// Count given.
        count: u32,
        /// Maximum.
        max: u32,
    },
    /// The memory size is too small.
    #[error("guest memory {mib} MiB is too small: pass --memory {MIN_MEMORY_MIB} or more")]
    MemoryTooSmall {
        /// Size given.
        mib: u64,
    },
    /// The memory size exceeds the host's RAM.
    #[error("guest memory {mib} MiB is larger than this host's {host_mib} MiB of RAM: pass a smaller --memory")]
    MemoryTooLarge {
        /// Size given.
        mib: u64,
        /// Host RAM.
        host_mib: u64,
    },
    /// Prefaulted memory exceeds what the host has available.
    #[error("guest memory {mib} MiB cannot be prefaulted: this host has {available_mib} MiB available; pass a smaller --memory or drop --prefault")]
    PrefaultTooLarge {
        /// Size given.
        mib: u64,
        /// Host `MemAvailable`.
        available_mib: u64,
    },
    /// Huge pages need a multiple of 2 MiB.
    #[error("guest memory {mib} MiB is not a multiple of 2 MiB, which --hugepages needs")]
    MemoryNotHugeAligned {
        /// Size given.
        mib: u64,
    },
    /// A command-line argument contains a character the kernel command line cannot carry.
    #[error("kernel command line argument {0:?} contains a NUL byte or newline")]
    InvalidArgument(String),
    /// A TAP name is too long or has invalid characters.
    #[error("TAP device name {0:?} is invalid: use 1 to 15 characters without '/', ':' or spaces")]
    InvalidTapName(String),
    /// A console or events destination could not be parsed.
    #[error("invalid destination {0:?}: use none, stdout, stderr, file:PATH or fd:N")]
    InvalidDestination(String),
}

/// Boot protocol of a guest kernel file, detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF `vmlinux`, entered through PVH.
    Elf,
    /// `bzImage`, entered through the Linux 64-bit boot protocol.
    BzImage,
}

impl fmt::Display for KernelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelFormat::Elf => f.write_str("vmlinux (PVH)"),
            KernelFormat::BzImage => f.write_str("bzImage (64-bit boot protocol)"),
        }
    }
}

/// Destination of a byte stream (the serial console, the events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Discarded.
    None,
    /// The VMM's standard output.
    Stdout,
    /// The VMM's standard error.
    Stderr,
    /// A file, created or truncated.
    File(PathBuf),
    /// An inherited file descriptor.
    Fd(RawFd),
}

impl FromStr for Destination {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "none" => Ok(Destination::None),
            "stdout" => Ok(Destination::Stdout),
            "stderr" => Ok(Destination::Stderr),
            _ => {
                if let Some(path) = text.strip_prefix("file:").filter(|p| !p.is_empty()) {
                    Ok(Destination::File(PathBuf::from(path)))
                } else if let Some(fd) = text.strip_prefix("fd:").and_then(|n| n.parse().ok()) {
                    Ok(Destination::Fd(fd))
                } else {
                    Err(ConfigError::InvalidDestination(text.to_string()))
                }
            }
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::None => f.write_str("none"),
            Destination::Stdout => f.write_str("stdout"),
            Destination::Stderr => f.write_str("stderr"),
            Destination::File(path) => write!(f, "file:{}", path.display()),
            Destination::Fd(fd) => write!(f, "fd:{fd}"),
        }
    }
}

/// The guest's network link: a TAP device on the host and the addresses on either end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// TAP device name; created by the VMM when absent (needs CAP_NET_ADMIN).
    pub tap: String,
    /// Guest address, set through the kernel's `ip=` parameter.
    pub guest_ip: Ipv4Addr,
    /// Host address on the TAP device, the guest's gateway.
    pub host_ip: Ipv4Addr,
    /// Netmask of the link.
    pub netmask: Ipv4Addr,
    /// Guest MAC address.
    pub mac: [u8; 6],
}

impl NetConfig {
    /// A locally administered unicast MAC derived from the guest address: `06:00:` followed by
    /// the four address bytes.
    pub fn mac_for(guest_ip: Ipv4Addr) -> [u8; 6] {
        let [a, b, c, d] = guest_ip.octets();
        [0x06, 0x00, a, b, c, d]
    }
}

/// Memory backing options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryOptions {
    /// Fault every page in at start (`MAP_POPULATE`) instead of on first guest access.
    pub prefault: bool,
    /// Back guest RAM with 2 MiB hugetlbfs pages (`MAP_HUGETLB`).
    pub hugepages: bool,
}

/// Everything one microVM needs, resolved from the command line.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest kernel: ELF `vmlinux` (PVH) or `bzImage`.
    pub kernel: PathBuf,
    /// Root disk image or block device, attached as `/dev/vda`.
    pub rootfs: Option<PathBuf>,
    /// Attach the root disk writable; read-only otherwise.
    pub rootfs_writable: bool,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Memory backing options.
    pub memory: MemoryOptions,
    /// The network link, if any.
    pub net: Option<NetConfig>,
    /// Base kernel command line; [`DEFAULT_BOOT_ARGS`] unless replaced.
    pub boot_args: String,
    /// Arguments appended to the kernel command line after the VMM's own entries.
    pub extra_args: Vec<String>,
    /// Serial console destination.
    pub console: Destination,
}

impl VmConfig {
    /// A configuration with defaults: 1 vCPU, 256 MiB, no disk, no network, console to
    /// standard error.
    pub fn new(kernel: PathBuf) -> Self {
        VmConfig {
            kernel,
            rootfs: None,
            rootfs_writable: false,
            vcpus: 1,
            memory_mib: 256,
            memory: MemoryOptions::default(),
            net: None,
            boot_args: DEFAULT_BOOT_ARGS.to_string(),
            extra_args: Vec::new(),
            console: Destination::Stderr,
        }
    }

    /// Guest RAM in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }

    /// Checks every value that can be checked without KVM and returns the kernel's format.
    pub fn validate(&self) -> Result<KernelFormat, ConfigError> {
        let format = detect_kernel_format(&self.kernel)?;
        if let Some(rootfs) = &self.rootfs {
            File::open(rootfs).map_err(|source| ConfigError::RootfsUnreadable {
                path: rootfs.clone(),
                source,
            })?;
        }
        check_vcpus(self.vcpus)?;
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall {
                mib: self.memory_mib,
            });
        }
        if let Some(host_mib) = host_memory_mib() {
            if self.memory_mib > host_mib {
                return Err(ConfigError::MemoryTooLarge {
                    mib: self.memory_mib,
                    host_mib,
                });
            }
        }
        if let Some(available_mib) =
            host_meminfo_mib("MemAvailable:").filter(|_| self.memory.prefault)
        {
            // Prefaulted RAM is allocated at start, so it must fit what the host has free.
            if self.memory_mib > available_mib {
                return Err(ConfigError::PrefaultTooLarge {
                    mib: self.memory_mib,
                    available_mib,
                });
            }
        }
        if self.memory.hugepages && self.memory_mib % 2 != 0 {
            return Err(ConfigError::MemoryNotHugeAligned {
                mib: self.memory_mib,
            });
        }
        for arg in self
            .extra_args
            .iter()
            .chain(std::iter::once(&self.boot_args))
        {
            if arg.contains(['\0', '\n']) {
                return Err(ConfigError::InvalidArgument(arg.clone()));
            }
        }
        if let Some(net) = &self.net {
            let valid = !net.tap.is_empty()
                && net.tap.len() < 16
                && !net.tap.contains(['/', ':', ' ', '\0']);
            if !valid {
                return Err(ConfigError::InvalidTapName(net.tap.clone()));
            }
        }
        Ok(format)
    }
}

/// Reads the first bytes of `path` and distinguishes an ELF file from a `bzImage` (the `HdrS` magic
/// at offset 0x202, Linux boot protocol 2.00 and later).
pub fn detect_kernel_format(path: &std::path::Path) -> Result<KernelFormat, ConfigError> {
    let unreadable = |source| ConfigError::KernelUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(unreadable)?;
    if !file.metadata().map_err(unreadable)?.is_file() {
        return Err(ConfigError::NotAKernel(path.to_path_buf()));
    }
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    let mut header = [0u8; 4];
    let is_bzimage = file.seek(SeekFrom::Start(0x202)).is_ok()
        && file.read_exact(&mut header).is_ok()
        && header == *b"HdrS";
    if is_bzimage {
        Ok(KernelFormat::BzImage)
    } else {
        Err(ConfigError::NotAKernel(path.to_path_buf()))
    }
}

/// `MemTotal` of the host in MiB, or `None` when `/proc/meminfo` cannot be read.
pub fn host_memory_mib() -> Option<u64> {
    host_meminfo_mib("MemTotal:")
}

/// A `/proc/meminfo` field (such as `MemAvailable:`) in MiB.
fn host_meminfo_mib(field: &str) -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_parses_every_form() {
        assert_eq!("none".parse::<Destination>().unwrap(), Destination::None);
        assert_eq!(
            "file:/tmp/x".parse::<Destination>().unwrap(),
            Destination::File("/tmp/x".into())
        );
        assert_eq!("fd:3".parse::<Destination>().unwrap(), Destination::Fd(3));
        assert!("fd:x".parse::<Destination>().is_err());
        assert!("file:".parse::<Destination>().is_err());
        assert!("tty".parse::<Destination>().is_err());
    }

    #[test]
    fn kernel_format_rejects_other_files() {
        let dir = std::env::temp_dir().join(format!("isobench-vmm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("not-a-kernel");
        std::fs::write(&path, b"hello").unwrap();
        assert!(matches!(
            detect_kernel_format(&path),
            Err(ConfigError::NotAKernel(_))
        ));
        std::fs::write(&path, b"\x7fELF....").unwrap();
        assert_eq!(detect_kernel_format(&path).unwrap(), KernelFormat::Elf);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            detect_kernel_format(&path),
            Err(ConfigError::KernelUnreadable { .. })
        ));
    }

    #[test]
    fn vcpu_count_bounds() {
        let mut config = VmConfig::new("/proc/self/exe".into());
        config.vcpus = 0;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::VcpusOutOfRange { .. }) | Err(ConfigError::NotAKernel(_))
        ));
    }

    #[test]
    fn vcpu_limit_is_mptable_limit() {
        assert_eq!(MAX_VCPUS, mptable::max_vcpus());
        assert!(check_vcpus(1).is_ok());
        assert!(check_vcpus(MAX_VCPUS).is_ok());
        assert_eq!(
            check_vcpus(MAX_VCPUS + 1).unwrap_err().to_string(),
            format!(
                "invalid --vcpus {}: use 1 to {MAX_VCPUS}, the vCPU limit of the microVM's MP \
                 table",
                MAX_VCPUS + 1
            )
        );
        assert!(matches!(
            check_vcpus(0),
            Err(ConfigError::VcpusOutOfRange { count: 0, .. })
        ));
    }

    #[test]
    fn validate_rejects_vcpus_above_limit() {
        let dir = scratch_dir("vcpus");
        let kernel = dir.join("vmlinux");
        std::fs::write(&kernel, b"\x7fELF....").unwrap();
        let mut config = VmConfig::new(kernel);
        config.vcpus = MAX_VCPUS + 1;
        let error = config.validate().unwrap_err();
        assert_eq!(
            error.to_string(),
            check_vcpus(MAX_VCPUS + 1).unwrap_err().to_string()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("isobench-vmm-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn mac_is_locally_administered_unicast() {
        let mac = NetConfig::mac_for(Ipv4Addr::new(172, 16, 0, 2));
        assert_eq!(mac[0] & 0x03, 0x02);
        assert_eq!(&mac[2..], &[172, 16, 0, 2]);
    }
}
