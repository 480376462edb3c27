//! The guest image as a container on the real Docker engine: launch, ready, memory, stop.

mod common;

use std::time::Duration;

use common::{cleanup, engine_and_image, launch_config, ready_client, run_code, run_id};
use isobench_container::{CgroupVersion, ContainerError, SweepScope, RUN_ID_LABEL};

const MIB: u64 = 1024 * 1024;

/// Memory limit for a kernel that must stay up: ipykernel with numpy needs about 60 MiB.
const KERNEL_MEMORY_MIB: u32 = 512;

#[tokio::test]
async fn kernel_answers_at_container_address() {
    let Some((engine, image)) = engine_and_image().await else {
        return;
    };
    let run = run_id("ready");
    let network = engine.create_network(&run).await.unwrap();
    let config = launch_config(&run, &image, &network, KERNEL_MEMORY_MIB);
    let container = engine.launch(&config).await.unwrap();

    assert!(
        network.subnet.contains(container.address()),
        "{}",
        container.address()
    );
    let mut client = ready_client(&container, &config).await;
    let uname = run_code(&mut client, "import os; print(os.uname().release)").await;
    let meminfo = run_code(&mut client, "print(open('/proc/meminfo').read())").await;
    let marks: Vec<String> = container
        .marks()
        .into_iter()
        .map(|mark| mark.name)
        .collect();
    client.shutdown().await.unwrap();
    let exit = container.stop().await.unwrap();
    engine.remove_network(&network.id).await.unwrap();

    // A container shares the host's kernel, so it reports the host's release.
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(uname.trim(), host_release.trim());
    assert!(meminfo.contains("MemTotal:"), "{meminfo}");
    // The entrypoint's markers often arrive before the start call returns, so only create
    // first and the markers' order among themselves are fixed.
    let position = |name: &str| marks.iter().position(|mark| mark == name);
    assert_eq!(marks.len(), 4, "{marks:?}");
    assert_eq!(position("container_created"), Some(0), "{marks:?}");
    assert!(position("container_started").is_some(), "{marks:?}");
    assert!(
        position("init_started") < position("exec_kernel"),
        "{marks:?}"
    );
    assert!(exit.is_some());
}

#[tokio::test]
async fn marks_arrive_in_time_order() {
    let Some((engine, image)) = engine_and_image().await else {
        return;
    };
    let run = run_id("marks");
    let network = engine.create_network(&run).await.unwrap();
    let config = launch_config(&run, &image, &network, KERNEL_MEMORY_MIB);
    let container = engine.launch(&config).await.unwrap();
    let client = ready_client(&container, &config).await;
    let marks = container.marks();
    client.shutdown().await.unwrap();
    container.stop().await.unwrap();
    engine.remove_network(&network.id).await.unwrap();
    for mark in &marks {
        let offset = mark.at.duration_since(marks[0].at).as_secs_f64() * 1e3;
        eprintln!(
            "mark {} at +{offset:.1} ms after create returned",
            mark.name
        );
    }

    for pair in marks.windows(2) {
        assert!(
            pair[0].at <= pair[1].at,
            "{} after {}",
            pair[0].name,
            pair[1].name
        );
    }
}

#[tokio::test]
async fn tmpfs_write_reported_as_shmem() {
    // 100 MiB written to the container's /tmp, a tmpfs.
    const WRITE_MIB: u64 = 100;
    let Some((engine, image)) = engine_and_image().await else {
        return;
    };
    let run = run_id("tmpfs");
    let network = engine.create_network(&run).await.unwrap();
    let config = launch_config(&run, &image, &network, KERNEL_MEMORY_MIB);
    let container = engine.launch(&config).await.unwrap();
    let mut client = ready_client(&container, &config).await;

    let before = container.memory().await.unwrap();
    let code = format!(
        "with open('/tmp/fill', 'wb') as f:\n    \
             for _ in range({WRITE_MIB}):\n        f.write(b'x' * (1 << 20))\nprint('done')"
    );
    assert_eq!(run_code(&mut client, &code).await.trim(), "done");
    let after = container.memory().await.unwrap();
    client.shutdown().await.unwrap();
    container.stop().await.unwrap();
    engine.remove_network(&network.id).await.unwrap();

    eprintln!("before the write: {before:?}\nafter the write: {after:?}");
    let shmem_growth = after
        .cgroup
        .shmem_bytes
        .saturating_sub(before.cgroup.shmem_bytes);
    let anon_growth = after
        .cgroup
        .anon_bytes
        .saturating_sub(before.cgroup.anon_bytes);
    let file_growth = after
        .cgroup
        .file_cache_bytes
        .saturating_sub(before.cgroup.file_cache_bytes);
    // This host's Docker runs on cgroup v1; the figures must come from the v1 formula there.
    if std::path::Path::new("/sys/fs/cgroup/memory/memory.stat").exists() {
        assert_eq!(after.cgroup.version, CgroupVersion::V1);
    }
    assert!(
        shmem_growth >= (WRITE_MIB - 2) * MIB,
        "shmem grew by {shmem_growth} bytes"
    );
    assert!(
        anon_growth < 20 * MIB,
        "anonymous memory grew by {anon_growth} bytes"
    );
    assert!(
        file_growth < 20 * MIB,
        "disk file cache grew by {file_growth} bytes"
    );
    // With swap disabled tmpfs pages cannot be reclaimed, so they stay in the working set; the
    // reading shows them as shmem and the rest of the working set unchanged.
    let private_before = before.cgroup.working_set_bytes - before.cgroup.shmem_bytes;
    let private_after = after.cgroup.working_set_bytes - after.cgroup.shmem_bytes;
    let private_growth = private_after.saturating_sub(private_before);
    assert!(
        private_growth < 20 * MIB,
        "working set without shmem grew by {private_growth} bytes"
    );
    assert!(after.cgroup.working_set_bytes <= after.cgroup.usage_bytes);
    assert!(after.container_pss_bytes > 0);
    assert!(!after.container_pids.is_empty());
    assert!(after.shim_pid.is_some(), "no containerd shim found");
    assert!(after.shim_pss_bytes.unwrap_or(0) > 0);
    let engine_stats = after.engine.expect("engine stats");
    assert!(engine_stats.usage_bytes > 0);
    assert!(engine_stats.working_set_bytes.is_some());
}

#[tokio::test]
async fn memory_limit_too_small_reports_oom() {
    // Far below what Python with ipykernel and numpy needs, above the engine's 6 MiB minimum.
    const TINY_MEMORY_MIB: u32 = 16;
    let Some((engine, image)) = engine_and_image().await else {
        return;
    };
    let run = run_id("oom");
    let network = engine.create_network(&run).await.unwrap();
    let config = launch_config(&run, &image, &network, TINY_MEMORY_MIB);
    let mut container = engine.launch(&config).await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(120), container.wait_exit()).await;
    container.stop().await.unwrap();
    engine.remove_network(&network.id).await.unwrap();

    let exit = exit.expect("the kernel outlived a 16 MiB limit").unwrap();
    assert!(exit.oom_killed, "exit: {exit:?}");
    assert_eq!(exit.describe(), "out of memory");
}

#[tokio::test]
async fn unknown_runtime_lists_available_ones() {
    let Some((engine, image)) = engine_and_image().await else {
        return;
    };
    let run = run_id("runtime");
    let network = engine.create_network(&run).await.unwrap();
    let mut config = launch_config(&run, &image, &network, KERNEL_MEMORY_MIB);
    config.runtime = Some("no-such-runtime".to_string());
    let launched = engine.launch(&config).await;
    engine.remove_network(&network.id).await.unwrap();

    let error = launched.unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, ContainerError::UnknownRuntime { .. }),
        "{message}"
    );
    assert!(message.contains("no-such-runtime"), "{message}");
    assert!(message.contains("runc"), "{message}");
}

#[tokio::test]
async fn missing_image_names_build_command() {
    let Some((engine, image)) = engine_and_image().await else {
        return;
    };
    let run = run_id("noimage");
    let network = engine.create_network(&run).await.unwrap();
    let mut config = launch_config(&run, &image, &network, KERNEL_MEMORY_MIB);
    config.image = "isobench-test-never-built:0".to_string();
    let launched = engine.launch(&config).await;
    engine.remove_network(&network.id).await.unwrap();

    let error = launched.unwrap_err();
    assert!(
        matches!(error, ContainerError::ImageMissing { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("isobench image build"),
        "{error}"
    );
}

#[tokio::test]
async fn container_name_clash_is_reported() {
    let Some((engine, image)) = engine_and_image().await else {
        return;
    };
    let run = run_id("clash");
    let network = engine.create_network(&run).await.unwrap();
    let config = launch_config(&run, &image, &network, KERNEL_MEMORY_MIB);
    // A container of another owner holding the name this launch wants.
    let docker = bollard::Docker::connect_with_host(engine.host()).unwrap();
    let options = bollard::query_parameters::CreateContainerOptionsBuilder::new()
        .name(&config.container_name())
        .build();
    let body = bollard::models::ContainerCreateBody {
        image: Some(image.clone()),
        ..Default::default()
    };
    let foreign = docker.create_container(Some(options), body).await.unwrap();
    let launched = engine.launch(&config).await;
    engine.remove_container(&foreign.id).await.unwrap();
    engine.remove_network(&network.id).await.unwrap();

    let error = launched.unwrap_err();
    assert!(
        matches!(
            error,
            ContainerError::NameClash {
                kind: "container",
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn network_name_clash_is_reported() {
    let Some((engine, _image)) = engine_and_image().await else {
        return;
    };
    let run = run_id("netclash");
    let docker = bollard::Docker::connect_with_host(engine.host()).unwrap();
    let request = bollard::models::NetworkCreateRequest {
        name: format!("isobench-{run}"),
        internal: Some(true),
        ..Default::default()
    };
    let foreign = docker.create_network(request).await.unwrap();
    let created = engine.create_network(&run).await;
    engine.remove_network(&foreign.id).await.unwrap();

    let error = created.unwrap_err();
    assert!(
        matches!(
            error,
            ContainerError::NameClash {
                kind: "network",
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn create_and_remove_are_idempotent() {
    let Some((engine, _image)) = engine_and_image().await else {
        return;
    };
    let run = run_id("idempotent");
    let first = engine.create_network(&run).await.unwrap();
    let second = engine.create_network(&run).await.unwrap();
    engine.remove_network(&first.id).await.unwrap();
    let removed_again = engine.remove_network(&first.id).await;
    let container_gone = engine
        .remove_container("isobench-test-no-such-container")
        .await;
    cleanup(&engine, &run).await;

    assert_eq!(first, second);
    assert!(removed_again.is_ok(), "{removed_again:?}");
    assert!(container_gone.is_ok(), "{container_gone:?}");
}

#[tokio::test]
async fn network_subnet_is_free_and_labelled() {
    let Some((engine, _image)) = engine_and_image().await else {
        return;
    };
    let run = run_id("subnet");
    let network = engine.create_network(&run).await.unwrap();
    let docker = bollard::Docker::connect_with_host(engine.host()).unwrap();
    let inspected = docker
        .inspect_network(
            &network.id,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await;
    engine.remove_network(&network.id).await.unwrap();

    let inspected = inspected.unwrap();
    let labels = inspected.labels.unwrap_or_default();
    assert_eq!(labels.get(RUN_ID_LABEL), Some(&run));
    assert_eq!(inspected.internal, Some(true));
    assert!(isobench_container::SUBNET_POOL.overlaps(&network.subnet));
}

#[tokio::test]
async fn init_option_starts_docker_init() {
    let Some((engine, image)) = engine_and_image().await else {
        return;
    };
    let run = run_id("init");
    let network = engine.create_network(&run).await.unwrap();
    let mut config = launch_config(&run, &image, &network, KERNEL_MEMORY_MIB);
    config.init = true;
    let container = engine.launch(&config).await.unwrap();
    let client = ready_client(&container, &config).await;
    let pid = container.init_pid().unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    client.shutdown().await.unwrap();
    container.stop().await.unwrap();
    engine.remove_network(&network.id).await.unwrap();

    assert_eq!(comm.trim(), "docker-init");
}

#[tokio::test]
async fn stop_removes_container() {
    let Some((engine, image)) = engine_and_image().await else {
        return;
    };
    let run = run_id("stop");
    let network = engine.create_network(&run).await.unwrap();
    let config = launch_config(&run, &image, &network, KERNEL_MEMORY_MIB);
    let container = engine.launch(&config).await.unwrap();
    let id = container.id().to_string();
    // Stopping a kernel that got no shutdown request takes the 1 s grace, then SIGKILL.
    let started = std::time::Instant::now();
    container.stop().await.unwrap();
    let stop_time = started.elapsed();
    let leftovers = engine.sweep(&SweepScope::Run(run.clone())).await.unwrap();

    assert!(
        stop_time < Duration::from_secs(8),
        "stop took {stop_time:?}"
    );
    assert!(
        !leftovers.containers.contains(&id),
        "container {id} survived stop"
    );
    assert_eq!(leftovers.networks, vec![network.id]);
}
