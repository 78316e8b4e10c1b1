//! HdrHistogram's classic percentile-distribution text (`.hgrm`), the format
//! of Java's `outputPercentileDistribution`, readable by HdrHistogram's
//! online plotter and `HistogramLogAnalyzer`. Values are in milliseconds.

use std::fmt::Write;

use hdrhistogram::Histogram;

/// Steps per halving of the distance to 100%, as the Java default.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Renders a histogram of microsecond values as `.hgrm` text in milliseconds.
pub fn render(h: &Histogram<u64>) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    let mut out = String::new();
    let _ = writeln!(out, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = ms(h.highest_equivalent(v.value_iterated_to()));
            if q < 1.0 {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10} {:14.2}", 1.0 / (1.0 - q));
            } else {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let _ = writeln!(out, "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]", h.mean() / 1000.0, h.stdev() / 1000.0);
    let _ = writeln!(out, "#[Max     = {:12.3}, Total count    = {:12}]", ms(h.max()), h.len());
    let sub_buckets = (2.0 * 10f64.powi(h.sigfig() as i32)).log2().ceil().exp2() as u64;
    let _ = writeln!(out, "#[Buckets = {:12}, SubBuckets     = {:12}]", h.buckets(), sub_buckets);
    out
}

/// One line of a percentile distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    /// Latency in milliseconds.
    pub value_ms: f64,
    /// Fraction of values at or below `value_ms`, 0 to 1.
    pub percentile: f64,
    /// Values at or below `value_ms`.
    pub total_count: u64,
}

/// A parsed `.hgrm` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    pub lines: Vec<Line>,
    pub mean_ms: f64,
    pub max_ms: f64,
    pub total_count: u64,
}

/// Parses `.hgrm` text as [`render`] (or Java's HdrHistogram) writes it.
pub fn parse(text: &str) -> Result<Distribution, String> {
    let mut lines = Vec::new();
    let (mut mean_ms, mut max_ms, mut total_count) = (None, None, None);
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with("Value") {
            continue;
        }
        if let Some(footer) = line.strip_prefix("#[").and_then(|l| l.strip_suffix(']')) {
            for field in footer.split(',') {
                let (key, value) = field.split_once('=').ok_or_else(|| format!("line {}: {raw:?}", n + 1))?;
                let value = value.trim();
                match key.trim() {
                    "Mean" => mean_ms = value.parse().ok(),
                    "Max" => max_ms = value.parse().ok(),
                    "Total count" => total_count = value.parse().ok(),
                    _ => {}
                }
            }
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bad = || format!("line {}: not a percentile line: {raw:?}", n + 1);
        if fields.len() < 3 {
            return Err(bad());
        }
        lines.push(Line {
            value_ms: fields[0].parse().map_err(|_| bad())?,
            percentile: fields[1].parse().map_err(|_| bad())?,
            total_count: fields[2].parse().map_err(|_| bad())?,
        });
    }
    Ok(Distribution {
        lines,
        mean_ms: mean_ms.ok_or("missing #[Mean = ...] footer")?,
        max_ms: max_ms.ok_or("missing #[Max = ...] footer")?,
        total_count: total_count.ok_or("missing Total count in the footer")?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use publisher::report::{latency_histogram, record};

    use super::*;

    #[test]
    fn renders_and_parses_back() {
        let mut h = latency_histogram();
        for ms in 1..=1000 {
            record(&mut h, Duration::from_micros(ms * 100));
        }
        let text = render(&h);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"), "{text}");
        let d = parse(&text).unwrap();
        assert_eq!(d.total_count, 1000);
        assert!((d.max_ms - 100.0).abs() < 0.1, "{}", d.max_ms);
        let last = d.lines.last().unwrap();
        assert_eq!((last.percentile, last.total_count), (1.0, 1000));
        assert!(d.lines.windows(2).all(|w| w[0].value_ms <= w[1].value_ms && w[0].percentile <= w[1].percentile));
        let median = d.lines.iter().find(|l| l.percentile >= 0.5).unwrap();
        assert!((median.value_ms - 50.0).abs() < 0.5, "{median:?}");
    }

    #[test]
    fn an_empty_histogram_still_has_a_footer() {
        let d = parse(&render(&latency_histogram())).unwrap();
        assert_eq!((d.total_count, d.lines.len()), (0, 0));
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(parse("hello world\n").is_err());
        assert!(parse("1.0 0.5 10\n").unwrap_err().contains("footer"));
    }
}
