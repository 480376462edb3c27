//! Building the artifact sets: preflight checks, the recipe scripts as child processes, and the
//! rename that makes a finished set visible. A damaged set is rebuilt under a temporary name and
//! then swapped with the damaged folder in one `renameat2(RENAME_EXCHANGE)`, so the final name
//! never points at a half-written set.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use tracing::{debug, info};

use crate::backend::GuestImagePaths;
use crate::image::cache::{Cache, Manifest, MANIFEST_FILE, TEMPORARY_PREFIX, WORK_PREFIX};
use crate::image::check::{check_set, manifest_files, recorded_files, SetDamage, SetState};
use crate::image::cleanup::{
    install_interrupt_handler, interrupted, remove_build_folder, ScriptGroup,
};
use crate::image::recipe::{ArtifactSet, RecipeFile, RecipeHashes};
use crate::image::ImageError;

/// Programs each artifact set's build runs, checked before it starts.
pub const BUILD_TOOLS: &[(ArtifactSet, &[&str])] = &[
    (
        ArtifactSet::Kernel,
        &[
            "sh",
            "tar",
            "xz",
            "make",
            "gcc",
            "flex",
            "bison",
            "bc",
            "dpkg-query",
        ],
    ),
    (
        ArtifactSet::Rootfs,
        &["sh", "tar", "gcc", "mmdebstrap", "mkfs.ext4", "chroot"],
    ),
];

/// Free space a build needs in the cache's file system, in MiB. Estimates from builds of these
/// recipes: the kernel source tree and objects take about 1.6 GiB, the root filesystem tree,
/// tar and disk image about 1.3 GiB.
fn required_mib(set: ArtifactSet) -> u64 {
    match set {
        ArtifactSet::Kernel => 3 * 1024,
        ArtifactSet::Rootfs => 2 * 1024,
    }
}

/// Below this many MiB free after a failed build, the failure is reported as a full disk.
const LOW_SPACE_MIB: u64 = 256;

/// Receives the progress of a build; called from one thread per artifact set.
pub trait BuildProgress: Sync {
    /// Reports that a set's build starts.
    fn started(&self, set: ArtifactSet, hash: &str);
    /// Reports that a set's build reached a new step, described by `message`.
    fn step(&self, set: ArtifactSet, message: &str);
    /// Reports that a set is complete, built now or found in the cache.
    fn finished(&self, set: ArtifactSet, outcome: &SetOutcome);
    /// Reports that a set's build failed.
    fn failed(&self, set: ArtifactSet, error: &ImageError);
    /// Reports that the cached set failed its check and will be rebuilt; called before
    /// [`BuildProgress::started`].
    fn damaged(&self, _set: ArtifactSet, _damage: &SetDamage) {}
}

/// Outcome of the build for one artifact set.
#[derive(Debug, Clone, PartialEq)]
pub enum SetOutcome {
    /// It was already in the cache.
    Reused,
    /// The caller did not request it, so it was neither built nor checked.
    NotRequested,
    /// It was built now, taking this many seconds of wall time.
    Built {
        /// Wall time of the build, in seconds.
        seconds: f64,
    },
}

/// Result of [`build`] and [`build_sets`].
#[derive(Debug, Clone)]
pub struct BuildSummary {
    /// Paths of the guest image. Paths into a set whose outcome is
    /// [`SetOutcome::NotRequested`] may not exist.
    pub paths: GuestImagePaths,
    /// Outcome for the guest kernel.
    pub kernel: SetOutcome,
    /// Outcome for the root filesystem.
    pub rootfs: SetOutcome,
}

/// Builds every artifact set of the embedded recipes that the cache lacks or that fails its
/// check, and returns the paths of the complete guest image. Complete sets are left alone, so a
/// second call with nothing changed only checks the cache.
///
/// While it builds, SIGINT and SIGTERM stop the build scripts, whose folders are then
/// removed, and the call returns [`ImageError::Interrupted`].
pub fn build(cache: &Cache, progress: &dyn BuildProgress) -> Result<BuildSummary, ImageError> {
    build_sets(cache, &ArtifactSet::ALL, progress)
}

/// Builds the artifact sets in `sets` that the cache lacks, like [`build`], and leaves the
/// other sets alone. A run of the `process` and `docker` backends needs no guest kernel.
pub fn build_sets(
    cache: &Cache,
    sets: &[ArtifactSet],
    progress: &dyn BuildProgress,
) -> Result<BuildSummary, ImageError> {
    let hashes = RecipeHashes::embedded();
    let requested: Vec<ArtifactSet> = ArtifactSet::ALL
        .into_iter()
        .filter(|set| sets.contains(set))
        .collect();
    let mut missing: Vec<ArtifactSet> = Vec::new();
    let mut damages: Vec<(ArtifactSet, SetDamage)> = Vec::new();
    for &set in &requested {
        match cache.check(set, hashes.of_set(set)) {
            SetState::Complete(_) => {}
            SetState::Missing => missing.push(set),
            SetState::Damaged(damage) => {
                missing.push(set);
                damages.push((set, damage));
            }
        }
    }

    if !missing.is_empty() {
        preflight(cache, &missing)?;
        remove_stale_builds(cache);
        install_interrupt_handler();
    }

    let outcomes: Vec<Result<SetOutcome, ImageError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ArtifactSet::ALL
            .into_iter()
            .map(|set| {
                let is_requested = requested.contains(&set);
                let needed = missing.contains(&set);
                let hash = hashes.of_set(set).to_string();
                let damages = &damages;
                scope.spawn(move || {
                    if !is_requested {
                        return Ok(SetOutcome::NotRequested);
                    }
                    if !needed {
                        progress.finished(set, &SetOutcome::Reused);
                        return Ok(SetOutcome::Reused);
                    }
                    if let Some((_, damage)) = damages.iter().find(|(owner, _)| *owner == set) {
                        // At info level, because the progress line already shows it.
                        info!(set = set.name(), %damage, "rebuilding a damaged artifact set");
                        progress.damaged(set, damage);
                    }
                    progress.started(set, &hash);
                    let result = build_set(cache, set, &hash, set.recipe(), progress);
                    match &result {
                        Ok(outcome) => progress.finished(set, outcome),
                        Err(error) => progress.failed(set, error),
                    }
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a build thread panicked"))
            .collect()
    });

    if interrupted() {
        return Err(ImageError::Interrupted);
    }
    let mut outcomes = outcomes.into_iter();
    let kernel = outcomes.next().expect("one outcome per set")?;
    let rootfs = outcomes.next().expect("one outcome per set")?;
    Ok(BuildSummary {
        paths: cache.locate_sets(&hashes, &requested)?,
        kernel,
        rootfs,
    })
}

/// Checks root, tools and free space before anything is written.
fn preflight(cache: &Cache, missing: &[ArtifactSet]) -> Result<(), ImageError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ImageError::NotRoot);
    }
    for (set, tools) in BUILD_TOOLS {
        if !missing.contains(set) {
            continue;
        }
        for program in *tools {
            if find_program(program).is_none() {
                return Err(ImageError::ToolMissing {
                    program,
                    set: set.name(),
                });
            }
        }
    }

    let root = cache.root();
    std::fs::create_dir_all(root).map_err(ImageError::io("creating", root))?;
    let required: u64 = missing.iter().map(|set| required_mib(*set)).sum();
    let available = available_mib(root).map_err(ImageError::io("checking free space of", root))?;
    if available < required {
        return Err(ImageError::NoSpace {
            set: missing[0].name(),
            dir: root.to_path_buf(),
            available_mib: available,
            required_mib: required,
        });
    }
    Ok(())
}

/// Finds `program` in the folders of `PATH`, as a shell would.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Free space for unprivileged and root writers alike in the file system of `path`, in MiB.
pub(crate) fn available_mib(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stats` points to writable memory of the
    // size statvfs expects.
    if unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded, so it filled every field of `stats`.
    let stats = unsafe { stats.assume_init() };
    Ok(stats.f_bavail * stats.f_frsize / (1024 * 1024))
}

/// Removes the folders of builds whose process is gone: an interrupted build leaves its
/// temporary and scratch folders behind, named with its process id.
fn remove_stale_builds(cache: &Cache) {
    for dir in cache.unfinished_builds() {
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let Some(pid) = name
            .rsplit('-')
            .next()
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        info!(dir = %dir.display(), "removing the folder of an interrupted build");
        remove_build_folder(&dir);
    }
}

/// Removes a build's temporary and scratch folders when dropped, on every exit path.
struct BuildFolders {
    temporary: PathBuf,
    work: PathBuf,
}

impl Drop for BuildFolders {
    fn drop(&mut self) {
        remove_build_folder(&self.temporary);
        remove_build_folder(&self.work);
    }
}

/// Builds one artifact set from `recipe` into its cache folder.
fn build_set(
    cache: &Cache,
    set: ArtifactSet,
    hash: &str,
    recipe: &[RecipeFile],
    progress: &dyn BuildProgress,
) -> Result<SetOutcome, ImageError> {
    let started = Instant::now();
    let pid = std::process::id();
    let folders = BuildFolders {
        temporary: cache
            .root()
            .join(format!("{TEMPORARY_PREFIX}{}-{hash}-{pid}", set.name())),
        work: cache
            .root()
            .join(format!("{WORK_PREFIX}{}-{hash}-{pid}", set.name())),
    };
    let recipe_dir = folders.work.join("recipe");
    write_recipe(&recipe_dir, recipe)?;
    let log = cache.log_path(set, hash);
    if let Some(logs) = log.parent() {
        std::fs::create_dir_all(logs).map_err(ImageError::io("creating", logs))?;
    }

    run_script(
        set,
        &recipe_dir.join(set.build_script()),
        &[&folders.temporary, &folders.work.join("scratch"), &log],
        &log,
        cache.root(),
        progress,
    )?;

    for artifact in set.artifacts().iter().chain(recorded_files(set)) {
        if !folders.temporary.join(artifact).exists() {
            return Err(ImageError::BuildFailed {
                set: set.name(),
                message: format!("the build script finished without writing {artifact}"),
                log,
            });
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    write_manifest(&folders.temporary, set, hash, recipe, seconds)?;
    if let SetState::Damaged(damage) = check_set(&folders.temporary, set, hash) {
        return Err(ImageError::BuildFailed {
            set: set.name(),
            message: format!("the new build fails its own check: {damage}"),
            log,
        });
    }

    install_set(&folders.temporary, &cache.set_dir(set, hash), set, hash)?;
    Ok(SetOutcome::Built { seconds })
}

/// Gives the finished build in `temporary` the final name `final_dir`. A complete set already
/// there, from another build of the same recipe, is kept, because its contents are the same. A
/// damaged one is swapped with the new build in one rename, and the damaged folder, now at the
/// temporary name, is removed with the build's folders.
fn install_set(
    temporary: &Path,
    final_dir: &Path,
    set: ArtifactSet,
    hash: &str,
) -> Result<(), ImageError> {
    match check_set(final_dir, set, hash) {
        SetState::Missing => {
            std::fs::rename(temporary, final_dir).map_err(ImageError::io("renaming", temporary))
        }
        SetState::Complete(_) => {
            debug!(dir = %final_dir.display(), "artifact set appeared during the build");
            Ok(())
        }
        SetState::Damaged(_) => {
            match exchange(temporary, final_dir) {
                Ok(()) => {}
                // EINVAL: the file system cannot swap names (NFS, for one).
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                    replace_by_renames(temporary, final_dir, set, hash)?
                }
                Err(error) => {
                    return Err(ImageError::Io {
                        action: "replacing",
                        path: final_dir.to_path_buf(),
                        source: error,
                    })
                }
            }
            info!(dir = %final_dir.display(), "replaced a damaged artifact set");
            Ok(())
        }
    }
}

/// Replaces the damaged `final_dir` with `temporary` in two renames, for file systems without
/// `RENAME_EXCHANGE`. Between them the set is missing, never half-written. The damaged folder
/// moves to a `.tmp-` name with this process's id, which the next build removes if this one
/// stops before it does.
fn replace_by_renames(
    temporary: &Path,
    final_dir: &Path,
    set: ArtifactSet,
    hash: &str,
) -> Result<(), ImageError> {
    let parent = final_dir.parent().unwrap_or(Path::new("."));
    let pid = std::process::id();
    let old = parent.join(format!(
        "{TEMPORARY_PREFIX}damaged-{}-{hash}-{pid}",
        set.name()
    ));
    std::fs::rename(final_dir, &old).map_err(ImageError::io("renaming", final_dir))?;
    let renamed =
        std::fs::rename(temporary, final_dir).map_err(ImageError::io("renaming", temporary));
    remove_build_folder(&old);
    renamed
}

/// Swaps the names of `first` and `second` atomically (`renameat2` with `RENAME_EXCHANGE`,
/// Linux 3.15 and later). Both must exist on the same file system.
fn exchange(first: &Path, second: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = |path: &Path| {
        std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (first, second) = (c_path(first)?, c_path(second)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call, and AT_FDCWD makes
    // them relative to the working folder like rename(2).
    let result = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            first.as_ptr(),
            libc::AT_FDCWD,
            second.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes the embedded recipe files under `dir`, scripts executable.
fn write_recipe(dir: &Path, recipe: &[RecipeFile]) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    for file in recipe {
        let path = dir.join(file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(ImageError::io("creating", parent))?;
        }
        std::fs::write(&path, file.contents).map_err(ImageError::io("writing", &path))?;
        if file.path.ends_with(".sh") {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(ImageError::io("setting permissions of", &path))?;
        }
    }
    Ok(())
}

fn write_manifest(
    dir: &Path,
    set: ArtifactSet,
    hash: &str,
    recipe: &[RecipeFile],
    seconds: f64,
) -> Result<(), ImageError> {
    let manifest = Manifest {
        set: set.name().to_string(),
        hash: hash.to_string(),
        recipe_files: recipe.iter().map(|file| file.path.to_string()).collect(),
        built_at_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0),
        build_seconds: seconds,
        files: manifest_files(dir, set)?,
    };
    let path = dir.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&manifest).expect("a manifest serializes");
    std::fs::write(&path, text + "\n").map_err(ImageError::io("writing", &path))
}

/// Runs a build script, forwarding its `step:` lines to `progress` and turning a failure into
/// one line: the script's last `error:` line, or a full disk when `cache_root` is nearly full.
fn run_script(
    set: ArtifactSet,
    script: &Path,
    args: &[&Path],
    log: &Path,
    cache_root: &Path,
    progress: &dyn BuildProgress,
) -> Result<(), ImageError> {
    let failed = |message: String| ImageError::BuildFailed {
        set: set.name(),
        message,
        log: log.to_path_buf(),
    };
    debug!(script = %script.display(), ?args, "running a build script");
    let mut child = Command::new("sh")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|error| failed(format!("cannot start sh {}: {error}", script.display())))?;
    let _group = ScriptGroup::register(child.id() as i32);

    let stderr = child.stderr.take().expect("stderr is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let last_error = std::thread::scope(|scope| {
        let errors = scope.spawn(move || {
            let mut last_error = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(message) = line.strip_prefix("error: ") {
                    last_error = Some(message.to_string());
                }
            }
            last_error
        });
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(step) = line.strip_prefix("step: ") {
                progress.step(set, step);
            }
        }
        errors.join().unwrap_or(None)
    });
    let status = child
        .wait()
        .map_err(|error| failed(format!("cannot wait for sh {}: {error}", script.display())))?;
    if status.success() {
        return Ok(());
    }

    if let Ok(available) = available_mib(cache_root) {
        if available < LOW_SPACE_MIB {
            return Err(ImageError::NoSpace {
                set: set.name(),
                dir: cache_root.to_path_buf(),
                available_mib: available,
                required_mib: required_mib(set),
            });
        }
    }
    Err(failed(last_error.unwrap_or_else(|| {
        format!("{} exited with {status}", set.build_script())
    })))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::image::check::write_test_set;

    /// Records progress calls as text.
    #[derive(Default)]
    struct Recorder {
        events: Mutex<Vec<String>>,
    }

    impl BuildProgress for Recorder {
        fn started(&self, set: ArtifactSet, _hash: &str) {
            self.events
                .lock()
                .unwrap()
                .push(format!("{} started", set.name()));
        }
        fn step(&self, set: ArtifactSet, message: &str) {
            self.events
                .lock()
                .unwrap()
                .push(format!("{} step {message}", set.name()));
        }
        fn finished(&self, set: ArtifactSet, _outcome: &SetOutcome) {
            self.events
                .lock()
                .unwrap()
                .push(format!("{} finished", set.name()));
        }
        fn failed(&self, set: ArtifactSet, _error: &ImageError) {
            self.events
                .lock()
                .unwrap()
                .push(format!("{} failed", set.name()));
        }
    }

    fn script(text: &'static str) -> Vec<RecipeFile> {
        vec![RecipeFile {
            path: "kernel/build.sh",
            contents: text.as_bytes(),
        }]
    }

    const WRITES_KERNEL: &str = r#"
        set -eu
        mkdir -p "$1"
        echo "step: writing"
        echo log line >>"$3"
        for name in vmlinux bzImage config; do echo "$name" >"$1/$name"; done
    "#;

    #[test]
    fn finished_build_is_renamed() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        let recorder = Recorder::default();
        let recipe = script(WRITES_KERNEL);

        let outcome = build_set(&cache, ArtifactSet::Kernel, "h1", &recipe, &recorder).unwrap();
        assert!(matches!(outcome, SetOutcome::Built { .. }));
        assert!(cache.is_complete(ArtifactSet::Kernel, "h1"));
        assert!(cache.unfinished_builds().is_empty());
        let manifest = Manifest::read(&cache.set_dir(ArtifactSet::Kernel, "h1")).unwrap();
        assert_eq!(manifest.hash, "h1");
        assert_eq!(manifest.recipe_files, vec!["kernel/build.sh".to_string()]);
        let log = std::fs::read_to_string(cache.log_path(ArtifactSet::Kernel, "h1")).unwrap();
        assert_eq!(log, "log line\n");
        let events = recorder.events.lock().unwrap();
        assert_eq!(events.as_slice(), ["kernel step writing"]);
    }

    #[test]
    fn failed_build_leaves_nothing() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        let recipe = script(
            r#"
            mkdir -p "$1"; echo partial >"$1/vmlinux"
            echo "error: the source package is missing: run scripts/setup-host" >&2
            exit 3
            "#,
        );
        let error = build_set(
            &cache,
            ArtifactSet::Kernel,
            "h2",
            &recipe,
            &Recorder::default(),
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("the source package is missing"), "{text}");
        assert!(text.contains("kernel-h2.log"), "{text}");
        assert!(!cache.is_complete(ArtifactSet::Kernel, "h2"));
        assert!(!cache.set_dir(ArtifactSet::Kernel, "h2").exists());
        assert!(cache.unfinished_builds().is_empty());
    }

    #[test]
    fn killed_script_leaves_nothing() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        // The script writes part of its artifacts, then dies as `kill -9` during an export.
        let recipe = script(
            r#"
            mkdir -p "$1"; echo partial >"$1/vmlinux"; echo partial >"$1/bzImage"
            echo "step: exporting"
            kill -9 $$
            "#,
        );
        let error = build_set(
            &cache,
            ArtifactSet::Kernel,
            "h3",
            &recipe,
            &Recorder::default(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("signal: 9"), "{error}");
        assert!(!cache.is_complete(ArtifactSet::Kernel, "h3"));
        assert!(cache.unfinished_builds().is_empty());
    }

    #[test]
    fn missing_artifact_fails_build() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        let recipe = script(r#"mkdir -p "$1"; echo x >"$1/vmlinux""#);
        let error = build_set(
            &cache,
            ArtifactSet::Kernel,
            "h4",
            &recipe,
            &Recorder::default(),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("without writing bzImage"),
            "{error}"
        );
        assert!(!cache.is_complete(ArtifactSet::Kernel, "h4"));
    }

    #[test]
    fn stale_build_is_removed() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        // Pid 0 is never a process of ours, so its folder is stale; our own is live.
        let stale = temporary.path().join(".tmp-kernel-h5-0");
        let live = temporary
            .path()
            .join(format!(".work-kernel-h5-{}", std::process::id()));
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::create_dir_all(&live).unwrap();
        remove_stale_builds(&cache);
        assert!(!stale.exists());
        assert!(live.exists());
    }

    #[test]
    fn unrequested_kernel_is_left_alone() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        let hashes = RecipeHashes::embedded();
        let rootfs = cache.set_dir(ArtifactSet::Rootfs, &hashes.rootfs);
        write_test_set(&rootfs, ArtifactSet::Rootfs, &hashes.rootfs);

        let recorder = Recorder::default();
        let summary = build_sets(&cache, &[ArtifactSet::Rootfs], &recorder).unwrap();
        assert_eq!(summary.kernel, SetOutcome::NotRequested);
        assert_eq!(summary.rootfs, SetOutcome::Reused);
        assert_eq!(summary.paths.rootfs_tree, rootfs.join("tree"));
        assert!(!cache.set_dir(ArtifactSet::Kernel, &hashes.kernel).exists());
        assert_eq!(
            recorder.events.lock().unwrap().as_slice(),
            ["rootfs finished"]
        );

        let error = cache.locate(&hashes).unwrap_err();
        assert!(
            matches!(error, ImageError::NotBuilt { set: "kernel", .. }),
            "{error}"
        );
    }

    /// Writes a kernel set whose manifest is valid but whose `vmlinux` is empty.
    fn damaged_kernel(cache: &Cache, hash: &str) -> PathBuf {
        let dir = cache.set_dir(ArtifactSet::Kernel, hash);
        write_test_set(&dir, ArtifactSet::Kernel, hash);
        std::fs::write(dir.join("vmlinux"), b"").unwrap();
        std::fs::write(dir.join("left-by-hand"), b"x").unwrap();
        dir
    }

    #[test]
    fn damaged_set_is_replaced() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        let dir = damaged_kernel(&cache, "h6");
        assert!(matches!(
            cache.check(ArtifactSet::Kernel, "h6"),
            SetState::Damaged(_)
        ));

        let recipe = script(WRITES_KERNEL);
        let outcome = build_set(
            &cache,
            ArtifactSet::Kernel,
            "h6",
            &recipe,
            &Recorder::default(),
        )
        .unwrap();
        assert!(matches!(outcome, SetOutcome::Built { .. }));
        assert!(cache.is_complete(ArtifactSet::Kernel, "h6"));
        assert_eq!(std::fs::read(dir.join("vmlinux")).unwrap(), b"vmlinux\n");
        assert!(!dir.join("left-by-hand").exists());
        assert!(cache.unfinished_builds().is_empty());
    }

    #[test]
    fn damaged_link_target_is_kept() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path().join("cache"));
        // The set's final name is a link to a damaged set outside the cache.
        let outside = Cache::at(temporary.path().join("outside"));
        let target = damaged_kernel(&outside, "h7");
        std::fs::create_dir_all(cache.root()).unwrap();
        let link = cache.set_dir(ArtifactSet::Kernel, "h7");
        std::os::unix::fs::symlink(&target, &link).unwrap();

        let recipe = script(WRITES_KERNEL);
        build_set(
            &cache,
            ArtifactSet::Kernel,
            "h7",
            &recipe,
            &Recorder::default(),
        )
        .unwrap();
        assert!(cache.is_complete(ArtifactSet::Kernel, "h7"));
        assert!(std::fs::symlink_metadata(&link).unwrap().is_dir());
        assert!(target.join("left-by-hand").exists());
        assert!(target.join("vmlinux").exists());
        assert!(cache.unfinished_builds().is_empty());
    }

    #[test]
    fn renames_replace_damaged_set() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        let dir = damaged_kernel(&cache, "h10");
        let new = temporary.path().join(".tmp-kernel-h10-1");
        write_test_set(&new, ArtifactSet::Kernel, "h10");

        replace_by_renames(&new, &dir, ArtifactSet::Kernel, "h10").unwrap();
        assert!(cache.is_complete(ArtifactSet::Kernel, "h10"));
        assert!(!dir.join("left-by-hand").exists());
        assert!(!new.exists());
        assert!(cache.unfinished_builds().is_empty());
    }

    #[test]
    fn complete_set_from_other_build_is_kept() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        let dir = cache.set_dir(ArtifactSet::Kernel, "h8");
        write_test_set(&dir, ArtifactSet::Kernel, "h8");
        let before = std::fs::read(dir.join("vmlinux")).unwrap();

        let recipe = script(WRITES_KERNEL);
        build_set(
            &cache,
            ArtifactSet::Kernel,
            "h8",
            &recipe,
            &Recorder::default(),
        )
        .unwrap();
        assert_eq!(std::fs::read(dir.join("vmlinux")).unwrap(), before);
        assert!(cache.unfinished_builds().is_empty());
    }

    #[test]
    fn empty_artifact_fails_build() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        let recipe =
            script(r#"mkdir -p "$1"; : >"$1/vmlinux"; echo x >"$1/bzImage"; echo x >"$1/config""#);
        let error = build_set(
            &cache,
            ArtifactSet::Kernel,
            "h9",
            &recipe,
            &Recorder::default(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("vmlinux is empty"), "{error}");
        assert!(!cache.set_dir(ArtifactSet::Kernel, "h9").exists());
        assert!(cache.unfinished_builds().is_empty());
    }

    #[test]
    fn find_program_searches_path() {
        assert!(find_program("sh").is_some());
        assert!(find_program("isobench-no-such-program").is_none());
    }
}
