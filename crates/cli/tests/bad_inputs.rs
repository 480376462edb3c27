//! Bad inputs to every subcommand, as a new user types them. A value that parses but is invalid
//! ends in one `isobench:` line that names the value and what to do, with exit status 1, no
//! panic and no files left behind. A value that does not parse gets clap's usage error, with
//! exit status 2. None of these tests builds the guest image or boots a guest.

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

    let output = isobench(
        cache_dir.path(),
        &["image", "status", "--no-docker", "--json"],
    );
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

/// Lists the names in `dir`, to check that a rejected command left nothing behind.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn compare_rejects_file_as_out() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("report");
    std::fs::write(&file, b"x").unwrap();
    let out = file.to_str().unwrap();

    // The Docker engine is unreachable, so a late check would report the engine instead.
    let output = isobench(
        scratch.path(),
        &["compare", "--backends", "docker", "--out", out],
    );
    let line = error_line(&output);
    assert_eq!(
        line,
        format!(
            "isobench: invalid --out {out}: it is a file, not a folder; pass a new or empty folder"
        )
    );
    assert_eq!(names_in(scratch.path()), ["report"]);
}

#[test]
fn compare_rejects_non_empty_out() {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("report");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("results.json"), b"{}").unwrap();

    let output = isobench(
        scratch.path(),
        &[
            "compare",
            "--backends",
            "docker",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let line = error_line(&output);
    assert!(line.contains(out.to_str().unwrap()), "{line}");
    assert!(line.contains("exists and is not empty"), "{line}");
    assert!(line.ends_with("pass a new or empty folder"), "{line}");
    assert_eq!(names_in(&out), ["results.json"]);
}

#[test]
fn compare_rejects_out_without_parent() {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("missing/report");
    let output = isobench(
        scratch.path(),
        &[
            "compare",
            "--backends",
            "docker",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let line = error_line(&output);
    let parent = scratch.path().join("missing");
    let expected = format!("its folder {} does not exist", parent.display());
    assert!(line.contains(&expected), "{line}");
    assert!(line.contains("create it first"), "{line}");
    assert!(names_in(scratch.path()).is_empty());
}

#[test]
fn run_rejects_existing_results_file() {
    let scratch = tempfile::tempdir().unwrap();
    let results = scratch.path().join("results.json");
    std::fs::write(&results, b"{}").unwrap();
    let output = isobench(
        scratch.path(),
        &[
            "run",
            "--backend",
            "docker",
            "--results",
            results.to_str().unwrap(),
        ],
    );
    let line = error_line(&output);
    assert!(line.contains("invalid --results"), "{line}");
    assert!(line.contains("the file exists"), "{line}");
    assert_eq!(std::fs::read(&results).unwrap(), b"{}");
}

#[test]
fn vcpu_limit_is_same_everywhere() {
    let scratch = tempfile::tempdir().unwrap();
    let max = isobench_vmm::config::MAX_VCPUS;
    let above = (max + 1).to_string();
    let expected = format!(
        "isobench: invalid --vcpus {above}: use 1 to {max}, the vCPU limit of the microVM's MP \
         table"
    );
    let commands: [&[&str]; 3] = [
        &["compare", "--backends", "docker", "--vcpus", &above],
        &["run", "--backend", "docker", "--vcpus", &above],
        &["vm", "boot", "--vcpus", &above],
    ];
    for args in commands {
        let line = error_line(&isobench(scratch.path(), args));
        assert_eq!(line, expected, "isobench {args:?}");
    }

    // The limit itself passes the check, so vm boot fails later, on the empty cache, before it
    // starts the emulated host.
    let at_limit = max.to_string();
    let args = ["vm", "boot", "--host", "emulated", "--vcpus", &at_limit];
    let output = isobench(scratch.path(), &args);
    let line = error_line(&output);
    assert!(!line.contains("--vcpus"), "{line}");
    assert!(
        line.starts_with("isobench: guest image not built"),
        "{line}"
    );
}

#[test]
fn vm_boot_rejects_bad_numbers() {
    let scratch = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--vcpus", "0"], "invalid --vcpus 0: use 1 to"),
        (
            &["--memory", "0"],
            "invalid --memory 0: the Jupyter kernel needs at least",
        ),
        (
            &["--memory", "4000000000"],
            "invalid --memory 4000000000: this host has",
        ),
        (
            &["--ready-deadline", "-1"],
            "invalid --ready-deadline -1: use a positive number",
        ),
        (
            &["--ready-deadline", "1e300"],
            "invalid --ready-deadline 1000000000",
        ),
    ];
    for host in ["direct", "emulated"] {
        for (flags, expected) in cases {
            let mut args = vec!["vm", "boot", "--host", host];
            args.extend_from_slice(flags);
            let line = error_line(&isobench(scratch.path(), &args));
            assert!(
                line.starts_with(&format!("isobench: {expected}")),
                "isobench {args:?}: {line}"
            );
        }
    }
    assert!(names_in(scratch.path()).is_empty());
}

#[test]
fn negative_numbers_name_their_flag() {
    let scratch = tempfile::tempdir().unwrap();
    for command in [["compare", "--backends"], ["run", "--backend"]] {
        for (flag, expected) in [
            (
                "--trial-deadline",
                "invalid --trial-deadline -1: use a positive number",
            ),
            (
                "--ready-deadline",
                "invalid --ready-deadline -1: use a positive number",
            ),
        ] {
            let args = [command[0], command[1], "docker", flag, "-1"];
            let line = error_line(&isobench(scratch.path(), &args));
            assert!(
                line.starts_with(&format!("isobench: {expected}")),
                "isobench {args:?}: {line}"
            );
        }
        // A negative count fails to parse as a whole number, which clap reports (status 2).
        for flag in ["--trials", "--warmup", "--vcpus", "--memory-mib"] {
            let args = [command[0], command[1], "docker", flag, "-1"];
            let output = isobench(scratch.path(), &args);
            let stderr = stderr_of(&output);
            assert_eq!(output.status.code(), Some(2), "isobench {args:?}: {stderr}");
            let expected = format!("invalid value '-1' for '{flag}");
            assert!(stderr.contains(&expected), "isobench {args:?}: {stderr}");
        }
    }
    assert!(names_in(scratch.path()).is_empty());
}

#[test]
fn cache_dir_must_be_folder() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("cache");
    std::fs::write(&file, b"x").unwrap();
    let expected = format!(
        "isobench: the cache folder {} is not a folder: set ISOBENCH_CACHE_DIR to a writable \
         folder",
        file.display()
    );
    for args in [
        ["image", "status", "--no-docker"],
        ["image", "build", "--no-docker"],
    ] {
        let line = error_line(&isobench(&file, &args));
        assert_eq!(line, expected, "isobench {args:?}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[test]
fn report_rejects_file_as_out() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("report");
    std::fs::write(&file, b"x").unwrap();
    // The results file does not exist either, but the folder is checked first.
    let results = scratch.path().join("results.json");
    let output = isobench(
        scratch.path(),
        &[
            "report",
            results.to_str().unwrap(),
            "--out",
            file.to_str().unwrap(),
        ],
    );
    let line = error_line(&output);
    let expected = format!(
        "isobench: invalid --out {}: it is a file, not a folder; pass a folder",
        file.display()
    );
    assert_eq!(line, expected);
    assert_eq!(names_in(scratch.path()), ["report"]);
}

#[test]
fn docker_vcpus_above_host_cpus_rejected() {
    let scratch = tempfile::tempdir().unwrap();
    let cpus = std::thread::available_parallelism().unwrap().get();
    let above = (cpus + 1).to_string();
    let expected = format!(
        "isobench: invalid --vcpus {above}: the docker backend's CPU limit cannot exceed this \
         host's {cpus} CPUs; use at most {cpus}, or leave docker out of --backends"
    );
    let commands: [&[&str]; 3] = [
        &["compare", "--vcpus", &above],
        &["compare", "--backends", "process,docker", "--vcpus", &above],
        &["run", "--backend", "docker", "--vcpus", &above],
    ];
    for args in commands {
        let line = error_line(&isobench(scratch.path(), args));
        assert_eq!(line, expected, "isobench {args:?}");
    }

    // Without docker the same count passes this check and fails later, on the empty cache.
    let args = ["run", "--backend", "process", "--vcpus", &above];
    let line = error_line(&isobench(scratch.path(), &args));
    assert!(
        line.starts_with("isobench: guest image not built"),
        "{line}"
    );
}

#[test]
fn relative_cache_dir_becomes_absolute() {
    let scratch = tempfile::tempdir().unwrap();
    let output = Command::new(ISOBENCH)
        .args(["image", "status", "--json", "--no-docker"])
        .env("ISOBENCH_CACHE_DIR", "cache")
        .current_dir(scratch.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let expected = scratch.path().join("cache");
    assert_eq!(status["cache_dir"], expected.to_string_lossy().as_ref());
    assert!(status["sets"][0]["dir"]
        .as_str()
        .unwrap()
        .starts_with(expected.to_str().unwrap()));
}
