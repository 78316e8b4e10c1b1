//! Writing a result or dead letter: enqueueing with backpressure, waiting
//! for the ack, retrying transient errors, dead-lettering what can never
//! be written.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use stream_core::kafka::{self, DeliveryFuture, Producer};
use stream_core::schema::{header, trace, Timestamp};

use super::record::Record;
use super::shared::Shared;
use crate::dlq;
use crate::processor::Processor;
use crate::stats::Stats;

/// What became of one record once its output was acknowledged.
pub(super) enum Outcome {
    /// Its result or dead letter is acknowledged: the offset may be stored.
    Done(i64),
    /// Nothing could be written for it; the run is failing and no later
    /// offset of this partition may be stored.
    Abandoned,
}

/// Writes the dead letter of `record`: the whole record, or without its
/// payload (see [`dlq`]).
pub(super) async fn dead_letter<P>(
    shared: &Shared<P>,
    record: &Record,
    failure: &dlq::Failure,
    worker_id: u32,
    letter: Letter,
) -> Sent {
    let traceparent = stream_core::kafka::raw_header(&**record, header::TRACEPARENT)
        .flatten()
        .and_then(|v| std::str::from_utf8(v).ok());
    let (trace_id, kind, error) = (traceparent.and_then(trace::trace_id), failure.kind, failure.message());
    let (topic, partition, offset) = (record.topic(), record.partition(), record.offset());
    let reference = letter == Letter::Reference;
    let mut headers = dlq::headers(&**record, failure, &shared.group, worker_id, !reference);
    // A record without a value (null, not empty) keeps none in its letter.
    let payload = match letter {
        Letter::Whole => {
            tracing::warn!(worker = worker_id, trace_id, topic, partition, offset, kind, %error, "event dead-lettered");
            metrics::counter!("consumer_events_failed_total", "kind" => failure.kind).increment(1);
            shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            record.payload()
        }
        // Logged once, where the whole was found too large (`Delivery::run`).
        Letter::WithoutPayload | Letter::Reference => {
            let size = record.payload().map_or(0, <[u8]>::len).to_string();
            headers = headers
                .insert(rdkafka::message::Header { key: dlq::header::PAYLOAD_DROPPED, value: Some(size.as_str()) });
            None
        }
    };
    let mut out = FutureRecord::to(&shared.dlq_topic).headers(headers);
    if let Some(payload) = payload {
        out = out.payload(payload);
    }
    if let Some(key) = record.key().filter(|_| !reference) {
        out = out.key(key);
    }
    send(&shared.producer, out).await
}

/// An enqueued record, or why it could not be enqueued (with a copy to
/// retry from).
pub(super) type Sent = Result<DeliveryFuture, (KafkaError, OwnedMessage)>;

/// Enqueues `record`, waiting while librdkafka's queue is full (the
/// backpressure point: the partition stops taking records meanwhile).
pub(super) async fn send<K, V>(producer: &Producer, record: FutureRecord<'_, K, V>) -> Sent
where
    K: rdkafka::message::ToBytes + ?Sized,
    V: rdkafka::message::ToBytes + ?Sized,
{
    let mut record = record;
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((error, back)) => {
                let copy = OwnedMessage::new(
                    back.payload.map(|p| p.to_bytes().to_vec()),
                    back.key.map(|k| k.to_bytes().to_vec()),
                    back.topic.to_string(),
                    rdkafka::Timestamp::NotAvailable,
                    -1,
                    -1,
                    back.headers,
                );
                return Err((error, copy));
            }
        }
    }
}

/// Enqueues a copy of a record that failed, for a retry.
pub(super) async fn resend(producer: &Producer, copy: &OwnedMessage) -> Sent {
    let mut record =
        FutureRecord::<[u8], [u8]>::to(copy.topic()).headers(copy.headers().cloned().unwrap_or_else(OwnedHeaders::new));
    // A letter written without a value is retried without one, not empty.
    if let Some(payload) = copy.payload() {
        record = record.payload(payload);
    }
    if let Some(key) = copy.key() {
        record = record.key(key);
    }
    send(producer, record).await
}

/// Whether a produce error may go away by itself, so the record is retried
/// rather than dead-lettered: timeouts, a full queue, leadership moving,
/// brokers or replicas down, throttling. An allow-list: any other error
/// (an authorization failure, a record the broker refuses, a fatal producer
/// state) would fail every retry and stall the partition once its in-flight
/// window filled, so it goes to the dead-letter topic instead.
pub(crate) fn is_transient(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    match error.rdkafka_error_code() {
        Some(code) => matches!(
            code,
            MessageTimedOut
                | RequestTimedOut
                | OperationTimedOut
                | TimedOutQueue
                | QueueFull
                | NotLeaderForPartition
                | LeaderNotAvailable
                | FencedLeaderEpoch
                | UnknownLeaderEpoch
                | ReplicaNotAvailable
                | PreferredLeaderNotAvailable
                | UnknownTopicOrPartition
                | AllBrokersDown
                | BrokerTransportFailure
                | BrokerNotAvailable
                | NetworkException
                | Resolve
                | Retry
                | CoordinatorLoadInProgress
                | CoordinatorNotAvailable
                | NotCoordinator
                | NotEnoughReplicas
                | NotEnoughReplicasAfterAppend
                | ISRInsufficient
                | KafkaStorageError
                | ThrottlingQuotaExceeded
                | PurgeQueue
                | PurgeInflight
        ),
        // The producer is gone: only happens while the process exits.
        None => !matches!(error, KafkaError::Canceled),
    }
}

pub(super) enum Kind {
    /// A result for an event sent at the given time.
    Result(Timestamp),
    /// A dead letter.
    DeadLetter(dlq::Failure, Letter),
}

/// What a dead letter carries of the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Letter {
    /// The whole record.
    Whole,
    /// Its key and headers only: the whole was too large for the broker.
    WithoutPayload,
    /// Where it is, and why it failed, only (no key, payload or headers of
    /// its own): even without the payload it was too large.
    Reference,
}

impl Letter {
    /// The letter to write when this one is too large for the broker.
    fn smaller(self) -> Option<Self> {
        match self {
            Self::Whole => Some(Self::WithoutPayload),
            Self::WithoutPayload => Some(Self::Reference),
            Self::Reference => None,
        }
    }

    /// How a letter of this kind is written, for the log.
    fn written_as(self) -> &'static str {
        match self {
            Self::Whole => "whole",
            Self::WithoutPayload => "without the event's payload",
            Self::Reference => "as a reference to the event only (no key, payload or headers of its own)",
        }
    }
}

/// Whether the broker (or librdkafka, before sending) refused a record for
/// its size.
fn too_large(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
    )
}

/// The wait for one record's ack, with retries: transient errors are
/// retried with backoff; a result that can never be written (too large,
/// say) is dead-lettered instead; a dead letter too large to write is
/// written again without the payload, then as a reference to the event
/// only; a dead letter that can never be written fails the run, since
/// skipping it would lose the event.
pub(super) struct Delivery<P> {
    pub(super) shared: Arc<Shared<P>>,
    pub(super) worker_id: u32,
    pub(super) offset: i64,
    pub(super) source: Record,
    pub(super) sent: Sent,
    pub(super) kind: Kind,
    pub(super) _counted: InFlight,
}

/// Counts a record as in flight for as long as it lives, including when its
/// delivery is given up at the end of a drain.
pub(super) struct InFlight(Arc<Stats>);

impl InFlight {
    pub(super) fn new(stats: &Arc<Stats>) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The wait before retry number `retry` (from 1) of a transient produce
/// error: 100 ms, then doubling to at most 5 s.
fn retry_backoff(retry: u32) -> Duration {
    Duration::from_millis(100u64 << retry.saturating_sub(1).min(6)).min(Duration::from_secs(5))
}

impl<P: Processor> Delivery<P> {
    pub(super) async fn run(mut self) -> Outcome {
        let mut retries = 0u32;
        let outcome = loop {
            let result = match std::mem::replace(&mut self.sent, Err((KafkaError::Canceled, empty()))) {
                Ok(delivery) => kafka::delivered(delivery).await.map(|_| ()),
                Err(failed) => Err(failed),
            };
            let (error, copy) = match result {
                Ok(()) => break self.acknowledged(),
                Err(failed) => failed,
            };
            if is_transient(&error) && !self.shared.stop.is_cancelled() {
                retries += 1;
                self.shared.stats.retries.fetch_add(1, Ordering::Relaxed);
                self.shared.meters.retries.increment(1);
                let backoff = retry_backoff(retries);
                tracing::warn!(
                    worker = self.worker_id,
                    topic = copy.topic(),
                    %error,
                    retry = retries,
                    ?backoff,
                    "produce failed; retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    // On shutdown the drain deadline decides; a retry
                    // pending then is simply not stored.
                    _ = self.shared.stop.cancelled() => {}
                }
                self.sent = resend(&self.shared.producer, &copy).await;
                continue;
            }
            if is_transient(&error) {
                // Stopping: leave the offset unstored.
                break Outcome::Abandoned;
            }
            match &self.kind {
                Kind::Result(_) => {
                    let failure = dlq::Failure::new(
                        "result_undeliverable",
                        format!("result could not be written to {}: {error}", copy.topic()),
                    );
                    self.sent = dead_letter(&self.shared, &self.source, &failure, self.worker_id, Letter::Whole).await;
                    self.kind = Kind::DeadLetter(failure, Letter::Whole);
                }
                Kind::DeadLetter(failure, letter) => {
                    let Some(smaller) = letter.smaller().filter(|_| too_large(&error)) else {
                        self.shared.fail(anyhow::anyhow!(
                            "cannot write the dead letter for {}/{} offset {} ({}: {}) to {}: {error}",
                            self.source.topic(),
                            self.source.partition(),
                            self.source.offset(),
                            failure.kind,
                            failure.message(),
                            self.shared.dlq_topic,
                        ));
                        break Outcome::Abandoned;
                    };
                    tracing::warn!(
                        worker = self.worker_id,
                        topic = self.source.topic(),
                        partition = self.source.partition(),
                        offset = self.source.offset(),
                        kind = failure.kind,
                        headers = self.source.headers().map_or(0, rdkafka::message::Headers::count),
                        %error,
                        "the dead letter is too large; writing it {}",
                        smaller.written_as(),
                    );
                    let failure = failure.clone();
                    self.sent = dead_letter(&self.shared, &self.source, &failure, self.worker_id, smaller).await;
                    self.kind = Kind::DeadLetter(failure, smaller);
                }
            }
        };
        outcome
    }

    pub(super) fn acknowledged(&self) -> Outcome {
        let stats = &self.shared.stats;
        match &self.kind {
            Kind::Result(sent_at) => {
                stats.processed.fetch_add(1, Ordering::Relaxed);
                self.shared.meters.processed.increment(1);
                let e2e = sent_at.until(Timestamp::now());
                self.shared.meters.end_to_end.record(e2e.as_secs_f64());
            }
            Kind::DeadLetter(..) => {
                stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.shared.meters.dead_lettered.increment(1);
            }
        }
        Outcome::Done(self.offset)
    }
}

pub(super) fn empty() -> OwnedMessage {
    OwnedMessage::new(None, None, String::new(), rdkafka::Timestamp::NotAvailable, -1, -1, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_100_ms_then_double_to_5_s() {
        let waits: Vec<u64> = (1..=9).map(|n| retry_backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    #[test]
    pub(super) fn only_errors_that_pass_are_retried() {
        let produce = |code| KafkaError::MessageProduction(code);
        for permanent in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::Fatal,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::ClusterAuthorizationFailed,
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::PolicyViolation,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::InvalidProducerEpoch,
            RDKafkaErrorCode::Unknown,
        ] {
            assert!(!is_transient(&produce(permanent)), "{permanent:?}");
        }
        for transient in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::RequestTimedOut,
        ] {
            assert!(is_transient(&produce(transient)), "{transient:?}");
        }
        assert!(!is_transient(&KafkaError::Canceled));
    }
}
