//! Horizontal scales of the charts: where a value sits along the axis and which values get a
//! tick.
//!
//! Both kinds map values to positions on plotters' linear coordinate: a linear scale keeps the
//! value, a logarithmic one takes its base-10 logarithm. The charts then draw every element at
//! [`Scale::position`] and label each tick with the value it stands for, so a log axis needs no
//! second chart type.

/// Ticks on a log axis that spans at most this many decades: 1, 2 and 5 times each power of
/// ten. Wider axes tick at the powers of ten only.
const DENSE_LOG_DECADES: f64 = 3.0;

/// Largest number of labelled ticks on a linear axis.
const MAX_LINEAR_TICKS: f64 = 7.0;

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
    /// above `max`.
    pub fn linear(min: f64, max: f64) -> Scale {
        let high = nice_max(max);
        let low = if min < 0.0 { -nice_max(-min) } else { 0.0 };
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

    /// Value at a position along the axis, the inverse of [`Scale::position`].
    pub fn value(&self, position: f64) -> f64 {
        if self.log {
            10f64.powf(position)
        } else {
            position
        }
    }

    /// Positions of the axis start and end.
    pub fn range(&self) -> std::ops::Range<f64> {
        self.position(self.low)..self.position(self.high)
    }

    /// Chooses the tick positions.
    pub fn ticks(&self) -> Ticks {
        if self.log {
            self.log_ticks()
        } else {
            self.linear_ticks()
        }
    }

    fn linear_ticks(&self) -> Ticks {
        let step = nice_step((self.high - self.low) / MAX_LINEAR_TICKS);
        let first = (self.low / step).ceil() as i64;
        let last = (self.high / step + 1e-9).floor() as i64;
        let major: Vec<f64> = (first..=last).map(|index| index as f64 * step).collect();
        let minor = major
            .iter()
            .map(|tick| tick + step / 2.0)
            .filter(|tick| *tick < self.high)
            .collect();
        Ticks { major, minor }
    }

    fn log_ticks(&self) -> Ticks {
        let first = self.low.log10().round() as i32;
        let last = self.high.log10().round() as i32;
        let labelled: &[f64] = if f64::from(last - first) <= DENSE_LOG_DECADES {
            &[1.0, 2.0, 5.0]
        } else {
            &[1.0]
        };
        let mut major = Vec::new();
        let mut minor = Vec::new();
        for exponent in first..=last {
            for mantissa in 1..10 {
                let mantissa = f64::from(mantissa);
                let position = f64::from(exponent) + mantissa.log10();
                if position > f64::from(last) + 1e-9 {
                    break;
                }
                if labelled.contains(&mantissa) {
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
        let ticks = scale.ticks();
        assert_eq!(scale.high, 1.0);
        assert_eq!(ticks.major.first().copied(), Some(0.0));
        assert!(close(*ticks.major.last().unwrap(), 1.0));
        assert!(ticks.major.len() <= MAX_LINEAR_TICKS as usize + 1);
    }

    #[test]
    fn linear_ticks_include_negative_side() {
        let scale = Scale::linear(-5.0, 20.0);
        assert!(scale.low < 0.0);
        assert!(scale.ticks().major.iter().any(|tick| *tick < 0.0));
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
    fn log_position_clamps_non_positive() {
        let scale = Scale::log(0.01, 1.0);
        assert_eq!(scale.position(0.0), scale.position(0.01));
        assert_eq!(scale.position(-3.0), scale.position(0.01));
    }

    #[test]
    fn narrow_log_axis_ticks_one_two_five() {
        let scale = Scale::log(0.002, 0.09);
        let labels: Vec<f64> = scale
            .ticks()
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
        let ticks = scale.ticks();
        assert_eq!(ticks.major.len(), 7);
        assert!(ticks.minor.len() > ticks.major.len());
    }
}
