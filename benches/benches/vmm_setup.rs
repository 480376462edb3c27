//! VMM setup time and VMM memory overhead of `isobench-vmm` on this host's KVM.
//!
//! Setup time is process start to the first `KVM_RUN`: from just before the spawn of the
//! release binary to the `vcpus_running` event, which the boot vCPU emits right before it
//! enters the guest, read on the same `CLOCK_MONOTONIC`. The guest kernel is the guest
//! image's, so the figure includes loading it; the VMM is stopped with SIGTERM right after.
//!
//! Memory overhead is the VMM's RSS minus its guest-RAM mappings (Firecracker's definition),
//! sampled 200 ms after `vcpus_running`. Its median over the samples is printed with the git
//! revision, date and host, because criterion only records times. Printed beside it is the
//! CPU time the VMM's threads other than the vCPUs used until `vcpus_running`, from
//! `/proc/PID/task/*/schedstat`: setup time minus that is time spent waiting, for the CPU or
//! in the host kernel.
//!
//! Build the VMM first: `cargo build --release -p isobench-vmm`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use isobench_benches::guest_image;
use isobench_vmm::events::Event;
use isobench_vmm::supervisor::{
    locate_binary, parse_event, vmm_overhead_bytes, ClockMapping, VmmCommand,
};

/// Delay between `vcpus_running` and the memory sample.
const MEMORY_SAMPLE_DELAY: Duration = Duration::from_millis(200);

/// Figures of one VMM start.
struct Start {
    setup: Duration,
    overhead_bytes: Option<u64>,
    setup_cpu: Option<Duration>,
}

/// CPU time used so far by the threads of `pid` that are not vCPU threads.
fn non_vcpu_cpu_time(pid: u32) -> Option<Duration> {
    let mut total_ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("vcpu") {
            continue;
        }
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        total_ns += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total_ns))
}

/// Starts the VMM once, waits for `vcpus_running` and stops it; samples memory and CPU time
/// when `sample` is set.
fn start_once(command: &VmmCommand, sample: bool) -> Start {
    let clock = ClockMapping::now();
    let spawned_at = Instant::now();
    let mut child = command.command().spawn().expect("isobench-vmm starts");
    let stdout = child.stdout.take().expect("events are piped");
    let mut running = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("events are readable");
        if let Ok(Event::VcpusRunning {
            monotonic_us,
            guest_ram,
            ..
        }) = parse_event(&line)
        {
            running = Some((clock.instant_of(monotonic_us), guest_ram));
            break;
        }
    }
    let Some((running_at, guest_ram)) = running else {
        let output = child.wait_with_output().expect("isobench-vmm exits");
        panic!(
            "isobench-vmm exited before vcpus_running: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let setup_cpu = sample.then(|| non_vcpu_cpu_time(child.id())).flatten();
    let overhead_bytes = sample.then(|| {
        std::thread::sleep(MEMORY_SAMPLE_DELAY);
        vmm_overhead_bytes(child.id(), &guest_ram).expect("smaps is readable")
    });

    // SAFETY: the child is running and not reaped, so its pid is valid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    Start {
        setup: running_at.saturating_duration_since(spawned_at),
        overhead_bytes,
        setup_cpu,
    }
}

fn git_revision() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn command(binary: &Path, kernel: PathBuf, rootfs: &Path, vcpus: u32) -> VmmCommand {
    let mut command = VmmCommand::new(binary.to_path_buf(), kernel);
    command.rootfs = Some(rootfs.to_path_buf());
    command.vcpus = vcpus;
    command.memory_mib = 1024;
    command
}

fn vmm_setup(criterion: &mut Criterion) {
    let Some(image) = guest_image() else { return };
    if !Path::new("/dev/kvm").exists() {
        eprintln!("skipping: /dev/kvm is missing");
        return;
    }
    let binary = match locate_binary() {
        Ok(binary) => binary,
        Err(error) => {
            eprintln!("skipping: {error}");
            return;
        }
    };
    println!("VMM binary: {}", binary.display());
    let variants = [
        (
            "vmlinux_1vcpu",
            command(&binary, image.vmlinux.clone(), &image.rootfs_ext4, 1),
        ),
        (
            "vmlinux_2vcpu",
            command(&binary, image.vmlinux.clone(), &image.rootfs_ext4, 2),
        ),
        (
            "bzimage_1vcpu",
            command(&binary, image.bzimage.clone(), &image.rootfs_ext4, 1),
        ),
    ];

    let mut group = criterion.benchmark_group("vmm_setup");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (name, command) in &variants {
        group.bench_function(*name, |bencher| {
            bencher.iter_custom(|iterations| {
                (0..iterations)
                    .map(|_| start_once(command, false).setup)
                    .sum()
            });
        });
    }
    group.finish();

    for (name, command) in &variants {
        let starts: Vec<Start> = (0..10).map(|_| start_once(command, true)).collect();
        let mut overheads: Vec<u64> = starts.iter().filter_map(|s| s.overhead_bytes).collect();
        let mut cpu_ms: Vec<f64> = starts
            .iter()
            .filter_map(|s| s.setup_cpu.map(|d| d.as_secs_f64() * 1e3))
            .collect();
        let mut setup_ms: Vec<f64> = starts.iter().map(|s| s.setup.as_secs_f64() * 1e3).collect();
        overheads.sort_unstable();
        cpu_ms.sort_by(f64::total_cmp);
        setup_ms.sort_by(f64::total_cmp);
        let mib = |bytes: u64| bytes as f64 / 1048576.0;
        println!(
            "vmm_overhead {name}: median {:.2} MiB, min {:.2} MiB, max {:.2} MiB; setup CPU time \
             median {:.2} ms against setup time median {:.2} ms; {} samples \
             (git {}, {}, load average {}, unix time {})",
            mib(overheads[overheads.len() / 2]),
            mib(overheads[0]),
            mib(overheads[overheads.len() - 1]),
            cpu_ms.get(cpu_ms.len() / 2).copied().unwrap_or(f64::NAN),
            setup_ms[setup_ms.len() / 2],
            starts.len(),
            git_revision(),
            cpu_model(),
            load_average(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

criterion_group!(benches, vmm_setup);
criterion_main!(benches);
