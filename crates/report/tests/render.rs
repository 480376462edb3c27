//! Renders reports from synthetic results and from a results file of another host, and opens
//! the page in headless Chromium.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use isobench_harness::host::KvmFlavour;
use isobench_harness::results::{ExecutionHost, Results};
use isobench_report::format::significant;
use isobench_report::Report;

/// Charts a single run with direct `process` and `docker` and an emulated `microvm` must have.
const EXPECTED_CHARTS: [&str; 11] = [
    "startup-phases",
    "startup-distribution",
    "memory",
    "guest-view",
    "cell-latency",
    "throughput",
    "startup-phases-emulated",
    "startup-distribution-emulated",
    "memory-emulated",
    "guest-view-emulated",
    "cell-latency-emulated",
];

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/other-host-results.json")
}

#[test]
fn report_has_every_chart() {
    let report = Report::build(&[common::results("lab-host", 8)], "2026-12-04").unwrap();
    for id in EXPECTED_CHARTS {
        assert!(
            report.charts.iter().any(|chart| chart.id == id),
            "chart {id} missing"
        );
        assert!(
            report.html.contains(&format!("data-chart=\"{id}\"")),
            "chart {id} not in page"
        );
    }
    for chart in &report.charts {
        assert!(
            chart.svg.starts_with("<svg"),
            "chart {} is not SVG",
            chart.id
        );
        assert!(
            chart.svg.contains("<text"),
            "chart {} has no text",
            chart.id
        );
        assert!(
            !chart.explanation.is_empty(),
            "chart {} has no explanation",
            chart.id
        );
    }
}

#[test]
fn docker_start_call_is_drawn_alongside() {
    let report = Report::build(&[common::results("lab-host", 4)], "2026-12-04").unwrap();
    let phases = report
        .charts
        .iter()
        .find(|chart| chart.id == "startup-phases")
        .unwrap();
    assert!(phases.svg.contains("start_call (alongside)"));
    assert!(phases.explanation.contains("alongside"));
    assert!(report
        .html
        .contains("phase:start_call</code> (alongside, from"));
}

#[test]
fn throughput_axis_names_its_scale() {
    let report = Report::build(&[common::results("lab-host", 4)], "2026-12-04").unwrap();
    let throughput = report
        .charts
        .iter()
        .find(|chart| chart.id == "throughput")
        .unwrap();
    assert!(
        throughput.svg.contains("log scale") || throughput.svg.contains("linear scale"),
        "the throughput axis does not name its scale"
    );
}

#[test]
fn report_is_self_contained() {
    let report = Report::build(&[common::results("lab-host", 4)], "2026-12-04").unwrap();
    let html = &report.html;
    assert!(!html.contains("<script"), "the page needs no script");
    assert!(!html.contains("<link"), "the page links no stylesheet");
    assert!(!html.contains("url("), "the styles load nothing");
    assert!(!html.contains("<img"), "charts are inline SVG");
    // The only URLs are the SVG namespace declarations.
    let urls = html.matches("http").count();
    let namespaces = html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count();
    assert_eq!(urls, namespaces);
}

#[test]
fn emulated_backend_is_marked_and_not_compared() {
    let report = Report::build(&[common::results("lab-host", 4)], "2026-12-04").unwrap();
    assert!(report.html.contains("class=\"emulated\""));
    assert!(report.html.contains("EMULATION"));
    let microvm = report.summaries[0].backend("microvm").unwrap();
    assert_eq!(microvm.execution_host, ExecutionHost::Emulated);
    assert!(microvm
        .figures
        .iter()
        .all(|figure| figure.ratio_to_baseline.is_none()));
}

#[test]
fn report_lists_cell_percentiles() {
    let report = Report::build(&[common::results("lab-host", 4)], "2026-12-04").unwrap();
    assert!(report.html.contains("Cell latency percentiles"));
    assert!(report.html.contains("<code>numpy_matmul</code>"));
}

#[test]
fn report_shows_observations_per_backend() {
    let report = Report::build(&[common::results("lab-host", 4)], "2026-12-04").unwrap();
    assert!(report.html.contains("Seen from inside the workload"));
    assert!(
        report.html.contains("6.1.192"),
        "the microVM's own guest kernel release"
    );
    assert!(
        report.html.contains("6.1.0-host"),
        "the container's view of the host kernel"
    );
}

#[test]
fn report_shows_failed_trial_cause() {
    let report = Report::build(&[common::results("lab-host", 4)], "2026-12-04").unwrap();
    assert!(report.html.contains("Failed trials"));
    // The fixture's failed trial is docker's fifth, in zero-based round 4, as the CLI names it.
    assert!(
        report.html.contains(
            "docker trial 5 failed at the ready step: the Jupyter kernel exited with exit status 1"
        ),
        "the failure is named as the CLI names it"
    );
    assert!(!report.html.contains("round 4"), "no zero-based round");
}

#[test]
fn host_heading_reads_for_short_names() {
    let report = Report::build(&[common::results("vm", 4)], "2026-12-04").unwrap();
    assert!(report.html.contains("<h2>Host: vm</h2>"));
}

#[test]
fn summary_shows_host_pss_ratio() {
    let report = Report::build(&[common::results("lab-host", 6)], "2026-12-04").unwrap();
    let table_start = report.html.find("<table class=\"summary\">").unwrap();
    let table = &report.html[table_start..];
    let table = &table[..table.find("</table>").unwrap()];
    let header = table.matches("<th>× process</th>").count();
    assert_eq!(
        header, 3,
        "launch to ready, host_delta and host_pss have ratio columns"
    );
    let ratio = report.summaries[0]
        .backend("docker")
        .unwrap()
        .figure("host_pss")
        .unwrap()
        .ratio_to_baseline
        .unwrap();
    let shown = format!("{}×<span class=\"interval\">", significant(ratio.median));
    assert!(table.contains(&shown), "{shown} not in the summary");
}

#[test]
fn memory_text_states_computed_ratios() {
    let report = Report::build(&[common::results("lab-host", 6)], "2026-12-04").unwrap();
    let memory = report
        .charts
        .iter()
        .find(|chart| chart.id == "memory")
        .unwrap();
    let docker = report.summaries[0].backend("docker").unwrap();
    for name in ["host_pss", "host_delta"] {
        let ratio = docker.figure(name).unwrap().ratio_to_baseline.unwrap();
        let stated = format!("{name} is {}× process's", significant(ratio.median));
        assert!(
            memory.explanation.contains(&stated),
            "{stated} not in: {}",
            memory.explanation
        );
    }
    assert!(
        !memory.explanation.contains("about what"),
        "no ratio written in by hand: {}",
        memory.explanation
    );
    let emulated = report
        .charts
        .iter()
        .find(|chart| chart.id == "memory-emulated")
        .unwrap();
    assert!(
        !emulated.explanation.contains("In this run"),
        "the emulated host is not compared: {}",
        emulated.explanation
    );
}

#[test]
fn latency_text_states_computed_ratios() {
    let report = Report::build(&[common::results("lab-host", 6)], "2026-12-04").unwrap();
    let latency = report
        .charts
        .iter()
        .find(|chart| chart.id == "cell-latency")
        .unwrap();
    let summary = &report.summaries[0];
    let p50 = |backend: &str| {
        summary
            .backend(backend)
            .unwrap()
            .cell("trivial")
            .unwrap()
            .latency
            .unwrap()
            .p50
    };
    let stated = format!("trivial {}×", significant(p50("docker") / p50("process")));
    // The fixture's trivial cell has 200 repetitions per trial, too many to draw as dots.
    assert!(
        latency
            .explanation
            .contains("(trivial · process, trivial · docker) have no dots"),
        "{}",
        latency.explanation
    );
    assert!(
        latency.explanation.contains(&stated),
        "{stated} not in: {}",
        latency.explanation
    );
}

#[test]
fn report_writes_files() {
    let directory = tempfile::tempdir().unwrap();
    let report = Report::build(&[common::results("lab-host", 4)], "2026-12-04").unwrap();
    let index = report.write(directory.path()).unwrap();
    assert_eq!(index, directory.path().join("index.html"));
    assert!(index.is_file());
    assert!(directory.path().join("summary.csv").is_file());
    for chart in &report.charts {
        assert!(
            directory.path().join(format!("{}.svg", chart.id)).is_file(),
            "{}",
            chart.id
        );
    }
}

#[test]
fn rerender_removes_stale_charts() {
    let directory = tempfile::tempdir().unwrap();
    let merged = [common::results("lab-a", 4), common::results("lab-b", 4)];
    let first = Report::build(&merged, "2026-12-04").unwrap();
    first.write(directory.path()).unwrap();
    for own in ["notes.txt", "logo.svg", "summary-by-hand.csv"] {
        fs::write(directory.path().join(own), "kept").unwrap();
    }

    let second = Report::build(&[common::results("lab-a", 4)], "2026-12-05").unwrap();
    second.write(directory.path()).unwrap();
    let mut expected: Vec<String> = second
        .charts
        .iter()
        .map(|chart| format!("{}.svg", chart.id))
        .collect();
    expected.extend(
        [
            "index.html",
            "summary.csv",
            ".isobench-report-files",
            "notes.txt",
            "logo.svg",
            "summary-by-hand.csv",
        ]
        .map(String::from),
    );
    expected.sort();
    let mut found: Vec<String> = fs::read_dir(directory.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, expected);
}

#[test]
fn rerender_keeps_unlisted_files() {
    let directory = tempfile::tempdir().unwrap();
    for own in ["index.html", "logo.svg", "summary-2025.csv"] {
        fs::write(directory.path().join(own), "the user's").unwrap();
    }
    let report = Report::build(&[common::results("lab-a", 4)], "2026-12-05").unwrap();
    report.write(directory.path()).unwrap();
    assert!(directory.path().join("logo.svg").is_file());
    assert!(directory.path().join("summary-2025.csv").is_file());
}

#[test]
fn report_reads_other_host_file() {
    let other = Results::read(&fixture_path()).unwrap();
    assert_eq!(other.host.kvm.flavour, KvmFlavour::Hardware);
    let report = Report::build(&[other], "2026-12-04").unwrap();
    assert!(report.html.contains("bare-metal-1"));
    assert!(report
        .charts
        .iter()
        .any(|chart| chart.id == "startup-phases"));
    let microvm = report.summaries[0].backend("microvm").unwrap();
    let ratio = microvm.figure("launch_to_ready").unwrap().ratio_to_baseline;
    assert!(
        ratio.is_some(),
        "a microVM on hardware KVM is compared with the baseline"
    );
}

#[test]
fn report_merges_hosts() {
    let other = Results::read(&fixture_path()).unwrap();
    let report = Report::build(&[common::results("lab-host", 4), other], "2026-12-04").unwrap();
    assert_eq!(report.host_labels, ["lab-host", "bare-metal-1"]);
    assert!(report
        .charts
        .iter()
        .any(|chart| chart.id == "hosts-startup"));
    assert!(report
        .charts
        .iter()
        .any(|chart| chart.id == "h0-startup-phases"));
    assert!(report
        .charts
        .iter()
        .any(|chart| chart.id == "h1-startup-phases"));
    let directory = tempfile::tempdir().unwrap();
    report.write(directory.path()).unwrap();
    assert!(directory.path().join("summary-lab-host.csv").is_file());
    assert!(directory.path().join("summary-bare-metal-1.csv").is_file());
}

#[test]
fn report_without_results_is_error() {
    assert!(Report::build(&[], "2026-12-04").is_err());
}

/// Regenerates the other-host fixture: `ISOBENCH_WRITE_FIXTURE=1 cargo test -p
/// isobench-report --test render write_other_host_fixture`.
#[test]
fn write_other_host_fixture() {
    if std::env::var_os("ISOBENCH_WRITE_FIXTURE").is_none() {
        return;
    }
    let mut results = common::results("bare-metal-1", 6);
    results.host.host_is_vm = false;
    results.host.hypervisor_vendor = None;
    results.host.cpu_model = "Example Server CPU @ 3.0GHz".into();
    results.host.logical_cores = 16;
    results.host.kvm.flavour = KvmFlavour::Hardware;
    results.host.kvm.module = Some("kvm_intel".into());
    results.run.command_line = vec!["isobench".into(), "compare".into()];
    for trial in results
        .trials
        .iter_mut()
        .filter(|trial| trial.backend == "microvm")
    {
        trial.execution_host = ExecutionHost::Direct;
        // On hardware KVM the guest boots in well under a second: scale the emulated times.
        let scale = 1.0 / 25.0;
        trial.launch_to_ready_s = trial.launch_to_ready_s.map(|ready| ready * scale);
        for event in &mut trial.events {
            event.at_s *= scale;
        }
        for phase in &mut trial.phases {
            phase.start_s *= scale;
            phase.end_s *= scale;
        }
    }
    results.write_atomic(&fixture_path()).unwrap();
}

/// Opens the page in headless Chromium and checks that it loads every chart without a console
/// message or a network request.
#[test]
fn report_opens_in_headless_chromium() {
    let chromium = Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        eprintln!("skipped: /usr/bin/chromium is not installed (Debian package chromium)");
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let report = Report::build(&[common::results("lab-host", 6)], "2026-12-04").unwrap();
    let index = report.write(directory.path()).unwrap();
    let screenshot = directory.path().join("screenshot.png");

    let output = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1400,2400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(format!("file://{}", index.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "chromium failed: {stderr}");
    for line in stderr.lines() {
        assert!(!line.contains("CONSOLE"), "console message: {line}");
        assert!(!line.contains("Uncaught"), "script error: {line}");
    }
    assert!(screenshot.is_file(), "no screenshot: {stderr}");
    // ISOBENCH_KEEP_SCREENSHOT=FILE.png keeps the screenshot, and the page as FILE.html.
    if let Some(keep) = std::env::var_os("ISOBENCH_KEEP_SCREENSHOT") {
        let keep = PathBuf::from(keep);
        std::fs::copy(&screenshot, &keep).unwrap();
        std::fs::copy(&index, keep.with_extension("html")).unwrap();
    }

    let dom = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("file://{}", index.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    for id in EXPECTED_CHARTS {
        assert!(
            dom.contains(&format!("data-chart=\"{id}\"")),
            "chart {id} not in the DOM"
        );
    }
}
