//! `isobench image build` with nothing to build: the cache check that a second run performs,
//! whose target is well under 10 s. Also times `image::locate`, which every trial calls, and
//! `image::status`, which walks the root filesystem tree for its size.
//!
//! Run with `cargo bench -p isobench-benches --bench image_cached`. It needs the built guest
//! image (`isobench image build`); without it it prints why and measures nothing.

use criterion::{criterion_group, criterion_main, Criterion};
use isobench_harness::image::{self, ArtifactSet, BuildProgress, Cache, ImageError, SetOutcome};

/// Ignores progress: a cached build reports no steps.
struct NoProgress;

impl BuildProgress for NoProgress {
    fn started(&self, _set: ArtifactSet, _hash: &str) {}
    fn step(&self, _set: ArtifactSet, _message: &str) {}
    fn finished(&self, _set: ArtifactSet, _outcome: &SetOutcome) {}
    fn failed(&self, _set: ArtifactSet, _error: &ImageError) {}
}

fn image_cached(criterion: &mut Criterion) {
    if let Err(error) = image::locate() {
        eprintln!("image_cached: skipped: {error}");
        return;
    }
    let cache = Cache::from_env().expect("the cache folder resolves once locate succeeded");
    let hashes = image::RecipeHashes::embedded();

    criterion.bench_function("image_build_cached", |bencher| {
        bencher.iter(|| {
            let summary = image::build(&cache, &NoProgress).expect("the cached build succeeds");
            assert_eq!(summary.rootfs, SetOutcome::Reused);
        })
    });
    criterion.bench_function("image_locate", |bencher| {
        bencher.iter(|| image::locate().expect("the image is built"))
    });
    criterion.bench_function("image_status", |bencher| {
        bencher.iter(|| image::status(&cache, &hashes))
    });
}

criterion_group!(benches, image_cached);
criterion_main!(benches);
