//! Stop requests (Ctrl-C, SIGTERM, SIGHUP) and the lines printed after one: which trials an
//! interrupted run finished and kept.
//!
//! Warm-ups are not trials: they run first, are left out of every figure, and are reported
//! apart from the measured trials.

use std::io::Write as _;
use std::os::fd::AsRawFd as _;

use isobench_harness::results::{ExecutionHost, Results, TrialOutcome, TrialRecord};
use isobench_harness::summary::trial_name;
use tokio::signal::unix::{signal, SignalKind};

/// Waits for Ctrl-C (SIGINT), SIGTERM or SIGHUP (the terminal closed), the stop requests after
/// which a run cleans up and exits. Returns the signal's name, or `None` when no handler could
/// be installed.
pub async fn stop_requested() -> Option<&'static str> {
    let (Ok(mut terminate), Ok(mut hangup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return tokio::signal::ctrl_c().await.ok().map(|()| "SIGINT");
    };
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.ok().map(|()| "SIGINT"),
        _ = terminate.recv() => Some("SIGTERM"),
        _ = hangup.recv() => {
            let _ = writeln!(std::io::stderr(), "isobench: terminal closed (SIGHUP)");
            detach_from_terminal();
            Some("SIGHUP")
        }
    }
}

/// Points standard output and error at `/dev/null`. After SIGHUP the terminal is gone, so
/// every later write to it would fail, and `eprintln!` would panic in the middle of cleanup.
fn detach_from_terminal() {
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
        return;
    };
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 only replaces descriptor `fd` with a copy of `null`, which stays open
        // for the call. Rust's standard output and error handles keep using the same numbers.
        unsafe {
            libc::dup2(null.as_raw_fd(), fd);
        }
    }
}

/// Returns one line per backend saying how many of its planned trials finished and are kept
/// in `results.json`, and how many warm-ups finished, preceded by a line naming the trial that
/// Ctrl-C stopped.
pub fn kept_trials(results: &Results) -> Vec<String> {
    let mut lines = vec![interrupted_at(results)];
    for backend in backend_names(results) {
        let trials: Vec<&TrialRecord> = results
            .trials
            .iter()
            .filter(|trial| trial.backend == backend)
            .collect();
        lines.push(backend_line(results, &backend, &trials));
    }
    lines
}

/// Planned measured trials of a backend: the run's `--trials`, or for the emulated host the
/// trials it actually ran, because it runs fewer.
pub fn planned_trials(results: &Results, trials: &[&TrialRecord]) -> usize {
    let emulated = trials
        .iter()
        .any(|trial| trial.execution_host == ExecutionHost::Emulated);
    if emulated {
        trials.iter().filter(|trial| !trial.warmup).count()
    } else {
        results.run.config.trials as usize
    }
}

fn interrupted_at(results: &Results) -> String {
    let stopped = results
        .trials
        .iter()
        .find_map(|trial| match &trial.outcome {
            TrialOutcome::Interrupted { stage } => Some((trial, stage)),
            _ => None,
        });
    match stopped {
        Some((trial, stage)) => format!(
            "interrupted during {} at the {stage} step, which is not kept in any figure",
            trial_name(&trial.backend, trial.round, trial.warmup)
        ),
        None => "interrupted between two trials".to_owned(),
    }
}

fn backend_line(results: &Results, backend: &str, trials: &[&TrialRecord]) -> String {
    let planned = planned_trials(results, trials);
    let measured = trials.iter().filter(|trial| !trial.warmup);
    let completed = measured
        .clone()
        .filter(|trial| matches!(trial.outcome, TrialOutcome::Completed))
        .count();
    let failed = measured
        .filter(|trial| matches!(trial.outcome, TrialOutcome::Failed { .. }))
        .count();
    let warmups_finished = trials
        .iter()
        .filter(|trial| trial.warmup && !matches!(trial.outcome, TrialOutcome::Interrupted { .. }))
        .count();
    let warmups_planned = results.run.config.warmup;

    let mut line = format!("{backend}: {completed} of {planned} trials completed and kept");
    if failed > 0 {
        line.push_str(&format!(", {failed} failed and kept with their cause"));
    }
    let emulated = trials
        .iter()
        .any(|trial| trial.execution_host == ExecutionHost::Emulated);
    if warmups_planned > 0 && !emulated {
        line.push_str(&format!(
            "; {warmups_finished} of {warmups_planned} warm-ups finished, left out of every \
             figure"
        ));
    }
    line
}

/// Backend names in run order: the configured ones, then any that only the trials name.
fn backend_names(results: &Results) -> Vec<String> {
    let mut names = results.run.config.backends.clone();
    for trial in &results.trials {
        if !names.contains(&trial.backend) {
            names.push(trial.backend.clone());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use isobench_harness::backend::BackendKind;
    use isobench_harness::host::HostInfo;
    use isobench_harness::results::{RunConfig, RunInfo, TrialStage, SCHEMA_VERSION};

    use super::*;

    fn trial(backend: &str, kind: BackendKind, round: u32, warmup: bool) -> TrialRecord {
        TrialRecord {
            backend: backend.into(),
            kind,
            execution_host: ExecutionHost::Direct,
            round,
            warmup,
            outcome: TrialOutcome::Completed,
            events: Vec::new(),
            phases: Vec::new(),
            launch_to_ready_s: Some(0.5),
            ready_attempts: Some(3),
            memory_idle: None,
            memory_after_suite: None,
            cells: Vec::new(),
            suite_s: Some(2.0),
            shutdown_s: Some(0.1),
        }
    }

    /// Builds a run of process and docker with 3 planned trials and 1 warm-up each, cut after
    /// `finished` records and with the next one interrupted at the ready step.
    fn interrupted_run(finished: usize) -> Results {
        let order = [
            ("process", BackendKind::Process, 0, true),
            ("docker", BackendKind::Docker, 0, true),
            ("process", BackendKind::Process, 0, false),
            ("docker", BackendKind::Docker, 0, false),
            ("process", BackendKind::Process, 1, false),
        ];
        let mut trials = Vec::new();
        for (index, (name, kind, round, warmup)) in order.into_iter().enumerate() {
            if index > finished {
                break;
            }
            let mut record = trial(name, kind, round, warmup);
            if index == finished {
                record.outcome = TrialOutcome::Interrupted {
                    stage: TrialStage::Ready,
                };
            }
            trials.push(record);
        }
        Results {
            schema_version: SCHEMA_VERSION,
            run: RunInfo {
                run_id: "ib-test".into(),
                started_at: "2026-12-04T17:00:00Z".into(),
                finished_at: None,
                interrupted: true,
                command_line: Vec::new(),
                isobench_version: "0.1.0".into(),
                isobench_revision: None,
                image_id: "test".into(),
                config: RunConfig {
                    backends: vec!["process".into(), "docker".into()],
                    trials: 3,
                    warmup: 1,
                    vcpus: 1,
                    memory_mib: 1024,
                    suite: "default".into(),
                    ready_deadline_s: 60.0,
                    trial_deadline_s: 300.0,
                    idle_settle_s: 0.5,
                },
                skipped_backends: Vec::new(),
            },
            host: HostInfo::collect(None),
            trials,
        }
    }

    #[test]
    fn warmup_interrupt_keeps_no_trial() {
        let lines = kept_trials(&interrupted_run(0));
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("interrupted during process warm-up 1 at the ready step"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("process: 0 of 3 trials completed and kept; 0 of 1 warm-ups"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].starts_with("docker: 0 of 3 trials completed and kept"),
            "{}",
            lines[2]
        );
        assert!(
            lines[2].contains("0 of 1 warm-ups finished"),
            "{}",
            lines[2]
        );
        assert!(lines.iter().all(|line| !line.contains("0 of 0")));
    }

    #[test]
    fn trial_interrupt_counts_finished_ones() {
        let lines = kept_trials(&interrupted_run(4));
        assert!(
            lines[0].starts_with("interrupted during process trial 2"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("process: 1 of 3 trials completed and kept; 1 of 1 warm-ups"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].starts_with("docker: 1 of 3 trials completed and kept; 1 of 1 warm-ups"),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn failed_trials_are_counted_apart() {
        let mut results = interrupted_run(4);
        results.trials[2].outcome = TrialOutcome::Failed {
            stage: TrialStage::Suite,
            cause: "cell numpy_matmul returned a wrong result".into(),
            exit: None,
        };
        let lines = kept_trials(&results);
        assert!(
            lines[1].starts_with("process: 0 of 3 trials completed and kept, 1 failed"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn interrupt_between_trials_is_named() {
        let mut results = interrupted_run(4);
        results.trials.pop();
        assert_eq!(kept_trials(&results)[0], "interrupted between two trials");
    }
}
