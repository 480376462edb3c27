//! `isobench doctor`.

use std::process::ExitCode;

/// Flags of `isobench doctor`.
#[derive(clap::Args)]
pub struct DoctorArgs {}

/// Runs `isobench doctor`.
pub fn main(_args: DoctorArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`isobench doctor` is not implemented yet")
}
