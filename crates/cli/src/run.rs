//! `isobench run`.

use std::process::ExitCode;

/// Flags of `isobench run`.
#[derive(clap::Args)]
pub struct RunArgs {}

/// Runs `isobench run`.
pub fn main(_args: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`isobench run` is not implemented yet")
}
