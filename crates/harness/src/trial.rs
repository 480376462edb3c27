//! One trial: launch -> phase marks -> ready -> memory at idle -> suite -> memory -> shutdown.
//!
//! Every step that waits also watches [`Instance::wait_exit`], the trial deadline and the
//! cancellation signal, so a Jupyter kernel that dies is reported with its exit status and last
//! output, a hung step ends at the deadline, and Ctrl-C ends the trial. Whatever happens after
//! a successful launch, the instance is stopped before the record is returned.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::sleep_until;

use crate::backend::{
    Backend, BackendError, BackendKind, ChannelPorts, ExitInfo, GuestImagePaths, GuestMeminfo,
    Instance, LaunchSpec, MemorySample,
};
use crate::cancel::Cancel;
use crate::memory;
use crate::phases::{derive_phases, READY_EVENT};
use crate::results::{
    EventRecord, ExecutionHost, MemoryRecord, TrialOutcome, TrialRecord, TrialStage,
};
use crate::workload::{KernelSession, KernelTarget, ReadyTimes, Workload};

/// Extra time a launch may take after the trial deadline so that what it created can still be
/// stopped. After that the trial gives up, and the next run's sweep removes the leftovers.
const LAUNCH_GRACE: Duration = Duration::from_secs(30);

/// Time allowed for one memory sample.
const MEMORY_TIMEOUT: Duration = Duration::from_secs(20);

/// Time allowed for the Jupyter shutdown request.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings shared by every trial of a run.
#[derive(Debug, Clone)]
pub struct TrialSettings {
    /// Run id, carried by everything a backend creates.
    pub run_id: String,
    /// The guest image.
    pub image: GuestImagePaths,
    /// vCPUs of the microVM and CPU limit of the container.
    pub vcpus: u32,
    /// Guest RAM and container memory limit, in MiB.
    pub memory_mib: u32,
    /// Time allowed from `t0` to ready.
    pub ready_deadline: Duration,
    /// Time allowed for the whole trial, from `t0` to the end of the suite.
    pub trial_deadline: Duration,
    /// Pause between ready and the idle memory sample, so startup work that follows the
    /// first reply (such as IOPub setup) has settled.
    pub idle_settle: Duration,
}

/// Callbacks for progress display.
pub trait TrialObserver: Send + Sync {
    /// Reports that a trial starts a step.
    fn stage(&self, _backend: &str, _stage: TrialStage) {}
    /// Reports progress through the suite's cells.
    fn cell(&self, _backend: &str, _cell: &str, _done: u32, _total: u32) {}
}

/// An observer that shows nothing.
pub struct NoObserver;

impl TrialObserver for NoObserver {}

/// Identity of a trial within its run.
#[derive(Debug, Clone, Copy)]
pub struct TrialSlot {
    /// Trial number across the run, used in names.
    pub sequence: u32,
    /// Round number, within warm-ups or within measured trials.
    pub round: u32,
    /// Whether the trial is a warm-up.
    pub warmup: bool,
    /// Execution host of the backend's instances.
    pub execution_host: ExecutionHost,
}

/// Runs one trial and returns its record; failures are recorded, never returned as errors.
pub async fn run_trial(
    backend: &Arc<dyn Backend>,
    workload: &dyn Workload,
    settings: &TrialSettings,
    slot: TrialSlot,
    cancel: &Cancel,
    observer: &dyn TrialObserver,
) -> TrialRecord {
    let name = backend.name();
    let mut record = TrialRecord {
        backend: name.clone(),
        kind: backend.kind(),
        execution_host: slot.execution_host,
        round: slot.round,
        warmup: slot.warmup,
        outcome: TrialOutcome::Completed,
        events: Vec::new(),
        phases: Vec::new(),
        launch_to_ready_s: None,
        ready_attempts: None,
        memory_idle: None,
        memory_after_suite: None,
        cells: Vec::new(),
        suite_s: None,
        shutdown_s: None,
    };

    let (key, ports) = match connection_parameters(backend.kind()) {
        Ok(parameters) => parameters,
        Err(cause) => {
            record.outcome = failed(TrialStage::Launch, cause, None);
            return record;
        }
    };
    let spec = LaunchSpec {
        run_id: settings.run_id.clone(),
        trial: slot.sequence,
        image: settings.image.clone(),
        key: key.clone(),
        ports,
        vcpus: settings.vcpus,
        memory_mib: settings.memory_mib,
        ready_deadline: settings.ready_deadline,
    };

    observer.stage(&name, TrialStage::Launch);
    // `host_delta` compares against this reading, taken as close to t0 as possible.
    let meminfo_before = memory::read_host_meminfo().ok();
    let t0 = Instant::now();
    let deadline = t0 + settings.trial_deadline;
    let instance = match launch(backend, &spec, t0, deadline).await {
        Ok(instance) => instance,
        Err(cause) => {
            record.outcome = failed(TrialStage::Launch, cause, None);
            return record;
        }
    };

    let mut steps = Steps {
        instance,
        session: None,
        record,
        t0,
        deadline,
        meminfo_before,
        cancel,
    };
    let outcome = steps.run(workload, settings, observer, &key).await;
    steps.shutdown(observer, &name, outcome).await
}

/// Appends the Jupyter kernel's exit status to a step's failure `cause` when the backend saw
/// the kernel exit.
fn with_exit_status(mut cause: String, exit: Option<&ExitInfo>) -> String {
    if let Some(exit) = exit {
        cause.push_str(&format!(
            " (the Jupyter kernel exited with {})",
            exit.status
        ));
    }
    cause
}

/// Launches, bounded by the trial deadline. A launch still running at the deadline is awaited
/// a little longer so that what it created can be stopped.
async fn launch(
    backend: &Arc<dyn Backend>,
    spec: &LaunchSpec,
    t0: Instant,
    deadline: Instant,
) -> Result<Box<dyn Instance>, String> {
    let launch = backend.launch(spec, t0);
    tokio::pin!(launch);
    tokio::select! {
        result = &mut launch => result.map_err(|error| match error {
            // The record's stage names the launch step, so the cause does not repeat it.
            BackendError::Launch(cause) => cause,
            other => other.to_string(),
        }),
        _ = sleep_until(deadline.into()) => {
            let limit = deadline - t0;
            match tokio::time::timeout(LAUNCH_GRACE, &mut launch).await {
                Ok(Ok(instance)) => {
                    if let Err(error) = instance.stop().await {
                        tracing::error!(%error, "failed to stop an instance launched late");
                    }
                }
                Ok(Err(_)) => {}
                Err(_) => tracing::error!(
                    "launch still running {LAUNCH_GRACE:?} after the deadline; the next run's \
                     sweep removes what it created"
                ),
            }
            Err(format!("launch did not finish within the trial deadline of {limit:?}"))
        }
    }
}

/// State of a launched trial.
struct Steps<'a> {
    instance: Box<dyn Instance>,
    session: Option<Box<dyn KernelSession>>,
    record: TrialRecord,
    t0: Instant,
    deadline: Instant,
    meminfo_before: Option<GuestMeminfo>,
    cancel: &'a Cancel,
}

/// Reason a step ended early.
enum Interruption {
    Exited(ExitInfo),
    DeadlinePassed,
    Cancelled,
}

impl Steps<'_> {
    async fn run(
        &mut self,
        workload: &dyn Workload,
        settings: &TrialSettings,
        observer: &dyn TrialObserver,
        key: &str,
    ) -> TrialOutcome {
        let name = self.record.backend.clone();

        observer.stage(&name, TrialStage::Ready);
        let target = KernelTarget {
            address: self.instance.address(),
            ports: self.instance.ports(),
            key: key.to_owned(),
        };
        let ready_deadline = self.t0 + settings.ready_deadline;
        let connected = {
            let connect = workload.connect(&target, ready_deadline.min(self.deadline));
            self.guard(connect).await
        };
        self.record_marks();
        let session = match connected {
            Ok(Ok(session)) => session,
            Ok(Err(error)) => {
                let exit = self.exit_if_already_dead().await;
                // The client's own wait counts from when it started to connect, which can be
                // much shorter than the deadline counted from launch: name the deadline too.
                let mut cause = with_exit_status(error.to_string(), exit.as_ref());
                if Instant::now() >= ready_deadline {
                    cause.push_str(&format!(
                        " (the ready deadline of {:?} after launch has passed)",
                        settings.ready_deadline
                    ));
                }
                return failed(TrialStage::Ready, cause, exit);
            }
            Err(interruption) => return self.interrupted(TrialStage::Ready, interruption),
        };
        self.record_ready(session.ready());
        self.session = Some(session);

        observer.stage(&name, TrialStage::Memory);
        let settle = sleep_until((Instant::now() + settings.idle_settle).into());
        if let Err(interruption) = self.guard(settle).await {
            return self.interrupted(TrialStage::Memory, interruption);
        }
        match self.sample_memory().await {
            Ok(sample) => self.record.memory_idle = Some(sample),
            Err(cause) => return failed(TrialStage::Memory, cause, None),
        }

        observer.stage(&name, TrialStage::Suite);
        let suite_start = Instant::now();
        let progress = |cell: &str, done: u32, total: u32| observer.cell(&name, cell, done, total);
        let suite_result = {
            let session = self.session.as_mut().expect("session set after ready");
            let suite = session.run_suite(&progress);
            guard_step(&mut *self.instance, self.cancel, self.deadline, suite).await
        };
        match suite_result {
            Ok(Ok(cells)) => {
                self.record.cells = cells;
                self.record.suite_s = Some(suite_start.elapsed().as_secs_f64());
            }
            Ok(Err(error)) => {
                let exit = self.exit_if_already_dead().await;
                let cause = with_exit_status(error.to_string(), exit.as_ref());
                return failed(TrialStage::Suite, cause, exit);
            }
            Err(interruption) => return self.interrupted(TrialStage::Suite, interruption),
        }

        match self.sample_memory().await {
            Ok(sample) => self.record.memory_after_suite = Some(sample),
            Err(cause) => return failed(TrialStage::Memory, cause, None),
        }
        TrialOutcome::Completed
    }

    /// Shuts the Jupyter kernel down, stops the instance and finishes the record.
    async fn shutdown(
        mut self,
        observer: &dyn TrialObserver,
        name: &str,
        mut outcome: TrialOutcome,
    ) -> TrialRecord {
        observer.stage(name, TrialStage::Shutdown);
        let start = Instant::now();
        // A kernel whose exit the backend has seen cannot reply, so it is not asked.
        let exited = matches!(outcome, TrialOutcome::Failed { exit: Some(_), .. });
        if let Some(mut session) = self.session.take().filter(|_| !exited) {
            match tokio::time::timeout(SHUTDOWN_TIMEOUT, session.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(backend = name, %error, "shutdown request failed"),
                Err(_) => tracing::warn!(backend = name, "shutdown request timed out"),
            }
        }
        match self.instance.stop().await {
            Ok(_) => {}
            Err(error) => {
                tracing::error!(backend = name, %error, "failed to stop instance");
                if matches!(outcome, TrialOutcome::Completed) {
                    outcome = failed(TrialStage::Shutdown, error.to_string(), None);
                }
            }
        }
        self.record.shutdown_s = Some(start.elapsed().as_secs_f64());
        self.record.outcome = outcome;
        self.record
    }

    /// Awaits `step` unless the workload exits, the deadline passes or the run is cancelled.
    async fn guard<T>(
        &mut self,
        step: impl std::future::Future<Output = T>,
    ) -> Result<T, Interruption> {
        guard_step(&mut *self.instance, self.cancel, self.deadline, step).await
    }

    async fn sample_memory(&mut self) -> Result<MemoryRecord, String> {
        let at = Instant::now();
        let meminfo_now = memory::read_host_meminfo().ok();
        let sample = match tokio::time::timeout(MEMORY_TIMEOUT, self.instance.memory()).await {
            Ok(Ok(sample)) => sample,
            Ok(Err(error)) => return Err(format!("memory sample failed: {error}")),
            Err(_) => return Err(format!("memory sample timed out after {MEMORY_TIMEOUT:?}")),
        };
        let host_delta_bytes = match (self.meminfo_before, meminfo_now) {
            (Some(before), Some(now)) => Some(memory::host_delta_bytes(&before, &now)),
            _ => None,
        };
        let mut sample: MemorySample = sample;
        if sample.guest_view.is_none() {
            if let Some(session) = self.session.as_mut() {
                match session.guest_meminfo().await {
                    Ok(meminfo) => sample.guest_view = Some(meminfo),
                    Err(error) => tracing::warn!(%error, "failed to read guest /proc/meminfo"),
                }
            }
        }
        Ok(MemoryRecord {
            at_s: seconds_since(self.t0, at),
            host_delta_bytes,
            sample,
        })
    }

    fn record_marks(&mut self) {
        for mark in self.instance.marks() {
            self.record.events.push(EventRecord {
                name: mark.name,
                at_s: seconds_since(self.t0, mark.at),
            });
        }
        sort_events(&mut self.record.events);
    }

    fn record_ready(&mut self, ready: ReadyTimes) {
        let events = [
            ("kernel_info_reply", ready.reply_at),
            ("first_status", ready.first_status_at),
            (READY_EVENT, ready.ready_at),
        ];
        for (name, at) in events {
            self.record.events.push(EventRecord {
                name: name.into(),
                at_s: seconds_since(self.t0, at),
            });
        }
        sort_events(&mut self.record.events);
        self.record.launch_to_ready_s = Some(seconds_since(self.t0, ready.ready_at));
        self.record.ready_attempts = Some(ready.attempts);
        self.record.phases = derive_phases(self.record.kind, &self.record.events);
    }

    /// Gives the workload a moment to report an exit that explains a failed step.
    async fn exit_if_already_dead(&mut self) -> Option<ExitInfo> {
        tokio::time::timeout(Duration::from_millis(500), self.instance.wait_exit())
            .await
            .ok()
    }

    fn interrupted(&self, stage: TrialStage, interruption: Interruption) -> TrialOutcome {
        match interruption {
            // The record's stage names the step, so the cause does not repeat it.
            Interruption::Exited(exit) => {
                let cause = format!("the Jupyter kernel exited with {}", exit.status);
                failed(stage, cause, Some(exit))
            }
            Interruption::DeadlinePassed => failed(
                stage,
                format!("the trial deadline of {:?} passed", self.deadline - self.t0),
                None,
            ),
            Interruption::Cancelled => TrialOutcome::Interrupted { stage },
        }
    }
}

async fn guard_step<T>(
    instance: &mut dyn Instance,
    cancel: &Cancel,
    deadline: Instant,
    step: impl std::future::Future<Output = T>,
) -> Result<T, Interruption> {
    tokio::select! {
        output = step => Ok(output),
        exit = instance.wait_exit() => Err(Interruption::Exited(exit)),
        _ = sleep_until(deadline.into()) => Err(Interruption::DeadlinePassed),
        _ = cancel.cancelled() => Err(Interruption::Cancelled),
    }
}

/// Picks a trial's key and ports: fixed guest ports behind their own network namespace, fresh
/// free loopback ports for the `process` baseline, which shares the host's.
pub fn connection_parameters(kind: BackendKind) -> Result<(String, ChannelPorts), String> {
    let key = isobench_workload::connection::generate_key()
        .map_err(|error| format!("failed to generate the signing key: {error}"))?;
    let ports = match kind {
        BackendKind::Process => {
            // Free a moment ago: another program can take one before the Jupyter kernel binds
            // it, and the process backend then retries on new ports.
            ChannelPorts::pick_free_loopback()
                .map_err(|error| format!("failed to find free loopback ports: {error}"))?
        }
        BackendKind::Microvm | BackendKind::Docker => ChannelPorts::GUEST_DEFAULT,
    };
    Ok((key, ports))
}

fn failed(stage: TrialStage, cause: String, exit: Option<ExitInfo>) -> TrialOutcome {
    TrialOutcome::Failed { stage, cause, exit }
}

/// Seconds from `t0` to `at`, negative when `at` came first.
fn seconds_since(t0: Instant, at: Instant) -> f64 {
    match at.checked_duration_since(t0) {
        Some(after) => after.as_secs_f64(),
        None => -(t0 - at).as_secs_f64(),
    }
}

fn sort_events(events: &mut [EventRecord]) {
    events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
}
