//! The producer wrapper every handler writes through: it bounds each wait
//! by the request timeout and turns broker trouble into 503s.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, Producer as _};
use serde::{Deserialize, Serialize};
use stream_core::kafka::{self, Producer};
use stream_core::schema::Event;
use tokio::time::Instant as TokioInstant;

use crate::error::AppError;

/// `ce_source` of every event the gateway writes.
pub const SOURCE: &str = "/producer-api";

/// Where the broker put a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The event's `ce_id`; results refer to it as `event_id`.
    pub id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The shared producer, with the request timeout that bounds every wait.
pub struct Publisher {
    producer: Producer,
    timeout: Duration,
}

impl Publisher {
    pub fn new(producer: Producer, timeout: Duration) -> Self {
        Self { producer, timeout }
    }

    /// The underlying producer (readiness probes, flush).
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// The deadline of a request starting now.
    pub fn deadline(&self) -> TokioInstant {
        TokioInstant::now() + self.timeout
    }

    /// Hands `event` to librdkafka without waiting. A full queue is refused
    /// at once: that is the backpressure signal, answered with 503.
    pub fn enqueue(&self, topic: &str, event: &Event) -> Result<DeliveryFuture, AppError> {
        kafka::enqueue(&self.producer, topic, event).map_err(|err| enqueue_error(&err))
    }

    /// Waits for the broker's acknowledgement until `deadline`.
    pub async fn acked(
        &self,
        id: String,
        topic: &str,
        future: DeliveryFuture,
        deadline: TokioInstant,
    ) -> Result<Ack, AppError> {
        let started = Instant::now();
        let outcome = tokio::time::timeout_at(deadline, kafka::delivered(future)).await;
        metrics::histogram!("produce_latency_seconds").record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(delivery)) => {
                Ok(Ack { id, topic: topic.to_owned(), partition: delivery.partition, offset: delivery.offset })
            }
            Ok(Err((err, _))) => Err(delivery_error(&err)),
            Err(_elapsed) => Err(AppError::unavailable(format!(
                "the broker did not acknowledge within {:?}; the event may or may not have been written",
                self.timeout
            ))),
        }
    }

    /// Enqueues and waits: one event, one ack.
    pub async fn publish(&self, topic: &str, event: &Event) -> Result<Ack, AppError> {
        let deadline = self.deadline();
        let future = self.enqueue(topic, event)?;
        self.acked(event.id.clone(), topic, future, deadline).await
    }

    /// Records handed to librdkafka but not yet acknowledged.
    pub fn queue_depth(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Waits (blocking) until every queued record is delivered or `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}

fn enqueue_error(err: &KafkaError) -> AppError {
    match err.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => AppError::unavailable("the producer queue is full"),
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
            AppError::TooLarge("the event is larger than the broker accepts (message.max.bytes)".into())
        }
        _ => AppError::Internal(format!("enqueue failed: {err}")),
    }
}

fn delivery_error(err: &KafkaError) -> AppError {
    match err.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
            AppError::TooLarge("the event is larger than the broker accepts (message.max.bytes)".into())
        }
        _ => AppError::unavailable(format!("the broker did not accept the event: {err}")),
    }
}
