//! `isobench`: measures what isolation costs for one Jupyter kernel.

use std::process::ExitCode;

use clap::Parser;

/// Measures startup time, memory and throughput of a Jupyter kernel under several isolation
/// backends.
#[derive(Parser)]
#[command(name = "isobench", version)]
struct Cli {}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    ExitCode::SUCCESS
}
