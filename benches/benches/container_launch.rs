//! Launch-to-ready of the guest image as a container: through the Engine API driver
//! (`isobench_container`) and through the `docker run` command-line client, on the same image,
//! network, limits and Jupyter parameters.
//!
//! One iteration is `t0` -> container created and started -> the Jupyter kernel sent its
//! `kernel_info_reply` from the container's address and IOPub delivered a `status` message
//! (the workload client's ready definition). Shutdown and removal happen outside the timing.
//! Each variant gets warm-up launches first; the first import of the image is never timed.
//!
//! Run with `cargo bench -p isobench-benches --bench container_launch`. It needs the Docker
//! engine and the built guest image (`isobench image build`); without either it prints why
//! and measures nothing.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use isobench_container::{Engine, JupyterParams, LaunchConfig, Network, SweepScope};
use isobench_workload::client::KernelClient;
use isobench_workload::connection::{ChannelPorts, ConnectionInfo};
use tokio::runtime::Runtime;

/// Jupyter ports inside the container, the guest entrypoint's defaults.
const GUEST_PORTS: [u16; 5] = [50001, 50002, 50003, 50004, 50005];

/// Signing key for the benchmark's kernels; any hex string works.
const KEY: &str = "0123456789abcdef0123456789abcdef";

/// Limits of every launched container, the microVM's defaults.
const VCPUS: u32 = 1;
const MEMORY_MIB: u32 = 512;

/// Time one launch may take to become ready on a busy two-core host.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Everything both variants share.
struct Setup {
    runtime: Runtime,
    engine: Engine,
    image: String,
    network: Network,
    run_id: String,
}

impl Setup {
    /// Connects, imports the image if needed and creates the benchmark's network, or explains
    /// on standard error why the benchmark cannot run.
    fn new() -> Option<Setup> {
        let runtime = Runtime::new().expect("Tokio runtime");
        let image = match isobench_harness::image::locate() {
            Ok(image) => image,
            Err(error) => {
                eprintln!("container_launch: skipped, no guest image: {error}");
                return None;
            }
        };
        let run_id = format!("bench-{}", std::process::id());
        let prepared = runtime.block_on(async {
            let engine = Engine::connect().await?;
            engine.sweep(&SweepScope::Stale).await?;
            engine
                .ensure_image(&image.rootfs_tar, &image.docker_tag)
                .await?;
            let network = engine.create_network(&run_id).await?;
            Ok::<_, isobench_container::ContainerError>((engine, network))
        });
        let (engine, network) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                eprintln!("container_launch: skipped: {error}");
                return None;
            }
        };
        let version = engine.version();
        eprintln!(
            "container_launch: isobench {} on host kernel {}, Docker engine {} (API {}), {} CPUs",
            git_revision(),
            host_release(),
            version.engine,
            version.api,
            std::thread::available_parallelism().map_or(0, |count| count.get()),
        );
        Some(Setup {
            runtime,
            engine,
            image: image.docker_tag,
            network,
            run_id,
        })
    }

    fn config(&self, trial: u32) -> LaunchConfig {
        LaunchConfig {
            run_id: self.run_id.clone(),
            trial,
            image: self.image.clone(),
            network: self.network.name.clone(),
            vcpus: VCPUS,
            memory_mib: MEMORY_MIB,
            jupyter: JupyterParams {
                key: KEY.to_string(),
                ports: GUEST_PORTS,
            },
            init: false,
            runtime: None,
        }
    }

    /// One launch through the driver; returns the time from `t0` to ready.
    fn launch_with_driver(&self, trial: u32) -> Duration {
        self.runtime.block_on(async {
            let config = self.config(trial);
            let t0 = Instant::now();
            let container = self.engine.launch(&config).await.expect("driver launch");
            let client = wait_ready(container.address(), t0).await;
            let elapsed = t0.elapsed();

            let _ = client.shutdown().await;
            container.stop().await.expect("stop");
            elapsed
        })
    }

    /// One launch through `docker run`; returns the time from `t0` to ready. The options
    /// mirror the driver's create request.
    fn launch_with_cli(&self, trial: u32) -> Duration {
        self.runtime.block_on(async {
            let config = self.config(trial);
            let name = format!("{}-cli", config.container_name());
            let ports = GUEST_PORTS.map(|port| port.to_string()).join(",");
            let t0 = Instant::now();
            let run = Command::new("docker")
                .args(["run", "--detach", "--name", &name])
                .args(["--network", &config.network])
                .args(["--cpus", &VCPUS.to_string()])
                .args(["--memory", &format!("{MEMORY_MIB}m")])
                .args(["--memory-swap", &format!("{MEMORY_MIB}m")])
                .args(["--read-only", "--hostname", "isobench"])
                .args(["--tmpfs", "/tmp:rw,nosuid,nodev,mode=1777"])
                .args(["--tmpfs", "/run:rw,nosuid,nodev,mode=755"])
                .args(["--stop-timeout", "1"])
                .args([
                    "--label",
                    &format!("{}={}", isobench_container::RUN_ID_LABEL, self.run_id),
                ])
                .args(["--env", "ISOBENCH_IP=0.0.0.0"])
                .args(["--env", &format!("ISOBENCH_KEY={KEY}")])
                .args(["--env", &format!("ISOBENCH_PORTS={ports}")])
                .arg(&config.image)
                .output()
                .expect("docker run");
            assert!(
                run.status.success(),
                "docker run: {}",
                String::from_utf8_lossy(&run.stderr)
            );
            let id = String::from_utf8_lossy(&run.stdout).trim().to_string();
            let template = format!(
                "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                config.network
            );
            let inspect = Command::new("docker")
                .args(["inspect", "--format", &template, &id])
                .output()
                .expect("docker inspect");
            let address: Ipv4Addr = String::from_utf8_lossy(&inspect.stdout)
                .trim()
                .parse()
                .expect("container address from docker inspect");
            let client = wait_ready(address, t0).await;
            let elapsed = t0.elapsed();

            let _ = client.shutdown().await;
            let removed = Command::new("docker").args(["rm", "--force", &id]).output();
            assert!(
                removed.is_ok_and(|output| output.status.success()),
                "docker rm {id}"
            );
            elapsed
        })
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let scope = SweepScope::Run(self.run_id.clone());
        if let Err(error) = self.runtime.block_on(self.engine.sweep(&scope)) {
            eprintln!(
                "container_launch: cleanup of {} failed: {error}",
                self.run_id
            );
        }
    }
}

/// Connects the workload client to the kernel at `address` and waits until it is ready.
async fn wait_ready(address: Ipv4Addr, t0: Instant) -> KernelClient {
    let [shell, iopub, stdin, control, heartbeat] = GUEST_PORTS;
    let info = ConnectionInfo {
        ip: address,
        ports: ChannelPorts {
            shell,
            iopub,
            stdin,
            control,
            heartbeat,
        },
        key: KEY.to_string(),
    };
    let deadline = t0 + READY_TIMEOUT;
    let mut client = KernelClient::connect(&info, deadline)
        .await
        .expect("kernel connect");
    client.wait_ready(deadline).await.expect("kernel ready");
    client
}

fn git_revision() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_string())
        .unwrap_or_default()
}

fn container_launch(criterion: &mut Criterion) {
    let Some(setup) = Setup::new() else { return };
    let mut trial = 0u32;
    let mut group = criterion.benchmark_group("container_launch_to_ready");
    // Each launch takes about a second, so one launch per sample, ten samples per variant.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(3));
    group.measurement_time(Duration::from_secs(15));

    // NOTE: criterion measures the variants one after the other, not interleaved. A change in
    // host load between them shifts one variant only, so compare medians of repeated runs.
    group.bench_function("driver", |bencher| {
        bencher.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| {
                    trial += 1;
                    setup.launch_with_driver(trial)
                })
                .sum()
        })
    });
    group.bench_function("docker_cli", |bencher| {
        bencher.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| {
                    trial += 1;
                    setup.launch_with_cli(trial)
                })
                .sum()
        })
    });
    group.finish();

    interleaved_comparison(&setup, &mut trial);
}

/// Number of driver/CLI pairs in the interleaved comparison.
const INTERLEAVED_PAIRS: u32 = 10;

/// Launches the two variants alternately, so host load changes hit both alike, and prints
/// both medians, their spread and a two-sided sign test over the pairs.
fn interleaved_comparison(setup: &Setup, trial: &mut u32) {
    let mut driver = Vec::new();
    let mut cli = Vec::new();
    for pair in 0..INTERLEAVED_PAIRS {
        *trial += 2;
        // Alternate which variant goes first, so neither always runs on a warmer host.
        if pair % 2 == 0 {
            driver.push(setup.launch_with_driver(*trial).as_secs_f64());
            cli.push(setup.launch_with_cli(*trial + 1).as_secs_f64());
        } else {
            cli.push(setup.launch_with_cli(*trial + 1).as_secs_f64());
            driver.push(setup.launch_with_driver(*trial).as_secs_f64());
        }
    }
    let driver_faster = driver.iter().zip(&cli).filter(|(d, c)| d < c).count() as u32;
    eprintln!(
        "container_launch: interleaved, {INTERLEAVED_PAIRS} pairs: driver median {:.3} s \
         (min {:.3}, max {:.3}), docker run median {:.3} s (min {:.3}, max {:.3}); driver \
         faster in {driver_faster} pairs, two-sided sign test p = {:.3}",
        median(&driver),
        min(&driver),
        max(&driver),
        median(&cli),
        min(&cli),
        max(&cli),
        sign_test_p(driver_faster, INTERLEAVED_PAIRS),
    );
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 0 {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// Two-sided exact sign test: the probability, if both variants were equally fast, of a
/// split at least as uneven as `successes` of `trials`.
fn sign_test_p(successes: u32, trials: u32) -> f64 {
    let extreme = successes.min(trials - successes);
    let mut tail = 0.0;
    let mut binomial = 1.0f64;
    for k in 0..=extreme {
        if k > 0 {
            binomial *= f64::from(trials - k + 1) / f64::from(k);
        }
        tail += binomial;
    }
    (2.0 * tail / 2f64.powi(trials as i32)).min(1.0)
}

criterion_group!(benches, container_launch);
criterion_main!(benches);
