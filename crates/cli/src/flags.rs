//! Flag checks and backend creation shared by `isobench run` and `isobench compare`, so both
//! commands reject the same values with the same messages and create each backend alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use isobench_harness::backend::docker::{DockerBackend, DockerOptions};
use isobench_harness::backend::microvm::MicrovmBackend;
use isobench_harness::backend::process::ProcessBackend;
use isobench_harness::backend::{Backend, BackendKind};
use isobench_harness::host::DockerInfo;
use isobench_workload::Suite;

/// Smallest guest RAM or container limit that runs the Jupyter kernel with numpy, in MiB.
pub const MIN_MEMORY_MIB: u32 = 256;

/// Largest `--vcpus`: the microVM's vCPU limit.
pub const MAX_VCPUS: u32 = 32;

/// Backends a command line can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// No isolation: the root filesystem under chroot, the baseline.
    Process,
    /// A container run by the Docker Engine.
    Docker,
    /// The guest kernel in isobench's own KVM microVM.
    Microvm,
}

impl From<BackendArg> for BackendKind {
    fn from(arg: BackendArg) -> BackendKind {
        match arg {
            BackendArg::Process => BackendKind::Process,
            BackendArg::Docker => BackendKind::Docker,
            BackendArg::Microvm => BackendKind::Microvm,
        }
    }
}

/// Flags that set each trial's limits, the same in `isobench run` and `isobench compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Cell suite file (TOML) to run instead of the embedded default suite.
    #[arg(long, value_name = "FILE")]
    pub suite: Option<PathBuf>,
    /// vCPUs of the microVM and CPU limit of the container; the process backend ignores it.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Guest RAM of the microVM and memory limit of the container, in MiB; the process backend
    /// ignores it.
    #[arg(long, alias = "memory", default_value_t = 1024, value_name = "MIB")]
    pub memory_mib: u32,
    /// Time allowed from launch to a ready Jupyter kernel, in seconds.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub ready_deadline: f64,
}

/// Trial settings checked and resolved from the command line.
pub struct TrialLimits {
    /// Time allowed from launch to a ready Jupyter kernel.
    pub ready_deadline: Duration,
    /// Time allowed for one whole trial.
    pub trial_deadline: Duration,
    /// The cell suite: the file's, or the embedded default.
    pub suite: Suite,
}

/// Returns the host's RAM in MiB (`MemTotal` in `/proc/meminfo`), or `None` when it cannot be
/// read.
fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

impl LimitArgs {
    /// Checks these flags with the command's `--trials` and `--trial-deadline` (in seconds),
    /// and loads the suite. Each error names the flag, its value and the range it must be in.
    pub fn check(&self, trials: u32, trial_deadline_s: f64) -> anyhow::Result<TrialLimits> {
        if trials == 0 {
            anyhow::bail!("invalid --trials 0: run at least 1 measured trial per backend");
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            anyhow::bail!("invalid --vcpus {}: use 1 to {MAX_VCPUS}", self.vcpus);
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            anyhow::bail!(
                "invalid --memory-mib {}: the Jupyter kernel needs at least {MIN_MEMORY_MIB} MiB",
                self.memory_mib
            );
        }
        if let Some(host_mib) = host_memory_mib() {
            if u64::from(self.memory_mib) > host_mib {
                anyhow::bail!(
                    "invalid --memory-mib {}: this host has {host_mib} MiB of RAM; use at most that",
                    self.memory_mib
                );
            }
        }
        let ready_deadline = seconds("--ready-deadline", self.ready_deadline)?;
        let trial_deadline = seconds("--trial-deadline", trial_deadline_s)?;
        if trial_deadline < ready_deadline {
            anyhow::bail!(
                "invalid --trial-deadline {trial_deadline_s}: it must be at least \
                 --ready-deadline {}",
                self.ready_deadline
            );
        }
        let suite = match &self.suite {
            Some(path) => Suite::from_file(path)?,
            None => Suite::default_suite(),
        };
        Ok(TrialLimits {
            ready_deadline,
            trial_deadline,
            suite,
        })
    }
}

fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    if !(value.is_finite() && value > 0.0) {
        anyhow::bail!("invalid {flag} {value}: use a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(value))
}

/// A backend created on this host, with the Docker engine's versions for `docker`.
pub struct CreatedBackend {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// Engine and API versions when the backend is `docker`.
    pub docker: Option<DockerInfo>,
}

/// Creates the backend of `kind` on this host's own kernel or KVM after checking that it can
/// run. Whether the microVM should run on this host's kind of KVM is the caller's decision.
/// Returns the reason as text when the backend is unavailable.
pub async fn create_direct_backend(kind: BackendKind) -> Result<CreatedBackend, String> {
    match kind {
        BackendKind::Process => {
            ProcessBackend::check_available().map_err(|error| error.to_string())?;
            Ok(CreatedBackend {
                backend: Arc::new(ProcessBackend::new()),
                docker: None,
            })
        }
        BackendKind::Docker => {
            let docker = DockerBackend::connect(DockerOptions::default())
                .await
                .map_err(|error| error.to_string())?;
            let version = docker.engine_version();
            let info = DockerInfo {
                engine_version: version.engine.clone(),
                api_version: version.api.clone(),
                cgroup_version: Some(host_cgroup_version().into()),
            };
            Ok(CreatedBackend {
                backend: Arc::new(docker),
                docker: Some(info),
            })
        }
        BackendKind::Microvm => {
            MicrovmBackend::check_available().map_err(|error| error.to_string())?;
            let backend = MicrovmBackend::new().map_err(|error| error.to_string())?;
            Ok(CreatedBackend {
                backend: Arc::new(backend),
                docker: None,
            })
        }
    }
}

/// cgroup version the host mounts at `/sys/fs/cgroup`, which the Docker engine follows: `2`
/// for the unified hierarchy, `1` for the legacy or hybrid layout.
fn host_cgroup_version() -> &'static str {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "2"
    } else {
        "1"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitArgs {
        LimitArgs {
            suite: None,
            vcpus: 1,
            memory_mib: 1024,
            ready_deadline: 60.0,
        }
    }

    fn error(limits: LimitArgs, trials: u32, trial_deadline_s: f64) -> String {
        match limits.check(trials, trial_deadline_s) {
            Ok(_) => panic!("the flags were accepted"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn valid_flags_resolve() {
        let limits = limits().check(3, 300.0).unwrap();
        assert_eq!(limits.ready_deadline, Duration::from_secs(60));
        assert_eq!(limits.trial_deadline, Duration::from_secs(300));
        assert_eq!(limits.suite.name, Suite::default_suite().name);
    }

    #[test]
    fn invalid_values_name_their_flag() {
        let cases = [
            (limits(), 0, 300.0, "invalid --trials 0"),
            (
                LimitArgs {
                    vcpus: 0,
                    ..limits()
                },
                3,
                300.0,
                "invalid --vcpus 0",
            ),
            (
                LimitArgs {
                    vcpus: 33,
                    ..limits()
                },
                3,
                300.0,
                "invalid --vcpus 33",
            ),
            (
                LimitArgs {
                    memory_mib: 16,
                    ..limits()
                },
                3,
                300.0,
                "invalid --memory-mib 16",
            ),
            (
                LimitArgs {
                    memory_mib: u32::MAX,
                    ..limits()
                },
                3,
                300.0,
                "invalid --memory-mib 4294967295: this host has",
            ),
            (
                LimitArgs {
                    ready_deadline: f64::NAN,
                    ..limits()
                },
                3,
                300.0,
                "invalid --ready-deadline NaN",
            ),
            (limits(), 3, 10.0, "invalid --trial-deadline 10"),
            (limits(), 3, -1.0, "invalid --trial-deadline -1"),
        ];
        for (limits, trials, trial_deadline_s, expected) in cases {
            let message = error(limits, trials, trial_deadline_s);
            assert!(message.starts_with(expected), "{message}");
        }
    }

    #[test]
    fn backend_args_map_to_kinds() {
        assert_eq!(BackendKind::from(BackendArg::Process), BackendKind::Process);
        assert_eq!(BackendKind::from(BackendArg::Docker), BackendKind::Docker);
        assert_eq!(BackendKind::from(BackendArg::Microvm), BackendKind::Microvm);
    }
}
