//! Helpers shared by the tests that run the guest image on the real Docker engine.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use isobench_container::{Container, Engine, JupyterParams, LaunchConfig, Network};
use isobench_workload::client::KernelClient;
use isobench_workload::connection::{ChannelPorts, ConnectionInfo};

/// Variable naming a `rootfs.tar` to test with instead of the newest one in the cache.
pub const ROOTFS_TAR_ENV: &str = "ISOBENCH_TEST_ROOTFS_TAR";

/// Tag the tests import the guest root filesystem under; the harness uses its own tag.
const TEST_REPOSITORY: &str = "isobench-test-guest";

/// Jupyter ports inside the container, as the guest entrypoint defaults them.
pub const GUEST_PORTS: [u16; 5] = [50001, 50002, 50003, 50004, 50005];

/// Time a launched kernel gets to become ready on a busy two-core host.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Serializes the first import of the test image across the tests of one binary.
static IMAGE_LOCK: tokio::sync::Mutex<Option<String>> = tokio::sync::Mutex::const_new(None);

/// Locates the built guest root filesystem: `$ISOBENCH_TEST_ROOTFS_TAR`, else the newest
/// complete `rootfs-<hash>/` set in the image cache (`$ISOBENCH_CACHE_DIR`,
/// `$XDG_CACHE_HOME/isobench` or `~/.cache/isobench`). Returns the archive and its hash.
pub fn find_rootfs_tar() -> Option<(PathBuf, String)> {
    if let Some(path) = std::env::var_os(ROOTFS_TAR_ENV) {
        let path = PathBuf::from(path);
        let hash = format!("env-{:x}", file_identity(&path));
        return Some((path, hash));
    }
    let cache = if let Some(dir) = std::env::var_os("ISOBENCH_CACHE_DIR") {
        PathBuf::from(dir)
    } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(dir).join("isobench")
    } else {
        PathBuf::from(std::env::var_os("HOME")?).join(".cache/isobench")
    };
    let mut sets: Vec<(std::time::SystemTime, PathBuf, String)> = std::fs::read_dir(cache)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let hash = name.strip_prefix("rootfs-")?.to_string();
            let tar = entry.path().join("rootfs.tar");
            // The manifest is written last, so its presence marks a complete set.
            if !entry.path().join("manifest.json").exists() || !tar.exists() {
                return None;
            }
            let modified = std::fs::metadata(&tar).ok()?.modified().ok()?;
            Some((modified, tar, hash))
        })
        .collect();
    sets.sort();
    sets.pop().map(|(_, tar, hash)| (tar, hash))
}

fn file_identity(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|meta| meta.ino() ^ (meta.size() << 20) ^ meta.mtime() as u64)
        .unwrap_or(0)
}

/// Connects to the engine and makes sure the guest image is imported; returns `None` after a
/// loud message when no guest image is built.
pub async fn engine_and_image() -> Option<(Engine, String)> {
    let engine = Engine::connect().await.expect("Docker engine reachable");
    let mut imported = IMAGE_LOCK.lock().await;
    if let Some(tag) = imported.as_ref() {
        return Some((engine, tag.clone()));
    }
    // Like every start of a run: remove what dead earlier test processes left behind.
    engine
        .sweep(&isobench_container::SweepScope::Stale)
        .await
        .expect("sweep of leftovers");
    let Some((tar, hash)) = find_rootfs_tar() else {
        eprintln!(
            "\n\n*** SKIPPED: no guest image built. Run `isobench image build` (or set \
             {ROOTFS_TAR_ENV}) first. ***\n\n"
        );
        return None;
    };
    let tag = format!("{TEST_REPOSITORY}:{hash}");
    engine
        .ensure_image(&tar, &tag)
        .await
        .expect("guest image import");
    *imported = Some(tag.clone());
    Some((engine, tag))
}

/// Returns a run id unique to this test and process.
pub fn run_id(test: &str) -> String {
    format!("test-{test}-{}", std::process::id())
}

/// Returns a launch configuration for trial 0 of `run_id` with the given memory limit.
pub fn launch_config(
    run_id: &str,
    image: &str,
    network: &Network,
    memory_mib: u32,
) -> LaunchConfig {
    LaunchConfig {
        run_id: run_id.to_string(),
        trial: 0,
        image: image.to_string(),
        network: network.name.clone(),
        vcpus: 1,
        memory_mib,
        jupyter: JupyterParams {
            key: "0123456789abcdef0123456789abcdef".to_string(),
            ports: GUEST_PORTS,
        },
        init: false,
        runtime: None,
    }
}

/// Connection parameters for the kernel in `container`.
pub fn connection(container: &Container, config: &LaunchConfig) -> ConnectionInfo {
    let [shell, iopub, stdin, control, heartbeat] = config.jupyter.ports;
    ConnectionInfo {
        ip: container.address(),
        ports: ChannelPorts {
            shell,
            iopub,
            stdin,
            control,
            heartbeat,
        },
        key: config.jupyter.key.clone(),
    }
}

/// Connects a client and waits until the kernel is ready.
pub async fn ready_client(container: &Container, config: &LaunchConfig) -> KernelClient {
    let deadline = Instant::now() + READY_TIMEOUT;
    let info = connection(container, config);
    let mut client = KernelClient::connect(&info, deadline)
        .await
        .unwrap_or_else(|error| panic!("connect: {error}; output: {}", container.output_tail()));
    client
        .wait_ready(deadline)
        .await
        .unwrap_or_else(|error| panic!("ready: {error}; output: {}", container.output_tail()));
    client
}

/// Runs `code` in the kernel and returns its standard output.
pub async fn run_code(client: &mut KernelClient, code: &str) -> String {
    let outcome = client
        .execute(code, Duration::from_secs(60))
        .await
        .expect("execute");
    assert_eq!(
        outcome.status,
        isobench_workload::client::ExecuteStatus::Ok,
        "cell failed: {}",
        outcome.stderr
    );
    outcome.stdout
}

/// Removes every container and network of `run_id`, whatever state the test left.
pub async fn cleanup(engine: &Engine, run_id: &str) {
    let scope = isobench_container::SweepScope::Run(run_id.to_string());
    if let Err(error) = engine.sweep(&scope).await {
        eprintln!("cleanup of {run_id} failed: {error}");
    }
}
