//! Client contexts: librdkafka's log lines, errors, rebalances and commits
//! go to `tracing`.

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{ClientContext, TopicPartitionList};

/// Routes librdkafka's own log lines and error callbacks into `tracing`
/// (target `librdkafka`), so they obey `RUST_LOG` and `--log-format`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingContext;

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_to_tracing(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason);
    }
}

/// Plain consumers (readers, probes) need no rebalance hooks.
impl ConsumerContext for TracingContext {}

pub(crate) fn log_to_tracing(level: RDKafkaLogLevel, facility: &str, message: &str) {
    use RDKafkaLogLevel::*;
    if also_an_error_event(level, facility) {
        return;
    }
    match level {
        Emerg | Alert | Critical | Error => tracing::error!(target: "librdkafka", facility, "{message}"),
        Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        Notice | Info => tracing::info!(target: "librdkafka", facility, "{message}"),
        Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// A broker connection failure (facility `FAIL`) at error level or worse
/// reaches the error callback too, with the same text (librdkafka's
/// `rd_kafka_broker_set_error`); logging both would print every failure twice.
fn also_an_error_event(level: RDKafkaLogLevel, facility: &str) -> bool {
    facility == "FAIL" && (level as i32) <= RDKafkaLogLevel::Error as i32
}

pub(crate) fn log_client_error(error: KafkaError, reason: &str) {
    // librdkafka reports transient conditions (a broker restarting, all
    // brokers down) here and keeps retrying by itself: they are warnings, the
    // caller sees a real failure through its own request.
    tracing::warn!(target: "librdkafka", %error, "{reason}");
}

/// The error callback of a `BaseProducer` context: logs like the others,
/// once per error event.
///
/// rdkafka's `BaseProducer::poll` hands each error event to the context
/// twice in a row (once in the client's event loop, once in the producer's;
/// `rust_rdkafka_calls_a_producer_error_callback_twice` pins it), so a
/// call identical to the one just before it on the same thread is the
/// same event and is dropped.
pub fn log_producer_error(error: KafkaError, reason: &str) {
    if first_call(&error, reason) {
        log_client_error(error, reason);
    }
}

/// Whether this call is not the repeat of the one just before it on this
/// thread (which it then forgets, so a third identical call, a new event,
/// is logged again).
fn first_call(error: &KafkaError, reason: &str) -> bool {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(KafkaError, String)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last.take() {
        Some((e, r)) if e == *error && r == reason => false,
        _ => {
            *last = Some((error.clone(), reason.to_owned()));
            true
        }
    })
}

/// A consumer context that logs assignments, revocations and commit failures.
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupContext;

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_to_tracing(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        log_rebalance("revoking or assigning", rebalance);
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        log_rebalance("rebalanced", rebalance);
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::trace!(offsets = ?offsets.to_topic_map(), "offsets committed"),
            // Nothing to commit since the last auto-commit: not a failure.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(%error, "offset commit failed; it is retried with the next commit"),
        }
    }
}

/// Logs a rebalance event as `topic[partitions]`.
pub fn log_rebalance(stage: &str, rebalance: &Rebalance<'_>) {
    match rebalance {
        Rebalance::Assign(tpl) => tracing::info!(partitions = %describe(tpl), "{stage}: partitions assigned"),
        Rebalance::Revoke(tpl) => tracing::info!(partitions = %describe(tpl), "{stage}: partitions revoked"),
        Rebalance::Error(error) => tracing::warn!(%error, "{stage}: rebalance error"),
    }
}

/// `topic[0,1,2]` for a partition list, for logs.
pub fn describe(tpl: &TopicPartitionList) -> String {
    let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
    for e in tpl.elements() {
        by_topic.entry(e.topic().to_string()).or_default().push(e.partition());
    }
    by_topic.iter().map(|(t, ps)| format!("{t}{ps:?}")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_failure_is_logged_once_through_the_error_callback() {
        assert!(also_an_error_event(RDKafkaLogLevel::Error, "FAIL"));
        assert!(also_an_error_event(RDKafkaLogLevel::Critical, "FAIL"));
        // librdkafka sends no error event for these: they must be logged.
        assert!(!also_an_error_event(RDKafkaLogLevel::Warning, "FAIL"));
        assert!(!also_an_error_event(RDKafkaLogLevel::Info, "FAIL"));
        assert!(!also_an_error_event(RDKafkaLogLevel::Error, "SESSTMOUT"));
    }

    #[test]
    fn a_repeated_producer_error_event_is_logged_once() {
        let down = KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        let refused = KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
        assert!(first_call(&refused, "connect failed"));
        assert!(!first_call(&refused, "connect failed"), "the same event, handed over again");
        assert!(first_call(&refused, "connect failed"), "a later event with the same text");
        assert!(!first_call(&refused, "connect failed"));
        assert!(first_call(&down, "1/1 brokers are down"));
        assert!(first_call(&refused, "1/1 brokers are down"), "another error with the same text");
        assert!(first_call(&refused, "connect failed again"));
    }

    /// The reason for [`log_producer_error`]: if rdkafka stops calling the
    /// error callback twice per event, this fails and the de-duplication
    /// should go (it would then drop every other identical error).
    #[test]
    fn rust_rdkafka_calls_a_producer_error_callback_twice() {
        use rdkafka::config::ClientConfig;
        use rdkafka::producer::{BaseProducer, Producer as _, ProducerContext};
        use std::sync::Mutex;

        #[derive(Default)]
        struct Calls(Mutex<Vec<String>>);
        impl ClientContext for Calls {
            fn error(&self, error: KafkaError, reason: &str) {
                self.0.lock().unwrap().push(format!("{error}: {reason}"));
            }
        }
        impl ProducerContext for Calls {
            type DeliveryOpaque = ();
            fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
        }
        // Port 1 on localhost: nothing listens, so every connect fails.
        let producer: BaseProducer<Calls> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("reconnect.backoff.ms", "10")
            .create_with_context(Calls::default())
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while producer.context().0.lock().unwrap().len() < 2 {
            assert!(std::time::Instant::now() < deadline, "no error event within 30 s");
            producer.poll(std::time::Duration::from_millis(100));
        }
        let calls = producer.context().0.lock().unwrap();
        assert_eq!(calls[0], calls[1], "each event twice in a row: {calls:?}");
    }
}
