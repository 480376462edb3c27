//! Round trip of the default suite's trivial cell (`1 + 1`) through isobench's Jupyter client
//! on every backend this host offers, and next to Python's `jupyter_client` from the guest
//! image on the `process` backend's kernel.
//!
//! Each backend's kernel is launched and connected as a trial does it. A round trip is the
//! harness's per-cell figure: `execute_request` sent until both `execute_reply` and the IOPub
//! `idle` with that parent arrived (`ExecuteOutcome::wall`), every answer checked. As in the
//! suite, 10 round trips warm up and 200 are measured, one per criterion sample, so
//! criterion's median is the median over round trips, like the harness's per-trial median of
//! the `trivial` cell. The `Unable to complete 200 samples` warning that criterion prints is
//! expected (see `one_iteration_per_sample`). Unlike a trial, all 200 run in one kernel.
//!
//! On the `process` kernel the two clients are then run in interleaved blocks (A B A B ...),
//! and the p50 and p99 of each are printed with the git revision, date and host, because
//! criterion measures one benchmark after the other. There both sides time the whole call,
//! message building included. The target is a p50 of our client at most half of
//! `jupyter_client`'s.
//!
//! NOTE: the kernel's own time bounds the ratio from below. On a loaded 2-core AMD EPYC host,
//! ipykernel 6.17 stamped the `execute_reply` about 2.0 ms and the `idle` status about 2.3 ms
//! after the request was sent, and both arrived about 2.7 ms after it (the kernel's header dates
//! against the host clock), so no client can take under about 2.5 ms there.
//!
//! Needs root and the guest image's root filesystem (`isobench image build`); without them the
//! benchmark prints why and measures nothing.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use isobench_benches::{
    available_backends, finish_backends, guest_rootfs, one_iteration_per_sample, runtime,
    trial_settings, LaunchedKernel,
};
use isobench_harness::backend::{Backend, BackendKind};
use isobench_workload::{Cell, ConnectionInfo, KernelClient, Suite};

/// Name of the default suite's cell that this benchmark runs.
const TRIVIAL_CELL: &str = "trivial";

/// No round trip is faster than this, so each criterion sample stays one round trip.
const SHORTEST_ROUND_TRIP: Duration = Duration::from_micros(100);

/// Interleaved blocks per client and round trips per block. Blocks are short so that both
/// clients see the same load on a busy host. The first round trips of each block are dropped,
/// because the other client's IOPub messages are still queued for this one then.
const BLOCKS: usize = 100;
const BLOCK_ROUND_TRIPS: usize = 12;
const BLOCK_WARMUP: usize = 2;

/// The Python side: a `jupyter_client.BlockingKernelClient` that reads `N` on standard input,
/// runs `N` round trips and prints their durations in seconds on one line. Its requests carry
/// the same flags as ours (`store_history`, `allow_stdin` off), so the kernel does the same work.
const PYTHON_CLIENT: &str = r#"
import json, queue, sys, time
from jupyter_client import BlockingKernelClient

info = json.loads(sys.argv[1])
client = BlockingKernelClient()
client.load_connection_info(info)
client.start_channels()
client.wait_for_ready(timeout=60)

def round_trip(code):
    start = time.perf_counter()
    msg_id = client.execute(code, store_history=False, allow_stdin=False, stop_on_error=True)
    reply = idle = False
    while not (reply and idle):
        if not reply:
            msg = client.get_shell_msg(timeout=20)
            reply = msg["parent_header"].get("msg_id") == msg_id
        if not idle:
            while True:
                msg = client.get_iopub_msg(timeout=20)
                if (msg["parent_header"].get("msg_id") == msg_id
                        and msg["msg_type"] == "status"
                        and msg["content"]["execution_state"] == "idle"):
                    idle = True
                    break
    return time.perf_counter() - start

def drain():
    count = 0
    while True:
        try:
            client.get_iopub_msg(timeout=0.2)
            count += 1
        except queue.Empty:
            return count

print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "drain":
        print(drain(), flush=True)
        continue
    count = int(line)
    print(" ".join(repr(round_trip(sys.argv[2])) for _ in range(count)), flush=True)
"#;

struct PythonClient {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl PythonClient {
    /// Starts `python3` from the guest image's tree under `chroot`, connected to the kernel.
    fn start(tree: &std::path::Path, info: &ConnectionInfo, code: &str) -> PythonClient {
        let mut child = Command::new("/usr/sbin/chroot")
            .arg(tree)
            .args(["/usr/bin/python3", "-B", "-c", PYTHON_CLIENT])
            .arg(info.to_json())
            .arg(code)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", "/tmp")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("chroot and python3 start");
        let input = child.stdin.take().unwrap();
        let mut output = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "jupyter_client did not get ready");
        PythonClient {
            child,
            input,
            output,
        }
    }

    /// Reads the IOPub messages that queued up while the other client ran. The kernel's PUB
    /// socket drops messages for a subscriber whose queue is full (1000 messages by default in
    /// libzmq), which would drop this client's own `idle` status after a long run of ours.
    fn drain(&mut self) {
        writeln!(self.input, "drain").unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
    }

    fn round_trips(&mut self, count: usize) -> Vec<Duration> {
        writeln!(self.input, "{count}").unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        line.split_whitespace()
            .map(|seconds| Duration::from_secs_f64(seconds.parse().unwrap()))
            .collect()
    }
}

impl Drop for PythonClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Timings of one checked run of the cell.
struct RoundTrip {
    /// The harness's figure: request sent until both the reply and the `idle` status arrived.
    wall: Duration,
    /// The whole `execute` call, message building included, as the Python side times
    /// `client.execute` and the reads that follow it.
    call: Duration,
}

/// Runs `cell` once and checks its answer as the suite does. Panics on a failed or wrong run,
/// since criterion has no way to record a failed iteration.
async fn round_trip(client: &mut KernelClient, cell: &Cell) -> RoundTrip {
    let start = Instant::now();
    let outcome = client
        .execute(&cell.code, cell.timeout())
        .await
        .unwrap_or_else(|error| panic!("cell {:?} failed: {error}", cell.name));
    let call = start.elapsed();
    if let Err(detail) = cell.check(outcome.answer(), outcome.stdout.len() as u64) {
        panic!("cell {:?} returned a wrong answer: {detail}", cell.name);
    }
    RoundTrip {
        wall: outcome.wall(),
        call,
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index]
}

fn describe(durations: &mut [Duration]) -> String {
    durations.sort();
    format!(
        "p50 {:.3} ms p99 {:.3} ms (n={})",
        percentile(durations, 0.5).as_secs_f64() * 1e3,
        percentile(durations, 0.99).as_secs_f64() * 1e3,
        durations.len()
    )
}

fn provenance() -> String {
    let revision = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |count| count.get());
    format!("revision {revision}, {date}, {cpu}, {cores} cores")
}

/// Measures the cell through our client on `kernel`, the harness's figure.
fn bench_isobench_client(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &tokio::runtime::Runtime,
    backend: &str,
    kernel: &mut LaunchedKernel,
    cell: &Cell,
) {
    // Criterion's single warm-up iteration is the last of the suite's warm-up runs.
    runtime.block_on(async {
        for _ in 1..cell.warmup {
            round_trip(&mut kernel.client, cell).await;
        }
    });
    group.bench_function(format!("isobench_client/{backend}"), |bencher| {
        bencher.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    total += round_trip(&mut kernel.client, cell).await.wall;
                }
                total
            })
        })
    });
}

/// Compares our client with `jupyter_client` on the same kernel: interleaved blocks, then
/// criterion's measurement of `jupyter_client` alone.
fn compare_with_jupyter_client(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &tokio::runtime::Runtime,
    tree: &std::path::Path,
    kernel: &mut LaunchedKernel,
    cell: &Cell,
) {
    let mut python = PythonClient::start(tree, &kernel.info, &cell.code);

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut block_ratios = Vec::new();
    for _ in 0..BLOCKS {
        let block: Vec<Duration> = runtime.block_on(async {
            let mut block = Vec::with_capacity(BLOCK_ROUND_TRIPS);
            for _ in 0..BLOCK_ROUND_TRIPS {
                block.push(round_trip(&mut kernel.client, cell).await.call);
            }
            block
        });
        let mut our_block = block[BLOCK_WARMUP..].to_vec();
        let mut their_block = python.round_trips(BLOCK_ROUND_TRIPS)[BLOCK_WARMUP..].to_vec();
        ours.extend_from_slice(&our_block);
        theirs.extend_from_slice(&their_block);
        our_block.sort();
        their_block.sort();
        block_ratios.push(
            percentile(&our_block, 0.5).as_secs_f64() / percentile(&their_block, 0.5).as_secs_f64(),
        );
    }
    let ours_p50 = {
        ours.sort();
        percentile(&ours, 0.5)
    };
    let theirs_p50 = {
        theirs.sort();
        percentile(&theirs, 0.5)
    };
    println!("cell_roundtrip ({})", provenance());
    println!("  isobench client: {}", describe(&mut ours));
    println!("  jupyter_client:  {}", describe(&mut theirs));
    println!(
        "  p50 ratio isobench / jupyter_client: {:.2} (target at most 0.50)",
        ours_p50.as_secs_f64() / theirs_p50.as_secs_f64()
    );
    block_ratios.sort_by(f64::total_cmp);
    println!(
        "  median of per-block p50 ratios: {:.2} over {} blocks",
        block_ratios[block_ratios.len() / 2],
        block_ratios.len()
    );

    python.drain();
    group.bench_function("jupyter_client/process", |bencher| {
        bencher.iter_custom(|iterations| python.round_trips(iterations as usize).iter().sum())
    });
}

fn cell_roundtrip(criterion: &mut Criterion) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("cell_roundtrip: skipped, the process backend needs root");
        return;
    }
    let Some(image) = guest_rootfs() else { return };
    let suite = Suite::default_suite();
    let cell = suite
        .cell(TRIVIAL_CELL)
        .expect("the default suite has the trivial cell")
        .clone();
    let runtime = runtime();
    let backends: Vec<Arc<dyn Backend>> = runtime.block_on(available_backends(&image));
    let settings = trial_settings(&image);

    let mut group = criterion.benchmark_group("cell_roundtrip");
    one_iteration_per_sample(&mut group, cell.repetitions as usize, SHORTEST_ROUND_TRIP);
    for backend in &backends {
        let name = backend.name();
        let mut kernel = match runtime.block_on(LaunchedKernel::launch(backend, &settings)) {
            Ok(kernel) => kernel,
            Err(error) => {
                eprintln!("cell_roundtrip: skipping {name}: {error}");
                continue;
            }
        };
        bench_isobench_client(&mut group, &runtime, &name, &mut kernel, &cell);
        if backend.kind() == BackendKind::Process {
            compare_with_jupyter_client(
                &mut group,
                &runtime,
                &image.rootfs_tree,
                &mut kernel,
                &cell,
            );
        }
        runtime.block_on(kernel.stop());
    }
    group.finish();

    finish_backends(&runtime, &backends);
}

criterion_group!(benches, cell_roundtrip);
criterion_main!(benches);
