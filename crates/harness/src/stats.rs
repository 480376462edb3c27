//! Order statistics, percentile-bootstrap confidence intervals and paired ratios.
//!
//! Every interval here is a percentile bootstrap of the median: the sample is resampled with
//! replacement [`Bootstrap::resamples`] times, the median of each resample is taken, and the
//! interval runs between the `(1 - confidence) / 2` and `(1 + confidence) / 2` quantiles of those
//! medians. The generator is seeded, so the same samples always give the same interval.

use serde::{Deserialize, Serialize};

/// Settings of the percentile bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// Number of resamples.
    pub resamples: u32,
    /// Coverage of the interval, such as 0.95.
    pub confidence: f64,
    /// Seed of the resampling generator.
    pub seed: u64,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Bootstrap {
            resamples: 2000,
            confidence: 0.95,
            seed: 0x150b_e7c4,
        }
    }
}

/// Median of a sample with its bootstrap interval, extremes and size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Median of the sample.
    pub median: f64,
    /// Lower end of the bootstrap interval of the median.
    pub ci_low: f64,
    /// Upper end of the bootstrap interval of the median.
    pub ci_high: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Number of values.
    pub count: usize,
}

impl Estimate {
    /// Computes the median, its bootstrap interval and the extremes; `None` for an empty sample
    /// or one that contains a NaN.
    pub fn of(samples: &[f64], bootstrap: &Bootstrap) -> Option<Estimate> {
        let sorted = sorted(samples)?;
        let (ci_low, ci_high) = median_interval(&sorted, bootstrap);
        Some(Estimate {
            median: quantile_sorted(&sorted, 0.5),
            ci_low,
            ci_high,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            count: sorted.len(),
        })
    }

    /// Returns whether the interval contains `value`.
    pub fn interval_contains(&self, value: f64) -> bool {
        self.ci_low <= value && value <= self.ci_high
    }

    /// Returns whether the intervals of two estimates overlap.
    pub fn intervals_overlap(&self, other: &Estimate) -> bool {
        self.ci_low <= other.ci_high && other.ci_low <= self.ci_high
    }
}

/// Latency percentiles of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// 50th percentile.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Number of values.
    pub count: usize,
}

impl Percentiles {
    /// Computes the percentiles; `None` for an empty sample or one that contains a NaN.
    pub fn of(samples: &[f64]) -> Option<Percentiles> {
        let sorted = sorted(samples)?;
        Some(Percentiles {
            p50: quantile_sorted(&sorted, 0.50),
            p95: quantile_sorted(&sorted, 0.95),
            p99: quantile_sorted(&sorted, 0.99),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            count: sorted.len(),
        })
    }
}

/// Returns the `q` quantile of a sample (0 <= q <= 1), interpolating linearly between the two
/// closest ranks (Hyndman and Fan's type 7, the default of R and NumPy); `None` for an empty
/// sample or one that contains a NaN.
pub fn quantile(samples: &[f64], q: f64) -> Option<f64> {
    sorted(samples).map(|sorted| quantile_sorted(&sorted, q))
}

/// Returns the median of a sample; `None` for an empty sample or one that contains a NaN.
pub fn median(samples: &[f64]) -> Option<f64> {
    quantile(samples, 0.5)
}

/// Divides `numerators[i]` by `denominators[i]` for every `i` both slices have a value for.
///
/// Pairs are matched by position: the caller passes the values of one round of the run at the
/// same index, so a ratio compares two trials that ran next to each other. A pair where either
/// value is missing or not positive is left out, because a ratio of a negative reading (such
/// as a `host_delta` swamped by other activity on the host) means nothing.
pub fn paired_ratios(numerators: &[Option<f64>], denominators: &[Option<f64>]) -> Vec<f64> {
    numerators
        .iter()
        .zip(denominators)
        .filter_map(|pair| match pair {
            (Some(numerator), Some(denominator)) if *numerator > 0.0 && *denominator > 0.0 => {
                Some(numerator / denominator)
            }
            _ => None,
        })
        .collect()
}

fn sorted(samples: &[f64]) -> Option<Vec<f64>> {
    if samples.is_empty() || samples.iter().any(|value| value.is_nan()) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(sorted)
}

fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let position = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lower = position.floor() as usize;
    let upper = position.ceil() as usize;
    let fraction = position - lower as f64;
    sorted[lower] + (sorted[upper] - sorted[lower]) * fraction
}

fn median_interval(sorted: &[f64], bootstrap: &Bootstrap) -> (f64, f64) {
    if sorted.len() == 1 || bootstrap.resamples == 0 {
        let median = quantile_sorted(sorted, 0.5);
        return (median, median);
    }
    let mut generator = SplitMix64(bootstrap.seed);
    let mut resample = vec![0.0; sorted.len()];
    let mut medians = Vec::with_capacity(bootstrap.resamples as usize);
    for _ in 0..bootstrap.resamples {
        for slot in resample.iter_mut() {
            *slot = sorted[generator.below(sorted.len())];
        }
        resample.sort_by(f64::total_cmp);
        medians.push(quantile_sorted(&resample, 0.5));
    }
    medians.sort_by(f64::total_cmp);
    let tail = (1.0 - bootstrap.confidence.clamp(0.0, 1.0)) / 2.0;
    (
        quantile_sorted(&medians, tail),
        quantile_sorted(&medians, 1.0 - tail),
    )
}

/// SplitMix64 (Steele, Lea and Flood, 2014): small, fast and good enough to pick resample
/// indices; not for anything secret.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Returns a value in `0..bound` by Lemire's multiply-shift, whose bias is below 2^-32 for
    /// the sample sizes used here.
    fn below(&mut self, bound: usize) -> usize {
        ((u128::from(self.next()) * bound as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_sample_is_middle_value() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
    }

    #[test]
    fn median_of_even_sample_is_midpoint() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        // numpy.percentile(range(1, 11), [95, 99]) == [9.55, 9.91]
        let samples: Vec<f64> = (1..=10).map(f64::from).collect();
        assert!((quantile(&samples, 0.95).unwrap() - 9.55).abs() < 1e-9);
        assert!((quantile(&samples, 0.99).unwrap() - 9.91).abs() < 1e-9);
    }

    #[test]
    fn empty_or_nan_sample_has_no_estimate() {
        assert_eq!(median(&[]), None);
        assert_eq!(Estimate::of(&[1.0, f64::NAN], &Bootstrap::default()), None);
        assert_eq!(Percentiles::of(&[]), None);
    }

    #[test]
    fn constant_sample_has_zero_width_interval() {
        let estimate = Estimate::of(&[2.0; 7], &Bootstrap::default()).unwrap();
        assert_eq!(estimate.ci_low, 2.0);
        assert_eq!(estimate.ci_high, 2.0);
        assert_eq!(estimate.count, 7);
    }

    #[test]
    fn interval_contains_median_and_stays_within_extremes() {
        let samples: Vec<f64> = (1..=21).map(f64::from).collect();
        let estimate = Estimate::of(&samples, &Bootstrap::default()).unwrap();
        assert_eq!(estimate.median, 11.0);
        assert!(estimate.ci_low <= 11.0);
        assert!(estimate.ci_high >= 11.0);
        assert!(estimate.ci_low >= 1.0);
        assert!(estimate.ci_high <= 21.0);
        assert_eq!(estimate.min, 1.0);
        assert_eq!(estimate.max, 21.0);
    }

    #[test]
    fn interval_width_matches_order_statistics() {
        // For n = 21 the distribution-free 95% interval of the median spans about the 6th to
        // the 16th order statistic; the bootstrap interval should land close to it.
        let samples: Vec<f64> = (1..=21).map(f64::from).collect();
        let estimate = Estimate::of(&samples, &Bootstrap::default()).unwrap();
        assert!(
            (5.0..=8.0).contains(&estimate.ci_low),
            "ci_low {}",
            estimate.ci_low
        );
        assert!(
            (14.0..=17.0).contains(&estimate.ci_high),
            "ci_high {}",
            estimate.ci_high
        );
    }

    #[test]
    fn interval_is_reproducible_with_same_seed() {
        let samples = [0.8, 0.9, 1.3, 0.7, 1.1, 0.95, 1.05];
        let first = Estimate::of(&samples, &Bootstrap::default()).unwrap();
        let second = Estimate::of(&samples, &Bootstrap::default()).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn paired_ratios_skip_missing_pairs() {
        let docker = [Some(2.0), None, Some(3.0), Some(4.0)];
        let process = [Some(1.0), Some(1.0), None, Some(2.0)];
        assert_eq!(paired_ratios(&docker, &process), vec![2.0, 2.0]);
    }

    #[test]
    fn paired_ratios_skip_zero_denominator() {
        assert_eq!(paired_ratios(&[Some(1.0)], &[Some(0.0)]), Vec::<f64>::new());
    }

    #[test]
    fn paired_ratios_skip_negative_numerator() {
        assert_eq!(
            paired_ratios(&[Some(-1.0)], &[Some(2.0)]),
            Vec::<f64>::new()
        );
    }

    #[test]
    fn percentiles_of_known_sample() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let percentiles = Percentiles::of(&samples).unwrap();
        assert!((percentiles.p50 - 50.5).abs() < 1e-9);
        assert!((percentiles.p95 - 95.05).abs() < 1e-9);
        assert!((percentiles.p99 - 99.01).abs() < 1e-9);
        assert_eq!(percentiles.count, 100);
    }

    #[test]
    fn overlapping_intervals_are_detected() {
        let a = Estimate {
            median: 1.0,
            ci_low: 0.9,
            ci_high: 1.1,
            min: 0.0,
            max: 2.0,
            count: 5,
        };
        let b = Estimate {
            median: 1.2,
            ci_low: 1.05,
            ci_high: 1.3,
            ..a
        };
        let c = Estimate {
            median: 2.0,
            ci_low: 1.9,
            ci_high: 2.1,
            ..a
        };
        assert!(a.intervals_overlap(&b));
        assert!(!a.intervals_overlap(&c));
    }

    #[test]
    fn generator_indices_stay_below_bound() {
        let mut generator = SplitMix64(1);
        assert!((0..10_000).all(|_| generator.below(7) < 7));
    }
}
