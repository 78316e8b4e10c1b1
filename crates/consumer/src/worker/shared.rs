//! State every partition task of a run shares: settings, handles, the
//! first failure, and the metric handles.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stream_core::kafka::Producer;
use tokio_util::sync::CancellationToken;

use crate::stats::Stats;

/// `ce_source` of the results this consumer writes.
pub const RESULT_SOURCE: &str = "/consumer";

/// Settings and handles every partition task of a run shares.
pub(crate) struct Shared<P> {
    pub processor: P,
    pub producer: Producer,
    pub group: String,
    pub results_topic: String,
    /// Results as CloudEvents (`true`) or as bare JSON records.
    pub result_headers: bool,
    pub dlq_topic: String,
    /// Records per partition whose result may be awaiting its ack at once.
    pub max_in_flight: usize,
    /// How long a revoke or shutdown waits for in-flight results.
    pub drain_timeout: Duration,
    pub stats: Arc<Stats>,
    pub runtime: tokio::runtime::Handle,
    /// Cancelled on shutdown or when the run fails.
    pub stop: CancellationToken,
    /// The first error that ended the run.
    pub failure: Mutex<Option<anyhow::Error>>,
    pub meters: Meters,
}

/// Metric handles resolved once: the macros look the name up on every call,
/// which shows at hundreds of thousands of events per second.
pub(crate) struct Meters {
    pub(super) processed: metrics::Counter,
    pub(super) dead_lettered: metrics::Counter,
    pub(super) retries: metrics::Counter,
    pub(super) processing: metrics::Histogram,
    pub(super) end_to_end: metrics::Histogram,
}

impl Meters {
    /// Handles on the installed recorder; call after installing it.
    pub fn new() -> Self {
        // Counters that only move on rare events are registered up front, so
        // they are exported as 0 from the start and `rate()` over them works
        // before the first failure.
        metrics::counter!("consumer_poll_errors_total").absolute(0);
        metrics::counter!("consumer_rebalances_total").absolute(0);
        for kind in FAILURE_KINDS {
            metrics::counter!("consumer_events_failed_total", "kind" => kind).absolute(0);
        }
        describe();
        Self {
            processed: metrics::counter!("consumer_events_processed_total"),
            dead_lettered: metrics::counter!("consumer_events_dead_lettered_total"),
            retries: metrics::counter!("consumer_produce_retries_total"),
            processing: metrics::histogram!("consumer_processing_seconds"),
            end_to_end: metrics::histogram!("consumer_end_to_end_latency_seconds"),
        }
    }
}

/// Every `kind` of `consumer_events_failed_total`: why an event was
/// dead-lettered.
const FAILURE_KINDS: [&str; 7] =
    ["empty_payload", "invalid_json", "bad_header", "bad_key", "rejected", "panic", "result_undeliverable"];

/// The `# HELP` text of every metric the consumer exports.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("consumer_events_processed_total", "Events whose result the broker acknowledged.");
    describe_counter!("consumer_events_dead_lettered_total", "Events whose dead letter the broker acknowledged.");
    describe_counter!("consumer_events_failed_total", "Events refused by processing, by kind (each is dead-lettered).");
    describe_counter!(
        "consumer_produce_retries_total",
        "Result or dead-letter writes retried after a transient error."
    );
    describe_counter!("consumer_poll_errors_total", "Errors reported by polling the group (librdkafka retries them).");
    describe_counter!(
        "consumer_rebalances_total",
        "Partition revocations this process went through (offsets are committed at each)."
    );
    describe_histogram!(
        "consumer_processing_seconds",
        Unit::Seconds,
        "Time to process one event, before its result is written."
    );
    describe_histogram!(
        "consumer_end_to_end_latency_seconds",
        Unit::Seconds,
        "From the event's ce_time to its result's acknowledgement."
    );
    describe_gauge!("consumer_lag", "Records behind the partition's end, per topic and partition.");
}

impl<P> Shared<P> {
    /// Records why the run must end, and ends it. The first reason wins.
    pub fn fail(&self, error: anyhow::Error) {
        let mut slot = self.failure.lock().unwrap();
        if slot.is_none() {
            tracing::error!("{error:#}");
            *slot = Some(error);
        }
        self.stop.cancel();
    }
}
