//! Producing one event and awaiting its acknowledgement.

use rdkafka::error::KafkaError;
use rdkafka::producer::future_producer::OwnedDeliveryResult;

use super::producer::{DeliveryFuture, Producer};
use crate::schema::Event;

/// Enqueues an event without waiting. A full queue is returned at once as
/// `QueueFull` (never retried here), so callers decide about backpressure.
pub fn enqueue(producer: &Producer, topic: &str, event: &Event) -> std::result::Result<DeliveryFuture, KafkaError> {
    producer.send_result(event.record(topic)).map_err(|(error, _record)| error)
}

/// Waits for a delivery report, turning a dropped producer into an error.
// The error carries the undelivered message by value, as rdkafka's own
// delivery result does, so callers can retry it without a copy.
#[allow(clippy::result_large_err)]
pub async fn delivered(future: DeliveryFuture) -> OwnedDeliveryResult {
    future.await.unwrap_or_else(|_gone| Err(canceled()))
}

/// The failure of a record whose producer went away with it still queued:
/// `KafkaError::Canceled`, with an empty message.
pub fn canceled() -> (KafkaError, rdkafka::message::OwnedMessage) {
    let empty =
        rdkafka::message::OwnedMessage::new(None, None, String::new(), rdkafka::Timestamp::NotAvailable, -1, -1, None);
    (KafkaError::Canceled, empty)
}
