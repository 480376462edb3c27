//! `isobench compare`.

use std::process::ExitCode;

/// Flags of `isobench compare`.
#[derive(clap::Args)]
pub struct CompareArgs {}

/// Runs `isobench compare`.
pub fn main(_args: CompareArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`isobench compare` is not implemented yet")
}
