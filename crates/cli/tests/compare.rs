//! End-to-end tests of `isobench compare`: flag errors, and Ctrl-C during a real run of the
//! `process` and `docker` backends.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use isobench_harness::results::{Results, TrialOutcome};

/// Serialises the end-to-end runs, which share the host's Docker engine and CPU.
static END_TO_END: Mutex<()> = Mutex::new(());

fn isobench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_isobench"))
}

/// Runs `isobench compare ARGS` and returns its exit code and standard error.
fn compare_error(args: &[&str]) -> (i32, String) {
    let output = isobench().arg("compare").args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn zero_trials_is_rejected() {
    let (code, stderr) = compare_error(&["--trials", "0"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("invalid --trials 0"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one-line error: {stderr}");
}

#[test]
fn unknown_backend_is_rejected() {
    let (code, stderr) = compare_error(&["--backends", "process,vmware"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("vmware"), "{stderr}");
}

#[test]
fn small_memory_is_rejected() {
    let (code, stderr) = compare_error(&["--memory-mib", "16"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("invalid --memory-mib 16"), "{stderr}");
}

#[test]
fn missing_suite_is_rejected() {
    let (code, stderr) = compare_error(&["--suite", "/nonexistent/suite.toml"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("/nonexistent/suite.toml"), "{stderr}");
}

#[test]
fn invalid_suite_is_rejected() {
    let directory = tempfile::tempdir().unwrap();
    let suite = directory.path().join("suite.toml");
    fs::write(&suite, "name = \"empty\"\ncell = []\n").unwrap();
    let (code, stderr) = compare_error(&["--suite", suite.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no cells"), "{stderr}");
}

/// Why the end-to-end run cannot happen here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions and only returns the caller's effective user id.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root for chroot and mount".into());
    }
    if let Err(error) = isobench_harness::image::locate() {
        return Some(format!(
            "guest image not built ({error}); run `isobench image build`"
        ));
    }
    let docker = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    match docker {
        Ok(output) if output.status.success() => None,
        _ => Some("no Docker engine answers".into()),
    }
}

fn docker_ids(kind: &str, run_id: &str) -> Vec<String> {
    let filter = format!("label=isobench.run-id={run_id}");
    let args: Vec<&str> = match kind {
        "container" => vec!["ps", "--all", "--quiet", "--filter", &filter],
        _ => vec!["network", "ls", "--quiet", "--filter", &filter],
    };
    let output = Command::new("docker").args(&args).output().unwrap();
    assert!(output.status.success(), "docker {args:?} failed");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Processes whose root is a trial folder of the `process` backend run by the `isobench`
/// process `pid`, and mounts under such folders. Trial folders are named
/// `isobench-process-<run id>-t<trial>-...`, and the run id ends with the pid, so other runs on
/// the same host are left out.
fn process_backend_leftovers(pid: u32) -> Vec<String> {
    let owned =
        |path: &str| path.contains("isobench-process-") && path.contains(&format!("-{pid}-t"));
    let mut leftovers = Vec::new();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mountinfo.lines().filter(|line| owned(line)) {
        leftovers.push(format!("mount: {line}"));
    }
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(root) = fs::read_link(entry.path().join("root")) else {
            continue;
        };
        if owned(&root.to_string_lossy()) {
            leftovers.push(format!(
                "process {:?} rooted at {}",
                entry.file_name(),
                root.display()
            ));
        }
    }
    leftovers
}

fn read_results(path: &Path) -> Option<Results> {
    path.exists().then(|| Results::read(path).ok()).flatten()
}

/// Polls `ready` until it returns a value, failing the test if the child exits first or
/// nothing is ready within 300 s. The child is an `Option` so that an early exit can take it
/// to collect its standard error.
fn wait_running<T>(
    child: &mut Option<Child>,
    waiting_for: &str,
    mut ready: impl FnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = ready() {
            return value;
        }
        let running = child.as_mut().unwrap();
        if let Some(status) = running.try_wait().unwrap() {
            let output = child.take().unwrap().wait_with_output().unwrap();
            panic!(
                "compare exited early with {status}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{waiting_for} in 300 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGINT to the child, as Ctrl-C in its terminal would.
fn interrupt(child: &Child) {
    send_signal(child, libc::SIGINT);
}

/// Sends `signal` to the child.
fn send_signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill only sends a signal to the child this test spawned and still owns.
    let signalled = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(signalled, 0, "signal {signal} to isobench compare");
}

#[test]
fn ctrl_c_in_warmup_keeps_no_trial() {
    stop_in_warmup_keeps_no_trial(libc::SIGINT);
}

#[test]
fn sigterm_in_warmup_keeps_no_trial() {
    stop_in_warmup_keeps_no_trial(libc::SIGTERM);
}

/// Stops a run with `signal` during its first warm-up and checks what it kept and left.
fn stop_in_warmup_keeps_no_trial(signal: libc::c_int) {
    if let Some(reason) = missing_prerequisite() {
        eprintln!("skipped: {reason}");
        return;
    }
    let _serial = END_TO_END
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("report");
    let child = isobench()
        .args(["compare", "--backends", "process,docker"])
        .args(["--trials", "2", "--warmup", "1"])
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The first warm-up has begun once its trial folder is mounted.
    let pid = child.id();
    let mut child = Some(child);
    wait_running(&mut child, "no warm-up started", || {
        (!process_backend_leftovers(pid).is_empty()).then_some(())
    });
    let child = child.unwrap();
    send_signal(&child, signal);

    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(130), "exit: {stderr}");
    assert!(
        stderr.contains("interrupted during process warm-up 1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("process: 0 of 2 trials completed and kept"),
        "{stderr}"
    );
    assert!(
        stderr.contains("docker: 0 of 2 trials completed and kept"),
        "{stderr}"
    );
    assert!(!stderr.contains("0 of 0"), "{stderr}");
    assert!(!stdout.contains("0 of 0"), "{stdout}");

    let results = Results::read(&out.join("results.json")).unwrap();
    assert!(results.run.interrupted);
    assert_eq!(results.trials.len(), 1, "only the interrupted warm-up");
    assert!(results.trials[0].warmup);
    assert!(matches!(
        results.trials[0].outcome,
        TrialOutcome::Interrupted { .. }
    ));
    let run_id = &results.run.run_id;
    assert_eq!(docker_ids("container", run_id), Vec::<String>::new());
    assert_eq!(docker_ids("network", run_id), Vec::<String>::new());
    assert_eq!(process_backend_leftovers(pid), Vec::<String>::new());
}

#[test]
fn ctrl_c_keeps_trials_and_leaves_nothing() {
    if let Some(reason) = missing_prerequisite() {
        eprintln!("skipped: {reason}");
        return;
    }
    let _serial = END_TO_END
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("report");
    let results_path = out.join("results.json");
    let child = isobench()
        .args([
            "compare",
            "--backends",
            "process,docker",
            "--trials",
            "30",
            "--warmup",
            "0",
        ])
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Wait for two finished trials, then interrupt the third as Ctrl-C would.
    let pid = child.id();
    let mut child = Some(child);
    let run_id = wait_running(&mut child, "no trial finished", || {
        let results = read_results(&results_path)?;
        (results.trials.len() >= 2).then_some(results.run.run_id)
    });
    let child = child.unwrap();
    std::thread::sleep(Duration::from_millis(700));
    interrupt(&child);

    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(130),
        "exit after Ctrl-C: {stderr}"
    );

    let results = Results::read(&results_path).unwrap();
    assert!(
        results.run.interrupted,
        "results.json marks the run interrupted"
    );
    assert!(results.trials.len() >= 2, "finished trials are kept");
    assert!(results.trials.len() < 60, "no trial started after Ctrl-C");
    let completed = results
        .trials
        .iter()
        .filter(|t| t.outcome == TrialOutcome::Completed)
        .count();
    assert!(completed >= 2, "{completed} completed trials");
    assert!(
        out.join("index.html").is_file(),
        "the report covers the finished trials"
    );

    assert_eq!(
        docker_ids("container", &run_id),
        Vec::<String>::new(),
        "containers left"
    );
    assert_eq!(
        docker_ids("network", &run_id),
        Vec::<String>::new(),
        "networks left"
    );
    assert_eq!(process_backend_leftovers(pid), Vec::<String>::new());
}
