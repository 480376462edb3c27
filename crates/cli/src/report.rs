//! `isobench report`.

use std::process::ExitCode;

/// Flags of `isobench report`.
#[derive(clap::Args)]
pub struct ReportArgs {}

/// Runs `isobench report`.
pub fn main(_args: ReportArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`isobench report` is not implemented yet")
}
