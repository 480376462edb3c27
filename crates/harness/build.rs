//! Records the git revision the harness is built from, for the results' provenance.

use std::process::Command;

fn main() {
    // Rebuild when HEAD moves or the index changes (a commit, a checkout, staged edits).
    for path in ["../../.git/HEAD", "../../.git/index"] {
        println!("cargo:rerun-if-changed={path}");
    }
    let revision = git(&["rev-parse", "--short=12", "HEAD"]);
    // A plain `git status` may refresh the index, which is watched above, so the next cargo
    // call would rebuild. With --no-optional-locks it leaves the index alone.
    let dirty = git(&[
        "--no-optional-locks",
        "status",
        "--porcelain",
        "--untracked-files=no",
    ])
    .map(|status| !status.is_empty())
    .unwrap_or(false);
    if let Some(revision) = revision {
        let suffix = if dirty { "-dirty" } else { "" };
        println!("cargo:rustc-env=ISOBENCH_GIT_REVISION={revision}{suffix}");
    }
}

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
