//! `bench/results.png`: two bar charts side by side, msgs/s and CPU seconds per 10k messages, one
//! group per payload size and one bar per contender, values on the bars.
//!
//! plotters draws on its bitmap backend; text goes through its `ab_glyph` feature with DejaVu Sans
//! read at run time (Debian's `fonts-dejavu-core`, which `scripts/bench.sh` installs), so building
//! needs no fontconfig or freetype. Without the font file the chart is drawn without any text.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::{Report, Row, size_label};

/// Where Debian's fonts-dejavu-core puts DejaVu Sans.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const COLORS: [RGBColor; 6] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0x8c, 0xa6, 0xd9),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x81, 0x72, 0xb3),
];

/// Registers the font once; false if it is not there.
fn font() -> bool {
    static FONT_OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FONT_OK.get_or_init(|| match std::fs::read(FONT) {
        Ok(bytes) => {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        }
        Err(_) => false,
    })
}

/// Draws the chart to `path`.
pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    let text = font();
    let root = BitMapBackend::new(path, (1400, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(700);
    panel(
        &left,
        "msgs/s (higher is better)",
        report,
        Row::msgs_per_s,
        text,
    )?;
    panel(
        &right,
        "CPU seconds per 10k msgs (lower is better)",
        report,
        Row::cpu_per_10k,
        text,
    )?;
    root.present()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot write {path:?}"))?;
    Ok(())
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    report: &Report,
    value: fn(&Row) -> f64,
    text: bool,
) -> anyhow::Result<()> {
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("{e}");
    let sizes = report.sizes();
    let mut labels: Vec<String> = Vec::new();
    for row in report.rows.iter().filter(|r| !r.runs.is_empty()) {
        let label = row.contender.label();
        if !labels.contains(&label) {
            labels.push(label);
        }
    }
    let top = report
        .rows
        .iter()
        .filter(|r| !r.runs.is_empty())
        .map(value)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-9)
        // Headroom for the legend above the bars.
        * 1.7;
    let groups = sizes.len().max(1) as f64;
    let mut builder = ChartBuilder::on(area);
    builder.margin(15);
    if text {
        builder
            .caption(title, ("sans-serif", 22))
            .x_label_area_size(35)
            .y_label_area_size(70);
    }
    let mut chart = builder
        .build_cartesian_2d(-0.5..groups - 0.5, 0.0..top)
        .map_err(err)?;
    if text {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(20)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < sizes.len() {
                    size_label(sizes[i as usize])
                } else {
                    String::new()
                }
            })
            .y_labels(8)
            .y_label_formatter(&|v| format_value(*v))
            .label_style(("sans-serif", 16))
            .draw()
            .map_err(err)?;
    }
    let width = 0.8 / labels.len().max(1) as f64;
    for (k, label) in labels.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let bars: Vec<(f64, f64)> = sizes
            .iter()
            .enumerate()
            .filter_map(|(g, &size)| {
                report
                    .rows
                    .iter()
                    .find(|r| r.size == size && &r.contender.label() == label && !r.runs.is_empty())
                    .map(|r| (g as f64 - 0.4 + k as f64 * width, value(r)))
            })
            .collect();
        let series =
            chart
                .draw_series(bars.iter().map(|&(x, v)| {
                    Rectangle::new([(x, 0.0), (x + width * 0.92, v)], color.filled())
                }))
                .map_err(err)?;
        if text {
            series.label(label.as_str()).legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
            });
            chart
                .draw_series(bars.iter().map(|&(x, v)| {
                    Text::new(
                        format_value(v),
                        (x, v + top * 0.01),
                        ("sans-serif", 13).into_font(),
                    )
                }))
                .map_err(err)?;
        }
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
