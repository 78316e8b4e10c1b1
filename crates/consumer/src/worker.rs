//! One worker: a member of the consumer group, with one task per assigned
//! partition.
//!
//! The group member is polled on a thread of its own, so that its rebalance
//! callback may block: before partitions are taken away it waits for their
//! in-flight results to be acknowledged, stores their offsets and commits
//! them, while the partition tasks keep running on the Tokio runtime.
//!
//! Each partition task processes its records one after another (per-key
//! order), enqueues each result without waiting for the previous ack
//! (pipelining), and stores an offset only once every record up to it has
//! its result or dead letter acknowledged (at-least-once).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use stream_core::kafka::{self, GroupContext, Producer};
use stream_core::schema::{header, trace, Timestamp};
use stream_core::{Event, EventResult};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::dlq;
use crate::processor::{ProcessError, Processor, WorkerInfo};
use crate::record::Record;
use crate::stats::Stats;

/// `ce_source` of the results this consumer writes.
pub const RESULT_SOURCE: &str = "/consumer";

/// Most records the poll thread hands to a partition task at once: it
/// takes every record librdkafka already has (up to this many) and passes
/// each partition's share as one batch, so a busy partition costs one
/// channel hop and at most one task wake-up per batch, not per record.
const HANDOFF_BATCH: usize = 128;

/// Batches buffered between the poll thread and a partition task (at most
/// `HANDOFF_BATCH` records each). Small: librdkafka already prefetches,
/// this only smooths hand-over.
const PARTITION_QUEUE: usize = 4;

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
    processed: metrics::Counter,
    dead_lettered: metrics::Counter,
    retries: metrics::Counter,
    processing: metrics::Histogram,
    end_to_end: metrics::Histogram,
}

impl Meters {
    /// Handles on the installed recorder; call after installing it.
    pub fn new() -> Self {
        // Counters that only move on rare events are registered up front, so
        // they are exported as 0 from the start and `rate()` over them works
        // before the first failure.
        metrics::counter!("consumer_poll_errors_total").absolute(0);
        metrics::counter!("consumer_rebalances_total").absolute(0);
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

/// A running partition task, as the poll thread and the rebalance callback
/// see it.
struct PartitionHandle {
    records: mpsc::Sender<Vec<Record>>,
    stop: CancellationToken,
    /// Disconnects when the task has finished (its sender is dropped).
    done: std_mpsc::Receiver<()>,
}

/// The group member's context: logs like [`GroupContext`], finishes the
/// partitions it loses, and reports consumer lag.
pub(crate) struct WorkerContext {
    worker_id: u32,
    partitions: Mutex<HashMap<i32, PartitionHandle>>,
    /// Partitions revoked since the poll thread last looked. A revoke runs
    /// inside a poll, so records the poll thread took earlier in the same
    /// hand-off may belong to a partition that is gone; it drops them
    /// (unprocessed, their offsets unstored: the next owner reads them).
    revoked: Mutex<Vec<i32>>,
    drain_timeout: Duration,
    stats: Arc<Stats>,
}

impl WorkerContext {
    pub fn new(worker_id: u32, drain_timeout: Duration, stats: Arc<Stats>) -> Self {
        Self {
            worker_id,
            partitions: Mutex::new(HashMap::new()),
            revoked: Mutex::new(Vec::new()),
            drain_timeout,
            stats,
        }
    }

    /// Stops the tasks of `partitions` (all when `None`) and waits until
    /// each has stored the offsets of its acknowledged work. Records they
    /// had not finished are not stored, so whoever owns the partition next
    /// processes them again.
    fn finish_partitions(&self, partitions: Option<&[i32]>) -> usize {
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
        // The tasks bound their own drain by `drain_timeout`; the margin only
        // covers scheduling.
        let deadline = Instant::now() + self.drain_timeout + Duration::from_secs(2);
        for (partition, handle) in &handles {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(std_mpsc::RecvTimeoutError::Timeout) = handle.done.recv_timeout(left) {
                tracing::warn!(worker = self.worker_id, partition, "partition task did not finish in time");
            }
            self.stats.forget_lag(self.worker_id, *partition);
        }
        handles.len()
    }
}

impl ClientContext for WorkerContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        GroupContext.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        GroupContext.error(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for (partition, p) in &topic.partitions {
                // Partition -1 is librdkafka's internal "unassigned" queue;
                // only partitions being fetched have a meaningful lag.
                if *partition < 0 || p.fetch_state != "active" || p.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!("consumer_lag", "topic" => topic.topic.clone(), "partition" => partition.to_string())
                    .set(p.consumer_lag as f64);
                self.stats.set_lag(self.worker_id, *partition, p.consumer_lag);
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
                commit_stored(consumer, self.worker_id, "revoke");
                tracing::info!(
                    worker = self.worker_id,
                    partitions = %kafka::describe(tpl),
                    tasks = finished,
                    "partitions revoked; finished work committed"
                );
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(_) => kafka::log_rebalance("rebalance", rebalance),
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(worker = self.worker_id, partitions = %kafka::describe(tpl), "partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        GroupContext.commit_callback(result, offsets);
    }
}

/// Commits the stored offsets now, so that what is finished is not
/// processed again by the next owner of a partition.
fn commit_stored<C: ConsumerContext, K: Consumer<C> + ?Sized>(consumer: &K, worker_id: u32, when: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::debug!(worker = worker_id, "offsets committed on {when}"),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => tracing::warn!(worker = worker_id, %error, "committing offsets on {when} failed"),
    }
}

/// A member of the group, ready to poll.
pub(crate) type Member = StreamConsumer<WorkerContext>;

/// Polls `consumer` until the run stops, handing each record to the task
/// of its partition. Runs on a dedicated thread (see the module docs).
pub(crate) fn poll_loop<P: Processor>(shared: Arc<Shared<P>>, consumer: Arc<Member>, worker_id: u32) {
    let context = consumer.context().clone();
    futures::executor::block_on(async {
        let mut error_logged: Option<Instant> = None;
        // One stream for the whole loop: `recv()` would register and drop a
        // waker slot for every record.
        let mut stream = consumer.stream();
        let mut batches: Vec<(i32, Vec<Record>)> = Vec::new();
        'poll: loop {
            let received = tokio::select! {
                biased;
                _ = shared.stop.cancelled() => break,
                received = stream.next() => received.expect("a consumer stream never ends"),
            };
            // Nothing is held yet, so a revoke served by that poll concerns
            // no record here.
            context.revoked.lock().unwrap().clear();
            // The first record is waited for; the ones librdkafka has
            // already fetched behind it are taken without waiting.
            let mut received = Some(received);
            let mut taken = 0;
            while let Some(next) = received.take() {
                match next {
                    Ok(record) => {
                        let partition = record.partition();
                        let record = Record::new(record, &consumer);
                        match batches.iter_mut().find(|(p, _)| *p == partition) {
                            Some((_, records)) => records.push(record),
                            None => batches.push((partition, vec![record])),
                        }
                    }
                    Err(error) => {
                        metrics::counter!("consumer_poll_errors_total").increment(1);
                        // librdkafka keeps retrying by itself; one line every
                        // few seconds tells the operator without flooding.
                        if error_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                            tracing::warn!(worker = worker_id, %error, "consumer error (librdkafka retries)");
                            error_logged = Some(Instant::now());
                        }
                        break;
                    }
                }
                taken += 1;
                if taken < HANDOFF_BATCH {
                    received = stream.next().now_or_never().map(|r| r.expect("a consumer stream never ends"));
                }
                // A revoke served by that poll: records taken before it from
                // a revoked partition are dropped (the record the poll just
                // returned is not among them).
                let revoked = std::mem::take(&mut *context.revoked.lock().unwrap());
                if !revoked.is_empty() {
                    batches.retain(|(partition, _)| !revoked.contains(partition));
                }
            }
            for (partition, records) in batches.drain(..) {
                let sender = {
                    let mut map = context.partitions.lock().unwrap();
                    map.entry(partition)
                        .or_insert_with(|| {
                            spawn_partition(&shared, &consumer, records[0].topic().to_string(), partition, worker_id)
                        })
                        .records
                        .clone()
                };
                tokio::select! {
                    biased;
                    _ = shared.stop.cancelled() => break 'poll,
                    sent = sender.send(records) => if sent.is_err() {
                        // A task only ends early when the run is failing (the
                        // reason is already recorded) or when it panicked.
                        if !shared.stop.is_cancelled() {
                            shared.fail(anyhow::anyhow!("worker {worker_id}: the task of partition {partition} ended unexpectedly"));
                        }
                        break 'poll;
                    }
                }
            }
        }
    });
    let finished = context.finish_partitions(None);
    commit_stored(consumer.as_ref(), worker_id, "shutdown");
    tracing::info!(worker = worker_id, tasks = finished, "worker stopped; finished work committed");
}

fn spawn_partition<P: Processor>(
    shared: &Arc<Shared<P>>,
    consumer: &Arc<Member>,
    topic: String,
    partition: i32,
    worker_id: u32,
) -> PartitionHandle {
    let (records, rx) = mpsc::channel(PARTITION_QUEUE);
    let (done_tx, done) = std_mpsc::channel();
    let stop = shared.stop.child_token();
    let task = PartitionTask {
        shared: shared.clone(),
        consumer: consumer.clone(),
        topic,
        partition,
        worker: WorkerInfo { worker_id },
        stop: stop.clone(),
        _done: done_tx,
    };
    shared.runtime.spawn(task.run(rx));
    PartitionHandle { records, stop, done }
}

/// What became of one record once its output was acknowledged.
enum Outcome {
    /// Its result or dead letter is acknowledged: the offset may be stored.
    Done(i64),
    /// Nothing could be written for it; the run is failing and no later
    /// offset of this partition may be stored.
    Abandoned,
}

struct PartitionTask<P> {
    shared: Arc<Shared<P>>,
    consumer: Arc<Member>,
    topic: String,
    partition: i32,
    worker: WorkerInfo,
    stop: CancellationToken,
    /// Dropped when the task ends, which wakes a waiting rebalance.
    _done: std_mpsc::Sender<()>,
}

impl<P: Processor> PartitionTask<P> {
    async fn run(self, mut records: mpsc::Receiver<Vec<Record>>) {
        let mut in_flight = FuturesOrdered::new();
        let shared = self.shared.clone();
        let max = shared.max_in_flight;
        let mut abandoned = false;
        // Records handed over but not started yet, in partition order.
        let mut queued: VecDeque<Record> = VecDeque::new();
        'run: loop {
            tokio::select! {
                biased;
                Some(outcome) = in_flight.next(), if !in_flight.is_empty() => {
                    if !self.settle(outcome, &mut in_flight) {
                        abandoned = true;
                        break;
                    }
                }
                _ = self.stop.cancelled() => break,
                batch = records.recv(), if queued.is_empty() => match batch {
                    Some(batch) => queued.extend(batch),
                    None => break,
                },
            }
            // One record after another (per-key order), each result
            // enqueued without waiting for the previous ack, up to `max`
            // awaiting their acks.
            while in_flight.len() < max {
                let Some(record) = queued.pop_front() else { break };
                if self.stop.is_cancelled() {
                    break 'run;
                }
                in_flight.push_back(self.handle(record).await);
            }
        }
        // Records still queued are dropped unprocessed: their offsets are
        // not stored, so they are processed again after the restart or by
        // the partition's next owner.
        drop(records);
        if abandoned || in_flight.is_empty() {
            return;
        }
        let pending = in_flight.len();
        let deadline = tokio::time::sleep(shared.drain_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                outcome = in_flight.next() => match outcome {
                    Some(outcome) => if !self.settle(outcome, &mut in_flight) { break },
                    None => break,
                },
                _ = &mut deadline => {
                    tracing::warn!(
                        worker = self.worker.worker_id,
                        partition = self.partition,
                        unacknowledged = in_flight.len(),
                        "results not acknowledged within the drain timeout; their events will be processed again"
                    );
                    break;
                }
            }
        }
        tracing::debug!(partition = self.partition, pending, "partition drained");
    }

    /// Takes `first` and every outcome already available after it, then
    /// stores the offset after the last finished record. Returns `false` if
    /// the partition must stop.
    fn settle<F>(&self, first: Outcome, in_flight: &mut FuturesOrdered<F>) -> bool
    where
        F: Future<Output = Outcome>,
    {
        let mut last = None;
        let mut outcome = Some(first);
        while let Some(current) = outcome.take() {
            match current {
                Outcome::Done(offset) => last = Some(offset),
                Outcome::Abandoned => {
                    self.store(last);
                    return false;
                }
            }
            outcome = in_flight.next().now_or_never().flatten();
        }
        self.store(last);
        true
    }

    fn store(&self, offset: Option<i64>) {
        let Some(offset) = offset else { return };
        // `store_offset` records offset + 1, the next record to read.
        if let Err(error) = self.consumer.store_offset(&self.topic, self.partition, offset) {
            // After the partition was lost (session timeout) the store is
            // refused; the new owner processes those records again.
            tracing::debug!(partition = self.partition, offset, %error, "offset not stored");
        }
    }

    /// Processes one record and enqueues its result (or dead letter).
    /// Returns the future that resolves once the broker acknowledged it.
    async fn handle(&self, record: Record) -> impl Future<Output = Outcome> + Send + 'static {
        let shared = &self.shared;
        let started = Instant::now();
        let offset = record.offset();
        let counted = InFlight::new(&shared.stats);
        let processed = match Event::from_message(&*record) {
            Ok(event) => {
                let output = AssertUnwindSafe(shared.processor.process(&event, &self.worker)).catch_unwind().await;
                match output {
                    Ok(Ok(output)) => Ok((event, output)),
                    Ok(Err(error)) => Err(dlq::Failure { kind: error.kind(), message: error.to_string() }),
                    Err(panic) => Err(dlq::Failure { kind: "panic", message: panic_message(panic) }),
                }
            }
            Err(error) => {
                let error = ProcessError::from(error);
                Err(dlq::Failure { kind: error.kind(), message: error.to_string() })
            }
        };
        shared.meters.processing.record(started.elapsed().as_secs_f64());
        let (sent, kind) = match processed {
            Ok((event, output)) => {
                let result = EventResult::answering(&event, Some(self.worker.worker_id), output);
                if let Some(trace) = result.traceparent.as_deref() {
                    tracing::debug!(
                        worker = self.worker.worker_id,
                        event_id = %result.event_id,
                        trace_id = trace::trace_id(trace).unwrap_or(trace),
                        latency_us = result.latency_us,
                        "event processed"
                    );
                }
                let out = result.to_event(RESULT_SOURCE, &event);
                let record = if shared.result_headers {
                    out.record(&shared.results_topic)
                } else {
                    out.record_without_headers(&shared.results_topic)
                };
                (send(&shared.producer, record).await, Kind::Result(event.time))
            }
            Err(failure) => (self.dead_letter(&record, &failure).await, Kind::DeadLetter(failure)),
        };
        Delivery {
            shared: shared.clone(),
            worker_id: self.worker.worker_id,
            offset,
            source: record,
            sent,
            kind,
            _counted: counted,
        }
        .run()
    }

    async fn dead_letter(&self, record: &Record, failure: &dlq::Failure) -> Sent {
        dead_letter(&self.shared, record, failure, self.worker.worker_id).await
    }
}

async fn dead_letter<P>(shared: &Shared<P>, record: &Record, failure: &dlq::Failure, worker_id: u32) -> Sent {
    let traceparent = record
        .headers()
        .and_then(|h| rdkafka::message::Headers::iter(h).find(|h| h.key == header::TRACEPARENT).and_then(|h| h.value))
        .and_then(|v| std::str::from_utf8(v).ok());
    tracing::warn!(
        worker = worker_id,
        trace_id = traceparent.and_then(trace::trace_id),
        topic = record.topic(),
        partition = record.partition(),
        offset = record.offset(),
        kind = failure.kind,
        error = %failure.message,
        "event dead-lettered"
    );
    metrics::counter!("consumer_events_failed_total", "kind" => failure.kind).increment(1);
    shared.stats.failed.fetch_add(1, Ordering::Relaxed);
    let headers = dlq::headers(&**record, failure, &shared.group, worker_id);
    let mut out = FutureRecord::to(&shared.dlq_topic).payload(record.payload().unwrap_or_default()).headers(headers);
    if let Some(key) = record.key() {
        out = out.key(key);
    }
    send(&shared.producer, out).await
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("processor panicked: {text}")
}

/// An enqueued record, or why it could not be enqueued (with a copy to
/// retry from).
type Sent = Result<DeliveryFuture, (KafkaError, OwnedMessage)>;

/// Enqueues `record`, waiting while librdkafka's queue is full (the
/// backpressure point: the partition stops taking records meanwhile).
async fn send<K, V>(producer: &Producer, record: FutureRecord<'_, K, V>) -> Sent
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
async fn resend(producer: &Producer, copy: &OwnedMessage) -> Sent {
    let mut record = FutureRecord::to(copy.topic())
        .payload(copy.payload().unwrap_or_default())
        .headers(copy.headers().cloned().unwrap_or_else(OwnedHeaders::new));
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

enum Kind {
    /// A result for an event sent at the given time.
    Result(Timestamp),
    /// A dead letter.
    DeadLetter(dlq::Failure),
}

/// The wait for one record's ack, with retries: transient errors are
/// retried with backoff; a result that can never be written (too large,
/// say) is dead-lettered instead; a dead letter that can never be written
/// fails the run, since skipping it would lose the event.
struct Delivery<P> {
    shared: Arc<Shared<P>>,
    worker_id: u32,
    offset: i64,
    source: Record,
    sent: Sent,
    kind: Kind,
    _counted: InFlight,
}

/// Counts a record as in flight for as long as it lives, including when its
/// delivery is given up at the end of a drain.
struct InFlight(Arc<Stats>);

impl InFlight {
    fn new(stats: &Arc<Stats>) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<P: Processor> Delivery<P> {
    async fn run(mut self) -> Outcome {
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
                let backoff = Duration::from_millis(100u64 << retries.min(6)).min(Duration::from_secs(5));
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
                    let failure = dlq::Failure {
                        kind: "result_undeliverable",
                        message: format!("result could not be written to {}: {error}", copy.topic()),
                    };
                    self.sent = dead_letter(&self.shared, &self.source, &failure, self.worker_id).await;
                    self.kind = Kind::DeadLetter(failure);
                }
                Kind::DeadLetter(failure) => {
                    self.shared.fail(anyhow::anyhow!(
                        "cannot write the dead letter for {}/{} offset {} ({}: {}) to {}: {error}",
                        self.source.topic(),
                        self.source.partition(),
                        self.source.offset(),
                        failure.kind,
                        failure.message,
                        self.shared.dlq_topic,
                    ));
                    break Outcome::Abandoned;
                }
            }
        };
        outcome
    }

    fn acknowledged(&self) -> Outcome {
        let stats = &self.shared.stats;
        match &self.kind {
            Kind::Result(sent_at) => {
                stats.processed.fetch_add(1, Ordering::Relaxed);
                self.shared.meters.processed.increment(1);
                let e2e = sent_at.until(Timestamp::now());
                self.shared.meters.end_to_end.record(e2e.as_secs_f64());
            }
            Kind::DeadLetter(_) => {
                stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.shared.meters.dead_lettered.increment(1);
            }
        }
        Outcome::Done(self.offset)
    }
}

fn empty() -> OwnedMessage {
    OwnedMessage::new(None, None, String::new(), rdkafka::Timestamp::NotAvailable, -1, -1, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_that_pass_are_retried() {
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
