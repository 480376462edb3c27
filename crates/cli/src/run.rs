//! `isobench run`: trials of one backend, printed as text or JSON.
//!
//! The flags are resolved here into the harness's run plan; the harness runs the trials
//! (launch, ready, memory, suite, shutdown) exactly as `isobench compare` does, only with one
//! backend.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use isobench_harness::backend::{BackendKind, GuestImagePaths};
use isobench_harness::cancel::{self, Cancel};
use isobench_harness::defaults;
use isobench_harness::host::{rfc3339_utc, DockerInfo, HostInfo, KvmFlavour, KvmInfo};
use isobench_harness::image;
use isobench_harness::jupyter::JupyterWorkload;
use isobench_harness::results::{
    ExecutionHost, Results, RunConfig, RunInfo, TrialOutcome, TrialRecord, SCHEMA_VERSION,
};
use isobench_harness::run::{PlannedBackend, RunObserver, RunPlan};
use isobench_harness::stats::Bootstrap;
use isobench_harness::summary::RunSummary;
use isobench_harness::trial::{TrialObserver, TrialSettings};
use isobench_report::format::{format_mib, format_seconds};
use isobench_workload::Suite;

use crate::flags::{
    check_docker_vcpus, check_new_file, create_direct_backend, BackendArg, LimitArgs,
};
use crate::interrupt::kept_trials;

/// Flags of `isobench run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Backend to run.
    #[arg(long, value_enum)]
    backend: BackendArg,
    /// Measured trials.
    #[arg(long, allow_negative_numbers = true, default_value_t = 3)]
    trials: u64,
    /// Warm-up trials, run first and left out of every figure.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1)]
    warmup: u64,
    #[command(flatten)]
    limits: LimitArgs,
    /// Time allowed for one whole trial, launch to end of the suite, in seconds.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 600.0,
        value_name = "SECONDS"
    )]
    trial_deadline: f64,
    /// Also writes the results to this `results.json` file, rewritten after every trial. The
    /// file must not exist yet, and its folder must.
    #[arg(long, value_name = "FILE")]
    results: Option<PathBuf>,
    /// Prints the results and their summary as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `isobench run`.
pub fn main(args: RunArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    // The Docker client is bound to the runtime it connects in, so flags are resolved there.
    runtime.block_on(async {
        let config = resolve(&args).await?;
        run(config).await
    })
}

/// `isobench run` flags resolved into what the harness takes.
struct RunConfigResolved {
    backend: PlannedBackend,
    docker: Option<DockerInfo>,
    suite: Suite,
    image: GuestImagePaths,
    trials: u32,
    warmup: u32,
    vcpus: u32,
    memory_mib: u32,
    ready_deadline: Duration,
    trial_deadline: Duration,
    results_path: Option<PathBuf>,
    json: bool,
}

async fn resolve(args: &RunArgs) -> anyhow::Result<RunConfigResolved> {
    let limits = args
        .limits
        .check(args.trials, args.warmup, args.trial_deadline)?;
    if args.backend == BackendArg::Docker {
        check_docker_vcpus(args.limits.vcpus)?;
    }
    if let Some(results) = &args.results {
        check_new_file("--results", results)?;
    }
    let (backend, docker) = backend(args.backend).await?;
    let image = locate_image(backend.backend.kind())?;
    Ok(RunConfigResolved {
        backend,
        docker,
        suite: limits.suite,
        image,
        trials: limits.trials,
        warmup: limits.warmup,
        vcpus: args.limits.vcpus,
        memory_mib: args.limits.memory_mib,
        ready_deadline: limits.ready_deadline,
        trial_deadline: limits.trial_deadline,
        results_path: args.results.clone(),
        json: args.json,
    })
}

/// Creates the named backend, with the Docker engine's versions when it is `docker`. The
/// microVM runs only on hardware KVM here; `isobench compare` can run it in the emulated host.
async fn backend(name: BackendArg) -> anyhow::Result<(PlannedBackend, Option<DockerInfo>)> {
    let kind = BackendKind::from(name);
    if kind == BackendKind::Microvm {
        let kvm = KvmInfo::probe();
        if kvm.flavour != KvmFlavour::Hardware {
            anyhow::bail!(
                "this host's KVM is {}, on which a stock guest kernel does not boot in \
                 useful time: use `isobench compare --backends microvm --microvm-host \
                 emulated` or `isobench vm boot --host emulated`",
                kvm.flavour
            );
        }
    }
    let created = create_direct_backend(kind)
        .await
        .map_err(|reason| anyhow::anyhow!("backend {} cannot run here: {reason}", name.name()))?;
    let planned = PlannedBackend {
        backend: created.backend,
        execution_host: ExecutionHost::Direct,
    };
    Ok((planned, created.docker))
}

/// Finds the built guest image. The process and docker backends need only the root
/// filesystem, so for them a missing guest kernel is not an error.
fn locate_image(kind: BackendKind) -> anyhow::Result<GuestImagePaths> {
    let paths = match kind {
        BackendKind::Microvm => image::locate()?,
        BackendKind::Process | BackendKind::Docker => image::locate_rootfs()?,
    };
    Ok(paths)
}

async fn run(config: RunConfigResolved) -> anyhow::Result<ExitCode> {
    let started = SystemTime::now();
    let run_id = format!(
        "run-{}-{}",
        started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0),
        std::process::id()
    );
    let plan = RunPlan {
        backends: vec![config.backend.clone()],
        trials: config.trials,
        warmup: config.warmup,
        settings: TrialSettings {
            run_id: run_id.clone(),
            image: config.image.clone(),
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            ready_deadline: config.ready_deadline,
            trial_deadline: config.trial_deadline,
            idle_settle: defaults::IDLE_SETTLE,
        },
        results_path: config.results_path.clone(),
    };
    let mut results = Results {
        schema_version: SCHEMA_VERSION,
        run: RunInfo {
            run_id,
            started_at: rfc3339_utc(started),
            finished_at: None,
            interrupted: false,
            command_line: std::env::args().collect(),
            isobench_version: env!("CARGO_PKG_VERSION").into(),
            isobench_revision: None,
            image_id: config.image.id.clone(),
            config: RunConfig {
                backends: vec![config.backend.backend.name()],
                trials: config.trials,
                warmup: config.warmup,
                vcpus: config.vcpus,
                memory_mib: config.memory_mib,
                suite: config.suite.name.clone(),
                ready_deadline_s: config.ready_deadline.as_secs_f64(),
                trial_deadline_s: config.trial_deadline.as_secs_f64(),
                idle_settle_s: defaults::IDLE_SETTLE.as_secs_f64(),
            },
            skipped_backends: Vec::new(),
        },
        host: HostInfo::collect(config.docker.clone()),
        trials: Vec::new(),
    };

    let (canceller, cancel) = cancel::channel();
    tokio::spawn(async move {
        if let Some(signal) = crate::interrupt::stop_requested().await {
            eprintln!("isobench: interrupted by {signal}; stopping the current trial");
            canceller.cancel();
        }
    });
    let workload = JupyterWorkload::new(config.suite.clone());
    // Every printed figure carries the kind of KVM it was measured on.
    let kvm_label = results.host.figure_label(ExecutionHost::Direct);
    let observer = Progress {
        text: !config.json,
        cancel: cancel.clone(),
        kvm_label: kvm_label.clone(),
    };
    isobench_harness::run::run(&plan, &workload, &mut results, &cancel, &observer).await?;

    let summary = RunSummary::of(&results, &Bootstrap::default());
    if results.run.interrupted {
        for line in kept_trials(&results) {
            eprintln!("isobench: {line}");
        }
    }
    let mut stdout = std::io::stdout().lock();
    if config.json {
        let document = serde_json::json!({ "results": results, "summary": summary });
        serde_json::to_writer_pretty(&mut stdout, &document)?;
        writeln!(stdout)?;
    } else {
        let planned = results.run.config.trials;
        print_summary(&mut stdout, &summary, planned, &kvm_label)?;
    }

    let failed = results
        .trials
        .iter()
        .any(|trial| matches!(trial.outcome, TrialOutcome::Failed { .. }));
    // 130 after Ctrl-C, as `isobench compare` and shells report an interrupted program.
    Ok(if results.run.interrupted {
        ExitCode::from(130)
    } else if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints each trial as it ends, on standard error so `--json` output stays clean.
struct Progress {
    text: bool,
    cancel: Cancel,
    /// The host's KVM kind, printed with each trial's figures.
    kvm_label: String,
}

impl TrialObserver for Progress {}

impl RunObserver for Progress {
    fn trial_started(&self, backend: &str, round: u32, warmup: bool) {
        if self.text && !self.cancel.is_cancelled() {
            let kind = if warmup { "warm-up" } else { "trial" };
            eprintln!("{backend}: {kind} {} ...", round + 1);
        }
    }

    fn trial_finished(&self, record: &TrialRecord) {
        if self.text {
            eprint!("{}", describe_trial(record, &self.kvm_label));
        }
    }
}

/// Describes one trial: outcome, phases, readiness, memory and per-cell figures, each figure
/// line ending with the host's KVM kind.
fn describe_trial(record: &TrialRecord, kvm_label: &str) -> String {
    let mut text = String::new();
    let kind = if record.warmup { "warm-up" } else { "trial" };
    let outcome = match &record.outcome {
        TrialOutcome::Completed => "completed".to_owned(),
        TrialOutcome::Failed { stage, cause, exit } => {
            let mut line = format!("FAILED at {stage}: {cause}");
            if let Some(exit) = exit {
                if !cause.contains(&exit.status) {
                    line.push_str(&format!("\n    kernel {}", exit.status));
                }
                if !exit.last_output.trim().is_empty() {
                    line.push_str(&format!(
                        "\n    last output:\n{}",
                        indent(&exit.last_output)
                    ));
                }
            }
            line
        }
        TrialOutcome::Interrupted { stage } => format!("interrupted at {stage}"),
    };
    text.push_str(&format!("  {kind} {}: {outcome}\n", record.round + 1));

    let mut figures = Vec::new();
    if let Some(ready) = record.launch_to_ready_s {
        let attempts = record.ready_attempts.unwrap_or(0);
        figures.push(format!(
            "launch to ready {} ({attempts} kernel_info_request)",
            format_seconds(ready)
        ));
    }
    for phase in &record.phases {
        let alongside = if phase.concurrent { " (alongside)" } else { "" };
        figures.push(format!(
            "phase {:<16} {}{alongside}",
            phase.name,
            format_seconds(phase.duration_s())
        ));
    }
    if let Some(memory) = &record.memory_idle {
        if let Some(pss) = memory.sample.host_pss_bytes {
            figures.push(format!("host_pss at idle {}", format_mib(pss as f64)));
        }
        if let Some(delta) = memory.host_delta_bytes {
            figures.push(format!("host_delta at idle {}", format_mib(delta as f64)));
        }
    }
    for cell in &record.cells {
        let mut sorted = cell.latencies_s.clone();
        sorted.sort_by(f64::total_cmp);
        let Some(&p50) = sorted.get(sorted.len() / 2) else {
            continue;
        };
        let line = match (cell.bytes_per_repetition, &cell.answer) {
            (Some(bytes), _) => format!(
                "{:.1} MB/s (p50 {})",
                bytes as f64 / p50 / 1e6,
                format_seconds(p50)
            ),
            (None, Some(answer)) if cell.latencies_s.len() == 1 => {
                format!("{answer:?} ({})", format_seconds(p50))
            }
            _ => format!(
                "p50 {} p99 {} over {}",
                format_seconds(p50),
                format_seconds(sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]),
                sorted.len()
            ),
        };
        figures.push(format!("cell {:<18} {line}", cell.name));
    }
    for figure in figures {
        text.push_str(&format!("    {figure}  [{kvm_label}]\n"));
    }
    text
}

/// Prints each backend's figures, each line ending with the host's KVM kind. `planned` is the
/// run's measured trials per backend, so an interrupted run shows how many of them finished.
fn print_summary(
    out: &mut impl Write,
    summary: &RunSummary,
    planned: u32,
    kvm_label: &str,
) -> std::io::Result<()> {
    for backend in &summary.backends {
        writeln!(
            out,
            "{}: {} of {planned} measured trials completed, on {kvm_label}",
            backend.backend, backend.completed
        )?;
        for failure in &backend.failures {
            writeln!(
                out,
                "  trial {} failed at {}: {}",
                failure.round + 1,
                failure.stage,
                failure.cause
            )?;
        }
        let mut figures = Vec::new();
        for figure in &backend.figures {
            let estimate = &figure.estimate;
            let (median, low, high) = match figure.unit.as_str() {
                "s" => (
                    format_seconds(estimate.median),
                    format_seconds(estimate.ci_low),
                    format_seconds(estimate.ci_high),
                ),
                "bytes" => (
                    format_mib(estimate.median),
                    format_mib(estimate.ci_low),
                    format_mib(estimate.ci_high),
                ),
                unit => (
                    format!("{:.1} {unit}", estimate.median),
                    format!("{:.1}", estimate.ci_low),
                    format!("{:.1}", estimate.ci_high),
                ),
            };
            figures.push(format!(
                "{:<28} median {median} (95% CI {low} .. {high}, n={})",
                figure.name, estimate.count
            ));
        }
        for phase in &backend.phases {
            let timing = if phase.concurrent {
                format!(
                    "median {}, alongside the phases above from {} after t0",
                    format_seconds(phase.estimate.median),
                    format_seconds(phase.start_median_s)
                )
            } else {
                format!("median {}", format_seconds(phase.estimate.median))
            };
            figures.push(format!("phase {:<22} {timing}", phase.name));
        }
        for cell in &backend.cells {
            if let Some(latency) = &cell.latency {
                figures.push(format!(
                    "cell {:<23} p50 {} p95 {} p99 {} (n={})",
                    cell.name,
                    format_seconds(latency.p50),
                    format_seconds(latency.p95),
                    format_seconds(latency.p99),
                    cell.latencies_s.len()
                ));
            }
        }
        for figure in figures {
            writeln!(out, "  {figure}  [{kvm_label}]")?;
        }
        for observation in &backend.observations {
            writeln!(
                out,
                "  seen inside: {:<16} {}",
                observation.name,
                observation.answers.join(" | ")
            )?;
        }
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("      {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}
