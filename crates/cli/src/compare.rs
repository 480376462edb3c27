//! `isobench compare`: trials across every backend the host offers, `results.json`, and the
//! HTML report.
//!
//! The flags are resolved here into the harness's run plan: which backends run (and why the
//! others do not), the guest image (built when missing), the suite and the limits. The
//! harness runs the rounds; this module shows progress, catches Ctrl-C and renders the report.

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use isobench_harness::backend::{Backend, BackendKind, GuestImagePaths};
use isobench_harness::cancel::{self, Cancel};
use isobench_harness::defaults;
use isobench_harness::host::{
    rfc3339_utc, timestamp_folder_name, DockerInfo, HostInfo, KvmFlavour, KvmInfo,
    ISOBENCH_REVISION,
};
use isobench_harness::image::{self, ArtifactSet, Cache, ImageError, RecipeHashes, SetOutcome};
use isobench_harness::jupyter::JupyterWorkload;
use isobench_harness::results::{
    ExecutionHost, Results, RunConfig, RunInfo, SkippedBackend, TrialOutcome, TrialRecord,
    TrialStage, SCHEMA_VERSION,
};
use isobench_harness::run::{PlannedBackend, RunObserver, RunPlan};
use isobench_harness::summary::{
    describe_failure, format_significant, trial_name, BackendSummary, BASELINE,
};
use isobench_harness::trial::{TrialObserver, TrialSettings};
use isobench_report::format::{format_mib, format_seconds};
use isobench_vmm::emulated::{
    default_cache_dir, EmulatedError, EmulatedHost, EmulatedRun, ProgramArg,
};
use isobench_workload::Suite;

use crate::flags::{
    check_docker_vcpus, check_out_dir, check_seconds, create_direct_backend, BackendArg, LimitArgs,
};
use crate::interrupt::{self, kept_trials, planned_trials};

/// Execution host of the microVM backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MicrovmHost {
    /// On this host's own KVM; real figures need hardware virtualisation.
    Direct,
    /// Inside the emulated hardware-KVM host (QEMU software emulation with nested SVM):
    /// emulation times, shown apart and left out of every ratio.
    Emulated,
}

/// Flags of `isobench compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// Backends to compare, comma-separated (process, docker, microvm). Default: every backend
    /// this host offers; the others are listed with the reason they were skipped.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    backends: Option<Vec<BackendArg>>,
    /// Measured trials per backend.
    #[arg(long, allow_negative_numbers = true, default_value_t = defaults::TRIALS.into())]
    trials: u64,
    /// Warm-up trials per backend, run first and left out of every figure.
    #[arg(long, allow_negative_numbers = true, default_value_t = defaults::WARMUP_TRIALS.into())]
    warmup: u64,
    #[command(flatten)]
    limits: LimitArgs,
    /// Folder for results.json, summary.csv, index.html and the SVG charts: a new or empty
    /// folder whose parent exists. Default: reports/<UTC timestamp>/ under the current folder.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Execution host of the microVM. Default: direct on a host with hardware KVM; elsewhere the
    /// microVM is skipped unless `emulated` is given.
    #[arg(long, value_enum)]
    microvm_host: Option<MicrovmHost>,
    /// Time allowed for one whole trial, launch to end of the suite, in seconds.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = defaults::TRIAL_DEADLINE.as_secs_f64(),
        value_name = "SECONDS"
    )]
    trial_deadline: f64,
    /// Guest kernel to boot instead of the cached guest image's; the emulated host's inner run
    /// uses it, with `--image-rootfs-ext4`.
    #[arg(long, hide = true, value_name = "FILE", requires = "image_rootfs_ext4")]
    image_vmlinux: Option<PathBuf>,
    /// Root disk to boot instead of the cached guest image's.
    #[arg(long, hide = true, value_name = "FILE", requires = "image_vmlinux")]
    image_rootfs_ext4: Option<PathBuf>,
    /// Prints results.json on standard output instead of writing the report; the emulated
    /// host's inner run uses it to hand its trials out.
    #[arg(long, hide = true)]
    results_stdout: bool,
    /// Interval between TCP probes of the Jupyter kernel's ports until it listens, in seconds.
    /// Default: 2 ms. The emulated host's inner run sets a longer one.
    #[arg(
        long,
        hide = true,
        allow_negative_numbers = true,
        value_name = "SECONDS"
    )]
    listen_probe_interval: Option<f64>,
}

/// The flags resolved and checked.
struct Settings {
    requested: Option<Vec<BackendKind>>,
    trials: u32,
    warmup: u32,
    suite: Suite,
    vcpus: u32,
    memory_mib: u32,
    out: PathBuf,
    /// Whether `out` is the default `reports/<timestamp>`, which another run started in the
    /// same second may take first.
    out_is_default: bool,
    microvm_host: Option<MicrovmHost>,
    ready_deadline: Duration,
    trial_deadline: Duration,
    suite_path: Option<PathBuf>,
    image_override: Option<(PathBuf, PathBuf)>,
    results_stdout: bool,
    listen_probe_interval: Option<Duration>,
}

/// Runs `isobench compare`.
pub fn main(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let settings = resolve(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;

    let selection = runtime.block_on(select_backends(&settings))?;
    for skipped in &selection.skipped {
        eprintln!("isobench: skipping {}: {}", skipped.backend, skipped.reason);
    }
    let mut names: Vec<String> = selection.planned.iter().map(|p| p.backend.name()).collect();
    if selection.emulated.is_some() {
        names.push("microvm (emulated host)".into());
    }
    eprintln!("isobench: comparing {}", names.join(", "));

    let image = match &settings.image_override {
        Some((vmlinux, rootfs_ext4)) => provided_image(vmlinux, rootfs_ext4),
        None => prepare_image(&selection)?,
    };
    if selection
        .planned
        .iter()
        .any(|p| p.backend.kind() == BackendKind::Docker)
    {
        let spinner = spinner(format!(
            "importing the guest image into Docker as {}",
            image.docker_tag
        ));
        let imported = runtime.block_on(image::import_docker_image(&image));
        spinner.finish_and_clear();
        imported.context("failed to import the guest image into Docker")?;
    }

    runtime.block_on(compare(settings, selection, image))
}

fn resolve(args: CompareArgs) -> anyhow::Result<Settings> {
    let limits = args
        .limits
        .check(args.trials, args.warmup, args.trial_deadline)?;
    let requested = args.backends.map(|list| {
        let mut kinds: Vec<BackendKind> = Vec::new();
        for backend in list {
            let kind = BackendKind::from(backend);
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        kinds
    });
    let docker_may_run = requested
        .as_ref()
        .is_none_or(|kinds| kinds.contains(&BackendKind::Docker));
    if docker_may_run {
        check_docker_vcpus(args.limits.vcpus)?;
    }
    // The folder is checked here, before the backends are probed and the guest image is built,
    // so a bad --out fails within a second instead of after minutes.
    let out_is_default = args.out.is_none();
    let out = match args.out {
        Some(out) => {
            check_out_dir("--out", &out, false)?;
            out
        }
        None => {
            let out = default_out_dir();
            check_out_dir("--out", &out, true)?;
            out
        }
    };
    let listen_probe_interval = args
        .listen_probe_interval
        .map(|seconds| check_seconds("--listen-probe-interval", seconds))
        .transpose()?;
    Ok(Settings {
        requested,
        trials: limits.trials,
        warmup: limits.warmup,
        suite: limits.suite,
        vcpus: args.limits.vcpus,
        memory_mib: args.limits.memory_mib,
        out,
        out_is_default,
        microvm_host: args.microvm_host,
        ready_deadline: limits.ready_deadline,
        trial_deadline: limits.trial_deadline,
        suite_path: args.limits.suite,
        image_override: args.image_vmlinux.zip(args.image_rootfs_ext4),
        results_stdout: args.results_stdout,
        listen_probe_interval,
    })
}

fn default_out_dir() -> PathBuf {
    let base = Path::new("reports").join(timestamp_folder_name(SystemTime::now()));
    let mut candidate = base.clone();
    let mut suffix = 2;
    while candidate.exists() {
        candidate = numbered_folder(&base, suffix);
        suffix += 1;
    }
    candidate
}

/// Returns `base` with `-<number>` appended to its name.
fn numbered_folder(base: &Path, number: u32) -> PathBuf {
    PathBuf::from(format!("{}-{number}", base.display()))
}

/// Creates the folder `base`, or `base-2`, `base-3` and so on when another run has created
/// it since it was chosen, and returns the one created.
fn create_new_folder(base: &Path) -> std::io::Result<PathBuf> {
    if let Some(parent) = base.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut candidate = base.to_owned();
    let mut number = 2;
    loop {
        match fs::create_dir(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                candidate = numbered_folder(base, number);
                number += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Backends that will run, in round order, and those that will not.
struct Selection {
    planned: Vec<PlannedBackend>,
    skipped: Vec<SkippedBackend>,
    docker: Option<DockerInfo>,
    /// The emulated host, when the microVM runs there.
    emulated: Option<EmulatedHost>,
}

/// Probes each candidate backend. A backend named in `--backends` that cannot run is an
/// error; without `--backends`, it is skipped with its reason.
async fn select_backends(settings: &Settings) -> anyhow::Result<Selection> {
    let explicit = settings.requested.is_some();
    let candidates = settings.requested.clone().unwrap_or_else(|| {
        vec![
            BackendKind::Process,
            BackendKind::Docker,
            BackendKind::Microvm,
        ]
    });
    let mut selection = Selection {
        planned: Vec::new(),
        skipped: Vec::new(),
        docker: None,
        emulated: None,
    };
    for kind in candidates {
        let probed = match kind {
            BackendKind::Process | BackendKind::Docker => {
                create_direct_backend(kind).await.map(|created| {
                    if created.docker.is_some() {
                        selection.docker = created.docker;
                    }
                    direct(created.backend)
                })
            }
            BackendKind::Microvm => match microvm_backend(settings.microvm_host).await {
                Ok(MicrovmChoice::Direct(planned)) => Ok(planned),
                Ok(MicrovmChoice::Emulated(host)) => {
                    selection.emulated = Some(host);
                    continue;
                }
                Err(reason) => Err(reason),
            },
        };
        match probed {
            Ok(planned) => selection.planned.push(planned),
            Err(reason) if explicit => {
                anyhow::bail!("backend {} cannot run here: {reason}", kind_name(kind))
            }
            Err(reason) => selection.skipped.push(SkippedBackend {
                backend: kind_name(kind).into(),
                reason,
            }),
        }
    }
    if selection.planned.is_empty() && selection.emulated.is_none() {
        let reasons: Vec<String> = selection
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.backend, s.reason))
            .collect();
        anyhow::bail!(
            "no backend can run on this host ({}); run `isobench doctor`",
            reasons.join("; ")
        );
    }
    Ok(selection)
}

fn direct(backend: Arc<dyn Backend>) -> PlannedBackend {
    PlannedBackend {
        backend,
        execution_host: ExecutionHost::Direct,
    }
}

fn kind_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Process => "process",
        BackendKind::Docker => "docker",
        BackendKind::Microvm => "microvm",
    }
}

/// Where the microVM runs.
enum MicrovmChoice {
    /// On this host's KVM, interleaved with the other backends.
    Direct(PlannedBackend),
    /// In the emulated host, as one block after the other backends' rounds.
    Emulated(EmulatedHost),
}

/// Decides whether and where the microVM runs: directly on hardware KVM or when
/// `--microvm-host direct` insists, in the emulated host when `--microvm-host emulated` asks,
/// and never by default on other kinds of KVM.
async fn microvm_backend(host: Option<MicrovmHost>) -> Result<MicrovmChoice, String> {
    let kvm = KvmInfo::probe();
    match (host, kvm.flavour) {
        (Some(MicrovmHost::Direct), _) | (None, KvmFlavour::Hardware) => {}
        (Some(MicrovmHost::Emulated), _) => {
            let cache = default_cache_dir()
                .ok_or("no cache folder: set ISOBENCH_CACHE_DIR or HOME".to_owned())?;
            let spinner = spinner("preparing the emulated host".into());
            let prepared = EmulatedHost::prepare(&cache);
            spinner.finish_and_clear();
            return prepared
                .map(MicrovmChoice::Emulated)
                .map_err(|error| format!("the emulated host is not available: {error}"));
        }
        (None, KvmFlavour::Unavailable) => {
            return Err(
                "/dev/kvm is missing: load kvm_intel or kvm_amd, or pass --microvm-host emulated"
                    .into(),
            )
        }
        (None, KvmFlavour::Paravirtual | KvmFlavour::Unknown) => {
            return Err(format!(
                "this host's KVM is {} ({}), on which a stock guest kernel does not boot in \
                 useful time; pass --microvm-host emulated to run it in the emulated host \
                 (emulation times)",
                kvm.flavour,
                kvm.module.as_deref().unwrap_or("unknown module"),
            ))
        }
    }
    let created = create_direct_backend(BackendKind::Microvm).await?;
    if kvm.flavour != KvmFlavour::Hardware {
        eprintln!(
            "isobench: warning: running the microvm on {} KVM; its guest kernel may not \
             become ready before --ready-deadline",
            kvm.flavour
        );
    }
    Ok(MicrovmChoice::Direct(direct(created.backend)))
}

/// Guest image paths given on the command line, as the emulated host's inner run gets them.
fn provided_image(vmlinux: &Path, rootfs_ext4: &Path) -> GuestImagePaths {
    let unused = PathBuf::from("/nonexistent");
    GuestImagePaths {
        id: "provided".into(),
        vmlinux: vmlinux.to_owned(),
        bzimage: unused.clone(),
        rootfs_tar: unused.clone(),
        rootfs_ext4: rootfs_ext4.to_owned(),
        rootfs_tree: unused,
        docker_tag: String::new(),
    }
}

/// Finds the guest image, building the artifact sets the selected backends launch from when
/// the cache lacks them. Only a run that includes the microVM, directly or in the emulated
/// host, builds the guest kernel: on the first run the kernel build takes minutes.
fn prepare_image(selection: &Selection) -> anyhow::Result<GuestImagePaths> {
    let mut kinds: Vec<BackendKind> = selection.planned.iter().map(|p| p.backend.kind()).collect();
    if selection.emulated.is_some() {
        kinds.push(BackendKind::Microvm);
    }
    let sets = ArtifactSet::required_by(&kinds);
    let cache = Cache::from_env()?;
    match cache.locate_sets(&RecipeHashes::embedded(), &sets) {
        Ok(paths) => return Ok(paths),
        Err(ImageError::NotBuilt { .. } | ImageError::Damaged { .. }) => {}
        Err(error) => return Err(error.into()),
    }
    let names: Vec<&str> = sets.iter().map(|set| set.name()).collect();
    eprintln!(
        "isobench: building the guest image's {} first; later runs reuse it",
        names.join(" and ")
    );
    let progress = crate::image::TerminalProgress::new();
    let summary = image::build_sets(&cache, &sets, &progress)?;
    progress.clear();
    for (label, outcome) in [
        ("guest kernel", &summary.kernel),
        ("root filesystem", &summary.rootfs),
    ] {
        if *outcome != SetOutcome::NotRequested {
            eprintln!("isobench: {label} {}", crate::image::describe(outcome));
        }
    }
    Ok(summary.paths)
}

async fn compare(
    mut settings: Settings,
    selection: Selection,
    image: GuestImagePaths,
) -> anyhow::Result<ExitCode> {
    let created = if settings.out_is_default {
        create_new_folder(&settings.out)
    } else {
        fs::create_dir_all(&settings.out).map(|()| settings.out.clone())
    };
    settings.out = created.with_context(|| {
        format!(
            "failed to create the report folder {}",
            settings.out.display()
        )
    })?;
    // A folder that exists but cannot be written would otherwise fail only after the first
    // trial, so the run checks it before it launches anything.
    let probe = settings
        .out
        .join(format!(".isobench-write-check-{}", std::process::id()));
    fs::write(&probe, b"").with_context(|| {
        format!(
            "cannot write into the report folder {}: pass --out with a writable folder",
            settings.out.display()
        )
    })?;
    let _ = fs::remove_file(&probe);
    let results_path = settings.out.join("results.json");
    let started = SystemTime::now();
    let run_id = format!(
        "ib{}-{}",
        started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or(0),
        std::process::id()
    );
    let direct_count = selection.planned.len() as u32;
    let mut backends: Vec<String> = selection.planned.iter().map(|p| p.backend.name()).collect();
    if selection.emulated.is_some() {
        backends.push("microvm".into());
    }
    let plan = RunPlan {
        backends: selection.planned,
        trials: settings.trials,
        warmup: settings.warmup,
        settings: TrialSettings {
            run_id: run_id.clone(),
            image: image.clone(),
            vcpus: settings.vcpus,
            memory_mib: settings.memory_mib,
            ready_deadline: settings.ready_deadline,
            trial_deadline: settings.trial_deadline,
            idle_settle: defaults::IDLE_SETTLE,
        },
        results_path: Some(results_path.clone()),
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
            isobench_revision: ISOBENCH_REVISION.map(str::to_owned),
            image_id: image.id.clone(),
            config: RunConfig {
                backends: backends.clone(),
                trials: settings.trials,
                warmup: settings.warmup,
                vcpus: settings.vcpus,
                memory_mib: settings.memory_mib,
                suite: settings.suite.name.clone(),
                ready_deadline_s: settings.ready_deadline.as_secs_f64(),
                trial_deadline_s: settings.trial_deadline.as_secs_f64(),
                idle_settle_s: defaults::IDLE_SETTLE.as_secs_f64(),
            },
            skipped_backends: selection.skipped,
        },
        host: HostInfo::collect(selection.docker),
        trials: Vec::new(),
    };

    let (canceller, cancel) = cancel::channel();
    tokio::spawn(async move {
        let Some(signal) = interrupt::stop_requested().await else {
            return;
        };
        eprintln!(
            "isobench: interrupted by {signal}; stopping the current trial and keeping the \
             finished ones"
        );
        canceller.cancel();
        if interrupt::stop_requested().await.is_none() {
            return;
        }
        eprintln!("isobench: still cleaning up; press Ctrl-C again to exit at once");
        if interrupt::stop_requested().await.is_some() {
            // The next run's sweep removes whatever the current trial leaves behind.
            eprintln!("isobench: exiting without cleanup");
            std::process::exit(130);
        }
    });

    let total = u64::from((settings.warmup + settings.trials) * direct_count);
    let kvm_label = results.host.figure_label(ExecutionHost::Direct);
    let observer = TrialBars::new(total, cancel.clone(), kvm_label);
    let mut workload = JupyterWorkload::new(settings.suite.clone());
    if let Some(interval) = settings.listen_probe_interval {
        workload = workload.with_listen_probe_interval(interval);
    }
    let run_result =
        isobench_harness::run::run(&plan, &workload, &mut results, &cancel, &observer).await;
    observer.finish();
    run_result.context("failed to write results.json")?;

    if let Some(host) = selection.emulated {
        if !cancel.is_cancelled() {
            let trials = emulated_trials(host, &settings, &image, &cancel).await;
            // The inner run's own progress stays inside the emulated host, so each of its
            // trials is reported here, with the emulated host's label.
            let emulated_label = results.host.figure_label(ExecutionHost::Emulated);
            for trial in &trials {
                if let Some(line) = trial_line(trial, &emulated_label, true) {
                    eprintln!("{line}");
                }
            }
            results.trials.extend(trials);
            results.run.interrupted = cancel.is_cancelled();
            results
                .write_atomic(&results_path)
                .context("failed to write results.json")?;
        }
    }

    if settings.results_stdout {
        // The emulated host's inner run: the outer run reads the trials from standard output.
        out!("{}", serde_json::to_string(&results)?);
        return Ok(ExitCode::SUCCESS);
    }

    let index = crate::report::render(std::slice::from_ref(&results), &settings.out)?;
    if results.run.interrupted {
        for line in kept_trials(&results) {
            eprintln!("isobench: {line}");
        }
    }
    print_figures(&results);
    out!("results: {}", results_path.display());
    out!("report:  {}", index.display());

    if results.run.interrupted {
        return Ok(ExitCode::from(130));
    }
    let completed_everywhere = backends.iter().all(|name| {
        results
            .trials
            .iter()
            .any(|trial| &trial.backend == name && trial.is_measured())
    });
    Ok(if completed_everywhere {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Most trials run in the emulated host, where each takes minutes of emulation time.
const MAX_EMULATED_TRIALS: u32 = 3;

/// Time allowed from launch to ready in the emulated host, at least; its guest kernel and
/// Python run under software emulation.
const EMULATED_READY_DEADLINE: Duration = Duration::from_secs(300);

/// Time allowed for one trial in the emulated host, at least.
const EMULATED_TRIAL_DEADLINE: Duration = Duration::from_secs(900);

/// Interval between TCP probes of the Jupyter kernel's ports in the emulated host. The guest
/// runs about 100 times slower there than on hardware (ready after about 40 s instead of about
/// 0.4 s), so 50 ms is no coarser relative to the guest than the default 2 ms.
///
/// NOTE: with the default 2 ms and QEMU 10.0, a trial ended in a guest triple fault or a reset
/// of the emulated host in 3 of 4 runs of 1 to 3 trials, and with 50 ms 4 of 4 trials
/// completed. Whether QEMU's nested SVM or the VMM's interrupt path fails under that load is
/// not known, and hardware KVM was not tried.
const EMULATED_LISTEN_PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// Runs the microVM trials inside the emulated host: `isobench compare` itself runs there with
/// the guest image carried in, and prints its results on standard output. The trials come back
/// marked [`ExecutionHost::Emulated`]; a failure of the whole block becomes one failed trial
/// with its cause. Ctrl-C (`cancel`) kills QEMU at the next 20 ms poll and becomes one interrupted
/// trial, because the inner run reports its trials only when it ends.
async fn emulated_trials(
    host: EmulatedHost,
    settings: &Settings,
    image: &GuestImagePaths,
    cancel: &Cancel,
) -> Vec<TrialRecord> {
    let trials = settings.trials.min(MAX_EMULATED_TRIALS);
    let ready_deadline = settings.ready_deadline.max(EMULATED_READY_DEADLINE);
    let trial_deadline = settings.trial_deadline.max(EMULATED_TRIAL_DEADLINE);
    let plain = |text: String| ProgramArg::Plain(text);
    let mut args = vec![
        plain("compare".into()),
        plain("--backends=microvm".into()),
        plain("--microvm-host=direct".into()),
        plain(format!("--trials={trials}")),
        plain("--warmup=0".into()),
        plain(format!("--vcpus={}", settings.vcpus)),
        plain(format!("--memory-mib={}", settings.memory_mib)),
        plain(format!("--ready-deadline={}", ready_deadline.as_secs_f64())),
        plain(format!("--trial-deadline={}", trial_deadline.as_secs_f64())),
        plain(format!(
            "--listen-probe-interval={}",
            EMULATED_LISTEN_PROBE_INTERVAL.as_secs_f64()
        )),
        plain("--out=/tmp/isobench-emulated".into()),
        plain("--results-stdout".into()),
        plain("--image-vmlinux".into()),
        ProgramArg::File(image.vmlinux.clone()),
        plain("--image-rootfs-ext4".into()),
        ProgramArg::Disk {
            path: image.rootfs_ext4.clone(),
            read_only: true,
        },
    ];
    if let Some(suite) = &settings.suite_path {
        args.push(plain("--suite".into()));
        args.push(ProgramArg::File(suite.clone()));
    }

    let block_record = |outcome: TrialOutcome| {
        vec![TrialRecord {
            backend: "microvm".into(),
            kind: BackendKind::Microvm,
            execution_host: ExecutionHost::Emulated,
            round: 0,
            warmup: false,
            outcome,
            events: Vec::new(),
            phases: Vec::new(),
            launch_to_ready_s: None,
            ready_attempts: None,
            memory_idle: None,
            memory_after_suite: None,
            cells: Vec::new(),
            suite_s: None,
            shutdown_s: None,
        }]
    };
    let failure = |cause: String| {
        block_record(TrialOutcome::Failed {
            stage: TrialStage::Launch,
            cause,
            exit: None,
        })
    };
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(error) => return failure(format!("cannot find the isobench binary: {error}")),
    };
    let vmm = match isobench_vmm::supervisor::locate_binary() {
        Ok(vmm) => vmm,
        Err(error) => return failure(format!("cannot find isobench-vmm: {error}")),
    };
    let mut run = EmulatedRun::for_program(&program, &args, &[vmm]);
    run.memory_mib = settings.memory_mib + 1536;
    run.timeout = Duration::from_secs(300) + trial_deadline * trials;
    let stop = Arc::new(AtomicBool::new(false));
    run.cancel = Some(stop.clone());
    let watcher = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            stop.store(true, Ordering::Relaxed);
        })
    };

    let spinner = spinner(format!(
        "running {trials} microvm trials in the emulated host"
    ));
    let output = tokio::task::spawn_blocking(move || host.run(&run)).await;
    watcher.abort();
    spinner.finish_and_clear();
    let output = match output {
        Ok(Err(EmulatedError::Cancelled { .. })) => {
            return block_record(TrialOutcome::Interrupted {
                stage: TrialStage::Launch,
            })
        }
        Ok(Ok(output)) => output,
        Ok(Err(error)) => {
            let stderr = error
                .partial_output()
                .map(|partial| tail(&partial.stderr))
                .unwrap_or_default();
            return failure(format!("emulated host run failed: {error}{stderr}"));
        }
        Err(error) => return failure(format!("emulated host run panicked: {error}")),
    };
    match serde_json::from_slice::<Results>(&output.stdout) {
        Ok(inner) => inner
            .trials
            .into_iter()
            .map(|mut trial| {
                trial.execution_host = ExecutionHost::Emulated;
                trial
            })
            .collect(),
        Err(error) => failure(format!(
            "the emulated host's run (exit status {}) printed no results ({error}){}",
            output.exit_status,
            tail(&output.stderr)
        )),
    }
}

/// The last lines of a program's standard error, for a failure cause.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().rev().take(8).collect();
    if lines.is_empty() {
        return String::new();
    }
    let lines: Vec<&str> = lines.into_iter().rev().collect();
    format!("; last output: {}", lines.join(" | "))
}

/// Prints the headline figures of each backend, each line ending with the kind of KVM they
/// were measured on.
fn print_figures(results: &Results) {
    let summary = isobench_harness::summary::RunSummary::of(results, &Default::default());
    for backend in &summary.backends {
        let trials: Vec<&TrialRecord> = results
            .trials
            .iter()
            .filter(|trial| trial.backend == backend.backend)
            .collect();
        let planned = planned_trials(results, &trials);
        let kvm_label = results.host.figure_label(backend.execution_host);
        out!("{}  [{kvm_label}]", headline(backend, planned));
    }
}

/// Formats the backend's trial count and main figures as one line, each figure with its paired
/// ratio to the baseline where the summary has one. `planned` is its measured trials in the
/// plan, so an interrupted run shows how many of them completed.
fn headline(backend: &BackendSummary, planned: usize) -> String {
    let mut parts = vec![format!(
        "{:<8} {} of {planned} trials completed",
        backend.backend, backend.completed
    )];
    type Format = fn(f64) -> String;
    let figures: [(&str, &str, Format); 3] = [
        ("launch_to_ready", "launch to ready", format_seconds),
        ("host_delta", "host_delta", format_mib),
        ("host_pss", "host_pss", format_mib),
    ];
    for (name, label, format) in figures {
        let Some(figure) = backend.figure(name) else {
            continue;
        };
        let mut part = format!("{label} {}", format(figure.estimate.median));
        let compared =
            backend.backend != BASELINE && backend.execution_host == ExecutionHost::Direct;
        match figure.ratio_to_baseline {
            Some(ratio) => part.push_str(&format!(
                " ({}× {BASELINE})",
                format_significant(ratio.median)
            )),
            // The report's notes give the reason, such as readings of zero or below.
            None if compared => part.push_str(&format!(" (not compared with {BASELINE})")),
            None => {}
        }
        parts.push(part);
    }
    if let Some(latency) = backend.cell("trivial").and_then(|cell| cell.latency) {
        parts.push(format!(
            "trivial p50 {} p99 {}",
            format_seconds(latency.p50),
            format_seconds(latency.p99)
        ));
    }
    parts.join(", ")
}

fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, draw_target());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
    );
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn draw_target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// Progress of the trials: one bar over all trials, its message naming the current step.
struct TrialBars {
    bar: ProgressBar,
    cancel: Cancel,
    current: Mutex<String>,
    /// The host's KVM kind, printed with each trial's figures, such as
    /// `paravirtual KVM (kvm_pvm)`.
    kvm_label: String,
}

impl TrialBars {
    fn new(total: u64, cancel: Cancel, kvm_label: String) -> TrialBars {
        let bar = ProgressBar::with_draw_target(Some(total), draw_target());
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} trials  {elapsed}  {msg}")
                .expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        TrialBars {
            bar,
            cancel,
            current: Mutex::new(String::new()),
            kvm_label,
        }
    }

    fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl TrialObserver for TrialBars {
    fn stage(&self, _backend: &str, stage: TrialStage) {
        self.bar.set_message(format!("{}: {stage}", self.current()));
    }

    fn cell(&self, _backend: &str, cell: &str, done: u32, total: u32) {
        if !cell.is_empty() {
            self.bar.set_message(format!(
                "{}: suite, cell {} of {total}: {cell}",
                self.current(),
                done + 1
            ));
        }
    }
}

impl RunObserver for TrialBars {
    fn trial_started(&self, backend: &str, round: u32, warmup: bool) {
        if self.cancel.is_cancelled() {
            return;
        }
        *self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = trial_name(backend, round, warmup);
    }

    fn trial_finished(&self, record: &TrialRecord) {
        self.bar.inc(1);
        // Without a terminal there is no bar, so each completed trial gets a line in the log.
        let show_completed = self.bar.is_hidden();
        let Some(line) = trial_line(record, &self.kvm_label, show_completed) else {
            return;
        };
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }
}

/// Formats the progress line of a finished trial, or `None` for a completed one unless
/// `show_completed`. Every line that carries a figure ends with the host's KVM kind, and a
/// failure is stated once, with the last lines the workload printed.
fn trial_line(record: &TrialRecord, kvm_label: &str, show_completed: bool) -> Option<String> {
    let name = trial_name(&record.backend, record.round, record.warmup);
    let line = match &record.outcome {
        TrialOutcome::Completed if show_completed => {
            let ready = record
                .launch_to_ready_s
                .map(format_seconds)
                .unwrap_or_else(|| "unknown".into());
            format!("{name} completed, launch to ready {ready}  [{kvm_label}]")
        }
        TrialOutcome::Completed => return None,
        TrialOutcome::Failed { stage, cause, exit } => {
            let mut line =
                describe_failure(&record.backend, record.round, record.warmup, *stage, cause);
            if let Some(exit) = exit.as_ref().filter(|exit| !exit.last_output.is_empty()) {
                let tail: Vec<&str> = exit.last_output.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                line.push_str(&format!("\n  last output:\n    {}", tail.join("\n    ")));
            }
            line
        }
        TrialOutcome::Interrupted { stage } => format!("{name} interrupted at the {stage} step"),
    };
    Some(format!("isobench: {line}"))
}

#[cfg(test)]
mod tests {
    use isobench_harness::backend::ExitInfo;
    use isobench_harness::stats::Estimate;
    use isobench_harness::summary::Figure;

    use super::*;

    const KVM_LABEL: &str = "paravirtual KVM (kvm_pvm)";

    #[test]
    fn new_folder_numbered_when_taken() {
        let directory = tempfile::tempdir().unwrap();
        let base = directory.path().join("reports").join("20261205-014805");
        assert_eq!(create_new_folder(&base).unwrap(), base);
        let second = create_new_folder(&base).unwrap();
        assert_eq!(second, directory.path().join("reports/20261205-014805-2"));
        let third = create_new_folder(&base).unwrap();
        assert_eq!(third, directory.path().join("reports/20261205-014805-3"));
    }

    fn record(outcome: TrialOutcome) -> TrialRecord {
        TrialRecord {
            backend: "microvm".into(),
            kind: BackendKind::Microvm,
            execution_host: ExecutionHost::Direct,
            round: 0,
            warmup: false,
            outcome,
            events: Vec::new(),
            phases: Vec::new(),
            launch_to_ready_s: Some(0.52),
            ready_attempts: Some(3),
            memory_idle: None,
            memory_after_suite: None,
            cells: Vec::new(),
            suite_s: None,
            shutdown_s: None,
        }
    }

    fn estimate(median: f64) -> Estimate {
        Estimate {
            median,
            ci_low: median,
            ci_high: median,
            min: median,
            max: median,
            count: 10,
        }
    }

    fn figure(name: &str, unit: &str, median: f64, ratio: Option<f64>) -> Figure {
        Figure {
            name: name.into(),
            unit: unit.into(),
            estimate: estimate(median),
            ratio_to_baseline: ratio.map(estimate),
        }
    }

    #[test]
    fn completed_trial_line_names_kvm_kind() {
        let line = trial_line(&record(TrialOutcome::Completed), KVM_LABEL, true).unwrap();
        assert_eq!(
            line,
            "isobench: microvm trial 1 completed, launch to ready 520 ms  [paravirtual KVM \
             (kvm_pvm)]"
        );
    }

    #[test]
    fn completed_trial_line_hidden_with_bar() {
        assert_eq!(
            trial_line(&record(TrialOutcome::Completed), KVM_LABEL, false),
            None
        );
    }

    #[test]
    fn failed_trial_line_states_cause_once() {
        let cause = "the Jupyter kernel exited with exit status 4 (guest triple fault)";
        let outcome = TrialOutcome::Failed {
            stage: TrialStage::Ready,
            cause: cause.into(),
            exit: Some(ExitInfo {
                status: "exit status 4 (guest triple fault)".into(),
                oom_killed: false,
                last_output: "vCPU 0: triple fault".into(),
            }),
        };
        let line = trial_line(&record(outcome), KVM_LABEL, true).unwrap();
        let first = line.lines().next().unwrap();
        assert_eq!(
            first,
            format!("isobench: microvm trial 1 failed at the ready step: {cause}")
        );
        assert_eq!(line.matches("exit status 4").count(), 1, "{line}");
        assert!(
            line.ends_with("  last output:\n    vCPU 0: triple fault"),
            "{line}"
        );
        assert!(!line.contains('\u{1b}'), "no colour codes: {line:?}");
    }

    #[test]
    fn headline_has_host_pss_ratio() {
        let backend = BackendSummary {
            backend: "docker".into(),
            kind: BackendKind::Docker,
            execution_host: ExecutionHost::Direct,
            trials: 10,
            completed: 10,
            failures: Vec::new(),
            interrupted: 0,
            figures: vec![
                figure("launch_to_ready", "s", 1.08, Some(1.773)),
                figure("host_delta", "bytes", -12.3 * 1048576.0, None),
                figure("host_pss", "bytes", 80.0 * 1048576.0, Some(1.175)),
            ],
            launch_to_ready_s: Vec::new(),
            phases: Vec::new(),
            cells: Vec::new(),
            observations: Vec::new(),
        };
        assert_eq!(
            headline(&backend, 10),
            "docker   10 of 10 trials completed, launch to ready 1.08 s (1.77× process), \
             host_delta -12.3 MiB (not compared with process), host_pss 80.0 MiB (1.18× \
             process)"
        );
    }
}
