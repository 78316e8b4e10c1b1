//! Result routing: one reader of the results topic per process, fanning
//! each result out to the subscribers of its stream.
//!
//! Only open streams (those in the registry) have a slot; results for any
//! other key are counted and dropped, so nothing is buffered for streams
//! nobody can watch. Each slot keeps the last `recent` results for the
//! plain JSON view. Each subscriber (a WebSocket or SSE connection) has its
//! own bounded mailbox: when a slow reader lets it fill, the oldest result
//! is dropped and the reader is told how many it missed. Routing never
//! waits for a subscriber, so one slow client cannot delay another stream.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use serde::Deserialize;
use serde_json::value::RawValue;
use stream_core::kafka::{self, PartitionWatch, StartFrom, TracingContext};
use stream_core::schema::{EventResult, Timestamp};
use stream_core::KafkaArgs;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One result as it is delivered: the record's JSON exactly as the
/// consumer wrote it, and its frame, built once and shared by every
/// subscriber.
#[derive(Debug)]
pub struct Delivered {
    /// The result record's value (an [`EventResult`] object).
    pub result: Box<RawValue>,
    /// `{"type":"result", ...the result's fields}`.
    pub frame: Utf8Bytes,
}

/// The fields of a result the router itself needs; the rest (above all the
/// output, of any size) is passed through as bytes, never parsed into a
/// tree and written again.
#[derive(Deserialize)]
struct ResultHead<'a> {
    #[allow(dead_code)]
    event_id: &'a RawValue,
    #[serde(default, borrow)]
    stream_id: Option<Cow<'a, str>>,
    event_time: Timestamp,
}

impl Delivered {
    /// A delivered result from a result record's value; `None` if the value
    /// is not a result object. Also returns the stream id the result names
    /// and its event time.
    pub fn parse(value: &[u8]) -> Option<(Self, Option<String>, Timestamp)> {
        let head: ResultHead<'_> = serde_json::from_slice(value).ok()?;
        let stream_id = head.stream_id.map(Cow::into_owned);
        let event_time = head.event_time;
        let raw: Box<RawValue> = serde_json::from_slice(value).ok()?;
        Some((Self::from_raw(raw)?, stream_id, event_time))
    }

    /// The frame of a result object: its own text with `"type":"result"`
    /// put in front of its first field.
    fn from_raw(result: Box<RawValue>) -> Option<Self> {
        let text = result.get();
        let body = text.strip_prefix('{')?.trim_start();
        let mut frame = String::with_capacity(text.len() + 17);
        frame.push_str("{\"type\":\"result\"");
        if !body.starts_with('}') {
            frame.push(',');
        }
        frame.push_str(body);
        Some(Self { result, frame: frame.into() })
    }

    /// A delivered result from a result value (tests, and results built here).
    pub fn new(result: &EventResult) -> Self {
        let raw = serde_json::value::to_raw_value(result).expect("results serialise");
        Self::from_raw(raw).expect("a result is a JSON object")
    }
}

/// What a subscriber reads next.
#[derive(Debug)]
pub enum Next {
    Result(Arc<Delivered>),
    /// This many results were dropped because the mailbox was full.
    Dropped(u64),
    /// The stream was closed (deleted); no more results will come.
    Closed(&'static str),
}

#[derive(Default)]
struct MailboxState {
    items: VecDeque<Arc<Delivered>>,
    dropped: u64,
    closed: Option<&'static str>,
}

/// A subscriber's bounded queue.
pub struct Mailbox {
    state: Mutex<MailboxState>,
    notify: Notify,
    capacity: usize,
}

impl Mailbox {
    fn push(&self, item: Arc<Delivered>) {
        {
            let mut state = self.state.lock().expect("mailbox lock");
            if state.items.len() >= self.capacity {
                state.items.pop_front();
                state.dropped += 1;
                metrics::counter!("results_dropped_total").increment(1);
            }
            state.items.push_back(item);
        }
        self.notify.notify_one();
    }

    fn close(&self, reason: &'static str) {
        self.state.lock().expect("mailbox lock").closed = Some(reason);
        self.notify.notify_one();
    }

    /// The next item, waiting if there is none. A drop notice comes before
    /// the results that follow the gap; queued results come before a close.
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut state = self.state.lock().expect("mailbox lock");
                if state.dropped > 0 {
                    return Next::Dropped(std::mem::take(&mut state.dropped));
                }
                if let Some(item) = state.items.pop_front() {
                    return Next::Result(item);
                }
                if let Some(reason) = state.closed {
                    return Next::Closed(reason);
                }
            }
            // A notify_one before this point leaves a permit, so no wake-up
            // between the check and the wait is lost.
            self.notify.notified().await;
        }
    }
}

#[derive(Default)]
struct Slot {
    recent: VecDeque<Arc<Delivered>>,
    subscribers: Vec<Arc<Mailbox>>,
}

/// Open streams and their subscribers.
pub struct Hub {
    slots: Mutex<HashMap<String, Slot>>,
    mailbox_capacity: usize,
    recent: usize,
}

impl Hub {
    pub fn new(mailbox_capacity: usize, recent: usize) -> Arc<Self> {
        Arc::new(Self { slots: Mutex::new(HashMap::new()), mailbox_capacity: mailbox_capacity.max(1), recent })
    }

    /// Makes room for a stream's results (the stream was started).
    pub fn open(&self, stream: &str) {
        self.slots.lock().expect("hub lock").entry(stream.to_owned()).or_default();
    }

    /// Forgets a stream and ends its subscriptions with `reason`.
    pub fn close(&self, stream: &str, reason: &'static str) {
        if let Some(slot) = self.slots.lock().expect("hub lock").remove(stream) {
            for mailbox in slot.subscribers {
                mailbox.close(reason);
            }
        }
    }

    /// Delivers a result to its stream's subscribers; false if the stream
    /// is not open here.
    pub fn route(&self, stream: &str, delivered: Arc<Delivered>) -> bool {
        let mut slots = self.slots.lock().expect("hub lock");
        let Some(slot) = slots.get_mut(stream) else {
            return false;
        };
        if self.recent > 0 {
            if slot.recent.len() >= self.recent {
                slot.recent.pop_front();
            }
            slot.recent.push_back(delivered.clone());
        }
        for mailbox in &slot.subscribers {
            mailbox.push(delivered.clone());
        }
        true
    }

    /// A new subscription to `stream`, or `None` if it is not open.
    pub fn subscribe(self: &Arc<Self>, stream: &str) -> Option<Subscription> {
        let mailbox = Arc::new(Mailbox {
            state: Mutex::new(MailboxState::default()),
            notify: Notify::new(),
            capacity: self.mailbox_capacity,
        });
        self.slots.lock().expect("hub lock").get_mut(stream)?.subscribers.push(mailbox.clone());
        Some(Subscription { hub: self.clone(), stream: stream.to_owned(), mailbox })
    }

    /// The most recent results of `stream`, oldest first.
    pub fn recent(&self, stream: &str) -> Vec<Arc<Delivered>> {
        self.slots
            .lock()
            .expect("hub lock")
            .get(stream)
            .map(|slot| slot.recent.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Open subscriptions, all streams together.
    pub fn subscribers(&self) -> usize {
        self.slots.lock().expect("hub lock").values().map(|s| s.subscribers.len()).sum()
    }
}

/// A live subscription; dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<Hub>,
    stream: String,
    mailbox: Arc<Mailbox>,
}

impl Subscription {
    pub async fn next(&self) -> Next {
        self.mailbox.next().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(slot) = self.hub.slots.lock().expect("hub lock").get_mut(&self.stream) {
            slot.subscribers.retain(|m| !Arc::ptr_eq(m, &self.mailbox));
        }
    }
}

/// Logs a reader's first error of an outage as a warning and the repeats
/// (librdkafka reports one every few hundred ms while a broker is down) at
/// debug, then says when reading works again.
#[derive(Default)]
pub(crate) struct ReaderHealth {
    failing: bool,
}

impl ReaderHealth {
    pub(crate) fn failed(&mut self, topic: &str, err: &rdkafka::error::KafkaError) {
        if self.failing {
            tracing::debug!(topic, %err, "reader still failing");
        } else {
            tracing::warn!(topic, %err, "reader error; retrying until the broker answers");
            self.failing = true;
        }
    }

    pub(crate) fn ok(&mut self, topic: &str) {
        if std::mem::take(&mut self.failing) {
            tracing::info!(topic, "reader recovered");
        }
    }
}

/// The pace of a reader's looks for new partitions; a slow look delays the
/// next one rather than bunching them up.
pub(crate) fn partition_check() -> tokio::time::Interval {
    let mut interval = tokio::time::interval(kafka::PARTITION_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// Assigns partitions added to a reader's topic since the last look; a
/// failed look is retried at the next one.
pub(crate) async fn watch_partitions(
    consumer: &Arc<StreamConsumer<TracingContext>>,
    partitions: &Arc<PartitionWatch>,
    timeout: Duration,
) {
    let (consumer, partitions) = (consumer.clone(), partitions.clone());
    let outcome = tokio::task::spawn_blocking(move || partitions.refresh(&consumer, timeout)).await;
    if let Ok(Err(err)) = outcome {
        tracing::debug!(%err, "could not look for new partitions; trying again later");
    }
}

/// The process's one reader of the results topic, positioned at the end
/// of every partition as of start-up: results written after
/// [`ResultsReader::start`] returns are all seen.
pub struct ResultsReader {
    consumer: Arc<StreamConsumer<TracingContext>>,
    topic: String,
    partitions: Arc<PartitionWatch>,
    timeout: Duration,
}

impl ResultsReader {
    /// Assigns every partition at its current high watermark
    /// ([`kafka::assign_at_end`]).
    pub async fn start(args: &KafkaArgs) -> anyhow::Result<Self> {
        let consumer = kafka::reader(args, StartFrom::Latest)?;
        let topic = args.topics.results.clone();
        let timeout = args.connect_timeout;
        let (consumer, assigned) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let assigned = kafka::assign_at_end(&consumer, &topic, timeout)?;
            Ok((consumer, assigned))
        })
        .await??;
        let partitions = Arc::new(PartitionWatch::new(&args.topics.results, assigned));
        Ok(Self { consumer: Arc::new(consumer), topic: args.topics.results.clone(), partitions, timeout })
    }

    /// Routes results into `hub` until `stop` is cancelled.
    pub async fn run(self, hub: Arc<Hub>, stop: CancellationToken) {
        let mut health = ReaderHealth::default();
        let mut partition_check = partition_check();
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                _ = partition_check.tick() => {
                    watch_partitions(&self.consumer, &self.partitions, self.timeout).await;
                    continue;
                }
                message = self.consumer.recv() => message,
            };
            let msg = match message {
                Ok(msg) => {
                    health.ok(&self.topic);
                    msg
                }
                Err(err) => {
                    health.failed(&self.topic, &err);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            metrics::counter!("results_received_total").increment(1);
            let Some((delivered, named_stream, event_time)) = msg.payload().and_then(Delivered::parse) else {
                tracing::debug!(partition = msg.partition(), offset = msg.offset(), "skipping a non-result record");
                metrics::counter!("results_unreadable_total").increment(1);
                continue;
            };
            let stream = match msg.key().and_then(|k| std::str::from_utf8(k).ok()) {
                Some(key) => key.to_owned(),
                None => match named_stream {
                    Some(id) => id,
                    // Results of keyless events belong to no stream.
                    None => {
                        metrics::counter!("results_unrouted_total").increment(1);
                        continue;
                    }
                },
            };
            let lag = event_time.until(Timestamp::now());
            if hub.route(&stream, Arc::new(delivered)) {
                metrics::counter!("results_routed_total").increment(1);
                metrics::histogram!("result_delivery_latency_seconds").record(lag.as_secs_f64());
            } else {
                metrics::counter!("results_unrouted_total").increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn result(n: u64) -> Arc<Delivered> {
        Arc::new(Delivered::new(&EventResult {
            event_id: format!("e{n}"),
            stream_id: Some("s".into()),
            event_time: Timestamp::from_micros(1),
            processed_at: Timestamp::from_micros(2),
            worker_id: Some(0),
            latency_us: n,
            output: json!({"n": n}),
            traceparent: None,
        }))
    }

    fn latency(d: &Delivered) -> u64 {
        serde_json::from_str::<EventResult>(d.result.get()).unwrap().latency_us
    }

    #[test]
    fn records_that_are_not_results_are_refused() {
        for bad in [&b"not json"[..], b"[1]", b"{}", b"{\"event_id\": \"e\"}", b"\"text\""] {
            assert!(Delivered::parse(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        let good = serde_json::to_vec(&serde_json::from_str::<EventResult>(result(3).result.get()).unwrap()).unwrap();
        let (delivered, stream, _) = Delivered::parse(&good).unwrap();
        assert_eq!(stream.as_deref(), Some("s"));
        assert_eq!(latency(&delivered), 3);
    }

    #[tokio::test]
    async fn frames_flatten_the_result() {
        let frame: serde_json::Value = serde_json::from_str(result(7).frame.as_str()).unwrap();
        assert_eq!(frame["type"], "result");
        assert_eq!(frame["event_id"], "e7");
        assert_eq!(frame["output"]["n"], 7);
        assert_eq!(frame["stream_id"], "s");
    }

    #[tokio::test]
    async fn a_full_mailbox_drops_the_oldest_and_says_so() {
        let hub = Hub::new(2, 3);
        assert!(hub.subscribe("s").is_none(), "only open streams can be watched");
        hub.open("s");
        let sub = hub.subscribe("s").unwrap();
        for n in 0..5 {
            assert!(hub.route("s", result(n)));
        }
        assert!(matches!(sub.next().await, Next::Dropped(3)));
        for expect in [3, 4] {
            match sub.next().await {
                Next::Result(d) => assert_eq!(latency(&d), expect),
                other => panic!("{other:?}"),
            }
        }
        let recent: Vec<u64> = hub.recent("s").iter().map(|d| latency(d)).collect();
        assert_eq!(recent, [2, 3, 4]);
        hub.close("s", "bye");
        assert!(matches!(sub.next().await, Next::Closed("bye")));
        assert!(!hub.route("s", result(9)), "closed streams buffer nothing");
        assert!(hub.recent("s").is_empty());
    }

    #[tokio::test]
    async fn dropping_a_subscription_unsubscribes() {
        let hub = Hub::new(4, 0);
        hub.open("s");
        let a = hub.subscribe("s").unwrap();
        let b = hub.subscribe("s").unwrap();
        assert_eq!(hub.subscribers(), 2);
        drop(a);
        assert_eq!(hub.subscribers(), 1);
        hub.route("s", result(1));
        assert!(matches!(b.next().await, Next::Result(_)));
        assert!(hub.recent("s").is_empty(), "recent = 0 keeps nothing");
    }
}
