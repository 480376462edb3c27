//! `isobench image`.

use std::process::ExitCode;

/// Subcommands of `isobench image`.
#[derive(clap::Subcommand)]
pub enum ImageCommand {}

/// Runs `isobench image`.
pub fn main(command: ImageCommand) -> anyhow::Result<ExitCode> {
    match command {}
}
