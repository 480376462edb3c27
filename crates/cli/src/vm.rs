//! `isobench vm`.

use std::process::ExitCode;

/// Subcommands of `isobench vm`.
#[derive(clap::Subcommand)]
pub enum VmCommand {}

/// Runs `isobench vm`.
pub fn main(command: VmCommand) -> anyhow::Result<ExitCode> {
    match command {}
}
