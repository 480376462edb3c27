//! Horizontal scales of the charts: where a value sits along the axis and which values get a
//! tick.
//!
//! Both kinds map values to positions on plotters' linear coordinate: a linear scale keeps the
//! value, a logarithmic one takes its base-10 logarithm. The charts then draw every element at
//! [`Scale::position`] and label each tick with the value it stands for, so a log axis needs no
//! second chart type.

/// Largest number of labelled ticks on a linear axis.
pub const MAX_LINEAR_TICKS: usize = 7;

/// Horizontal scale of one chart, over `low..high` in the data's own unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    /// Whether positions are base-10 logarithms of the values.
    pub log: bool,
    /// Smallest value on the axis.
    pub low: f64,
    /// Largest value on the axis.
    pub high: f64,
}

/// Tick positions of a scale: labelled ones and the unlabelled grid lines between them.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticks {
    /// Positions that get a label and a darker grid line.
    pub major: Vec<f64>,
    /// Positions that get a light grid line only.
    pub minor: Vec<f64>,
}

impl Scale {
    /// Chooses a linear scale from zero (or below zero, for negative values) to a round value
    /// above `max`. A negative start is a multiple of the widest tick spacing, so its label is
    /// as round as the others (`-20`, not `-12`).
    pub fn linear(min: f64, max: f64) -> Scale {
        let high = nice_max(max);
        let mut low = if min < 0.0 { -nice_max(-min) } else { 0.0 };
        if low < 0.0 {
            let step = nice_step((high - low) / (MAX_LINEAR_TICKS - 1) as f64);
            low = (low / step).floor() * step;
        }
        Scale {
            log: false,
            low,
            high,
        }
    }

    /// Chooses a logarithmic scale over whole decades around the positive values
    /// `min_positive..=max`; without a positive value it spans 1 to 10.
    pub fn log(min_positive: f64, max: f64) -> Scale {
        let low = if min_positive.is_finite() && min_positive > 0.0 {
            decade_floor(min_positive)
        } else {
            1.0
        };
        let high = if max.is_finite() && max > low {
            decade_ceil(max)
        } else {
            low * 10.0
        };
        Scale {
            log: true,
            low,
            high: high.max(low * 10.0),
        }
    }

    /// Position of `value` along the axis. On a log scale values below the axis start,
    /// including zero and negative ones, sit at the start.
    pub fn position(&self, value: f64) -> f64 {
        if self.log {
            value.max(self.low).log10()
        } else {
            value
        }
    }

    /// Value at a position along the axis, the inverse of [`Scale::position`]. Log values are
    /// rounded to 12 significant digits, so a tick at 2 reads 2 and not 2.0000000000000004.
    pub fn value(&self, position: f64) -> f64 {
        if !self.log {
            return position;
        }
        let value = 10f64.powf(position);
        // Printing with 12 significant digits and parsing back gives the double nearest to
        // the rounded decimal, which is exact for the 1, 2 and 5 ticks.
        format!("{value:.11e}").parse().unwrap_or(value)
    }

    /// Positions of the axis start and end.
    pub fn range(&self) -> std::ops::Range<f64> {
        self.position(self.low)..self.position(self.high)
    }

    /// Chooses the tick positions, with at most `max_labels` labelled ones (at least two), so
    /// that the labels fit side by side under the axis.
    pub fn ticks(&self, max_labels: usize) -> Ticks {
        let max_labels = max_labels.max(2);
        if self.log {
            self.log_ticks(max_labels)
        } else {
            self.linear_ticks(max_labels)
        }
    }

    fn linear_ticks(&self, max_labels: usize) -> Ticks {
        let intervals = max_labels.min(MAX_LINEAR_TICKS) - 1;
        let step = nice_step((self.high - self.low) / intervals.max(1) as f64);
        let first = (self.low / step).ceil() as i64;
        let last = (self.high / step + 1e-9).floor() as i64;
        let mut major: Vec<f64> = (first..=last).map(|index| index as f64 * step).collect();
        // A negative axis start that no multiple of the step reaches gets a tick of its own,
        // so the negative side is labelled.
        if self.low < 0.0
            && major
                .first()
                .is_some_and(|tick| *tick - self.low >= step / 2.0)
        {
            major.insert(0, self.low);
        }
        let minor = major
            .iter()
            .map(|tick| tick + step / 2.0)
            .filter(|tick| *tick < self.high)
            .collect();
        Ticks { major, minor }
    }

    /// Labels 1, 2 and 5 times each power of ten where they fit, else the powers of ten, else
    /// every second or further power of ten. The other mantissas get grid lines only.
    fn log_ticks(&self, max_labels: usize) -> Ticks {
        let first = self.low.log10().round() as i32;
        let last = self.high.log10().round() as i32;
        let decades = (last - first) as usize;
        let (labelled, decade_step): (&[f64], usize) = if 3 * decades < max_labels {
            (&[1.0, 2.0, 5.0], 1)
        } else {
            (&[1.0], decades.div_ceil(max_labels - 1).max(1))
        };
        let mut major = Vec::new();
        let mut minor = Vec::new();
        for exponent in first..=last {
            let labelled_decade = (exponent - first) as usize % decade_step == 0;
            for mantissa in 1..10 {
                let mantissa = f64::from(mantissa);
                let position = f64::from(exponent) + mantissa.log10();
                if position > f64::from(last) + 1e-9 {
                    break;
                }
                if labelled_decade && labelled.contains(&mantissa) {
                    major.push(position);
                } else {
                    minor.push(position);
                }
            }
        }
        Ticks { major, minor }
    }
}

/// Rounds up to a round value (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten) with
/// 5% headroom, so bars end inside the axis.
pub fn nice_max(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let padded = value * 1.05;
    let magnitude = 10f64.powf(padded.log10().floor());
    let mantissa = padded / magnitude;
    let nice = [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .into_iter()
        .find(|step| mantissa <= *step + 1e-9)
        .unwrap_or(10.0);
    nice * magnitude
}

/// Rounds a tick spacing up to 1, 2 or 5 times a power of ten.
fn nice_step(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    let mantissa = value / magnitude;
    let nice = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|step| mantissa <= *step + 1e-9)
        .unwrap_or(10.0);
    nice * magnitude
}

fn decade_floor(value: f64) -> f64 {
    10f64.powf(value.log10().floor())
}

fn decade_ceil(value: f64) -> f64 {
    10f64.powf(value.log10().ceil())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn nice_max_rounds_up() {
        assert_eq!(nice_max(0.9), 1.0);
        assert_eq!(nice_max(1.3), 1.5);
        assert_eq!(nice_max(0.0), 1.0);
        assert!(close(nice_max(24_105.0), 30_000.0));
    }

    #[test]
    fn linear_ticks_cover_axis() {
        let scale = Scale::linear(0.0, 0.95);
        let ticks = scale.ticks(10);
        assert_eq!(scale.high, 1.0);
        assert_eq!(ticks.major.first().copied(), Some(0.0));
        assert!(close(*ticks.major.last().unwrap(), 1.0));
        assert!(ticks.major.len() <= MAX_LINEAR_TICKS + 1);
    }

    #[test]
    fn negative_start_is_a_round_tick() {
        // A host_delta median of -9.62 MiB beside host_pss medians up to 80 MiB.
        let scale = Scale::linear(-9.62, 80.1);
        assert_eq!(scale.low, -20.0);
        let ticks = scale.ticks(7);
        assert_eq!(ticks.major.first().copied(), Some(-20.0));
        assert!(
            ticks.major.iter().all(|tick| tick % 20.0 == 0.0),
            "{ticks:?}"
        );
    }

    #[test]
    fn linear_ticks_include_negative_side() {
        let scale = Scale::linear(-5.0, 20.0);
        assert!(scale.low < 0.0);
        assert!(scale.ticks(7).major.iter().any(|tick| *tick < 0.0));
    }

    #[test]
    fn log_scale_spans_whole_decades() {
        let scale = Scale::log(3.2, 18_000.0);
        assert_eq!(scale.low, 1.0);
        assert!(close(scale.high, 100_000.0));
        assert!(close(scale.position(1_000.0), 3.0));
        assert!(close(scale.value(scale.position(42.0)), 42.0));
    }

    #[test]
    fn log_value_reads_round() {
        let scale = Scale::log(1.0, 10.0);
        assert_eq!(scale.value(2f64.log10()), 2.0);
        assert_eq!(scale.value(5f64.log10() - 3.0), 0.005);
    }

    #[test]
    fn log_position_clamps_non_positive() {
        let scale = Scale::log(0.01, 1.0);
        assert_eq!(scale.position(0.0), scale.position(0.01));
        assert_eq!(scale.position(-3.0), scale.position(0.01));
    }

    #[test]
    fn narrow_log_axis_ticks_one_two_five() {
        let scale = Scale::log(0.002, 0.09);
        let labels: Vec<f64> = scale
            .ticks(8)
            .major
            .iter()
            .map(|p| scale.value(*p))
            .collect();
        let expected = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1];
        assert_eq!(labels.len(), expected.len());
        for (label, expected) in labels.iter().zip(expected) {
            assert!(close(*label, expected), "{label} != {expected}");
        }
    }

    #[test]
    fn wide_log_axis_ticks_decades() {
        let scale = Scale::log(0.5, 20_000.0);
        let ticks = scale.ticks(8);
        assert_eq!(ticks.major.len(), 7);
        assert!(ticks.minor.len() > ticks.major.len());
    }

    #[test]
    fn crowded_log_axis_skips_decades() {
        let scale = Scale::log(0.5, 20_000.0);
        let ticks = scale.ticks(4);
        let labels: Vec<f64> = ticks.major.iter().map(|p| scale.value(*p)).collect();
        let expected = [0.1, 10.0, 1_000.0, 100_000.0];
        assert_eq!(labels.len(), expected.len(), "{labels:?}");
        for (label, expected) in labels.iter().zip(expected) {
            assert!(close(*label, expected), "{label} != {expected}");
        }
    }

    #[test]
    fn narrow_linear_axis_has_fewer_labels() {
        let scale = Scale::linear(0.0, 2.4);
        assert!(scale.ticks(3).major.len() <= 4);
        assert!(scale.ticks(7).major.len() > scale.ticks(3).major.len());
    }
}
