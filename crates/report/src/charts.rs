//! The report's charts, each built from a run's summary, with the text shown beside it.

use std::fmt::Write;

use isobench_harness::results::{CellMetric, ExecutionHost};
use isobench_harness::stats::quantile;
use isobench_harness::summary::{format_percent, BackendSummary, RunSummary, BASELINE};
use plotters::style::RGBColor;
use serde::{Deserialize, Serialize};

use crate::format::{format_bytes_axis, format_mb_s, format_seconds_axis, significant, MIB};
use crate::plot::{
    self, Axis, BarRow, DistributionRow, Overlay, PlotError, RowSummary, Segment, Series,
    StackedRow, PALETTE,
};

/// Memory figures drawn in the host-side memory chart, in this order.
pub const HOST_MEMORY_FIGURES: [&str; 5] = [
    "host_delta",
    "host_pss",
    "vmm_overhead",
    "cgroup_working_set",
    "cgroup_usage",
];

/// Shortest median phase drawn in the startup phases chart, in seconds.
const MIN_DRAWN_PHASE_S: f64 = 0.001;

/// One chart of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chart {
    /// Id, also the SVG file name without `.svg`.
    pub id: String,
    /// Title shown above the chart.
    pub title: String,
    /// The chart as an SVG document.
    pub svg: String,
    /// Text shown beside the chart: what it shows and what it says about virtual machines and
    /// containers.
    pub explanation: String,
    /// Whether the chart shows emulation times from the emulated host.
    pub emulated: bool,
}

/// Colour of a backend: fixed for the known ones so every chart agrees.
pub fn backend_colour(name: &str, index: usize) -> RGBColor {
    match name {
        "process" => PALETTE[0],
        "docker" => PALETTE[1],
        "microvm" => PALETTE[2],
        _ => PALETTE[3 + index % (PALETTE.len() - 3)],
    }
}

/// Colour of a startup phase, by its role, so that phases doing the same job on different
/// backends share it. The colours are from Paul Tol's colour-blind-safe "muted" qualitative
/// scheme, and none of them is one of the Okabe and Ito colours that mark backends.
pub fn phase_colour(name: &str) -> RGBColor {
    match name {
        // Setting up the isolation before anything runs in it.
        "create" | "vmm_setup" | "chroot_setup" => RGBColor(0x33, 0x22, 0x88), // indigo
        // From the start request to the entrypoint's first instruction.
        "start" | "spawn" | "guest_kernel" => RGBColor(0xCC, 0x66, 0x77), // rose
        // The guest entrypoint, up to the Jupyter kernel's exec.
        "entrypoint" | "guest_init" => RGBColor(0x44, 0xAA, 0x99), // teal
        "guest_mounts" => RGBColor(0x99, 0x99, 0x33),              // olive
        "vmm_spawn" => RGBColor(0x88, 0xCC, 0xEE),                 // cyan
        "start_call" => RGBColor(0x88, 0x22, 0x55),                // wine
        // Python start-up, on every backend.
        "kernel_ready" => RGBColor(0xDD, 0xCC, 0x77), // sand
        _ => RGBColor(0xAA, 0x44, 0x99),              // purple
    }
}

/// Builds every chart of one run: the backends on the host itself first, then, apart, those
/// that ran in the emulated host.
pub fn run_charts(summary: &RunSummary, id_prefix: &str) -> Result<Vec<Chart>, PlotError> {
    let mut charts = Vec::new();
    let direct: Vec<&BackendSummary> = summary
        .backends
        .iter()
        .filter(|backend| backend.execution_host == ExecutionHost::Direct)
        .collect();
    let emulated: Vec<&BackendSummary> = summary
        .backends
        .iter()
        .filter(|backend| backend.execution_host == ExecutionHost::Emulated)
        .collect();
    let percent = format_percent(summary.bootstrap.confidence);
    for (backends, emulated) in [(direct, false), (emulated, true)] {
        if backends.is_empty() {
            continue;
        }
        let suffix = if emulated { "-emulated" } else { "" };
        let id = |name: &str| format!("{id_prefix}{name}{suffix}");
        charts.extend(startup_phases(&backends, id("startup-phases"), emulated)?);
        charts.extend(startup_distribution(
            &backends,
            id("startup-distribution"),
            emulated,
            &percent,
        )?);
        charts.extend(host_memory(&backends, id("memory"), emulated, &percent)?);
        charts.extend(guest_view(&backends, id("guest-view"), emulated)?);
        charts.extend(cell_latency(&backends, id("cell-latency"), emulated)?);
        charts.extend(throughput(&backends, id("throughput"), emulated, &percent)?);
    }
    Ok(charts)
}

fn seconds_axis(title: &str, log: bool) -> Axis {
    Axis {
        title: title.to_owned(),
        log,
        format: format_seconds_axis,
    }
}

fn emulation_title(title: &str, emulated: bool) -> String {
    if emulated {
        format!("{title} (emulated host: emulation times, not comparable)")
    } else {
        title.to_owned()
    }
}

/// Marks the title of a memory chart from the emulated host, whose figures are sizes rather
/// than emulation times but still come from a different, emulated machine.
fn emulated_memory_title(title: &str, emulated: bool) -> String {
    if emulated {
        format!("{title} (emulated host: not comparable)")
    } else {
        title.to_owned()
    }
}

fn startup_phases(
    backends: &[&BackendSummary],
    id: String,
    emulated: bool,
) -> Result<Option<Chart>, PlotError> {
    let mut series: Vec<Series> = Vec::new();
    let mut series_index =
        |phase: &str, name: String| match series.iter().position(|known| known.name == name) {
            Some(index) => index,
            None => {
                series.push(Series {
                    name,
                    colour: phase_colour(phase),
                });
                series.len() - 1
            }
        };
    let mut rows = Vec::new();
    for backend in backends {
        if backend.phases.is_empty() {
            continue;
        }
        let mut segments = Vec::new();
        let mut overlays = Vec::new();
        for phase in &backend.phases {
            let median = phase.estimate.median;
            if phase.concurrent {
                overlays.push(Overlay {
                    series: series_index(&phase.name, format!("{} (alongside)", phase.name)),
                    start: phase.start_median_s,
                    end: phase.start_median_s + median,
                });
            } else if median >= MIN_DRAWN_PHASE_S {
                // A phase whose median is below a millisecond is left out of the chart, because
                // it would be an invisible sliver. It stays in results.json and the figure table.
                segments.push(Segment {
                    series: series_index(&phase.name, phase.name.clone()),
                    value: median,
                });
            }
        }
        let marker = backend
            .figure("launch_to_ready")
            .map(|figure| figure.estimate.median);
        rows.push(StackedRow {
            label: backend.backend.clone(),
            segments,
            overlays,
            marker,
        });
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let alongside = if rows.iter().any(|row| !row.overlays.is_empty()) {
        " The thin bar under a row runs alongside the phases above it: Docker's start_call \
         lasts until the Engine API returns from the start call, which it usually does after \
         the entrypoint has begun."
    } else {
        ""
    };
    let svg = plot::stacked_bars(&id, &rows, &series, &seconds_axis("time after t0", false))?;
    Ok(Some(Chart {
        id,
        title: emulation_title("Startup phases: median duration of each phase", emulated),
        svg,
        explanation: format!(
            "Time from t0 to a ready Jupyter kernel, split into consecutive phases in the order \
             they happen, each drawn at its median. The black tick is the median total, which \
             the phase medians need not add up to, because each median is taken on its own. A \
             microVM boots its own guest kernel first (vmm_setup, guest_kernel, guest_init). A \
             container shares the host kernel and pays for namespaces and cgroups instead \
             (create, then start up to the entrypoint's first marker).{alongside} Every backend \
             pays the Python start-up (kernel_ready). Phases with the same role share a colour \
             on every backend."
        ),
        emulated,
    }))
}

fn startup_distribution(
    backends: &[&BackendSummary],
    id: String,
    emulated: bool,
    percent: &str,
) -> Result<Option<Chart>, PlotError> {
    let rows: Vec<DistributionRow> = backends
        .iter()
        .enumerate()
        .filter_map(|(index, backend)| {
            let figure = backend.figure("launch_to_ready")?;
            let estimate = figure.estimate;
            Some(DistributionRow {
                label: backend.backend.clone(),
                colour: backend_colour(&backend.backend, index),
                values: backend.launch_to_ready_s.clone(),
                summary: RowSummary {
                    range: (estimate.min, estimate.max),
                    band: (estimate.ci_low, estimate.ci_high),
                    median: estimate.median,
                    tail: None,
                },
            })
        })
        .collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let svg = plot::distributions(&id, &rows, &seconds_axis("launch to ready", false))?;
    Ok(Some(Chart {
        id,
        title: emulation_title("Launch-to-ready time of every trial", emulated),
        svg,
        explanation: format!(
            "One dot per trial. Black bar: the median. Shaded box: the median's {percent}% \
             interval. Thin line: fastest to slowest trial. Whether two backends can be ranked \
             is decided by their paired ratios, trial by trial, in the notes above, not by \
             whether these boxes overlap."
        ),
        emulated,
    }))
}

fn host_memory(
    backends: &[&BackendSummary],
    id: String,
    emulated: bool,
    percent: &str,
) -> Result<Option<Chart>, PlotError> {
    let mut rows = Vec::new();
    for figure_name in HOST_MEMORY_FIGURES {
        for (index, backend) in backends.iter().enumerate() {
            if let Some(figure) = backend.figure(figure_name) {
                let estimate = figure.estimate;
                rows.push(BarRow {
                    label: format!("{figure_name} · {}", backend.backend),
                    colour: backend_colour(&backend.backend, index),
                    value: estimate.median / MIB,
                    interval: Some((estimate.ci_low / MIB, estimate.ci_high / MIB)),
                });
            }
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let axis = Axis {
        title: "MiB at idle after ready".into(),
        log: false,
        format: format_bytes_axis,
    };
    let svg = plot::interval_bars(&id, &rows, &axis)?;
    Ok(Some(Chart {
        id,
        title: emulated_memory_title("Memory by definition, at idle after ready", emulated),
        svg,
        explanation: format!(
            "Median over trials of each memory definition, with its {percent}% interval. The \
             definitions differ and are never added up. host_delta is what the whole host gave \
             up, so it counts a microVM's whole guest kernel and page cache, which the host \
             cannot share. A container shares the host kernel and page cache, and its host_pss \
             also counts the runtime's shim process, which a plain process does not have.{}",
            ratio_sentences(backends, &["host_pss", "host_delta"], percent, emulated)
        ),
        emulated,
    }))
}

fn guest_view(
    backends: &[&BackendSummary],
    id: String,
    emulated: bool,
) -> Result<Option<Chart>, PlotError> {
    let mut rows = Vec::new();
    for figure_name in ["guest_view_total", "guest_view_used"] {
        for (index, backend) in backends.iter().enumerate() {
            if let Some(figure) = backend.figure(figure_name) {
                let estimate = figure.estimate;
                rows.push(BarRow {
                    label: format!(
                        "{} · {}",
                        figure_name.trim_start_matches("guest_view_"),
                        backend.backend
                    ),
                    colour: backend_colour(&backend.backend, index),
                    value: estimate.median / MIB,
                    interval: None,
                });
            }
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let axis = Axis {
        title: "MiB in /proc/meminfo inside the workload".into(),
        log: false,
        format: format_bytes_axis,
    };
    let svg = plot::interval_bars(&id, &rows, &axis)?;
    Ok(Some(Chart {
        id,
        title: emulated_memory_title(
            "Memory as the workload sees it (/proc/meminfo inside)",
            emulated,
        ),
        svg,
        explanation: "MemTotal and MemTotal minus MemAvailable, read inside the Jupyter kernel. A \
            container sees the host's numbers, because it has no kernel of its own (its \
            cgroup limit does not show here). A microVM sees its guest kernel's own RAM."
            .into(),
        emulated,
    }))
}

fn cell_latency(
    backends: &[&BackendSummary],
    id: String,
    emulated: bool,
) -> Result<Option<Chart>, PlotError> {
    let mut cell_names: Vec<&str> = Vec::new();
    for backend in backends {
        for cell in backend
            .cells
            .iter()
            .filter(|cell| cell.metric == CellMetric::Latency)
        {
            if !cell_names.contains(&cell.name.as_str()) {
                cell_names.push(&cell.name);
            }
        }
    }
    let mut rows = Vec::new();
    for name in cell_names {
        for (index, backend) in backends.iter().enumerate() {
            let Some(cell) = backend.cell(name) else {
                continue;
            };
            let Some(latency) = cell.latency else {
                continue;
            };
            let q = |level| quantile(&cell.latencies_s, level).unwrap_or(latency.p50);
            rows.push(DistributionRow {
                label: format!("{name} · {}", backend.backend),
                colour: backend_colour(&backend.backend, index),
                values: cell.latencies_s.clone(),
                summary: RowSummary {
                    range: (latency.min, latency.max),
                    band: (q(0.25), q(0.75)),
                    median: latency.p50,
                    tail: Some(latency.p99),
                },
            });
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let crowded: Vec<&str> = rows
        .iter()
        .filter(|row| row.values.len() > plot::MAX_DOTS)
        .map(|row| row.label.as_str())
        .collect();
    let dots = if crowded.is_empty() {
        String::new()
    } else {
        format!(
            " Rows with more than {} repetitions ({}) have no dots, only the marks.",
            plot::MAX_DOTS,
            crowded.join(", ")
        )
    };
    let svg = plot::distributions(
        &id,
        &rows,
        &seconds_axis("cell wall time (log scale)", true),
    )?;
    Ok(Some(Chart {
        id,
        title: emulation_title("Cell latency: every repetition of every trial", emulated),
        svg,
        explanation: format!(
            "Every repetition on a log axis, one dot each.{dots} Black bar: p50. Box: p25 to \
             p75. Ring: p99. The trivial cell measures one round trip over the path to the \
             Jupyter kernel: loopback for a process, a Docker bridge for a container, a TAP link \
             and virtio-net for a microVM. The other cells add their compute, which runs \
             directly on the CPU in every backend.{}",
            p50_ratio_sentences(backends, emulated)
        ),
        emulated,
    }))
}

fn throughput(
    backends: &[&BackendSummary],
    id: String,
    emulated: bool,
    percent: &str,
) -> Result<Option<Chart>, PlotError> {
    let mut rows = Vec::new();
    let mut cell_names: Vec<&str> = Vec::new();
    for backend in backends {
        for cell in &backend.cells {
            if cell.throughput_mb_s.is_some() && !cell_names.contains(&cell.name.as_str()) {
                cell_names.push(&cell.name);
            }
        }
    }
    for name in cell_names {
        for (index, backend) in backends.iter().enumerate() {
            let Some(estimate) = backend.cell(name).and_then(|cell| cell.throughput_mb_s) else {
                continue;
            };
            rows.push(BarRow {
                label: format!("{name} · {}", backend.backend),
                colour: backend_colour(&backend.backend, index),
                value: estimate.median,
                interval: Some((estimate.ci_low, estimate.ci_high)),
            });
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let log = spans_decades(rows.iter().map(|row| row.value));
    let (axis_title, reading) = if log {
        (
            "MB/s (10⁶ bytes per second), log scale",
            " The axis is logarithmic because the cells differ by orders of magnitude: equal \
             distances along it are equal factors, every bar starts at the axis start, and \
             bars are compared by where they end.",
        )
    } else {
        ("MB/s (10⁶ bytes per second), linear scale", "")
    };
    let axis = Axis {
        title: axis_title.into(),
        log,
        format: format_mb_s,
    };
    let svg = plot::interval_bars(&id, &rows, &axis)?;
    Ok(Some(Chart {
        id,
        title: emulation_title("Throughput of data-moving cells", emulated),
        svg,
        explanation: format!(
            "Median over trials, with its {percent}% interval. A cell that prints measures the \
             path of standard output from the Jupyter kernel to the host. A cell that writes \
             files writes to /tmp, which every backend mounts as a tmpfs, so it measures file \
             system calls on memory, not the root disk.{reading}"
        ),
        emulated,
    }))
}

/// States each backend's paired ratio to the baseline on `figures`, as computed from this run,
/// such as ` In this run, docker's host_pss is 1.18× process's (95% interval 1.17 to 1.18).`
/// Returns an empty string for the emulated host and where the baseline did not run.
fn ratio_sentences(
    backends: &[&BackendSummary],
    figures: &[&str],
    percent: &str,
    emulated: bool,
) -> String {
    if emulated || !backends.iter().any(|backend| backend.backend == BASELINE) {
        return String::new();
    }
    let mut text = String::new();
    for backend in backends
        .iter()
        .filter(|backend| backend.backend != BASELINE)
    {
        let mut clauses = Vec::new();
        for name in figures {
            let Some(figure) = backend.figure(name) else {
                continue;
            };
            let clause = match figure.ratio_to_baseline {
                Some(ratio) => format!(
                    "{name} is {}× {BASELINE}'s ({percent}% interval {} to {})",
                    significant(ratio.median),
                    significant(ratio.ci_low),
                    significant(ratio.ci_high)
                ),
                None => format!("{name} is not compared with {BASELINE}'s (see the notes above)"),
            };
            clauses.push(clause);
        }
        if !clauses.is_empty() {
            let _ = write!(
                text,
                " In this run, {}'s {}.",
                backend.backend,
                clauses.join(", and its ")
            );
        }
    }
    text
}

/// States each cell's p50 on each backend as a multiple of the baseline's p50, as computed
/// from this run. These are ratios of p50s pooled over all repetitions, not paired ratios, so
/// they carry no interval. Returns an empty string for the emulated host and where the
/// baseline did not run.
fn p50_ratio_sentences(backends: &[&BackendSummary], emulated: bool) -> String {
    let Some(baseline) = backends.iter().find(|backend| backend.backend == BASELINE) else {
        return String::new();
    };
    if emulated {
        return String::new();
    }
    let mut text = String::new();
    for backend in backends
        .iter()
        .filter(|backend| backend.backend != BASELINE)
    {
        let mut ratios = Vec::new();
        for cell in backend
            .cells
            .iter()
            .filter(|cell| cell.metric == CellMetric::Latency)
        {
            let own = cell.latency.map(|latency| latency.p50);
            let base = baseline
                .cell(&cell.name)
                .and_then(|cell| cell.latency)
                .map(|latency| latency.p50);
            if let (Some(own), Some(base)) = (own, base) {
                if base > 0.0 {
                    ratios.push(format!("{} {}×", cell.name, significant(own / base)));
                }
            }
        }
        if !ratios.is_empty() {
            let _ = write!(
                text,
                " In this run, {}'s p50 as a multiple of {BASELINE}'s, from the pooled \
                 repetitions and without an interval: {}.",
                backend.backend,
                ratios.join(", ")
            );
        }
    }
    text
}

/// Returns whether positive `values` differ by at least a factor of ten, so a linear axis
/// would shrink the smaller ones to slivers. A zero or negative value keeps the axis linear,
/// since a log axis cannot place it.
fn spans_decades(values: impl Iterator<Item = f64>) -> bool {
    let mut min = f64::INFINITY;
    let mut max = 0.0f64;
    for value in values {
        if value <= 0.0 || !value.is_finite() {
            return false;
        }
        min = min.min(value);
        max = max.max(value);
    }
    min.is_finite() && max / min >= 10.0
}

/// Builds the chart that compares launch-to-ready across several hosts.
pub fn hosts_chart(hosts: &[(String, &RunSummary)]) -> Result<Option<Chart>, PlotError> {
    let mut rows = Vec::new();
    for (label, summary) in hosts {
        for (index, backend) in summary.backends.iter().enumerate() {
            let Some(figure) = backend.figure("launch_to_ready") else {
                continue;
            };
            let estimate = figure.estimate;
            let host = match backend.execution_host {
                ExecutionHost::Direct => "",
                ExecutionHost::Emulated => " (emulated)",
            };
            rows.push(DistributionRow {
                label: format!("{label} · {}{host}", backend.backend),
                colour: backend_colour(&backend.backend, index),
                values: backend.launch_to_ready_s.clone(),
                summary: RowSummary {
                    range: (estimate.min, estimate.max),
                    band: (estimate.ci_low, estimate.ci_high),
                    median: estimate.median,
                    tail: None,
                },
            });
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let id = "hosts-startup".to_owned();
    let svg = plot::distributions(&id, &rows, &seconds_axis("launch to ready", false))?;
    Ok(Some(Chart {
        id,
        title: "Launch-to-ready time on every host".into(),
        svg,
        explanation: "One row per host and backend. Hosts differ in CPU, load and KVM kind, so \
            compare backends within a host."
            .into(),
        emulated: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_backends_have_fixed_colours() {
        assert_eq!(backend_colour("process", 5), PALETTE[0]);
        assert_eq!(backend_colour("docker", 0), PALETTE[1]);
        assert_ne!(backend_colour("qemu", 0), backend_colour("docker", 0));
    }

    #[test]
    fn phase_colours_differ_from_backend_colours() {
        let phases = [
            "create",
            "start",
            "entrypoint",
            "guest_mounts",
            "vmm_spawn",
            "start_call",
            "kernel_ready",
            "unknown_phase",
        ];
        for phase in phases {
            for backend in ["process", "docker", "microvm"] {
                assert_ne!(phase_colour(phase), backend_colour(backend, 0), "{phase}");
            }
        }
        assert_eq!(phase_colour("spawn"), phase_colour("start"));
        assert_ne!(phase_colour("start"), phase_colour("kernel_ready"));
    }

    #[test]
    fn log_axis_only_across_decades() {
        assert!(spans_decades([3.0, 18_000.0].into_iter()));
        assert!(!spans_decades([300.0, 1_800.0].into_iter()));
        assert!(!spans_decades([0.0, 18_000.0].into_iter()));
        assert!(!spans_decades(std::iter::empty()));
    }
}
