//! End-to-end checks of `isobench image build` and `isobench image status`: idempotence, an
//! interrupted build, and the one-line errors for bad hosts.
//!
//! Tests that reuse a built guest kernel take it from the default cache, so run
//! `isobench image build` first (`scripts/test` does).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use isobench_harness::image::{ArtifactSet, Cache, RecipeHashes};

const ISOBENCH: &str = env!("CARGO_BIN_EXE_isobench");

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn isobench(cache: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(ISOBENCH);
    command
        .args(args)
        .env("ISOBENCH_CACHE_DIR", cache)
        .stdin(Stdio::null());
    command
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Returns the single `isobench:` error line of a failed command.
fn error_line(output: &Output) -> String {
    assert!(!output.status.success(), "expected a failure");
    let stderr = stderr_of(output);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("isobench: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_string()
}

/// Creates a temporary cache with hard links to the default cache's guest kernel, so that
/// only the root filesystem builds.
fn cache_with_kernel() -> tempfile::TempDir {
    let default = Cache::from_env().unwrap();
    let hashes = RecipeHashes::embedded();
    let kernel = default.set_dir(ArtifactSet::Kernel, &hashes.kernel);
    assert!(
        default.is_complete(ArtifactSet::Kernel, &hashes.kernel),
        "{} missing: run `isobench image build` first",
        kernel.display()
    );
    let cache = tempfile::Builder::new()
        .prefix("isobench-cache-")
        .tempdir_in(default.root())
        .unwrap();
    let copied = Command::new("cp")
        .arg("-al")
        .arg(&kernel)
        .arg(cache.path())
        .status()
        .unwrap();
    assert!(copied.success());
    cache
}

fn status_json(cache: &Path) -> serde_json::Value {
    let output = isobench(cache, &["image", "status", "--json", "--no-docker"])
        .output()
        .unwrap();
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("image status --json: {error}: {}", stderr_of(&output)))
}

#[test]
fn status_of_empty_cache_fails() {
    let cache = tempfile::tempdir().unwrap();
    let output = isobench(cache.path(), &["image", "status", "--no-docker"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("not built"), "{stdout}");
    assert!(stdout.contains("run `isobench image build`"), "{stdout}");

    let status = status_json(cache.path());
    assert_eq!(status["complete"], false);
    assert_eq!(status["sets"][0]["set"], "kernel");
    assert_eq!(status["sets"][1]["set"], "rootfs");
}

#[test]
fn second_build_reuses_cache() {
    let default = Cache::from_env().unwrap();
    let output = isobench(default.root(), &["image", "build", "--no-docker"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.matches("cached").count(), 2, "{stdout}");
    assert!(
        stdout.contains(&RecipeHashes::embedded().image_id),
        "{stdout}"
    );

    let status = status_json(default.root());
    assert_eq!(status["complete"], true);
    assert!(
        status["sets"][1]["artifacts"][1]["size_bytes"]
            .as_u64()
            .unwrap()
            > 100 << 20
    );
}

#[test]
fn rootfs_only_build_skips_kernel() {
    let default = Cache::from_env().unwrap();
    let hashes = RecipeHashes::embedded();
    let rootfs = default.set_dir(ArtifactSet::Rootfs, &hashes.rootfs);
    assert!(
        default.is_complete(ArtifactSet::Rootfs, &hashes.rootfs),
        "{} missing: run `isobench image build` first",
        rootfs.display()
    );
    let cache = tempfile::Builder::new()
        .prefix("isobench-cache-")
        .tempdir_in(default.root())
        .unwrap();
    let copied = Command::new("cp")
        .arg("-al")
        .arg(&rootfs)
        .arg(cache.path())
        .status()
        .unwrap();
    assert!(copied.success());

    let output = isobench(
        cache.path(),
        &["image", "build", "--only", "rootfs", "--no-docker"],
    )
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("guest kernel     not requested"),
        "{stdout}"
    );
    assert!(stdout.contains("root filesystem  cached"), "{stdout}");
    let kernel = Cache::at(cache.path()).set_dir(ArtifactSet::Kernel, &hashes.kernel);
    assert!(!kernel.exists(), "{} was built", kernel.display());

    let output = isobench(cache.path(), &["image", "status", "--no-docker"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("the process and docker backends can run"),
        "{stdout}"
    );
    assert!(stdout.contains("--only kernel"), "{stdout}");
    let status = status_json(cache.path());
    assert_eq!(status["sets"][0]["complete"], false);
    assert_eq!(status["sets"][1]["complete"], true);
}

#[test]
fn only_rejects_unknown_set() {
    let cache = tempfile::tempdir().unwrap();
    let output = isobench(cache.path(), &["image", "build", "--only", "initrd"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = stderr_of(&output);
    assert!(stderr.contains("invalid value 'initrd'"), "{stderr}");
    assert!(stderr.contains("kernel, rootfs"), "{stderr}");
}

/// Kills the whole build (as Ctrl-C does) while it writes `rootfs.tar`.
#[test]
fn killed_build_is_not_complete() {
    if !is_root() {
        eprintln!("skipped: building the root filesystem needs root");
        return;
    }
    let cache = cache_with_kernel();
    let mut child = isobench(cache.path(), &["image", "build", "--no-docker"])
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let group = child.id() as i32;

    let deadline = Instant::now() + Duration::from_secs(900);
    let mut seen = Vec::new();
    let stderr = child.stderr.take().unwrap();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let exporting = line.contains("exporting rootfs.tar");
        seen.push(line);
        if exporting || Instant::now() > deadline {
            break;
        }
    }
    // SAFETY: kill has no memory preconditions; the group is the build this test started.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    child.wait().unwrap();
    assert!(
        seen.iter()
            .any(|line| line.contains("exporting rootfs.tar")),
        "the build never reached the export: {seen:?}"
    );

    let hashes = RecipeHashes::embedded();
    let status = status_json(cache.path());
    assert_eq!(status["complete"], false);
    assert_eq!(status["sets"][0]["complete"], true);
    assert_eq!(status["sets"][1]["complete"], false);
    assert!(!status["unfinished_builds"].as_array().unwrap().is_empty());
    let rootfs: PathBuf = cache.path().join(format!("rootfs-{}", hashes.rootfs));
    assert!(!rootfs.exists(), "{}", rootfs.display());
    assert!(Cache::at(cache.path()).locate(&hashes).is_err());
}

#[test]
fn build_without_root_fails() {
    if !is_root() {
        eprintln!("skipped: dropping root needs root");
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    // A copy in a folder anyone can enter, since the checkout may sit below a private home.
    let bin = tempfile::tempdir().unwrap();
    let permissions = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(bin.path(), permissions).unwrap();
    let copy = bin.path().join("isobench");
    std::fs::copy(ISOBENCH, &copy).unwrap();
    let output = Command::new(&copy)
        .args(["image", "build"])
        .env("ISOBENCH_CACHE_DIR", cache.path())
        .stdin(Stdio::null())
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let line = error_line(&output);
    assert!(line.contains("needs root"), "{line}");
    assert!(line.contains("run as root"), "{line}");
}

/// Creates a folder with links to every program the build runs, except those in `without`.
fn path_without(without: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (_, tools) in isobench_harness::image::BUILD_TOOLS {
        for tool in *tools {
            if without.contains(tool) {
                continue;
            }
            if let Some(path) = isobench_harness::image::find_program(tool) {
                std::os::unix::fs::symlink(path, dir.path().join(tool)).ok();
            }
        }
    }
    dir
}

#[test]
fn build_without_mmdebstrap_fails() {
    let cache = tempfile::tempdir().unwrap();
    let bin = path_without(&["mmdebstrap"]);
    let output = isobench(cache.path(), &["image", "build"])
        .env("PATH", bin.path())
        .output()
        .unwrap();
    let line = error_line(&output);
    if !is_root() {
        assert!(line.contains("needs root"), "{line}");
        return;
    }
    assert!(line.contains("mmdebstrap not found"), "{line}");
    assert!(line.contains("scripts/setup-host"), "{line}");
}

#[test]
fn build_on_full_disk_fails() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(mounted.success());
    let output = isobench(dir.path(), &["image", "build"]).output().unwrap();
    let unmounted = Command::new("umount").arg(dir.path()).status().unwrap();
    assert!(unmounted.success());

    let line = error_line(&output);
    assert!(line.contains("no space left"), "{line}");
    assert!(line.contains("MiB free"), "{line}");
}

#[test]
fn build_with_unreachable_archive_fails() {
    if !is_root() {
        eprintln!("skipped: building the root filesystem needs root");
        return;
    }
    let cache = cache_with_kernel();
    // mmdebstrap that fails the way apt does when the Debian archive is unreachable.
    let bin = path_without(&["mmdebstrap"]);
    let fake = bin.path().join("mmdebstrap");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'E: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease'\nexit 1\n",
    )
    .unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&fake, executable).unwrap();
    let mut path = std::ffi::OsString::from(bin.path());
    path.push(":/usr/bin:/bin:/usr/sbin:/sbin");
    let output = isobench(cache.path(), &["image", "build", "--no-docker"])
        .env("PATH", path)
        .output()
        .unwrap();
    let line = error_line(&output);
    assert!(line.contains("Debian archive is unreachable"), "{line}");
    assert!(line.contains("log:"), "{line}");
    let status = status_json(cache.path());
    assert_eq!(status["sets"][1]["complete"], false);
    assert!(status["unfinished_builds"].as_array().unwrap().is_empty());
}

#[test]
fn import_without_docker_engine_fails() {
    let default = Cache::from_env().unwrap();
    let output = isobench(default.root(), &["image", "build"])
        .env("DOCKER_HOST", "unix:///nonexistent/isobench-test.sock")
        .output()
        .unwrap();
    let line = error_line(&output);
    assert!(line.contains("cannot reach the Docker engine"), "{line}");
    assert!(line.contains("scripts/setup-host"), "{line}");
}

/// Interrupts the build (SIGINT to `isobench` alone) while mmdebstrap installs packages.
#[test]
fn interrupted_build_removes_folders() {
    if !is_root() {
        eprintln!("skipped: building the root filesystem needs root");
        return;
    }
    let cache = cache_with_kernel();
    let mut child = isobench(cache.path(), &["image", "build", "--no-docker"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        let installing = line.contains("installing Debian");
        seen.push(line);
        if installing {
            break;
        }
    }
    // Let mmdebstrap get going, with its mounts in the tree.
    std::thread::sleep(Duration::from_secs(10));
    // SAFETY: kill has no memory preconditions; the pid is the build this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();

    assert!(!status.success(), "{seen:?}");
    assert!(
        seen.iter().any(|line| line.contains("interrupted")),
        "{seen:?}"
    );
    let status = status_json(cache.path());
    assert_eq!(status["sets"][1]["complete"], false);
    assert_eq!(status["unfinished_builds"], serde_json::json!([]));
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = cache.path().to_string_lossy().into_owned();
    assert!(!mountinfo.contains(&root), "mounts left below {root}");
}

/// Builds the root filesystem over a damaged folder with its final name: one line reports it, the
/// new set replaces the old, and a link in the old folder keeps its target outside the cache.
#[test]
fn damaged_rootfs_is_rebuilt() {
    if !is_root() {
        eprintln!("skipped: building the root filesystem needs root");
        return;
    }
    let cache = cache_with_kernel();
    let hashes = RecipeHashes::embedded();
    let rootfs = Cache::at(cache.path()).set_dir(ArtifactSet::Rootfs, &hashes.rootfs);
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::write(rootfs.join("manifest.json"), b"{").unwrap();
    std::fs::write(rootfs.join("left-by-hand"), b"x").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("keep"), b"x").unwrap();
    std::os::unix::fs::symlink(outside.path(), rootfs.join("tree")).unwrap();

    let output = isobench(cache.path(), &["image", "build", "--no-docker"])
        .output()
        .unwrap();
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{stderr}");
    let notices: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("isobench: "))
        .collect();
    let expected = format!(
        "isobench: the cached guest rootfs is damaged: {}/manifest.json is not a valid manifest",
        rootfs.display()
    );
    assert_eq!(notices.len(), 1, "{stderr}");
    assert!(notices[0].starts_with(&expected), "{stderr}");
    assert!(notices[0].ends_with("; rebuilding it"), "{stderr}");
    assert!(
        !stderr.contains("WARN"),
        "a log line repeats the notice: {stderr}"
    );

    let status = status_json(cache.path());
    assert_eq!(status["complete"], true);
    assert_eq!(status["unfinished_builds"], serde_json::json!([]));
    assert!(!rootfs.join("left-by-hand").exists());
    assert!(rootfs.join("tree/sbin/isobench-init").is_file());
    assert!(outside.path().join("keep").exists());
}
