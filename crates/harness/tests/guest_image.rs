//! End-to-end checks of the built guest image in the cache (`isobench image build` first; the
//! test command `scripts/test` does that).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isobench_harness::backend::GuestImagePaths;
use isobench_harness::image::{self, KERNEL_RECIPE};

fn built_image() -> GuestImagePaths {
    image::locate().unwrap_or_else(|error| panic!("{error}"))
}

/// Options a fragment line sets (`CONFIG_X=y`) or disables (`# CONFIG_X is not set`).
fn parse_config(text: &str) -> BTreeMap<String, String> {
    let mut options = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some(name) = rest.strip_suffix(" is not set") {
                options.insert(name.to_string(), "n".to_string());
            }
        } else if let Some((name, value)) = line.split_once('=') {
            if name.starts_with("CONFIG_") {
                options.insert(name.to_string(), value.to_string());
            }
        }
    }
    options
}

fn fragment() -> BTreeMap<String, String> {
    let file = KERNEL_RECIPE
        .iter()
        .find(|file| file.path == "kernel/microvm.config")
        .expect("the fragment is embedded");
    parse_config(std::str::from_utf8(file.contents).unwrap())
}

/// Options the microVM cannot boot or run the Jupyter kernel without, and options it must
/// not have; the fragment must name each.
const REQUIRED: &[(&str, &str)] = &[
    ("CONFIG_64BIT", "y"),
    ("CONFIG_SMP", "y"),
    ("CONFIG_PRINTK", "y"),
    ("CONFIG_EARLY_PRINTK", "y"),
    ("CONFIG_SERIAL_8250", "y"),
    ("CONFIG_SERIAL_8250_CONSOLE", "y"),
    ("CONFIG_VIRTIO_MMIO", "y"),
    ("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "y"),
    ("CONFIG_VIRTIO_BLK", "y"),
    ("CONFIG_VIRTIO_NET", "y"),
    ("CONFIG_EXT4_FS", "y"),
    ("CONFIG_TMPFS", "y"),
    ("CONFIG_DEVTMPFS", "y"),
    ("CONFIG_DEVTMPFS_MOUNT", "y"),
    ("CONFIG_IP_PNP", "y"),
    ("CONFIG_PVH", "y"),
    ("CONFIG_X86_IOPL_IOPERM", "y"),
    ("CONFIG_KVM_GUEST", "y"),
    ("CONFIG_PARAVIRT", "y"),
    ("CONFIG_BINFMT_ELF", "y"),
    ("CONFIG_BINFMT_SCRIPT", "y"),
    ("CONFIG_UNIX", "y"),
    ("CONFIG_INET", "y"),
    ("CONFIG_FUTEX", "y"),
    ("CONFIG_EPOLL", "y"),
    ("CONFIG_EVENTFD", "y"),
    ("CONFIG_SIGNALFD", "y"),
    ("CONFIG_TIMERFD", "y"),
    ("CONFIG_SHMEM", "y"),
    ("CONFIG_POSIX_TIMERS", "y"),
    ("CONFIG_FILE_LOCKING", "y"),
    ("CONFIG_PROC_FS", "y"),
    ("CONFIG_SYSFS", "y"),
    ("CONFIG_MULTIUSER", "y"),
    ("CONFIG_SERIO_I8042", "y"),
    ("CONFIG_MODULES", "n"),
    ("CONFIG_PCI", "n"),
    ("CONFIG_ACPI", "n"),
];

#[test]
fn fragment_names_required_options() {
    let fragment = fragment();
    for (name, value) in REQUIRED {
        assert_eq!(
            fragment.get(*name).map(String::as_str),
            Some(*value),
            "{name}"
        );
    }
}

#[test]
fn kernel_config_has_fragment_options() {
    let image = built_image();
    let config_path = image.vmlinux.with_file_name("config");
    let config = parse_config(&std::fs::read_to_string(&config_path).unwrap());
    for (name, value) in fragment() {
        let built = config.get(&name).map(String::as_str).unwrap_or("n");
        assert_eq!(built, value, "{name} in {}", config_path.display());
    }
    for (name, _) in REQUIRED {
        assert!(
            config.contains_key(*name),
            "{name} missing from {}",
            config_path.display()
        );
    }
}

#[test]
fn kernel_artifacts_are_kernels() {
    let image = built_image();
    let vmlinux = std::fs::read(&image.vmlinux).unwrap();
    assert_eq!(&vmlinux[..4], b"\x7fELF", "{}", image.vmlinux.display());
    let bzimage = std::fs::read(&image.bzimage).unwrap();
    // The Linux boot protocol's "HdrS" magic sits at offset 0x202 of a bzImage.
    assert_eq!(
        &bzimage[0x202..0x206],
        b"HdrS",
        "{}",
        image.bzimage.display()
    );
}

#[test]
fn rootfs_ext4_is_ext4() {
    let image = built_image();
    let mut superblock = vec![0u8; 2048];
    let file = std::fs::File::open(&image.rootfs_ext4).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut superblock, 0).unwrap();
    // The ext2/3/4 superblock starts at byte 1024; its magic 0xEF53 is at offset 56.
    assert_eq!(&superblock[1024 + 56..1024 + 58], &[0x53, 0xef]);
}

#[test]
fn chroot_imports_ipykernel_and_numpy() {
    let image = built_image();
    let output = Command::new("chroot")
        .arg(&image.rootfs_tree)
        .args([
            "python3",
            "-c",
            "import ipykernel, numpy; print(ipykernel.__version__)",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "6.17.0");
}

/// Returns whether an ELF64 little-endian executable has a `PT_INTERP` program header, that
/// is, needs a dynamic loader.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read_u16 = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let program_headers = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let entry_size = read_u16(0x36);
    let count = read_u16(0x38);
    (0..count).any(|index| {
        let at = program_headers + index * entry_size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == PT_INTERP
    })
}

#[test]
fn tree_has_static_entrypoint() {
    let image = built_image();
    let init = image.rootfs_tree.join("sbin/isobench-init");
    let bytes = std::fs::read(&init).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF");
    assert!(
        !has_interpreter(&bytes),
        "{} is dynamically linked",
        init.display()
    );
    let python = std::fs::read(image.rootfs_tree.join("usr/bin/python3.11")).unwrap();
    assert!(
        has_interpreter(&python),
        "the check cannot see a dynamic executable"
    );
}

#[test]
fn tree_is_trimmed() {
    let image = built_image();
    for folder in ["usr/share/man", "usr/share/locale", "var/lib/apt/lists"] {
        let path = image.rootfs_tree.join(folder);
        let entries = std::fs::read_dir(&path)
            .map(|entries| entries.count())
            .unwrap_or(0);
        assert_eq!(entries, 0, "{} is not empty", path.display());
    }
}

fn run_entrypoint(init: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(init);
    command.env_clear().env("PATH", "/usr/bin:/bin");
    for (name, value) in env {
        command.env(name, value);
    }
    command.stdin(Stdio::null()).output().unwrap()
}

#[test]
fn entrypoint_rejects_invalid_ports() {
    let image = built_image();
    let init = image.rootfs_tree.join("sbin/isobench-init");
    let output = run_entrypoint(&init, &[("ISOBENCH_PORTS", "1,2,3")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid ISOBENCH_PORTS '1,2,3'"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn entrypoint_rejects_invalid_ip_and_key() {
    let image = built_image();
    let init = image.rootfs_tree.join("sbin/isobench-init");
    let output = run_entrypoint(&init, &[("ISOBENCH_IP", "10.0.0.300")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid ISOBENCH_IP"));
    let output = run_entrypoint(&init, &[("ISOBENCH_KEY", "not-hex")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid ISOBENCH_KEY"));
}

/// Five loopback ports that were free a moment ago: the kernel picks them, the test releases
/// them for the Jupyter kernel.
fn free_loopback_ports() -> [u16; 5] {
    let listeners: Vec<std::net::TcpListener> = (0..5)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|index| listeners[index].local_addr().unwrap().port())
}

/// Runs the entrypoint under `chroot` until the Jupyter kernel rewrote its connection file,
/// then stops it.
#[test]
fn entrypoint_starts_jupyter_kernel_in_chroot() {
    let image = built_image();
    // A runtime folder of the test's own under the tree's /tmp, removed when the test ends.
    let runtime = tempfile::Builder::new()
        .prefix("isobench-test-")
        .tempdir_in(image.rootfs_tree.join("tmp"))
        .unwrap();
    let inside = Path::new("/tmp").join(runtime.path().file_name().unwrap());
    let free_ports = free_loopback_ports();
    let ports = free_ports.map(|port| port.to_string()).join(",");
    let mut child = Command::new("chroot")
        .arg(&image.rootfs_tree)
        .arg("/sbin/isobench-init")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("ISOBENCH_IP", "127.0.0.1")
        .env("ISOBENCH_KEY", "00ff")
        .env("ISOBENCH_PORTS", &ports)
        .env("ISOBENCH_RUNTIME_DIR", &inside)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // ipykernel rewrites the connection file at start; that shows the Jupyter kernel runs.
    let connection = runtime.path().join("kernel.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rewritten = None;
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&connection) {
            if text.contains("\"kernel_name\": \"\"") {
                rewritten = Some(text);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout
            .starts_with("\x1eisobench-marker:init_started\x1f\x1eisobench-marker:exec_kernel\x1f"),
        "{stdout:?}"
    );
    let text = rewritten.expect("ipykernel did not rewrite the connection file within 60 s");
    let connection: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(connection["ip"], "127.0.0.1");
    assert_eq!(connection["key"], "00ff");
    assert_eq!(connection["shell_port"], free_ports[0]);
    assert_eq!(connection["hb_port"], free_ports[4]);
    for folder in ["home", "jupyter", "ipython"] {
        assert!(runtime.path().join(folder).is_dir(), "{folder}");
    }
}

#[test]
fn docker_image_imports_ipykernel_and_numpy() {
    let image = built_image();
    let output = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "python3",
        ])
        .arg(&image.docker_tag)
        .args(["-c", "import ipykernel, numpy; print(numpy.__version__)"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "docker run {}: {}",
        image.docker_tag,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "1.24.2");
}
