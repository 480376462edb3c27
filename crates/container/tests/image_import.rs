//! Image import against the real Docker engine: streaming, idempotence and the entrypoint.

use std::path::{Path, PathBuf};
use std::process::Command;

use isobench_container::{ContainerError, Engine, ImageStatus, GUEST_ENTRYPOINT};

/// Builds a tar archive of `size_bytes` of incompressible data plus a stub entrypoint, in a
/// fresh folder under the system's temporary directory.
fn build_archive(name: &str, size_bytes: usize) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("isobench-import-{name}-{}", std::process::id()));
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("sbin")).unwrap();
    std::fs::write(tree.join("sbin/isobench-init"), "#!/bin/sh\n").unwrap();
    let mut payload = vec![0u8; size_bytes];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for byte in payload.iter_mut() {
        // xorshift64: cheap bytes that the daemon cannot compress or deduplicate.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    std::fs::write(tree.join("payload.bin"), payload).unwrap();
    let tar = dir.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar failed");
    (dir, tar)
}

/// Peak resident set size of this process, from `VmHWM` in `/proc/self/status`, in bytes.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Resets `VmHWM` to the current RSS (writing 5 to `clear_refs`, Linux 4.0 and later).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

async fn remove_image(engine_host: &str, tag: &str) {
    let docker = bollard::Docker::connect_with_host(engine_host).unwrap();
    let _ = docker
        .remove_image(
            tag,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;
}

fn cleanup(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn ensure_image_streams_and_sets_entrypoint() {
    // 96 MiB: large against the import's 256 KiB chunks, small enough for a quick test.
    const ARCHIVE_PAYLOAD_BYTES: usize = 96 << 20;
    let engine = Engine::connect().await.expect("Docker engine");
    let tag = format!("isobench-test-import:{}", std::process::id());
    let (dir, tar) = build_archive("stream", ARCHIVE_PAYLOAD_BYTES);
    remove_image(engine.host(), &tag).await;

    reset_peak_rss();
    let before = peak_rss_bytes();
    let status = engine.ensure_image(&tar, &tag).await;
    let growth = peak_rss_bytes().saturating_sub(before);
    let inspect = bollard::Docker::connect_with_host(engine.host())
        .unwrap()
        .inspect_image(&tag)
        .await;
    let again = engine.ensure_image(&tar, &tag).await;
    remove_image(engine.host(), &tag).await;
    cleanup(&dir);

    assert_eq!(status.unwrap(), ImageStatus::Imported);
    assert!(
        growth < (ARCHIVE_PAYLOAD_BYTES as u64) / 4,
        "peak RSS grew by {growth} bytes while importing {ARCHIVE_PAYLOAD_BYTES} bytes"
    );
    let entrypoint = inspect.unwrap().config.unwrap().entrypoint.unwrap();
    assert_eq!(entrypoint, vec![GUEST_ENTRYPOINT.to_string()]);
    assert_eq!(again.unwrap(), ImageStatus::Present);
}

#[tokio::test]
async fn image_exists_is_false_for_unknown_tag() {
    let engine = Engine::connect().await.expect("Docker engine");
    let exists = engine
        .image_exists("isobench-test-never-built:0")
        .await
        .unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn require_image_names_build_command() {
    let engine = Engine::connect().await.expect("Docker engine");
    let error = engine
        .require_image("isobench-test-never-built:0")
        .await
        .unwrap_err();
    assert!(matches!(error, ContainerError::ImageMissing { .. }));
    assert!(
        error.to_string().contains("isobench image build"),
        "{error}"
    );
}

#[tokio::test]
async fn ensure_image_names_missing_archive() {
    let engine = Engine::connect().await.expect("Docker engine");
    let missing = Path::new("/nonexistent/isobench/rootfs.tar");
    let error = engine
        .ensure_image(missing, "isobench-test-import:missing")
        .await
        .unwrap_err();
    assert!(matches!(error, ContainerError::RootfsTar { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("/nonexistent/isobench/rootfs.tar"),
        "{error}"
    );
}

#[tokio::test]
async fn connect_names_socket_when_engine_unreachable() {
    let host = "unix:///nonexistent/isobench/docker.sock";
    let error = Engine::connect_to(host, std::time::Duration::from_secs(5))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, ContainerError::EngineUnreachable { .. }),
        "{message}"
    );
    assert!(message.contains(host), "{message}");
    assert!(message.contains("scripts/setup-host"), "{message}");
}

#[tokio::test]
async fn cgroup_version_matches_host() {
    let engine = Engine::connect().await.expect("Docker engine");
    let version = engine.cgroup_version().await.unwrap();
    // A v1 or hybrid host has the v1 memory hierarchy mounted; a v2-only host does not.
    let host_v1 = Path::new("/sys/fs/cgroup/memory/memory.stat").exists();
    let expected = if host_v1 { "1" } else { "2" };
    assert_eq!(version.as_deref(), Some(expected));
}
