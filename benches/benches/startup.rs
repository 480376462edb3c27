//! Launch-to-ready time per backend: `t0` (just before the launch request) to a ready Jupyter
//! kernel, measured by the harness's own trial loop, so the figures are comparable with the
//! `launch_to_ready` medians of `isobench compare`.
//!
//! One iteration is a whole trial as `isobench compare` runs it with its default flags
//! (launch, ready, the idle settle pause, memory sample, the default suite, memory sample,
//! shutdown, stop), of which only launch-to-ready is counted. The settings and the trial count
//! come from `isobench_harness::defaults`, which also sets compare's defaults. Each backend
//! gets one warm-up trial and `--trials` measured trials, one per criterion sample, so
//! criterion's median is the median over trials, like the harness's. The `Unable to complete
//! N samples` warning that criterion prints is expected (see `one_iteration_per_sample`).
//!
//! One difference remains: criterion runs all trials of one backend before the next backend,
//! while `isobench compare` interleaves the backends trial by trial.
//!
//! NOTE: on a loaded 2-core host single runs of this bench and of compare differed by up to 52%.
//! At a load average under 2 two rounds agreed within 7% (`docs/benchmarks.md`), too few to
//! claim agreement within a few percent.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use isobench_benches::{
    available_backends, compare_workload, finish_backends, guest_rootfs, launch_to_ready,
    one_iteration_per_sample, runtime, trial_settings, COMPARE_TRIALS,
};

/// No backend becomes ready faster than this, so each criterion sample stays one trial.
const SHORTEST_TRIAL: Duration = Duration::from_millis(10);

fn startup(criterion: &mut Criterion) {
    let Some(image) = guest_rootfs() else { return };
    let runtime = runtime();
    let backends = runtime.block_on(available_backends(&image));
    let settings = trial_settings(&image);
    let workload = compare_workload();
    let sequence = AtomicU32::new(0);

    let mut group = criterion.benchmark_group("launch_to_ready");
    one_iteration_per_sample(&mut group, COMPARE_TRIALS, SHORTEST_TRIAL);
    for backend in &backends {
        group.bench_function(backend.name(), |bencher| {
            bencher.iter_custom(|iterations| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let trial = sequence.fetch_add(1, Ordering::Relaxed);
                        total += launch_to_ready(backend, &workload, &settings, trial).await;
                    }
                    total
                })
            });
        });
    }
    group.finish();

    finish_backends(&runtime, &backends);
}

criterion_group!(benches, startup);
criterion_main!(benches);
