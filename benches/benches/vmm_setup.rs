//! VMM setup time and VMM memory overhead of `isobench-vmm` on this host's KVM.
//!
//! Setup time is process start to the first `KVM_RUN`: from just before the spawn of the
//! release binary to the `vcpus_running` event, which the boot vCPU emits right before it
//! enters the guest, read on the same `CLOCK_MONOTONIC`. The guest kernel is the guest
//! image's, so the figure includes loading it; the VMM is stopped with SIGTERM right after.
//!
//! Memory overhead is the VMM's RSS minus its guest-RAM mappings (Firecracker's definition),
//! sampled 200 ms after `vcpus_running`; its median over the samples is printed with the git
//! revision, date and host, since criterion only records times.
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

/// One VMM start: setup time, and the overhead sample when asked for.
fn start_once(command: &VmmCommand, sample_memory: bool) -> (Duration, Option<u64>) {
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
    let overhead = sample_memory.then(|| {
        std::thread::sleep(MEMORY_SAMPLE_DELAY);
        vmm_overhead_bytes(child.id(), &guest_ram).expect("smaps is readable")
    });
    // SAFETY: the child is running and not reaped, so its pid is valid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    (running_at.saturating_duration_since(spawned_at), overhead)
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
                (0..iterations).map(|_| start_once(command, false).0).sum()
            });
        });
    }
    group.finish();

    for (name, command) in &variants {
        let mut samples: Vec<u64> = (0..10)
            .filter_map(|_| start_once(command, true).1)
            .collect();
        samples.sort_unstable();
        let median = samples[samples.len() / 2];
        println!(
            "vmm_overhead {name}: median {:.2} MiB, min {:.2} MiB, max {:.2} MiB over {} samples \
             (git {}, {}, {}, unix time {})",
            median as f64 / 1048576.0,
            samples[0] as f64 / 1048576.0,
            samples[samples.len() - 1] as f64 / 1048576.0,
            samples.len(),
            git_revision(),
            cpu_model(),
            binary.display(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
    }
}

criterion_group!(benches, vmm_setup);
criterion_main!(benches);
