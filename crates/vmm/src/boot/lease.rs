//! A read lease on the guest kernel file while its pages are mapped into guest RAM.
//!
//! A `MAP_PRIVATE` file mapping keeps following the file on Linux. Bytes written to the file
//! show through in every page the guest has not written yet. Truncating the file drops the
//! pages past the new end, private copies included (`truncate_pagecache`), so that a VMM access
//! to such a page raises SIGBUS and a guest access makes `KVM_RUN` fail. With a read lease
//! (`fcntl(F_SETLEASE, F_RDLCK)`, see fcntl(2)), the kernel signals this process before another
//! process opens the file for writing or truncates it. It holds that process back until the
//! lease is released or `/proc/sys/fs/lease-break-time` seconds (45 by default) have passed.
//! On that signal the VM is stopped, and the lease stays until the VMM exits and unmaps the
//! file. Replacing the file by a rename, as the guest image cache does, leaves the mapped
//! file alone and does not stop the VM.
//!
//! The lease signal is sent to one thread only (`F_SETOWN_EX` with `F_OWNER_TID`), a watcher
//! that blocks it and takes it with `sigwaitinfo`, so no other thread ever sees it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::events::ExitReason;
use crate::vcpu::ExitLatch;

/// Errors of taking the lease; each one means the kernel is copied instead of mapped.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The kernel is not a regular file.
    #[error("the guest kernel is not a regular file")]
    NotRegular,
    /// The file system is not one where a lease covers every writer.
    #[error("file system type {0:#x} is not a local file system")]
    NotLocal(i64),
    /// A system call failed.
    #[error("{what} failed")]
    Sys {
        /// The call.
        what: &'static str,
        /// Its error.
        #[source]
        source: io::Error,
    },
}

/// `fcntl` commands and owner type missing from the `libc` crate for glibc targets
/// (`include/uapi/asm-generic/fcntl.h`).
const F_SETSIG: libc::c_int = 10;
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;

/// `struct f_owner_ex`.
#[repr(C)]
struct FileOwner {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// Local file systems by `statfs` magic, where a lease covers every writer. Network file
/// systems are left out because a writer on another host bypasses the lease.
const LOCAL_FILE_SYSTEMS: [i64; 5] = [
    libc::EXT4_SUPER_MAGIC, // also ext2 and ext3
    libc::XFS_SUPER_MAGIC,
    libc::BTRFS_SUPER_MAGIC,
    libc::TMPFS_MAGIC,
    libc::F2FS_SUPER_MAGIC,
];

/// Returns the signal that announces a lease break, the real-time signal after the vCPU kick.
pub fn lease_signal() -> libc::c_int {
    crate::vcpu::kick_signal() + 1
}

fn sys_error(what: &'static str) -> impl FnOnce(io::Error) -> LeaseError {
    move |source| LeaseError::Sys { what, source }
}

fn check(result: libc::c_int, what: &'static str) -> Result<(), LeaseError> {
    if result < 0 {
        return Err(sys_error(what)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether a lease was broken, and the latch to stop the VM with once one is known.
#[derive(Default)]
struct BreakState {
    broken: bool,
    latch: Option<Arc<ExitLatch>>,
}

struct Shared {
    path: String,
    closing: AtomicBool,
    state: Mutex<BreakState>,
    /// The watcher's thread id once it blocks the lease signal, or the error that stopped it.
    /// A condition variable rather than a channel, because sending on a channel would make the
    /// watcher allocate, and so create a malloc arena of its own.
    watcher_tid: Mutex<Option<io::Result<libc::pid_t>>>,
    watcher_ready: Condvar,
}

impl Shared {
    fn stop_vm(latch: &ExitLatch) {
        latch.request(ExitReason::Signal(lease_signal()));
    }
}

/// A held read lease on the guest kernel file, with the thread that watches for its break.
pub struct KernelFileLease {
    shared: Arc<Shared>,
    watcher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for KernelFileLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelFileLease")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid value, and sigemptyset then initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset and sigaddset only write the local set; the signal number is a valid
    // real-time signal.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: as above.
    unsafe { libc::sigaddset(&mut set, lease_signal()) };
    set
}

fn watch(shared: Arc<Shared>) {
    let set = signal_set();
    // SAFETY: pthread_sigmask reads `set` and writes no old set (null).
    let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let tid = if blocked != 0 {
        Err(io::Error::from_raw_os_error(blocked))
    } else {
        // SAFETY: gettid has no preconditions.
        Ok(unsafe { libc::gettid() })
    };
    let started = tid.is_ok();
    *crate::devices::lock(&shared.watcher_tid) = Some(tid);
    shared.watcher_ready.notify_one();
    if !started {
        return;
    }
    loop {
        // SAFETY: `set` is a valid signal set and the info pointer may be null.
        let signal = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if shared.closing.load(Ordering::Acquire) {
            return;
        }
        if signal < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(%error, "cannot wait for the guest kernel lease signal");
            return;
        }
        tracing::error!(
            path = %shared.path,
            "another process opens the guest kernel for writing or truncates it while it is \
             mapped into guest RAM: stopping the VM; that process waits until the VMM exits"
        );
        let mut state = crate::devices::lock(&shared.state);
        state.broken = true;
        if let Some(latch) = &state.latch {
            Shared::stop_vm(latch);
        }
    }
}

impl KernelFileLease {
    /// Takes a read lease on `file`, opened read-only from `path`, when it is a regular file
    /// on a local file system and no process has it open for writing.
    pub fn acquire(file: &File, path: &str) -> Result<Self, LeaseError> {
        let metadata = file.metadata().map_err(sys_error("fstat"))?;
        if !metadata.file_type().is_file() {
            return Err(LeaseError::NotRegular);
        }
        // SAFETY: an all-zero statfs is a valid value of this plain C struct.
        let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: fstatfs writes only `stats`, and the descriptor is open during the call.
        let result = unsafe { libc::fstatfs(file.as_raw_fd(), &mut stats) };
        check(result, "fstatfs")?;
        let kind = stats.f_type;
        if !LOCAL_FILE_SYSTEMS.contains(&kind) {
            return Err(LeaseError::NotLocal(kind));
        }

        let shared = Arc::new(Shared {
            path: path.to_string(),
            closing: AtomicBool::new(false),
            state: Mutex::new(BreakState::default()),
            watcher_tid: Mutex::new(None),
            watcher_ready: Condvar::new(),
        });
        let watcher = std::thread::Builder::new()
            .name("kernel-lease".into())
            .stack_size(64 << 10)
            .spawn({
                let shared = shared.clone();
                move || watch(shared)
            })
            .map_err(sys_error("spawn the lease watcher"))?;
        let mut lease = KernelFileLease {
            shared,
            watcher: Some(watcher),
        };
        let tid = {
            let mut slot = crate::devices::lock(&lease.shared.watcher_tid);
            loop {
                if let Some(tid) = slot.take() {
                    break tid;
                }
                slot = lease
                    .shared
                    .watcher_ready
                    .wait(slot)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
        .map_err(sys_error("start the lease watcher"))?;
        lease.take(file, tid)?;
        Ok(lease)
    }

    fn take(&mut self, file: &File, tid: libc::pid_t) -> Result<(), LeaseError> {
        let fd = file.as_raw_fd();
        let owner = FileOwner {
            kind: F_OWNER_TID,
            pid: tid,
        };
        // SAFETY: fcntl on a descriptor open during the call; F_SETSIG takes a signal number.
        let result = unsafe { libc::fcntl(fd, F_SETSIG, lease_signal()) };
        check(result, "F_SETSIG")?;
        // SAFETY: F_SETOWN_EX reads a `struct f_owner_ex`, which `owner` is and outlives.
        let result = unsafe { libc::fcntl(fd, F_SETOWN_EX, &owner) };
        check(result, "F_SETOWN_EX")?;
        // SAFETY: F_SETLEASE takes a lease type; a read lease needs a descriptor opened
        // read-only, which `file` is.
        let result = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) };
        check(result, "F_SETLEASE")
    }

    /// Stops the VM through `latch` when the lease breaks, at once if it already broke.
    pub fn stop_vm_on_break(&self, latch: Arc<ExitLatch>) {
        let mut state = crate::devices::lock(&self.shared.state);
        if state.broken {
            Shared::stop_vm(&latch);
        }
        state.latch = Some(latch);
    }

    /// Returns whether another process tried to open the file for writing or truncate it.
    pub fn is_broken(&self) -> bool {
        crate::devices::lock(&self.shared.state).broken
    }
}

impl Drop for KernelFileLease {
    fn drop(&mut self) {
        let Some(watcher) = self.watcher.take() else {
            return;
        };
        self.shared.closing.store(true, Ordering::Release);
        if !watcher.is_finished() {
            // SAFETY: the thread is not joined, so its pthread_t is valid, and it blocks the
            // lease signal, which it takes with sigwaitinfo and then returns.
            unsafe { libc::pthread_kill(watcher.as_pthread_t(), lease_signal()) };
        }
        let _ = watcher.join();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::events::EventSink;

    fn temp_file() -> (tempfile::TempDir, std::path::PathBuf, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let file = File::open(&path).unwrap();
        (dir, path, file)
    }

    #[test]
    fn lease_break_stops_vm() {
        let (_dir, path, file) = temp_file();
        let lease = match KernelFileLease::acquire(&file, &path.display().to_string()) {
            Ok(lease) => lease,
            Err(error) => {
                eprintln!("skipped: no lease here: {error}");
                return;
            }
        };
        let latch = Arc::new(ExitLatch::new(Arc::new(EventSink::discard())).unwrap());
        lease.stop_vm_on_break(latch.clone());
        assert!(!latch.is_set(), "an unbroken lease leaves the VM running");

        // Opening for writing blocks until the lease is released, so do it on a thread and
        // release the lease by dropping it once the VM was asked to stop.
        let writer = std::thread::spawn({
            let path = path.clone();
            move || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map(|_| ())
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !latch.is_set() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(latch.is_set(), "the lease break stopped the VM");
        assert_eq!(latch.reason(), Some(ExitReason::Signal(lease_signal())));
        assert!(lease.is_broken());
        assert!(
            !writer.is_finished(),
            "the writer waits while the lease is held"
        );
        drop(lease);
        drop(file);
        writer.join().unwrap().unwrap();
    }

    #[test]
    fn lease_taken_after_break_stops_vm_at_once() {
        let (_dir, path, file) = temp_file();
        let Ok(lease) = KernelFileLease::acquire(&file, &path.display().to_string()) else {
            eprintln!("skipped: no lease here");
            return;
        };
        crate::devices::lock(&lease.shared.state).broken = true;
        let latch = Arc::new(ExitLatch::new(Arc::new(EventSink::discard())).unwrap());
        lease.stop_vm_on_break(latch.clone());
        assert!(latch.is_set());
    }

    #[test]
    fn lease_rejected_while_open_for_writing() {
        let (_dir, path, file) = temp_file();
        let _writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let error = KernelFileLease::acquire(&file, &path.display().to_string()).unwrap_err();
        assert!(
            matches!(error, LeaseError::Sys { .. } | LeaseError::NotLocal(_)),
            "{error}"
        );
    }

    #[test]
    fn lease_rejected_for_character_device() {
        let file = File::open("/dev/null").unwrap();
        let error = KernelFileLease::acquire(&file, "/dev/null").unwrap_err();
        assert!(matches!(error, LeaseError::NotRegular), "{error}");
    }
}
