//! The per-trial root of the `process` baseline: a private read-only bind mount of the root
//! filesystem tree with its own `/proc`, `/dev`, `/tmp` and `/run`.
//!
//! Each trial binds the tree at its own mount point, so two trials on the same tree share no
//! `/tmp` or `/run`, and nothing a trial writes reaches the tree itself.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Failure to set up or remove a trial's mounts.
#[derive(Debug, thiserror::Error)]
pub enum MountsError {
    /// A path contains a NUL byte.
    #[error("invalid path {0:?}: it contains a NUL byte")]
    InvalidPath(PathBuf),
    /// Creating the trial directory failed.
    #[error("failed to create {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A `mount(2)` call failed.
    #[error("failed to mount {what} at {target}")]
    Mount {
        /// The mounted file system or tree.
        what: &'static str,
        /// The mount point.
        target: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The mounts of one trial, removed in reverse order when dropped.
#[derive(Debug)]
pub struct TrialRoot {
    /// Directory that contains the mount point; removed last.
    dir: PathBuf,
    /// The chroot directory, `dir/root`.
    root: PathBuf,
    /// Mount points in the order they were mounted.
    mounted: Vec<PathBuf>,
}

impl TrialRoot {
    /// Creates `dir`, binds `tree` read-only at `dir/root`, then mounts `proc` on `/proc`, a
    /// recursive bind of the host's `/dev` on `/dev`, and tmpfs on `/tmp` and `/run`.
    pub fn mount(tree: &Path, dir: &Path) -> Result<TrialRoot, MountsError> {
        let root = dir.join("root");
        std::fs::create_dir_all(&root).map_err(|source| MountsError::CreateDir {
            path: root.clone(),
            source,
        })?;
        let mut trial = TrialRoot {
            dir: dir.to_owned(),
            root: root.clone(),
            mounted: Vec::new(),
        };

        // On error, `trial` drops here and removes what was mounted so far.
        trial.mount_one(
            "the root filesystem tree",
            Some(tree),
            &root,
            None,
            libc::MS_BIND,
        )?;
        // Private propagation keeps the mounts below from appearing in the tree's own mount
        // (a bind mount of a shared mount joins its peer group).
        trial.change(&root, libc::MS_PRIVATE)?;
        trial.change(&root, libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY)?;
        trial.mount_one(
            "proc",
            Some(Path::new("proc")),
            &root.join("proc"),
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        )?;
        trial.mount_one(
            "/dev",
            Some(Path::new("/dev")),
            &root.join("dev"),
            None,
            libc::MS_BIND | libc::MS_REC,
        )?;
        trial.change(&root.join("dev"), libc::MS_PRIVATE | libc::MS_REC)?;
        for point in ["tmp", "run"] {
            trial.mount_one(
                "tmpfs",
                Some(Path::new("tmpfs")),
                &root.join(point),
                Some("tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
            )?;
        }
        Ok(trial)
    }

    /// The directory to `chroot` into.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn mount_one(
        &mut self,
        what: &'static str,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
    ) -> Result<(), MountsError> {
        mount(what, source, target, fstype, flags)?;
        self.mounted.push(target.to_owned());
        Ok(())
    }

    fn change(&mut self, target: &Path, flags: libc::c_ulong) -> Result<(), MountsError> {
        mount("mount flags", None, target, None, flags)
    }
}

impl Drop for TrialRoot {
    fn drop(&mut self) {
        for target in self.mounted.iter().rev() {
            if let Err(error) = unmount(target) {
                tracing::error!(target = %target.display(), %error, "failed to unmount");
            }
        }
        // Only empty directories are removed: after a failed unmount the tree stays intact.
        let _ = std::fs::remove_dir(&self.root);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn c_path(path: &Path) -> Result<CString, MountsError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| MountsError::InvalidPath(path.into()))
}

fn mount(
    what: &'static str,
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> Result<(), MountsError> {
    let source = source.map(c_path).transpose()?;
    let target_c = c_path(target)?;
    let fstype = fstype.map(|name| CString::new(name).expect("file system names have no NUL"));
    // SAFETY: every pointer is either null or a NUL-terminated string that outlives the call;
    // `data` is null, which every file system used here accepts.
    let result = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(MountsError::Mount {
            what,
            target: target.to_owned(),
            source: io::Error::last_os_error(),
        })
    }
}

/// Unmounts `target`, falling back to a lazy unmount when it is busy. A recursive bind (such
/// as `/dev`) needs the lazy form to detach its submounts, so that is tried on any failure.
fn unmount(target: &Path) -> io::Result<()> {
    let target = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `target` is a NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    // SAFETY: as above.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    Err(io::Error::last_os_error())
}
