//! Partition assignment for group-less readers: every partition at a
//! chosen offset, and partitions added to a live topic.

use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::TopicPartitionList;

use crate::error::{Error, Result};

/// Assigns every partition of `topic` to `consumer`, starting at `offset`.
pub fn assign_all<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    offset: rdkafka::Offset,
    timeout: Duration,
) -> Result<usize> {
    assign_each(consumer, topic, timeout, |_| Ok(offset))
}

/// Partitions of `topic` as the cluster reports them now; 0 when the topic
/// does not exist (blocking: call from `spawn_blocking` in async code).
pub fn partition_count<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    topic: &str,
    timeout: Duration,
) -> Result<usize> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .unwrap_or(0))
}

/// Assigns every partition of `topic` to `consumer` at its high watermark
/// as of now, and returns how many. Explicit offsets rather than
/// `Offset::End`, which librdkafka resolves at the first fetch: a record
/// written in between would be skipped. Blocking, like
/// [`partition_count`].
pub fn assign_at_end<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<usize> {
    assign_each(consumer, topic, timeout, |p| {
        let (_, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        Ok(rdkafka::Offset::Offset(high))
    })
}

/// Assigns every partition of `topic`, each at the offset `start_of` gives
/// it; a topic with no partitions is an error naming the flag that creates it.
pub(crate) fn assign_each<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    timeout: Duration,
    mut start_of: impl FnMut(i32) -> Result<rdkafka::Offset>,
) -> Result<usize> {
    let partitions = partition_count(consumer, topic, timeout)?;
    if partitions == 0 {
        return Err(Error::Config(format!("topic {topic} does not exist (create it with --create-topics)")));
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, start_of(p)?)?;
    }
    consumer.assign(&tpl)?;
    Ok(partitions)
}

/// How often group-less readers look for partitions added to their topic:
/// one small metadata request per reader.
pub const PARTITION_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Partitions of `topic` a group-less reader was not given yet: Kafka and
/// Redpanda let an operator add partitions to a live topic
/// (`rpk topic add-partitions`), and librdkafka assigns nothing by itself to
/// a consumer that uses `assign`. [`PartitionWatch::refresh`] assigns every
/// partition numbered at or above the ones known, from its beginning:
/// partitions only ever grow, and one found after the reader started holds
/// only records written after that, so none is missed or read twice.
///
/// Readers call it every [`PARTITION_CHECK_INTERVAL`].
#[derive(Debug)]
pub struct PartitionWatch {
    topic: String,
    /// Partitions assigned; held while assigning, so two refreshes never
    /// assign the same partition twice.
    known: std::sync::Mutex<usize>,
}

impl PartitionWatch {
    /// A watch over `topic`, whose first `known` partitions are assigned.
    pub fn new(topic: &str, known: usize) -> Self {
        Self { topic: topic.to_owned(), known: std::sync::Mutex::new(known) }
    }

    /// Partitions assigned so far.
    pub fn known(&self) -> usize {
        *self.known.lock().expect("partition watch lock")
    }

    /// Asks the cluster for the topic's partitions and adds the new ones to
    /// `consumer`'s assignment (blocking: call from `spawn_blocking`).
    /// Returns how many partitions are assigned now.
    pub fn refresh<C: ConsumerContext + 'static>(
        &self,
        consumer: &StreamConsumer<C>,
        timeout: Duration,
    ) -> Result<usize> {
        let now = partition_count(consumer, &self.topic, timeout)?;
        // Locked only to compare and assign, so concurrent looks (one per
        // registry catch-up) do not queue behind each other's request.
        let mut known = self.known.lock().expect("partition watch lock");
        if now > *known {
            let mut tpl = TopicPartitionList::new();
            for p in *known as i32..now as i32 {
                tpl.add_partition_offset(&self.topic, p, rdkafka::Offset::Beginning)?;
            }
            consumer.incremental_assign(&tpl)?;
            tracing::info!(topic = %self.topic, from = *known, to = now, "partitions added to the topic; reading them too");
            *known = now;
        }
        Ok(*known)
    }
}
