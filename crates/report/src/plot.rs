//! Chart primitives drawn with `plotters` into SVG strings: stacked bars, bars with intervals
//! and per-row distributions, each with one horizontal bar or strip per row.
//!
//! Only plotters' SVG backend is built, without its font features. Text is written as SVG
//! `<text>` elements that the browser lays out, and plotters estimates label sizes from the
//! character count, so no system font is ever opened.

use plotters::coord::ranged1d::{AsRangedCoord, SegmentValue, SegmentedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordusize;
use plotters::prelude::*;

/// Failure to draw a chart.
#[derive(Debug, thiserror::Error)]
#[error("failed to draw chart {chart:?}: {message}")]
pub struct PlotError {
    /// Chart id.
    pub chart: String,
    /// plotters' message.
    pub message: String,
}

/// Okabe and Ito's colour-blind-safe palette, in the order colours are handed out.
pub const PALETTE: [RGBColor; 7] = [
    RGBColor(0x00, 0x72, 0xB2), // blue
    RGBColor(0xE6, 0x9F, 0x00), // orange
    RGBColor(0x00, 0x9E, 0x73), // bluish green
    RGBColor(0xCC, 0x79, 0xA7), // reddish purple
    RGBColor(0xD5, 0x5E, 0x00), // vermillion
    RGBColor(0x56, 0xB4, 0xE9), // sky blue
    RGBColor(0xF0, 0xE4, 0x42), // yellow
];

/// Near-black used for text, axes and markers.
pub const INK: RGBColor = RGBColor(0x11, 0x11, 0x11);

const WIDTH: u32 = 1200;
const ROW_HEIGHT: u32 = 84;
const FONT: &str = "sans-serif";
const LABEL_SIZE: u32 = 34;
const LEGEND_ROW_HEIGHT: u32 = 52;
const LEGEND_COLUMNS: usize = 3;
/// Rows with more values than this show their summary marks only.
const MAX_DOTS: usize = 200;

/// One segment of a stacked bar.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Index into the legend.
    pub series: usize,
    /// Length of the segment.
    pub value: f64,
}

/// One row of a stacked bar chart.
#[derive(Debug, Clone)]
pub struct StackedRow {
    /// Row label.
    pub label: String,
    /// Segments from left to right.
    pub segments: Vec<Segment>,
    /// A value marked with a black tick on the row, such as the median total.
    pub marker: Option<f64>,
}

/// One row of a bar chart with an interval.
#[derive(Debug, Clone)]
pub struct BarRow {
    /// Row label.
    pub label: String,
    /// Colour of the bar.
    pub colour: RGBColor,
    /// Bar length.
    pub value: f64,
    /// Interval drawn as a whisker over the bar, when known.
    pub interval: Option<(f64, f64)>,
}

/// One row of a distribution chart.
#[derive(Debug, Clone)]
pub struct DistributionRow {
    /// Row label.
    pub label: String,
    /// Colour of the row.
    pub colour: RGBColor,
    /// Individual values, drawn as dots when there are at most [`MAX_DOTS`].
    pub values: Vec<f64>,
    /// Summary marks drawn over the dots.
    pub summary: RowSummary,
}

/// Summary marks of a distribution row.
#[derive(Debug, Clone, Copy)]
pub struct RowSummary {
    /// Thin line from the smallest to the largest value.
    pub range: (f64, f64),
    /// Shaded box, such as the median's interval or the interquartile range.
    pub band: (f64, f64),
    /// Thick tick at the median.
    pub median: f64,
    /// Extra hollow marker, such as p99.
    pub tail: Option<f64>,
}

/// Horizontal axis of a chart.
#[derive(Debug, Clone)]
pub struct Axis {
    /// Axis title with its unit.
    pub title: String,
    /// Whether the axis is logarithmic.
    pub log: bool,
    /// Formats an axis value.
    pub format: fn(f64) -> String,
}

type DrawError = DrawingAreaErrorKind<std::io::Error>;
type Root<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type RowCoord = SegmentedCoord<RangedCoordusize>;
type RowChart<'a, X> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, RowCoord>>;

/// Draws a stacked horizontal bar chart with a legend of `series` names.
pub fn stacked_bars(
    id: &str,
    rows: &[StackedRow],
    series: &[String],
    axis: &Axis,
) -> Result<String, PlotError> {
    let max = rows
        .iter()
        .map(|row| {
            let total: f64 = row.segments.iter().map(|segment| segment.value).sum();
            total.max(row.marker.unwrap_or(0.0))
        })
        .fold(0.0, f64::max);
    let legend_height = LEGEND_ROW_HEIGHT * series.len().div_ceil(LEGEND_COLUMNS) as u32 + 20;
    let height = 130 + ROW_HEIGHT * rows.len() as u32 + legend_height;
    let labels: Vec<String> = rows.iter().map(|row| row.label.clone()).collect();
    draw(id, height, |root| {
        let (plot_area, legend_area) = root.split_vertically(height - legend_height);
        let mut chart = row_chart(&plot_area, &labels, 0.0..nice_max(max))?;
        configure_mesh(&mut chart, &labels, axis)?;
        let count = rows.len();
        for (index, row) in rows.iter().enumerate() {
            let y = count - 1 - index;
            let mut start = 0.0;
            for segment in &row.segments {
                let colour = PALETTE[segment.series % PALETTE.len()];
                let end = start + segment.value;
                chart.draw_series(std::iter::once(bar(start, end, y, colour.filled(), 12)))?;
                start = end;
            }
            if let Some(marker) = row.marker {
                chart.draw_series(std::iter::once(
                    EmptyElement::at((marker, SegmentValue::CenterOf(y)))
                        + Rectangle::new([(-2, -32), (2, 32)], INK.filled()),
                ))?;
            }
        }
        draw_legend(&legend_area, series)
    })
}

/// Draws horizontal bars with interval whiskers.
pub fn interval_bars(id: &str, rows: &[BarRow], axis: &Axis) -> Result<String, PlotError> {
    let highs = rows.iter().map(|row| {
        row.interval
            .map_or(row.value, |(_, high)| high.max(row.value))
    });
    let lows = rows.iter().map(|row| {
        row.interval
            .map_or(row.value, |(low, _)| low.min(row.value))
    });
    let max = highs.fold(0.0, f64::max);
    let min = lows.fold(0.0, f64::min);
    let height = 130 + ROW_HEIGHT * rows.len() as u32;
    let labels: Vec<String> = rows.iter().map(|row| row.label.clone()).collect();
    draw(id, height, |root| {
        let low = if min < 0.0 { -nice_max(-min) } else { 0.0 };
        let mut chart = row_chart(root, &labels, low..nice_max(max))?;
        configure_mesh(&mut chart, &labels, axis)?;
        let count = rows.len();
        for (index, row) in rows.iter().enumerate() {
            let y = count - 1 - index;
            chart.draw_series(std::iter::once(bar(
                0.0,
                row.value,
                y,
                row.colour.filled(),
                16,
            )))?;
            if let Some((low, high)) = row.interval {
                draw_whisker(&mut chart, low, high, y)?;
            }
        }
        Ok(())
    })
}

/// Draws one strip per row: the range as a thin line, a shaded band, the median as a thick
/// tick, an optional hollow tail marker, and the values as dots when there are few.
pub fn distributions(id: &str, rows: &[DistributionRow], axis: &Axis) -> Result<String, PlotError> {
    let all = || {
        rows.iter()
            .flat_map(|row| row.values.iter().copied().chain([row.summary.range.1]))
    };
    let max = all().fold(0.0, f64::max);
    let min_positive = all()
        .filter(|value| *value > 0.0)
        .fold(f64::INFINITY, f64::min);
    let height = 130 + ROW_HEIGHT * rows.len() as u32;
    let labels: Vec<String> = rows.iter().map(|row| row.label.clone()).collect();
    draw(id, height, |root| {
        let count = rows.len();
        if axis.log {
            let low = if min_positive.is_finite() {
                decade_floor(min_positive)
            } else {
                1e-6
            };
            let high = decade_ceil(max.max(low * 10.0));
            let mut chart = row_chart(root, &labels, (low..high).log_scale())?;
            configure_mesh(&mut chart, &labels, axis)?;
            for (index, row) in rows.iter().enumerate() {
                draw_distribution_row(&mut chart, row, count - 1 - index, low)?;
            }
        } else {
            let mut chart = row_chart(root, &labels, 0.0..nice_max(max))?;
            configure_mesh(&mut chart, &labels, axis)?;
            for (index, row) in rows.iter().enumerate() {
                draw_distribution_row(&mut chart, row, count - 1 - index, f64::MIN)?;
            }
        }
        Ok(())
    })
}

fn draw(
    id: &str,
    height: u32,
    body: impl FnOnce(&Root<'_>) -> Result<(), DrawError>,
) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        let drawn = root
            .fill(&WHITE)
            .and_then(|()| body(&root))
            .and_then(|()| root.present());
        drawn.map_err(|error| PlotError {
            chart: id.to_owned(),
            message: error.to_string(),
        })?;
    }
    Ok(svg)
}

fn row_chart<'a, X>(
    area: &Root<'a>,
    labels: &[String],
    x: X,
) -> Result<RowChart<'a, X::CoordDescType>, DrawError>
where
    X: AsRangedCoord<Value = f64>,
{
    ChartBuilder::on(area)
        .margin_top(20)
        .margin_right(40)
        .margin_left(10)
        .x_label_area_size(90)
        .y_label_area_size(label_area_width(labels))
        .build_cartesian_2d(x, (0..labels.len()).into_segmented())
}

fn configure_mesh<X>(
    chart: &mut RowChart<'_, X>,
    labels: &[String],
    axis: &Axis,
) -> Result<(), DrawError>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let count = labels.len();
    let row_label = |value: &SegmentValue<usize>| match value {
        SegmentValue::CenterOf(y) if *y < count => labels[count - 1 - *y].clone(),
        _ => String::new(),
    };
    let format = axis.format;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(count)
        .y_label_formatter(&row_label)
        .x_labels(8)
        .x_label_formatter(&|value: &f64| format(*value))
        .x_desc(axis.title.as_str())
        .label_style((FONT, LABEL_SIZE).into_font().color(&INK))
        .axis_desc_style((FONT, LABEL_SIZE).into_font().color(&INK))
        .axis_style(INK.stroke_width(2))
        .light_line_style(RGBColor(0xE4, 0xE4, 0xE4))
        .bold_line_style(RGBColor(0xC8, 0xC8, 0xC8))
        .draw()
}

fn bar(
    start: f64,
    end: f64,
    y: usize,
    style: ShapeStyle,
    margin: u32,
) -> Rectangle<(f64, SegmentValue<usize>)> {
    let mut rectangle = Rectangle::new(
        [
            (start, SegmentValue::Exact(y)),
            (end, SegmentValue::Exact(y + 1)),
        ],
        style,
    );
    rectangle.set_margin(margin, margin, 0, 0);
    rectangle
}

fn draw_whisker<X>(
    chart: &mut RowChart<'_, X>,
    low: f64,
    high: f64,
    y: usize,
) -> Result<(), DrawError>
where
    X: Ranged<ValueType = f64>,
{
    let style = INK.stroke_width(3);
    let centre = |x| (x, SegmentValue::CenterOf(y));
    chart.draw_series(std::iter::once(PathElement::new(
        vec![centre(low), centre(high)],
        style,
    )))?;
    for x in [low, high] {
        chart.draw_series(std::iter::once(
            EmptyElement::at(centre(x)) + PathElement::new(vec![(0, -12), (0, 12)], style),
        ))?;
    }
    Ok(())
}

fn draw_distribution_row<X>(
    chart: &mut RowChart<'_, X>,
    row: &DistributionRow,
    y: usize,
    floor: f64,
) -> Result<(), DrawError>
where
    X: Ranged<ValueType = f64>,
{
    let clamp = |value: f64| value.max(floor);
    let centre = |x: f64| (clamp(x), SegmentValue::CenterOf(y));
    let summary = row.summary;

    // Range, then the band, then the dots, then the median and tail on top.
    chart.draw_series(std::iter::once(PathElement::new(
        vec![centre(summary.range.0), centre(summary.range.1)],
        row.colour.stroke_width(2),
    )))?;
    chart.draw_series(std::iter::once(bar(
        clamp(summary.band.0),
        clamp(summary.band.1),
        y,
        row.colour.mix(0.35).filled(),
        12,
    )))?;
    if row.values.len() <= MAX_DOTS {
        let dots = row.values.iter().enumerate().map(|(index, value)| {
            // Spread the dots over the strip's height in a fixed pattern so equal values stay
            // visible without random jitter.
            let offset = ((index * 7) % 11) as i32 * 4 - 20;
            EmptyElement::at(centre(*value))
                + Circle::new((0, offset), 5, row.colour.mix(0.8).filled())
        });
        chart.draw_series(dots)?;
    }
    chart.draw_series(std::iter::once(
        EmptyElement::at(centre(summary.median))
            + Rectangle::new([(-3, -30), (3, 30)], INK.filled()),
    ))?;
    if let Some(tail) = summary.tail {
        chart.draw_series(std::iter::once(
            EmptyElement::at(centre(tail)) + Circle::new((0, 0), 8, INK.stroke_width(3)),
        ))?;
    }
    Ok(())
}

fn draw_legend(area: &Root<'_>, series: &[String]) -> Result<(), DrawError> {
    let (width, _) = area.dim_in_pixel();
    let column_width = (width as i32 - 40) / LEGEND_COLUMNS as i32;
    for (index, name) in series.iter().enumerate() {
        let column = (index % LEGEND_COLUMNS) as i32;
        let row = (index / LEGEND_COLUMNS) as i32;
        let x = 20 + column * column_width;
        let y = 10 + row * LEGEND_ROW_HEIGHT as i32;
        let colour = PALETTE[index % PALETTE.len()];
        area.draw(&Rectangle::new([(x, y), (x + 28, y + 28)], colour.filled()))?;
        area.draw(&Text::new(
            name.clone(),
            (x + 38, y + 2),
            (FONT, LABEL_SIZE).into_font().color(&INK),
        ))?;
    }
    Ok(())
}

fn label_area_width(labels: &[String]) -> u32 {
    let longest = labels
        .iter()
        .map(|label| label.chars().count())
        .max()
        .unwrap_or(4) as u32;
    (longest * LABEL_SIZE * 6 / 10 + 30).clamp(120, 560)
}

/// Rounds up to 1, 2 or 5 times a power of ten, with 5% headroom.
fn nice_max(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let padded = value * 1.05;
    let magnitude = 10f64.powf(padded.log10().floor());
    let mantissa = padded / magnitude;
    let nice = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .find(|step| mantissa <= *step)
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

    fn seconds(value: f64) -> String {
        format!("{value:.2} s")
    }

    fn axis(log: bool) -> Axis {
        Axis {
            title: "time (s)".into(),
            log,
            format: seconds,
        }
    }

    #[test]
    fn nice_max_rounds_up() {
        assert_eq!(nice_max(0.9), 1.0);
        assert_eq!(nice_max(1.3), 2.0);
        assert_eq!(nice_max(0.0), 1.0);
    }

    #[test]
    fn stacked_bars_draw_svg_with_text() {
        let rows = vec![StackedRow {
            label: "docker".into(),
            segments: vec![
                Segment {
                    series: 0,
                    value: 0.2,
                },
                Segment {
                    series: 1,
                    value: 0.5,
                },
            ],
            marker: Some(0.7),
        }];
        let svg = stacked_bars(
            "phases",
            &rows,
            &["create".into(), "kernel_ready".into()],
            &axis(false),
        )
        .unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("kernel_ready"));
        assert!(svg.contains("<text"));
    }

    #[test]
    fn log_distribution_draws_rows() {
        let rows = vec![DistributionRow {
            label: "trivial · process".into(),
            colour: PALETTE[0],
            values: vec![0.001, 0.0012, 0.002],
            summary: RowSummary {
                range: (0.001, 0.002),
                band: (0.0011, 0.0013),
                median: 0.0012,
                tail: Some(0.0019),
            },
        }];
        let svg = distributions("cells", &rows, &axis(true)).unwrap();
        assert!(svg.contains("trivial · process"));
    }

    #[test]
    fn interval_bars_accept_negative_values() {
        let rows = vec![BarRow {
            label: "host_delta".into(),
            colour: PALETTE[1],
            value: -5.0,
            interval: Some((-8.0, 2.0)),
        }];
        assert!(interval_bars("memory", &rows, &axis(false)).is_ok());
    }
}
