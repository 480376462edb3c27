//! End-to-end runs of `isobench compare --microvm-host emulated`: the microVM trials run in the
//! emulated hardware-KVM host (QEMU TCG with nested SVM) beside the `process` backend.
//!
//! One such run takes minutes, so these tests run only when `ISOBENCH_EMULATED_TESTS=1` is set,
//! as scripts/test does. Each run gets its own `TMPDIR`, so the tests can check that
//! the emulated host's scratch folders are gone afterwards.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use isobench_harness::results::{ExecutionHost, Results, TrialOutcome};
use isobench_harness::stats::Bootstrap;
use isobench_harness::summary::RunSummary;

/// Serialises the runs, because two emulated hosts at once compete for the cores and slow each
/// other down.
static EMULATED_HOST: Mutex<()> = Mutex::new(());

/// Returns why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if std::env::var("ISOBENCH_EMULATED_TESTS").as_deref() != Ok("1") {
        return Some("emulated-host runs take minutes: set ISOBENCH_EMULATED_TESTS=1".into());
    }
    // SAFETY: geteuid has no preconditions and only returns the caller's effective user id.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root for chroot, mount and the emulated host's TAP".into());
    }
    if let Err(error) = isobench_harness::image::locate() {
        let message = format!("guest image not built ({error}); run `isobench image build`");
        assert!(std::env::var_os("CI").is_none(), "{message}");
        return Some(message);
    }
    None
}

/// Starts `isobench compare` with the process backend and the emulated microVM, writing its
/// report to `out` and its temporary files under `tmp`.
fn start_compare(out: &Path, tmp: &Path, trials: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_isobench"))
        .args(["compare", "--backends", "process,microvm"])
        .args([
            "--microvm-host",
            "emulated",
            "--trials",
            trials,
            "--warmup",
            "0",
        ])
        .arg("--out")
        .arg(out)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start isobench compare")
}

/// Returns the entries left in `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.path().display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Returns the ids of running QEMU processes whose command line mentions `dir`.
fn qemu_processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.starts_with("qemu-system") && cmdline.contains(&needle)
        })
        .collect()
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn emulated_trial_marked_and_unranked() {
    if let Some(reason) = missing_prerequisite() {
        eprintln!("skipped: {reason}");
        return;
    }
    let _serial = EMULATED_HOST
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let directory = tempfile::tempdir().unwrap();
    let tmp = directory.path().join("tmp");
    fs::create_dir(&tmp).unwrap();

    // QEMU's TCG sometimes stalls an outer processor or faults the guest. After such a run, the
    // test starts a fresh emulated host, up to three runs in all, as the boot tests do.
    let mut attempt = 1;
    // A failed trial makes compare exit with failure, so the results are read first.
    let (out, stderr, results) = loop {
        let out = directory.path().join(format!("report-{attempt}"));
        let output = start_compare(&out, &tmp, "1").wait_with_output().unwrap();
        let stderr = stderr_of(&output);
        let results = Results::read(&out.join("results.json"))
            .unwrap_or_else(|error| panic!("{error}; compare printed: {stderr}"));
        let emulation_failed = results.trials.iter().any(|trial| {
            matches!(&trial.outcome, TrialOutcome::Failed { cause, .. }
                if cause.starts_with("emulated host run failed")
                    || cause.contains("guest triple fault"))
        });
        if !emulation_failed || attempt == 3 {
            assert!(output.status.success(), "compare failed: {stderr}");
            break (out, stderr, results);
        }
        eprintln!("emulation failed in run {attempt}, starting a fresh one: {stderr}");
        attempt += 1;
    };
    assert!(
        out.join("index.html").is_file(),
        "no report in {}",
        out.display()
    );
    let microvm: Vec<_> = results
        .trials
        .iter()
        .filter(|trial| trial.backend == "microvm")
        .collect();
    assert!(!microvm.is_empty(), "no microvm trial: {stderr}");
    for trial in &microvm {
        assert_eq!(
            trial.execution_host,
            ExecutionHost::Emulated,
            "microvm trial {} is not marked as emulation",
            trial.round
        );
        assert_eq!(
            trial.outcome,
            TrialOutcome::Completed,
            "microvm trial {}: {stderr}",
            trial.round
        );
    }

    let summary = RunSummary::of(&results, &Bootstrap::default());
    let backend = summary.backend("microvm").expect("microvm summary");
    assert_eq!(backend.execution_host, ExecutionHost::Emulated);
    for figure in &backend.figures {
        assert!(
            figure.ratio_to_baseline.is_none(),
            "emulated figure {} has a ratio to process",
            figure.name
        );
    }
    assert!(
        summary
            .comparisons
            .iter()
            .all(|comparison| comparison.backend != "microvm" && comparison.other != "microvm"),
        "an emulated backend is ranked"
    );
    assert_eq!(
        leftovers(&tmp),
        Vec::<String>::new(),
        "temporary files left"
    );
}

#[test]
fn ctrl_c_stops_emulated_host() {
    if let Some(reason) = missing_prerequisite() {
        eprintln!("skipped: {reason}");
        return;
    }
    let _serial = EMULATED_HOST
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("report");
    let tmp = directory.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let mut child = start_compare(&out, &tmp, "1");

    // The process trial runs first, then QEMU starts with the emulated trials.
    let started = Instant::now();
    while qemu_processes_under(&tmp).is_empty() {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            panic!(
                "compare exited with {status} before QEMU started: {}",
                stderr_of(&output)
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "QEMU did not start within 600 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    // SAFETY: kill only sends SIGINT, as Ctrl-C would, to the child this test spawned.
    let signalled = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(signalled, 0, "SIGINT to isobench compare");
    let interrupted = Instant::now();

    let output = child.wait_with_output().unwrap();
    let stderr = stderr_of(&output);
    let stop_time = interrupted.elapsed();
    eprintln!("compare exited {stop_time:?} after Ctrl-C");
    assert_eq!(
        output.status.code(),
        Some(130),
        "exit after Ctrl-C: {stderr}"
    );
    assert!(
        stop_time < Duration::from_secs(30),
        "compare took {stop_time:?} to stop after Ctrl-C"
    );
    assert_eq!(
        qemu_processes_under(&tmp),
        Vec::<u32>::new(),
        "QEMU still running"
    );
    assert_eq!(
        leftovers(&tmp),
        Vec::<String>::new(),
        "temporary files left"
    );

    let results = Results::read(&out.join("results.json")).expect("results.json");
    assert!(
        results.run.interrupted,
        "results.json marks the run interrupted"
    );
    let process_completed = results
        .trials
        .iter()
        .filter(|trial| trial.backend == "process" && trial.outcome == TrialOutcome::Completed)
        .count();
    assert_eq!(process_completed, 1, "the finished process trial is kept");
    let microvm_interrupted = results.trials.iter().any(|trial| {
        trial.backend == "microvm" && matches!(trial.outcome, TrialOutcome::Interrupted { .. })
    });
    assert!(
        microvm_interrupted,
        "the microvm block is kept as interrupted: {stderr}"
    );
}
