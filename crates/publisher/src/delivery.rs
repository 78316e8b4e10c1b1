//! Delivery reports as callbacks into one shared tally.
//!
//! librdkafka calls [`DeliveryContext::delivery`] on the producer's polling
//! thread for every record. The due time of each record travels with it as
//! its opaque (nanoseconds since the tally's epoch, no allocation), so ack
//! latency is measured when the report arrives, not when some task gets
//! round to polling a future.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use stream_core::kafka::{self, ProducerOptions, TracingContext};
use stream_core::KafkaArgs;
use tokio::sync::Notify;

use crate::report::{self, ErrorCount};

/// The producer the publisher and the bench send with.
pub type BulkProducer = ThreadedProducer<DeliveryContext>;

/// A producer with the project's settings whose delivery reports feed a
/// [`Tally`].
pub fn producer(args: &KafkaArgs, options: &ProducerOptions) -> stream_core::Result<BulkProducer> {
    kafka::producer_with_context(args, options, DeliveryContext::default())
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
    /// When the latest report arrived.
    pub last: Option<Instant>,
    /// Opaques count nanoseconds from here.
    epoch: Instant,
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
        }
    }

    /// Reports received, good or bad.
    pub fn settled(&self) -> u64 {
        self.acked + self.failed
    }

    /// The opaque that carries `due` to the delivery report.
    pub fn opaque(&self, due: Instant) -> usize {
        due.saturating_duration_since(self.epoch).as_nanos() as usize
    }
}

/// Producer context: logs go to `tracing`, delivery reports to the tally.
#[derive(Clone)]
pub struct DeliveryContext {
    shared: Arc<Shared>,
}

struct Shared {
    tally: Mutex<Tally>,
    /// Woken after each report, for senders waiting on a full queue or
    /// on the last acknowledgements.
    settled: Notify,
}

impl Default for DeliveryContext {
    fn default() -> Self {
        Self { shared: Arc::new(Shared { tally: Mutex::new(Tally::new(Instant::now())), settled: Notify::new() }) }
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

    /// Waits for the next delivery report, or `at_most`.
    pub async fn settled(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.shared.settled.notified()).await;
    }
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        TracingContext.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        TracingContext.error(error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    /// Nanoseconds from the tally's epoch to the time the record was due.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, due_ns: usize) {
        let now = Instant::now();
        {
            let mut tally = self.tally();
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
        self.shared.settled.notify_one();
    }
}
