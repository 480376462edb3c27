//! An engine that stops or hangs mid-run gives clear errors, never a hang.
//!
//! The shared daemon cannot be stopped here, so the driver talks to it through a Unix-socket
//! relay owned by the test. Stopping the relay closes every connection and removes the socket,
//! which is what the client sees when `dockerd` stops. A frozen relay accepts connections but
//! never forwards, like a hung daemon.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cleanup, engine_and_image, launch_config, run_id};
use isobench_container::{ContainerError, Engine};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// Socket of the real daemon behind the relay.
const DAEMON_SOCKET: &str = "/var/run/docker.sock";

/// Call timeout for the engine behind the relay: short, so a hung call fails fast.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Upper bound for any call after the stop: the call timeout plus scheduling slack.
const ERROR_WITHIN: Duration = Duration::from_secs(10);

struct Relay {
    path: PathBuf,
    acceptor: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Client sockets a frozen relay keeps open without responding.
    unanswered: Arc<Mutex<Vec<UnixStream>>>,
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn start(name: &str) -> Relay {
        let path =
            std::env::temp_dir().join(format!("isobench-relay-{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let unanswered: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acceptor = tokio::spawn({
            let connections = Arc::clone(&connections);
            let unanswered = Arc::clone(&unanswered);
            let frozen = Arc::clone(&frozen);
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if frozen.load(std::sync::atomic::Ordering::SeqCst) {
                        unanswered.lock().unwrap().push(client);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut daemon) = UnixStream::connect(DAEMON_SOCKET).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut daemon).await;
                        }
                    });
                    connections.lock().unwrap().push(task);
                }
            }
        });
        Relay {
            path,
            acceptor,
            connections,
            unanswered,
            frozen,
        }
    }

    fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    fn close_connections(&self) {
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Acts as a stopped daemon: no socket, every open connection closed.
    fn stop(&self) {
        self.acceptor.abort();
        let _ = std::fs::remove_file(&self.path);
        self.close_connections();
    }

    /// Acts as a hung daemon: connections are accepted and get no response.
    fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
        self.close_connections();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
        self.unanswered.lock().unwrap().clear();
    }
}

fn assert_engine_error(error: &ContainerError, host: &str) {
    let message = error.to_string();
    assert!(
        matches!(
            error,
            ContainerError::EngineUnreachable { .. } | ContainerError::Timeout { .. }
        ),
        "unexpected error: {message}"
    );
    assert!(message.contains(host), "{message}");
}

#[tokio::test]
async fn engine_stopped_mid_run_gives_clear_error() {
    let Some((direct, image)) = engine_and_image().await else {
        return;
    };
    let relay = Relay::start("stopped");
    let engine = Engine::connect_to(&relay.host(), CALL_TIMEOUT)
        .await
        .unwrap();
    let run = run_id("stopped");
    let network = engine.create_network(&run).await.unwrap();
    let config = launch_config(&run, &image, &network, 512);
    let mut container = engine.launch(&config).await.unwrap();

    relay.stop();
    let started = Instant::now();
    let memory = tokio::time::timeout(ERROR_WITHIN, container.memory()).await;
    let wait = tokio::time::timeout(ERROR_WITHIN, container.wait_exit()).await;
    let stop = tokio::time::timeout(ERROR_WITHIN, container.stop()).await;
    let elapsed = started.elapsed();
    cleanup(&direct, &run).await;

    let memory = memory.expect("memory sample hung").unwrap_err();
    assert_engine_error(&memory, &relay.host());
    let wait = wait.expect("wait for exit hung").unwrap_err();
    assert_engine_error(&wait, &relay.host());
    let stop = stop.expect("stop hung").unwrap_err();
    assert_engine_error(&stop, &relay.host());
    assert!(stop.to_string().contains("scripts/setup-host"), "{stop}");
    assert!(elapsed < 3 * ERROR_WITHIN, "errors took {elapsed:?}");
}

#[tokio::test]
async fn engine_hung_mid_run_times_out() {
    let Some((direct, image)) = engine_and_image().await else {
        return;
    };
    let relay = Relay::start("hung");
    let engine = Engine::connect_to(&relay.host(), CALL_TIMEOUT)
        .await
        .unwrap();
    let run = run_id("hung");
    let network = engine.create_network(&run).await.unwrap();
    let config = launch_config(&run, &image, &network, 512);
    let container = engine.launch(&config).await.unwrap();

    relay.freeze();
    let started = Instant::now();
    let stop = tokio::time::timeout(ERROR_WITHIN, container.stop()).await;
    let elapsed = started.elapsed();
    cleanup(&direct, &run).await;

    let stop = stop.expect("stop hung past its call timeout").unwrap_err();
    assert!(matches!(stop, ContainerError::Timeout { .. }), "{stop}");
    assert!(stop.to_string().contains(&relay.host()), "{stop}");
    assert!(
        elapsed >= CALL_TIMEOUT,
        "stop returned before its timeout: {elapsed:?}"
    );
}
