//! Runs one program with its arguments on a KVM host, translating the host paths among its
//! arguments into the paths the program finds there. `isobench vm boot --host emulated` uses
//! it to run `isobench vm boot` itself inside the emulated host.

use std::path::{Path, PathBuf};

use super::initramfs::shell_quote;
use super::{CarriedDisk, CarriedFile, EmulatedRun};

/// Folder inside the emulated host that receives the program and its companions, so that a
/// program finding its companions next to itself still finds them.
const PROGRAM_DIR: &str = "/opt/isobench";

/// One argument of a program run through [`EmulatedRun::for_program`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramArg {
    /// An argument passed unchanged.
    Plain(String),
    /// A host file, carried into the initramfs and passed as its path there.
    File(PathBuf),
    /// A host disk image, attached as a virtio-blk disk and passed as its block device.
    Disk {
        /// The disk image.
        path: PathBuf,
        /// Whether the emulated host may only read it.
        read_only: bool,
    },
}

impl EmulatedRun {
    /// Describes a run of `program` with `args`, carrying `companions` (programs it starts,
    /// such as `isobench-vmm`) into the same folder as `program`, each with its shared
    /// libraries.
    pub fn for_program(program: &Path, args: &[ProgramArg], companions: &[PathBuf]) -> Self {
        let mut run = EmulatedRun::new(String::new());
        run.files.push(CarriedFile::program(
            program,
            &format!("{PROGRAM_DIR}/{}", file_name(program)),
            "ISOBENCH_PROGRAM",
        ));
        for (index, companion) in companions.iter().enumerate() {
            run.files.push(CarriedFile::program(
                companion,
                &format!("{PROGRAM_DIR}/{}", file_name(companion)),
                &format!("ISOBENCH_COMPANION_{index}"),
            ));
        }

        let mut command = String::from("exec \"$ISOBENCH_PROGRAM\"");
        for (index, arg) in args.iter().enumerate() {
            command.push(' ');
            match arg {
                ProgramArg::Plain(text) => command.push_str(&shell_quote(text)),
                ProgramArg::File(path) => {
                    let env = format!("ISOBENCH_ARG_{index}");
                    let inside = format!("{PROGRAM_DIR}/args/{index}/{}", file_name(path));
                    run.files.push(CarriedFile::data(path, &inside, &env));
                    command.push_str(&format!("\"${env}\""));
                }
                ProgramArg::Disk { path, read_only } => {
                    let env = format!("ISOBENCH_ARG_{index}");
                    run.disks.push(CarriedDisk {
                        source: path.clone(),
                        read_only: *read_only,
                        env: env.clone(),
                    });
                    command.push_str(&format!("\"${env}\""));
                }
            }
        }
        run.command = command;
        run
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_args_become_env_references() {
        let args = [
            ProgramArg::Plain("vm boot".to_owned()),
            ProgramArg::File("/cache/kernel/vmlinux".into()),
            ProgramArg::Disk {
                path: "/cache/rootfs.ext4".into(),
                read_only: true,
            },
        ];
        let run = EmulatedRun::for_program(
            Path::new("/build/isobench"),
            &args,
            &[PathBuf::from("/build/isobench-vmm")],
        );
        assert_eq!(
            run.command,
            r#"exec "$ISOBENCH_PROGRAM" 'vm boot' "$ISOBENCH_ARG_1" "$ISOBENCH_ARG_2""#
        );
        assert_eq!(run.files[0].path, "/opt/isobench/isobench");
        assert_eq!(run.files[1].path, "/opt/isobench/isobench-vmm");
        assert_eq!(run.files[2].path, "/opt/isobench/args/1/vmlinux");
        assert_eq!(run.files[2].env.as_deref(), Some("ISOBENCH_ARG_1"));
        assert_eq!(run.disks[0].env, "ISOBENCH_ARG_2");
        assert!(run.disks[0].read_only);
    }
}
