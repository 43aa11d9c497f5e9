//! The RTO and RPO trend charts of the HTML render: where everything goes.
//!
//! This module only does the geometry: the scale of the y axis, the position of every
//! drill, which drills are joined by a line, which date labels fit. It hands
//! `templates/trend.svg` a [`TrendChart`] of positions, colors and label texts, and the
//! template writes the SVG.

use super::{optional_human, timestamp};
use crate::drill::report::{human_seconds, DrillReport, HistoryPoint, Verdict};

/// Width of one chart, in SVG user units.
const CHART_W: f64 = 420.0;
/// Height of one chart.
const CHART_H: f64 = 240.0;
/// Left edge of the plot area (room for the y labels).
const PLOT_LEFT: f64 = 54.0;
/// Right edge of the plot area.
const PLOT_RIGHT: f64 = CHART_W - 20.0;
/// Top edge of the plot area (room for the title).
const PLOT_TOP: f64 = 34.0;
/// Bottom edge of the plot area (room for the date labels).
const PLOT_BOTTOM: f64 = CHART_H - 46.0;
/// Gap between the y axis and the first point, and the last point and the right edge.
const X_INSET: f64 = 24.0;
/// At most this many date labels under a chart.
const MAX_X_LABELS: usize = 8;
/// Color of FAIL points.
pub(super) const FAIL_COLOR: &str = "#cf222e";
/// Color of the RTO series.
const RTO_COLOR: &str = "#0969da";
/// Color of the RPO series.
const RPO_COLOR: &str = "#8250df";

/// Human-friendly y-axis steps, seconds: 1s … 30d.
const NICE_STEPS: [f64; 23] = [
    1.0,
    2.0,
    5.0,
    10.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1_800.0,
    3_600.0,
    7_200.0,
    10_800.0,
    21_600.0,
    43_200.0,
    86_400.0,
    172_800.0,
    432_000.0,
    604_800.0,
    1_209_600.0,
    2_592_000.0,
];

/// The unit of one chart's y labels, chosen once per axis so labels compare at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AxisUnit {
    /// "45s"
    Seconds,
    /// "12m"
    Minutes,
    /// "3h"
    Hours,
    /// "2d"
    Days,
}

impl AxisUnit {
    /// The unit that suits an axis going up to `top` seconds.
    fn for_span(top: f64) -> AxisUnit {
        if top <= 120.0 {
            AxisUnit::Seconds
        } else if top <= 7_200.0 {
            AxisUnit::Minutes
        } else if top <= 172_800.0 {
            AxisUnit::Hours
        } else {
            AxisUnit::Days
        }
    }

    /// Seconds in one unit.
    fn seconds(self) -> f64 {
        match self {
            AxisUnit::Seconds => 1.0,
            AxisUnit::Minutes => 60.0,
            AxisUnit::Hours => 3_600.0,
            AxisUnit::Days => 86_400.0,
        }
    }

    /// The label suffix.
    fn suffix(self) -> &'static str {
        match self {
            AxisUnit::Seconds => "s",
            AxisUnit::Minutes => "m",
            AxisUnit::Hours => "h",
            AxisUnit::Days => "d",
        }
    }
}

/// A y-axis label: "0", "45s", "12m", "1.5h", "2d".
fn axis_label(seconds: f64, unit: AxisUnit) -> String {
    if seconds.abs() < f64::EPSILON {
        return "0".to_string();
    }
    let x = seconds / unit.seconds();
    if (x - x.round()).abs() < 0.05 {
        format!("{:.0}{}", x.round(), unit.suffix())
    } else {
        format!("{x:.1}{}", unit.suffix())
    }
}

/// The y axis of one chart: from 0 to `top` seconds in ticks of `step`.
#[derive(Debug, Clone, Copy)]
struct YScale {
    /// The value at the top of the plot.
    top: f64,
    /// Distance between grid lines.
    step: f64,
    /// Unit of the labels.
    unit: AxisUnit,
}

impl YScale {
    /// A scale with a little headroom over `max`, in at most five friendly steps.
    fn fit(max: f64) -> YScale {
        let wanted = if max.is_finite() && max > 0.0 {
            max * 1.08
        } else {
            60.0
        };
        let step = NICE_STEPS
            .iter()
            .copied()
            .find(|s| wanted / s <= 5.0)
            .unwrap_or_else(|| (wanted / 5.0 / 86_400.0).ceil() * 86_400.0);
        let top = (wanted / step).ceil() * step;
        YScale {
            top,
            step,
            unit: AxisUnit::for_span(top),
        }
    }

    /// The grid values, 0 to top inclusive.
    fn ticks(&self) -> Vec<f64> {
        let n = (self.top / self.step).round() as usize;
        (0..=n).map(|i| i as f64 * self.step).collect()
    }

    /// Vertical position of `seconds`.
    fn y(&self, seconds: f64) -> f64 {
        let fraction = (seconds / self.top).clamp(0.0, 1.0);
        PLOT_BOTTOM - fraction * (PLOT_BOTTOM - PLOT_TOP)
    }
}

/// Horizontal position of the `index`-th of `count` drills (one drill sits in the middle).
fn x_position(index: usize, count: usize) -> f64 {
    if count <= 1 {
        return (PLOT_LEFT + PLOT_RIGHT) / 2.0;
    }
    let span = PLOT_RIGHT - PLOT_LEFT - 2.0 * X_INSET;
    PLOT_LEFT + X_INSET + index as f64 * span / (count - 1) as f64
}

/// One measured figure across drills.
struct Series<'a> {
    /// "RTO" or "RPO".
    name: &'a str,
    /// Line and point color.
    color: &'static str,
    /// The objective, seconds, if the policy sets one.
    objective: Option<f64>,
    /// One value per drill, in drill order (absent when not measured).
    values: Vec<Option<f64>>,
}

impl Series<'_> {
    /// The largest value or objective: what the y axis must reach.
    fn max(&self) -> f64 {
        self.values
            .iter()
            .flatten()
            .copied()
            .chain(self.objective)
            .fold(0.0, f64::max)
    }
}

/// A finite, non-negative value, or nothing.
fn plottable(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite()).map(|v| v.max(0.0))
}

/// Every drill of the policy, this one included, in start-time order.
fn trend_points(report: &DrillReport) -> Vec<HistoryPoint> {
    let mut points = report.history.clone();
    points.push(report.history_point());
    points.sort_by_key(|p| p.started_at);
    points
}

/// The edges of the plot area, for the axes and the grid lines.
#[derive(Debug, Clone, Copy)]
pub(super) struct PlotArea {
    /// Left edge (the y axis).
    pub(super) left: f64,
    /// Right edge.
    pub(super) right: f64,
    /// Top edge.
    pub(super) top: f64,
    /// Bottom edge (the x axis).
    pub(super) bottom: f64,
}

/// A point of the chart, SVG user units.
#[derive(Debug, Clone, Copy)]
pub(super) struct Point {
    /// Horizontal position.
    pub(super) x: f64,
    /// Vertical position.
    pub(super) y: f64,
}

/// One horizontal grid line with its duration label.
pub(super) struct Tick {
    /// Height of the line.
    pub(super) y: f64,
    /// Baseline of its label.
    pub(super) label_y: f64,
    /// "0", "45s", "12m", "1.5h", "2d".
    pub(super) label: String,
}

/// The objective as a dashed line across the plot.
pub(super) struct ObjectiveLine {
    /// Height of the line.
    pub(super) y: f64,
    /// Baseline of its label, just above it.
    pub(super) label_y: f64,
    /// The objective in human form.
    pub(super) label: String,
}

/// The dot of a drill that has a value.
pub(super) struct Dot {
    /// Height of its center.
    pub(super) y: f64,
    /// Larger for this drill.
    pub(super) radius: f64,
    /// Ring color: dark for this drill, white otherwise.
    pub(super) ring: &'static str,
    /// Ring width.
    pub(super) ring_width: f64,
}

/// One drill on the chart: a dot, or "n/a" on the x axis when it has no value.
pub(super) struct Marker {
    /// Horizontal position.
    pub(super) x: f64,
    /// The dot (absent: "n/a").
    pub(super) dot: Option<Dot>,
    /// Color of the dot or the "n/a": red for a FAIL.
    pub(super) fill: &'static str,
    /// Drill id, date, verdict and value, shown on hover.
    pub(super) tooltip: String,
}

/// What is written under one drill.
pub(super) struct XLabel {
    /// Horizontal position.
    pub(super) x: f64,
    /// Its date ("05-01"), when there is room for it.
    pub(super) date: Option<String>,
    /// Whether it is the drill of this report ("this drill" under it).
    pub(super) this_drill: bool,
}

/// Everything `templates/trend.svg` draws for one figure.
pub(super) struct TrendChart {
    /// "RTO per drill".
    pub(super) title: String,
    /// The figure caption under the chart.
    pub(super) caption: String,
    /// Width of the chart.
    pub(super) width: f64,
    /// Height of the chart.
    pub(super) height: f64,
    /// The plot area.
    pub(super) plot: PlotArea,
    /// Right edge of the y labels.
    pub(super) tick_label_x: f64,
    /// The y axis grid.
    pub(super) ticks: Vec<Tick>,
    /// The objective, when the policy sets one.
    pub(super) objective: Option<ObjectiveLine>,
    /// Color of the series.
    pub(super) color: &'static str,
    /// Runs of consecutive measured drills, each drawn as one line (two points or more).
    pub(super) lines: Vec<Vec<Point>>,
    /// One marker per drill.
    pub(super) markers: Vec<Marker>,
    /// Baseline of the "n/a" markers.
    pub(super) not_applicable_y: f64,
    /// One label per drill.
    pub(super) x_labels: Vec<XLabel>,
    /// Baseline of the date labels.
    pub(super) date_y: f64,
    /// Baseline of "this drill".
    pub(super) this_drill_y: f64,
    /// Where "not measured" is written when no drill has a value.
    pub(super) not_measured: Option<Point>,
}

/// The RTO and RPO charts of a report, in that order.
pub(super) fn trend_charts(report: &DrillReport) -> Vec<TrendChart> {
    let points = trend_points(report);
    let rto = Series {
        name: "RTO",
        color: RTO_COLOR,
        objective: plottable(report.rto.objective_seconds),
        values: points.iter().map(|p| plottable(p.rto_seconds)).collect(),
    };
    let rpo = Series {
        name: "RPO",
        color: RPO_COLOR,
        objective: plottable(
            report
                .rpo
                .as_ref()
                .and_then(|r| r.objective.objective_seconds),
        ),
        values: points.iter().map(|p| plottable(p.rpo_seconds)).collect(),
    };
    [rto, rpo]
        .iter()
        .map(|series| trend_chart(&points, series, &report.id))
        .collect()
}

/// One chart: grid, objective line, the series and its points, date labels.
fn trend_chart(points: &[HistoryPoint], series: &Series, current_id: &str) -> TrendChart {
    let scale = YScale::fit(series.max());
    TrendChart {
        title: format!("{} per drill", series.name),
        caption: chart_caption(points, series),
        width: CHART_W,
        height: CHART_H,
        plot: PlotArea {
            left: PLOT_LEFT,
            right: PLOT_RIGHT,
            top: PLOT_TOP,
            bottom: PLOT_BOTTOM,
        },
        tick_label_x: PLOT_LEFT - 6.0,
        ticks: grid(&scale),
        objective: series.objective.map(|o| objective_line(&scale, o)),
        color: series.color,
        lines: line_runs(&scale, series),
        markers: markers(&scale, points, series, current_id),
        not_applicable_y: PLOT_BOTTOM - 5.0,
        x_labels: x_labels(points, current_id),
        date_y: PLOT_BOTTOM + 16.0,
        this_drill_y: PLOT_BOTTOM + 30.0,
        not_measured: series.values.iter().all(Option::is_none).then_some(Point {
            x: (PLOT_LEFT + PLOT_RIGHT) / 2.0,
            y: (PLOT_TOP + PLOT_BOTTOM) / 2.0,
        }),
    }
}

/// What a chart shows, for its caption.
fn chart_caption(points: &[HistoryPoint], series: &Series) -> String {
    let range = match (points.first(), points.last()) {
        (Some(first), Some(last)) if points.len() > 1 => format!(
            "{} drills from {} to {}",
            points.len(),
            first.started_at.format("%Y-%m-%d"),
            last.started_at.format("%Y-%m-%d")
        ),
        (Some(only), _) => format!("1 drill on {}", only.started_at.format("%Y-%m-%d")),
        _ => "no drills".to_string(),
    };
    let objective = series.objective.map_or_else(
        || "No objective set.".to_string(),
        |o| format!("Dashed line: objective {}.", human_seconds(o)),
    );
    format!(
        "Measured {} of {range}. Red: FAIL. Ringed: this drill. {objective}",
        series.name
    )
}

/// Horizontal grid lines with their duration labels.
fn grid(scale: &YScale) -> Vec<Tick> {
    scale
        .ticks()
        .into_iter()
        .map(|tick| {
            let y = scale.y(tick);
            Tick {
                y,
                label_y: y + 4.0,
                label: axis_label(tick, scale.unit),
            }
        })
        .collect()
}

/// The objective as a dashed horizontal line, labelled.
fn objective_line(scale: &YScale, objective: f64) -> ObjectiveLine {
    let y = scale.y(objective);
    ObjectiveLine {
        y,
        label_y: y - 4.0,
        label: human_seconds(objective),
    }
}

/// The series as lines joining consecutive measured drills; a drill without a value
/// breaks the line rather than inventing one, and a lone point gets no line.
fn line_runs(scale: &YScale, series: &Series) -> Vec<Vec<Point>> {
    let count = series.values.len();
    let mut runs = Vec::new();
    let mut run = Vec::new();
    for (i, value) in series.values.iter().enumerate() {
        match value {
            Some(v) => run.push(Point {
                x: x_position(i, count),
                y: scale.y(*v),
            }),
            None => runs.push(std::mem::take(&mut run)),
        }
    }
    runs.push(run);
    runs.retain(|run| run.len() >= 2);
    runs
}

/// A tooltip for one drill's point.
fn point_tooltip(point: &HistoryPoint, series: &Series, value: Option<f64>) -> String {
    format!(
        "{} · {} · {} · {} {}",
        point.id,
        timestamp(&point.started_at),
        point.verdict,
        series.name,
        optional_human(value)
    )
}

/// One dot per measured drill (red for FAIL, ringed for this drill), and "n/a" where a
/// drill has no value.
fn markers(
    scale: &YScale,
    points: &[HistoryPoint],
    series: &Series,
    current_id: &str,
) -> Vec<Marker> {
    let count = points.len();
    points
        .iter()
        .zip(&series.values)
        .enumerate()
        .map(|(i, (point, value))| {
            let fail = point.verdict == Verdict::Fail;
            let (radius, ring, ring_width) = if point.id == current_id {
                (6.0, "#1f2328", 2.0)
            } else {
                (4.0, "#ffffff", 1.0)
            };
            Marker {
                x: x_position(i, count),
                dot: value.map(|v| Dot {
                    y: scale.y(v),
                    radius,
                    ring,
                    ring_width,
                }),
                fill: match (fail, value) {
                    (true, _) => FAIL_COLOR,
                    (false, Some(_)) => series.color,
                    (false, None) => "#8c959f",
                },
                tooltip: point_tooltip(point, series, *value),
            }
        })
        .collect()
}

/// Dates under the points (thinned to at most [`MAX_X_LABELS`], always keeping the
/// newest), and "this drill" under the current one.
fn x_labels(points: &[HistoryPoint], current_id: &str) -> Vec<XLabel> {
    let count = points.len();
    let stride = count.div_ceil(MAX_X_LABELS).max(1);
    points
        .iter()
        .enumerate()
        .map(|(i, point)| {
            let this_drill = point.id == current_id;
            let dated = this_drill || (count - 1 - i).is_multiple_of(stride);
            XLabel {
                x: x_position(i, count),
                date: dated.then(|| point.started_at.format("%m-%d").to_string()),
                this_drill,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_scale_and_labels() {
        assert_eq!(axis_label(45.0, AxisUnit::Seconds), "45s");
        assert_eq!(axis_label(720.0, AxisUnit::Minutes), "12m");
        assert_eq!(axis_label(10_800.0, AxisUnit::Hours), "3h");
        assert_eq!(axis_label(172_800.0, AxisUnit::Days), "2d");
        assert_eq!(axis_label(5_400.0, AxisUnit::Hours), "1.5h");
        assert_eq!(axis_label(0.0, AxisUnit::Hours), "0");

        let scale = YScale::fit(83.2);
        assert!(scale.top >= 83.2 && scale.ticks().len() <= 6);
        assert_eq!(scale.unit, AxisUnit::Seconds);
        let scale = YScale::fit(1_200.0);
        assert_eq!(
            (scale.step, scale.top, scale.unit),
            (300.0, 1_500.0, AxisUnit::Minutes)
        );
        let scale = YScale::fit(86_400.0);
        assert_eq!(scale.unit, AxisUnit::Hours);
        assert!(scale.y(86_400.0) > PLOT_TOP);
        let empty = YScale::fit(0.0);
        assert_eq!((empty.top, empty.unit), (60.0, AxisUnit::Seconds));
        assert!(YScale::fit(1.0e9).ticks().len() <= 6);
    }

    #[test]
    fn lines_break_at_missing_values_and_skip_lone_points() {
        let scale = YScale::fit(10.0);
        let series = Series {
            name: "RTO",
            color: RTO_COLOR,
            objective: None,
            values: vec![
                Some(1.0),
                Some(2.0),
                None,
                Some(3.0),
                None,
                Some(4.0),
                Some(5.0),
            ],
        };
        let runs = line_runs(&scale, &series);
        assert_eq!(runs.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);
        assert_eq!(runs[1][0].x, x_position(5, 7));
    }

    #[test]
    fn one_drill_sits_in_the_middle() {
        assert_eq!(x_position(0, 1), (PLOT_LEFT + PLOT_RIGHT) / 2.0);
        assert_eq!(x_position(0, 2), PLOT_LEFT + X_INSET);
        assert_eq!(x_position(1, 2), PLOT_RIGHT - X_INSET);
    }
}
