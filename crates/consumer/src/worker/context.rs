//! The group member's context: the rebalance callback that finishes
//! revoked partitions and commits their work, and lag reporting.

use std::collections::{HashMap, HashSet};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use stream_core::kafka::{self, GroupContext};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::record::Record;
use crate::stats::Stats;

/// A running partition task, as the poll thread and the rebalance callback
/// see it.
pub(super) struct PartitionHandle {
    pub(super) records: mpsc::Sender<Vec<Record>>,
    pub(super) stop: CancellationToken,
    /// Disconnects when the task has finished (its sender is dropped).
    pub(super) done: std_mpsc::Receiver<()>,
}

/// The group member's context: logs like [`GroupContext`], finishes the
/// partitions it loses, and reports consumer lag.
pub(crate) struct WorkerContext {
    pub(super) worker_id: u32,
    pub(super) partitions: Mutex<HashMap<i32, PartitionHandle>>,
    /// Partitions revoked since the poll thread last looked. A revoke runs
    /// inside a poll, so records the poll thread took earlier in the same
    /// hand-off may belong to a partition that is gone; it drops them
    /// (unprocessed, their offsets unstored: the next owner reads them).
    pub(super) revoked: Mutex<Vec<i32>>,
    pub(super) drain_timeout: Duration,
    pub(super) stats: Arc<Stats>,
    /// The topic of each partition whose `consumer_lag` this member set,
    /// so the gauge can be zeroed when the partition goes elsewhere.
    lag_topics: Mutex<HashMap<i32, String>>,
    /// The partitions assigned to this member. Statistics are sampled on
    /// librdkafka's own thread and can arrive after a revoke; a lag for a
    /// partition no longer here would stay in the sum until it came back.
    assigned: Mutex<HashSet<i32>>,
}

impl WorkerContext {
    pub fn new(worker_id: u32, drain_timeout: Duration, stats: Arc<Stats>) -> Self {
        Self {
            worker_id,
            partitions: Mutex::new(HashMap::new()),
            revoked: Mutex::new(Vec::new()),
            drain_timeout,
            stats,
            lag_topics: Mutex::new(HashMap::new()),
            assigned: Mutex::new(HashSet::new()),
        }
    }

    /// Stops the tasks of `partitions` (all when `None`) and waits until
    /// each has stored the offsets of its acknowledged work. Records they
    /// had not finished are not stored, so whoever owns the partition next
    /// processes them again.
    pub(super) fn finish_partitions(&self, partitions: Option<&[i32]>) -> usize {
        let handles: Vec<(i32, PartitionHandle)> = {
            let mut map = self.partitions.lock().unwrap();
            match partitions {
                Some(list) => list.iter().filter_map(|p| map.remove(p).map(|h| (*p, h))).collect(),
                None => map.drain().collect(),
            }
        };
        for (_, handle) in &handles {
            handle.stop.cancel();
        }
        {
            let mut assigned = self.assigned.lock().unwrap();
            match partitions {
                Some(list) => list.iter().for_each(|p| {
                    assigned.remove(p);
                }),
                None => assigned.clear(),
            }
        }
        // The tasks bound their own drain by `drain_timeout`; the margin only
        // covers scheduling.
        let deadline = Instant::now() + self.drain_timeout + Duration::from_secs(2);
        for (partition, handle) in &handles {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(std_mpsc::RecvTimeoutError::Timeout) = handle.done.recv_timeout(left) {
                tracing::warn!(worker = self.worker_id, partition, "partition task did not finish in time");
            }
        }
        // Every revoked partition, with a task or not (one that never had
        // records has none).
        let forget: Vec<i32> = match partitions {
            Some(list) => list.to_vec(),
            None => self.lag_topics.lock().unwrap().keys().copied().collect(),
        };
        for partition in forget {
            self.forget_lag(partition);
        }
        handles.len()
    }

    /// Its lag is its next owner's to report; a gauge left at this member's
    /// last figure would count it twice in a sum over members.
    fn forget_lag(&self, partition: i32) {
        self.stats.forget_lag(self.worker_id, partition);
        if let Some(topic) = self.lag_topics.lock().unwrap().remove(&partition) {
            metrics::gauge!("consumer_lag", "topic" => topic, "partition" => partition.to_string()).set(0.0);
        }
    }

    /// Records a partition's lag from statistics, if it is still assigned here.
    fn record_lag(&self, topic: &str, partition: i32, lag: i64) {
        // Held while recording, so a revoke (which removes the partition
        // first) cannot slip between the check and the update.
        let assigned = self.assigned.lock().unwrap();
        if !assigned.contains(&partition) {
            return;
        }
        metrics::gauge!("consumer_lag", "topic" => topic.to_owned(), "partition" => partition.to_string())
            .set(lag as f64);
        self.lag_topics.lock().unwrap().entry(partition).or_insert_with(|| topic.to_owned());
        self.stats.set_lag(self.worker_id, partition, lag);
    }
}

impl ClientContext for WorkerContext {
    // Each worker is a client of its own: the span says whose line it is.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        tracing::info_span!("worker", id = self.worker_id).in_scope(|| GroupContext.log(level, facility, message));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::info_span!("worker", id = self.worker_id).in_scope(|| GroupContext.error(error, reason));
    }

    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for (partition, p) in &topic.partitions {
                // Partition -1 is librdkafka's internal "unassigned" queue;
                // only partitions being fetched have a meaningful lag.
                // The end a read_committed consumer sees (the last stable
                // offset), and where reading stands: the next record for
                // the application, else the next to fetch, else the start.
                let end = if p.ls_offset >= 0 { p.ls_offset } else { p.hi_offset };
                let at = [p.app_offset, p.next_offset, p.lo_offset].into_iter().find(|o| *o >= 0).unwrap_or(-1);
                let lag = match lag(p.consumer_lag_stored, p.consumer_lag, end, at) {
                    Some(lag) if *partition >= 0 && p.fetch_state == "active" => lag,
                    _ => continue,
                };
                self.record_lag(&topic.topic, *partition, lag);
            }
        }
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                metrics::counter!("consumer_rebalances_total").increment(1);
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                self.revoked.lock().unwrap().extend_from_slice(&partitions);
                let finished = self.finish_partitions(Some(&partitions));
                let committed = commit_stored(consumer, self.worker_id, "revoke");
                tracing::info!(
                    worker = self.worker_id,
                    partitions = %kafka::describe(tpl),
                    tasks = finished,
                    committed,
                    "partitions revoked; finished work handed back"
                );
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(_) => kafka::log_rebalance("rebalance", rebalance),
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.assigned.lock().unwrap().extend(tpl.elements().iter().map(|e| e.partition()));
            tracing::info!(worker = self.worker_id, partitions = %kafka::describe(tpl), "partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        GroupContext.commit_callback(result, offsets);
    }
}

/// Commits the stored offsets now, so that what is finished is not
/// processed again by the next owner of a partition.
/// Whether the stored offsets are committed (or there were none to commit).
pub(super) fn commit_stored<C: ConsumerContext, K: Consumer<C> + ?Sized>(
    consumer: &K,
    worker_id: u32,
    when: &str,
) -> bool {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::debug!(worker = worker_id, "offsets committed on {when}"),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => {
            tracing::warn!(worker = worker_id, %error, "committing offsets on {when} failed");
            return false;
        }
    }
    true
}

/// A member of the group, ready to poll.
pub(crate) type Member = StreamConsumer<WorkerContext>;

/// Records behind the partition end from librdkafka's statistics: counted
/// from the last offset stored (each stored once its result is
/// acknowledged), not the last commit, which trails it by up to the
/// auto-commit interval; from the commit while nothing is stored yet (a
/// partition just assigned). librdkafka knows neither (-1) for a group
/// that never committed on the partition, an empty one included: then
/// from where reading stands (`at`) to the `end`. `None` when even those
/// are unknown.
fn lag(behind_stored: i64, behind_committed: i64, end: i64, at: i64) -> Option<i64> {
    [behind_stored, behind_committed]
        .into_iter()
        .find(|lag| *lag >= 0)
        .or_else(|| (end >= 0 && at >= 0).then(|| (end - at).max(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition this member reported lag for, once it goes elsewhere,
    /// shows lag 0 here: its next owner reports it.
    #[test]
    fn a_finished_partitions_lag_is_zeroed() {
        let metrics = stream_core::metrics::handle();
        let context = WorkerContext::new(0, Duration::from_secs(1), Arc::new(Stats::default()));
        let (records, _) = mpsc::channel(1);
        let (finished, done) = std_mpsc::channel::<()>();
        drop(finished);
        context.partitions.lock().unwrap().insert(3, PartitionHandle { records, stop: CancellationToken::new(), done });
        let lag = || metrics::gauge!("consumer_lag", "topic" => "lag-test", "partition" => "3");
        lag().set(42.0);
        context.lag_topics.lock().unwrap().insert(3, "lag-test".into());
        let line = |text: &str| {
            text.lines().find(|l| l.starts_with("consumer_lag{") && l.contains("lag-test")).map(str::to_owned)
        };
        assert!(line(&metrics.render()).is_some_and(|l| l.ends_with(" 42")), "{:?}", line(&metrics.render()));

        assert_eq!(context.finish_partitions(Some(&[3])), 1);
        assert!(line(&metrics.render()).is_some_and(|l| l.ends_with(" 0")), "{:?}", line(&metrics.render()));
        assert!(context.lag_topics.lock().unwrap().is_empty());
    }

    /// Statistics sampled before a revoke and delivered after it do not put
    /// the partition back into this member's lag.
    #[test]
    fn a_late_lag_for_a_revoked_partition_is_dropped() {
        let stats = Arc::new(Stats::default());
        let context = WorkerContext::new(0, Duration::from_secs(1), stats.clone());
        context.record_lag("late-lag", 5, 70);
        assert_eq!(stats.snapshot().lag, None, "not assigned yet: nothing recorded");

        context.assigned.lock().unwrap().insert(5);
        context.record_lag("late-lag", 5, 70);
        assert_eq!(stats.snapshot().lag, Some(70));

        assert_eq!(context.finish_partitions(Some(&[5])), 0, "no task ran for it");
        assert_eq!(stats.snapshot().lag, None, "revoked: its lag is forgotten");
        context.record_lag("late-lag", 5, 70);
        assert_eq!(stats.snapshot().lag, None, "a late sample does not bring it back");
        assert!(context.lag_topics.lock().unwrap().is_empty());
    }

    #[test]
    fn lag_counts_from_the_stored_offset_else_the_committed_one() {
        assert_eq!(lag(0, 11_088, 20_000, 20_000), Some(0), "all processed, the commit not yet made");
        assert_eq!(lag(-1, 500, 20_000, 19_500), Some(500), "nothing stored yet since the assignment");
        assert_eq!(lag(-1, -1, 0, 0), Some(0), "an empty partition, never committed on");
        assert_eq!(lag(-1, -1, 3_000, 1_200), Some(1_800), "a fresh group part of the way in");
        assert_eq!(lag(-1, -1, -1, 0), None, "the end not known yet");
        assert_eq!(lag(-1, -1, 3_000, -1), None);
    }
}
