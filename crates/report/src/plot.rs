//! Chart primitives drawn with `plotters` into SVG strings: stacked bars, bars with intervals
//! and per-row distributions, each with one horizontal bar or strip per row, on a linear or
//! logarithmic horizontal axis.
//!
//! Only plotters' SVG backend is built, without its font features. Text is written as SVG
//! `<text>` elements that the browser lays out, and plotters estimates label sizes from the
//! character count, so no system font is ever opened.

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::scale::Scale;

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

/// Outline drawn around every bar, so a light fill keeps a visible edge on a projector.
const OUTLINE: RGBColor = RGBColor(0x33, 0x33, 0x33);

const WIDTH: u32 = 1200;
const MARGIN_LEFT: u32 = 10;
/// Right margin, wide enough for half of the last tick label.
const MARGIN_RIGHT: u32 = 70;
const ROW_HEIGHT: u32 = 84;
const FONT: &str = "sans-serif";
const LABEL_SIZE: u32 = 34;
/// Text size of the names written inside stacked segments.
const SEGMENT_LABEL_SIZE: u32 = 28;
const LEGEND_ROW_HEIGHT: u32 = 52;
const LEGEND_COLUMNS: usize = 3;
/// Rows with more values than this show their summary marks only.
pub const MAX_DOTS: usize = 200;

/// One entry of a stacked bar chart's legend.
#[derive(Debug, Clone)]
pub struct Series {
    /// Name shown in the legend, and inside each segment wide enough for it.
    pub name: String,
    /// Fill colour of its segments.
    pub colour: RGBColor,
}

/// One segment of a stacked bar.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Index into the legend.
    pub series: usize,
    /// Length of the segment.
    pub value: f64,
}

/// An interval drawn in a lane of its own under a stacked bar, for a phase that runs alongside
/// the stacked ones.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// Index into the legend.
    pub series: usize,
    /// Start of the interval.
    pub start: f64,
    /// End of the interval.
    pub end: f64,
}

/// One row of a stacked bar chart.
#[derive(Debug, Clone)]
pub struct StackedRow {
    /// Row label.
    pub label: String,
    /// Segments from left to right.
    pub segments: Vec<Segment>,
    /// Intervals drawn under the segments, over the same axis.
    pub overlays: Vec<Overlay>,
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
    /// Axis title with its unit. The title of a logarithmic axis names its scale.
    pub title: String,
    /// Whether the axis is logarithmic. A log axis starts at the power of ten below the
    /// smallest positive value, and draws smaller values, zero and negative ones at its start.
    pub log: bool,
    /// Formats an axis value.
    pub format: fn(f64) -> String,
}

type DrawError = DrawingAreaErrorKind<std::io::Error>;
type Root<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type RowChart<'a> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<TickedCoord, TickedCoord>>;

/// A linear coordinate with ticks chosen here in place of plotters' evenly spaced ones. The
/// horizontal axis runs over [`Scale`] positions. The vertical one runs over rows: row `y`
/// spans `y` to `y + 1`, with its label at `y + 0.5`.
struct TickedCoord {
    positions: RangedCoordf64,
    major: Vec<f64>,
    minor: Vec<f64>,
}

impl Ranged for TickedCoord {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.positions.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.minor.clone()
        } else {
            self.major.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.positions.range()
    }
}

/// Vertical margins of a bar inside its row, in pixels: top and bottom.
#[derive(Debug, Clone, Copy)]
struct Lane(u32, u32);

/// The stacked segments of a row without overlays.
const FULL_LANE: Lane = Lane(12, 12);
/// The stacked segments of a row with overlays, above them. A row is at least 84 pixels
/// high, so the two lanes keep a gap of at least 8 pixels.
const STACK_LANE: Lane = Lane(6, 38);
/// The overlays, under the stacked segments.
const OVERLAY_LANE: Lane = Lane(54, 6);

/// Draws a stacked horizontal bar chart with a legend of `series`. Overlays are drawn in a
/// thinner lane under their row's segments, so an interval that overlaps the segments shows as
/// such instead of being stacked after them. A segment wide enough for its series name shows
/// the name inside.
pub fn stacked_bars(
    id: &str,
    rows: &[StackedRow],
    series: &[Series],
    axis: &Axis,
) -> Result<String, PlotError> {
    let ends = rows.iter().flat_map(|row| {
        let total: f64 = row.segments.iter().map(|segment| segment.value).sum();
        let overlays = row.overlays.iter().map(|overlay| overlay.end);
        overlays.chain([total, row.marker.unwrap_or(0.0)])
    });
    let starts = rows.iter().flat_map(|row| {
        let first = row.segments.first().map(|segment| segment.value);
        first
            .into_iter()
            .chain(row.overlays.iter().map(|o| o.end - o.start))
    });
    let scale = choose_scale(axis, starts.chain(ends.clone()), ends);
    let legend_height = LEGEND_ROW_HEIGHT * series.len().div_ceil(LEGEND_COLUMNS) as u32 + 20;
    let height = 130 + ROW_HEIGHT * rows.len() as u32 + legend_height;
    let labels: Vec<String> = rows.iter().map(|row| row.label.clone()).collect();
    draw(id, height, |root| {
        let (plot_area, legend_area) = root.split_vertically(height - legend_height);
        let mut chart = row_chart(&plot_area, &labels, &scale, axis)?;
        configure_mesh(&mut chart, &labels, axis, &scale)?;
        let count = rows.len();
        for (index, row) in rows.iter().enumerate() {
            let y = count - 1 - index;
            let lane = if row.overlays.is_empty() {
                FULL_LANE
            } else {
                STACK_LANE
            };
            let mut start = 0.0;
            for segment in &row.segments {
                let series = &series[segment.series];
                let end = start + segment.value;
                draw_bar(&mut chart, &scale, (start, end), y, series.colour, lane)?;
                draw_segment_label(&mut chart, &scale, (start, end), y, lane, series)?;
                start = end;
            }
            for overlay in &row.overlays {
                let series = &series[overlay.series];
                let span = (overlay.start, overlay.end);
                draw_bar(&mut chart, &scale, span, y, series.colour, OVERLAY_LANE)?;
            }
            if let Some(marker) = row.marker {
                chart.draw_series(std::iter::once(
                    EmptyElement::at((scale.position(marker), row_centre(y)))
                        + Rectangle::new([(-2, -32), (2, 32)], INK.filled()),
                ))?;
            }
        }
        draw_legend(&legend_area, series)
    })
}

/// Draws horizontal bars with interval whiskers. On a log axis each bar starts at the axis
/// start, so compare bar ends, not lengths.
pub fn interval_bars(id: &str, rows: &[BarRow], axis: &Axis) -> Result<String, PlotError> {
    let values = rows.iter().flat_map(|row| {
        let (low, high) = row.interval.unwrap_or((row.value, row.value));
        [row.value, low, high]
    });
    let scale = choose_scale(axis, values.clone(), values);
    let height = 130 + ROW_HEIGHT * rows.len() as u32;
    let labels: Vec<String> = rows.iter().map(|row| row.label.clone()).collect();
    draw(id, height, |root| {
        let mut chart = row_chart(root, &labels, &scale, axis)?;
        configure_mesh(&mut chart, &labels, axis, &scale)?;
        let count = rows.len();
        let base = if scale.log { scale.low } else { 0.0 };
        for (index, row) in rows.iter().enumerate() {
            let y = count - 1 - index;
            let lane = Lane(16, 16);
            draw_bar(&mut chart, &scale, (base, row.value), y, row.colour, lane)?;
            if let Some((low, high)) = row.interval {
                draw_whisker(&mut chart, scale.position(low), scale.position(high), y)?;
            }
        }
        Ok(())
    })
}

/// Draws one strip per row: the range as a thin line, a shaded band, the median as a thick
/// tick, an optional hollow tail marker, and the values as dots when there are few.
pub fn distributions(id: &str, rows: &[DistributionRow], axis: &Axis) -> Result<String, PlotError> {
    let values = rows.iter().flat_map(|row| {
        let summary = row.summary;
        row.values
            .iter()
            .copied()
            .chain([summary.range.0, summary.range.1])
    });
    let scale = choose_scale(axis, values.clone(), values);
    let height = 130 + ROW_HEIGHT * rows.len() as u32;
    let labels: Vec<String> = rows.iter().map(|row| row.label.clone()).collect();
    draw(id, height, |root| {
        let count = rows.len();
        let mut chart = row_chart(root, &labels, &scale, axis)?;
        configure_mesh(&mut chart, &labels, axis, &scale)?;
        for (index, row) in rows.iter().enumerate() {
            draw_distribution_row(&mut chart, &scale, row, count - 1 - index)?;
        }
        Ok(())
    })
}

/// Chooses the axis over `values`: logarithmic around the positive ones when the axis is, else
/// linear from zero (or the most negative value) to the largest of `highs`.
fn choose_scale(
    axis: &Axis,
    values: impl Iterator<Item = f64>,
    highs: impl Iterator<Item = f64>,
) -> Scale {
    let values: Vec<f64> = values.filter(|value| value.is_finite()).collect();
    let max = highs
        .filter(|value| value.is_finite())
        .fold(f64::MIN, f64::max)
        .max(0.0);
    if axis.log {
        let min_positive = values
            .iter()
            .copied()
            .filter(|value| *value > 0.0)
            .fold(f64::INFINITY, f64::min);
        Scale::log(min_positive, max)
    } else {
        let min = values.iter().copied().fold(0.0, f64::min);
        Scale::linear(min, max)
    }
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

fn row_chart<'a>(
    area: &Root<'a>,
    labels: &[String],
    scale: &Scale,
    axis: &Axis,
) -> Result<RowChart<'a>, DrawError> {
    let ticks = scale.ticks(max_tick_labels(scale, axis, labels));
    let x = TickedCoord {
        positions: scale.range().into(),
        major: ticks.major,
        minor: ticks.minor,
    };
    let count = labels.len().max(1);
    let y = TickedCoord {
        positions: (0.0..count as f64).into(),
        major: (0..count).map(row_centre).collect(),
        minor: Vec::new(),
    };
    ChartBuilder::on(area)
        .margin_top(20)
        .margin_right(MARGIN_RIGHT)
        .margin_left(MARGIN_LEFT)
        .x_label_area_size(90)
        .y_label_area_size(label_area_width(labels))
        .build_cartesian_2d(x, y)
}

/// Most tick labels that fit side by side under the axis, each as wide as the widest of the
/// candidate labels plus a gap.
fn max_tick_labels(scale: &Scale, axis: &Axis, row_labels: &[String]) -> usize {
    let plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT - label_area_width(row_labels);
    let candidates = scale.ticks(usize::MAX);
    let widest = candidates
        .major
        .iter()
        .map(|position| (axis.format)(scale.value(*position)).chars().count() as u32)
        .max()
        .unwrap_or(4);
    let label_width = text_width(widest, LABEL_SIZE) + 24;
    (plot_width / label_width) as usize
}

/// Vertical position of the centre of row `y`, counted from the bottom.
fn row_centre(y: usize) -> f64 {
    y as f64 + 0.5
}

fn configure_mesh(
    chart: &mut RowChart<'_>,
    labels: &[String],
    axis: &Axis,
    scale: &Scale,
) -> Result<(), DrawError> {
    let count = labels.len();
    let row_label = |position: &f64| {
        let y = position.floor();
        if y >= 0.0 && (y as usize) < count {
            labels[count - 1 - y as usize].clone()
        } else {
            String::new()
        }
    };
    let format = axis.format;
    let scale = *scale;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(count)
        .y_label_formatter(&row_label)
        .x_label_formatter(&|position: &f64| format(scale.value(*position)))
        .x_desc(axis.title.as_str())
        .label_style((FONT, LABEL_SIZE).into_font().color(&INK))
        .axis_desc_style((FONT, LABEL_SIZE).into_font().color(&INK))
        .axis_style(INK.stroke_width(2))
        .light_line_style(RGBColor(0xE4, 0xE4, 0xE4))
        .bold_line_style(RGBColor(0xB8, 0xB8, 0xB8))
        .draw()
}

/// Writes the series name inside a segment when the segment is wide enough for it, in black or
/// white, whichever contrasts more with the fill.
fn draw_segment_label(
    chart: &mut RowChart<'_>,
    scale: &Scale,
    span: (f64, f64),
    y: usize,
    lane: Lane,
    series: &Series,
) -> Result<(), DrawError> {
    let (start, end) = (scale.position(span.0), scale.position(span.1));
    let pixels = |position: f64| chart.backend_coord(&(position, row_centre(y))).0;
    let width = pixels(end) - pixels(start);
    let size = SEGMENT_LABEL_SIZE;
    let text_width = text_width(series.name.chars().count() as u32, size) as i32;
    if width < text_width + 16 {
        return Ok(());
    }
    let ink = if relative_luminance(series.colour) > 0.18 {
        INK
    } else {
        WHITE
    };
    // Centre the text in the segment's lane, which sits off the row's centre when the row
    // has overlays under it.
    let lane_offset = (lane.0 as i32 - lane.1 as i32) / 2;
    let style = (FONT, size)
        .into_font()
        .color(&ink)
        .pos(Pos::new(HPos::Center, VPos::Center));
    chart.draw_series(std::iter::once(
        EmptyElement::at(((start + end) / 2.0, row_centre(y)))
            + Text::new(series.name.clone(), (0, lane_offset), style),
    ))?;
    Ok(())
}

/// WCAG 2 relative luminance of a colour, from 0 (black) to 1 (white).
fn relative_luminance(colour: RGBColor) -> f64 {
    let channel = |value: u8| {
        let value = f64::from(value) / 255.0;
        if value <= 0.039_28 {
            value / 12.92
        } else {
            ((value + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * channel(colour.0) + 0.7152 * channel(colour.1) + 0.0722 * channel(colour.2)
}

/// Draws a filled bar over `span` (values, not positions) with a dark outline.
fn draw_bar(
    chart: &mut RowChart<'_>,
    scale: &Scale,
    span: (f64, f64),
    y: usize,
    colour: RGBColor,
    lane: Lane,
) -> Result<(), DrawError> {
    let (start, end) = (scale.position(span.0), scale.position(span.1));
    let corners = [(start, y as f64), (end, (y + 1) as f64)];
    for style in [colour.filled(), OUTLINE.stroke_width(1)] {
        let mut rectangle = Rectangle::new(corners, style);
        rectangle.set_margin(lane.0, lane.1, 0, 0);
        chart.draw_series(std::iter::once(rectangle))?;
    }
    Ok(())
}

fn draw_whisker(chart: &mut RowChart<'_>, low: f64, high: f64, y: usize) -> Result<(), DrawError> {
    let style = INK.stroke_width(3);
    let centre = |x| (x, row_centre(y));
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

fn draw_distribution_row(
    chart: &mut RowChart<'_>,
    scale: &Scale,
    row: &DistributionRow,
    y: usize,
) -> Result<(), DrawError> {
    let centre = |x: f64| (scale.position(x), row_centre(y));
    let summary = row.summary;

    // Range, then the band, then the dots, then the median and tail on top. The band gets an
    // outline in the row's colour, because its light fill alone fades on a projector.
    chart.draw_series(std::iter::once(PathElement::new(
        vec![centre(summary.range.0), centre(summary.range.1)],
        row.colour.stroke_width(3),
    )))?;
    let corners = [
        (scale.position(summary.band.0), y as f64),
        (scale.position(summary.band.1), (y + 1) as f64),
    ];
    for style in [row.colour.mix(0.45).filled(), row.colour.stroke_width(2)] {
        let mut band = Rectangle::new(corners, style);
        band.set_margin(12, 12, 0, 0);
        chart.draw_series(std::iter::once(band))?;
    }
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

fn draw_legend(area: &Root<'_>, series: &[Series]) -> Result<(), DrawError> {
    let (width, _) = area.dim_in_pixel();
    let column_width = (width as i32 - 40) / LEGEND_COLUMNS as i32;
    for (index, entry) in series.iter().enumerate() {
        let column = (index % LEGEND_COLUMNS) as i32;
        let row = (index / LEGEND_COLUMNS) as i32;
        let x = 20 + column * column_width;
        let y = 10 + row * LEGEND_ROW_HEIGHT as i32;
        let colour = entry.colour;
        let name = &entry.name;
        area.draw(&Rectangle::new([(x, y), (x + 28, y + 28)], colour.filled()))?;
        area.draw(&Rectangle::new(
            [(x, y), (x + 28, y + 28)],
            OUTLINE.stroke_width(1),
        ))?;
        area.draw(&Text::new(
            name.clone(),
            (x + 38, y + 2),
            (FONT, LABEL_SIZE).into_font().color(&INK),
        ))?;
    }
    Ok(())
}

/// Estimated width of `chars` characters of text at `size`, in pixels. plotters writes SVG text
/// at about 0.8 of the size it is given, and a sans-serif character averages well under half of
/// its font size, so half of `size` per character errs on the wide side.
fn text_width(chars: u32, size: u32) -> u32 {
    chars * size / 2
}

fn label_area_width(labels: &[String]) -> u32 {
    let longest = labels
        .iter()
        .map(|label| label.chars().count())
        .max()
        .unwrap_or(4) as u32;
    (text_width(longest, LABEL_SIZE) + 30).clamp(120, 560)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(value: f64) -> String {
        format!("{value:.2} s")
    }

    /// Contents of every `<text>` element, trimmed.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|element| {
                let content = element.split_once('>')?.1;
                Some(content.split_once("</text>")?.0.trim().to_owned())
            })
            .collect()
    }

    fn series(names: &[&str]) -> Vec<Series> {
        names
            .iter()
            .enumerate()
            .map(|(index, name)| Series {
                name: (*name).into(),
                colour: PALETTE[index],
            })
            .collect()
    }

    #[test]
    fn wide_segment_shows_its_name() {
        let rows = vec![StackedRow {
            label: "process".into(),
            segments: vec![Segment {
                series: 0,
                value: 1.0,
            }],
            overlays: Vec::new(),
            marker: None,
        }];
        let svg = stacked_bars("phases", &rows, &series(&["kernel_ready"]), &axis(false)).unwrap();
        // Once in the legend, once inside the segment.
        let count = texts(&svg).iter().filter(|t| *t == "kernel_ready").count();
        assert_eq!(count, 2);
    }

    #[test]
    fn luminance_picks_label_ink() {
        assert!(relative_luminance(WHITE) > 0.99);
        assert!(relative_luminance(BLACK) < 0.01);
        assert!(relative_luminance(PALETTE[0]) < 0.18);
    }

    fn axis(log: bool) -> Axis {
        Axis {
            title: "time (s)".into(),
            log,
            format: seconds,
        }
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
            overlays: Vec::new(),
            marker: Some(0.7),
        }];
        let svg = stacked_bars(
            "phases",
            &rows,
            &series(&["create", "kernel_ready"]),
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

    #[test]
    fn stacked_overlay_draws_in_own_lane() {
        let rows = vec![StackedRow {
            label: "docker".into(),
            segments: vec![
                Segment {
                    series: 0,
                    value: 0.25,
                },
                Segment {
                    series: 1,
                    value: 0.5,
                },
            ],
            overlays: vec![Overlay {
                series: 2,
                start: 0.01,
                end: 0.27,
            }],
            marker: None,
        }];
        let series = series(&["start", "kernel_ready", "start_call"]);
        let svg = stacked_bars("phases", &rows, &series, &axis(false)).unwrap();
        assert!(svg.contains("start_call"));
        // Segments and the overlay are each a fill plus an outline.
        assert!(svg.matches("<rect").count() >= 6);
    }

    #[test]
    fn log_interval_bars_label_every_decade() {
        let mb_s = |value: f64| format!("{value}");
        let axis = Axis {
            title: "MB/s (log scale)".into(),
            log: true,
            format: mb_s,
        };
        let rows: Vec<BarRow> = [3.0, 40.0, 18_000.0]
            .into_iter()
            .map(|value| BarRow {
                label: format!("cell {value}"),
                colour: PALETTE[0],
                value,
                interval: Some((value * 0.9, value * 1.1)),
            })
            .collect();
        let svg = interval_bars("throughput", &rows, &axis).unwrap();
        let texts = texts(&svg);
        for label in ["1", "10", "100", "1000", "10000", "100000"] {
            assert!(
                texts.iter().any(|text| text == label),
                "no tick {label} in {texts:?}"
            );
        }
        assert!(texts.iter().any(|text| text == "MB/s (log scale)"));
    }

    #[test]
    fn single_row_keeps_its_label() {
        let rows = vec![BarRow {
            label: "only".into(),
            colour: PALETTE[0],
            value: 1.0,
            interval: None,
        }];
        let svg = interval_bars("single", &rows, &axis(false)).unwrap();
        assert!(texts(&svg).iter().any(|text| text == "only"));
    }
}
