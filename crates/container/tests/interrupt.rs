//! A run killed with SIGINT while launching leaves nothing behind once the next start sweeps.
//!
//! The test binary runs itself again as the interrupted run: the ignored test
//! `interrupted_run_helper` does the launch when [`HELPER_RUN_ENV`] is set.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder};
use common::{engine_and_image, launch_config, run_id};
use isobench_container::{Engine, SweepScope, RUN_ID_LABEL};

/// Variable that carries the run id to the helper process.
const HELPER_RUN_ENV: &str = "ISOBENCH_TEST_INTERRUPTED_RUN";

/// Delays between the helper's network creation and the SIGINT, in milliseconds: at once
/// (during create or attach), and later (during start or before the kernel is ready).
const INTERRUPT_DELAYS_MS: [u64; 3] = [0, 150, 600];

/// Time the daemon gets to finish requests of the dead helper before the sweep.
const SETTLE_TIME: Duration = Duration::from_secs(1);

/// Counts the containers and networks carrying `run_id`.
async fn count_labelled(engine: &Engine, run_id: &str) -> (usize, usize) {
    let docker = bollard::Docker::connect_with_host(engine.host()).unwrap();
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![format!("{RUN_ID_LABEL}={run_id}")],
    )]);
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap();
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .unwrap();
    (containers.len(), networks.len())
}

#[tokio::test]
async fn sigint_mid_launch_leaves_nothing_after_sweep() {
    let Some((engine, _image)) = engine_and_image().await else {
        return;
    };
    for delay_ms in INTERRUPT_DELAYS_MS {
        let run = format!("{}-{delay_ms}", run_id("sigint"));
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .args([
                "interrupted_run_helper",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(HELPER_RUN_ENV, &run)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();

        // The helper prints one line once its network exists, then launches.
        let mut stdout = BufReader::new(helper.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            let read = stdout.read_line(&mut line).unwrap();
            assert!(read > 0, "helper exited before creating its network");
            if line.starts_with("network-created") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        // SAFETY: kill(2) with a PID of our own child and a valid signal number has no
        // memory-safety requirements.
        let sent = unsafe { libc::kill(helper.id() as libc::pid_t, libc::SIGINT) };
        assert_eq!(sent, 0, "sending SIGINT failed");
        let status = helper.wait().unwrap();
        // The daemon completes a request whose client died, so a create sent just before the
        // SIGINT can still appear; the next start comes later than that in practice.
        tokio::time::sleep(SETTLE_TIME).await;
        let left_before_sweep = count_labelled(&engine, &run).await;

        // The next start's sweep: this process is not the dead helper, so everything the
        // helper created is stale.
        let report = engine.sweep(&SweepScope::Stale).await.unwrap();
        let left_after_sweep = count_labelled(&engine, &run).await;

        assert!(!status.success(), "helper was not interrupted: {status}");
        assert!(
            left_before_sweep.1 == 1,
            "delay {delay_ms} ms: {left_before_sweep:?} before the sweep"
        );
        assert_eq!(
            left_after_sweep,
            (0, 0),
            "delay {delay_ms} ms: left after the sweep"
        );
        assert!(!report.networks.is_empty());
    }
}

/// Runs the interrupted run: creates a network, prints a line, launches, then waits to be
/// killed.
#[tokio::test]
#[ignore = "helper process of sigint_mid_launch_leaves_nothing_after_sweep"]
async fn interrupted_run_helper() {
    let Ok(run) = std::env::var(HELPER_RUN_ENV) else {
        return;
    };
    // A shell that starts the tests in the background without job control makes them ignore
    // SIGINT, and the ignored disposition passes on to this process: restore the default, so
    // SIGINT kills it as it kills a run started from a terminal.
    // SAFETY: signal(2) with SIG_DFL installs no handler, and no other thread of this process
    // relies on the SIGINT disposition.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
    let Some((engine, image)) = engine_and_image().await else {
        return;
    };
    let network = engine.create_network(&run).await.unwrap();
    println!("network-created {}", network.id);
    let config = launch_config(&run, &image, &network, 512);
    let container = engine.launch(&config).await.unwrap();
    println!("launched {}", container.id());
    tokio::time::sleep(Duration::from_secs(120)).await;
}
