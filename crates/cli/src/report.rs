//! `isobench report`: re-renders the HTML report from one or more `results.json` files, such
//! as runs on several hosts merged into one page.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use isobench_harness::host::rfc3339_utc;
use isobench_harness::results::Results;
use isobench_report::Report;

/// Flags of `isobench report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// Results files written by `isobench compare`; several become one report with a section
    /// per host.
    #[arg(value_name = "RESULTS.json", required = true)]
    results: Vec<PathBuf>,
    /// Folder for `index.html`, the SVG charts and the summary CSV. A report already there is
    /// replaced: its charts and summaries that the new one does not have are removed, and other
    /// files stay.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Runs `isobench report`.
pub fn main(args: ReportArgs) -> anyhow::Result<ExitCode> {
    crate::flags::check_report_dir("--out", &args.out)?;
    let mut inputs = Vec::with_capacity(args.results.len());
    for path in &args.results {
        inputs.push(Results::read(path)?);
    }
    let index = render(&inputs, &args.out)?;
    out!("report: {}", index.display());
    Ok(ExitCode::SUCCESS)
}

/// Renders `inputs` into `out` and returns the path of `index.html`.
pub fn render(inputs: &[Results], out: &Path) -> anyhow::Result<PathBuf> {
    let generated = rfc3339_utc(SystemTime::now());
    let report = Report::build(inputs, &generated).context("failed to build the report")?;
    report
        .write(out)
        .with_context(|| format!("failed to write the report to {}", out.display()))
}
