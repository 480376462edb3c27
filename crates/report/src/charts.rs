//! The report's charts, each built from a run's summary, with the text shown beside it.

use isobench_harness::results::{CellMetric, ExecutionHost};
use isobench_harness::stats::quantile;
use isobench_harness::summary::{BackendSummary, RunSummary};
use plotters::style::RGBColor;
use serde::{Deserialize, Serialize};

use crate::format::{format_bytes_axis, format_mb_s, format_seconds, MIB};
use crate::plot::{
    self, Axis, BarRow, DistributionRow, PlotError, RowSummary, Segment, StackedRow, PALETTE,
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
        )?);
        charts.extend(host_memory(&backends, id("memory"), emulated)?);
        charts.extend(guest_view(&backends, id("guest-view"), emulated)?);
        charts.extend(cell_latency(&backends, id("cell-latency"), emulated)?);
        charts.extend(throughput(&backends, id("throughput"), emulated)?);
    }
    Ok(charts)
}

fn seconds_axis(title: &str, log: bool) -> Axis {
    Axis {
        title: title.to_owned(),
        log,
        format: format_seconds,
    }
}

fn emulation_title(title: &str, emulated: bool) -> String {
    if emulated {
        format!("{title} (emulated host: emulation times, not comparable)")
    } else {
        title.to_owned()
    }
}

fn startup_phases(
    backends: &[&BackendSummary],
    id: String,
    emulated: bool,
) -> Result<Option<Chart>, PlotError> {
    let mut series: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    for backend in backends {
        if backend.phases.is_empty() {
            continue;
        }
        // Phases whose median is below a millisecond would be invisible slivers with a legend
        // entry each; they stay in results.json and in the table of every figure.
        let segments = backend
            .phases
            .iter()
            .filter(|phase| phase.estimate.median >= MIN_DRAWN_PHASE_S)
            .map(|phase| {
                let index = match series.iter().position(|name| *name == phase.name) {
                    Some(index) => index,
                    None => {
                        series.push(phase.name.clone());
                        series.len() - 1
                    }
                };
                Segment {
                    series: index,
                    value: phase.estimate.median,
                }
            })
            .collect();
        let marker = backend
            .figure("launch_to_ready")
            .map(|figure| figure.estimate.median);
        rows.push(StackedRow {
            label: backend.backend.clone(),
            segments,
            marker,
        });
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let svg = plot::stacked_bars(
        &id,
        &rows,
        &series,
        &seconds_axis("seconds after t0", false),
    )?;
    Ok(Some(Chart {
        id,
        title: emulation_title("Startup phases: median duration of each phase", emulated),
        svg,
        explanation: "Each bar splits the time from t0 (just before the launch request) to a \
            ready Jupyter kernel into phases, each drawn at its median over the trials; the \
            black tick is the median of the whole launch-to-ready time, which need not equal \
            the sum of the phase medians. A microVM first sets up its hypervisor process and \
            boots its own guest kernel (vmm_setup, guest_kernel, guest_init). A container \
            skips the kernel boot because it shares the host kernel, and pays for namespaces, \
            cgroups and its root filesystem instead (create, start). The process baseline \
            pays only for the Python start-up (kernel_ready), which every backend pays too."
            .into(),
        emulated,
    }))
}

fn startup_distribution(
    backends: &[&BackendSummary],
    id: String,
    emulated: bool,
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
    let svg = plot::distributions(
        &id,
        &rows,
        &seconds_axis("launch to ready (seconds)", false),
    )?;
    Ok(Some(Chart {
        id,
        title: emulation_title("Launch-to-ready time of every trial", emulated),
        svg,
        explanation: "Each dot is one trial, the black bar is the median, the shaded box its \
            95% bootstrap interval and the thin line runs from the fastest to the slowest \
            trial. Where two boxes overlap, the run cannot tell those backends apart on \
            startup; the notes under the summary table say which pairs can be ranked. A wide \
            spread for the microVM comes from the guest kernel's boot, which depends on the \
            host's load; a container's spread follows the container engine's work."
            .into(),
        emulated,
    }))
}

fn host_memory(
    backends: &[&BackendSummary],
    id: String,
    emulated: bool,
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
        title: emulation_title("Memory by definition, at idle after ready", emulated),
        svg,
        explanation: "Each bar is the median over trials of one memory definition, with its \
            95% interval; the definitions measure different things and are never added up. \
            host_delta is what the whole host gave up between just before launch and idle, \
            the cost that decides how many kernels fit on a machine. host_pss shares pages \
            between processes fairly. A microVM's guest RAM that the guest touched stays \
            with it, because the host cannot share a guest's page cache or kernel memory, so \
            its host_delta includes a whole guest kernel. A container's processes share the \
            host kernel and page cache, so its cost stays close to the plain process."
            .into(),
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
        title: emulation_title(
            "Memory as the workload sees it (/proc/meminfo inside)",
            emulated,
        ),
        svg,
        explanation: "total is MemTotal and used is MemTotal minus MemAvailable, read by a \
            cell inside the Jupyter kernel. In a container and in the plain process the \
            numbers are the host's, because there is only one kernel: the memory limit of a \
            container is a cgroup setting that /proc/meminfo does not show. In the microVM \
            they are the guest kernel's own, with the guest RAM the VMM gave it as the total."
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
    let svg = plot::distributions(
        &id,
        &rows,
        &seconds_axis("cell wall time (seconds, log scale)", true),
    )?;
    Ok(Some(Chart {
        id,
        title: emulation_title("Cell latency: every repetition of every trial", emulated),
        svg,
        explanation: "Wall time from execute_request sent to both execute_reply and the IOPub \
            idle status received, on a log axis. The black bar is p50, the shaded box runs \
            from p25 to p75, the ring is p99 and the thin line spans all repetitions. Once a \
            kernel runs, Python executes on the CPU directly in every backend, so compute \
            cells differ little; the trivial cell shows the fixed cost of one round trip, \
            which grows with the path to the kernel: loopback for the process, a Docker \
            bridge for the container, a TAP link and a virtio-net device with exits to the \
            hypervisor for the microVM."
            .into(),
        emulated,
    }))
}

fn throughput(
    backends: &[&BackendSummary],
    id: String,
    emulated: bool,
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
    let axis = Axis {
        title: "MB/s (10^6 bytes per second)".into(),
        log: false,
        format: format_mb_s,
    };
    let svg = plot::interval_bars(&id, &rows, &axis)?;
    Ok(Some(Chart {
        id,
        title: emulation_title("Throughput of data-moving cells", emulated),
        svg,
        explanation: "Median over trials of each trial's median throughput, with its 95% \
            interval. Cells that stream output send their bytes through the Jupyter IOPub \
            channel, so they measure the network path between host and workload; cells that \
            write files measure the storage path, the host's file system for the process and \
            the container, a virtio-blk disk image behind the hypervisor for the microVM."
            .into(),
        emulated,
    }))
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
    let svg = plot::distributions(
        &id,
        &rows,
        &seconds_axis("launch to ready (seconds)", false),
    )?;
    Ok(Some(Chart {
        id,
        title: "Launch-to-ready time on every host".into(),
        svg,
        explanation: "The same measurement from each results file, one row per host and \
            backend. Hosts differ in CPU, load and KVM flavour (see each host's table), so \
            compare backends within a host; across hosts, compare shapes rather than values."
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
}
