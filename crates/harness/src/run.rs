//! The run loop: rounds of trials, backends interleaved within each round (A B C A B C ...),
//! warm-up rounds first and marked, results written after every trial.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::backend::Backend;
use crate::cancel::Cancel;
use crate::host::rfc3339_utc;
use crate::results::{ExecutionHost, Results, ResultsError, TrialRecord};
use crate::trial::{run_trial, TrialObserver, TrialSettings, TrialSlot};
use crate::workload::Workload;

/// A backend taking part in a run.
#[derive(Clone)]
pub struct PlannedBackend {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// Execution host of its instances.
    pub execution_host: ExecutionHost,
}

/// Plan of a run: backends, rounds and trial settings.
pub struct RunPlan {
    /// Backends in the order of each round.
    pub backends: Vec<PlannedBackend>,
    /// Measured rounds.
    pub trials: u32,
    /// Warm-up rounds, run first and left out of every figure.
    pub warmup: u32,
    /// Settings of every trial.
    pub settings: TrialSettings,
    /// Path of `results.json`, rewritten after every trial; `None` keeps results in memory.
    pub results_path: Option<PathBuf>,
}

/// Progress callbacks of a run.
pub trait RunObserver: TrialObserver {
    /// Reports that a trial starts.
    fn trial_started(&self, _backend: &str, _round: u32, _warmup: bool) {}
    /// Reports that a trial ended, successfully or not.
    fn trial_finished(&self, _record: &TrialRecord) {}
}

/// Runs every round of `plan`, appending each trial to `results` and writing it out.
///
/// On cancellation the current trial ends, its instance is stopped, and no further trial
/// starts. The trials finished so far stay in `results` and in the file, which is marked
/// interrupted.
pub async fn run(
    plan: &RunPlan,
    workload: &dyn Workload,
    results: &mut Results,
    cancel: &Cancel,
    observer: &dyn RunObserver,
) -> Result<(), ResultsError> {
    for planned in &plan.backends {
        if let Err(error) = planned.backend.sweep().await {
            tracing::warn!(backend = planned.backend.name(), %error, "sweep of leftovers failed");
        }
    }

    let outcome = run_rounds(plan, workload, results, cancel, observer).await;

    // Every backend cleans up what it kept across trials, also after an error or Ctrl-C.
    for planned in &plan.backends {
        if let Err(error) = planned.backend.finish().await {
            let backend = planned.backend.name();
            tracing::error!(backend, %error, "cleanup after the run failed");
        }
    }
    outcome?;

    results.run.interrupted = cancel.is_cancelled();
    results.run.finished_at = Some(rfc3339_utc(SystemTime::now()));
    write(plan, results)
}

async fn run_rounds(
    plan: &RunPlan,
    workload: &dyn Workload,
    results: &mut Results,
    cancel: &Cancel,
    observer: &dyn RunObserver,
) -> Result<(), ResultsError> {
    let rounds = (0..plan.warmup)
        .map(|round| (round, true))
        .chain((0..plan.trials).map(|round| (round, false)));
    let mut sequence = 0;
    for (round, warmup) in rounds {
        for planned in &plan.backends {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let name = planned.backend.name();
            observer.trial_started(&name, round, warmup);
            let slot = TrialSlot {
                sequence,
                round,
                warmup,
                execution_host: planned.execution_host,
            };
            sequence += 1;
            let record = run_trial(
                &planned.backend,
                workload,
                &plan.settings,
                slot,
                cancel,
                observer,
            )
            .await;
            // The observer prints the failure to the user, so the log keeps it at debug level
            // and the command line shows each failed trial once.
            if let crate::results::TrialOutcome::Failed { stage, cause, .. } = &record.outcome {
                tracing::debug!(backend = name, round, warmup, %stage, cause, "trial failed");
            }
            observer.trial_finished(&record);
            results.trials.push(record);
            write(plan, results)?;
        }
    }
    Ok(())
}

fn write(plan: &RunPlan, results: &Results) -> Result<(), ResultsError> {
    match &plan.results_path {
        Some(path) => results.write_atomic(path),
        None => Ok(()),
    }
}
