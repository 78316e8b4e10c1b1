//! Following a topic, the loop the stream registry and the results reader
//! share: each record in turn, a look for new partitions on a timer, and a
//! broker outage logged once rather than at every retry.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::StreamConsumer;
use rdkafka::message::BorrowedMessage;
use stream_core::kafka::{self, PartitionWatch, TracingContext};
use tokio_util::sync::CancellationToken;

/// Pause after a failed read before the next; librdkafka keeps reconnecting
/// in the background meanwhile.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A reader assigned to every partition of one topic.
pub struct Follower {
    pub topic: String,
    pub consumer: Arc<StreamConsumer<TracingContext>>,
    /// The partitions assigned so far; new ones are added as they appear.
    pub partitions: Arc<PartitionWatch>,
    /// Bounds each look for new partitions.
    pub timeout: Duration,
}

impl Follower {
    /// Hands every record to `each` until `stop` is cancelled.
    pub async fn run(&self, stop: &CancellationToken, mut each: impl FnMut(&BorrowedMessage<'_>)) {
        let mut health = Health::default();
        let mut partition_check = tokio::time::interval(kafka::PARTITION_CHECK_INTERVAL);
        // A slow look delays the next one rather than bunching them up.
        partition_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                _ = partition_check.tick() => {
                    self.look_for_partitions().await;
                    continue;
                }
                message = self.consumer.recv() => message,
            };
            match message {
                Ok(msg) => {
                    health.ok(&self.topic);
                    each(&msg);
                }
                Err(err) => {
                    health.failed(&self.topic, &err);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// Assigns partitions added to the topic since the last look; a failed
    /// look is retried at the next one.
    async fn look_for_partitions(&self) {
        let (consumer, partitions, timeout) = (self.consumer.clone(), self.partitions.clone(), self.timeout);
        let outcome = tokio::task::spawn_blocking(move || partitions.refresh(&consumer, timeout)).await;
        if let Ok(Err(err)) = outcome {
            tracing::debug!(topic = %self.topic, %err, "could not look for new partitions; trying again later");
        }
    }
}

/// Logs a reader's first error of an outage as a warning and the repeats
/// (librdkafka reports one every few hundred ms while a broker is down) at
/// debug, then says when reading works again.
#[derive(Default)]
struct Health {
    failing: bool,
}

impl Health {
    fn failed(&mut self, topic: &str, err: &rdkafka::error::KafkaError) {
        if self.failing {
            tracing::debug!(topic, %err, "reader still failing");
        } else {
            tracing::warn!(topic, %err, "reader error; retrying until the broker answers");
            self.failing = true;
        }
    }

    fn ok(&mut self, topic: &str) {
        if std::mem::take(&mut self.failing) {
            tracing::info!(topic, "reader recovered");
        }
    }
}
