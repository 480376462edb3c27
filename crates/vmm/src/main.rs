//! `isobench-vmm`: boots one microVM and reports its progress as JSON-lines events.
//!
//! Exit status:
//! - 0: the guest reset or powered off;
//! - 1: setup failed, and a one-line error on standard error says why;
//! - 2: invalid usage;
//! - 3: a vCPU failed;
//! - 4: the guest triple-faulted;
//! - 5: the event loop failed;
//! - 128 + N: stopped by signal N (143 for SIGTERM).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use isobench_vmm::config::{Destination, MemoryOptions, NetConfig, DEFAULT_BOOT_ARGS};
use isobench_vmm::devices::serial::file_from_fd;
use isobench_vmm::event_loop::block_termination_signals;
use isobench_vmm::events::{exit_status, monotonic_us, Event, EventSink, CLOCK_NAME};
use isobench_vmm::logger::StderrLogger;
use isobench_vmm::{run_vm, VmConfig};

/// Boots the guest kernel in a KVM microVM with a virtio-blk root disk and a virtio-net link
/// over a TAP device, and writes JSON-lines events stamped with CLOCK_MONOTONIC microseconds.
#[derive(Parser)]
#[command(name = "isobench-vmm", version)]
struct Args {
    /// Guest kernel: an ELF vmlinux (entered through PVH) or a bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Root disk, a file or block device attached as /dev/vda.
    #[arg(long, value_name = "PATH")]
    rootfs: Option<PathBuf>,
    /// Attach the root disk writable (read-only by default).
    #[arg(long)]
    rootfs_writable: bool,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    vcpus: u32,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    memory: u64,
    /// Fault all guest RAM in at start instead of on first access.
    #[arg(long)]
    prefault: bool,
    /// Back guest RAM with 2 MiB huge pages (reserve them in /proc/sys/vm/nr_hugepages).
    #[arg(long)]
    hugepages: bool,
    /// TAP device for the guest's network link; created when absent (needs CAP_NET_ADMIN).
    #[arg(long, value_name = "NAME", requires_all = ["guest_ip", "host_ip"])]
    tap: Option<String>,
    /// Guest IPv4 address, set through the kernel's ip= parameter.
    #[arg(long, value_name = "ADDR", requires = "tap")]
    guest_ip: Option<Ipv4Addr>,
    /// Host IPv4 address on the TAP device, the guest's gateway; set when the VMM creates the
    /// TAP device.
    #[arg(long, value_name = "ADDR", requires = "tap")]
    host_ip: Option<Ipv4Addr>,
    /// Netmask of the link.
    #[arg(long, value_name = "MASK", default_value = "255.255.255.252")]
    netmask: Ipv4Addr,
    /// Base kernel command line, replacing the default.
    #[arg(long, value_name = "ARGS", default_value = DEFAULT_BOOT_ARGS)]
    boot_args: String,
    /// Kernel command-line arguments appended after the VMM's own (repeatable).
    #[arg(long = "extra-args", value_name = "ARGS")]
    extra_args: Vec<String>,
    /// Serial console destination: none, stdout, stderr, file:PATH or fd:N.
    #[arg(long, value_name = "DEST", default_value = "stderr")]
    console: Destination,
    /// Events destination: none, stdout, stderr, file:PATH or fd:N.
    #[arg(long, value_name = "DEST", default_value = "stdout")]
    events: Destination,
    /// Log level on standard error: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    log_level: tracing::Level,
}

impl Args {
    fn config(&self) -> VmConfig {
        let mut config = VmConfig::new(self.kernel.clone());
        config.rootfs = self.rootfs.clone();
        config.rootfs_writable = self.rootfs_writable;
        config.vcpus = self.vcpus;
        config.memory_mib = self.memory;
        config.memory = MemoryOptions {
            prefault: self.prefault,
            hugepages: self.hugepages,
        };
        if let (Some(tap), Some(guest_ip), Some(host_ip)) = (&self.tap, self.guest_ip, self.host_ip)
        {
            config.net = Some(NetConfig {
                tap: tap.clone(),
                guest_ip,
                host_ip,
                netmask: self.netmask,
                mac: NetConfig::mac_for(guest_ip),
            });
        }
        config.boot_args = self.boot_args.clone();
        config.extra_args = self.extra_args.clone();
        config.console = self.console.clone();
        config
    }
}

fn event_sink(destination: &Destination) -> std::io::Result<EventSink> {
    Ok(match destination {
        Destination::None => EventSink::discard(),
        Destination::Stdout => EventSink::new(Box::new(std::io::stdout())),
        Destination::Stderr => EventSink::new(Box::new(std::io::stderr())),
        Destination::File(path) => EventSink::to_file(std::fs::File::create(path)?),
        Destination::Fd(fd) => EventSink::to_file(file_from_fd(*fd)?),
    })
}

/// Formats an error with its sources on one line.
fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn main() -> ExitCode {
    let started_us = monotonic_us();
    if let Err(error) = block_termination_signals() {
        eprintln!("isobench-vmm: cannot block termination signals: {error}");
        return ExitCode::from(exit_status::SETUP_FAILED as u8);
    }
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            let code = if error.use_stderr() {
                exit_status::USAGE
            } else {
                0
            };
            return ExitCode::from(code as u8);
        }
    };
    StderrLogger::install(args.log_level);

    let events = match event_sink(&args.events) {
        Ok(sink) => Arc::new(sink),
        Err(error) => {
            eprintln!(
                "isobench-vmm: cannot open events destination {}: {error}",
                args.events
            );
            return ExitCode::from(exit_status::SETUP_FAILED as u8);
        }
    };
    events.emit(&Event::VmmStarted {
        monotonic_us: started_us,
        pid: std::process::id(),
        clock: CLOCK_NAME.to_string(),
    });
    tracing::debug!(
        step = "parse arguments and open events",
        start_us = started_us,
        end_us = monotonic_us(),
        "setup step"
    );

    let (reason, status) = match run_vm(&args.config(), events.clone()) {
        Ok(reason) => (reason.describe(), reason.status()),
        Err(error) => {
            let message = one_line(&error);
            eprintln!("isobench-vmm: {message}");
            (
                format!("setup failed: {message}"),
                exit_status::SETUP_FAILED,
            )
        }
    };
    events.emit(&Event::VmmExit {
        monotonic_us: monotonic_us(),
        reason,
        status,
    });
    ExitCode::from(status.clamp(0, 255) as u8)
}
