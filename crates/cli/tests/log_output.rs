//! The `tracing` log on standard error: plain text, without colour codes, when standard error
//! is a pipe or a file rather than a terminal.

use std::path::Path;
use std::process::Command;

#[test]
fn log_to_pipe_has_no_colour_codes() {
    // `isobench doctor` requests the Docker engine's version, and the Docker client logs
    // each request at debug level, so the log is not empty.
    if !Path::new("/var/run/docker.sock").exists() {
        eprintln!("skipped: no Docker engine at /var/run/docker.sock to log requests to");
        return;
    }
    let output = Command::new(env!("CARGO_BIN_EXE_isobench"))
        .arg("doctor")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.lines().any(|line| line.starts_with("DEBUG ")),
        "no plain DEBUG line in: {stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a piped log: {stderr:?}"
    );
}
