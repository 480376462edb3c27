//! IPv4 subnets: parsing, overlap tests and the subnets this host already uses.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 subnet in CIDR notation, such as `10.213.7.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Subnet {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Subnet {
    /// Creates the subnet of `address` with `prefix_len` leading network bits; host bits of
    /// `address` are cleared. Returns `None` when `prefix_len` exceeds 32.
    pub fn new(address: Ipv4Addr, prefix_len: u8) -> Option<Ipv4Subnet> {
        (prefix_len <= 32).then(|| Ipv4Subnet {
            network: Ipv4Addr::from(u32::from(address) & mask(prefix_len)),
            prefix_len,
        })
    }

    /// Creates a subnet in a constant context; `address` must have no host bits set.
    pub const fn const_new(address: Ipv4Addr, prefix_len: u8) -> Option<Ipv4Subnet> {
        let bits = address.to_bits();
        if prefix_len > 32 || bits & !mask(prefix_len) != 0 {
            return None;
        }
        Some(Ipv4Subnet {
            network: address,
            prefix_len,
        })
    }

    /// Network address (all host bits zero).
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// Number of leading network bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Returns the address `index` places above the network address, or `None` when that
    /// falls outside the subnet or on its broadcast address.
    pub fn host(&self, index: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.prefix_len));
        (u64::from(index) + 1 < size).then(|| Ipv4Addr::from(u32::from(self.network) + index))
    }

    /// Returns whether `address` lies inside the subnet.
    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & mask(self.prefix_len) == u32::from(self.network)
    }

    /// Returns whether the two subnets share any address: one then contains the other.
    pub fn overlaps(&self, other: &Ipv4Subnet) -> bool {
        let shorter = self.prefix_len.min(other.prefix_len);
        u32::from(self.network) & mask(shorter) == u32::from(other.network) & mask(shorter)
    }
}

impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Failure to parse an [`Ipv4Subnet`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IPv4 subnet {0:?}: expected A.B.C.D/LEN with LEN at most 32")]
pub struct SubnetParseError(String);

impl FromStr for Ipv4Subnet {
    type Err = SubnetParseError;

    fn from_str(text: &str) -> Result<Ipv4Subnet, SubnetParseError> {
        let invalid = || SubnetParseError(text.to_string());
        let (address, prefix_len) = text.split_once('/').ok_or_else(invalid)?;
        let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
        let prefix_len: u8 = prefix_len.parse().map_err(|_| invalid())?;
        Ipv4Subnet::new(address, prefix_len).ok_or_else(invalid)
    }
}

const fn mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        len => u32::MAX << (32 - len as u32),
    }
}

/// Returns the subnets of the host's IPv4 routing table, from `/proc/net/route`, leaving out
/// default routes (prefix length 0), which would overlap everything.
pub(crate) fn host_routes() -> std::io::Result<Vec<Ipv4Subnet>> {
    let table = std::fs::read_to_string("/proc/net/route")?;
    Ok(parse_route_table(&table))
}

/// Parses `/proc/net/route`: whitespace-separated columns, addresses as hexadecimal `u32`s in
/// the kernel's byte order, the destination in column 2 and the mask in column 8.
fn parse_route_table(table: &str) -> Vec<Ipv4Subnet> {
    let mut subnets = Vec::new();
    for line in table.lines().skip(1) {
        let columns: Vec<&str> = line.split_whitespace().collect();
        let (Some(destination), Some(mask)) = (columns.get(1), columns.get(7)) else {
            continue;
        };
        let (Ok(destination), Ok(mask)) = (
            u32::from_str_radix(destination, 16),
            u32::from_str_radix(mask, 16),
        ) else {
            continue;
        };
        // The kernel prints the network-order value as a native integer.
        let destination = Ipv4Addr::from(destination.to_ne_bytes());
        let prefix_len = mask.count_ones() as u8;
        if prefix_len == 0 {
            continue;
        }
        if let Some(subnet) = Ipv4Subnet::new(destination, prefix_len) {
            subnets.push(subnet);
        }
    }
    subnets
}

/// Returns the subnets of every IPv4 address on the host's interfaces, including interfaces
/// that are down and so have no route.
pub(crate) fn interface_subnets() -> std::io::Result<Vec<Ipv4Subnet>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `list` is a valid out-pointer; on success the kernel's list is freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut subnets = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a non-null node of the list getifaddrs returned, not yet freed.
        let current = unsafe { &*entry };
        entry = current.ifa_next;
        if current.ifa_addr.is_null() || current.ifa_netmask.is_null() {
            continue;
        }
        // SAFETY: `ifa_addr` is non-null and points to a sockaddr owned by the list.
        let family = unsafe { (*current.ifa_addr).sa_family };
        if i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: for AF_INET entries getifaddrs stores a `sockaddr_in` behind `ifa_addr`,
        // which is non-null as checked above.
        let address = unsafe {
            (*(current.ifa_addr as *const libc::sockaddr_in))
                .sin_addr
                .s_addr
        };
        // SAFETY: as above, for `ifa_netmask`.
        let netmask = unsafe {
            (*(current.ifa_netmask as *const libc::sockaddr_in))
                .sin_addr
                .s_addr
        };
        let address = Ipv4Addr::from(u32::from_be(address));
        let prefix_len = u32::from_be(netmask).count_ones() as u8;
        if let Some(subnet) = Ipv4Subnet::new(address, prefix_len) {
            subnets.push(subnet);
        }
    }
    // SAFETY: `list` came from a successful getifaddrs and is freed exactly once; no reference
    // into it outlives this call.
    unsafe { libc::freeifaddrs(list) };
    Ok(subnets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(text: &str) -> Ipv4Subnet {
        text.parse().unwrap()
    }

    #[test]
    fn subnet_parse_clears_host_bits() {
        assert_eq!(subnet("10.213.7.9/24").to_string(), "10.213.7.0/24");
    }

    #[test]
    fn subnet_parse_rejects_bad_input() {
        for text in ["10.0.0.0", "10.0.0.0/33", "10.0.0/8", "10.0.0.0/x"] {
            assert!(text.parse::<Ipv4Subnet>().is_err(), "{text}");
        }
    }

    #[test]
    fn subnet_overlap_covers_nested_and_disjoint() {
        assert!(subnet("10.0.0.0/8").overlaps(&subnet("10.213.7.0/24")));
        assert!(subnet("10.213.7.0/24").overlaps(&subnet("10.0.0.0/8")));
        assert!(subnet("10.213.7.0/24").overlaps(&subnet("10.213.7.128/25")));
        assert!(!subnet("10.213.7.0/24").overlaps(&subnet("10.213.8.0/24")));
        assert!(!subnet("172.17.0.0/16").overlaps(&subnet("10.213.7.0/24")));
    }

    #[test]
    fn subnet_host_stops_before_broadcast() {
        let net = subnet("10.213.7.0/24");
        assert_eq!(net.host(1), Some(Ipv4Addr::new(10, 213, 7, 1)));
        assert_eq!(net.host(254), Some(Ipv4Addr::new(10, 213, 7, 254)));
        assert_eq!(net.host(255), None);
    }

    #[test]
    fn subnet_contains_checks_prefix() {
        let net = subnet("10.213.7.0/24");
        assert!(net.contains(Ipv4Addr::new(10, 213, 7, 200)));
        assert!(!net.contains(Ipv4Addr::new(10, 213, 8, 1)));
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn route_table_parse_reads_kernel_format() {
        // Two lines as Linux prints them on x86-64 (little endian): the default route via
        // 172.17.0.1, and 172.17.0.0/16 on docker0.
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(parse_route_table(table), vec![subnet("172.17.0.0/16")]);
    }

    #[test]
    fn interface_subnets_include_loopback() {
        let subnets = interface_subnets().unwrap();
        assert!(subnets.contains(&subnet("127.0.0.0/8")), "{subnets:?}");
    }
}
