//! Latency histograms and the publisher's final report.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram tracks; anything slower is clamped to it.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 1 µs to 1 hour, 3 significant
/// digits (every value within 0.1% of its true value).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static bounds are valid")
}

/// Records `latency` into `histogram` (microseconds, at least 1).
pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
    histogram.saturating_record(micros);
}

/// The percentiles every report quotes, in milliseconds. An average is
/// included only beside them, never alone.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    /// Reads the percentiles of a histogram in microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self {
                count: 0,
                min_ms: 0.0,
                p50_ms: 0.0,
                p90_ms: 0.0,
                p99_ms: 0.0,
                p999_ms: 0.0,
                max_ms: 0.0,
                mean_ms: 0.0,
            };
        }
        Self {
            count: h.len(),
            min_ms: ms(h.min()),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// A latency in milliseconds, printed with sensible precision.
pub fn fmt_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// What a publisher run did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Topic written to.
    pub topic: String,
    /// Messages handed to the producer.
    pub sent: u64,
    /// Messages the broker acknowledged.
    pub acked: u64,
    /// Messages that failed (refused at enqueue or not delivered).
    pub failed: u64,
    /// The first distinct errors, with how often each occurred.
    pub errors: Vec<ErrorCount>,
    /// Payload bytes acknowledged (headers and keys not counted).
    pub bytes: u64,
    /// From the first send to the last acknowledgement, in seconds.
    pub elapsed_secs: f64,
    /// Acknowledged messages per second over `elapsed_secs`.
    pub msgs_per_sec: f64,
    /// Acknowledged payload megabytes (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// The requested rate, if any.
    pub target_rate: Option<f64>,
    /// Time from when each message was due (or, without a rate, handed to
    /// the producer) to its acknowledgement.
    pub ack_latency: Percentiles,
    /// The run was stopped by a signal before sending everything.
    pub interrupted: bool,
}

/// One kind of error and how many messages it hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorCount {
    pub error: String,
    pub count: u64,
}

/// How many distinct errors a report keeps.
pub const MAX_ERRORS: usize = 5;

/// Adds one occurrence of `error`, keeping at most [`MAX_ERRORS`] kinds.
pub fn count_error(errors: &mut Vec<ErrorCount>, error: String) {
    if let Some(e) = errors.iter_mut().find(|e| e.error == error) {
        e.count += 1;
    } else if errors.len() < MAX_ERRORS {
        errors.push(ErrorCount { error, count: 1 });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.interrupted { " (interrupted)" } else { "" };
        let nothing = if self.acked == 0 && self.failed > 0 { "nothing " } else { "" };
        writeln!(f, "{nothing}published to {}{state}", self.topic)?;
        writeln!(f, "  sent      {}", self.sent)?;
        writeln!(f, "  acked     {}", self.acked)?;
        writeln!(f, "  failed    {}", self.failed)?;
        for e in &self.errors {
            writeln!(f, "    {} x {}", e.count, e.error)?;
        }
        writeln!(f, "  elapsed   {:.3} s", self.elapsed_secs)?;
        let target = self.target_rate.map(|r| format!(" (target {r:.0} msg/s)")).unwrap_or_default();
        writeln!(f, "  rate      {:.0} msg/s{target}, {:.2} MB/s of payload", self.msgs_per_sec, self.mb_per_sec)?;
        let l = &self.ack_latency;
        if l.count == 0 {
            return write!(f, "  ack latency  none: no message was acknowledged");
        }
        write!(
            f,
            "  ack latency  p50 {}  p90 {}  p99 {}  max {}",
            fmt_ms(l.p50_ms),
            fmt_ms(l.p90_ms),
            fmt_ms(l.p99_ms),
            fmt_ms(l.max_ms)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = latency_histogram();
        for ms in 1..=100 {
            record(&mut h, Duration::from_millis(ms));
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 100);
        assert!((p.p50_ms - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p99_ms - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.max_ms - 100.0).abs() < 0.1, "{p:?}");
        assert_eq!(Percentiles::of(&latency_histogram()).count, 0);
    }

    #[test]
    fn small_latencies_are_shown_in_microseconds() {
        assert_eq!(fmt_ms(0.004), "4 µs");
        assert_eq!(fmt_ms(2.5), "2.50 ms");
        assert_eq!(fmt_ms(1500.0), "1.50 s");
    }

    #[test]
    fn a_run_with_no_ack_says_so_instead_of_showing_zero_latencies() {
        let report = Report {
            topic: "events".into(),
            sent: 3,
            acked: 0,
            failed: 3,
            errors: vec![ErrorCount { error: "Local: Message timed out".into(), count: 3 }],
            bytes: 0,
            elapsed_secs: 2.0,
            msgs_per_sec: 0.0,
            mb_per_sec: 0.0,
            target_rate: None,
            ack_latency: Percentiles::of(&latency_histogram()),
            interrupted: false,
        };
        let text = report.to_string();
        assert!(text.starts_with("nothing published to events"), "{text}");
        assert!(text.ends_with("ack latency  none: no message was acknowledged"), "{text}");
        assert!(!text.contains("p50"), "{text}");
    }

    #[test]
    fn errors_are_counted_by_kind_and_capped() {
        let mut errors = Vec::new();
        for i in 0..20 {
            count_error(&mut errors, format!("e{}", i % 7));
        }
        assert_eq!(errors.len(), MAX_ERRORS);
        assert_eq!(errors[0], ErrorCount { error: "e0".into(), count: 3 });
    }
}
