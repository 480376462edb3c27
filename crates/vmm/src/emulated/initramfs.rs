//! The per-run initramfs: the cached base archive followed by a second archive with the run's
//! command, environment and carried files. The kernel unpacks concatenated archives in order.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cache::run_tool;
use super::cpio::CpioWriter;
use super::{check_env_name, io_error, EmulatedError, EmulatedRun};

/// Serial number of the `index`-th disk, which the init script maps back to its device node.
pub(super) fn disk_serial(index: usize) -> String {
    format!("isobench-disk-{index}")
}

/// Writes the run's initramfs to `path` and returns its size in bytes.
pub(super) fn write(base: &Path, run: &EmulatedRun, path: &Path) -> Result<u64, EmulatedError> {
    let file = fs::File::create(path).map_err(io_error("cannot create", path))?;
    let mut out = BufWriter::new(file);
    let mut base_file = fs::File::open(base).map_err(io_error("cannot read", base))?;
    io::copy(&mut base_file, &mut out).map_err(io_error("cannot write", path))?;

    let mut cpio = CpioWriter::new(out);
    let write_error = io_error("cannot write", path);
    let result = (|| {
        cpio.add_file("isobench/command", 0o644, run.command.as_bytes())?;
        cpio.add_file("isobench/env.sh", 0o644, env_script(run).as_bytes())?;
        for (source, destination) in carried_paths(run)? {
            add_host_file(&mut cpio, &source, &destination)?;
        }
        cpio.finish()?.flush()
    })();
    result.map_err(write_error)?;
    let size = fs::metadata(path)
        .map_err(io_error("cannot read", path))?
        .len();
    Ok(size)
}

/// Checks the run's names and paths before anything is built.
pub(super) fn validate(run: &EmulatedRun) -> Result<(), EmulatedError> {
    for file in &run.files {
        if !file.path.starts_with('/') || file.path.split('/').any(|part| part == "..") {
            return Err(EmulatedError::InvalidRun(format!(
                "carried file path {:?} must be absolute and without `..`",
                file.path
            )));
        }
        if !file.source.is_file() {
            return Err(EmulatedError::InvalidRun(format!(
                "carried file {} does not exist",
                file.source.display()
            )));
        }
        if let Some(env) = &file.env {
            check_env_name(env)?;
        }
    }
    for disk in &run.disks {
        if !disk.source.exists() {
            return Err(EmulatedError::InvalidRun(format!(
                "disk {} does not exist",
                disk.source.display()
            )));
        }
        check_env_name(&disk.env)?;
    }
    for (name, _) in &run.env {
        check_env_name(name)?;
    }
    if run.vcpus == 0 {
        return Err(EmulatedError::InvalidRun(
            "vcpus must be at least 1".to_owned(),
        ));
    }
    Ok(())
}

/// Returns the script the init script sources before the command: one `export` per variable.
fn env_script(run: &EmulatedRun) -> String {
    let mut script = String::new();
    for file in &run.files {
        if let Some(env) = &file.env {
            script.push_str(&format!("export {env}={}\n", shell_quote(&file.path)));
        }
    }
    for (index, disk) in run.disks.iter().enumerate() {
        let serial = disk_serial(index);
        let env = &disk.env;
        script.push_str(&format!(
            "{env}=\"$(find_disk {serial})\" || return 1\nexport {env}\n"
        ));
    }
    for (name, value) in &run.env {
        script.push_str(&format!("export {name}={}\n", shell_quote(value)));
    }
    script
}

/// Quotes `value` for `sh` with single quotes.
pub(super) fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Returns (host path, path inside) for every carried file and every shared library they
/// need, each library once.
fn carried_paths(run: &EmulatedRun) -> io::Result<Vec<(PathBuf, String)>> {
    let mut paths = Vec::new();
    let mut libraries = BTreeSet::new();
    for file in &run.files {
        paths.push((file.source.clone(), file.path.clone()));
        if file.with_libraries {
            libraries.extend(shared_libraries(&file.source)?);
        }
    }
    for library in libraries {
        let destination = library.to_string_lossy().into_owned();
        paths.push((library, destination));
    }
    Ok(paths)
}

/// Returns the absolute paths `ldd` lists for `program`; none for a static program.
fn shared_libraries(program: &Path) -> io::Result<Vec<PathBuf>> {
    let output = run_tool(Command::new("ldd").arg(program), "libc-bin");
    let output = match output {
        Ok(output) => output,
        // `ldd` exits non-zero with "not a dynamic executable" for static programs.
        Err(EmulatedError::ToolFailed { .. }) => return Ok(Vec::new()),
        Err(error) => return Err(io::Error::other(error.to_string())),
    };
    Ok(parse_ldd(&String::from_utf8_lossy(&output.stdout)))
}

/// Parses `ldd` output lines such as `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`
/// and `/lib64/ld-linux-x86-64.so.2 (0x...)`.
fn parse_ldd(output: &str) -> Vec<PathBuf> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let target = match line.split_once("=>") {
                Some((_, target)) => target.trim(),
                None => line,
            };
            let path = target.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn add_host_file<W: Write>(
    cpio: &mut CpioWriter<W>,
    source: &Path,
    destination: &str,
) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let with_path =
        |error: io::Error| io::Error::new(error.kind(), format!("{}: {error}", source.display()));
    // `File::open` follows symbolic links, so the archive gets the contents, not the link.
    let mut file = fs::File::open(source).map_err(with_path)?;
    let metadata = file.metadata().map_err(with_path)?;
    let mode = metadata.permissions().mode() & 0o777;
    cpio.add_file_from(destination, mode, metadata.len(), &mut file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_parsed_to_paths() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                      \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                      \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                      \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        let paths = parse_ldd(output);
        assert_eq!(
            paths,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn shell_quote_escapes_single_quote() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn env_script_exports_files_disks_and_values() {
        let mut run = EmulatedRun::new("true");
        run.files
            .push(super::super::CarriedFile::data("/x", "/opt/x", "X"));
        run.disks.push(super::super::CarriedDisk {
            source: "/d".into(),
            read_only: true,
            env: "ROOTFS".to_owned(),
        });
        run.env.push(("MODE".to_owned(), "a b".to_owned()));
        let script = env_script(&run);
        assert_eq!(
            script,
            "export X='/opt/x'\n\
             ROOTFS=\"$(find_disk isobench-disk-0)\" || return 1\n\
             export ROOTFS\n\
             export MODE='a b'\n"
        );
    }
}
