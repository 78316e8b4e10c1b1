//! Counters of one run, for the periodic throughput line.
//!
//! Prometheus gets the same numbers through the `metrics` macros; these
//! plain atomics exist because the log line needs rates per run, and several
//! runs may share a process (tests) while the Prometheus recorder is global.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Counters shared by every worker of a run.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events whose result was acknowledged.
    pub processed: AtomicU64,
    /// Events that failed processing.
    pub failed: AtomicU64,
    /// Events whose dead letter was acknowledged.
    pub dead_lettered: AtomicU64,
    /// Produce attempts retried after a transient error.
    pub retries: AtomicU64,
    /// Records processed whose output is not acknowledged yet.
    pub in_flight: AtomicI64,
    /// Consumer lag per (worker, partition), from librdkafka statistics.
    lag: Mutex<HashMap<(u32, i32), i64>>,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub processed: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    pub retries: u64,
    pub in_flight: i64,
    /// Sum of the known partition lags, `None` before the first statistics.
    pub lag: Option<i64>,
}

impl Stats {
    pub(crate) fn set_lag(&self, worker: u32, partition: i32, lag: i64) {
        self.lag.lock().unwrap().insert((worker, partition), lag);
    }

    pub(crate) fn forget_lag(&self, worker: u32, partition: i32) {
        self.lag.lock().unwrap().remove(&(worker, partition));
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let lag = self.lag.lock().unwrap();
        Snapshot {
            processed: self.processed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            lag: (!lag.is_empty()).then(|| lag.values().sum()),
        }
    }
}

/// Logs one line per `interval`: counts, rate and lag while events flow,
/// and a shorter line when idle, so a silent log means a stuck process.
pub(crate) async fn log_throughput(stats: Arc<Stats>, interval: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut last = stats.snapshot();
    let mut last_at = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let now = stats.snapshot();
        tracing::info!("{}", line(&now, &last, last_at.elapsed()));
        last = now;
        last_at = Instant::now();
    }
}

/// The throughput line for `now`, `elapsed` after `last`.
fn line(now: &Snapshot, last: &Snapshot, elapsed: Duration) -> String {
    let lag = now.lag.map_or_else(|| "?".to_string(), |l| l.to_string());
    let done = (now.processed + now.dead_lettered).saturating_sub(last.processed + last.dead_lettered);
    if done == 0 && now.in_flight == 0 && now == last {
        return format!("idle: processed {}, lag {lag}", now.processed);
    }
    // Each count with its own change: the rate is of results, as the
    // change before it; dead letters have theirs.
    let processed = now.processed.saturating_sub(last.processed);
    format!(
        "processed {} (+{processed}, {:.0}/s), dead-lettered {} (+{}), failed {}, retries {}, in flight {}, lag {lag}",
        now.processed,
        processed as f64 / elapsed.as_secs_f64().max(1e-3),
        now.dead_lettered,
        now.dead_lettered.saturating_sub(last.dead_lettered),
        now.failed,
        now.retries,
        now.in_flight,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_gives_each_count_its_own_change_and_rate() {
        let last = Snapshot { processed: 100, dead_lettered: 0, lag: Some(10), ..Snapshot::default() };
        let poison = Snapshot { processed: 100, dead_lettered: 5000, lag: Some(0), ..Snapshot::default() };
        assert_eq!(
            line(&poison, &last, Duration::from_secs(1)),
            "processed 100 (+0, 0/s), dead-lettered 5000 (+5000), failed 0, retries 0, in flight 0, lag 0"
        );
        let flowing = Snapshot { processed: 2100, in_flight: 7, ..last };
        assert_eq!(
            line(&flowing, &last, Duration::from_secs(2)),
            "processed 2100 (+2000, 1000/s), dead-lettered 0 (+0), failed 0, retries 0, in flight 7, lag 10"
        );
        assert_eq!(line(&last, &last, Duration::from_secs(1)), "idle: processed 100, lag 10");
        let unknown = Snapshot { lag: None, ..last };
        assert_eq!(line(&unknown, &unknown, Duration::from_secs(1)), "idle: processed 100, lag ?");
    }
}
