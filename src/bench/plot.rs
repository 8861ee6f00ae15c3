//! SVG plots of benchmark results (plotters, no font files: the SVG names a font family and
//! the viewer renders it): latency histograms, and metrics against a swept concurrency.

use std::path::Path;

use plotters::prelude::*;

use super::error::{BenchError, Result};
use super::stats::Summary;

const PANEL_W: u32 = 560;
const PANEL_H: u32 = 340;
const TITLE_H: u32 = 40;
const BINS: usize = 30;
const FONT: &str = "sans-serif";
const LIGHT_GRID: RGBColor = RGBColor(240, 240, 240);
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One histogram panel: the samples of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    pub name: String,
    pub unit: String,
    pub values: Vec<f64>,
}

/// One line-chart panel of a sweep: named lines of (x, y) points.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPanel {
    pub title: String,
    pub y_desc: String,
    pub lines: Vec<(String, Vec<(f64, f64)>)>,
}

fn plot_err<E: std::fmt::Display>(e: E) -> BenchError {
    BenchError::Plot(e.to_string())
}

fn grid(n: usize) -> (usize, usize) {
    let cols = if n > 1 { 2 } else { 1 };
    (n.div_ceil(cols).max(1), cols)
}

fn canvas(path: &Path, n: usize) -> Result<((usize, usize), SVGBackend<'_>)> {
    let (rows, cols) = grid(n);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| BenchError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let size = (PANEL_W * cols as u32, PANEL_H * rows as u32 + TITLE_H);
    Ok(((rows, cols), SVGBackend::new(path, size)))
}

/// Counts, concurrencies and batch sizes are whole numbers: label only the integer ticks
/// (plotters also puts ticks between them, which would print as repeated integers).
fn integer_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-6 {
        format!("{v:.0}")
    } else {
        String::new()
    }
}

/// A range around `[lo, hi]` that is never empty (plotters needs width for its ticks).
fn padded(lo: f64, hi: f64, pad_frac: f64) -> (f64, f64) {
    if hi > lo {
        let pad = (hi - lo) * pad_frac;
        (lo - pad, hi + pad)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.05 };
        (lo - pad, hi + pad)
    }
}

/// Histograms of each distribution, with its median and p99 marked.
pub fn plot_distributions(path: &Path, title: &str, dists: &[Distribution]) -> Result<()> {
    let dists: Vec<&Distribution> = dists.iter().filter(|d| !d.values.is_empty()).collect();
    if dists.is_empty() {
        return Err(BenchError::Plot("no samples to plot".into()));
    }
    let (shape, backend) = canvas(path, dists.len())?;
    let root = backend.into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root.titled(title, (FONT, 22)).map_err(plot_err)?;
    for (i, (area, d)) in root.split_evenly(shape).iter().zip(&dists).enumerate() {
        histogram(area, d, COLORS[i % COLORS.len()])?;
    }
    root.present().map_err(plot_err)
}

fn histogram(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    d: &Distribution,
    color: RGBColor,
) -> Result<()> {
    let s = Summary::of(&d.values);
    let (lo, hi) = padded(s.min, s.max, 0.0);
    let width = (hi - lo) / BINS as f64;
    let mut counts = [0u32; BINS];
    for v in &d.values {
        let b = (((v - lo) / width) as usize).min(BINS - 1);
        counts[b] += 1;
    }
    let top = *counts.iter().max().unwrap_or(&1) as f64 * 1.15;
    let caption = format!(
        "{} ({}): median {:.2}, p99 {:.2}, n={}",
        d.name, d.unit, s.median, s.p99, s.count
    );
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 15))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(lo..hi, 0f64..top)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .light_line_style(LIGHT_GRID)
        .x_desc(d.unit.as_str())
        .y_desc("count")
        .y_label_formatter(&integer_label)
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(counts.iter().enumerate().map(|(b, &c)| {
            let x0 = lo + b as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width, c as f64)], color.mix(0.7).filled())
        }))
        .map_err(plot_err)?;
    for (label, x, style) in [("median", s.median, BLACK), ("p99", s.p99, RED)] {
        chart
            .draw_series(LineSeries::new([(x, 0.0), (x, top)], style.stroke_width(2)))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], style.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_err)
}

/// Line charts of metrics against a swept x (concurrency, batch size), x on a log2 axis.
pub fn plot_sweep(path: &Path, title: &str, x_desc: &str, panels: &[SweepPanel]) -> Result<()> {
    if panels
        .iter()
        .all(|p| p.lines.iter().all(|(_, pts)| pts.is_empty()))
    {
        return Err(BenchError::Plot("no sweep points to plot".into()));
    }
    let (shape, backend) = canvas(path, panels.len())?;
    let root = backend.into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root.titled(title, (FONT, 22)).map_err(plot_err)?;
    for (area, panel) in root.split_evenly(shape).iter().zip(panels) {
        sweep_panel(area, x_desc, panel)?;
    }
    root.present().map_err(plot_err)
}

fn sweep_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    x_desc: &str,
    panel: &SweepPanel,
) -> Result<()> {
    let pts = || panel.lines.iter().flat_map(|(_, p)| p.iter().copied());
    let xs: Vec<f64> = pts().map(|p| p.0).filter(|x| *x > 0.0).collect();
    let ys: Vec<f64> = pts().map(|p| p.1).collect();
    if xs.is_empty() {
        return Ok(());
    }
    let (x_lo, x_hi) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(0.0, f64::max),
    );
    // Log axis: sweeps go 1, 2, 4, ...; pad by a factor so end points are not on the frame.
    let (x_lo, x_hi) = if x_hi > x_lo {
        (x_lo / 1.25, x_hi * 1.25)
    } else {
        (x_lo / 2.0, x_hi * 2.0)
    };
    let y_hi = ys.iter().copied().fold(0.0, f64::max);
    let y_hi = if y_hi > 0.0 { y_hi * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title.as_str(), (FONT, 15))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d((x_lo..x_hi).log_scale().base(2.0), 0f64..y_hi)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .light_line_style(LIGHT_GRID)
        .x_desc(x_desc)
        .y_desc(panel.y_desc.as_str())
        .x_label_formatter(&integer_label)
        .draw()
        .map_err(plot_err)?;
    for (i, (name, points)) in panel.lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(plot_err)
}
