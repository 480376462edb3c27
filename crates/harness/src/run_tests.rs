//! Tests of the trial and run loops with a scripted backend and workload in place of real
//! instances and a real Jupyter kernel.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::backend::{
    Backend, BackendError, BackendKind, ChannelPorts, ExitInfo, GuestImagePaths, GuestMeminfo,
    Instance, LaunchSpec, MemorySample, PhaseMark,
};
use crate::cancel::{self, Canceller};
use crate::results::{
    CellMetric, CellRecord, ExecutionHost, Results, TrialOutcome, TrialStage, SCHEMA_VERSION,
};
use crate::run::{run, PlannedBackend, RunObserver, RunPlan};
use crate::trial::{TrialObserver, TrialSettings};
use crate::workload::{
    CellProgress, KernelSession, KernelTarget, ReadyTimes, Workload, WorkloadError,
};

/// What a scripted instance does.
#[derive(Clone, Copy, PartialEq)]
enum Script {
    /// Becomes ready and runs the suite.
    Healthy,
    /// Exits with status 1 shortly after launch, before ready.
    DiesBeforeReady,
    /// `launch` returns an error.
    LaunchFails,
}

/// Counts instances alive, so a test can check that every one was stopped.
#[derive(Default)]
struct Ledger {
    alive: AtomicUsize,
    launched: AtomicUsize,
    finished: AtomicUsize,
}

struct ScriptedBackend {
    name: &'static str,
    kind: BackendKind,
    /// Script of each launch in turn; the last entry repeats.
    scripts: Vec<Script>,
    ledger: Arc<Ledger>,
}

#[async_trait]
impl Backend for ScriptedBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn name(&self) -> String {
        self.name.into()
    }

    async fn launch(
        &self,
        spec: &LaunchSpec,
        t0: Instant,
    ) -> Result<Box<dyn Instance>, BackendError> {
        let index = self.ledger.launched.fetch_add(1, Ordering::SeqCst);
        let script = self.scripts[index.min(self.scripts.len() - 1)];
        if script == Script::LaunchFails {
            return Err(BackendError::Launch("scripted launch failure".into()));
        }
        self.ledger.alive.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(ScriptedInstance {
            script,
            ports: spec.ports,
            marks: vec![PhaseMark {
                name: "init_started".into(),
                at: t0 + Duration::from_millis(1),
            }],
            ledger: self.ledger.clone(),
        }))
    }

    async fn finish(&self) -> Result<(), BackendError> {
        self.ledger.finished.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct ScriptedInstance {
    script: Script,
    ports: ChannelPorts,
    marks: Vec<PhaseMark>,
    ledger: Arc<Ledger>,
}

#[async_trait]
impl Instance for ScriptedInstance {
    fn address(&self) -> Ipv4Addr {
        Ipv4Addr::LOCALHOST
    }

    fn ports(&self) -> ChannelPorts {
        self.ports
    }

    fn marks(&self) -> Vec<PhaseMark> {
        self.marks.clone()
    }

    async fn wait_exit(&mut self) -> ExitInfo {
        if self.script == Script::DiesBeforeReady {
            tokio::time::sleep(Duration::from_millis(5)).await;
            return ExitInfo {
                status: "exit status 1".into(),
                oom_killed: false,
                last_output: "ModuleNotFoundError: No module named 'ipykernel'".into(),
            };
        }
        std::future::pending().await
    }

    async fn memory(&mut self) -> Result<MemorySample, BackendError> {
        Ok(MemorySample {
            host_pss_bytes: Some(42 << 20),
            ..MemorySample::default()
        })
    }

    async fn stop(self: Box<Self>) -> Result<Option<ExitInfo>, BackendError> {
        self.ledger.alive.fetch_sub(1, Ordering::SeqCst);
        Ok(None)
    }
}

/// A workload that is ready after a short delay; its suite cancels the run on the
/// `cancel_on_suite`-th suite (counting from 1) and then hangs.
struct ScriptedWorkload {
    suites_started: Arc<AtomicUsize>,
    cancel_on_suite: Option<usize>,
    canceller: Arc<Mutex<Option<Canceller>>>,
}

#[async_trait]
impl Workload for ScriptedWorkload {
    fn suite_name(&self) -> String {
        "scripted".into()
    }

    async fn connect(
        &self,
        _target: &KernelTarget,
        _deadline: Instant,
    ) -> Result<Box<dyn KernelSession>, WorkloadError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = Instant::now();
        Ok(Box::new(ScriptedSession {
            ready: ReadyTimes {
                reply_at: now,
                first_status_at: now,
                ready_at: now,
                attempts: 2,
            },
            suites_started: self.suites_started.clone(),
            cancel_on_suite: self.cancel_on_suite,
            canceller: self.canceller.clone(),
        }))
    }
}

struct ScriptedSession {
    ready: ReadyTimes,
    suites_started: Arc<AtomicUsize>,
    cancel_on_suite: Option<usize>,
    canceller: Arc<Mutex<Option<Canceller>>>,
}

#[async_trait]
impl KernelSession for ScriptedSession {
    fn ready(&self) -> ReadyTimes {
        self.ready
    }

    async fn guest_meminfo(&mut self) -> Result<GuestMeminfo, WorkloadError> {
        Ok(GuestMeminfo {
            mem_total_bytes: 1 << 30,
            mem_available_bytes: 1 << 29,
        })
    }

    async fn run_suite(
        &mut self,
        _progress: CellProgress<'_>,
    ) -> Result<Vec<CellRecord>, WorkloadError> {
        let started = self.suites_started.fetch_add(1, Ordering::SeqCst) + 1;
        if Some(started) == self.cancel_on_suite {
            if let Some(canceller) = self.canceller.lock().unwrap().as_ref() {
                canceller.cancel();
            }
            std::future::pending::<()>().await;
        }
        Ok(vec![CellRecord {
            name: "trivial".into(),
            metric: CellMetric::Latency,
            latencies_s: vec![0.001, 0.002],
            bytes_per_repetition: None,
            answer: None,
        }])
    }

    async fn shutdown(&mut self) -> Result<(), WorkloadError> {
        Ok(())
    }
}

struct Quiet;
impl TrialObserver for Quiet {}
impl RunObserver for Quiet {}

fn settings() -> TrialSettings {
    TrialSettings {
        run_id: "ib-test".into(),
        image: GuestImagePaths {
            id: "test".into(),
            vmlinux: "/nonexistent/vmlinux".into(),
            bzimage: "/nonexistent/bzImage".into(),
            rootfs_tar: "/nonexistent/rootfs.tar".into(),
            rootfs_ext4: "/nonexistent/rootfs.ext4".into(),
            rootfs_tree: "/nonexistent/tree".into(),
            docker_tag: "isobench-guest:test".into(),
        },
        vcpus: 1,
        memory_mib: 256,
        ready_deadline: Duration::from_secs(5),
        trial_deadline: Duration::from_secs(10),
        idle_settle: Duration::from_millis(1),
    }
}

fn empty_results() -> Results {
    let mut results = crate::results::fixture::results(0);
    results.trials.clear();
    results.schema_version = SCHEMA_VERSION;
    results
}

fn backend(
    name: &'static str,
    kind: BackendKind,
    scripts: Vec<Script>,
    ledger: &Arc<Ledger>,
) -> PlannedBackend {
    PlannedBackend {
        backend: Arc::new(ScriptedBackend {
            name,
            kind,
            scripts,
            ledger: ledger.clone(),
        }),
        execution_host: ExecutionHost::Direct,
    }
}

fn workload(cancel_on_suite: Option<usize>, canceller: Option<Canceller>) -> ScriptedWorkload {
    ScriptedWorkload {
        suites_started: Arc::new(AtomicUsize::new(0)),
        cancel_on_suite,
        canceller: Arc::new(Mutex::new(canceller)),
    }
}

#[tokio::test]
async fn rounds_interleave_backends_after_warmup() {
    let ledger = Arc::new(Ledger::default());
    let plan = RunPlan {
        backends: vec![
            backend(
                "process",
                BackendKind::Process,
                vec![Script::Healthy],
                &ledger,
            ),
            backend(
                "docker",
                BackendKind::Docker,
                vec![Script::Healthy],
                &ledger,
            ),
        ],
        trials: 2,
        warmup: 1,
        settings: settings(),
        results_path: None,
    };
    let mut results = empty_results();
    run(
        &plan,
        &workload(None, None),
        &mut results,
        &cancel::Cancel::never(),
        &Quiet,
    )
    .await
    .unwrap();

    let order: Vec<(&str, u32, bool)> = results
        .trials
        .iter()
        .map(|t| (t.backend.as_str(), t.round, t.warmup))
        .collect();
    assert_eq!(
        order,
        [
            ("process", 0, true),
            ("docker", 0, true),
            ("process", 0, false),
            ("docker", 0, false),
            ("process", 1, false),
            ("docker", 1, false),
        ]
    );
    assert!(results
        .trials
        .iter()
        .all(|t| t.outcome == TrialOutcome::Completed));
    assert_eq!(ledger.alive.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn completed_trial_has_phases_memory_and_cells() {
    let ledger = Arc::new(Ledger::default());
    let plan = RunPlan {
        backends: vec![backend(
            "process",
            BackendKind::Process,
            vec![Script::Healthy],
            &ledger,
        )],
        trials: 1,
        warmup: 0,
        settings: settings(),
        results_path: None,
    };
    let mut results = empty_results();
    run(
        &plan,
        &workload(None, None),
        &mut results,
        &cancel::Cancel::never(),
        &Quiet,
    )
    .await
    .unwrap();
    let trial = &results.trials[0];
    assert!(trial.launch_to_ready_s.unwrap() >= 0.02);
    assert_eq!(trial.phases.last().unwrap().name, "kernel_ready");
    let idle = trial.memory_idle.as_ref().unwrap();
    assert_eq!(idle.sample.host_pss_bytes, Some(42 << 20));
    assert!(idle.host_delta_bytes.is_some());
    assert_eq!(idle.sample.guest_view.unwrap().mem_total_bytes, 1 << 30);
    assert!(trial.memory_after_suite.is_some());
    assert_eq!(trial.cells[0].latencies_s.len(), 2);
    assert_eq!(trial.ready_attempts, Some(2));
}

#[tokio::test]
async fn kernel_dying_before_ready_is_recorded_with_exit() {
    let ledger = Arc::new(Ledger::default());
    let plan = RunPlan {
        backends: vec![backend(
            "process",
            BackendKind::Process,
            vec![Script::DiesBeforeReady, Script::Healthy],
            &ledger,
        )],
        trials: 2,
        warmup: 0,
        settings: settings(),
        results_path: None,
    };
    let mut results = empty_results();
    run(
        &plan,
        &workload(None, None),
        &mut results,
        &cancel::Cancel::never(),
        &Quiet,
    )
    .await
    .unwrap();

    assert_eq!(
        results.trials.len(),
        2,
        "a failed trial is kept, never dropped"
    );
    match &results.trials[0].outcome {
        TrialOutcome::Failed { stage, cause, exit } => {
            assert_eq!(*stage, TrialStage::Ready);
            assert!(
                cause.starts_with("the Jupyter kernel exited with"),
                "{cause}"
            );
            assert!(exit.as_ref().unwrap().last_output.contains("ipykernel"));
        }
        other => panic!("expected a failed trial, got {other:?}"),
    }
    assert_eq!(results.trials[1].outcome, TrialOutcome::Completed);
    assert_eq!(
        ledger.alive.load(Ordering::SeqCst),
        0,
        "the dead instance was stopped too"
    );
}

#[tokio::test]
async fn launch_failure_is_recorded() {
    let ledger = Arc::new(Ledger::default());
    let plan = RunPlan {
        backends: vec![backend(
            "docker",
            BackendKind::Docker,
            vec![Script::LaunchFails],
            &ledger,
        )],
        trials: 1,
        warmup: 0,
        settings: settings(),
        results_path: None,
    };
    let mut results = empty_results();
    run(
        &plan,
        &workload(None, None),
        &mut results,
        &cancel::Cancel::never(),
        &Quiet,
    )
    .await
    .unwrap();
    match &results.trials[0].outcome {
        TrialOutcome::Failed { stage, cause, .. } => {
            assert_eq!(*stage, TrialStage::Launch);
            assert_eq!(
                cause, "scripted launch failure",
                "the step is not named twice"
            );
        }
        other => panic!("expected a failed trial, got {other:?}"),
    }
}

#[tokio::test]
async fn cancel_stops_instance_and_keeps_finished_trials() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("results.json");
    let ledger = Arc::new(Ledger::default());
    let (canceller, cancel) = cancel::channel();
    let plan = RunPlan {
        backends: vec![
            backend(
                "process",
                BackendKind::Process,
                vec![Script::Healthy],
                &ledger,
            ),
            backend(
                "docker",
                BackendKind::Docker,
                vec![Script::Healthy],
                &ledger,
            ),
        ],
        trials: 5,
        warmup: 0,
        settings: settings(),
        results_path: Some(path.clone()),
    };
    // The third suite (round 1, process) signals cancellation and hangs, as Ctrl-C would.
    let workload = workload(Some(3), Some(canceller));
    let mut results = empty_results();
    run(&plan, &workload, &mut results, &cancel, &Quiet)
        .await
        .unwrap();

    assert_eq!(
        ledger.alive.load(Ordering::SeqCst),
        0,
        "the interrupted instance was stopped"
    );
    assert_eq!(
        ledger.launched.load(Ordering::SeqCst),
        3,
        "no trial started after Ctrl-C"
    );
    let written = Results::read(&path).unwrap();
    assert!(written.run.interrupted);
    assert_eq!(written.trials.len(), 3);
    assert!(written.trials[..2]
        .iter()
        .all(|t| t.outcome == TrialOutcome::Completed));
    assert_eq!(
        written.trials[2].outcome,
        TrialOutcome::Interrupted {
            stage: TrialStage::Suite
        }
    );
}

#[tokio::test]
async fn trial_deadline_fails_hung_suite() {
    let ledger = Arc::new(Ledger::default());
    let mut settings = settings();
    settings.trial_deadline = Duration::from_millis(200);
    let plan = RunPlan {
        backends: vec![backend(
            "process",
            BackendKind::Process,
            vec![Script::Healthy],
            &ledger,
        )],
        trials: 1,
        warmup: 0,
        settings,
        results_path: None,
    };
    // The run's cancel signal is never sent, so the suite hangs until the deadline.
    let (_unused, never) = cancel::channel();
    let (hang_canceller, _) = cancel::channel();
    let workload = workload(Some(1), Some(hang_canceller));
    let mut results = empty_results();
    run(&plan, &workload, &mut results, &never, &Quiet)
        .await
        .unwrap();
    match &results.trials[0].outcome {
        TrialOutcome::Failed { stage, cause, .. } => {
            assert_eq!(*stage, TrialStage::Suite);
            assert!(cause.contains("deadline"), "{cause}");
        }
        other => panic!("expected a failed trial, got {other:?}"),
    }
    assert_eq!(ledger.alive.load(Ordering::SeqCst), 0);
}
