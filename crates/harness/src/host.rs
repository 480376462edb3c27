//! Host metadata recorded with every run: CPU, host kernel, virtualisation, KVM and Docker.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::results::ExecutionHost;

/// Git revision this build comes from (`-dirty` when tracked files had changes), or `None`
/// when it was built outside a git work tree.
pub const ISOBENCH_REVISION: Option<&str> = option_env!("ISOBENCH_GIT_REVISION");

/// `KVM_GET_API_VERSION`, `_IO(KVMIO, 0x00)` with `KVMIO = 0xAE` (linux/kvm.h).
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;

/// The machine a run ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Host name, used to tell hosts apart when several results are merged.
    pub hostname: String,
    /// CPU model name from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Logical CPUs online.
    pub logical_cores: u32,
    /// `MemTotal` of the host, in bytes.
    pub memory_total_bytes: u64,
    /// Host kernel release and version, as `uname -rv` prints them.
    pub host_kernel: String,
    /// Whether the host is itself a virtual machine (the CPU's `hypervisor` flag).
    pub host_is_vm: bool,
    /// Virtual hardware vendor and product from DMI, when the host is a virtual machine.
    pub hypervisor_vendor: Option<String>,
    /// What `/dev/kvm` offers.
    pub kvm: KvmInfo,
    /// Docker engine, when one answered.
    pub docker: Option<DockerInfo>,
}

/// What `/dev/kvm` is on this host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvmInfo {
    /// Kind of KVM.
    pub flavour: KvmFlavour,
    /// Kernel module that provides `/dev/kvm`, such as `kvm_intel` or `kvm_pvm`.
    pub module: Option<String>,
    /// `KVM_GET_API_VERSION`, when `/dev/kvm` could be opened.
    pub api_version: Option<i32>,
}

/// Kind of KVM a host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmFlavour {
    /// Hardware virtualisation (`kvm_intel` with VMX or `kvm_amd` with SVM): real microVM
    /// figures.
    Hardware,
    /// Paravirtual KVM without hardware virtualisation (`kvm_pvm`): a stock guest kernel does
    /// not boot in useful time, so microVM figures come only from the emulated host.
    Paravirtual,
    /// `/dev/kvm` exists but its module is not one of the above.
    Unknown,
    /// No `/dev/kvm`.
    Unavailable,
}

impl std::fmt::Display for KvmFlavour {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            KvmFlavour::Hardware => "hardware",
            KvmFlavour::Paravirtual => "paravirtual",
            KvmFlavour::Unknown => "unknown",
            KvmFlavour::Unavailable => "unavailable",
        })
    }
}

/// Docker engine versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DockerInfo {
    /// Engine version, such as `20.10.24`.
    pub engine_version: String,
    /// Engine API version, such as `1.41`.
    pub api_version: String,
    /// cgroup version the engine uses (`1` or `2`), when it says.
    pub cgroup_version: Option<String>,
}

impl HostInfo {
    /// Reads the host's metadata; `docker` comes from the caller, which owns the engine
    /// connection.
    pub fn collect(docker: Option<DockerInfo>) -> HostInfo {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let host_is_vm = cpu_flags(&cpuinfo).any(|flag| flag == "hypervisor");
        HostInfo {
            hostname: read_trimmed("/proc/sys/kernel/hostname").unwrap_or_default(),
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            logical_cores: std::thread::available_parallelism()
                .map(|count| count.get() as u32)
                .unwrap_or(1),
            memory_total_bytes: crate::memory::read_host_meminfo()
                .map(|meminfo| meminfo.mem_total_bytes)
                .unwrap_or(0),
            host_kernel: host_kernel(),
            host_is_vm,
            hypervisor_vendor: host_is_vm.then(dmi_product).flatten(),
            kvm: KvmInfo::probe(),
            docker,
        }
    }
}

impl HostInfo {
    /// Labels the kind of KVM that figures of `execution_host` were measured on, such as
    /// `paravirtual KVM (kvm_pvm)`, for printing beside each figure. The emulated host's label
    /// states that its figures are emulation times.
    pub fn figure_label(&self, execution_host: ExecutionHost) -> String {
        let kvm = &self.kvm;
        let own = match (kvm.flavour, &kvm.module) {
            (KvmFlavour::Unavailable, _) => "no KVM".to_owned(),
            (flavour, Some(module)) => format!("{flavour} KVM ({module})"),
            (flavour, None) => format!("{flavour} KVM"),
        };
        match execution_host {
            ExecutionHost::Direct => own,
            ExecutionHost::Emulated => {
                format!("emulated hardware KVM in QEMU on {own}: emulation times")
            }
        }
    }
}

impl KvmInfo {
    /// Probes `/dev/kvm` and the loaded KVM modules.
    pub fn probe() -> KvmInfo {
        let module = ["kvm_intel", "kvm_amd", "kvm_pvm"]
            .into_iter()
            .find(|name| Path::new("/sys/module").join(name).exists())
            .map(str::to_owned);
        let device = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm");
        let exists = Path::new("/dev/kvm").exists();
        let api_version = device.ok().and_then(|file| {
            // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an integer; the
            // descriptor is open for the duration of the call.
            let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION, 0) };
            (version >= 0).then_some(version)
        });
        let flavour = match (exists, module.as_deref()) {
            (false, _) => KvmFlavour::Unavailable,
            (true, Some("kvm_intel" | "kvm_amd")) => KvmFlavour::Hardware,
            (true, Some("kvm_pvm")) => KvmFlavour::Paravirtual,
            (true, _) => KvmFlavour::Unknown,
        };
        KvmInfo {
            flavour,
            module,
            api_version,
        }
    }
}

/// Formats a time as RFC 3339 in UTC with second precision, such as `2026-12-04T14:30:00Z`.
pub fn rfc3339_utc(time: SystemTime) -> String {
    let (date, (hour, minute, second)) = civil_utc(time);
    format!(
        "{}-{:02}-{:02}T{hour:02}:{minute:02}:{second:02}Z",
        date.0, date.1, date.2
    )
}

/// Formats a time as a folder name that sorts by time, such as `20261204-143000`.
pub fn timestamp_folder_name(time: SystemTime) -> String {
    let (date, (hour, minute, second)) = civil_utc(time);
    format!(
        "{}{:02}{:02}-{hour:02}{minute:02}{second:02}",
        date.0, date.1, date.2
    )
}

type CivilDate = (i64, u32, u32);
type CivilTime = (u64, u64, u64);

fn civil_utc(time: SystemTime) -> (CivilDate, CivilTime) {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0);
    let days = (seconds / 86_400) as i64;
    let of_day = seconds % 86_400;
    (
        civil_from_days(days),
        (of_day / 3600, of_day / 60 % 60, of_day % 60),
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days` algorithm).
fn civil_from_days(days: i64) -> CivilDate {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, value)| value.trim().to_owned())
}

fn cpu_flags(cpuinfo: &str) -> impl Iterator<Item = &str> {
    cpuinfo
        .lines()
        .find(|line| line.starts_with("flags"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, value)| value.split_whitespace())
        .into_iter()
        .flatten()
}

fn host_kernel() -> String {
    let release = read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = read_trimmed("/proc/sys/kernel/version").unwrap_or_default();
    format!("{release} {version}").trim().to_owned()
}

fn dmi_product() -> Option<String> {
    let vendor = read_trimmed("/sys/class/dmi/id/sys_vendor").unwrap_or_default();
    let product = read_trimmed("/sys/class/dmi/id/product_name").unwrap_or_default();
    let joined = format!("{vendor} {product}").trim().to_owned();
    (!joined.is_empty()).then_some(joined)
}

fn read_trimmed(path: &str) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn figure_label_names_kvm_kind() {
        let mut host = HostInfo::collect(None);
        host.kvm = KvmInfo {
            flavour: KvmFlavour::Paravirtual,
            module: Some("kvm_pvm".into()),
            api_version: Some(12),
        };
        assert_eq!(
            host.figure_label(ExecutionHost::Direct),
            "paravirtual KVM (kvm_pvm)"
        );
        let emulated = host.figure_label(ExecutionHost::Emulated);
        assert!(emulated.starts_with("emulated hardware KVM"), "{emulated}");
        assert!(emulated.contains("emulation times"), "{emulated}");
        host.kvm.flavour = KvmFlavour::Unavailable;
        host.kvm.module = None;
        assert_eq!(host.figure_label(ExecutionHost::Direct), "no KVM");
    }

    #[test]
    fn rfc3339_of_known_instant() {
        // 1_796_394_600 s after the epoch is 2026-12-04 14:30:00 UTC.
        let time = UNIX_EPOCH + Duration::from_secs(1_796_394_600);
        assert_eq!(rfc3339_utc(time), "2026-12-04T14:30:00Z");
        assert_eq!(timestamp_folder_name(time), "20261204-143000");
    }

    #[test]
    fn rfc3339_of_leap_day() {
        // 951_782_400 s after the epoch is 2000-02-29 00:00:00 UTC.
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn cpu_model_and_flags_parse() {
        let cpuinfo =
            "processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\nflags\t\t: fpu sse hypervisor\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("Example CPU @ 2.0GHz"));
        assert!(cpu_flags(cpuinfo).any(|flag| flag == "hypervisor"));
    }

    #[test]
    fn collect_reads_this_host() {
        let host = HostInfo::collect(None);
        assert!(host.logical_cores >= 1);
        assert!(host.memory_total_bytes > 0);
        assert!(!host.host_kernel.is_empty());
    }
}
