//! `isobench`: measures what isolation costs for one Jupyter kernel.
//!
//! Command-line flags are parsed here and resolved by each subcommand's module into the
//! configuration the libraries take, so the libraries never see command-line strings.

/// Prints a line to standard output like `println!`, but ignores write errors. A reader that
/// closes the pipe early (`isobench ... | head`) must not panic the run midway, because the
/// run still has containers, networks and mounts to remove.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod compare;
mod doctor;
mod flags;
mod image;
mod interrupt;
mod report;
mod run;
mod vm;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Measures startup time, memory and throughput of one Jupyter kernel under several isolation
/// backends: a KVM microVM, a Docker container and a plain chroot process.
#[derive(Parser)]
#[command(name = "isobench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Builds or inspects the guest image shared by every backend.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Checks what this host offers each backend and says what to do about what is missing.
    Doctor(doctor::DoctorArgs),
    /// Runs trials of one backend and prints phases, readiness and per-cell figures.
    Run(run::RunArgs),
    /// Runs trials across backends and writes `results.json` and the HTML report.
    Compare(compare::CompareArgs),
    /// Renders the HTML report from one or more `results.json` files.
    Report(report::ReportArgs),
    /// Boots the guest image in the microVM.
    #[command(subcommand)]
    Vm(vm::VmCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Image(command) => image::main(command),
        Command::Doctor(args) => doctor::main(args),
        Command::Run(args) => run::main(args),
        Command::Compare(args) => compare::main(args),
        Command::Report(args) => report::main(args),
        Command::Vm(command) => vm::main(command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("isobench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sends the libraries' `tracing` events to standard error: warnings and errors by default,
/// more with `RUST_LOG` (such as `RUST_LOG=isobench_harness=debug`). Without it, warnings the
/// harness logs and carries on after, such as a failed guest memory read, would be lost.
/// Colour codes are written only to a terminal, so a log file or a pipe gets plain text.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // The ZeroMQ library warns on every reconnection attempt to a kernel that has exited,
        // which the trial's failure already reports.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,zeromq=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .init();
}
