//! Helpers shared by the integration tests: publishing events, collecting
//! what lands on a topic, running the consumer in-process, reading the
//! group's committed offsets.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use stream_core::kafka::{self, ConsumerOptions, GroupContext, ProducerOptions, StartFrom};
use stream_core::{Event, EventResult, KafkaArgs};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous: group joins take seconds on the test broker.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// Publishes `events` in the background, 500 every 100 ms, so that a run
/// has work left for a while: kills and joins timed by its results then
/// land mid-run. Finishes once every event is acknowledged.
pub fn publish_paced(args: &KafkaArgs, events: Vec<Event>) -> JoinHandle<()> {
    let args = args.clone();
    tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        for chunk in events.chunks(500) {
            pace.tick().await;
            publish(&args, chunk).await;
        }
    })
}

/// Publishes `events` to the events topic and waits for every ack.
pub async fn publish(args: &KafkaArgs, events: &[Event]) {
    let producer = kafka::producer(args, &ProducerOptions::default()).expect("producer");
    let mut pending = Vec::with_capacity(events.len());
    for event in events {
        loop {
            match kafka::enqueue(&producer, &args.topics.events, event) {
                Ok(delivery) => {
                    pending.push(kafka::delivered(delivery));
                    break;
                }
                // Queue full: let what is in flight be acknowledged first,
                // then try again. Any other error is permanent and fails the
                // test at once instead of retrying for ever; so does a queue
                // still full with nothing left in flight.
                Err(error) => {
                    let queue_full = error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull);
                    assert!(queue_full && !pending.is_empty(), "cannot publish a test event: {error}");
                    for result in join_all(pending.drain(..)).await {
                        result.map_err(|(e, _)| e).expect("event published");
                    }
                }
            }
        }
    }
    for result in join_all(pending).await {
        result.map_err(|(e, _)| e).expect("event published");
    }
}

/// Writes one record as any producer may (raw key, value and headers) and
/// waits for its ack.
pub async fn write_record<K, V>(producer: &kafka::Producer, record: rdkafka::producer::FutureRecord<'_, K, V>)
where
    K: rdkafka::message::ToBytes + ?Sized,
    V: rdkafka::message::ToBytes + ?Sized,
{
    let delivery = producer.send_result(record).map_err(|(e, _)| e).expect("record enqueued");
    kafka::delivered(delivery).await.map_err(|(e, _)| e).expect("record written");
}

/// JSON events `{"seq": i}` spread over `keys` stream ids.
pub fn json_events(count: usize, keys: usize) -> Vec<Event> {
    (0..count)
        .map(|i| {
            Event::json("/test", Some(format!("stream-{}", i % keys)), &serde_json::json!({ "seq": i / keys, "n": i }))
        })
        .collect()
}

/// Everything read from one topic, from the beginning, in the background.
pub struct Collector {
    pub records: Arc<Mutex<Vec<OwnedMessage>>>,
    /// The distinct `event_id`s of the records that are results.
    answered: Arc<Mutex<std::collections::HashSet<String>>>,
    stop: CancellationToken,
}

impl Collector {
    pub async fn start(args: &KafkaArgs, topic: &str) -> Self {
        let reader = kafka::reader(args, StartFrom::Earliest).expect("reader");
        kafka::assign_all(&reader, topic, Offset::Beginning, Duration::from_secs(10)).expect("assign");
        let records = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let stop = CancellationToken::new();
        let (sink, ids, cancel) = (records.clone(), answered.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    msg = reader.recv() => match msg {
                        Ok(msg) => {
                            if let Some(result) = msg.payload().and_then(|p| serde_json::from_slice::<EventResult>(p).ok()) {
                                ids.lock().unwrap().insert(result.event_id);
                            }
                            sink.lock().unwrap().push(msg.detach());
                        }
                        Err(e) => eprintln!("collector: {e}"),
                    }
                }
            }
        });
        Self { records, answered, stop }
    }

    pub fn len(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    /// How many distinct events have a result so far (replays count once).
    pub fn answered(&self) -> usize {
        self.answered.lock().unwrap().len()
    }

    /// Checks that every result of one event carries one `ce_id`, however
    /// often the event was processed, and that no two events' results share
    /// one; returns how many events had more than one result.
    pub fn assert_one_result_id_per_event(&self) -> usize {
        let mut ids: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        let mut events: HashMap<String, String> = HashMap::new();
        let mut results: HashMap<String, usize> = HashMap::new();
        for record in self.records.lock().unwrap().iter() {
            let result: EventResult = serde_json::from_slice(record.payload().expect("result payload")).expect("JSON");
            let id = header(record, "ce_id").expect("a result's ce_id");
            let event = events.entry(id.clone()).or_insert_with(|| result.event_id.clone());
            assert_eq!(event, &result.event_id, "results of two events carry the id {id}");
            *results.entry(result.event_id.clone()).or_default() += 1;
            ids.entry(result.event_id).or_default().insert(id);
        }
        for (event, ids) in &ids {
            assert_eq!(ids.len(), 1, "the results of event {event} carry different ids: {ids:?}");
        }
        results.values().filter(|n| **n > 1).count()
    }

    pub fn results(&self) -> Vec<EventResult> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .map(|m| serde_json::from_slice(m.payload().expect("result payload")).expect("result JSON"))
            .collect()
    }

    /// Waits until the results cover every id in `ids`; returns all results.
    pub async fn wait_for_ids(&self, ids: &[String]) -> Vec<EventResult> {
        stream_core::testing::eventually(DEADLINE, &format!("results for all {} events", ids.len()), || async {
            let results = self.results();
            let seen: std::collections::HashSet<&str> = results.iter().map(|r| r.event_id.as_str()).collect();
            ids.iter().all(|id| seen.contains(id.as_str())).then_some(results.clone())
        })
        .await
    }

    pub async fn wait_for_len(&self, n: usize, what: &str) {
        stream_core::testing::eventually(DEADLINE, what, || async { (self.len() >= n).then_some(()) }).await
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Header value as text.
pub fn header(msg: &OwnedMessage, name: &str) -> Option<String> {
    stream_core::kafka::raw_header(msg, name)?.map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A consumer run in the background and the token that stops it.
pub struct Running {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    /// The run's counters (processed, dead-lettered, retries ...).
    pub stats: std::sync::Arc<consumer::stats::Stats>,
}

impl Running {
    pub fn start(config: consumer::Config) -> Self {
        Self::start_with(config, consumer::DefaultProcessor)
    }

    pub fn start_with<P: consumer::Processor>(config: consumer::Config, processor: P) -> Self {
        let shutdown = CancellationToken::new();
        let stats = std::sync::Arc::new(consumer::stats::Stats::default());
        let task = tokio::spawn(consumer::run_observed(config, processor, stats.clone(), shutdown.clone()));
        Self { shutdown, task, stats }
    }

    /// Stops the consumer and returns what `run` returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task).await.expect("consumer stops in time").expect("consumer task")
    }
}

/// Offsets committed by `group` on every partition of `topic`, and the end
/// offsets of those partitions.
pub async fn committed_and_end(args: &KafkaArgs, group: &str, topic: &str) -> (HashMap<i32, i64>, HashMap<i32, i64>) {
    let probe = kafka::group_consumer(args, &ConsumerOptions::new(group), GroupContext).expect("probe");
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let partitions = partitions_of(&probe, &topic);
        let committed =
            probe.committed_offsets(partitions.clone(), Duration::from_secs(10)).expect("committed offsets");
        let committed = committed.elements().iter().map(|e| (e.partition(), committed_offset(e.offset()))).collect();
        let end = partitions
            .elements()
            .iter()
            .map(|e| {
                let high =
                    probe.fetch_watermarks(&topic, e.partition(), Duration::from_secs(10)).expect("watermarks").1;
                (e.partition(), high)
            })
            .collect();
        (committed, end)
    })
    .await
    .unwrap()
}

/// Events below the group's committed offsets, summed over the partitions
/// of `topic`: how many a restarted group will not read again.
pub async fn committed_total(args: &KafkaArgs, group: &str, topic: &str) -> i64 {
    committed_and_end(args, group, topic).await.0.values().sum()
}

/// Every partition of `topic`, as the probe's metadata lists them
/// (blocking).
fn partitions_of(probe: &kafka::GroupConsumer, topic: &str) -> TopicPartitionList {
    let metadata = probe.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut partitions = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        partitions.add_partition(topic, p.id());
    }
    partitions
}

/// A committed offset as a count of events: none committed is 0.
fn committed_offset(offset: Offset) -> i64 {
    match offset {
        Offset::Offset(o) => o,
        _ => 0,
    }
}

/// Waits until the group has committed more than `floor` events of `topic`,
/// and returns the committed total: a running consumer commits as it goes,
/// not only when it stops.
///
/// One probe asks every 10 ms. The kill tests time their kills around
/// this wait, and a restarted consumer works off its backlog at tens of
/// thousands of events a second: a new probe per look with a growing pause
/// let it run 16,000 events past a kill point, until a run of five kills
/// found every event answered before the last one.
pub async fn wait_for_commit_above(args: &KafkaArgs, group: &str, topic: &str, floor: i64) -> i64 {
    let probe = kafka::group_consumer(args, &ConsumerOptions::new(group), GroupContext).expect("probe");
    let (group, topic) = (group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let partitions = partitions_of(&probe, &topic);
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let committed =
                probe.committed_offsets(partitions.clone(), Duration::from_secs(10)).expect("committed offsets");
            let total: i64 = committed.elements().iter().map(|e| committed_offset(e.offset())).sum();
            if total > floor {
                return total;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {DEADLINE:?} waiting for group {group} to commit beyond {floor} events (at {total})"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .unwrap_or_else(|failed| std::panic::resume_unwind(failed.into_panic()))
}

/// Checks one kill against what the results show afterwards, and returns
/// how many events it replayed. `before` are the distinct events with a
/// result stamped before the kill, `committed` the group's committed total
/// read after it (a dead process commits nothing more), `replayed` the
/// events of `before` that got another result after the kill.
///
/// A commit never runs ahead of the results (at-least-once), and only
/// work done but not yet committed is replayed: `replayed <= before -
/// committed`, which a consumer that restarts from an older offset (or
/// from zero) breaks.
pub fn check_replays(kill: usize, before: usize, committed: i64, replayed: usize) {
    let before = before as i64;
    assert!(committed > 0, "kill {kill}: nothing committed while the process ran");
    assert!(committed <= before, "kill {kill}: {committed} events committed but only {before} had results");
    assert!(
        replayed as i64 <= before - committed,
        "kill {kill}: {replayed} events replayed, more than the {} processed but not committed",
        before - committed
    );
}

/// Starts the real `consumer` binary as a child process (two workers, a
/// short session timeout so a killed process's partitions move on quickly),
/// its stderr in the file `log`. Killed when dropped.
pub fn start_binary(args: &KafkaArgs, group: &str, log: &std::path::Path) -> tokio::process::Child {
    let log = std::fs::File::create(log).expect("log file");
    tokio::process::Command::new(env!("CARGO_BIN_EXE_consumer"))
        .env("KAFKA_BROKERS", &args.brokers)
        .env("EVENTS_TOPIC", &args.topics.events)
        .env("RESULTS_TOPIC", &args.topics.results)
        .env("DLQ_TOPIC", &args.topics.dlq)
        .env("CREATE_TOPICS", "true")
        .env("CONSUMER_GROUP", group)
        .env("WORKERS", "2")
        .env("SESSION_TIMEOUT", "6s")
        .env("STATS_INTERVAL", "1s")
        // Commits five times a second instead of once: a run here takes
        // about a second, and a kill must land with committed work behind
        // it and uncommitted work ahead.
        .env("KAFKA_PROPERTIES", "auto.commit.interval.ms=200")
        .env_remove("METRICS_ADDR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start the consumer binary")
}
