//! What every subcommand produces: a table, a JSON report, one `.hgrm` file
//! per histogram and an SVG plot, all in the output directory.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;
use publisher::report::{fmt_ms, Percentiles};
use serde::{Deserialize, Serialize};

use crate::{hgrm, plot};

/// One measured histogram: a line of the table.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub row: Row,
    pub histogram: Histogram<u64>,
}

/// A line of the table, as it appears in the JSON report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// What was measured, e.g. `e2e @ 10000/s` or `request`.
    pub name: String,
    /// Offered rate, for open-loop runs.
    pub target_rate: Option<f64>,
    /// Achieved rate in messages per second.
    pub rate: f64,
    /// Payload megabytes (10^6 bytes) per second, where it applies.
    pub mb_per_sec: Option<f64>,
    /// Messages that failed or never arrived (should be 0).
    pub errors: u64,
    /// `.hgrm` file of this row's histogram.
    pub hgrm: Option<PathBuf>,
    /// Latency percentiles (`latency.count` values were recorded).
    pub latency: Percentiles,
}

/// The JSON report of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// Subcommand: produce, consume, e2e or api.
    pub command: String,
    /// What the latency column measures, clock to clock.
    pub latency: String,
    pub rows: Vec<Row>,
    /// The plots (SVG).
    pub plots: Vec<PathBuf>,
    /// Where this report was written.
    pub json: Option<PathBuf>,
}

impl Measurement {
    /// A row named `name` from `histogram`.
    pub fn new(name: impl Into<String>, rate: f64, histogram: Histogram<u64>) -> Self {
        let row = Row {
            name: name.into(),
            target_rate: None,
            rate,
            mb_per_sec: None,
            errors: 0,
            hgrm: None,
            latency: Percentiles::of(&histogram),
        };
        Self { row, histogram }
    }
}

/// Writes `.hgrm` files, the plot and the JSON report into `dir` and
/// returns the report. `command` names the files (`e2e`, `api` ...);
/// `plots` are (file stem, SVG text), drawn by the caller since each
/// subcommand plots its own way.
pub fn write(
    dir: &Path,
    command: &str,
    latency: &str,
    mut measurements: Vec<Measurement>,
    plots: Vec<(String, String)>,
) -> anyhow::Result<BenchReport> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating output directory {}", dir.display()))?;
    for m in &mut measurements {
        let path = dir.join(format!("{}.hgrm", file_stem(command, &m.row.name)));
        std::fs::write(&path, hgrm::render(&m.histogram)).with_context(|| format!("writing {}", path.display()))?;
        m.row.hgrm = Some(path);
    }
    let mut plot_paths = Vec::new();
    for (stem, svg) in plots {
        let path = dir.join(format!("{stem}.svg"));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        plot_paths.push(path);
    }
    let json_path = dir.join(format!("{command}.json"));
    let report = BenchReport {
        command: command.into(),
        latency: latency.into(),
        rows: measurements.into_iter().map(|m| m.row).collect(),
        plots: plot_paths,
        json: Some(json_path.clone()),
    };
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    Ok(report)
}

/// The percentile curve of every measurement.
pub fn percentile_plot(title: &str, measurements: &[Measurement]) -> String {
    let series: Vec<(String, &Histogram<u64>)> =
        measurements.iter().map(|m| (m.row.name.clone(), &m.histogram)).collect();
    plot::percentile_curve(title, &series)
}

/// `e2e` and `@10000/s` -> `e2e-10000-s`: a file name from a row name.
fn file_stem(command: &str, name: &str) -> String {
    let slug: Vec<&str> = name.split(|c: char| !c.is_ascii_alphanumeric()).filter(|s| !s.is_empty()).collect();
    format!("{command}-{}", slug.join("-"))
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: latency = {}", self.command, self.latency)?;
        writeln!(
            f,
            "{:<22} {:>10} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
            "", "count", "rate/s", "p50", "p90", "p99", "p99.9", "max", "mean", "errors"
        )?;
        for r in &self.rows {
            let l = &r.latency;
            let rate = match r.target_rate {
                Some(t) if (r.rate - t).abs() / t > 0.05 => format!("{:.0}!", r.rate),
                _ => format!("{:.0}", r.rate),
            };
            writeln!(
                f,
                "{:<22} {:>10} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
                r.name,
                l.count,
                rate,
                fmt_ms(l.p50_ms),
                fmt_ms(l.p90_ms),
                fmt_ms(l.p99_ms),
                fmt_ms(l.p999_ms),
                fmt_ms(l.max_ms),
                fmt_ms(l.mean_ms),
                r.errors
            )?;
        }
        if self.rows.iter().any(|r| r.target_rate.is_some_and(|t| (r.rate - t).abs() / t > 0.05)) {
            writeln!(f, "(! = achieved rate more than 5% off the target: the system could not keep up)")?;
        }
        for r in &self.rows {
            if let Some(mb) = r.mb_per_sec {
                writeln!(f, "{}: {:.2} MB/s of payload", r.name, mb)?;
            }
        }
        let files: Vec<String> = self
            .rows
            .iter()
            .filter_map(|r| r.hgrm.as_ref())
            .chain(self.plots.iter())
            .chain(self.json.iter())
            .map(|p| p.display().to_string())
            .collect();
        write!(f, "wrote {}", files.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_are_tidy() {
        assert_eq!(file_stem("e2e", "@10000/s"), "e2e-10000-s");
        assert_eq!(file_stem("api", "request"), "api-request");
    }
}
