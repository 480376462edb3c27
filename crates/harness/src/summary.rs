//! Figures of a run: per backend medians with bootstrap intervals, latency percentiles,
//! paired ratios to the `process` baseline, and notes where two backends cannot be ranked.
//!
//! Only measured trials count: warm-ups, failed and interrupted trials are counted but left
//! out of every figure. Trials of an emulated host are summarised like the others but never
//! paired with a trial on the host itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::results::{
    CellMetric, ExecutionHost, MemoryRecord, Results, TrialOutcome, TrialRecord, TrialStage,
};
use crate::stats::{paired_ratios, Bootstrap, Estimate, Percentiles};

/// Name of the baseline every ratio divides by.
pub const BASELINE: &str = "process";

/// Fewest pairs with which two backends are ranked; below it the bootstrap interval of a
/// median of ratios is too unstable to trust.
pub const MIN_RANKING_PAIRS: usize = 5;

/// Figures that are compared pair by pair between backends.
const COMPARED_FIGURES: [&str; 4] = ["launch_to_ready", "host_delta", "host_pss", "cell:trivial"];

/// Summary of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Bootstrap settings behind every interval.
    pub bootstrap: Bootstrap,
    /// One entry per backend, in run order.
    pub backends: Vec<BackendSummary>,
    /// Pairwise comparisons between backends that ran on the host itself.
    pub comparisons: Vec<Comparison>,
    /// Figures that were not compared between two backends, and why.
    #[serde(default)]
    pub uncompared: Vec<String>,
}

/// Figures of one backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendSummary {
    /// Backend name.
    pub backend: String,
    /// Backend mechanism.
    pub kind: BackendKind,
    /// Execution host of its instances.
    pub execution_host: ExecutionHost,
    /// Trials that were not warm-ups.
    pub trials: usize,
    /// Of those, trials that completed and count in the figures.
    pub completed: usize,
    /// Trials that failed, with their causes.
    pub failures: Vec<FailureSummary>,
    /// Trials interrupted by Ctrl-C.
    pub interrupted: usize,
    /// Figures, each under its own name (see [`Figure::name`]).
    pub figures: Vec<Figure>,
    /// Launch-to-ready time of each measured trial in run order, in seconds.
    pub launch_to_ready_s: Vec<f64>,
    /// Median duration of each startup phase, in seconds: the consecutive phases in time
    /// order, then the concurrent ones.
    pub phases: Vec<PhaseSummary>,
    /// Latency and throughput of each cell.
    pub cells: Vec<CellSummary>,
    /// Answers of observation cells, such as the kernel release seen inside.
    pub observations: Vec<Observation>,
}

/// A failed trial in a summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureSummary {
    /// Zero-based round of the trial, shown to users as trial `round + 1`.
    pub round: u32,
    /// Step that failed.
    pub stage: TrialStage,
    /// Cause.
    pub cause: String,
}

/// One figure of a backend: the median over trials with its interval, and its ratio to the
/// baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Name: `launch_to_ready`, `host_delta`, `host_pss`, `vmm_overhead`,
    /// `cgroup_working_set`, `cgroup_usage`, `guest_view_total`, `guest_view_used`, each
    /// memory figure with the suffix `_after_suite` for the second sample, `cell:NAME` for the
    /// per-trial median latency of a latency cell, and `throughput:NAME` for a throughput cell.
    pub name: String,
    /// Unit of the values: `s`, `bytes` or `MB/s`.
    pub unit: String,
    /// Median over trials and its interval.
    pub estimate: Estimate,
    /// Median of the paired ratios to the baseline with its interval; `None` for the baseline
    /// itself, for an emulated host and where no pair exists.
    pub ratio_to_baseline: Option<Estimate>,
}

/// Median duration of one startup phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseSummary {
    /// Phase name.
    pub name: String,
    /// Median of the phase's duration over trials, in seconds.
    pub estimate: Estimate,
    /// Median of the phase's start over trials, in seconds after `t0`.
    pub start_median_s: f64,
    /// Whether the phase runs alongside the consecutive phases (see
    /// [`crate::results::PhaseRecord::concurrent`]).
    pub concurrent: bool,
}

/// Latency figures of one cell over every repetition of every measured trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellSummary {
    /// Cell name.
    pub name: String,
    /// Metric of the cell.
    pub metric: CellMetric,
    /// Percentiles over all repetitions, pooled across trials, in seconds.
    pub latency: Option<Percentiles>,
    /// Every repetition's latency, pooled across trials, sorted, in seconds; kept for the
    /// distribution plot.
    pub latencies_s: Vec<f64>,
    /// Median throughput over trials, in MB/s (10^6 bytes per second), for throughput cells.
    pub throughput_mb_s: Option<Estimate>,
}

/// Distinct answers of an observation cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Cell name.
    pub name: String,
    /// Distinct answers in the order first seen.
    pub answers: Vec<String>,
}

/// A paired comparison of two backends on one figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Figure name.
    pub figure: String,
    /// Numerator backend.
    pub backend: String,
    /// Denominator backend.
    pub other: String,
    /// Median of the per-round ratios `backend / other` with its interval. When one of the two
    /// is the baseline, it is `other`, so the ratio reads like the ratios to the baseline.
    pub ratio: Estimate,
    /// Whether the interval excludes 1, so the two can be ranked on this figure.
    pub ranked: bool,
    /// The comparison in words.
    pub note: String,
}

impl RunSummary {
    /// Summarises a run.
    pub fn of(results: &Results, bootstrap: &Bootstrap) -> RunSummary {
        let names = results.backend_names();
        let per_backend: Vec<(String, Vec<&TrialRecord>)> = names
            .iter()
            .map(|name| {
                let trials = results
                    .trials
                    .iter()
                    .filter(|t| &t.backend == name)
                    .collect();
                (name.clone(), trials)
            })
            .collect();

        let per_round: BTreeMap<&str, RoundTable> = per_backend
            .iter()
            .map(|(name, trials)| {
                (
                    name.as_str(),
                    per_round_values(trials, results.run.config.trials),
                )
            })
            .collect();
        let baseline = per_round.get(BASELINE);

        let mut backends = Vec::new();
        for (name, trials) in &per_backend {
            let mut summary = summarise_backend(name, trials, bootstrap);
            let direct = summary.execution_host == ExecutionHost::Direct;
            if let (Some(baseline), true, false) = (baseline, direct, name == BASELINE) {
                for figure in &mut summary.figures {
                    let own = per_round[name.as_str()].get(&figure.name);
                    let base = baseline.get(&figure.name);
                    if let (Some(own), Some(base)) = (own, base) {
                        if non_positive_readings(own, base) == 0 {
                            figure.ratio_to_baseline =
                                Estimate::of(&paired_ratios(own, base), bootstrap);
                        }
                    }
                }
            }
            backends.push(summary);
        }

        let (comparisons, uncompared) = compare_pairs(&backends, &per_round, bootstrap);
        RunSummary {
            bootstrap: *bootstrap,
            backends,
            comparisons,
            uncompared,
        }
    }

    /// Returns the summary of the named backend.
    pub fn backend(&self, name: &str) -> Option<&BackendSummary> {
        self.backends.iter().find(|summary| summary.backend == name)
    }

    /// Writes the figures as CSV: one row per backend and figure, with the interval, extremes,
    /// count and ratio to the baseline; cell rows add p50, p95 and p99.
    pub fn to_csv(&self) -> String {
        let mut csv = String::from(
            "backend,execution_host,figure,unit,median,ci_low,ci_high,min,max,count,\
             ratio_to_process,ratio_ci_low,ratio_ci_high,p50,p95,p99\n",
        );
        for backend in &self.backends {
            let host = match backend.execution_host {
                ExecutionHost::Direct => "direct",
                ExecutionHost::Emulated => "emulated",
            };
            for figure in &backend.figures {
                let estimate = &figure.estimate;
                let ratio = figure.ratio_to_baseline.as_ref();
                let cell = figure
                    .name
                    .strip_prefix("cell:")
                    .and_then(|cell| backend.cells.iter().find(|c| c.name == cell))
                    .and_then(|cell| cell.latency.as_ref());
                let fields = [
                    csv_field(&backend.backend),
                    host.to_owned(),
                    csv_field(&figure.name),
                    figure.unit.clone(),
                    number(estimate.median),
                    number(estimate.ci_low),
                    number(estimate.ci_high),
                    number(estimate.min),
                    number(estimate.max),
                    estimate.count.to_string(),
                    ratio.map(|r| number(r.median)).unwrap_or_default(),
                    ratio.map(|r| number(r.ci_low)).unwrap_or_default(),
                    ratio.map(|r| number(r.ci_high)).unwrap_or_default(),
                    cell.map(|p| number(p.p50)).unwrap_or_default(),
                    cell.map(|p| number(p.p95)).unwrap_or_default(),
                    cell.map(|p| number(p.p99)).unwrap_or_default(),
                ];
                csv.push_str(&fields.join(","));
                csv.push('\n');
            }
        }
        csv
    }
}

impl FailureSummary {
    /// Describes the failure in one line, as [`describe_failure`] does.
    pub fn describe(&self, backend: &str) -> String {
        describe_failure(backend, self.round, false, self.stage, &self.cause)
    }
}

/// Names a trial as users see it, numbered from 1 within its backend: `docker trial 2`, or
/// `docker warm-up 1` for a warm-up. `round` is the zero-based round of the record.
pub fn trial_name(backend: &str, round: u32, warmup: bool) -> String {
    let kind = if warmup { "warm-up" } else { "trial" };
    format!("{backend} {kind} {}", u64::from(round) + 1)
}

/// Describes a failed trial in one line, such as `docker trial 2 failed at the ready step: the
/// Jupyter kernel exited with exit status 1`. The step is named once, by `stage`.
pub fn describe_failure(
    backend: &str,
    round: u32,
    warmup: bool,
    stage: TrialStage,
    cause: &str,
) -> String {
    format!(
        "{} failed at the {stage} step: {cause}",
        trial_name(backend, round, warmup)
    )
}

/// Formats a value with three significant digits and no exponent, such as `1.77`, `0.0123` or
/// `123`. Every ratio in the summary's notes and in the report uses it, so they agree.
pub fn format_significant(value: f64) -> String {
    // Rounding first keeps a value such as 99.97 from printing as `100.0`, with four digits.
    let magnitude = round_significant(value.abs());
    let decimals = if magnitude >= 100.0 || magnitude == 0.0 || !magnitude.is_finite() {
        0
    } else if magnitude >= 10.0 {
        1
    } else if magnitude >= 1.0 {
        2
    } else {
        (2 - magnitude.log10().floor() as i32).clamp(0, 9) as usize
    };
    format!("{value:.decimals$}")
}

/// Rounds a non-negative value to three significant digits.
fn round_significant(magnitude: f64) -> f64 {
    if magnitude == 0.0 || !magnitude.is_finite() {
        return magnitude;
    }
    let scale = 10f64.powi(2 - magnitude.log10().floor() as i32);
    (magnitude * scale).round() / scale
}

/// Formats a confidence level given as a fraction as a percentage without trailing zeros, such
/// as `95` for 0.95 or `99.5` for 0.995.
pub fn format_percent(fraction: f64) -> String {
    let text = format_significant(fraction * 100.0);
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

impl BackendSummary {
    /// Returns the named figure.
    pub fn figure(&self, name: &str) -> Option<&Figure> {
        self.figures.iter().find(|figure| figure.name == name)
    }

    /// Returns the named cell.
    pub fn cell(&self, name: &str) -> Option<&CellSummary> {
        self.cells.iter().find(|cell| cell.name == name)
    }
}

/// Values of each figure of one measured trial.
fn trial_values(trial: &TrialRecord) -> Vec<(String, f64)> {
    let mut values = Vec::new();
    if let Some(ready) = trial.launch_to_ready_s {
        values.push(("launch_to_ready".to_owned(), ready));
    }
    for (memory, suffix) in [
        (&trial.memory_idle, ""),
        (&trial.memory_after_suite, "_after_suite"),
    ] {
        if let Some(memory) = memory {
            for (name, value) in memory_values(memory) {
                values.push((format!("{name}{suffix}"), value));
            }
        }
    }
    for cell in &trial.cells {
        match cell.metric {
            CellMetric::Latency => {
                if let Some(median) = crate::stats::median(&cell.latencies_s) {
                    values.push((format!("cell:{}", cell.name), median));
                }
            }
            CellMetric::Throughput => {
                if let Some(throughput) = throughput_mb_s(cell) {
                    values.push((format!("throughput:{}", cell.name), throughput));
                }
            }
            CellMetric::Observation => {}
        }
    }
    values
}

fn memory_values(memory: &MemoryRecord) -> Vec<(&'static str, f64)> {
    let sample = &memory.sample;
    let mut values = Vec::new();
    let mut push = |name, value: Option<f64>| {
        if let Some(value) = value {
            values.push((name, value));
        }
    };
    push(
        "host_delta",
        memory.host_delta_bytes.map(|bytes| bytes as f64),
    );
    push("host_pss", sample.host_pss_bytes.map(|bytes| bytes as f64));
    push(
        "vmm_overhead",
        sample.vmm_overhead_bytes.map(|bytes| bytes as f64),
    );
    push(
        "cgroup_working_set",
        sample.cgroup_working_set_bytes.map(|bytes| bytes as f64),
    );
    push(
        "cgroup_usage",
        sample.cgroup_usage_bytes.map(|bytes| bytes as f64),
    );
    push(
        "guest_view_total",
        sample.guest_view.map(|view| view.mem_total_bytes as f64),
    );
    push(
        "guest_view_used",
        sample.guest_view.map(|view| {
            view.mem_total_bytes
                .saturating_sub(view.mem_available_bytes) as f64
        }),
    );
    values
}

/// Median throughput of a cell's repetitions in one trial, in MB/s.
fn throughput_mb_s(cell: &crate::results::CellRecord) -> Option<f64> {
    let bytes = cell.bytes_per_repetition? as f64;
    let rates: Vec<f64> = cell
        .latencies_s
        .iter()
        .filter(|latency| **latency > 0.0)
        .map(|latency| bytes / latency / 1e6)
        .collect();
    crate::stats::median(&rates)
}

fn unit_of(figure: &str) -> &'static str {
    if figure == "launch_to_ready" || figure.starts_with("cell:") {
        "s"
    } else if figure.starts_with("throughput:") {
        "MB/s"
    } else {
        "bytes"
    }
}

/// Each figure's values indexed by round.
type RoundTable = BTreeMap<String, Vec<Option<f64>>>;

/// Each figure's value per measured round, `None` where the round's trial did not complete.
fn per_round_values(trials: &[&TrialRecord], rounds: u32) -> RoundTable {
    let mut table = RoundTable::new();
    let rounds = trials
        .iter()
        .filter(|trial| !trial.warmup)
        .map(|trial| trial.round + 1)
        .max()
        .unwrap_or(0)
        .max(rounds) as usize;
    for trial in trials.iter().filter(|trial| trial.is_measured()) {
        for (name, value) in trial_values(trial) {
            let column = table.entry(name).or_insert_with(|| vec![None; rounds]);
            if let Some(slot) = column.get_mut(trial.round as usize) {
                *slot = Some(value);
            }
        }
    }
    table
}

fn summarise_backend(name: &str, trials: &[&TrialRecord], bootstrap: &Bootstrap) -> BackendSummary {
    let measured: Vec<&TrialRecord> = trials.iter().copied().filter(|t| t.is_measured()).collect();
    let first = trials.first();
    let mut summary = BackendSummary {
        backend: name.to_owned(),
        kind: first.map(|t| t.kind).unwrap_or(BackendKind::Process),
        execution_host: first.map(|t| t.execution_host).unwrap_or_default(),
        trials: trials.iter().filter(|t| !t.warmup).count(),
        completed: measured.len(),
        failures: Vec::new(),
        interrupted: 0,
        figures: Vec::new(),
        launch_to_ready_s: measured
            .iter()
            .filter_map(|t| t.launch_to_ready_s)
            .collect(),
        phases: Vec::new(),
        cells: Vec::new(),
        observations: Vec::new(),
    };
    for trial in trials.iter().filter(|t| !t.warmup) {
        match &trial.outcome {
            TrialOutcome::Completed => {}
            TrialOutcome::Failed { stage, cause, .. } => summary.failures.push(FailureSummary {
                round: trial.round,
                stage: *stage,
                cause: cause.clone(),
            }),
            TrialOutcome::Interrupted { .. } => summary.interrupted += 1,
        }
    }

    // Figures, in the order they first appear.
    let mut columns: Vec<(String, Vec<f64>)> = Vec::new();
    for trial in &measured {
        for (figure, value) in trial_values(trial) {
            match columns.iter_mut().find(|(name, _)| *name == figure) {
                Some((_, values)) => values.push(value),
                None => columns.push((figure, vec![value])),
            }
        }
    }
    summary.figures = columns
        .into_iter()
        .filter_map(|(figure, values)| {
            Some(Figure {
                unit: unit_of(&figure).to_owned(),
                estimate: Estimate::of(&values, bootstrap)?,
                name: figure,
                ratio_to_baseline: None,
            })
        })
        .collect();

    summary.phases = summarise_phases(&measured, bootstrap);

    // Cells: pooled latencies and per-trial throughput.
    let mut cells: Vec<(String, CellMetric, Vec<f64>, Vec<f64>)> = Vec::new();
    for trial in &measured {
        for cell in &trial.cells {
            let index = match cells.iter().position(|(name, ..)| *name == cell.name) {
                Some(index) => index,
                None => {
                    cells.push((cell.name.clone(), cell.metric, Vec::new(), Vec::new()));
                    cells.len() - 1
                }
            };
            let entry = &mut cells[index];
            entry.2.extend(&cell.latencies_s);
            if let Some(throughput) = throughput_mb_s(cell) {
                entry.3.push(throughput);
            }
            if cell.metric == CellMetric::Observation {
                if let Some(answer) = &cell.answer {
                    match summary
                        .observations
                        .iter_mut()
                        .find(|o| o.name == cell.name)
                    {
                        Some(observation) if observation.answers.contains(answer) => {}
                        Some(observation) => observation.answers.push(answer.clone()),
                        None => summary.observations.push(Observation {
                            name: cell.name.clone(),
                            answers: vec![answer.clone()],
                        }),
                    }
                }
            }
        }
    }
    summary.cells = cells
        .into_iter()
        .map(|(name, metric, mut latencies, throughputs)| {
            latencies.sort_by(f64::total_cmp);
            CellSummary {
                name,
                metric,
                latency: Percentiles::of(&latencies),
                latencies_s: latencies,
                throughput_mb_s: Estimate::of(&throughputs, bootstrap),
            }
        })
        .collect();
    summary
}

/// Phases of the measured trials: the consecutive ones sorted by median start, which keeps
/// each before the one that follows it in every trial, then the concurrent ones.
fn summarise_phases(measured: &[&TrialRecord], bootstrap: &Bootstrap) -> Vec<PhaseSummary> {
    struct Column {
        name: String,
        concurrent: bool,
        starts: Vec<f64>,
        durations: Vec<f64>,
    }
    let mut columns: Vec<Column> = Vec::new();
    for trial in measured {
        for phase in &trial.phases {
            let index = match columns.iter().position(|column| column.name == phase.name) {
                Some(index) => index,
                None => {
                    columns.push(Column {
                        name: phase.name.clone(),
                        concurrent: phase.concurrent,
                        starts: Vec::new(),
                        durations: Vec::new(),
                    });
                    columns.len() - 1
                }
            };
            columns[index].starts.push(phase.start_s);
            columns[index].durations.push(phase.duration_s());
        }
    }
    let mut phases: Vec<PhaseSummary> = columns
        .into_iter()
        .filter_map(|column| {
            Some(PhaseSummary {
                estimate: Estimate::of(&column.durations, bootstrap)?,
                start_median_s: crate::stats::median(&column.starts)?,
                name: column.name,
                concurrent: column.concurrent,
            })
        })
        .collect();
    // A stable sort keeps the first-seen order of phases that start together.
    phases.sort_by(|a, b| {
        a.concurrent
            .cmp(&b.concurrent)
            .then(a.start_median_s.total_cmp(&b.start_median_s))
    });
    phases
}

fn compare_pairs(
    backends: &[BackendSummary],
    per_round: &BTreeMap<&str, RoundTable>,
    bootstrap: &Bootstrap,
) -> (Vec<Comparison>, Vec<String>) {
    let direct: Vec<&BackendSummary> = backends
        .iter()
        .filter(|b| b.execution_host == ExecutionHost::Direct)
        .collect();
    let mut comparisons = Vec::new();
    let mut uncompared = Vec::new();
    for (index, first) in direct.iter().enumerate() {
        for second in &direct[index + 1..] {
            // The baseline is the denominator, as in every ratio to the baseline. Other pairs
            // divide in run order.
            let (backend, other) = if first.backend == BASELINE {
                (*second, *first)
            } else {
                (*first, *second)
            };
            for figure in COMPARED_FIGURES {
                let own = per_round[backend.backend.as_str()].get(figure);
                let theirs = per_round[other.backend.as_str()].get(figure);
                let (Some(own), Some(theirs)) = (own, theirs) else {
                    continue;
                };
                let non_positive = non_positive_readings(own, theirs);
                if non_positive > 0 {
                    uncompared.push(format!(
                        "{figure}: {} and {} are not compared: {non_positive} readings were zero \
                         or negative, so other activity on the host swamps this figure",
                        backend.backend, other.backend
                    ));
                    continue;
                }
                let Some(ratio) = Estimate::of(&paired_ratios(own, theirs), bootstrap) else {
                    continue;
                };
                let enough = ratio.count >= MIN_RANKING_PAIRS;
                let ranked = enough && !ratio.interval_contains(1.0);
                let note = comparison_note(figure, backend, other, &ratio, bootstrap, ranked);
                comparisons.push(Comparison {
                    figure: figure.to_owned(),
                    backend: backend.backend.clone(),
                    other: other.backend.clone(),
                    ratio,
                    ranked,
                    note,
                });
            }
        }
    }
    (comparisons, uncompared)
}

/// States in words whether `backend` and `other` can be ranked on `figure`, with the paired
/// ratio `backend / other` in the same rounding as the report's ratios.
fn comparison_note(
    figure: &str,
    backend: &BackendSummary,
    other: &BackendSummary,
    ratio: &Estimate,
    bootstrap: &Bootstrap,
    ranked: bool,
) -> String {
    let (name, other_name) = (&backend.backend, &other.backend);
    let percent = format_percent(bootstrap.confidence);
    let median = format_significant(ratio.median);
    let low = format_significant(ratio.ci_low);
    let high = format_significant(ratio.ci_high);
    let pairs = ratio.count;
    if pairs < MIN_RANKING_PAIRS {
        format!(
            "{figure}: {name} and {other_name} are not ranked: {pairs} pairs, and ranking needs \
             at least {MIN_RANKING_PAIRS} (run more --trials)"
        )
    } else if ranked {
        let relation = if ratio.median > 1.0 {
            "higher"
        } else {
            "lower"
        };
        format!(
            "{figure}: {name} is {relation} than {other_name} (paired ratio \
             {name}/{other_name} {median}×, {percent}% interval {low} to {high}, {pairs} pairs)"
        )
    } else {
        format!(
            "{figure}: {name} and {other_name} cannot be ranked: the {percent}% interval of the \
             paired ratio {name}/{other_name}, {low} to {high} over {pairs} pairs, contains 1"
        )
    }
}

/// Counts the readings of the pairs two backends have in common that are zero or negative.
/// Such readings mean the figure is swamped by noise (a `host_delta` while the host frees
/// memory elsewhere), and leaving those pairs out would bias the ratio, so the figure is
/// not compared at all.
fn non_positive_readings(own: &[Option<f64>], theirs: &[Option<f64>]) -> usize {
    own.iter()
        .zip(theirs)
        .filter_map(|pair| match pair {
            (Some(a), Some(b)) => Some(usize::from(*a <= 0.0) + usize::from(*b <= 0.0)),
            _ => None,
        })
        .sum()
}

fn number(value: f64) -> String {
    format!("{value:.9}")
        .trim_end_matches('0')
        .trim_end_matches('.')
        .to_owned()
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::fixture;

    fn summary() -> RunSummary {
        RunSummary::of(&fixture::results(8), &Bootstrap::default())
    }

    #[test]
    fn phases_follow_time_then_concurrent() {
        use crate::results::EventRecord;

        // The first trial's start call returns before the entrypoint's markers arrive, the
        // second's after them, as both happen with Debian's engine 20.10.
        let orders = [
            [("container_started", 0.3), ("init_started", 0.32)],
            [("init_started", 0.28), ("container_started", 0.3)],
        ];
        let mut results = fixture::results(0);
        results.trials.clear();
        for (round, order) in orders.iter().enumerate() {
            let mut trial = fixture::trial("docker", BackendKind::Docker, round as u32, 1.0);
            let mut events = vec![("container_created", 0.01)];
            events.extend(order);
            events.extend([("exec_kernel", 0.33), ("ready", 0.8)]);
            trial.events = events
                .iter()
                .map(|(name, at_s)| EventRecord {
                    name: (*name).into(),
                    at_s: *at_s,
                })
                .collect();
            trial.phases = crate::phases::derive_phases(BackendKind::Docker, &trial.events);
            results.trials.push(trial);
        }
        let summary = RunSummary::of(&results, &Bootstrap::default());
        let docker = summary.backend("docker").unwrap();
        let names: Vec<&str> = docker.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "create",
                "start",
                "entrypoint",
                "kernel_ready",
                "start_call"
            ]
        );
        let start_call = &docker.phases[4];
        assert!(start_call.concurrent);
        assert!((start_call.start_median_s - 0.01).abs() < 1e-12);
        assert!(docker.phases[..4].iter().all(|phase| !phase.concurrent));
    }

    #[test]
    fn failed_trial_is_counted_with_cause() {
        let summary = summary();
        let docker = summary.backend("docker").unwrap();
        assert_eq!(docker.trials, 9);
        assert_eq!(docker.completed, 8);
        assert_eq!(docker.failures.len(), 1);
        assert!(docker.failures[0].cause.contains("before ready"));
    }

    #[test]
    fn ratio_to_baseline_pairs_rounds() {
        // The fixture scales docker's launch_to_ready by 1.6 of process's minus the round term:
        // ready = 0.5 * scale + 0.01 * round, so the ratio lies between 1.5 and 1.6.
        let summary = summary();
        let ratio = summary
            .backend("docker")
            .unwrap()
            .figure("launch_to_ready")
            .unwrap()
            .ratio_to_baseline
            .unwrap();
        assert!(
            (1.5..=1.6).contains(&ratio.median),
            "ratio {}",
            ratio.median
        );
        assert_eq!(ratio.count, 8);
    }

    #[test]
    fn baseline_has_no_ratio() {
        let summary = summary();
        let process = summary.backend("process").unwrap();
        assert!(process
            .figures
            .iter()
            .all(|figure| figure.ratio_to_baseline.is_none()));
    }

    #[test]
    fn emulated_backend_gets_no_ratio() {
        let mut results = fixture::results(4);
        for trial in results.trials.iter_mut().filter(|t| t.backend == "docker") {
            trial.execution_host = ExecutionHost::Emulated;
        }
        let summary = RunSummary::of(&results, &Bootstrap::default());
        let docker = summary.backend("docker").unwrap();
        assert!(docker
            .figures
            .iter()
            .all(|figure| figure.ratio_to_baseline.is_none()));
        assert!(summary.comparisons.is_empty());
    }

    #[test]
    fn distinct_backends_are_ranked() {
        let summary = summary();
        let comparison = summary
            .comparisons
            .iter()
            .find(|c| c.figure == "launch_to_ready")
            .unwrap();
        assert!(comparison.ranked, "{}", comparison.note);
    }

    #[test]
    fn equal_backends_are_not_ranked() {
        let mut results = fixture::results(8);
        for trial in results.trials.iter_mut().filter(|t| t.backend == "docker") {
            let twin = fixture::trial("docker", BackendKind::Docker, trial.round, 1.0);
            trial.launch_to_ready_s = twin.launch_to_ready_s.map(|ready| {
                // Alternate 2% above and below the baseline so the ratio straddles 1.
                if trial.round % 2 == 0 {
                    ready * 1.02
                } else {
                    ready * 0.98
                }
            });
        }
        let summary = RunSummary::of(&results, &Bootstrap::default());
        let comparison = summary
            .comparisons
            .iter()
            .find(|c| c.figure == "launch_to_ready")
            .unwrap();
        assert!(!comparison.ranked, "{}", comparison.note);
        assert!(comparison.note.contains("cannot be ranked"));
    }

    #[test]
    fn few_pairs_are_not_ranked() {
        let summary = RunSummary::of(&fixture::results(3), &Bootstrap::default());
        let comparison = summary
            .comparisons
            .iter()
            .find(|c| c.figure == "launch_to_ready")
            .unwrap();
        assert!(!comparison.ranked, "{}", comparison.note);
        assert!(comparison.note.contains("3 pairs"), "{}", comparison.note);
    }

    #[test]
    fn negative_readings_prevent_comparison() {
        let mut results = fixture::results(8);
        let docker = results
            .trials
            .iter_mut()
            .find(|t| t.backend == "docker")
            .unwrap();
        docker.memory_idle.as_mut().unwrap().host_delta_bytes = Some(-1);
        let summary = RunSummary::of(&results, &Bootstrap::default());
        let figure = summary
            .backend("docker")
            .unwrap()
            .figure("host_delta")
            .unwrap();
        assert!(figure.ratio_to_baseline.is_none());
        assert!(summary.comparisons.iter().all(|c| c.figure != "host_delta"));
        assert!(summary
            .uncompared
            .iter()
            .any(|note| note.starts_with("host_delta")));
    }

    #[test]
    fn cell_percentiles_pool_repetitions() {
        let summary = summary();
        let trivial = summary.backend("process").unwrap().cell("trivial").unwrap();
        assert_eq!(trivial.latency.unwrap().count, 8 * 20);
    }

    #[test]
    fn csv_has_header_and_one_row_per_figure() {
        let summary = summary();
        let csv = summary.to_csv();
        let rows = csv.lines().count() - 1;
        let figures: usize = summary.backends.iter().map(|b| b.figures.len()).sum();
        assert_eq!(rows, figures);
        assert!(csv.starts_with("backend,execution_host,figure,unit,median"));
        assert!(csv.contains("docker,direct,launch_to_ready,s,"));
    }

    #[test]
    fn comparison_divides_by_baseline() {
        let summary = summary();
        let comparison = summary
            .comparisons
            .iter()
            .find(|c| c.figure == "launch_to_ready")
            .unwrap();
        assert_eq!(comparison.backend, "docker");
        assert_eq!(comparison.other, BASELINE);
        assert!(comparison.ratio.median > 1.0, "{}", comparison.note);
        let table_ratio = summary
            .backend("docker")
            .unwrap()
            .figure("launch_to_ready")
            .unwrap()
            .ratio_to_baseline
            .unwrap();
        let shown = format!("docker/process {}×", format_significant(table_ratio.median));
        assert!(comparison.note.contains(&shown), "{}", comparison.note);
    }

    #[test]
    fn host_pss_is_compared_with_baseline() {
        let summary = summary();
        let figure = summary
            .backend("docker")
            .unwrap()
            .figure("host_pss")
            .unwrap();
        // The fixture scales docker's host_pss by 1.6 of process's in every round.
        let ratio = figure.ratio_to_baseline.unwrap();
        assert!((ratio.median - 1.6).abs() < 1e-9, "ratio {}", ratio.median);
        assert!(summary.comparisons.iter().any(|c| c.figure == "host_pss"));
    }

    #[test]
    fn failure_names_trial_from_one() {
        let failure = FailureSummary {
            round: 0,
            stage: TrialStage::Ready,
            cause: "the Jupyter kernel exited with exit status 4 (guest triple fault)".into(),
        };
        let line = failure.describe("microvm");
        assert_eq!(
            line,
            "microvm trial 1 failed at the ready step: the Jupyter kernel exited with exit \
             status 4 (guest triple fault)"
        );
        assert_eq!(line.matches("ready").count(), 1, "{line}");
        assert_eq!(line.matches("exit status").count(), 1, "{line}");
    }

    #[test]
    fn warmup_is_named_apart() {
        assert_eq!(trial_name("docker", 0, true), "docker warm-up 1");
        assert_eq!(trial_name("docker", 9, false), "docker trial 10");
    }

    #[test]
    fn significant_keeps_three_digits() {
        assert_eq!(format_significant(1.7734), "1.77");
        assert_eq!(format_significant(0.5639), "0.564");
        assert_eq!(format_significant(17.75), "17.8");
        assert_eq!(format_significant(123.4), "123");
        assert_eq!(format_significant(0.0), "0");
        assert_eq!(format_significant(99.97), "100");
        assert_eq!(format_significant(9.996), "10.0");
        assert_eq!(format_significant(0.09996), "0.100");
        assert_eq!(format_significant(-99.97), "-100");
    }

    #[test]
    fn percent_drops_trailing_zeros() {
        assert_eq!(format_percent(0.95), "95");
        assert_eq!(format_percent(0.995), "99.5");
        assert_eq!(format_percent(0.5), "50");
    }

    #[test]
    fn note_states_confidence_as_percent() {
        let summary = summary();
        let comparison = summary
            .comparisons
            .iter()
            .find(|c| c.figure == "launch_to_ready")
            .unwrap();
        assert!(
            comparison.note.contains(", 95% interval"),
            "{}",
            comparison.note
        );
    }

    #[test]
    fn csv_quotes_commas() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
