//! Shared helpers for the criterion benchmarks: the guest image, the backends this host
//! offers, and one trial measured exactly as `isobench compare` measures it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isobench_harness::backend::docker::{DockerBackend, DockerOptions};
use isobench_harness::backend::microvm::MicrovmBackend;
use isobench_harness::backend::process::ProcessBackend;
use isobench_harness::backend::{Backend, GuestImagePaths};
use isobench_harness::cancel::Cancel;
use isobench_harness::host::{KvmFlavour, KvmInfo};
use isobench_harness::image;
use isobench_harness::jupyter::JupyterWorkload;
use isobench_harness::results::{ExecutionHost, TrialOutcome};
use isobench_harness::trial::{run_trial, NoObserver, TrialSettings, TrialSlot};
use isobench_workload::Suite;

/// A one-cell suite, so a launch-to-ready iteration spends little time after ready.
const READY_ONLY_SUITE: &str = r#"
name = "bench-ready"
[[cell]]
name = "trivial"
code = "1 + 1"
expect = { equals = "2" }
metric = "latency"
repetitions = 1
"#;

/// Starts the async runtime the benchmarks drive the harness with.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("failed to start the async runtime")
}

/// Returns the built guest image, or prints why the benchmarks skip (the error names the fix)
/// and returns `None`.
pub fn guest_image() -> Option<GuestImagePaths> {
    match image::locate() {
        Ok(paths) => Some(paths),
        Err(error) => {
            eprintln!("skipping: {error}");
            None
        }
    }
}

/// Returns the backends this host can run, printing each one it skips and why. The Docker
/// image is imported when missing.
pub async fn available_backends(image: &GuestImagePaths) -> Vec<Arc<dyn Backend>> {
    let mut backends: Vec<Arc<dyn Backend>> = Vec::new();
    match ProcessBackend::check_available() {
        Ok(()) => backends.push(Arc::new(ProcessBackend::new())),
        Err(error) => eprintln!("skipping process: {error}"),
    }
    match DockerBackend::connect(DockerOptions::default()).await {
        Ok(docker) => match image::import_docker_image(image).await {
            Ok(_) => backends.push(Arc::new(docker)),
            Err(error) => eprintln!("skipping docker: {error}"),
        },
        Err(error) => eprintln!("skipping docker: {error}"),
    }
    // Only hardware KVM boots a stock guest kernel in useful time; emulated-host timings are
    // not benchmarks.
    if KvmInfo::probe().flavour == KvmFlavour::Hardware {
        match MicrovmBackend::check_available().and_then(|()| MicrovmBackend::new()) {
            Ok(microvm) => backends.push(Arc::new(microvm)),
            Err(error) => eprintln!("skipping microvm: {error}"),
        }
    } else {
        eprintln!("skipping microvm: this host's KVM is not hardware KVM");
    }
    backends
}

/// Trial settings for benchmarks: the defaults of `isobench compare` without the idle pause.
pub fn trial_settings(image: &GuestImagePaths) -> TrialSettings {
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    TrialSettings {
        run_id: format!("ibbench{}-{}", started.as_secs(), std::process::id()),
        image: image.clone(),
        vcpus: 1,
        memory_mib: 1024,
        ready_deadline: Duration::from_secs(60),
        trial_deadline: Duration::from_secs(120),
        idle_settle: Duration::ZERO,
    }
}

/// Creates the Jupyter client with a one-cell suite.
pub fn ready_only_workload() -> JupyterWorkload {
    JupyterWorkload::new(
        Suite::from_toml(READY_ONLY_SUITE, "benchmark suite")
            .expect("the benchmark suite is valid"),
    )
}

/// Runs one full trial and returns its launch-to-ready time, `t0` to ready as the harness
/// defines them. Panics with the cause when the trial fails, since criterion has no way to
/// record a failed iteration.
pub async fn launch_to_ready(
    backend: &Arc<dyn Backend>,
    workload: &JupyterWorkload,
    settings: &TrialSettings,
    sequence: u32,
) -> Duration {
    let slot = TrialSlot {
        sequence,
        round: sequence,
        warmup: false,
        execution_host: ExecutionHost::Direct,
    };
    let record = run_trial(
        backend,
        workload,
        settings,
        slot,
        &Cancel::never(),
        &NoObserver,
    )
    .await;
    match (&record.outcome, record.launch_to_ready_s) {
        (TrialOutcome::Completed, Some(seconds)) => Duration::from_secs_f64(seconds),
        (outcome, _) => panic!("{} trial failed: {outcome:?}", record.backend),
    }
}
