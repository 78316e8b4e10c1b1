//! Open-loop pacing: message `i` is due at `start + i / rate`, whatever
//! happened to the messages before it.
//!
//! A limiter that sleeps `1 / rate` after each send drifts (every sleep
//! overshoots a little, and a slow send pushes all later ones back), and it
//! quietly lowers the offered load exactly when the system under test stalls,
//! which hides the stall from the latency numbers (coordinated omission).
//! Here the schedule is fixed up front: after a stall the sender catches up
//! at full speed, and each message's latency is measured from the time it was
//! *due*, not from the time it finally went out.

use std::time::{Duration, Instant};

/// A fixed send schedule, or none (as fast as possible).
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    start: Instant,
    /// Seconds between two messages; `None` means unlimited.
    interval: Option<f64>,
}

impl Pacer {
    /// A schedule of `rate` messages per second from now; `None` (or a
    /// non-positive rate) means unlimited.
    pub fn new(rate: Option<f64>) -> Self {
        Self::starting_at(rate, Instant::now())
    }

    /// A schedule of `rate` messages per second from `start`.
    pub fn starting_at(rate: Option<f64>, start: Instant) -> Self {
        Self { start, interval: rate.filter(|r| *r > 0.0 && r.is_finite()).map(|r| 1.0 / r) }
    }

    /// When the schedule began.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The target rate, if any.
    pub fn rate(&self) -> Option<f64> {
        self.interval.map(|i| 1.0 / i)
    }

    /// When message `i` (counting from 0) is due; `None` when unlimited.
    pub fn due(&self, i: u64) -> Option<Instant> {
        // Multiplying from the start, never adding intervals up, so rounding
        // errors cannot accumulate over millions of messages.
        self.interval.map(|interval| self.start + Duration::from_secs_f64(i as f64 * interval))
    }

    /// Waits until message `i` is due (at once if it is late or unlimited)
    /// and returns the time it was due, from which its latency counts.
    pub async fn wait(&self, i: u64) -> Instant {
        match self.due(i) {
            Some(due) => {
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                due
            }
            None => Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_computed_from_the_start_not_accumulated() {
        let start = Instant::now();
        let pacer = Pacer::starting_at(Some(1000.0), start);
        assert_eq!(pacer.due(0), Some(start));
        assert_eq!(pacer.due(1000), Some(start + Duration::from_secs(1)));
        assert_eq!(pacer.due(3_000_000), Some(start + Duration::from_secs(3000)));
        assert_eq!(pacer.rate(), Some(1000.0));
    }

    #[test]
    fn no_rate_means_unlimited() {
        assert!(Pacer::new(None).due(5).is_none());
        assert!(Pacer::new(Some(0.0)).due(5).is_none());
        assert!(Pacer::new(Some(f64::INFINITY)).rate().is_none());
    }

    /// `wait` returns each message's due time from the schedule, never
    /// before it, and a late message's due time at once (checked against
    /// the schedule, not against how fast this machine is).
    #[tokio::test]
    async fn waiting_never_returns_before_the_due_time() {
        let pacer = Pacer::new(Some(2000.0));
        for i in 0..40 {
            let due = pacer.wait(i).await;
            assert_eq!(Some(due), pacer.due(i));
            assert!(Instant::now() >= due, "message {i} released before it was due");
        }
        // A schedule that began a second ago: message 10 was due long ago,
        // and its due time (not now) is what latency counts from.
        let started = Instant::now() - Duration::from_secs(1);
        let late = Pacer::starting_at(Some(100.0), started);
        assert_eq!(late.wait(10).await, started + Duration::from_millis(100));
        // Unlimited: no schedule, the time of release.
        let before = Instant::now();
        assert!(Pacer::new(None).wait(7).await >= before);
    }
}
