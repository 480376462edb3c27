//! Flag checks and backend creation shared by `isobench run` and `isobench compare`, so both
//! commands reject the same values with the same messages and create each backend alike.

use std::path::Path;
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

/// Trial flags as given on the command line; `memory_flag` names the memory flag in messages.
pub struct TrialFlags<'a> {
    /// `--trials`.
    pub trials: u32,
    /// `--vcpus`.
    pub vcpus: u32,
    /// The memory flag's value, in MiB.
    pub memory_mib: u32,
    /// The memory flag's name, such as `--memory-mib`.
    pub memory_flag: &'a str,
    /// `--ready-deadline`, in seconds.
    pub ready_deadline_s: f64,
    /// `--trial-deadline`, in seconds.
    pub trial_deadline_s: f64,
    /// `--suite`.
    pub suite: Option<&'a Path>,
}

/// Trial settings checked and resolved from [`TrialFlags`].
pub struct TrialLimits {
    /// Time allowed from launch to a ready Jupyter kernel.
    pub ready_deadline: Duration,
    /// Time allowed for one whole trial.
    pub trial_deadline: Duration,
    /// The cell suite: the file's, or the embedded default.
    pub suite: Suite,
}

impl TrialFlags<'_> {
    /// Checks every value and loads the suite. Each error names the flag, its value and the
    /// range it must be in.
    pub fn check(&self) -> anyhow::Result<TrialLimits> {
        if self.trials == 0 {
            anyhow::bail!("invalid --trials 0: run at least 1 measured trial per backend");
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            anyhow::bail!("invalid --vcpus {}: use 1 to {MAX_VCPUS}", self.vcpus);
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            anyhow::bail!(
                "invalid {} {}: the Jupyter kernel needs at least {MIN_MEMORY_MIB} MiB",
                self.memory_flag,
                self.memory_mib
            );
        }
        let ready_deadline = seconds("--ready-deadline", self.ready_deadline_s)?;
        let trial_deadline = seconds("--trial-deadline", self.trial_deadline_s)?;
        if trial_deadline < ready_deadline {
            anyhow::bail!(
                "invalid --trial-deadline {}: it must be at least --ready-deadline {}",
                self.trial_deadline_s,
                self.ready_deadline_s
            );
        }
        let suite = match self.suite {
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

    fn flags() -> TrialFlags<'static> {
        TrialFlags {
            trials: 3,
            vcpus: 1,
            memory_mib: 1024,
            memory_flag: "--memory-mib",
            ready_deadline_s: 60.0,
            trial_deadline_s: 300.0,
            suite: None,
        }
    }

    fn error(flags: TrialFlags<'_>) -> String {
        match flags.check() {
            Ok(_) => panic!("the flags were accepted"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn valid_flags_resolve() {
        let limits = flags().check().unwrap();
        assert_eq!(limits.ready_deadline, Duration::from_secs(60));
        assert_eq!(limits.trial_deadline, Duration::from_secs(300));
        assert_eq!(limits.suite.name, Suite::default_suite().name);
    }

    #[test]
    fn invalid_values_name_their_flag() {
        let cases = [
            (
                TrialFlags {
                    trials: 0,
                    ..flags()
                },
                "invalid --trials 0",
            ),
            (
                TrialFlags {
                    vcpus: 0,
                    ..flags()
                },
                "invalid --vcpus 0",
            ),
            (
                TrialFlags {
                    vcpus: 33,
                    ..flags()
                },
                "invalid --vcpus 33",
            ),
            (
                TrialFlags {
                    memory_mib: 16,
                    memory_flag: "--memory",
                    ..flags()
                },
                "invalid --memory 16",
            ),
            (
                TrialFlags {
                    ready_deadline_s: f64::NAN,
                    ..flags()
                },
                "invalid --ready-deadline NaN",
            ),
            (
                TrialFlags {
                    trial_deadline_s: 10.0,
                    ..flags()
                },
                "invalid --trial-deadline 10",
            ),
        ];
        for (flags, expected) in cases {
            let message = error(flags);
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
