//! Runs an [`EmulatedRun`] on this host, for hosts whose processor has hardware virtualization:
//! files and disks are used in place through their environment variables.

use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{initramfs, io_error, EmulatedError, EmulatedOutput, EmulatedRun};

/// Interval of polling the command.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The command's process group, killed when dropped, together with whatever the command left
/// running in it.
struct CommandProcess {
    child: Child,
    reaped: bool,
}

impl CommandProcess {
    /// Returns whether the group leader has exited, without reaping it, so that its pid and
    /// so the group id stay reserved until Drop has killed the group.
    fn has_exited(&self) -> std::io::Result<bool> {
        // SAFETY: all-zero bytes are a valid siginfo_t, a plain C struct.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let pid = self.child.id() as libc::id_t;
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
        if unsafe { libc::waitid(libc::P_PID, pid, &mut info, flags) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: waitid succeeded, so `info` contains either zeros (no state change yet) or the
        // child's state, and si_pid is valid to read in both cases.
        Ok(unsafe { info.si_pid() } != 0)
    }

    /// Kills the group, then reaps the leader and returns how it ended.
    fn kill_and_reap(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.kill_group();
        let exit = self.child.wait();
        self.reaped = true;
        exit
    }

    fn kill_group(&self) {
        if self.reaped {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory-safety preconditions. The group id is the pid of our
            // own child, which `process_group(0)` made a group leader, and the child has not
            // been reaped yet, so the id cannot have been reused by another group.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for CommandProcess {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.kill_and_reap();
        }
    }
}

pub(super) fn run(run: &EmulatedRun) -> Result<EmulatedOutput, EmulatedError> {
    initramfs::validate(run)?;
    let scratch = tempfile::Builder::new()
        .prefix("isobench-direct-")
        .tempdir()
        .map_err(io_error("cannot create a folder in", &std::env::temp_dir()))?;
    let stdout_path = scratch.path().join("stdout");
    let stderr_path = scratch.path().join("stderr");
    let stdout = fs::File::create(&stdout_path).map_err(io_error("cannot create", &stdout_path))?;
    let stderr = fs::File::create(&stderr_path).map_err(io_error("cannot create", &stderr_path))?;

    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&run.command)
        .current_dir(scratch.path());
    for file in &run.files {
        if let Some(env) = &file.env {
            command.env(env, &file.source);
        }
    }
    for disk in &run.disks {
        command.env(&disk.env, &disk.source);
    }
    command.envs(run.env.iter().map(|(name, value)| (name, value)));
    command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    let child = command.spawn().map_err(|source| EmulatedError::Io {
        action: "cannot start",
        path: "sh".into(),
        source,
    })?;
    let mut process = CommandProcess {
        child,
        reaped: false,
    };

    let start = Instant::now();
    loop {
        match process.has_exited() {
            Ok(true) => break,
            Ok(false) => {}
            Err(source) => {
                return Err(EmulatedError::Io {
                    action: "cannot wait for",
                    path: "sh".into(),
                    source,
                })
            }
        }
        if run.is_cancelled() {
            drop(process);
            let partial = EmulatedOutput {
                exit_status: -1,
                stdout: fs::read(&stdout_path).unwrap_or_default(),
                stderr: fs::read(&stderr_path).unwrap_or_default(),
                ..EmulatedOutput::default()
            };
            return Err(EmulatedError::Cancelled {
                elapsed: start.elapsed(),
                partial: Box::new(partial),
            });
        }
        if start.elapsed() > run.timeout {
            drop(process);
            let partial = EmulatedOutput {
                exit_status: -1,
                stdout: fs::read(&stdout_path).unwrap_or_default(),
                stderr: fs::read(&stderr_path).unwrap_or_default(),
                ..EmulatedOutput::default()
            };
            return Err(EmulatedError::TimedOut {
                timeout: run.timeout,
                last_record: "command running".to_owned(),
                kernel_fault: "none".to_owned(),
                partial: Box::new(partial),
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let exit = process
        .kill_and_reap()
        .map_err(|source| EmulatedError::Io {
            action: "cannot wait for",
            path: "sh".into(),
            source,
        })?;
    let exit_status = exit
        .code()
        .or(exit.signal().map(|signal| 128 + signal))
        .unwrap_or(-1);
    Ok(EmulatedOutput {
        exit_status,
        stdout: fs::read(&stdout_path).map_err(io_error("cannot read", &stdout_path))?,
        stderr: fs::read(&stderr_path).map_err(io_error("cannot read", &stderr_path))?,
        ..EmulatedOutput::default()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn cancel_flag_stops_command() {
        let mut run = EmulatedRun::new("echo started; sleep 30");
        let flag = Arc::new(AtomicBool::new(false));
        run.cancel = Some(flag.clone());
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            flag.store(true, Ordering::Relaxed);
        });
        let start = Instant::now();
        let result = super::run(&run);
        setter.join().unwrap();

        let Err(EmulatedError::Cancelled { partial, .. }) = result else {
            panic!("expected a cancelled run, got {result:?}");
        };
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "cancel took {:?}",
            start.elapsed()
        );
        assert_eq!(partial.stdout, b"started\n");
    }
}
