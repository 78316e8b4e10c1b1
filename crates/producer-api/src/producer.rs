//! The producer wrapper every handler writes through: it bounds each wait
//! by the request timeout, turns broker trouble into 503s, and replaces the
//! producer when librdkafka declares it dead.

use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::{Deserialize, Serialize};
use stream_core::kafka::DeliveryFuture;
use stream_core::kafka::{self, Producer};
use stream_core::schema::Event;
use tokio::time::Instant as TokioInstant;

use crate::error::AppError;

/// `ce_source` of every event the gateway writes.
pub const SOURCE: &str = "/producer-api";

/// Longest wait for a record's report in [`Publisher::publish_to_the_end`]:
/// far beyond librdkafka's own bounds (`message.timeout.ms`, the request
/// timeout, plus `request.timeout.ms` for a request in flight).
pub const OUTCOME_PATIENCE: Duration = Duration::from_secs(300);

/// Where the broker put a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The event's `ce_id`; results refer to it as `event_id`.
    pub id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A record handed to librdkafka, awaiting its ack (see
/// [`Publisher::acked`]).
pub struct Sending {
    future: DeliveryFuture,
    /// The producer it went through, replaced if it turns out dead.
    used: Current,
}

/// Makes a producer: the one at start-up, and each replacement.
pub type Factory = Box<dyn Fn() -> anyhow::Result<Producer> + Send + Sync>;

/// The shared producer, with the request timeout that bounds every wait.
///
/// An idempotent producer that loses track of its sequence numbers (the
/// broker answers OutOfOrderSequenceNumber, say) is dead for good: every
/// later send fails with librdkafka's fatal error. The first request to
/// see that creates a new producer in its place, so a fatal error costs the
/// requests in flight at that moment a 503 instead of failing every request
/// until a restart.
pub struct Publisher {
    current: RwLock<Current>,
    /// Held while a replacement is made, so only one is.
    replacing: Mutex<()>,
    factory: Factory,
    timeout: Duration,
}

#[derive(Clone)]
struct Current {
    producer: Producer,
    /// Counts replacements: a request that saw a fatal error replaces only
    /// the producer it used, not one another request already put in.
    generation: u64,
}

impl Publisher {
    /// A publisher writing through `factory`'s producers.
    pub fn new(factory: Factory, timeout: Duration) -> anyhow::Result<Self> {
        let producer = factory()?;
        Ok(Self {
            current: RwLock::new(Current { producer, generation: 0 }),
            replacing: Mutex::new(()),
            factory,
            timeout,
        })
    }

    fn current(&self) -> Current {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The producer in use now (readiness probes, the stream registry,
    /// flush).
    pub fn producer(&self) -> Producer {
        self.current().producer
    }

    /// How many times the producer was replaced after a fatal error.
    pub fn replacements(&self) -> u64 {
        self.current().generation
    }

    /// Runs `write` (a registry write, say) with the producer in use now;
    /// if it failed because that producer is dead, replaces it and answers
    /// 503 instead of the write's own error.
    pub async fn with_producer<T, E, F>(&self, write: F) -> Result<T, AppError>
    where
        F: AsyncFnOnce(&Producer) -> Result<T, E>,
        E: Into<AppError>,
    {
        let current = self.current();
        write(&current.producer).await.map_err(|error| self.recover(&current).unwrap_or_else(|| error.into()))
    }

    /// If `used` is dead (librdkafka raised a fatal error on it), puts a new
    /// producer in its place and returns the 503 its request gets; `None`
    /// if it is alive.
    fn recover(&self, used: &Current) -> Option<AppError> {
        let (code, reason) = used.producer.client().fatal_error()?;
        let _one_at_a_time = self.replacing.lock().unwrap_or_else(PoisonError::into_inner);
        if self.current().generation == used.generation {
            tracing::error!(?code, %reason, "the producer hit a fatal error; replacing it");
            match (self.factory)() {
                Ok(producer) => {
                    let generation = used.generation + 1;
                    let old = std::mem::replace(
                        &mut *self.current.write().unwrap_or_else(PoisonError::into_inner),
                        Current { producer, generation },
                    );
                    metrics::counter!("producer_replacements_total").increment(1);
                    // Dropping a producer purges it and waits for the purge
                    // (up to 500 ms). Requests still holding it let go as
                    // their sends fail, so this is most often the last
                    // handle, and the wait is kept off the runtime's threads.
                    std::thread::spawn(move || drop(old));
                }
                Err(error) => tracing::error!(%error, "could not create a new producer; the next request tries again"),
            }
        }
        Some(AppError::unavailable(format!("the producer hit a fatal error ({reason}) and is being replaced; retry")))
    }

    /// The deadline of a request starting now (the timeout is
    /// [`crate::Config::broker_wait`]).
    pub fn deadline(&self) -> TokioInstant {
        TokioInstant::now() + self.timeout
    }

    /// Hands `event` to librdkafka without waiting. A full queue is refused
    /// at once: that is the backpressure signal, answered with 503.
    pub fn enqueue(&self, topic: &str, event: &Event) -> Result<Sending, AppError> {
        let current = self.current();
        match kafka::enqueue(&current.producer, topic, event) {
            Ok(future) => Ok(Sending { future, used: current }),
            Err(err) => Err(self.recover(&current).unwrap_or_else(|| enqueue_error(&err))),
        }
    }

    /// Waits for the broker's acknowledgement until `deadline`.
    pub async fn acked(
        &self,
        id: String,
        topic: &str,
        sending: Sending,
        deadline: TokioInstant,
    ) -> Result<Ack, AppError> {
        let Sending { future, used } = sending;
        let started = Instant::now();
        let outcome = tokio::time::timeout_at(deadline, kafka::delivered(future)).await;
        metrics::histogram!("produce_latency_seconds").record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(delivery)) => {
                Ok(Ack { id, topic: topic.to_owned(), partition: delivery.partition, offset: delivery.offset })
            }
            Ok(Err((err, _))) => Err(self.recover(&used).unwrap_or_else(|| delivery_error(&err))),
            Err(_elapsed) => Err(AppError::unavailable(format!(
                "the broker did not acknowledge within {:?}; the event may or may not have been written",
                self.timeout
            ))),
        }
    }

    /// Enqueues and waits: one event, one ack.
    pub async fn publish(&self, topic: &str, event: &Event) -> Result<Ack, AppError> {
        let deadline = self.deadline();
        let sending = self.enqueue(topic, event)?;
        self.acked(event.id.clone(), topic, sending, deadline).await
    }

    /// Enqueues and waits for librdkafka's report of the record, however
    /// long past a request's timeout it comes: for idempotent writes,
    /// whose outcome a retry gets (see [`crate::idempotency`]). librdkafka
    /// reports every record (acknowledged, failed, or purged with its
    /// producer); [`OUTCOME_PATIENCE`] only bounds a task that would
    /// otherwise never end.
    pub async fn publish_to_the_end(&self, topic: &str, event: &Event) -> Result<Ack, AppError> {
        let sending = self.enqueue(topic, event)?;
        self.acked(event.id.clone(), topic, sending, TokioInstant::now() + OUTCOME_PATIENCE).await
    }

    /// Records handed to librdkafka but not yet acknowledged.
    pub fn queue_depth(&self) -> i32 {
        self.current().producer.in_flight_count()
    }

    /// Waits (blocking) until every queued record is delivered or `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.current().producer.flush(timeout)
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
