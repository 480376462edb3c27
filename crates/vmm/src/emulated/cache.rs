//! The emulated host's cached artifacts: the cloud kernel's `vmlinuz` and a base initramfs with
//! busybox, the init script and the modules, in a folder named by the hash of their inputs.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::cpio::CpioWriter;
use super::{io_error, EmulatedError, KERNEL_METAPACKAGE};

/// Modules the init script loads, each after the modules it depends on.
const REQUIRED_MODULES: &[&str] = &[
    "kvm_amd",
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "tun",
];
/// The statically linked busybox of Debian's `busybox-static`.
const BUSYBOX: &str = "/bin/busybox";
/// PID 1 of the emulated host.
const INIT_SCRIPT: &str = include_str!("init.sh");
/// Bumped whenever the layout of a cache entry changes.
const CACHE_FORMAT: &str = "isobench-emulated-host-1";

/// Paths of one prepared cache entry.
pub(super) struct Prepared {
    pub(super) kernel: PathBuf,
    pub(super) base_initramfs: PathBuf,
}

/// Returns the cache folder: `$ISOBENCH_CACHE_DIR`, else `$XDG_CACHE_HOME/isobench`, else
/// `$HOME/.cache/isobench`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let non_empty = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(dir) = non_empty("ISOBENCH_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = non_empty("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("isobench"));
    }
    non_empty("HOME").map(|home| PathBuf::from(home).join(".cache/isobench"))
}

/// Builds the cache entry for the current inputs unless it exists already.
pub(super) fn prepare(cache_dir: &Path) -> Result<Prepared, EmulatedError> {
    let package = resolve_kernel_package()?;
    let busybox = fs::read(BUSYBOX).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => EmulatedError::ToolMissing {
            tool: BUSYBOX.to_owned(),
            package: "busybox-static",
        },
        _ => EmulatedError::Io {
            action: "cannot read",
            path: BUSYBOX.into(),
            source,
        },
    })?;
    let hash = entry_hash(&package, &busybox);
    let entry = cache_dir.join(format!("emulated-host-{}", &hash[..16]));
    let prepared = Prepared {
        kernel: entry.join("vmlinuz"),
        base_initramfs: entry.join("base.cpio"),
    };
    if prepared.kernel.is_file() && prepared.base_initramfs.is_file() {
        tracing::debug!(entry = %entry.display(), "reusing the emulated host");
        return Ok(prepared);
    }

    tracing::info!(%package, entry = %entry.display(), "building the emulated host");
    fs::create_dir_all(cache_dir).map_err(io_error("cannot create", cache_dir))?;
    let staging = cache_dir.join(format!(
        ".emulated-host-{}.tmp-{}",
        &hash[..16],
        std::process::id()
    ));
    let result = build_entry(&staging, &package, &busybox);
    if let Err(error) = result {
        let _ = fs::remove_dir_all(&staging);
        return Err(error);
    }
    if let Err(source) = fs::rename(&staging, &entry) {
        let _ = fs::remove_dir_all(&staging);
        // Another process may have completed the same entry first.
        if !(prepared.kernel.is_file() && prepared.base_initramfs.is_file()) {
            return Err(EmulatedError::Io {
                action: "cannot rename into",
                path: entry,
                source,
            });
        }
    }
    Ok(prepared)
}

/// Returns `NAME=VERSION` of the versioned kernel package, from the local package lists.
fn resolve_kernel_package() -> Result<String, EmulatedError> {
    let depends = tool_output(
        Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]),
        "apt",
    )?;
    let name = depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|name| name.starts_with("linux-image-"))
        .ok_or(EmulatedError::KernelPackageUnknown)?
        .to_owned();
    let show = tool_output(
        Command::new("apt-cache").args(["show", "--no-all-versions", &name]),
        "apt",
    )?;
    let version = show
        .lines()
        .find_map(|line| line.strip_prefix("Version: "))
        .ok_or(EmulatedError::KernelPackageUnknown)?;
    Ok(format!("{name}={version}"))
}

fn entry_hash(package: &str, busybox: &[u8]) -> String {
    let mut hasher = Sha256::new();
    for part in [
        CACHE_FORMAT.as_bytes(),
        package.as_bytes(),
        INIT_SCRIPT.as_bytes(),
    ] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.update(REQUIRED_MODULES.join(",").as_bytes());
    hasher.update(Sha256::digest(busybox));
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Downloads and unpacks the kernel package in `staging`, then keeps only `vmlinuz` and
/// `base.cpio` there.
fn build_entry(staging: &Path, package: &str, busybox: &[u8]) -> Result<(), EmulatedError> {
    let _ = fs::remove_dir_all(staging);
    fs::create_dir_all(staging).map_err(io_error("cannot create", staging))?;
    tool_output(
        Command::new("apt-get")
            .args(["download", package])
            .current_dir(staging),
        "apt",
    )?;
    let deb = find_one(staging, |name| name.ends_with(".deb"))
        .ok_or_else(|| incomplete(package, "downloaded .deb file"))?;
    let tree = staging.join("tree");
    tool_output(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree),
        "dpkg",
    )?;

    let vmlinuz = find_one(&tree.join("boot"), |name| name.starts_with("vmlinuz-"))
        .ok_or_else(|| incomplete(package, "boot/vmlinuz-*"))?;
    fs::rename(&vmlinuz, staging.join("vmlinuz")).map_err(io_error("cannot move", &vmlinuz))?;
    let modules_root = find_one(&tree.join("lib/modules"), |_| true)
        .ok_or_else(|| incomplete(package, "lib/modules/<version>"))?;
    let modules = ordered_modules(&modules_root, package)?;

    let path = staging.join("base.cpio");
    let file = fs::File::create(&path).map_err(io_error("cannot create", &path))?;
    let mut cpio = CpioWriter::new(std::io::BufWriter::new(file));
    let write = |result: std::io::Result<()>| result.map_err(io_error("cannot write", &path));
    for dir in [
        "dev", "proc", "sys", "tmp", "run", "root", "etc", "isobench",
    ] {
        write(cpio.add_directory(dir, 0o755))?;
    }
    write(cpio.add_file("init", 0o755, INIT_SCRIPT.as_bytes()))?;
    write(cpio.add_file("bin/busybox", 0o755, busybox))?;
    write(cpio.add_symlink("bin/sh", "busybox"))?;
    let mut order = String::new();
    for (name, contents) in &modules {
        let file_name = format!("{name}.ko");
        write(cpio.add_file(
            &format!("lib/modules/isobench/{file_name}"),
            0o644,
            contents,
        ))?;
        order.push_str(&file_name);
        order.push('\n');
    }
    write(cpio.add_file("isobench/modules", 0o644, order.as_bytes()))?;
    write(cpio.finish().and_then(|mut out| out.flush()))?;

    fs::remove_dir_all(&tree).map_err(io_error("cannot remove", &tree))?;
    fs::remove_file(&deb).map_err(io_error("cannot remove", &deb))?;
    Ok(())
}

/// Returns the required modules and everything they depend on, each after its dependencies,
/// as (name, uncompressed contents). Built-in modules are left out.
fn ordered_modules(root: &Path, package: &str) -> Result<Vec<(String, Vec<u8>)>, EmulatedError> {
    let builtin_path = root.join("modules.builtin");
    let builtin = fs::read_to_string(&builtin_path).unwrap_or_default();
    let builtin: HashSet<String> = builtin.lines().map(module_name).collect();
    let mut files = Vec::new();
    collect_module_files(&root.join("kernel"), &mut files)?;

    let mut ordered = Vec::new();
    let mut visited = HashSet::new();
    for name in REQUIRED_MODULES {
        visit_module(name, &files, &builtin, &mut visited, &mut ordered, package)?;
    }
    ordered
        .into_iter()
        .map(|(name, file)| Ok((name, read_module(&file)?)))
        .collect()
}

fn visit_module(
    name: &str,
    files: &[PathBuf],
    builtin: &HashSet<String>,
    visited: &mut HashSet<String>,
    ordered: &mut Vec<(String, PathBuf)>,
    package: &str,
) -> Result<(), EmulatedError> {
    let name = name.replace('-', "_");
    if !visited.insert(name.clone()) || builtin.contains(&name) {
        return Ok(());
    }
    let file = files
        .iter()
        .find(|file| module_name(&file.to_string_lossy()) == name)
        .ok_or_else(|| incomplete(package, &format!("module {name}")))?;
    let depends = tool_output(
        Command::new("modinfo").args(["-F", "depends"]).arg(file),
        "kmod",
    )?;
    for dependency in depends
        .trim()
        .split(',')
        .filter(|dependency| !dependency.is_empty())
    {
        visit_module(dependency, files, builtin, visited, ordered, package)?;
    }
    ordered.push((name, file.clone()));
    Ok(())
}

/// Returns the module name of a `.ko` path, `kernel/arch/x86/kvm/kvm-amd.ko.xz` -> `kvm_amd`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

fn collect_module_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), EmulatedError> {
    for entry in fs::read_dir(dir).map_err(io_error("cannot read", dir))? {
        let path = entry.map_err(io_error("cannot read", dir))?.path();
        if path.is_dir() {
            collect_module_files(&path, files)?;
        } else if path.to_string_lossy().contains(".ko") {
            files.push(path);
        }
    }
    Ok(())
}

/// Reads a module file, decompressing `.ko.xz`, `.ko.zst` and `.ko.gz`, because busybox's
/// `insmod` loads only plain modules.
fn read_module(file: &Path) -> Result<Vec<u8>, EmulatedError> {
    let name = file.to_string_lossy();
    let decompressor = if name.ends_with(".ko.xz") {
        Some(("xz", "xz-utils"))
    } else if name.ends_with(".ko.zst") {
        Some(("zstd", "zstd"))
    } else if name.ends_with(".ko.gz") {
        Some(("gzip", "gzip"))
    } else {
        None
    };
    match decompressor {
        None => fs::read(file).map_err(io_error("cannot read", file)),
        Some((tool, package)) => {
            let mut command = Command::new(tool);
            command.arg("-dc").arg(file);
            run_tool(&mut command, package).map(|output| output.stdout)
        }
    }
}

fn find_one(dir: &Path, matches: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| matches(&name.to_string_lossy()))
        })
        .collect();
    found.sort();
    found.pop()
}

fn incomplete(package: &str, what: &str) -> EmulatedError {
    EmulatedError::KernelPackageIncomplete {
        package: package.to_owned(),
        what: what.to_owned(),
    }
}

/// Runs `command` and returns its stdout as text; `package` provides the program.
fn tool_output(command: &mut Command, package: &'static str) -> Result<String, EmulatedError> {
    let output = run_tool(command, package)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub(super) fn run_tool(
    command: &mut Command,
    package: &'static str,
) -> Result<std::process::Output, EmulatedError> {
    let tool = command.get_program().to_string_lossy().into_owned();
    let described = format!("{command:?}").replace('"', "");
    let output = command.output().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => EmulatedError::ToolMissing { tool, package },
        _ => EmulatedError::ToolFailed {
            command: described.clone(),
            detail: source.to_string(),
        },
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last_line = stderr
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .unwrap_or("");
        return Err(EmulatedError::ToolFailed {
            command: described,
            detail: format!("{}: {last_line}", output.status),
        });
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_name_strips_folder_and_suffix() {
        assert_eq!(module_name("kernel/arch/x86/kvm/kvm-amd.ko"), "kvm_amd");
        assert_eq!(module_name("kernel/drivers/net/tun.ko.xz"), "tun");
        assert_eq!(module_name("virtio_pci.ko.zst"), "virtio_pci");
    }

    #[test]
    fn entry_hash_changes_with_package() {
        let first = entry_hash("linux-image-a=1", b"busybox");
        let second = entry_hash("linux-image-a=2", b"busybox");
        assert_ne!(first, second);
        assert_eq!(first.len(), 64);
    }
}
