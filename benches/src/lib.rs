//! Shared helpers for the criterion benchmarks: the guest image, the backends this host
//! offers, one trial run exactly as `isobench compare` runs it, and a Jupyter kernel launched
//! the way a trial launches it.
//!
//! The benchmarks that are compared with `isobench compare` take one iteration per criterion
//! sample ([`one_iteration_per_sample`]), so criterion's median is the median of single
//! measurements, the statistic the harness reports.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, SamplingMode};
use isobench_harness::backend::docker::{DockerBackend, DockerOptions};
use isobench_harness::backend::microvm::MicrovmBackend;
use isobench_harness::backend::process::ProcessBackend;
use isobench_harness::backend::{Backend, GuestImagePaths, Instance};
use isobench_harness::backend::{BackendError, LaunchSpec};
use isobench_harness::cancel::Cancel;
use isobench_harness::defaults;
use isobench_harness::host::{KvmFlavour, KvmInfo};
use isobench_harness::image;
use isobench_harness::jupyter::JupyterWorkload;
use isobench_harness::results::{ExecutionHost, TrialOutcome};
use isobench_harness::trial::{run_trial, NoObserver, TrialSettings, TrialSlot};
use isobench_workload::{ClientError, ConnectionInfo, KernelClient, Suite};

/// Measured trials per backend in `isobench compare` by default (its `--trials`).
pub const COMPARE_TRIALS: usize = defaults::TRIALS as usize;

/// Starts the multi-threaded async runtime, the kind `isobench compare` drives trials on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("failed to start the async runtime")
}

/// Returns the built guest image, guest kernel included, or prints why the benchmarks skip
/// (the error names the fix) and returns `None`.
pub fn guest_image() -> Option<GuestImagePaths> {
    skip_unless_built(image::locate())
}

/// Returns the built guest image's paths when at least its root filesystem is built, because
/// the `process` and `docker` backends use nothing else. Otherwise prints why the benchmarks
/// skip and returns `None`. Without the guest kernel, [`available_backends`] skips the microVM.
pub fn guest_rootfs() -> Option<GuestImagePaths> {
    skip_unless_built(image::locate_rootfs())
}

fn skip_unless_built(
    located: Result<GuestImagePaths, image::ImageError>,
) -> Option<GuestImagePaths> {
    match located {
        Ok(paths) => Some(paths),
        Err(error) => {
            eprintln!("skipping: {error}");
            None
        }
    }
}

/// Returns the backends this host can run, in the order of `isobench compare`'s rounds,
/// printing each one it skips and why. The Docker image is imported when missing.
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
    if KvmInfo::probe().flavour != KvmFlavour::Hardware {
        eprintln!("skipping microvm: this host's KVM is not hardware KVM");
    } else if !image.vmlinux.is_file() {
        eprintln!(
            "skipping microvm: guest kernel {} not found: run `isobench image build`",
            image.vmlinux.display()
        );
    } else {
        match MicrovmBackend::check_available().and_then(|()| MicrovmBackend::new()) {
            Ok(microvm) => backends.push(Arc::new(microvm)),
            Err(error) => eprintln!("skipping microvm: {error}"),
        }
    }
    backends
}

/// Removes what the backends kept across trials, such as the `docker` backend's network.
pub fn finish_backends(runtime: &tokio::runtime::Runtime, backends: &[Arc<dyn Backend>]) {
    for backend in backends {
        if let Err(error) = runtime.block_on(backend.finish()) {
            eprintln!("cleanup of {} failed: {error}", backend.name());
        }
    }
}

/// Returns the trial settings of `isobench compare` with its default flags and the same pause
/// before the idle memory sample.
pub fn trial_settings(image: &GuestImagePaths) -> TrialSettings {
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    TrialSettings {
        run_id: format!("ibbench{}-{}", started.as_secs(), std::process::id()),
        image: image.clone(),
        vcpus: defaults::VCPUS,
        memory_mib: defaults::MEMORY_MIB,
        ready_deadline: defaults::READY_DEADLINE,
        trial_deadline: defaults::TRIAL_DEADLINE,
        idle_settle: defaults::IDLE_SETTLE,
    }
}

/// Creates the Jupyter client with the embedded default suite, the one `isobench compare`
/// runs without `--suite`.
pub fn compare_workload() -> JupyterWorkload {
    JupyterWorkload::new(Suite::default_suite())
}

/// Configures `group` so that each criterion sample is exactly one iteration, `samples` of
/// them after one warm-up iteration. Criterion's median is then the median of single
/// iterations, the statistic `isobench compare` reports, and its mean is a plain mean.
///
/// Criterion gives a flat-sampled benchmark `ceil(measurement_time / samples / mean)`
/// iterations per sample, where the mean comes from the warm-up. The measurement time is set
/// to `samples * shortest`, so that count is 1 for any iteration that takes at least
/// `shortest`. Criterion then warns that it cannot complete the samples in that time. The
/// warning is expected, and the run takes `samples` iterations however long they are.
pub fn one_iteration_per_sample(
    group: &mut BenchmarkGroup<'_, WallTime>,
    samples: usize,
    shortest: Duration,
) {
    let samples_u32 = u32::try_from(samples).unwrap_or(u32::MAX);
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(samples)
        // The first warm-up call exceeds any positive warm-up time, so there is exactly one.
        .warm_up_time(Duration::from_nanos(1))
        .measurement_time(shortest * samples_u32);
}

/// Runs one full trial, as `isobench compare` runs each of its trials, and returns its
/// launch-to-ready time, `t0` to ready as the harness defines them. Panics with the cause when
/// the trial fails, since criterion has no way to record a failed iteration.
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

/// A Jupyter kernel launched through a backend and a ready client connected to it.
pub struct LaunchedKernel {
    /// The backend's instance; stop it with [`LaunchedKernel::stop`].
    pub instance: Box<dyn Instance>,
    /// The client, ready.
    pub client: KernelClient,
    /// Address, ports and key of the kernel, for a second client.
    pub info: ConnectionInfo,
}

/// Failure to launch a kernel for a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The signing key or the loopback ports could not be chosen.
    #[error("failed to choose the connection parameters: {0}")]
    Parameters(String),
    /// The backend failed to launch the instance.
    #[error("{backend} launch failed")]
    Backend {
        /// Backend name.
        backend: String,
        /// The cause.
        #[source]
        source: BackendError,
    },
    /// The kernel did not become ready before the deadline.
    #[error("{backend} kernel did not become ready")]
    NotReady {
        /// Backend name.
        backend: String,
        /// The cause.
        #[source]
        source: ClientError,
    },
}

impl LaunchedKernel {
    /// Launches a kernel through `backend` with the trial's connection parameters (fixed guest
    /// ports behind the backend's own network namespace, free loopback ports for `process`)
    /// and waits until it is ready, as a trial does before its suite.
    pub async fn launch(
        backend: &Arc<dyn Backend>,
        settings: &TrialSettings,
    ) -> Result<LaunchedKernel, LaunchError> {
        let (key, ports) = isobench_harness::trial::connection_parameters(backend.kind())
            .map_err(LaunchError::Parameters)?;
        let spec = LaunchSpec {
            run_id: settings.run_id.clone(),
            trial: 0,
            image: settings.image.clone(),
            key: key.clone(),
            ports,
            vcpus: settings.vcpus,
            memory_mib: settings.memory_mib,
            ready_deadline: settings.ready_deadline,
        };

        let t0 = Instant::now();
        let instance = backend
            .launch(&spec, t0)
            .await
            .map_err(|source| LaunchError::Backend {
                backend: backend.name(),
                source,
            })?;
        let info = ConnectionInfo {
            ip: instance.address(),
            ports: instance.ports(),
            key,
        };
        let deadline = t0 + spec.ready_deadline;
        let not_ready = |source| LaunchError::NotReady {
            backend: backend.name(),
            source,
        };
        let ready = async {
            let mut client = KernelClient::connect(&info, deadline).await?;
            client.wait_ready(deadline).await?;
            Ok(client)
        };
        match ready.await {
            Ok(client) => Ok(LaunchedKernel {
                instance,
                client,
                info,
            }),
            Err(source) => {
                if let Err(error) = instance.stop().await {
                    eprintln!("failed to stop the {} instance: {error}", backend.name());
                }
                Err(not_ready(source))
            }
        }
    }

    /// Shuts the kernel down and stops the instance, removing what it created.
    pub async fn stop(self) {
        if let Err(error) = self.client.shutdown().await {
            eprintln!("shutdown request failed: {error}");
        }
        if let Err(error) = self.instance.stop().await {
            eprintln!("failed to stop the instance: {error}");
        }
    }
}
