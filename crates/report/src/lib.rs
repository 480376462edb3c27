//! Plots and the HTML report rendered from `results.json` files.
//!
//! [`Report::build`] summarises each results file, draws its charts into SVG strings and fills
//! the page template; [`Report::write`] writes `index.html`, one SVG file per chart and
//! `summary.csv` of each run. The page is self-contained: styles and SVG are inline and it
//! loads nothing over the network.
#![deny(missing_docs)]

pub mod charts;
pub mod format;
pub mod html;
pub mod plot;
mod scale;

use std::fs;
use std::path::{Path, PathBuf};

use isobench_harness::results::{write_file_atomic, Results, ResultsError};
use isobench_harness::stats::Bootstrap;
use isobench_harness::summary::RunSummary;

use crate::charts::Chart;
use crate::plot::PlotError;

/// Failure to build or write a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No results were given.
    #[error("no results to report: pass at least one results.json")]
    NoResults,
    /// A chart could not be drawn.
    #[error(transparent)]
    Plot(#[from] PlotError),
    /// A file could not be written.
    #[error("failed to write report file")]
    Write(#[from] ResultsError),
    /// The output folder could not be created.
    #[error("failed to create report folder {path}")]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A rendered report.
#[derive(Debug, Clone)]
pub struct Report {
    /// The page.
    pub html: String,
    /// Every chart, in page order.
    pub charts: Vec<Chart>,
    /// One summary per results file, in input order.
    pub summaries: Vec<RunSummary>,
    /// Label of each host, in input order.
    pub host_labels: Vec<String>,
}

impl Report {
    /// Builds the report of one or more runs; several runs become one section each, plus a
    /// chart that compares launch-to-ready across them. `generated` is the date shown.
    pub fn build(inputs: &[Results], generated: &str) -> Result<Report, ReportError> {
        if inputs.is_empty() {
            return Err(ReportError::NoResults);
        }
        let bootstrap = Bootstrap::default();
        let summaries: Vec<RunSummary> = inputs
            .iter()
            .map(|results| RunSummary::of(results, &bootstrap))
            .collect();
        let host_labels = host_labels(inputs);

        let several = inputs.len() > 1;
        let mut per_host_charts = Vec::new();
        for (index, summary) in summaries.iter().enumerate() {
            let prefix = if several {
                format!("h{index}-")
            } else {
                String::new()
            };
            per_host_charts.push(charts::run_charts(summary, &prefix)?);
        }
        let overview = if several {
            let labelled: Vec<(String, &RunSummary)> =
                host_labels.iter().cloned().zip(summaries.iter()).collect();
            charts::hosts_chart(&labelled)?
        } else {
            None
        };

        let sections: Vec<html::HostSection<'_>> = inputs
            .iter()
            .zip(&summaries)
            .zip(&per_host_charts)
            .zip(&host_labels)
            .map(|(((results, summary), charts), label)| html::HostSection {
                label: label.clone(),
                results,
                summary,
                charts,
            })
            .collect();
        let title = "isobench: what isolation costs one Jupyter kernel";
        let html = html::page(title, generated, &sections, overview.as_ref());

        let mut all_charts: Vec<Chart> = overview.into_iter().collect();
        all_charts.extend(per_host_charts.into_iter().flatten());
        Ok(Report {
            html,
            charts: all_charts,
            summaries,
            host_labels,
        })
    }

    /// Writes `index.html`, `<chart id>.svg` for every chart and the summary CSV (`summary.csv`
    /// for one run, `summary-<host>.csv` for several) into `dir`, each under a temporary name
    /// renamed when complete. Charts and summaries that an earlier report listed in `dir` and
    /// this one does not write are removed. Returns the path of `index.html`.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, ReportError> {
        fs::create_dir_all(dir).map_err(|source| ReportError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        for chart in &self.charts {
            write_file_atomic(&dir.join(format!("{}.svg", chart.id)), chart.svg.as_bytes())?;
        }
        for (summary, name) in self.summaries.iter().zip(self.summary_names()) {
            write_file_atomic(&dir.join(name), summary.to_csv().as_bytes())?;
        }
        let index = dir.join("index.html");
        write_file_atomic(&index, self.html.as_bytes())?;
        let written = self.file_names();
        remove_stale_files(dir, &written);
        let mut list = written.join("\n");
        list.push('\n');
        write_file_atomic(&dir.join(FILE_LIST), list.as_bytes())?;
        Ok(index)
    }

    /// Returns the names of the charts and summaries that [`Report::write`] writes.
    fn file_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .charts
            .iter()
            .map(|chart| format!("{}.svg", chart.id))
            .collect();
        names.extend(self.summary_names());
        names
    }

    /// Returns the file names of the summary CSVs, one per summary: `summary.csv` for one run,
    /// `summary-<host>.csv` for several.
    fn summary_names(&self) -> Vec<String> {
        self.summaries
            .iter()
            .zip(&self.host_labels)
            .map(|(_, label)| {
                if self.summaries.len() == 1 {
                    "summary.csv".to_owned()
                } else {
                    format!("summary-{}.csv", file_name_part(label))
                }
            })
            .collect()
    }
}

/// Name of the file in a report folder that lists the charts and summaries written there, so
/// that the next report written to the folder removes only those it does not write again.
const FILE_LIST: &str = ".isobench-report-files";

/// Removes the files that the list in `dir` names and `written` does not, so the folder
/// matches its `index.html`. Without a list, nothing is removed: the files may be the user's.
/// Files that cannot be removed stay.
fn remove_stale_files(dir: &Path, written: &[String]) {
    let Ok(list) = fs::read_to_string(dir.join(FILE_LIST)) else {
        return;
    };
    for name in list.lines() {
        // Only plain names in the folder itself, as `Report::write` records them.
        let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
        if plain && !written.iter().any(|kept| kept == name) {
            let _ = fs::remove_file(dir.join(name));
        }
    }
}

/// Labels hosts by host name, adding the start date where two runs share a host name.
fn host_labels(inputs: &[Results]) -> Vec<String> {
    inputs
        .iter()
        .map(|results| {
            let hostname = if results.host.hostname.is_empty() {
                "unnamed host".to_owned()
            } else {
                results.host.hostname.clone()
            };
            let shared = inputs
                .iter()
                .filter(|other| other.host.hostname == results.host.hostname)
                .count();
            if shared > 1 {
                format!("{hostname} ({})", results.run.started_at)
            } else {
                hostname
            }
        })
        .collect()
}

fn file_name_part(label: &str) -> String {
    label
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() || character == '-' {
                character
            } else {
                '_'
            }
        })
        .collect()
}
