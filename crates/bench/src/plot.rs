//! Latency plots as hand-written SVG: the percentile curve of one or more
//! histograms, and latency against offered rate for `bench e2e`.
//!
//! Written here rather than with a plotting crate (`plotters` and its
//! font and image dependencies) because two line charts need only a few
//! SVG elements, and `bench` stays quick to build.

use std::fmt::Write;

use hdrhistogram::Histogram;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// One line on a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart axis: range, scale and labelled ticks.
#[derive(Debug, Clone)]
pub struct Axis {
    pub label: String,
    pub min: f64,
    pub max: f64,
    pub log: bool,
    pub ticks: Vec<(f64, String)>,
}

impl Axis {
    /// A linear axis from 0 to a round number above `max`.
    pub fn linear(label: &str, max: f64, unit: &str) -> Self {
        let max = if max > 0.0 { max } else { 1.0 };
        let step = nice_step(max / 5.0);
        let top = (max / step).ceil() * step;
        let ticks =
            (0..=((top / step).round() as usize)).map(|i| i as f64 * step).map(|v| (v, fmt_num(v, unit))).collect();
        Self { label: label.into(), min: 0.0, max: top, log: false, ticks }
    }

    /// A logarithmic axis over whole decades around `min..max`.
    pub fn log(label: &str, min: f64, max: f64, unit: &str) -> Self {
        let lo = min.max(1e-3).log10().floor() as i32;
        let hi = (max.max(min.max(1e-3) * 10.0)).log10().ceil() as i32;
        let ticks = (lo..=hi).map(|e| 10f64.powi(e)).map(|v| (v, fmt_num(v, unit))).collect();
        Self { label: label.into(), min: 10f64.powi(lo), max: 10f64.powi(hi), log: true, ticks }
    }

    fn fraction(&self, v: f64) -> f64 {
        let f = if self.log {
            (v.max(self.min).log10() - self.min.log10()) / (self.max.log10() - self.min.log10())
        } else {
            (v - self.min) / (self.max - self.min)
        };
        f.clamp(0.0, 1.0)
    }
}

fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    let f = raw / magnitude;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn fmt_num(v: f64, unit: &str) -> String {
    let text = if v == 0.0 {
        "0".to_string()
    } else if v.abs() >= 1_000_000.0 && v % 1_000_000.0 == 0.0 {
        format!("{}M", v / 1_000_000.0)
    } else if v.abs() >= 1000.0 && v % 1000.0 == 0.0 {
        format!("{}k", v / 1000.0)
    } else if v.abs() >= 1.0 {
        format!("{}", (v * 100.0).round() / 100.0)
    } else {
        format!("{v}")
    };
    format!("{text}{unit}")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Draws a line chart with markers and a legend.
pub fn chart(title: &str, x: &Axis, y: &Axis, series: &[Series]) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |v: f64| LEFT + x.fraction(v) * plot_w;
    let py = |v: f64| TOP + (1.0 - y.fraction(v)) * plot_h;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="28" font-size="16" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    for (v, label) in &x.ticks {
        let p = px(*v);
        let _ = writeln!(svg, r##"<line x1="{p:.1}" y1="{TOP}" x2="{p:.1}" y2="{:.1}" stroke="#ddd"/>"##, TOP + plot_h);
        let _ = writeln!(
            svg,
            r#"<text x="{p:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + plot_h + 18.0,
            escape(label)
        );
    }
    for (v, label) in &y.ticks {
        let p = py(*v);
        let _ =
            writeln!(svg, r##"<line x1="{LEFT}" y1="{p:.1}" x2="{:.1}" y2="{p:.1}" stroke="#ddd"/>"##, LEFT + plot_w);
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            p + 4.0,
            escape(label)
        );
    }
    let _ =
        writeln!(svg, r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##);
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 15.0,
        escape(&x.label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">{}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(&y.label)
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = s.points.iter().map(|(a, b)| format!("{:.1},{:.1}", px(*a), py(*b))).collect();
        let _ =
            writeln!(svg, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, path.join(" "));
        if s.points.len() <= 20 {
            for (a, b) in &s.points {
                let _ = writeln!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#, px(*a), py(*b));
            }
        }
        let ly = TOP + 10.0 + i as f64 * 20.0;
        let lx = LEFT + plot_w + 15.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/>"#,
            lx + 20.0
        );
        let _ = writeln!(svg, r#"<text x="{}" y="{}">{}</text>"#, lx + 26.0, ly + 4.0, escape(&s.name));
    }
    svg.push_str("</svg>\n");
    svg
}

/// The percentile curve: latency against percentile on HdrHistogram's
/// usual axis, 1/(1-p), so the tail gets as much room as the median.
pub fn percentile_curve(title: &str, histograms: &[(String, &Histogram<u64>)]) -> String {
    let mut series = Vec::new();
    let mut max_ms: f64 = 0.0;
    let mut max_x: f64 = 100.0;
    for (name, h) in histograms {
        if h.is_empty() {
            continue;
        }
        let points: Vec<(f64, f64)> = h
            .iter_quantiles(5)
            .map(|v| {
                let q = v.quantile_iterated_to().min(1.0 - 1.0 / (h.len() as f64 + 1.0));
                (1.0 / (1.0 - q), h.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0)
            })
            .collect();
        max_ms = max_ms.max(h.max() as f64 / 1000.0);
        max_x = max_x.max(h.len() as f64);
        series.push(Series { name: name.clone(), points });
    }
    let decades = max_x.log10().ceil().clamp(2.0, 6.0) as i32;
    let ticks = (0..=decades)
        .map(|e| {
            let x = 10f64.powi(e);
            let label = match e {
                0 => "0%".to_string(),
                e => format!("{}%", 100.0 - 100.0 / 10f64.powi(e)),
            };
            (x, label)
        })
        .collect();
    let x = Axis { label: "percentile".into(), min: 1.0, max: 10f64.powi(decades), log: true, ticks };
    let y = Axis::linear("latency (ms)", max_ms * 1.05, "");
    chart(title, &x, &y, &series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_svg() {
        let mut h = publisher::report::latency_histogram();
        for us in 1..10_000 {
            h.record(us).unwrap();
        }
        let svg = percentile_curve("a <test>", &[("run".into(), &h)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;test&gt;") && svg.contains("99.9%") && svg.contains("<polyline"));
        let x = Axis::log("rate", 1000.0, 50_000.0, "/s");
        assert_eq!(x.ticks.first().unwrap().1, "1k/s");
        assert_eq!(x.ticks.last().unwrap().1, "100k/s");
        assert_eq!(Axis::linear("ms", 37.0, "").max, 40.0);
    }
}
