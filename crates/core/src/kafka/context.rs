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
    match level {
        Emerg | Alert | Critical | Error => tracing::error!(target: "librdkafka", facility, "{message}"),
        Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        Notice | Info => tracing::info!(target: "librdkafka", facility, "{message}"),
        Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

pub(crate) fn log_client_error(error: KafkaError, reason: &str) {
    // librdkafka reports transient conditions (a broker restarting, all
    // brokers down) here and keeps retrying by itself: they are warnings, the
    // caller sees a real failure through its own request.
    tracing::warn!(target: "librdkafka", %error, "{reason}");
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
