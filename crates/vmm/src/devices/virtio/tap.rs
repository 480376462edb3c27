//! TAP devices (`Documentation/networking/tuntap.rst`): opened with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, so every frame carries a `virtio_net_hdr_v1` that the
//! host kernel reads and writes, and the guest's offloads pass through unchanged.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const IFF_UP: i16 = 0x1;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCSIFADDR: libc::c_ulong = 0x8916;
const SIOCSIFNETMASK: libc::c_ulong = 0x891c;
const SIOCGIFMTU: libc::c_ulong = 0x8921;

/// `TUN_F_CSUM`: the reader accepts frames with a partial checksum.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUN_F_TSO4`: the reader accepts TCPv4 segmentation offload frames.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUN_F_TSO6`: the reader accepts TCPv6 segmentation offload frames.
pub const TUN_F_TSO6: u32 = 0x04;
/// `TUN_F_TSO_ECN`: segmentation offload frames may carry ECN.
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// `TUN_F_UFO`: the reader accepts UDP fragmentation offload frames.
pub const TUN_F_UFO: u32 = 0x10;

/// Length of `struct virtio_net_hdr_v1`, which every frame starts with under VERSION_1.
pub const VNET_HDR_SIZE: usize = 12;

/// Errors of opening and configuring a TAP device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun: load the tun module (modprobe tun)")]
    OpenTun(#[source] io::Error),
    /// The device could not be created because the VMM lacks CAP_NET_ADMIN.
    #[error("creating TAP device {name} is not permitted: pre-create it with `ip tuntap add dev {name} mode tap user $(id -un) vnet_hdr && ip addr add HOST_IP/PREFIX dev {name} && ip link set {name} up`, or run with CAP_NET_ADMIN")]
    CreateNotPermitted {
        /// Device name.
        name: String,
    },
    /// An existing device could not be attached to.
    #[error("attaching to TAP device {name} is not permitted: it belongs to another user; recreate it with `ip tuntap add dev {name} mode tap user $(id -un) vnet_hdr`")]
    AttachNotPermitted {
        /// Device name.
        name: String,
    },
    /// An ioctl on the device failed.
    #[error("TAP device {name}: {what} failed")]
    Ioctl {
        /// Device name.
        name: String,
        /// The operation.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut request = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        let bytes = name.as_bytes();
        let len = bytes.len().min(libc::IFNAMSIZ - 1);
        request.name[..len].copy_from_slice(&bytes[..len]);
        request
    }

    fn set_short(&mut self, value: i16) {
        self.data[..2].copy_from_slice(&value.to_ne_bytes());
    }

    fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn int(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    fn set_ipv4(&mut self, addr: Ipv4Addr) {
        // struct sockaddr_in: family, port, address.
        self.data[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        self.data[2..4].fill(0);
        self.data[4..8].copy_from_slice(&addr.octets());
    }
}

/// An open TAP device. Closing it removes the device if this process created it (it is not
/// made persistent), so no link outlives the VMM, whatever way the VMM ends.
pub struct Tap {
    file: File,
    name: String,
    created: bool,
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

impl Tap {
    /// Opens TAP device `name`, creating it when it does not exist.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let existed = link_exists(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut request = IfReq::new(name);
        request.set_short(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which IfReq matches in size
        // and layout (16-byte name, 24-byte union).
        let result = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request) };
        if result < 0 {
            let error = io::Error::last_os_error();
            return Err(match (error.raw_os_error(), existed) {
                (Some(libc::EPERM), false) => TapError::CreateNotPermitted { name: name.into() },
                (Some(libc::EPERM), true) => TapError::AttachNotPermitted { name: name.into() },
                _ => TapError::Ioctl {
                    name: name.into(),
                    what: "TUNSETIFF",
                    source: error,
                },
            });
        }
        let tap = Tap {
            file,
            name: name.to_string(),
            created: !existed,
        };
        let header_size = VNET_HDR_SIZE as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        let result = unsafe { libc::ioctl(tap.file.as_raw_fd(), TUNSETVNETHDRSZ, &header_size) };
        if result < 0 {
            return Err(tap.ioctl_error("TUNSETVNETHDRSZ"));
        }
        Ok(tap)
    }

    fn ioctl_error(&self, what: &'static str) -> TapError {
        TapError::Ioctl {
            name: self.name.clone(),
            what,
            source: io::Error::last_os_error(),
        }
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this process created the device.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Sets the offloads the reader (the guest) accepts, `TUN_F_*` bits.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no memory.
        let result =
            unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) };
        if result < 0 {
            return Err(self.ioctl_error("TUNSETOFFLOAD"));
        }
        Ok(())
    }

    fn control_socket(&self) -> Result<OwnedFd, TapError> {
        // SAFETY: socket() has no memory arguments; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(self.ioctl_error("socket"));
        }
        // SAFETY: `fd` is a new socket this function owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn interface_ioctl(
        &self,
        request: libc::c_ulong,
        data: &mut IfReq,
        what: &'static str,
    ) -> Result<(), TapError> {
        let socket = self.control_socket()?;
        // SAFETY: each SIOC* request used here reads or writes one `struct ifreq`, which IfReq
        // matches in size and layout.
        let result = unsafe { libc::ioctl(socket.as_raw_fd(), request, data as *mut IfReq) };
        if result < 0 {
            return Err(self.ioctl_error(what));
        }
        Ok(())
    }

    /// The device's MTU.
    pub fn mtu(&self) -> Result<u16, TapError> {
        let mut request = IfReq::new(&self.name);
        self.interface_ioctl(SIOCGIFMTU, &mut request, "SIOCGIFMTU")?;
        Ok(request.int().clamp(68, u16::MAX as i32) as u16)
    }

    /// Sets the host address and netmask and brings the link up.
    pub fn configure(&self, addr: Ipv4Addr, netmask: Ipv4Addr) -> Result<(), TapError> {
        let mut request = IfReq::new(&self.name);
        request.set_ipv4(addr);
        self.interface_ioctl(SIOCSIFADDR, &mut request, "SIOCSIFADDR")?;
        let mut request = IfReq::new(&self.name);
        request.set_ipv4(netmask);
        self.interface_ioctl(SIOCSIFNETMASK, &mut request, "SIOCSIFNETMASK")?;
        let mut request = IfReq::new(&self.name);
        self.interface_ioctl(SIOCGIFFLAGS, &mut request, "SIOCGIFFLAGS")?;
        let flags = request.short() | IFF_UP;
        request.set_short(flags);
        self.interface_ioctl(SIOCSIFFLAGS, &mut request, "SIOCSIFFLAGS")
    }

    /// Reads one frame (virtio-net header included) into `buf`.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: read() writes at most buf.len() bytes into `buf`, which is valid and
        // exclusively borrowed.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one frame (virtio-net header included).
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: write() reads at most frame.len() bytes from `frame`, which is valid.
        let n = unsafe { libc::write(self.file.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// The file descriptor, for epoll.
    pub fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
