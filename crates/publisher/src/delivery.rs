//! Delivery reports as callbacks into one shared tally.
//!
//! The sender serves the reports itself ([`serve_reports`]), on its own
//! thread, between sends and while it waits, rather than leaving them to a
//! polling thread (rdkafka's `ThreadedProducer`): a report then wakes no
//! other thread, and librdkafka frees each record and its headers where the
//! sender runs, mostly the thread that allocated them. 1,000,000 records
//! with CloudEvents headers, three alternating runs on a fresh broker:
//! 4.16, 3.92 and 3.75 µs of CPU per record with a polling thread
//! (11,000-76,000 voluntary context switches), 3.07, 3.00 and 2.88 µs
//! served by the sender (570-740).
//!
//! The due time of each record travels with it as its opaque (nanoseconds
//! since the tally's epoch, no allocation), so ack latency is measured when
//! the report is served: within [`REPORT_SLICE`] of its arrival while the
//! sender waits, within 64 sends while it sends flat out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::ClientContext;
use stream_core::kafka::{self, ProducerOptions, TracingContext};
use stream_core::KafkaArgs;

use crate::report::{self, ErrorCount};

/// The producer the publisher and the bench send with. Nothing polls it in
/// the background: its sender calls [`serve_reports`].
pub type BulkProducer = BaseProducer<DeliveryContext>;

/// The longest a waiting sender goes without serving delivery reports.
pub const REPORT_SLICE: Duration = Duration::from_millis(1);

/// Serves every delivery report librdkafka holds for `producer`, on the
/// calling thread, without waiting for more; returns how many records they
/// settled.
///
/// The same queue carries librdkafka's log lines (and statistics), so a
/// poll that settles nothing may still have taken an event off it: serving
/// goes on while the producer's out-queue (records in flight plus events
/// waiting) shrinks, and stops at the first poll that took nothing.
pub fn serve_reports(producer: &BulkProducer) -> u64 {
    let deliveries = producer.context();
    let before = deliveries.tally().settled();
    loop {
        let queued = producer.in_flight_count();
        // One event per call: a report covers one produce response's
        // records, all timed by this one clock read.
        deliveries.tally().serving_since = Some(Instant::now());
        producer.poll(Duration::ZERO);
        deliveries.tally().serving_since = None;
        if producer.in_flight_count() >= queued {
            return deliveries.tally().settled() - before;
        }
    }
}

/// How often the producer's statistics say whether it can send yet
/// ([`until_ready`]). Once it can, each is dropped unread, but librdkafka
/// still builds them (percentiles of six latency histograms per broker):
/// every 20 ms that cost an idle publisher 0.6 % of a core; every 100 ms
/// a fifth of it, for a start at most 100 ms later.
const READY_LOOK: Duration = Duration::from_millis(100);

/// A producer with the project's settings whose delivery reports feed a
/// [`Tally`].
pub fn producer(args: &KafkaArgs, options: &ProducerOptions) -> stream_core::Result<BulkProducer> {
    let options = ProducerOptions { statistics_interval: Some(READY_LOOK), ..options.clone() };
    kafka::producer_with_context(args, &options, DeliveryContext::default())
}

/// Waits, serving the producer's events, until it can send at once or
/// `timeout` has passed (then `false`: records sent now wait in its queue).
///
/// An idempotent producer sends nothing before it holds a producer id, and
/// librdkafka asks for one only once a broker connection is up, retrying
/// every 500 ms until then: about half a second after it is created. A run
/// that started its clock earlier would count that start-up in every
/// latency of its first half second, and in its rate.
pub async fn until_ready(
    producer: &BulkProducer,
    timeout: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        serve_reports(producer);
        if producer.context().shared.ready.load(Ordering::Relaxed) {
            return true;
        }
        if Instant::now() >= deadline || shutdown.is_cancelled() {
            return false;
        }
        tokio::time::sleep(REPORT_SLICE).await;
    }
}

/// [`producer`], once [`until_ready`] (a warning if it is not within the
/// connection timeout: the run then goes on, its first records waiting).
pub async fn ready_producer(
    args: &KafkaArgs,
    options: &ProducerOptions,
    shutdown: &tokio_util::sync::CancellationToken,
) -> stream_core::Result<BulkProducer> {
    let producer = producer(args, options)?;
    // `-X statistics.interval.ms=0` turns off what would say it is ready.
    let statistics_off = args
        .properties
        .iter()
        .rev()
        .find(|(key, _)| key == "statistics.interval.ms")
        .is_some_and(|(_, value)| value.trim() == "0");
    if statistics_off {
        return Ok(producer);
    }
    if !until_ready(&producer, args.connect_timeout, shutdown).await && !shutdown.is_cancelled() {
        tracing::warn!(
            "the producer has no producer id after {:?}: sending anyway, the first records wait for it",
            args.connect_timeout
        );
    }
    Ok(producer)
}

/// Whether librdkafka's statistics say the producer can send at once: it is
/// not idempotent (no `eos` section), or its producer id is assigned.
fn can_send(statistics: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Statistics {
        eos: Option<Eos>,
    }
    #[derive(serde::Deserialize)]
    struct Eos {
        idemp_state: String,
    }
    match serde_json::from_slice::<Statistics>(statistics) {
        Ok(Statistics { eos: None }) => true,
        Ok(Statistics { eos: Some(eos) }) => eos.idemp_state == "Assigned",
        Err(_) => false,
    }
}

/// What the delivery reports said since the last reset.
#[derive(Debug, Clone)]
pub struct Tally {
    pub acked: u64,
    pub failed: u64,
    /// Payload bytes acknowledged.
    pub bytes: u64,
    pub errors: Vec<ErrorCount>,
    /// Due time -> delivery report, microseconds.
    pub ack_latency: Histogram<u64>,
    /// When the latest report was served.
    pub last: Option<Instant>,
    /// Opaques count nanoseconds from here ([`opaque`]).
    epoch: Instant,
    /// While [`serve_reports`] polls: when it asked librdkafka for the
    /// reports it is serving, the time they are timed at (reports wait
    /// for it up to [`REPORT_SLICE`] or 64 sends, as the module says).
    serving_since: Option<Instant>,
}

impl Tally {
    fn new(epoch: Instant) -> Self {
        Self {
            acked: 0,
            failed: 0,
            bytes: 0,
            errors: Vec::new(),
            ack_latency: report::latency_histogram(),
            last: None,
            epoch,
            serving_since: None,
        }
    }

    /// Reports received, good or bad.
    pub fn settled(&self) -> u64 {
        self.acked + self.failed
    }
}

/// The opaque that carries `due` to the delivery report of a tally reset
/// at `epoch`.
pub fn opaque(epoch: Instant, due: Instant) -> usize {
    due.saturating_duration_since(epoch).as_nanos() as usize
}

/// Producer context: logs go to `tracing`, delivery reports to the tally.
#[derive(Clone)]
pub struct DeliveryContext {
    shared: Arc<Shared>,
}

struct Shared {
    tally: Mutex<Tally>,
    /// Set by the first statistics that say the producer can send at once.
    ready: AtomicBool,
}

impl Default for DeliveryContext {
    fn default() -> Self {
        Self {
            shared: Arc::new(Shared { tally: Mutex::new(Tally::new(Instant::now())), ready: AtomicBool::new(false) }),
        }
    }
}

impl DeliveryContext {
    /// Starts a fresh tally whose opaques count from `epoch`. Call only
    /// with nothing in flight.
    pub fn reset(&self, epoch: Instant) {
        *self.tally() = Tally::new(epoch);
    }

    /// The tally, locked.
    pub fn tally(&self) -> MutexGuard<'_, Tally> {
        self.shared.tally.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        TracingContext.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kafka::log_producer_error(error, reason);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        if !self.shared.ready.load(Ordering::Relaxed) && can_send(statistics) {
            self.shared.ready.store(true, Ordering::Relaxed);
        }
    }
}

impl ProducerContext for DeliveryContext {
    /// Nanoseconds from the tally's epoch to the time the record was due.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, due_ns: usize) {
        {
            let mut tally = self.tally();
            // Served outside `serve_reports` (the producer's drop flushes
            // and polls): timed now.
            let now = tally.serving_since.unwrap_or_else(Instant::now);
            tally.last = Some(now);
            match result {
                Ok(message) => {
                    tally.acked += 1;
                    tally.bytes += message.payload_len() as u64;
                    let due = tally.epoch + Duration::from_nanos(due_ns as u64);
                    report::record(&mut tally.ack_latency, now.saturating_duration_since(due));
                }
                Err((error, _)) => {
                    tally.failed += 1;
                    report::count_error(&mut tally.errors, error.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idempotent_producer_can_send_once_its_id_is_assigned() {
        let stats = |state: &str| {
            format!(
                r#"{{"name": "p#producer-1", "type": "producer", "brokers": {{}}, "eos": {{ "idemp_state": "{state}", "idemp_stateage": 3, "txn_state": "Init", "producer_id": -1 }} }}"#
            )
        };
        assert!(!can_send(stats("Init").as_bytes()));
        assert!(!can_send(stats("WaitPID").as_bytes()));
        assert!(can_send(stats("Assigned").as_bytes()));
        assert!(can_send(br#"{"name": "p#producer-1", "type": "producer", "brokers": {}}"#), "not idempotent");
        assert!(!can_send(b"{\"eos\": "), "unreadable statistics say nothing");
    }
}
