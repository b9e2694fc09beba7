//! `loadtest plot`: latency percentiles against offered load, one line per
//! series (e.g. Hearth, bare, Socket.IO), drawn from the JSON files that
//! `loadtest sweep --out` writes. PNG, with plotters.

use std::path::Path;

use anyhow::{bail, Context};
use plotters::prelude::*;
use serde_json::Value;

/// Fonts tried in order (plotters' `ab_glyph` backend needs one
/// registered; none is bundled).
const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// One point of a series: offered deliveries/s and latency percentiles (ms).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Point {
    pub(crate) offered: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
}

/// The points of a sweep file (a JSON array of run reports).
pub(crate) fn points(path: &Path) -> anyhow::Result<Vec<Point>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let Some(runs) = v.as_array() else {
        bail!("{} is not a JSON array of reports", path.display());
    };
    let mut pts: Vec<Point> = runs
        .iter()
        .filter_map(|r| {
            let m = &r["messages"];
            Some(Point {
                offered: m["offered_deliveries_per_s"].as_f64()?,
                p50: m["latency_ms"]["p50"].as_f64()?,
                p99: m["latency_ms"]["p99"].as_f64()?,
                p999: m["latency_ms"]["p999"].as_f64()?,
            })
        })
        .collect();
    pts.sort_by(|a, b| a.offered.total_cmp(&b.offered));
    Ok(pts)
}

fn register_font() -> anyhow::Result<()> {
    for f in FONTS {
        if let Ok(bytes) = std::fs::read(f) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    bail!("no TrueType font found (tried {})", FONTS.join(", "))
}

/// Draws `series` (label, points) into a PNG at `out`.
pub(crate) fn draw(out: &Path, title: &str, series: &[(String, Vec<Point>)]) -> anyhow::Result<()> {
    register_font()?;
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::MAX, 0.0f64);
    for p in all {
        x_max = x_max.max(p.offered);
        y_min = y_min.min(p.p50.max(0.01));
        y_max = y_max.max(p.p999);
    }
    if y_max <= 0.0 {
        bail!("no latency points to draw");
    }
    let root = BitMapBackend::new(out, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max * 1.05, (y_min * 0.8..y_max * 1.25).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered deliveries per second")
        .y_desc("latency, ms (log)")
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()?;
    let palette = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = palette[i % palette.len()];
        // p50 thin, p99 thick, p99.9 thin and pale.
        for (name, pick, width, alpha) in [
            ("p50", (|p: &Point| p.p50) as fn(&Point) -> f64, 1, 1.0),
            ("p99", |p: &Point| p.p99, 3, 1.0),
            ("p99.9", |p: &Point| p.p999, 1, 0.4),
        ] {
            let color = color.mix(alpha);
            let style = color.stroke_width(width);
            let line: Vec<(f64, f64)> =
                pts.iter().map(|p| (p.offered, pick(p).max(0.01))).collect();
            chart
                .draw_series(LineSeries::new(line.clone(), style))?
                .label(format!("{label} {name}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(
                line.iter()
                    .map(|&(x, y)| Circle::new((x, y), 2 + width, color.filled())),
            )?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
