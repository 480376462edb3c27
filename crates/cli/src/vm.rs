//! `isobench vm boot`: boots the guest image in the microVM, waits until its Jupyter kernel
//! replies to `kernel_info_request` from the host side of the TAP link, prints the phase timings
//! and shuts the microVM down.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use isobench_harness::backend::microvm::{GuestKernel, MicrovmBackend};
use isobench_harness::backend::{
    Backend, BackendKind, ChannelPorts, GuestImagePaths, LaunchSpec, PhaseMark,
};
use isobench_harness::host::{KvmFlavour, KvmInfo};
use isobench_harness::image;
use isobench_harness::phases::phase_name;
use isobench_vmm::emulated::{default_cache_dir, EmulatedHost, EmulatedRun, ProgramArg};
use isobench_workload::connection::generate_key;
use isobench_workload::{ConnectionInfo, KernelClient};

use crate::flags::{check_memory_mib, check_seconds};

/// Subcommands of `isobench vm`.
#[derive(clap::Subcommand)]
pub enum VmCommand {
    /// Boots the guest image in the microVM, waits for its Jupyter kernel to reply over the
    /// network and prints the phase timings.
    Boot(BootArgs),
}

/// Execution host of the microVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VmHost {
    /// On this host's own /dev/kvm.
    Direct,
    /// Inside the emulated hardware-KVM host (QEMU software emulation with nested SVM);
    /// its timings are emulation timings.
    Emulated,
}

/// Guest kernel file to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelArg {
    /// The uncompressed vmlinux through the PVH entry.
    Vmlinux,
    /// The bzImage through the Linux 64-bit boot protocol.
    Bzimage,
}

/// Flags of `isobench vm boot`.
#[derive(clap::Args)]
pub struct BootArgs {
    /// Execution host of the microVM.
    #[arg(long, value_enum, default_value = "direct")]
    host: VmHost,
    /// Guest kernel file to boot.
    #[arg(long, value_enum, default_value = "vmlinux")]
    kernel: KernelArg,
    /// Number of vCPUs.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1)]
    vcpus: u32,
    /// Guest RAM in MiB.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 1024,
        value_name = "MIB"
    )]
    memory: u32,
    /// Time allowed from launch to a ready Jupyter kernel, in seconds.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 120.0,
        value_name = "SECONDS"
    )]
    ready_deadline: f64,
    /// Guest kernel file to boot instead of the cached guest image's; the emulated host's inner
    /// run uses it, with `--image-rootfs-ext4`.
    #[arg(long, hide = true, value_name = "FILE", requires = "image_rootfs_ext4")]
    image_kernel: Option<PathBuf>,
    /// Root disk to boot instead of the cached guest image's.
    #[arg(long, hide = true, value_name = "FILE", requires = "image_kernel")]
    image_rootfs_ext4: Option<PathBuf>,
}

/// Runs `isobench vm`.
pub fn main(command: VmCommand) -> anyhow::Result<ExitCode> {
    match command {
        VmCommand::Boot(args) => boot(args),
    }
}

/// Checks the flags that both execution hosts pass on, before anything starts, and returns the
/// ready deadline.
fn check_flags(args: &BootArgs) -> anyhow::Result<Duration> {
    // The same limits and messages as `run` and `compare`.
    isobench_vmm::config::check_vcpus(args.vcpus)?;
    check_memory_mib("--memory", args.memory)?;
    check_seconds("--ready-deadline", args.ready_deadline)
}

fn boot(args: BootArgs) -> anyhow::Result<ExitCode> {
    let ready_deadline = check_flags(&args)?;
    if args.host == VmHost::Emulated {
        return boot_emulated(&args);
    }
    let kvm = KvmInfo::probe();
    match kvm.flavour {
        KvmFlavour::Unavailable => {
            anyhow::bail!("/dev/kvm is missing: load kvm_intel or kvm_amd (modprobe)")
        }
        KvmFlavour::Paravirtual | KvmFlavour::Unknown => eprintln!(
            "isobench: warning: this host's KVM is {} ({}); a stock guest kernel may not boot in \
             useful time here, so pass --host emulated to boot it in the emulated host",
            kvm.flavour,
            kvm.module.as_deref().unwrap_or("unknown module")
        ),
        KvmFlavour::Hardware => {}
    }
    let image = match (&args.image_kernel, &args.image_rootfs_ext4) {
        (Some(kernel), Some(rootfs_ext4)) => provided_image(kernel, rootfs_ext4),
        _ => image::locate()?,
    };
    let kernel = match args.kernel {
        KernelArg::Vmlinux => GuestKernel::Vmlinux,
        KernelArg::Bzimage => GuestKernel::BzImage,
    };
    let backend = MicrovmBackend::new()?.with_kernel(kernel);
    let spec = LaunchSpec {
        run_id: format!("vmboot-{}", std::process::id()),
        trial: 0,
        image,
        key: generate_key()?,
        ports: ChannelPorts::GUEST_DEFAULT,
        vcpus: args.vcpus,
        memory_mib: args.memory,
        ready_deadline,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(boot_and_wait(&backend, &spec))
}

async fn boot_and_wait(backend: &MicrovmBackend, spec: &LaunchSpec) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let deadline = t0 + spec.ready_deadline;
    let mut instance = backend.launch(spec, t0).await?;
    let info = ConnectionInfo {
        ip: instance.address(),
        ports: spec.ports,
        key: spec.key.clone(),
    };
    out!(
        "booting {} with {} vCPU(s) and {} MiB; Jupyter kernel at {}",
        backend.name(),
        spec.vcpus,
        spec.memory_mib,
        info.ip
    );

    let ready = async {
        let mut client = KernelClient::connect(&info, deadline).await?;
        let report = client.wait_ready(deadline).await?;
        Ok::<_, isobench_workload::ClientError>((client, report))
    };
    let outcome = tokio::select! {
        result = ready => Some(result),
        exit = instance.wait_exit() => {
            eprintln!("isobench: the microVM exited before its Jupyter kernel was ready: {}", exit.status);
            eprintln!("{}", exit.last_output.trim_end());
            let flavour = KvmInfo::probe().flavour;
            if flavour != KvmFlavour::Hardware {
                eprintln!("isobench: this host's KVM is {flavour}: boot with --host emulated instead");
            }
            None
        }
        signal = crate::interrupt::stop_requested() => {
            eprintln!("isobench: interrupted by {}", signal.unwrap_or("a signal"));
            None
        }
    };
    let Some(result) = outcome else {
        instance.stop().await?;
        return Ok(ExitCode::FAILURE);
    };
    let (client, report) = match result {
        Ok(ready) => ready,
        Err(error) => {
            let exit = instance.stop().await?;
            let output = exit.map(|e| e.last_output).unwrap_or_default();
            anyhow::bail!(
                "the Jupyter kernel did not become ready: {error}\n{}",
                output.trim_end()
            );
        }
    };

    let mut marks = instance.marks();
    marks.push(PhaseMark {
        name: "ready".into(),
        at: report.ready_at,
    });
    print_phases(t0, &marks);
    if let Ok(sample) = instance.memory().await {
        let mib = |bytes: Option<u64>| {
            bytes.map_or("n/a".to_string(), |b| {
                format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
            })
        };
        out!(
            "memory: VMM overhead {}, host PSS {}",
            mib(sample.vmm_overhead_bytes),
            mib(sample.host_pss_bytes)
        );
    }
    let _ = client.shutdown().await;
    let exit = instance.stop().await?;
    if let Some(exit) = exit {
        out!("microVM ended: {}", exit.status);
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints each phase mark's time since `t0` and the phase that ends at it.
fn print_phases(t0: Instant, marks: &[PhaseMark]) {
    let mut marks: Vec<&PhaseMark> = marks.iter().collect();
    marks.sort_by_key(|mark| mark.at);
    out!(
        "{:<16} {:>12}  {:<14} {:>12}",
        "event",
        "at (ms)",
        "phase",
        "length (ms)"
    );
    let mut previous = t0;
    for mark in marks {
        let at = mark.at.saturating_duration_since(t0);
        let length = mark.at.saturating_duration_since(previous);
        out!(
            "{:<16} {:>12.1}  {:<14} {:>12.1}",
            mark.name,
            at.as_secs_f64() * 1e3,
            phase_name(BackendKind::Microvm, &mark.name),
            length.as_secs_f64() * 1e3
        );
        previous = mark.at;
    }
}

/// Memory of the emulated host beyond the guest's, in MiB: its kernel, the VMM and the
/// `isobench` process inside.
const EMULATED_HOST_EXTRA_MIB: u32 = 768;

/// Guest image paths given on the command line, as the emulated host's inner run gets them:
/// `kernel` serves as both guest kernel files, and the paths `vm boot` does not read are unset.
fn provided_image(kernel: &Path, rootfs_ext4: &Path) -> GuestImagePaths {
    let unused = PathBuf::from("/nonexistent");
    GuestImagePaths {
        id: "provided".into(),
        vmlinux: kernel.to_owned(),
        bzimage: kernel.to_owned(),
        rootfs_tar: unused.clone(),
        rootfs_ext4: rootfs_ext4.to_owned(),
        rootfs_tree: unused,
        docker_tag: String::new(),
    }
}

/// Runs `isobench vm boot --host direct` with the same flags inside the emulated hardware-KVM
/// host and prints its output. The guest kernel file is carried in, and `rootfs.ext4` is
/// attached as a read-only disk, as `isobench compare` does for its emulated trials.
fn boot_emulated(args: &BootArgs) -> anyhow::Result<ExitCode> {
    let image = image::locate()?;
    let cache = default_cache_dir().context("no cache folder: set ISOBENCH_CACHE_DIR or HOME")?;
    let host = EmulatedHost::prepare(&cache)?;
    let isobench = std::env::current_exe().context("cannot find the isobench binary")?;
    let vmm = isobench_vmm::supervisor::locate_binary()?;

    let kernel = match args.kernel {
        KernelArg::Vmlinux => image.vmlinux.clone(),
        KernelArg::Bzimage => image.bzimage.clone(),
    };
    let mut run = EmulatedRun::for_program(
        &isobench,
        &[
            ProgramArg::Plain("vm".into()),
            ProgramArg::Plain("boot".into()),
            ProgramArg::Plain("--host=direct".into()),
            ProgramArg::Plain(format!("--kernel={}", kernel_flag(args.kernel))),
            ProgramArg::Plain(format!("--vcpus={}", args.vcpus)),
            ProgramArg::Plain(format!("--memory={}", args.memory)),
            ProgramArg::Plain(format!("--ready-deadline={}", args.ready_deadline)),
            ProgramArg::Plain("--image-kernel".into()),
            ProgramArg::File(kernel),
            ProgramArg::Plain("--image-rootfs-ext4".into()),
            ProgramArg::Disk {
                path: image.rootfs_ext4.clone(),
                read_only: true,
            },
        ],
        &[vmm],
    );
    run.vcpus = u8::try_from(args.vcpus.max(1)).unwrap_or(u8::MAX);
    run.memory_mib = args.memory + EMULATED_HOST_EXTRA_MIB;
    run.timeout = Duration::from_secs_f64(args.ready_deadline + 120.0);

    out!(
        "emulated host: QEMU TCG with nested SVM; every figure below is an emulation timing, \
         not comparable with hardware"
    );
    let output = match host.run(&run) {
        Ok(output) => output,
        Err(error) => {
            if let Some(partial) = error.partial_output() {
                let _ = std::io::Write::write_all(
                    &mut std::io::stdout(),
                    String::from_utf8_lossy(&partial.stdout).as_bytes(),
                );
                eprint!("{}", String::from_utf8_lossy(&partial.stderr));
            }
            return Err(error.into());
        }
    };
    if let Some(kvm_ready) = output
        .emulation_timings
        .and_then(|timings| timings.kvm_ready)
    {
        out!(
            "emulated host: QEMU start to /dev/kvm ready {:.1} ms",
            kvm_ready.as_secs_f64() * 1e3
        );
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stdout(),
        String::from_utf8_lossy(&output.stdout).as_bytes(),
    );
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    Ok(match output.exit_status {
        0 => ExitCode::SUCCESS,
        status => ExitCode::from(u8::try_from(status).unwrap_or(1)),
    })
}

fn kernel_flag(kernel: KernelArg) -> &'static str {
    match kernel {
        KernelArg::Vmlinux => "vmlinux",
        KernelArg::Bzimage => "bzimage",
    }
}
