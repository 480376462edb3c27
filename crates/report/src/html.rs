//! The HTML page: templates embedded at compile time, filled from plain structs.

use std::fmt::Write;

use isobench_harness::results::{ExecutionHost, Results};
use isobench_harness::stats::Estimate;
use isobench_harness::summary::{format_percent, BackendSummary, Figure, RunSummary};

use crate::charts::Chart;
use crate::format::{escape, format_mib, format_seconds, significant, significant_trimmed};

const PAGE_TEMPLATE: &str = include_str!("../templates/index.html");
const STYLE: &str = include_str!("../templates/style.css");
const METHODS_TEMPLATE: &str = include_str!("../templates/methods.html");

/// One host's part of the report.
pub struct HostSection<'a> {
    /// Anchor and heading label.
    pub label: String,
    /// The run's results.
    pub results: &'a Results,
    /// Its summary.
    pub summary: &'a RunSummary,
    /// Its charts.
    pub charts: &'a [Chart],
}

/// Fills the page template.
pub fn page(
    title: &str,
    generated: &str,
    hosts: &[HostSection<'_>],
    overview: Option<&Chart>,
) -> String {
    let mut nav = String::new();
    let mut body = String::new();
    if let Some(chart) = overview {
        nav.push_str("<a href=\"#hosts\">All hosts</a>");
        body.push_str("<section id=\"hosts\"><h2>All hosts</h2>");
        body.push_str(&figure(chart));
        body.push_str("</section>");
    }
    for (index, host) in hosts.iter().enumerate() {
        let anchor = format!("host-{index}");
        let _ = write!(nav, "<a href=\"#{anchor}\">{}</a>", escape(&host.label));
        body.push_str(&host_section(&anchor, host));
    }
    nav.push_str("<a href=\"#methods\">Methods</a>");

    let bootstrap = hosts
        .first()
        .map(|host| host.summary.bootstrap)
        .unwrap_or_default();
    let tail = (1.0 - bootstrap.confidence) / 2.0;
    let methods = METHODS_TEMPLATE
        .replace("{{resamples}}", &bootstrap.resamples.to_string())
        .replace("{{tail_low}}", &significant_trimmed(tail))
        .replace("{{tail_high}}", &significant_trimmed(1.0 - tail))
        .replace("{{confidence}}", &format_percent(bootstrap.confidence));
    PAGE_TEMPLATE
        .replace("{{style}}", STYLE)
        .replace("{{title}}", &escape(title))
        .replace("{{generated}}", &escape(generated))
        .replace("{{version}}", env!("CARGO_PKG_VERSION"))
        .replace("{{nav}}", &nav)
        .replace("{{methods}}", &methods)
        .replace("{{body}}", &body)
}

fn host_section(anchor: &str, host: &HostSection<'_>) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<section class=\"host\" id=\"{anchor}\"><h2>Host: {}</h2>",
        escape(&host.label)
    );
    html.push_str(&metadata_table(host.results));
    html.push_str("<h3>Summary</h3>");
    html.push_str(&summary_table(
        host.summary,
        host.results.run.config.trials as usize,
    ));
    html.push_str(&summary_caption(host.summary));
    html.push_str(&observations_table(host.summary));
    html.push_str(&notes(host.results, host.summary));

    let (emulated, direct): (Vec<&Chart>, Vec<&Chart>) =
        host.charts.iter().partition(|chart| chart.emulated);
    for chart in direct {
        html.push_str(&figure(chart));
    }
    if !emulated.is_empty() {
        html.push_str(
            "<section class=\"emulated\"><h3>Emulated host <span class=\"badge\">EMULATION\
             </span></h3><p>These backends ran inside an emulated hardware-KVM host (QEMU with \
             software emulation), because this host's KVM cannot boot a stock guest kernel in \
             useful time. The times are emulation times, many times slower than on hardware \
             KVM: compare their phases with each other, not with the backends above. They are \
             left out of every ratio.</p>",
        );
        for chart in emulated {
            html.push_str(&figure(chart));
        }
        html.push_str("</section>");
    }
    html.push_str(&cells_table(host.summary));
    html.push_str(&all_figures_table(host.summary));
    html.push_str("</section>");
    html
}

fn figure(chart: &Chart) -> String {
    format!(
        "<figure class=\"chart\" id=\"chart-{id}\" data-chart=\"{id}\"><div class=\"plot\">{svg}</div>\
         <figcaption><h4>{title}</h4><p>{explanation}</p></figcaption></figure>",
        id = escape(&chart.id),
        svg = chart.svg,
        title = escape(&chart.title),
        explanation = escape(&chart.explanation),
    )
}

fn metadata_table(results: &Results) -> String {
    let host = &results.host;
    let run = &results.run;
    let config = &run.config;
    let kvm = &host.kvm;
    let docker = host
        .docker
        .as_ref()
        .map(|docker| {
            let cgroup = docker.cgroup_version.as_deref().unwrap_or("unknown");
            format!(
                "engine {}, API {}, cgroup v{cgroup}",
                docker.engine_version, docker.api_version
            )
        })
        .unwrap_or_else(|| "not available".into());
    let host_vm = match (&host.host_is_vm, &host.hypervisor_vendor) {
        (true, Some(vendor)) => format!("yes ({vendor})"),
        (true, None) => "yes".into(),
        (false, _) => "no".into(),
    };
    let kvm_text = format!(
        "{}{}{}",
        kvm.flavour,
        kvm.module
            .as_ref()
            .map(|module| format!(", module {module}"))
            .unwrap_or_default(),
        kvm.api_version
            .map(|version| format!(", API version {version}"))
            .unwrap_or_default(),
    );
    let skipped = if run.skipped_backends.is_empty() {
        "none".to_owned()
    } else {
        run.skipped_backends
            .iter()
            .map(|skipped| format!("{}: {}", skipped.backend, skipped.reason))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let finished = run.finished_at.as_deref().unwrap_or("not finished");
    let interrupted = if run.interrupted {
        "yes: Ctrl-C, the trials so far are kept"
    } else {
        "no"
    };
    let rows = [
        (
            "CPU",
            format!("{} ({} logical cores)", host.cpu_model, host.logical_cores),
        ),
        ("Memory", format_mib(host.memory_total_bytes as f64)),
        ("Host kernel", host.host_kernel.clone()),
        ("Host is a virtual machine", host_vm),
        ("KVM", kvm_text),
        ("Docker", docker),
        (
            "isobench",
            format!(
                "{} (revision {})",
                run.isobench_version,
                run.isobench_revision.as_deref().unwrap_or("unknown")
            ),
        ),
        (
            "Run",
            format!(
                "{}, started {}, finished {finished}",
                run.run_id, run.started_at
            ),
        ),
        ("Interrupted", interrupted.into()),
        ("Command line", run.command_line.join(" ")),
        ("Guest image", run.image_id.clone()),
        (
            "Settings",
            format!(
                "trials per backend: {} measured after {} warm-up; {} vCPU, {} MiB; suite {}; \
                 ready deadline {} s, trial deadline {} s, idle settle {}",
                config.trials,
                config.warmup,
                config.vcpus,
                config.memory_mib,
                config.suite,
                config.ready_deadline_s,
                config.trial_deadline_s,
                format_seconds(config.idle_settle_s)
            ),
        ),
        ("Backends skipped", skipped),
    ];
    let mut html = String::from("<table class=\"metadata\"><tbody>");
    for (name, value) in rows {
        let _ = write!(
            html,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(name),
            escape(&value)
        );
    }
    html.push_str("</tbody></table>");
    html
}

/// Builds the summary table. `planned` is the run's measured trials per backend, so a run
/// stopped early shows how many of them completed. The emulated host runs fewer trials and
/// shows its own count.
fn summary_table(summary: &RunSummary, planned: usize) -> String {
    let mut html = String::from(
        "<div class=\"table-wrap\"><table class=\"summary\"><thead><tr><th>Backend</th><th>Trials</th>\
         <th>Launch to ready</th><th>× process</th><th>host_delta</th><th>× process</th>\
         <th>host_pss</th><th>× process</th><th>trivial p50</th><th>trivial p99</th></tr>\
         </thead><tbody>",
    );
    for backend in &summary.backends {
        let name = match backend.execution_host {
            ExecutionHost::Direct => escape(&backend.backend),
            ExecutionHost::Emulated => {
                format!(
                    "{} <span class=\"badge\">EMULATION</span>",
                    escape(&backend.backend)
                )
            }
        };
        let failed = backend.failures.len();
        let planned = match backend.execution_host {
            ExecutionHost::Direct => planned.max(backend.trials),
            ExecutionHost::Emulated => backend.trials,
        };
        let trials = format!(
            "{} of {}{}{}",
            backend.completed,
            planned,
            if failed > 0 {
                format!(", <span class=\"failed\">{failed} failed</span>")
            } else {
                String::new()
            },
            if backend.interrupted > 0 {
                format!(", {} interrupted", backend.interrupted)
            } else {
                String::new()
            },
        );
        let ready = backend.figure("launch_to_ready");
        let delta = backend.figure("host_delta");
        let pss = backend.figure("host_pss");
        let trivial = backend.cell("trivial").and_then(|cell| cell.latency);
        let _ = write!(
            html,
            "<tr><td>{name}</td><td>{trials}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            estimate_cell(ready, format_seconds),
            ratio_cell(backend, ready),
            estimate_cell(delta, format_mib),
            ratio_cell(backend, delta),
            estimate_cell(pss, format_mib),
            ratio_cell(backend, pss),
            trivial
                .map(|p| format_seconds(p.p50))
                .unwrap_or_else(|| "–".into()),
            trivial
                .map(|p| format_seconds(p.p99))
                .unwrap_or_else(|| "–".into()),
        );
    }
    html.push_str("</tbody></table></div>");
    html
}

/// Formats the caption that explains the summary table's small print and dashes.
fn summary_caption(summary: &RunSummary) -> String {
    let percent = format_percent(summary.bootstrap.confidence);
    format!(
        "<p class=\"caption\">Each figure is the median over the completed trials, with its \
         {percent}% bootstrap interval in small print. × process is the median of the ratios \
         to process, trial by trial (see Methods), with its interval. A dash means the figure \
         or its ratio was not measured or not compared, and the notes below say why.</p>"
    )
}

/// Answers of the observation cells per backend, such as the kernel release each workload
/// sees: the guest kernel's in a microVM, the host's in a container.
fn observations_table(summary: &RunSummary) -> String {
    let mut names: Vec<&str> = Vec::new();
    for backend in &summary.backends {
        for observation in &backend.observations {
            if !names.contains(&observation.name.as_str()) {
                names.push(&observation.name);
            }
        }
    }
    if names.is_empty() {
        return String::new();
    }
    let mut html = String::from(
        "<h3>Seen from inside the workload</h3><div class=\"table-wrap\"><table \
         class=\"observations\"><thead><tr><th>Cell</th>",
    );
    for backend in &summary.backends {
        let _ = write!(html, "<th>{}</th>", escape(&backend.backend));
    }
    html.push_str("</tr></thead><tbody>");
    for name in names {
        let _ = write!(html, "<tr><td><code>{}</code></td>", escape(name));
        for backend in &summary.backends {
            let answers = backend
                .observations
                .iter()
                .find(|observation| observation.name == name)
                .map(|observation| describe_answers(&observation.answers))
                .unwrap_or_else(|| "–".into());
            let _ = write!(html, "<td>{}</td>", escape(&answers));
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table></div>");
    html
}

/// Lists a few distinct answers; many (such as a pid per trial) are summarised by count.
fn describe_answers(answers: &[String]) -> String {
    const MAX_LISTED: usize = 3;
    if answers.len() <= MAX_LISTED {
        answers.join(" / ")
    } else {
        format!("{} distinct answers, such as {}", answers.len(), answers[0])
    }
}

fn estimate_cell(figure: Option<&Figure>, format: fn(f64) -> String) -> String {
    match figure {
        Some(figure) => {
            let estimate = figure.estimate;
            format!(
                "{}<span class=\"interval\">{} to {}</span>",
                escape(&format(estimate.median)),
                escape(&format(estimate.ci_low)),
                escape(&format(estimate.ci_high))
            )
        }
        None => "–".into(),
    }
}

fn ratio_cell(backend: &BackendSummary, figure: Option<&Figure>) -> String {
    if backend.backend == isobench_harness::summary::BASELINE {
        return "baseline".into();
    }
    if backend.execution_host == ExecutionHost::Emulated {
        return "not compared".into();
    }
    match figure.and_then(|figure| figure.ratio_to_baseline) {
        Some(ratio) => format_ratio(&ratio),
        None => "–".into(),
    }
}

fn format_ratio(ratio: &Estimate) -> String {
    format!(
        "{}×<span class=\"interval\">{} to {}</span>",
        significant(ratio.median),
        significant(ratio.ci_low),
        significant(ratio.ci_high)
    )
}

fn notes(results: &Results, summary: &RunSummary) -> String {
    let mut html = String::new();
    if !summary.comparisons.is_empty() || !summary.uncompared.is_empty() {
        html.push_str("<h3>Can the backends be ranked?</h3><ul class=\"notes\">");
        for comparison in &summary.comparisons {
            let _ = write!(html, "<li>{}</li>", escape(&comparison.note));
        }
        for note in &summary.uncompared {
            let _ = write!(html, "<li>{}</li>", escape(note));
        }
        html.push_str("</ul>");
    }
    let failures: Vec<String> = summary
        .backends
        .iter()
        .flat_map(|backend| {
            backend
                .failures
                .iter()
                .map(|failure| failure.describe(&backend.backend))
        })
        .collect();
    if !failures.is_empty() {
        html.push_str("<h3 class=\"failed\">Failed trials</h3><ul class=\"notes\">");
        for failure in failures {
            let _ = write!(html, "<li>{}</li>", escape(&failure));
        }
        html.push_str("</ul>");
    }
    if results.run.interrupted {
        html.push_str(
            "<p class=\"failed\">The run was interrupted; the figures cover the trials \
             finished before.</p>",
        );
    }
    html
}

/// Latency percentiles of every cell over all repetitions, and throughput where measured.
fn cells_table(summary: &RunSummary) -> String {
    let mut html = String::from(
        "<details><summary>Cell latency percentiles</summary><table class=\"figures\">\
         <thead><tr><th>Backend</th><th>Cell</th><th>p50</th><th>p95</th><th>p99</th>\
         <th>Min</th><th>Max</th><th>Repetitions</th><th>Throughput</th></tr></thead><tbody>",
    );
    for backend in &summary.backends {
        for cell in &backend.cells {
            let Some(latency) = cell.latency else {
                continue;
            };
            let throughput = cell
                .throughput_mb_s
                .map(|estimate| format!("{} MB/s", significant(estimate.median)))
                .unwrap_or_else(|| "–".into());
            let _ = write!(
                html,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&backend.backend),
                escape(&cell.name),
                escape(&format_seconds(latency.p50)),
                escape(&format_seconds(latency.p95)),
                escape(&format_seconds(latency.p99)),
                escape(&format_seconds(latency.min)),
                escape(&format_seconds(latency.max)),
                latency.count,
                escape(&throughput),
            );
        }
    }
    html.push_str("</tbody></table></details>");
    html
}

fn all_figures_table(summary: &RunSummary) -> String {
    let mut html = String::from(
        "<details><summary>Every figure of this host</summary><div class=\"table-wrap\">\
         <table class=\"figures\"><thead><tr>\
         <th>Backend</th><th>Figure</th><th>Median</th><th>Interval</th><th>Min</th><th>Max</th>\
         <th>Trials</th><th>× process</th></tr></thead><tbody>",
    );
    for backend in &summary.backends {
        for figure in &backend.figures {
            let format: fn(f64) -> String = match figure.unit.as_str() {
                "s" => format_seconds,
                "bytes" => format_mib,
                _ => |value| format!("{} MB/s", significant(value)),
            };
            let estimate = figure.estimate;
            let _ = write!(
                html,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{} to {}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&backend.backend),
                escape(&figure.name),
                escape(&format(estimate.median)),
                escape(&format(estimate.ci_low)),
                escape(&format(estimate.ci_high)),
                escape(&format(estimate.min)),
                escape(&format(estimate.max)),
                estimate.count,
                ratio_cell(backend, Some(figure)),
            );
        }
    }
    for backend in &summary.backends {
        // Consecutive phases come in time order, then the concurrent ones with their start.
        for phase in &backend.phases {
            let estimate = phase.estimate;
            let alongside = if phase.concurrent {
                format!(
                    " (alongside, from {} after t0)",
                    format_seconds(phase.start_median_s)
                )
            } else {
                String::new()
            };
            let _ = write!(
                html,
                "<tr><td>{}</td><td><code>phase:{}</code>{}</td><td>{}</td><td>{} to {}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>–</td></tr>",
                escape(&backend.backend),
                escape(&phase.name),
                escape(&alongside),
                escape(&format_seconds(estimate.median)),
                escape(&format_seconds(estimate.ci_low)),
                escape(&format_seconds(estimate.ci_high)),
                escape(&format_seconds(estimate.min)),
                escape(&format_seconds(estimate.max)),
                estimate.count,
            );
        }
    }
    html.push_str("</tbody></table></div></details>");
    html
}
