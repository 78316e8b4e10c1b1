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
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use serde::Deserialize;
use serde_json::value::RawValue;
use stream_core::kafka::{self, PartitionWatch, StartFrom, TracingContext};
use stream_core::schema::{EventResult, Timestamp};
use stream_core::KafkaArgs;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::AppError;
use crate::reader::Follower;

/// Where a record sits in the results topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub partition: i32,
    pub offset: i64,
}

/// A client's place in a stream's results: the next offset to read in
/// the stream's partition. Clients see it as an opaque token,
/// `<partition>-<next offset>-<stream tag>`; the tag (a hash of the stream
/// id) lets a cursor of another stream be refused rather than silently
/// read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub partition: i32,
    pub next: i64,
}

/// Why a cursor was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorError {
    Malformed,
    OtherStream,
}

impl Cursor {
    /// The cursor right after the record at `pos`.
    pub fn after(pos: Pos) -> Self {
        Self { partition: pos.partition, next: pos.offset + 1 }
    }

    /// The token of this cursor on `stream`.
    pub fn encode(&self, stream: &str) -> String {
        let mut text = String::with_capacity(32);
        self.write(stream_tag(stream), &mut text);
        text
    }

    fn write(&self, tag: u32, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(out, "{}-{}-{tag:08x}", self.partition, self.next);
    }

    /// Reads a token given for `stream`.
    pub fn parse(text: &str, stream: &str) -> Result<Self, CursorError> {
        let mut parts = text.split('-');
        let (Some(partition), Some(next), Some(tag), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CursorError::Malformed);
        };
        let number = |s: &str| s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() && s.len() <= 18;
        if !number(partition) || !number(next) || tag.len() != 8 {
            return Err(CursorError::Malformed);
        }
        let partition: i32 = partition.parse().map_err(|_| CursorError::Malformed)?;
        let next: i64 = next.parse().map_err(|_| CursorError::Malformed)?;
        let tag = u32::from_str_radix(tag, 16).map_err(|_| CursorError::Malformed)?;
        if tag != stream_tag(stream) {
            return Err(CursorError::OtherStream);
        }
        Ok(Self { partition, next })
    }
}

/// FNV-1a, 32 bits: ties a cursor to its stream (a check against mixing
/// up cursors, not a secret: ownership is checked on every request).
fn stream_tag(stream: &str) -> u32 {
    stream.bytes().fold(0x811c_9dc5u32, |hash, b| (hash ^ b as u32).wrapping_mul(0x0100_0193))
}

/// FNV-1a, 64 bits, of an event id's JSON text: what per-subscriber
/// deduplication remembers instead of the id itself.
fn event_hash(raw: &str) -> u64 {
    raw.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, b| (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The partition Kafka clients' default (murmur2) partitioner gives `key`
/// among `partitions`: where a stream's results are, for `?from=beginning`.
pub fn partition_of(key: &[u8], partitions: usize) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// Kafka's murmur2 (the Java client's, which librdkafka's `murmur2`
/// partitioner reproduces).
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if tail.len() == 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// One result as it is delivered: the record's JSON exactly as the
/// consumer wrote it, with its type and cursor in front, built once and
/// shared by every subscriber.
#[derive(Debug)]
pub struct Delivered {
    /// `{"type":"result","cursor":"...", ...the result's fields}`.
    pub frame: Utf8Bytes,
    /// Where the result record is, for resuming and for joining a catch-up
    /// read with the live feed without a gap or a repeat.
    pub pos: Pos,
    /// Hash of the result's `event_id`, for deduplication.
    pub event: u64,
    /// Length of the cursor inside the frame.
    cursor_len: u8,
}

const FRAME_HEAD: &str = "{\"type\":\"result\",\"cursor\":\"";

/// The fields of a result the router itself needs; the rest (above all the
/// output, of any size) is passed through as bytes, never parsed into a
/// tree and written again.
#[derive(Deserialize)]
struct ResultHead<'a> {
    #[serde(borrow)]
    event_id: &'a RawValue,
    #[serde(default, borrow)]
    stream_id: Option<Cow<'a, str>>,
    event_time: Timestamp,
}

/// A result record read and framed, with the stream it belongs to.
#[derive(Debug)]
pub struct Decoded {
    pub delivered: Delivered,
    pub stream: String,
    pub event_time: Timestamp,
}

/// Why a record was not routed.
#[derive(Debug, PartialEq, Eq)]
pub enum Undecodable {
    /// Not a result object.
    NotAResult,
    /// Neither a key nor a `stream_id`: it belongs to no stream.
    NoStream,
}

impl Delivered {
    /// A result record's value framed for delivery, with the stream it
    /// belongs to: the record key, else the result's `stream_id`.
    pub fn decode(value: &[u8], key: Option<&[u8]>, pos: Pos) -> Result<Decoded, Undecodable> {
        let head: ResultHead<'_> = serde_json::from_slice(value).map_err(|_| Undecodable::NotAResult)?;
        let stream = match key.and_then(|k| std::str::from_utf8(k).ok()) {
            Some(key) => key.to_owned(),
            None => head.stream_id.map(Cow::into_owned).ok_or(Undecodable::NoStream)?,
        };
        // serde_json has checked the whole value is one JSON document; the
        // bytes outside strings are ASCII, and strings it skipped are
        // checked here.
        let text = std::str::from_utf8(value).map_err(|_| Undecodable::NotAResult)?.trim_ascii();
        let delivered =
            Self::frame(text, &stream, pos, event_hash(head.event_id.get())).ok_or(Undecodable::NotAResult)?;
        Ok(Decoded { delivered, stream, event_time: head.event_time })
    }

    /// The frame of a result object: its own text with `"type":"result"`
    /// and its cursor put in front of its first field.
    fn frame(text: &str, stream: &str, pos: Pos, event: u64) -> Option<Self> {
        let body = text.strip_prefix('{')?.trim_start();
        let mut frame = String::with_capacity(text.len() + FRAME_HEAD.len() + 40);
        frame.push_str(FRAME_HEAD);
        Cursor::after(pos).write(stream_tag(stream), &mut frame);
        let cursor_len = (frame.len() - FRAME_HEAD.len()) as u8;
        frame.push('"');
        if !body.starts_with('}') {
            frame.push(',');
        }
        frame.push_str(body);
        Some(Self { frame: frame.into(), pos, event, cursor_len })
    }

    /// A delivered result from a result value (tests, and results built here).
    pub fn new(result: &EventResult, pos: Pos) -> Self {
        let text = serde_json::to_string(result).expect("results serialise");
        let event = serde_json::to_string(&result.event_id).expect("ids serialise");
        let stream = result.stream_id.as_deref().unwrap_or_default();
        Self::frame(&text, stream, pos, event_hash(&event)).expect("a result is a JSON object")
    }

    /// This result's cursor: a client that has it resumes right after it.
    pub fn cursor(&self) -> &str {
        &self.frame.as_str()[FRAME_HEAD.len()..FRAME_HEAD.len() + self.cursor_len as usize]
    }
}

/// What a subscriber reads next.
#[derive(Debug)]
pub enum Next {
    Result(Arc<Delivered>),
    /// Results were dropped because the mailbox was full, the first of
    /// them at `from`; they are still in the log.
    Dropped {
        count: u64,
        from: Pos,
    },
    /// The stream was closed (deleted); no more results will come.
    Closed(&'static str),
}

#[derive(Default)]
struct MailboxState {
    items: VecDeque<Arc<Delivered>>,
    dropped: u64,
    /// The first result dropped since the last look.
    first_dropped: Option<Pos>,
    closed: Option<&'static str>,
}

/// A subscriber's bounded queue. Kept rather than a `tokio::sync::broadcast`
/// per stream: a lagging broadcast receiver learns how many results it
/// missed but not where the first one sat in the partition, which is where
/// its feed must start reading the log; the mailbox records that position
/// (and why the stream closed).
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
                if let Some(oldest) = state.items.pop_front() {
                    state.first_dropped.get_or_insert(oldest.pos);
                }
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

    /// Forgets what is queued and dropped: the caller reads it from the
    /// log instead. Whether the stream was closed is kept.
    fn reset(&self) {
        let mut state = self.state.lock().expect("mailbox lock");
        state.items.clear();
        state.dropped = 0;
        state.first_dropped = None;
    }

    /// Whether anything was dropped since the last reset or look.
    fn overflowed(&self) -> bool {
        self.state.lock().expect("mailbox lock").first_dropped.is_some()
    }

    fn closed(&self) -> Option<&'static str> {
        self.state.lock().expect("mailbox lock").closed
    }

    /// The next item, waiting if there is none. A drop notice comes before
    /// the results that follow the gap; queued results come before a close.
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut state = self.state.lock().expect("mailbox lock");
                if let Some(from) = state.first_dropped.take() {
                    return Next::Dropped { count: std::mem::take(&mut state.dropped), from };
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

struct Slot {
    recent: VecDeque<Arc<Delivered>>,
    subscribers: Vec<Arc<Mailbox>>,
    /// Event ids of the stream's last results: a consumer's replay of one
    /// of them is not routed (see [`Hub::new`]).
    seen: Seen,
}

/// Open streams and their subscribers.
pub struct Hub {
    slots: Mutex<HashMap<String, Slot>>,
    mailbox_capacity: usize,
    recent: usize,
    dedup_window: usize,
}

impl Hub {
    /// Subscribers' mailboxes hold `mailbox_capacity` results; each stream
    /// keeps its `recent` last results for the JSON view, and the event
    /// ids of its last `dedup_window` results (8 bytes each, ~24 with the
    /// set's overhead, allocated as results come): a result whose event id
    /// is among them is a consumer's replay and is not routed.
    pub fn new(mailbox_capacity: usize, recent: usize, dedup_window: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::new(HashMap::new()),
            mailbox_capacity: mailbox_capacity.max(1),
            recent,
            dedup_window,
        })
    }

    /// Makes room for a stream's results (the stream was started).
    pub fn open(&self, stream: &str) {
        self.slots.lock().expect("hub lock").entry(stream.to_owned()).or_insert_with(|| Slot {
            recent: VecDeque::new(),
            subscribers: Vec::new(),
            seen: Seen::new(self.dedup_window),
        });
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
        if !slot.seen.insert(delivered.event) {
            metrics::counter!("results_duplicates_skipped_total").increment(1);
            return true;
        }
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

/// The event-id hashes of the last `cap` results, oldest evicted first.
pub(crate) struct Seen {
    set: HashSet<u64, BuildHasherDefault<IdHasher>>,
    order: VecDeque<u64>,
    cap: usize,
}

impl Seen {
    pub(crate) fn new(cap: usize) -> Self {
        Self { set: HashSet::default(), order: VecDeque::new(), cap }
    }

    /// False if `id` is remembered already.
    pub(crate) fn insert(&mut self, id: u64) -> bool {
        if self.cap == 0 {
            return true;
        }
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.set.contains(&id)
    }
}

/// The ids are hashes already; hashing them again buys nothing.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
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

    /// Empties the queue (see [`Mailbox::reset`]).
    pub fn reset(&self) {
        self.mailbox.reset()
    }

    /// Whether results were dropped since the last reset.
    pub fn overflowed(&self) -> bool {
        self.mailbox.overflowed()
    }

    /// Why the stream was closed, once it is.
    pub fn closed(&self) -> Option<&'static str> {
        self.mailbox.closed()
    }

    /// The stream this subscription watches.
    pub fn stream(&self) -> &str {
        &self.stream
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(slot) = self.hub.slots.lock().expect("hub lock").get_mut(&self.stream) {
            slot.subscribers.retain(|m| !Arc::ptr_eq(m, &self.mailbox));
        }
    }
}

/// The process's one reader of the results topic, positioned at the end
/// of every partition as of start-up: results written after
/// [`ResultsReader::start`] returns are all seen.
pub struct ResultsReader {
    follower: Follower,
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
        let topic = args.topics.results.clone();
        Ok(Self { follower: Follower { topic, consumer: Arc::new(consumer), partitions, timeout } })
    }

    /// The log behind this reader, for clients that read from a cursor.
    pub fn log(&self, args: &KafkaArgs, timeout: Duration) -> Arc<ResultsLog> {
        Arc::new(ResultsLog {
            args: args.clone(),
            topic: self.follower.topic.clone(),
            consumer: self.follower.consumer.clone(),
            partitions: self.follower.partitions.clone(),
            timeout,
        })
    }

    /// Routes results into `hub` until `stop` is cancelled.
    pub async fn run(self, hub: Arc<Hub>, stop: CancellationToken) {
        self.follower.run(&stop, |msg| route(&hub, msg)).await;
    }
}

/// Hands one record of the results topic to its stream's subscribers.
fn route(hub: &Hub, msg: &BorrowedMessage<'_>) {
    metrics::counter!("results_received_total").increment(1);
    let pos = Pos { partition: msg.partition(), offset: msg.offset() };
    let value = msg.payload().unwrap_or_default();
    let Decoded { delivered, stream, event_time } = match Delivered::decode(value, msg.key(), pos) {
        Ok(decoded) => decoded,
        Err(Undecodable::NotAResult) => {
            tracing::debug!(partition = pos.partition, offset = pos.offset, "skipping a non-result record");
            metrics::counter!("results_unreadable_total").increment(1);
            return;
        }
        // Results of keyless events belong to no stream.
        Err(Undecodable::NoStream) => {
            metrics::counter!("results_unrouted_total").increment(1);
            return;
        }
    };
    let lag = event_time.until(Timestamp::now());
    if hub.route(&stream, Arc::new(delivered)) {
        metrics::counter!("results_routed_total").increment(1);
        metrics::histogram!("result_delivery_latency_seconds").record(lag.as_secs_f64());
    } else {
        metrics::counter!("results_unrouted_total").increment(1);
    }
}

/// The results topic as a log clients read from a position: resumed
/// subscribers and subscribers that fell behind the live feed.
pub struct ResultsLog {
    args: KafkaArgs,
    topic: String,
    /// The live reader's client, for watermark queries (no second client
    /// per process for that).
    consumer: Arc<StreamConsumer<TracingContext>>,
    partitions: Arc<PartitionWatch>,
    timeout: Duration,
}

impl ResultsLog {
    /// The partition holding `stream`'s results.
    pub fn partition_of(&self, stream: &str) -> i32 {
        partition_of(stream.as_bytes(), self.partitions.known())
    }

    /// Partitions of the topic as this process reads them.
    pub fn partitions(&self) -> usize {
        self.partitions.known()
    }

    /// The oldest retained offset and the next offset to be written of
    /// `partition`.
    pub async fn watermarks(&self, partition: i32) -> Result<(i64, i64), AppError> {
        let (consumer, topic, timeout) = (self.consumer.clone(), self.topic.clone(), self.timeout);
        tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&topic, partition, timeout))
            .await
            .map_err(|e| AppError::Internal(format!("watermark task: {e}")))?
            .map_err(|e| AppError::unavailable(format!("cannot read the results topic's position: {e}")))
    }

    /// A reader of `partition` from `offset`, for one connection while it
    /// catches up.
    pub async fn open(&self, partition: i32, offset: i64) -> Result<StreamConsumer<TracingContext>, AppError> {
        let (args, topic) = (self.args.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || kafka::partition_reader(&args, &topic, partition, offset))
            .await
            .map_err(|e| AppError::Internal(format!("reader task: {e}")))?
            .map_err(|e| AppError::unavailable(format!("cannot read the results topic: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn result(n: u64) -> Arc<Delivered> {
        Arc::new(Delivered::new(
            &EventResult {
                event_id: format!("e{n}"),
                stream_id: Some("s".into()),
                event_time: Timestamp::from_micros(1),
                processed_at: Timestamp::from_micros(2),
                worker_id: Some(0),
                latency_us: n,
                output: json!({"n": n}),
                traceparent: None,
            },
            Pos { partition: 1, offset: n as i64 },
        ))
    }

    fn latency(d: &Delivered) -> u64 {
        serde_json::from_str::<EventResult>(d.frame.as_str()).unwrap().latency_us
    }

    #[test]
    fn records_that_are_not_results_are_refused() {
        let pos = Pos { partition: 0, offset: 0 };
        for bad in [&b"not json"[..], b"[1]", b"{}", b"{\"event_id\": \"e\"}", b"\"text\"", b"[\"e\", \"s\", 1]"] {
            assert_eq!(Delivered::decode(bad, Some(b"s"), pos).unwrap_err(), Undecodable::NotAResult);
        }
        let good = serde_json::to_vec(&serde_json::from_str::<EventResult>(result(3).frame.as_str()).unwrap()).unwrap();
        let decoded = Delivered::decode(&good, None, pos).unwrap();
        assert_eq!(decoded.stream, "s");
        assert_eq!(latency(&decoded.delivered), 3);
        assert_eq!(Delivered::decode(&good, Some(b"key"), pos).unwrap().stream, "key", "the key wins");
        let keyless = br#"{"event_id":"e","event_time":"2025-01-01T00:00:00Z"}"#;
        assert_eq!(Delivered::decode(keyless, None, pos).unwrap_err(), Undecodable::NoStream);
    }

    #[tokio::test]
    async fn frames_flatten_the_result_behind_its_cursor() {
        let delivered = result(7);
        let frame: serde_json::Value = serde_json::from_str(delivered.frame.as_str()).unwrap();
        assert_eq!(frame["type"], "result");
        assert_eq!(frame["event_id"], "e7");
        assert_eq!(frame["output"]["n"], 7);
        assert_eq!(frame["stream_id"], "s");
        assert_eq!(frame["cursor"], delivered.cursor());
        assert_eq!(Cursor::parse(delivered.cursor(), "s"), Ok(Cursor { partition: 1, next: 8 }));
        assert_eq!(delivered.event, result(7).event, "the same event id, the same hash");
        assert_ne!(delivered.event, result(8).event);
    }

    #[test]
    fn cursors_name_a_stream_and_a_position() {
        let cursor = Cursor { partition: 2, next: 41 };
        let text = cursor.encode("orders");
        assert_eq!(Cursor::parse(&text, "orders"), Ok(cursor));
        assert_eq!(Cursor::parse(&text, "other"), Err(CursorError::OtherStream));
        for bad in
            ["", "x", "1-2", "1-2-3", "-1-2-00000000", "1--2-00000000", "a-2-00000000", "1-2-0000000g", "1-2-3-4-5"]
        {
            assert_eq!(Cursor::parse(bad, "orders"), Err(CursorError::Malformed), "{bad:?}");
        }
        assert_eq!(Cursor::parse("99999999999-1-00000000", "s"), Err(CursorError::Malformed));
    }

    #[test]
    fn murmur2_is_kafkas() {
        // Kafka's own test vectors (UtilsTest.testMurmur2).
        for (key, hash) in [
            (&b"21"[..], -973932308i32),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
        ] {
            assert_eq!(murmur2(key) as i32, hash, "{}", String::from_utf8_lossy(key));
        }
    }

    #[tokio::test]
    async fn a_full_mailbox_drops_the_oldest_and_says_so() {
        let hub = Hub::new(2, 3, 100);
        assert!(hub.subscribe("s").is_none(), "only open streams can be watched");
        hub.open("s");
        let sub = hub.subscribe("s").unwrap();
        for n in 0..5 {
            assert!(hub.route("s", result(n)));
        }
        match sub.next().await {
            Next::Dropped { count: 3, from } => assert_eq!(from, Pos { partition: 1, offset: 0 }),
            other => panic!("{other:?}"),
        }
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

    #[test]
    fn seen_forgets_the_oldest_beyond_its_window() {
        let mut seen = Seen::new(2);
        assert!(seen.insert(1) && seen.insert(2));
        assert!(!seen.insert(1) && !seen.insert(2));
        assert!(seen.insert(3));
        assert!(seen.insert(1), "1 left the window when 3 came");
        assert!(!seen.insert(3));
        let mut off = Seen::new(0);
        assert!(off.insert(1) && off.insert(1));
    }

    #[tokio::test]
    async fn a_replayed_result_is_not_routed() {
        let hub = Hub::new(8, 8, 100);
        hub.open("s");
        let sub = hub.subscribe("s").unwrap();
        for n in [1, 2, 1, 3] {
            assert!(hub.route("s", result(n)));
        }
        for expect in [1, 2, 3] {
            match sub.next().await {
                Next::Result(d) => assert_eq!(latency(&d), expect),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(hub.recent("s").len(), 3);
    }

    #[tokio::test]
    async fn dropping_a_subscription_unsubscribes() {
        let hub = Hub::new(4, 0, 100);
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
