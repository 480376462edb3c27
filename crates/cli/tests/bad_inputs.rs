//! Bad inputs to every subcommand, as a new user types them: each ends in one `isobench:` line
//! that names the value and what to do, a non-zero exit, no panic and no files left behind.
//! None of these tests builds the guest image or boots a guest.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use isobench_harness::image::{ArtifactSet, Cache, RecipeHashes, MANIFEST_FILE};

const ISOBENCH: &str = env!("CARGO_BIN_EXE_isobench");

/// Runs `isobench` with `args` and the cache at `cache`, with no Docker engine to reach, so a
/// check that comes too late fails on the engine instead of passing by chance.
fn isobench(cache: &Path, args: &[&str]) -> Output {
    Command::new(ISOBENCH)
        .args(args)
        .env("ISOBENCH_CACHE_DIR", cache)
        .env("DOCKER_HOST", "unix:///nonexistent/isobench-test.sock")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Returns the single `isobench:` error line of a failed command, checking that it failed
/// with status 1 and did not panic.
fn error_line(output: &Output) -> String {
    let stderr = stderr_of(output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("isobench: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_string()
}

/// Writes an artifact set of small placeholder files with a manifest in the format builds
/// wrote before sizes were recorded, which the check still accepts.
fn placeholder_set(cache: &Cache, set: ArtifactSet, hash: &str) -> std::path::PathBuf {
    let dir = cache.set_dir(set, hash);
    std::fs::create_dir_all(&dir).unwrap();
    for artifact in set.artifacts() {
        if *artifact == "tree" {
            std::fs::create_dir_all(dir.join(artifact)).unwrap();
        } else {
            std::fs::write(dir.join(artifact), b"placeholder\n").unwrap();
        }
    }
    let manifest = serde_json::json!({
        "set": set.name(),
        "hash": hash,
        "recipe_files": [],
        "built_at_unix": 0,
        "build_seconds": 1.0,
    });
    std::fs::write(dir.join(MANIFEST_FILE), manifest.to_string()).unwrap();
    dir
}

#[test]
fn status_names_empty_vmlinux() {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(cache_dir.path());
    let hashes = RecipeHashes::embedded();
    let kernel = placeholder_set(&cache, ArtifactSet::Kernel, &hashes.kernel);
    placeholder_set(&cache, ArtifactSet::Rootfs, &hashes.rootfs);
    let output = isobench(cache_dir.path(), &["image", "status", "--no-docker"]);
    assert!(output.status.success(), "{}", stdout_of(&output));

    std::fs::write(kernel.join("vmlinux"), b"").unwrap();
    let output = isobench(cache_dir.path(), &["image", "status", "--no-docker"]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = stdout_of(&output);
    assert!(stdout.contains("damaged"), "{stdout}");
    let vmlinux = kernel.join("vmlinux");
    let expected = format!(
        "{} is empty (0 bytes): run `isobench image build --only kernel`",
        vmlinux.display()
    );
    assert!(stdout.contains(&expected), "{stdout}");
    let state_line = format!("kernel    {}  damaged", hashes.kernel);
    assert!(stdout.contains(&state_line), "{stdout}");

    let output = isobench(cache_dir.path(), &["image", "status", "--no-docker", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["complete"], false);
    assert_eq!(status["sets"][0]["complete"], false);
    assert_eq!(
        status["sets"][0]["damage"]["path"],
        vmlinux.to_string_lossy().as_ref()
    );
    assert_eq!(status["sets"][1]["complete"], true);
}

#[test]
fn status_names_invalid_manifest() {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(cache_dir.path());
    let hashes = RecipeHashes::embedded();
    placeholder_set(&cache, ArtifactSet::Kernel, &hashes.kernel);
    let rootfs = placeholder_set(&cache, ArtifactSet::Rootfs, &hashes.rootfs);
    std::fs::write(rootfs.join(MANIFEST_FILE), b"{\"set\": \"rootfs\"").unwrap();

    let output = isobench(cache_dir.path(), &["image", "status", "--no-docker"]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = stdout_of(&output);
    let manifest = rootfs.join(MANIFEST_FILE);
    let expected = format!("{} is not a valid manifest", manifest.display());
    assert!(stdout.contains(&expected), "{stdout}");
    assert!(
        stdout.contains("run `isobench image build --only rootfs` to rebuild it"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rootfs    ") && stdout.contains("  damaged  "),
        "{stdout}"
    );
}

#[test]
fn run_names_damaged_rootfs() {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(cache_dir.path());
    let hashes = RecipeHashes::embedded();
    let rootfs = placeholder_set(&cache, ArtifactSet::Rootfs, &hashes.rootfs);
    std::fs::remove_file(rootfs.join("rootfs.ext4")).unwrap();

    let output = isobench(
        cache_dir.path(),
        &["run", "--backend", "process", "--trials", "1"],
    );
    let line = error_line(&output);
    assert!(line.contains("rootfs.ext4 is missing"), "{line}");
    assert!(
        line.contains("run `isobench image build --only rootfs`"),
        "{line}"
    );
}
