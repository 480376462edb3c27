//! The Jupyter client against a real ipykernel from the guest image, launched by the `process`
//! backend (chroot, no namespaces).
//!
//! Needs root (for chroot and mount) and the guest image's root filesystem in the cache:
//! run `isobench image build` first.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use isobench_harness::backend::process::ProcessBackend;
use isobench_harness::backend::{Backend, BackendError, GuestImagePaths, Instance, LaunchSpec};
use isobench_harness::image::{ArtifactSet, Cache, RecipeHashes};
use isobench_workload::{
    ChannelPorts, ClientError, ConnectionInfo, ExecuteStatus, Expected, KernelClient, Suite,
};

/// Time allowed from launch to a ready kernel; a native start takes about half a second, the
/// margin covers a loaded two-core machine running several tests at once.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// Root filesystem tree of the guest image this build's recipes describe. Only the root
/// filesystem is needed, so the guest kernel need not be built.
fn image() -> GuestImagePaths {
    let cache = Cache::from_env().expect("the image cache directory is known");
    let hashes = RecipeHashes::embedded();
    assert!(
        cache.is_complete(ArtifactSet::Rootfs, &hashes.rootfs),
        "the guest image's root filesystem {} is not built: run `isobench image build` first",
        cache.set_dir(ArtifactSet::Rootfs, &hashes.rootfs).display()
    );
    let kernel = cache.set_dir(ArtifactSet::Kernel, &hashes.kernel);
    let rootfs = cache.set_dir(ArtifactSet::Rootfs, &hashes.rootfs);
    GuestImagePaths {
        id: hashes.image_id.clone(),
        vmlinux: kernel.join("vmlinux"),
        bzimage: kernel.join("bzImage"),
        rootfs_tar: rootfs.join("rootfs.tar"),
        rootfs_ext4: rootfs.join("rootfs.ext4"),
        rootfs_tree: rootfs.join("tree"),
        docker_tag: hashes.docker_tag(),
    }
}

fn free_ports() -> ChannelPorts {
    ChannelPorts::pick_free_loopback().expect("free loopback ports")
}

fn spec(trial: u32, ports: ChannelPorts) -> LaunchSpec {
    LaunchSpec {
        run_id: "workload-test".into(),
        trial,
        image: image(),
        key: isobench_workload::connection::generate_key().unwrap(),
        ports,
        vcpus: 1,
        memory_mib: 1024,
        ready_deadline: READY_DEADLINE,
    }
}

/// A launched kernel with a ready client.
struct Kernel {
    instance: Box<dyn Instance>,
    client: KernelClient,
    launched_at: Instant,
    ready_at: Instant,
}

async fn start(spec: &LaunchSpec) -> Kernel {
    let t0 = Instant::now();
    let instance = ProcessBackend::new()
        .launch(spec, t0)
        .await
        .expect("the process backend launches the kernel");
    let ports = instance.ports();
    let info = ConnectionInfo {
        ip: instance.address(),
        ports,
        key: spec.key.clone(),
    };
    let deadline = t0 + spec.ready_deadline;
    let mut client = KernelClient::connect(&info, deadline)
        .await
        .expect("the client connects");
    let ready = client
        .wait_ready(deadline)
        .await
        .expect("the kernel gets ready");
    Kernel {
        instance,
        client,
        launched_at: t0,
        ready_at: ready.ready_at,
    }
}

async fn pid_of(client: &mut KernelClient) -> i32 {
    let outcome = client
        .execute("import os; print(os.getpid())", Duration::from_secs(20))
        .await
        .unwrap();
    outcome.answer().parse().expect("the kernel prints its PID")
}

#[tokio::test]
async fn default_suite_passes_every_check() {
    let mut kernel = start(&spec(1, free_ports())).await;
    println!(
        "launch to ready: {:?}",
        kernel.ready_at - kernel.launched_at
    );
    let marks: Vec<String> = kernel
        .instance
        .marks()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert!(
        marks.contains(&"init_started".to_owned()),
        "marks: {marks:?}"
    );
    assert!(
        marks.contains(&"exec_kernel".to_owned()),
        "marks: {marks:?}"
    );

    for cell in Suite::default_suite().cells {
        let outcome = kernel.client.run_cell(&cell).await;
        let outcome = outcome.unwrap_or_else(|error| panic!("cell {}: {error}", cell.name));
        assert_eq!(outcome.runs.len(), cell.repetitions as usize);
    }

    let memory = kernel.instance.memory().await.unwrap();
    assert!(memory.host_pss_bytes.is_some_and(|bytes| bytes > 10 << 20));
    assert!(memory.guest_view.is_some());
    kernel.client.shutdown().await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(20), kernel.instance.wait_exit())
        .await
        .expect("the kernel exits after shutdown_request");
    assert_eq!(exit.status, "exit status 0", "output: {}", exit.last_output);
    kernel.instance.stop().await.unwrap();
}

#[tokio::test]
async fn wrong_expected_value_fails() {
    let mut kernel = start(&spec(2, free_ports())).await;
    let mut cell = Suite::default_suite().cell("trivial").unwrap().clone();
    cell.expect = Expected::Equals("3".into());
    cell.warmup = 0;
    let error = kernel.client.run_cell(&cell).await.unwrap_err();
    assert!(
        matches!(error, ClientError::WrongAnswer { .. }),
        "got {error}"
    );
    kernel.instance.stop().await.unwrap();
}

#[tokio::test]
async fn interrupt_ends_sleep_promptly() {
    let mut kernel = start(&spec(3, free_ports())).await;
    let control = kernel.client.control_handle();
    let started = Instant::now();
    let (outcome, interrupted) = tokio::join!(
        kernel
            .client
            .execute("import time; time.sleep(30)", Duration::from_secs(40)),
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            control.interrupt().await
        }
    );
    interrupted.expect("the kernel accepts interrupt_request");
    let outcome = outcome.expect("the cell ends");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    match outcome.status {
        ExecuteStatus::Error { ename, .. } => assert_eq!(ename, "KeyboardInterrupt"),
        other => panic!("expected KeyboardInterrupt, got {other:?}"),
    }
    // After a cell fails with stop_on_error, ipykernel 6.17 aborts every execute_request that
    // reaches its queue before its own "stop aborting" callback runs, so on a busy host the
    // next request can come back `aborted`. The kernel is still up; the cell is sent again.
    let mut after = None;
    for _ in 0..3 {
        let outcome = kernel
            .client
            .execute("1 + 1", Duration::from_secs(20))
            .await
            .expect("the kernel still runs cells after an interrupt");
        if outcome.status != ExecuteStatus::Aborted {
            after = Some(outcome);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = after.expect("the kernel ran a cell within 3 requests after the interrupt");
    assert_eq!(after.status, ExecuteStatus::Ok);
    assert_eq!(after.answer(), "2");
    kernel.instance.stop().await.unwrap();
}

#[tokio::test]
async fn killed_kernel_reported_dead() {
    let mut kernel = start(&spec(4, free_ports())).await;
    let pid = pid_of(&mut kernel.client).await;
    let (outcome, ()) = tokio::join!(
        kernel
            .client
            .execute("import time; time.sleep(30)", Duration::from_secs(40)),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            // SAFETY: kill has no memory preconditions; `pid` is the kernel this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    );
    let error = outcome.expect_err("a killed kernel cannot finish the cell");
    assert!(
        matches!(error, ClientError::Disconnected { .. }),
        "got {error}"
    );
    let exit = kernel.instance.wait_exit().await;
    assert_eq!(exit.status, "killed by SIGKILL");
    kernel.instance.stop().await.unwrap();
}

#[tokio::test]
async fn two_kernels_start_at_once() {
    let (first, second) = (spec(5, free_ports()), spec(6, free_ports()));
    let (mut first, mut second) = tokio::join!(start(&first), start(&second));
    for kernel in [&mut first, &mut second] {
        let outcome = kernel
            .client
            .execute("1 + 1", Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(outcome.answer(), "2");
    }
    // Each trial has its own /tmp.
    let write = "open('/tmp/trial', 'w').write('x'); 0";
    first
        .client
        .execute(write, Duration::from_secs(20))
        .await
        .unwrap();
    let exists = second
        .client
        .execute(
            "import os; os.path.exists('/tmp/trial')",
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(exists.answer(), "False");
    first.instance.stop().await.unwrap();
    second.instance.stop().await.unwrap();
}

#[tokio::test]
async fn taken_port_is_retried() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let ports = ChannelPorts {
        shell: taken_port,
        ..free_ports()
    };
    let mut kernel = start(&spec(7, ports)).await;
    assert_ne!(kernel.instance.ports().shell, taken_port);
    let marks: Vec<String> = kernel
        .instance
        .marks()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert!(marks.contains(&"port_retry".to_owned()), "marks: {marks:?}");
    let outcome = kernel
        .client
        .execute("1 + 1", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(outcome.answer(), "2");
    kernel.instance.stop().await.unwrap();
}

#[tokio::test]
async fn early_exit_reports_output() {
    let mut spec = spec(8, free_ports());
    spec.key = "not hex".into();
    let error = ProcessBackend::new()
        .launch(&spec, Instant::now())
        .await
        .err()
        .expect("the entrypoint rejects the key");
    match error {
        BackendError::Exited(info) => {
            assert!(info.status.starts_with("exit status"), "{}", info.status);
            assert_ne!(info.status, "exit status 0");
            assert!(
                info.last_output.contains("ISOBENCH_KEY"),
                "{}",
                info.last_output
            );
        }
        other => panic!("expected an exit, got {other}"),
    }
}

#[tokio::test]
async fn wrong_key_never_ready() {
    let spec = spec(9, free_ports());
    let t0 = Instant::now();
    let instance = ProcessBackend::new().launch(&spec, t0).await.unwrap();
    let ports = instance.ports();
    let info = ConnectionInfo {
        ip: instance.address(),
        ports,
        key: "0".repeat(64),
    };
    let deadline = t0 + READY_DEADLINE;
    let mut client = KernelClient::connect(&info, deadline).await.unwrap();
    // ipykernel drops requests with a bad signature, so the client sees only IOPub messages,
    // and those carry the kernel's signature, which does not match the wrong key.
    let error = client
        .wait_ready(Instant::now() + Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::BadSignature { .. } | ClientError::ReadyTimeout { .. }
        ),
        "got {error}"
    );
    instance.stop().await.unwrap();
}
