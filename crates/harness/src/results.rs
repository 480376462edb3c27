//! The `results.json` schema: one run's host metadata, settings and every raw trial.
//!
//! The report reads only these types. A change that breaks old files raises
//! [`SCHEMA_VERSION`]; [`Results::read`] rejects files of another version with a message that
//! names both versions.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::{BackendKind, ExitInfo, MemorySample};
use crate::host::HostInfo;

/// Version of the schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Failure to read or write a results file.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// The file could not be read.
    #[error(
        "cannot read results file {path} ({error}): pass a results.json that isobench compare \
         wrote, such as reports/<timestamp>/results.json"
    )]
    Read {
        /// Path of the file.
        path: PathBuf,
        /// Underlying error.
        error: std::io::Error,
    },
    /// The file could not be written.
    #[error("cannot write {path} ({error}): check that its folder exists and is writable")]
    Write {
        /// Path of the file.
        path: PathBuf,
        /// Underlying error.
        error: std::io::Error,
    },
    /// The file is not valid JSON of this schema.
    #[error("invalid results file {path}: it is not the JSON that isobench compare writes")]
    Parse {
        /// Path of the file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The file is JSON but has no schema version, so it is not an isobench results file.
    #[error("{path} has no schema_version: it is not a results.json written by isobench compare")]
    NotResults {
        /// Path of the file.
        path: PathBuf,
    },
    /// The file was written by a build with another schema version.
    #[error(
        "results file {path} has schema version {found}, this build reads version {expected}; \
         re-run `isobench compare` or render it with the isobench version that wrote it"
    )]
    Version {
        /// Path of the file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
}

/// One run: settings, host and every trial, warm-ups included and marked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Schema version, [`SCHEMA_VERSION`] when written by this build.
    pub schema_version: u32,
    /// Settings and provenance of the run.
    pub run: RunInfo,
    /// The machine it ran on.
    pub host: HostInfo,
    /// Every trial in the order it ran.
    pub trials: Vec<TrialRecord>,
}

/// Settings and provenance of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Run id; every container, network, TAP device and cgroup of the run carries it.
    pub run_id: String,
    /// Start of the run, RFC 3339 in UTC.
    pub started_at: String,
    /// End of the run, RFC 3339 in UTC; `None` while the run is in progress.
    pub finished_at: Option<String>,
    /// Whether the run was interrupted (Ctrl-C) before every trial ran.
    pub interrupted: bool,
    /// The command line, one argument per element.
    pub command_line: Vec<String>,
    /// Version of isobench.
    pub isobench_version: String,
    /// Git revision isobench was built from, with `-dirty` when the work tree had changes.
    pub isobench_revision: Option<String>,
    /// Guest image id, the hash over its recipes.
    pub image_id: String,
    /// Trial settings.
    pub config: RunConfig,
    /// Backends that were requested or known but did not run, and why.
    pub skipped_backends: Vec<SkippedBackend>,
}

/// Trial settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Names of the backends that ran, in the order of each round.
    pub backends: Vec<String>,
    /// Measured trials per backend.
    pub trials: u32,
    /// Warm-up trials per backend, run first and left out of every figure.
    pub warmup: u32,
    /// vCPUs of the microVM and CPU limit of the container.
    pub vcpus: u32,
    /// Guest RAM of the microVM and memory limit of the container, in MiB.
    pub memory_mib: u32,
    /// Name of the cell suite.
    pub suite: String,
    /// Time allowed from `t0` to a ready Jupyter kernel, in seconds.
    pub ready_deadline_s: f64,
    /// Time allowed for a whole trial, in seconds.
    pub trial_deadline_s: f64,
    /// Pause between ready and the idle memory sample, in seconds.
    pub idle_settle_s: f64,
}

/// A backend that did not run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedBackend {
    /// Backend name.
    pub backend: String,
    /// Reason it did not run, and what would make it run.
    pub reason: String,
}

/// Execution host of a backend's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionHost {
    /// Directly on the host.
    #[default]
    Direct,
    /// Inside the emulated hardware-KVM host (QEMU TCG with nested SVM): timings are emulation
    /// times, shown apart and never used in ratios.
    Emulated,
}

/// One launch -> ready -> cells -> shutdown cycle on one backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// Backend name, such as `docker`.
    pub backend: String,
    /// Backend mechanism.
    pub kind: BackendKind,
    /// Execution host of the instance.
    #[serde(default)]
    pub execution_host: ExecutionHost,
    /// Zero-based round number, shown to users as trial `round + 1`. The trials of one round,
    /// one per backend, ran back to back, so ratios pair by it.
    pub round: u32,
    /// Whether this was a warm-up trial, run and left out of every figure.
    pub warmup: bool,
    /// Outcome of the trial.
    pub outcome: TrialOutcome,
    /// Named host instants, in seconds after `t0`, sorted by time.
    pub events: Vec<EventRecord>,
    /// Startup phases: consecutive intervals from `t0` to ready, then the concurrent ones.
    pub phases: Vec<PhaseRecord>,
    /// `t0` to ready, in seconds.
    pub launch_to_ready_s: Option<f64>,
    /// Number of `kernel_info_request` messages sent before ready.
    pub ready_attempts: Option<u32>,
    /// Memory at idle after ready.
    pub memory_idle: Option<MemoryRecord>,
    /// Memory after the suite.
    pub memory_after_suite: Option<MemoryRecord>,
    /// Per-cell timings of the suite, in suite order.
    pub cells: Vec<CellRecord>,
    /// Wall time of the whole suite, in seconds.
    pub suite_s: Option<f64>,
    /// Wall time of the Jupyter shutdown request and the instance's stop, in seconds.
    pub shutdown_s: Option<f64>,
}

impl TrialRecord {
    /// Returns whether the trial completed and counts in the figures.
    pub fn is_measured(&self) -> bool {
        !self.warmup && matches!(self.outcome, TrialOutcome::Completed)
    }

    /// Time of the named event, in seconds after `t0`.
    pub fn event(&self, name: &str) -> Option<f64> {
        self.events
            .iter()
            .find(|event| event.name == name)
            .map(|event| event.at_s)
    }
}

/// Outcome of a trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TrialOutcome {
    /// Every step ran and every cell returned its expected result.
    Completed,
    /// A step failed; the trial is kept with its cause and left out of the figures.
    Failed {
        /// Step that failed.
        stage: TrialStage,
        /// Cause of the failure, in words.
        cause: String,
        /// Exit of the workload, when it exited.
        exit: Option<ExitInfo>,
    },
    /// The run was interrupted during this trial.
    Interrupted {
        /// Step that was running.
        stage: TrialStage,
    },
}

/// Steps of a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialStage {
    /// Asking the backend to launch.
    Launch,
    /// Waiting for the Jupyter kernel to be ready.
    Ready,
    /// Sampling memory.
    Memory,
    /// Running the suite.
    Suite,
    /// Shutting down and stopping the instance.
    Shutdown,
}

impl std::fmt::Display for TrialStage {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            TrialStage::Launch => "launch",
            TrialStage::Ready => "ready",
            TrialStage::Memory => "memory",
            TrialStage::Suite => "suite",
            TrialStage::Shutdown => "shutdown",
        };
        formatter.write_str(name)
    }
}

/// A named host instant of a trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Event name, such as `init_started` or `ready`.
    pub name: String,
    /// Seconds after `t0`.
    pub at_s: f64,
}

/// A named interval of a trial's startup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseRecord {
    /// Phase name, such as `guest_kernel`.
    pub name: String,
    /// Start, in seconds after `t0`.
    pub start_s: f64,
    /// End, in seconds after `t0`.
    pub end_s: f64,
    /// Whether the phase runs alongside the consecutive phases from `t0` to ready instead of
    /// being one of them, such as the `docker` backend's `start_call`.
    #[serde(default)]
    pub concurrent: bool,
}

impl PhaseRecord {
    /// Length of the phase, in seconds.
    pub fn duration_s(&self) -> f64 {
        self.end_s - self.start_s
    }
}

/// One memory sample with the host-wide change since before launch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryRecord {
    /// Seconds after `t0` when the sample was taken.
    pub at_s: f64,
    /// Change of host `MemTotal - MemAvailable` from just before `t0` to this sample, in bytes;
    /// negative when other activity on the host freed more than the trial used.
    pub host_delta_bytes: Option<i64>,
    /// The backend's figures, each under its own definition.
    #[serde(flatten)]
    pub sample: MemorySample,
}

/// Timings of one cell of the suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellRecord {
    /// Cell name.
    pub name: String,
    /// Metric of the cell.
    pub metric: CellMetric,
    /// Wall time of each timed repetition, from `execute_request` sent to both `execute_reply`
    /// and IOPub `idle` received, in seconds.
    pub latencies_s: Vec<f64>,
    /// Bytes one repetition moves, for [`CellMetric::Throughput`].
    pub bytes_per_repetition: Option<u64>,
    /// The checked answer of the last repetition, kept for [`CellMetric::Observation`] cells
    /// (such as the kernel release seen from inside).
    pub answer: Option<String>,
}

/// Metric of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellMetric {
    /// Wall time per repetition.
    Latency,
    /// Bytes per repetition divided by its wall time.
    Throughput,
    /// A value recorded for the report; its timing is kept but not ranked.
    Observation,
}

impl Results {
    /// Reads and checks a results file.
    pub fn read(path: &Path) -> Result<Results, ResultsError> {
        let text = fs::read_to_string(path).map_err(|error| ResultsError::Read {
            path: path.to_owned(),
            error,
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ResultsError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let Some(found) = value
            .get("schema_version")
            .and_then(|version| version.as_u64())
        else {
            return Err(ResultsError::NotResults {
                path: path.to_owned(),
            });
        };
        if found != u64::from(SCHEMA_VERSION) {
            return Err(ResultsError::Version {
                path: path.to_owned(),
                found: u32::try_from(found).unwrap_or(u32::MAX),
                expected: SCHEMA_VERSION,
            });
        }
        serde_json::from_value(value).map_err(|source| ResultsError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the results as pretty JSON under a temporary name in the same folder, then
    /// renames it over `path`, so a reader never sees a partial file.
    pub fn write_atomic(&self, path: &Path) -> Result<(), ResultsError> {
        let text = serde_json::to_string_pretty(self).expect("results serialize to JSON");
        write_file_atomic(path, text.as_bytes())
    }

    /// Names of the backends in the order they first appear among the trials.
    pub fn backend_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for trial in &self.trials {
            if !names.contains(&trial.backend) {
                names.push(trial.backend.clone());
            }
        }
        names
    }
}

/// Writes `contents` to a temporary file beside `path` and renames it to `path`.
pub fn write_file_atomic(path: &Path, contents: &[u8]) -> Result<(), ResultsError> {
    let io_error = |error| ResultsError::Write {
        path: path.to_owned(),
        error,
    };
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned());
    let temporary = path.with_file_name(format!(
        ".{}.{}.tmp",
        file_name.unwrap_or_else(|| "results".into()),
        std::process::id()
    ));
    let result = (|| {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result.map_err(io_error)
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A synthetic run used by tests here and in the summary.

    use super::*;
    use crate::backend::GuestMeminfo;
    use crate::host::{DockerInfo, KvmFlavour, KvmInfo};

    /// A completed trial with plausible figures scaled by `scale`.
    pub fn trial(backend: &str, kind: BackendKind, round: u32, scale: f64) -> TrialRecord {
        let ready = 0.5 * scale + 0.01 * f64::from(round);
        TrialRecord {
            backend: backend.into(),
            kind,
            execution_host: ExecutionHost::Direct,
            round,
            warmup: false,
            outcome: TrialOutcome::Completed,
            events: vec![
                EventRecord {
                    name: "init_started".into(),
                    at_s: ready * 0.2,
                },
                EventRecord {
                    name: "exec_kernel".into(),
                    at_s: ready * 0.3,
                },
                EventRecord {
                    name: "ready".into(),
                    at_s: ready,
                },
            ],
            phases: vec![
                PhaseRecord {
                    name: "spawn".into(),
                    start_s: 0.0,
                    end_s: ready * 0.3,
                    concurrent: false,
                },
                PhaseRecord {
                    name: "kernel_ready".into(),
                    start_s: ready * 0.3,
                    end_s: ready,
                    concurrent: false,
                },
            ],
            launch_to_ready_s: Some(ready),
            ready_attempts: Some(3),
            memory_idle: Some(MemoryRecord {
                at_s: ready + 0.5,
                host_delta_bytes: Some((60.0e6 * scale) as i64),
                sample: MemorySample {
                    host_pss_bytes: Some((50.0e6 * scale) as u64),
                    guest_view: Some(GuestMeminfo {
                        mem_total_bytes: 24 << 30,
                        mem_available_bytes: 20 << 30,
                    }),
                    ..MemorySample::default()
                },
            }),
            memory_after_suite: None,
            cells: vec![CellRecord {
                name: "trivial".into(),
                metric: CellMetric::Latency,
                latencies_s: (0..20)
                    .map(|i| 0.001 * scale + 0.0001 * f64::from(i))
                    .collect(),
                bytes_per_repetition: None,
                answer: None,
            }],
            suite_s: Some(1.0),
            shutdown_s: Some(0.1),
        }
    }

    /// A run of `rounds` rounds of `process` and `docker`, plus one failed docker trial.
    pub fn results(rounds: u32) -> Results {
        let mut trials = Vec::new();
        for round in 0..rounds {
            trials.push(trial("process", BackendKind::Process, round, 1.0));
            trials.push(trial("docker", BackendKind::Docker, round, 1.6));
        }
        let mut failed = trial("docker", BackendKind::Docker, rounds, 1.6);
        failed.outcome = TrialOutcome::Failed {
            stage: TrialStage::Ready,
            cause: "Jupyter kernel exited before ready".into(),
            exit: Some(ExitInfo {
                status: "exit status 1".into(),
                oom_killed: false,
                last_output: "ModuleNotFoundError: No module named 'ipykernel'".into(),
            }),
        };
        trials.push(failed);
        Results {
            schema_version: SCHEMA_VERSION,
            run: RunInfo {
                run_id: "ib-test".into(),
                started_at: "2026-12-04T12:00:00Z".into(),
                finished_at: Some("2026-12-04T12:05:00Z".into()),
                interrupted: false,
                command_line: vec!["isobench".into(), "compare".into()],
                isobench_version: "0.1.0".into(),
                isobench_revision: Some("0123456789ab".into()),
                image_id: "abc123".into(),
                config: RunConfig {
                    backends: vec!["process".into(), "docker".into()],
                    trials: rounds,
                    warmup: 1,
                    vcpus: 1,
                    memory_mib: 512,
                    suite: "default".into(),
                    ready_deadline_s: 60.0,
                    trial_deadline_s: 300.0,
                    idle_settle_s: 0.5,
                },
                skipped_backends: vec![SkippedBackend {
                    backend: "microvm".into(),
                    reason: "host KVM is paravirtual (kvm_pvm)".into(),
                }],
            },
            host: HostInfo {
                hostname: "testhost".into(),
                cpu_model: "Test CPU".into(),
                logical_cores: 2,
                memory_total_bytes: 24 << 30,
                host_kernel: "6.1.0".into(),
                host_is_vm: true,
                hypervisor_vendor: None,
                kvm: KvmInfo {
                    flavour: KvmFlavour::Paravirtual,
                    module: Some("kvm_pvm".into()),
                    api_version: Some(12),
                },
                docker: Some(DockerInfo {
                    engine_version: "20.10.24".into(),
                    api_version: "1.41".into(),
                    cgroup_version: Some("1".into()),
                }),
            },
            trials,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip_through_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("results.json");
        let results = fixture::results(3);
        results.write_atomic(&path).unwrap();
        assert_eq!(Results::read(&path).unwrap(), results);
    }

    #[test]
    fn write_leaves_no_temporary_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("results.json");
        fixture::results(1).write_atomic(&path).unwrap();
        let names: Vec<_> = fs::read_dir(directory.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn read_rejects_other_schema_version() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("results.json");
        fs::write(&path, r#"{"schema_version": 99}"#).unwrap();
        let error = Results::read(&path).unwrap_err();
        assert!(
            matches!(error, ResultsError::Version { found: 99, .. }),
            "{error}"
        );
    }

    #[test]
    fn read_rejects_json_without_version() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("results.json");
        fs::write(&path, "{}").unwrap();
        assert!(matches!(
            Results::read(&path),
            Err(ResultsError::NotResults { .. })
        ));
    }

    #[test]
    fn read_rejects_invalid_json() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("results.json");
        fs::write(&path, "not json").unwrap();
        assert!(matches!(
            Results::read(&path),
            Err(ResultsError::Parse { .. })
        ));
    }

    #[test]
    fn failed_trial_keeps_cause_in_json() {
        let results = fixture::results(1);
        let text = serde_json::to_string(&results).unwrap();
        assert!(text.contains(r#""status":"failed""#));
        assert!(text.contains("No module named 'ipykernel'"));
    }

    #[test]
    fn measured_excludes_warmup_and_failed() {
        let results = fixture::results(2);
        let mut warmup = results.trials[0].clone();
        warmup.warmup = true;
        assert!(results.trials[0].is_measured());
        assert!(!warmup.is_measured());
        assert!(!results.trials.last().unwrap().is_measured());
    }
}
