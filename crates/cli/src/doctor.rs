//! `isobench doctor`: what this host offers each backend, one check per line, each with its
//! result and what to do about a problem.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use isobench_container::Engine;
use isobench_harness::host::{KvmFlavour, KvmInfo};
use isobench_harness::image::{self, find_program, DockerImageState, ImageError, BUILD_TOOLS};
use serde::Serialize;

/// Flags of `isobench doctor`.
#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Prints the checks as JSON.
    #[arg(long)]
    json: bool,
}

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    /// Works.
    Ok,
    /// Works partly, or limits what the figures mean.
    Warn,
    /// Missing: a backend or the build cannot run.
    Fail,
}

/// One line of the doctor's output.
#[derive(Debug, Clone, Serialize)]
struct Check {
    name: &'static str,
    level: Level,
    result: String,
    /// Advice on fixing a problem; empty when nothing needs doing.
    action: String,
}

impl Check {
    fn new(name: &'static str, level: Level, result: impl Into<String>) -> Check {
        Check {
            name,
            level,
            result: result.into(),
            action: String::new(),
        }
    }

    fn action(mut self, action: impl Into<String>) -> Check {
        self.action = action.into();
        self
    }
}

/// Runs `isobench doctor`; exits with failure when any check fails.
pub fn main(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut checks = vec![check_root(), check_kvm(), check_tap()];
    checks.push(runtime.block_on(check_docker_engine()));
    checks.push(check_build_tools());
    checks.extend(runtime.block_on(check_guest_image()));
    checks.push(check_qemu());

    if args.json {
        out!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for check in &checks {
            let level = match check.level {
                Level::Ok => "ok",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            let action = if check.action.is_empty() {
                String::new()
            } else {
                format!(" -> {}", check.action)
            };
            out!("{level:<4}  {:<14} {}{action}", check.name, check.result);
        }
    }
    let failed = checks.iter().any(|check| check.level == Level::Fail);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn check_root() -> Check {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        Check::new("root", Level::Ok, "running as root")
    } else {
        Check::new("root", Level::Fail, format!("running as uid {euid}"))
            .action("run as root: image builds, chroot, TAP links and cgroups need it")
    }
}

fn check_kvm() -> Check {
    let kvm = KvmInfo::probe();
    let module = kvm.module.as_deref().unwrap_or("no known module");
    let api = kvm
        .api_version
        .map(|version| format!("KVM API {version}"))
        .unwrap_or_else(|| "cannot open /dev/kvm".to_string());
    match kvm.flavour {
        KvmFlavour::Hardware => {
            let extension = cpu_virtualization_flag().unwrap_or("no vmx/svm flag");
            Check::new(
                "/dev/kvm",
                Level::Ok,
                format!("hardware ({module}, {extension}), {api}"),
            )
        }
        KvmFlavour::Paravirtual => Check::new(
            "/dev/kvm",
            Level::Warn,
            format!("paravirtual ({module}, no VMX/SVM), {api}"),
        )
        .action(
            "a stock guest kernel does not boot in useful time here: microVM figures come \
             from the emulated hardware-KVM host (QEMU)",
        ),
        KvmFlavour::Unknown => Check::new(
            "/dev/kvm",
            Level::Warn,
            format!("present ({module}), {api}"),
        )
        .action("expected kvm_intel or kvm_amd: microVM figures may not be comparable"),
        KvmFlavour::Unavailable => Check::new("/dev/kvm", Level::Fail, "missing").action(
            "load kvm_intel or kvm_amd, or run on a host with hardware virtualization; \
             microVM figures then come only from the emulated host",
        ),
    }
}

/// `vmx` or `svm` from the CPU flags, if present.
fn cpu_virtualization_flag() -> Option<&'static str> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags = cpuinfo.lines().find(|line| line.starts_with("flags"))?;
    let mut words = flags.split_whitespace();
    if words.clone().any(|flag| flag == "vmx") {
        Some("VMX")
    } else if words.any(|flag| flag == "svm") {
        Some("SVM")
    } else {
        None
    }
}

/// `TUNSETIFF`, `_IOW('T', 202, int)` (linux/if_tun.h).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Creates a TAP device and lets it vanish: without `TUNSETPERSIST` it goes when the file
/// descriptor closes.
fn check_tap() -> Check {
    let tun = match OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(file) => file,
        Err(error) => {
            return Check::new(
                "TAP",
                Level::Fail,
                format!("cannot open /dev/net/tun: {error}"),
            )
            .action("load the tun module (modprobe tun; scripts/setup-host does)")
        }
    };
    let name = format!("isobdoc{}", std::process::id() % 100_000);
    // SAFETY: ifreq is plain old data, for which all-zero bytes are a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `request` is; the descriptor is open.
    let result = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut request) };
    if result == 0 {
        Check::new("TAP", Level::Ok, "creating TAP devices is allowed")
    } else {
        let error = std::io::Error::last_os_error();
        Check::new("TAP", Level::Fail, format!("TUNSETIFF failed: {error}"))
            .action("run as root or with CAP_NET_ADMIN; microVM networking needs TAP devices")
    }
}

async fn check_docker_engine() -> Check {
    match Engine::connect().await {
        Ok(engine) => {
            let version = engine.version();
            Check::new(
                "docker engine",
                Level::Ok,
                format!(
                    "{} at {}, API {}",
                    version.engine,
                    engine.host(),
                    version.api
                ),
            )
        }
        Err(error) => Check::new("docker engine", Level::Fail, error.to_string())
            .action("start it with scripts/setup-host"),
    }
}

fn check_build_tools() -> Check {
    let missing: Vec<&str> = BUILD_TOOLS
        .iter()
        .flat_map(|(_, tools)| tools.iter().copied())
        .filter(|tool| find_program(tool).is_none())
        .collect();
    if missing.is_empty() {
        Check::new(
            "build tools",
            Level::Ok,
            "mmdebstrap, kernel build tools, mkfs.ext4 present",
        )
    } else {
        Check::new(
            "build tools",
            Level::Fail,
            format!("missing: {}", missing.join(", ")),
        )
        .action("run scripts/setup-host")
    }
}

async fn check_guest_image() -> Vec<Check> {
    // Every backend uses the root filesystem, but only the microVM boots the guest kernel. A
    // missing kernel therefore limits the run to process and docker and is no failure.
    let paths = match image::locate_rootfs() {
        Ok(paths) => paths,
        Err(error) => {
            // The error already names the command that builds the image.
            return vec![Check::new("guest image", Level::Fail, error.to_string())];
        }
    };
    let rootfs = Check::new(
        "guest image",
        Level::Ok,
        format!(
            "{} root filesystem built ({})",
            paths.id,
            paths.rootfs_ext4.display()
        ),
    );
    let kernel = match image::locate() {
        Ok(paths) => Check::new(
            "guest kernel",
            Level::Ok,
            format!("built ({})", paths.vmlinux.display()),
        ),
        Err(ImageError::NotBuilt { .. }) => Check::new(
            "guest kernel",
            Level::Warn,
            "not built: process and docker can run, the microvm backend cannot",
        )
        .action(
            "run `isobench image build --only kernel`; `isobench compare` builds it when the \
             microvm backend runs",
        ),
        Err(error) => Check::new("guest kernel", Level::Fail, error.to_string()),
    };
    let docker = match image::docker_image_state(&paths.docker_tag).await {
        DockerImageState::Present => Check::new(
            "docker image",
            Level::Ok,
            format!("{} present", paths.docker_tag),
        ),
        DockerImageState::Missing => Check::new(
            "docker image",
            Level::Fail,
            format!("{} missing", paths.docker_tag),
        )
        .action("run `isobench image build --only rootfs`"),
        DockerImageState::EngineUnreachable { message } => Check::new(
            "docker image",
            Level::Fail,
            format!("not checked: {message}"),
        )
        .action("start the Docker engine with scripts/setup-host"),
    };
    vec![rootfs, kernel, docker]
}

fn check_qemu() -> Check {
    let Some(path) = find_program("qemu-system-x86_64") else {
        return Check::new("qemu", Level::Warn, "qemu-system-x86_64 not found")
            .action("install qemu-system-x86 (scripts/setup-host) for the emulated host");
    };
    match isobench_vmm::emulated::check_qemu() {
        Ok(()) => Check::new(
            "qemu",
            Level::Ok,
            format!("{} present for the emulated host", path.display()),
        ),
        // The error names the fix itself.
        Err(error) => Check::new("qemu", Level::Warn, error.to_string()),
    }
}
