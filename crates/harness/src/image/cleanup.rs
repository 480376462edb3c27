//! Removing build folders safely, and stopping build scripts when `isobench` is interrupted.
//!
//! mmdebstrap bind-mounts device files, `/proc` and `/sys` into the tree while it installs. A
//! build killed at that moment leaves those mounts behind, and deleting the tree through them
//! would delete host files, so every mount below a folder is detached before it is removed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use tracing::warn;

/// Detaches every mount below `dir`, deepest first, then removes `dir`. Leaves `dir` in place
/// when a mount cannot be detached. A file or symbolic link at `dir` is removed itself, and a
/// link's target is never touched.
pub(crate) fn remove_build_folder(dir: &Path) {
    let Ok(metadata) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !metadata.is_dir() {
        if let Err(error) = std::fs::remove_file(dir) {
            warn!(path = %dir.display(), %error, "cannot remove a build's leftover file");
        }
        return;
    }
    let mut mounts = mounts_below(dir);
    mounts.sort_by_key(|mount| std::cmp::Reverse(mount.components().count()));
    for mount in &mounts {
        if let Err(error) = detach(mount) {
            warn!(mount = %mount.display(), %error, "cannot detach a mount in a build folder; leaving the folder");
            return;
        }
    }
    if let Err(error) = std::fs::remove_dir_all(dir) {
        warn!(dir = %dir.display(), %error, "cannot remove a build folder");
    }
}

/// Mount points at or below `dir`, from `/proc/self/mountinfo`.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|mount| mount.starts_with(&dir))
        .collect()
}

/// Decodes the octal escapes (`\040` for a space) that mountinfo uses in paths.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = &bytes[index..(index + 4).min(bytes.len())];
        if escape.len() == 4 && escape[0] == b'\\' && escape[1..].iter().all(u8::is_ascii_digit) {
            let value = (escape[1] - b'0') * 64 + (escape[2] - b'0') * 8 + (escape[3] - b'0');
            decoded.push(value);
            index += 4;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

fn detach(mount: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(mount.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Process groups of the running build scripts (0 = free slot), read by the signal handler.
static SCRIPT_GROUPS: [AtomicI32; 4] = [const { AtomicI32::new(0) }; 4];

/// Set once SIGINT or SIGTERM arrived during a build.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Forwards SIGTERM to every running build script's process group. Only async-signal-safe
/// calls (atomics, `kill`) happen here.
extern "C" fn forward_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    for slot in &SCRIPT_GROUPS {
        let group = slot.load(Ordering::SeqCst);
        if group > 0 {
            // SAFETY: kill is async-signal-safe and touches no memory of this process.
            unsafe { libc::kill(-group, libc::SIGTERM) };
        }
    }
}

/// Installs [`forward_signal`] for SIGINT and SIGTERM. Build scripts run in process groups of
/// their own, so a terminal's Ctrl-C reaches only `isobench`, which then stops the scripts,
/// waits for them and removes their folders before it exits.
pub(crate) fn install_interrupt_handler() {
    let handler: extern "C" fn(libc::c_int) = forward_signal;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only uses async-signal-safe operations; a handler (unlike
        // SIG_IGN) is reset to the default action in the scripts at exec.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

/// Whether SIGINT or SIGTERM arrived since the handler was installed.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// A registered build script's process group, unregistered when dropped.
pub(crate) struct ScriptGroup {
    slot: Option<usize>,
}

impl ScriptGroup {
    /// Registers process group `group` so that an interrupt stops it. Stops it at once when
    /// an interrupt already arrived.
    pub(crate) fn register(group: i32) -> ScriptGroup {
        let slot = SCRIPT_GROUPS.iter().position(|slot| {
            slot.compare_exchange(0, group, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        });
        if interrupted() {
            // SAFETY: kill touches no memory of this process; `group` is our own child's.
            unsafe { libc::kill(-group, libc::SIGTERM) };
        }
        ScriptGroup { slot }
    }
}

impl Drop for ScriptGroup {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            SCRIPT_GROUPS[slot].store(0, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_decode() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\04"), "/end\\04");
    }

    #[test]
    fn mounts_below_finds_proc() {
        assert_eq!(
            mounts_below(Path::new("/proc")).first(),
            Some(&PathBuf::from("/proc"))
        );
        let temporary = tempfile::tempdir().unwrap();
        assert!(mounts_below(temporary.path()).is_empty());
    }

    #[test]
    fn remove_build_folder_detaches_mounts() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("build");
        let mount = dir.join("tree/proc");
        std::fs::create_dir_all(&mount).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&mount)
            .status()
            .unwrap();
        assert!(mounted.success());
        std::fs::write(mount.join("inside"), b"x").unwrap();
        assert_eq!(mounts_below(&dir), vec![mount.clone()]);

        remove_build_folder(&dir);
        assert!(mounts_below(&dir).is_empty());
        assert!(!dir.exists());
    }

    #[test]
    fn remove_build_folder_keeps_link_target() {
        let temporary = tempfile::tempdir().unwrap();
        let outside = temporary.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        let link = temporary.path().join("build");
        std::os::unix::fs::symlink(&outside, &link).unwrap();

        remove_build_folder(&link);
        assert!(std::fs::symlink_metadata(&link).is_err());
        assert!(outside.join("keep").exists());

        let file = temporary.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        remove_build_folder(&file);
        assert!(!file.exists());
    }

    #[test]
    fn remove_build_folder_removes_tree() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("build");
        std::fs::create_dir_all(dir.join("tree/usr")).unwrap();
        std::fs::write(dir.join("tree/usr/file"), b"x").unwrap();
        remove_build_folder(&dir);
        assert!(!dir.exists());
    }
}
