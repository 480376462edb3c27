//! Launch-to-ready time per backend: `t0` (just before the launch request) to a ready Jupyter
//! kernel, measured by the harness's own trial loop, so the figures are comparable with the
//! medians of `isobench compare`.
//!
//! One iteration is a whole trial (launch, ready, one trivial cell, shutdown, stop), of which
//! only launch-to-ready is counted. Sampling is flat with few samples because one iteration
//! takes about a second.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use isobench_benches::{
    available_backends, guest_image, launch_to_ready, ready_only_workload, runtime, trial_settings,
};

fn startup(criterion: &mut Criterion) {
    let Some(image) = guest_image() else { return };
    let runtime = runtime();
    let backends = runtime.block_on(available_backends(&image));
    let settings = trial_settings(&image);
    let workload = ready_only_workload();
    let sequence = AtomicU32::new(0);

    let mut group = criterion.benchmark_group("launch_to_ready");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));
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

    // Remove what the backends kept across trials, such as the docker network.
    for backend in &backends {
        if let Err(error) = runtime.block_on(backend.finish()) {
            eprintln!("cleanup of {} failed: {error}", backend.name());
        }
    }
}

criterion_group!(benches, startup);
criterion_main!(benches);
