//! Flag checks and backend creation shared by `isobench run` and `isobench compare`, so both
//! commands reject the same values with the same messages and create each backend alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use isobench_harness::backend::docker::{DockerBackend, DockerOptions};
use isobench_harness::backend::microvm::MicrovmBackend;
use isobench_harness::backend::process::ProcessBackend;
use isobench_harness::backend::{Backend, BackendKind};
use isobench_harness::defaults;
use isobench_harness::host::DockerInfo;
use isobench_workload::Suite;

/// Smallest guest RAM or container limit that runs the Jupyter kernel with numpy, in MiB.
pub const MIN_MEMORY_MIB: u32 = 256;

/// Maximum `--trials` and `--warmup`. A trial takes about half a second at the least, so this
/// many take days. The cap keeps trial counts summed over backends within `u32`.
pub const MAX_TRIALS: u32 = 1_000_000;

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

impl BackendArg {
    /// Returns the name as the command line spells it, such as `docker`.
    pub fn name(self) -> &'static str {
        match self {
            BackendArg::Process => "process",
            BackendArg::Docker => "docker",
            BackendArg::Microvm => "microvm",
        }
    }
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
    #[arg(long, allow_negative_numbers = true, default_value_t = defaults::VCPUS)]
    pub vcpus: u32,
    /// Guest RAM of the microVM and memory limit of the container, in MiB; the process backend
    /// ignores it.
    #[arg(
        long,
        allow_negative_numbers = true,
        alias = "memory",
        default_value_t = defaults::MEMORY_MIB,
        value_name = "MIB"
    )]
    pub memory_mib: u32,
    /// Time allowed from launch to a ready Jupyter kernel, in seconds.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = defaults::READY_DEADLINE.as_secs_f64(),
        value_name = "SECONDS"
    )]
    pub ready_deadline: f64,
}

/// Trial settings checked and resolved from the command line.
pub struct TrialLimits {
    /// Measured trials per backend.
    pub trials: u32,
    /// Warm-up trials per backend.
    pub warmup: u32,
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
    /// Checks these flags with the command's `--trials`, `--warmup` and `--trial-deadline` (in
    /// seconds), and loads the suite. Each error names the flag, its value and the range it
    /// must be in.
    pub fn check(
        &self,
        trials: u64,
        warmup: u64,
        trial_deadline_s: f64,
    ) -> anyhow::Result<TrialLimits> {
        if trials == 0 {
            anyhow::bail!("invalid --trials 0: run at least 1 measured trial per backend");
        }
        let Some(trials) = trial_count(trials) else {
            anyhow::bail!("invalid --trials {trials}: use 1 to {MAX_TRIALS}");
        };
        let Some(warmup) = trial_count(warmup) else {
            anyhow::bail!("invalid --warmup {warmup}: use 0 to {MAX_TRIALS}");
        };
        // The same limit and message as `isobench-vmm` and `isobench vm boot`.
        isobench_vmm::config::check_vcpus(self.vcpus)?;
        check_memory_mib("--memory-mib", self.memory_mib)?;
        let ready_deadline = check_seconds("--ready-deadline", self.ready_deadline)?;
        let trial_deadline = check_seconds("--trial-deadline", trial_deadline_s)?;
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
            trials,
            warmup,
            ready_deadline,
            trial_deadline,
            suite,
        })
    }
}

/// Returns `count` as a trial count, or `None` above [`MAX_TRIALS`].
fn trial_count(count: u64) -> Option<u32> {
    u32::try_from(count)
        .ok()
        .filter(|&count| count <= MAX_TRIALS)
}

/// Checks `--vcpus` against the CPUs of this host when the `docker` backend runs, because the
/// Docker engine rejects a CPU limit above them at container create (engine 20.10: "Range of
/// CPUs is from 0.01 to 2.00, as there are only 2 CPUs available"). The count is the CPUs this
/// process may run on, which matches the engine's own count unless the two have different CPU
/// affinities.
pub fn check_docker_vcpus(vcpus: u32) -> anyhow::Result<()> {
    let Ok(cpus) = std::thread::available_parallelism() else {
        return Ok(());
    };
    let cpus = cpus.get();
    if vcpus as usize > cpus {
        anyhow::bail!(
            "invalid --vcpus {vcpus}: the docker backend's CPU limit cannot exceed this host's \
             {cpus} CPUs; use at most {cpus}, or leave docker out of --backends"
        );
    }
    Ok(())
}

/// Checks an output folder flag (`--out`) before anything slow runs: the folder must be new or
/// empty, and the folder that will contain it must exist and be writable. With
/// `create_parents`, missing parent folders are allowed, because they are created with it (the
/// default folder under `reports/`). Creates nothing: the write check creates and removes a
/// probe.
pub fn check_out_dir(flag: &str, dir: &Path, create_parents: bool) -> anyhow::Result<()> {
    check_folder(flag, dir, true, create_parents)
}

/// Checks the output folder of `isobench report`, which re-renders into a folder that may hold
/// an earlier report: the folder must be a folder if it exists, and be writable or creatable.
/// Creates nothing.
pub fn check_report_dir(flag: &str, dir: &Path) -> anyhow::Result<()> {
    check_folder(flag, dir, false, true)
}

/// Checks output folder `dir`, which must be empty if it exists and `must_be_empty` is set.
fn check_folder(
    flag: &str,
    dir: &Path,
    must_be_empty: bool,
    create_parents: bool,
) -> anyhow::Result<()> {
    let shown = dir.display();
    let wanted = if must_be_empty {
        "a new or empty folder"
    } else {
        "a folder"
    };
    if dir.as_os_str().is_empty() {
        anyhow::bail!("invalid {flag} \"\": pass a folder name");
    }
    match std::fs::metadata(dir) {
        Ok(metadata) if !metadata.is_dir() => {
            anyhow::bail!("invalid {flag} {shown}: it is a file, not a folder; pass {wanted}")
        }
        Ok(_) if must_be_empty => {
            let mut entries = std::fs::read_dir(dir).map_err(|error| {
                anyhow::anyhow!(
                    "invalid {flag} {shown}: the folder cannot be read ({error}); pass another \
                     folder"
                )
            })?;
            if entries.next().is_some() {
                anyhow::bail!(
                    "invalid {flag} {shown}: the folder exists and is not empty; pass {wanted}"
                );
            }
            probe_writable(flag, dir, dir)
        }
        Ok(_) => probe_writable(flag, dir, dir),
        Err(error) if is_absent(&error) => {
            let parent = existing_parent(flag, dir, create_parents)?;
            probe_writable(flag, dir, &parent)
        }
        Err(error) => anyhow::bail!("invalid {flag} {shown}: {error}; pass another folder"),
    }
}

/// Checks an output file flag (`--results`) before anything slow runs: the file must not exist
/// yet, and its folder must exist and be writable. Creates nothing.
pub fn check_new_file(flag: &str, file: &Path) -> anyhow::Result<()> {
    let shown = file.display();
    if file.as_os_str().is_empty() {
        anyhow::bail!("invalid {flag} \"\": pass a file name");
    }
    match std::fs::metadata(file) {
        Ok(metadata) if metadata.is_dir() => anyhow::bail!(
            "invalid {flag} {shown}: it is a folder; pass a file name such as {}",
            file.join("results.json").display()
        ),
        Ok(_) => anyhow::bail!(
            "invalid {flag} {shown}: the file exists; pass a new file name or remove it"
        ),
        Err(error) if is_absent(&error) => {
            let parent = existing_parent(flag, file, false)?;
            probe_writable(flag, file, &parent)
        }
        Err(error) => anyhow::bail!("invalid {flag} {shown}: {error}; pass another file name"),
    }
}

/// Returns whether a path lookup failed because the path or a folder on it does not exist
/// (`ENOENT`), or because a file is where a folder on it should be (`ENOTDIR`).
fn is_absent(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// Returns the folder that will contain `path`: its parent, which must exist, or with
/// `create_parents` its nearest ancestor that exists.
fn existing_parent(flag: &str, path: &Path, create_parents: bool) -> anyhow::Result<PathBuf> {
    let shown = path.display();
    let mut parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    loop {
        match std::fs::metadata(&parent) {
            Ok(metadata) if metadata.is_dir() => return Ok(parent),
            Ok(_) => anyhow::bail!(
                "invalid {flag} {shown}: {} is a file, not a folder; pass another path",
                parent.display()
            ),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && create_parents => {
                match parent.parent() {
                    Some(next) if !next.as_os_str().is_empty() => parent = next.to_path_buf(),
                    _ => parent = PathBuf::from("."),
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
                "invalid {flag} {shown}: its folder {} does not exist; create it first or pass \
                 another path",
                parent.display()
            ),
            Err(error) => anyhow::bail!(
                "invalid {flag} {shown}: {} cannot be read ({error}); pass another path",
                parent.display()
            ),
        }
    }
}

/// Creates and removes a probe folder in `folder`, so a read-only file system or missing
/// permission is reported before the run instead of after its first trial.
fn probe_writable(flag: &str, path: &Path, folder: &Path) -> anyhow::Result<()> {
    let probe = folder.join(format!(".isobench-write-check-{}", std::process::id()));
    match std::fs::create_dir(&probe) {
        Ok(()) => {
            let _ = std::fs::remove_dir(&probe);
            Ok(())
        }
        // Creating it failed only because it exists, so the folder is writable.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => anyhow::bail!(
            "invalid {flag} {}: cannot write into {} ({error}); pass a writable path",
            path.display(),
            folder.display()
        ),
    }
}

/// Largest time limit accepted, in seconds: 10^9 s is about 31 years, far beyond any trial, and
/// small enough for a `Duration` and for adding margins to it.
const MAX_SECONDS: f64 = 1e9;

/// Checks a time limit flag given in seconds and converts it.
pub fn check_seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    if !(value.is_finite() && value > 0.0 && value <= MAX_SECONDS) {
        anyhow::bail!(
            "invalid {flag} {value}: use a positive number of seconds, at most {MAX_SECONDS}"
        );
    }
    Ok(Duration::from_secs_f64(value))
}

/// Checks a guest RAM or container memory limit flag, in MiB: at least what the Jupyter kernel
/// needs, and at most the host's RAM.
pub fn check_memory_mib(flag: &str, mib: u32) -> anyhow::Result<()> {
    if mib < MIN_MEMORY_MIB {
        anyhow::bail!(
            "invalid {flag} {mib}: the Jupyter kernel needs at least {MIN_MEMORY_MIB} MiB"
        );
    }
    if let Some(host_mib) = host_memory_mib() {
        if u64::from(mib) > host_mib {
            anyhow::bail!(
                "invalid {flag} {mib}: this host has {host_mib} MiB of RAM; use at most that"
            );
        }
    }
    Ok(())
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

    fn error(limits: LimitArgs, trials: u64, trial_deadline_s: f64) -> String {
        match limits.check(trials, 1, trial_deadline_s) {
            Ok(_) => panic!("the flags were accepted"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn huge_warmup_is_rejected() {
        let message = match limits().check(3, 99_999_999_999, 300.0) {
            Ok(_) => panic!("--warmup 99999999999 was accepted"),
            Err(error) => error.to_string(),
        };
        assert_eq!(message, "invalid --warmup 99999999999: use 0 to 1000000");
    }

    #[test]
    fn max_vcpus_is_accepted() {
        let max = LimitArgs {
            vcpus: isobench_vmm::config::MAX_VCPUS,
            ..limits()
        };
        assert!(max.check(3, 1, 300.0).is_ok());
    }

    #[test]
    fn docker_vcpus_above_host_cpus_rejected() {
        let cpus = std::thread::available_parallelism().unwrap().get() as u32;
        assert!(check_docker_vcpus(cpus).is_ok());
        let message = check_docker_vcpus(cpus + 1).unwrap_err().to_string();
        let expected = format!(
            "invalid --vcpus {}: the docker backend's CPU limit",
            cpus + 1
        );
        assert!(message.starts_with(&expected), "{message}");
        assert!(message.ends_with(&format!(
            "use at most {cpus}, or leave docker out of --backends"
        )));
    }

    #[test]
    fn valid_flags_resolve() {
        let limits = limits().check(3, 1, 300.0).unwrap();
        assert_eq!(limits.ready_deadline, Duration::from_secs(60));
        assert_eq!(limits.trial_deadline, Duration::from_secs(300));
        assert_eq!(limits.suite.name, Suite::default_suite().name);
    }

    #[test]
    fn invalid_values_name_their_flag() {
        let cases = [
            (limits(), 0, 300.0, "invalid --trials 0"),
            (
                limits(),
                u64::from(MAX_TRIALS) + 1,
                300.0,
                "invalid --trials 1000001: use 1 to 1000000",
            ),
            (
                limits(),
                99_999_999_999,
                300.0,
                "invalid --trials 99999999999: use 1 to 1000000",
            ),
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
                    vcpus: isobench_vmm::config::MAX_VCPUS + 1,
                    ..limits()
                },
                3,
                300.0,
                "invalid --vcpus 38: use 1 to 37",
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
            (
                limits(),
                3,
                1e300,
                "invalid --trial-deadline 1000000000000000",
            ),
            (
                LimitArgs {
                    ready_deadline: f64::INFINITY,
                    ..limits()
                },
                3,
                300.0,
                "invalid --ready-deadline inf",
            ),
            (limits(), 3, -1.0, "invalid --trial-deadline -1"),
        ];
        for (limits, trials, trial_deadline_s, expected) in cases {
            let message = error(limits, trials, trial_deadline_s);
            assert!(message.starts_with(expected), "{message}");
        }
    }

    fn out_error(dir: &Path, create_parents: bool) -> String {
        match check_out_dir("--out", dir, create_parents) {
            Ok(()) => panic!("--out {} was accepted", dir.display()),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn out_dir_accepts_new_or_empty() {
        let temporary = tempfile::tempdir().unwrap();
        check_out_dir("--out", &temporary.path().join("new"), false).unwrap();
        check_out_dir("--out", temporary.path(), false).unwrap();
        check_out_dir("--out", &temporary.path().join("a/b/c"), true).unwrap();
        let left: Vec<_> = std::fs::read_dir(temporary.path()).unwrap().collect();
        assert!(left.is_empty(), "the checks left {left:?}");
    }

    #[test]
    fn out_dir_rejects_file() {
        let temporary = tempfile::tempdir().unwrap();
        let file = temporary.path().join("report");
        std::fs::write(&file, b"x").unwrap();
        let message = out_error(&file, false);
        let expected = format!(
            "invalid --out {}: it is a file, not a folder",
            file.display()
        );
        assert!(message.starts_with(&expected), "{message}");
        assert!(message.ends_with("pass a new or empty folder"), "{message}");
    }

    #[test]
    fn out_dir_rejects_non_empty_folder() {
        let temporary = tempfile::tempdir().unwrap();
        std::fs::write(temporary.path().join("index.html"), b"x").unwrap();
        let message = out_error(temporary.path(), false);
        assert!(message.contains("exists and is not empty"), "{message}");
        assert!(
            message.starts_with(&format!("invalid --out {}", temporary.path().display())),
            "{message}"
        );
    }

    #[test]
    fn out_dir_rejects_missing_parent() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("missing/report");
        let message = out_error(&dir, false);
        let parent = temporary.path().join("missing");
        let expected = format!("its folder {} does not exist", parent.display());
        assert!(message.contains(&expected), "{message}");
        assert!(message.contains("create it first"), "{message}");
    }

    #[test]
    fn out_dir_rejects_file_as_parent() {
        let temporary = tempfile::tempdir().unwrap();
        let file = temporary.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let message = out_error(&file.join("report"), true);
        let expected = format!("{} is a file, not a folder", file.display());
        assert!(message.contains(&expected), "{message}");
    }

    #[test]
    fn out_dir_rejects_read_only_parent() {
        // sysfs rejects creating folders at its top for every user, root included.
        let message = out_error(Path::new("/sys/isobench-report"), false);
        assert!(message.contains("cannot write into /sys ("), "{message}");
        assert!(message.ends_with("pass a writable path"), "{message}");
    }

    #[test]
    fn out_dir_rejects_empty_name() {
        assert_eq!(
            out_error(Path::new(""), false),
            "invalid --out \"\": pass a folder name"
        );
    }

    #[test]
    fn report_dir_may_hold_earlier_report() {
        let temporary = tempfile::tempdir().unwrap();
        std::fs::write(temporary.path().join("index.html"), b"x").unwrap();
        check_report_dir("--out", temporary.path()).unwrap();
        check_report_dir("--out", &temporary.path().join("new/nested")).unwrap();

        let file = temporary.path().join("index.html");
        let message = check_report_dir("--out", &file).unwrap_err().to_string();
        assert!(message.contains("it is a file, not a folder"), "{message}");
        let names: Vec<_> = std::fs::read_dir(temporary.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "the checks left {names:?}");
    }

    #[test]
    fn results_file_must_be_new() {
        let temporary = tempfile::tempdir().unwrap();
        let file = temporary.path().join("results.json");
        check_new_file("--results", &file).unwrap();

        std::fs::write(&file, b"{}").unwrap();
        let message = check_new_file("--results", &file).unwrap_err().to_string();
        assert!(message.contains("the file exists"), "{message}");

        let message = check_new_file("--results", temporary.path())
            .unwrap_err()
            .to_string();
        assert!(message.contains("it is a folder"), "{message}");
        assert!(message.contains("results.json"), "{message}");

        let nested = temporary.path().join("missing/results.json");
        let message = check_new_file("--results", &nested)
            .unwrap_err()
            .to_string();
        assert!(message.contains("does not exist"), "{message}");
    }

    #[test]
    fn backend_args_map_to_kinds() {
        assert_eq!(BackendKind::from(BackendArg::Process), BackendKind::Process);
        assert_eq!(BackendKind::from(BackendArg::Docker), BackendKind::Docker);
        assert_eq!(BackendKind::from(BackendArg::Microvm), BackendKind::Microvm);
    }

    #[test]
    fn backend_arg_names_match_values() {
        use clap::ValueEnum;
        for arg in BackendArg::value_variants() {
            let value = arg.to_possible_value().expect("no variant is skipped");
            assert_eq!(arg.name(), value.get_name());
        }
    }
}
