//! Stream ownership, kept in a compacted topic.
//!
//! Each record is keyed by stream id; its value names the owner (the
//! fingerprint of the API key that started the stream), and a tombstone (no
//! value) deletes the stream. Every API process reads the topic from the
//! beginning at boot and keeps following it, so ownership survives restarts
//! and is shared by every replica without any other coordination.
//!
//! Conflicts are settled by the log: the first claim of an id in the topic
//! wins, and a process that writes a claim of a client-chosen id waits until
//! its own reader has applied that offset before it answers, so two replicas
//! starting the same id at the same moment agree on who owns it. An id the
//! server generated cannot collide, so its claim is applied as soon as the
//! broker has acknowledged it ([`Registry::claim_new`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::Offset;
use serde::{Deserialize, Serialize};
use stream_core::kafka::{self, PartitionWatch, Producer, StartFrom, TopicSpec};
use stream_core::schema::Timestamp;
use stream_core::KafkaArgs;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, Seen};
use crate::reader::Follower;
use crate::starting::{Full, StartSlot, Starting};

/// The value of an ownership record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claim {
    /// Fingerprint of the owning API key (never the key itself).
    owner: String,
    /// When the stream was started, for operators.
    created_at: Timestamp,
}

/// Why the registry could not answer; the handlers turn it into HTTP
/// answers (403, 404, 503), so this module knows nothing of HTTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Another API key owns the stream.
    #[error("this stream belongs to another API key")]
    OwnedByAnother,
    /// The stream was never started, or was deleted.
    #[error("unknown stream {0}")]
    Unknown(String),
    /// The topic could not be read or written before the deadline; a
    /// retry may succeed.
    #[error("{0}")]
    Unavailable(String),
}

/// Outcome of [`Registry::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// The stream did not exist and now belongs to the caller.
    Created,
    /// The caller already owned it (a retried start).
    Existing,
}

/// The ownership topic's spec: one partition (ownership changes are rare,
/// and one partition gives every replica the same total order), compacted
/// so only the latest claim per stream is kept.
pub fn topic_spec(name: &str, args: &KafkaArgs) -> TopicSpec {
    let mut spec = TopicSpec::new(name, args);
    spec.partitions = 1;
    spec.config.push(("cleanup.policy".into(), "compact".into()));
    spec
}

/// An open stream: its owner, where the claim that opened it is in the
/// topic (partition, offset), and when it was started.
struct Open {
    owner: Arc<str>,
    claim: (i32, i64),
    opened_at: Timestamp,
}

/// Where each partition of the topic ends: (partition, next offset).
type Ends = Vec<(i32, i64)>;

/// This process's view of the ownership topic.
pub struct Registry {
    streams: RwLock<HashMap<String, Open>>,
    /// Streams open per owner, for the per-key quota; changed under the
    /// `streams` write lock so the two agree.
    per_owner: RwLock<HashMap<Arc<str>, usize>>,
    /// Starts in progress, by owner and stream, not yet applied: counted
    /// against the quota too, so concurrent starts cannot all slip under
    /// it. A stream leaves its owner's starts when its claim is applied, in
    /// the same step as it joins `per_owner`, so it never counts twice.
    starting: Arc<std::sync::Mutex<Starting>>,
    /// Next offset to apply, per partition; waiters watch it.
    applied: watch::Sender<BTreeMap<i32, i64>>,
    /// The last look at the topic's end: its number, in the order looks
    /// began, and what it saw. Looks run one at a time under this lock (see
    /// [`Self::catch_up`]).
    last_look: tokio::sync::Mutex<Option<(u64, Ends)>>,
    /// Looks begun so far; read by a caller as it arrives.
    looks_begun: std::sync::atomic::AtomicU64,
    follower: Follower,
    hub: Arc<Hub>,
    /// Hashes of the last [`RETIRED_IDS`] stream ids deleted: a stream
    /// started again under one of them is told from the earlier stream
    /// by its start time (see [`Hub::open`]).
    retired: std::sync::Mutex<Seen>,
}

/// How many deleted stream ids the registry remembers (about 24 bytes
/// each), so that a stream started again under one of them shows none of
/// the earlier stream's results. Tombstones also leave the topic with
/// compaction (`delete.retention.ms`, a day by default on Kafka), after
/// which a restarted gateway no longer knows the id was used.
pub const RETIRED_IDS: usize = 100_000;

/// A stream id's hash for [`Registry::retired`].
fn id_hash(stream: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(stream)
}

impl Registry {
    /// Connects a reader to `topic` from the beginning. Call [`Self::run`]
    /// to apply records and [`Self::catch_up`] to wait for the backlog.
    pub fn start(args: &KafkaArgs, topic: &str, hub: Arc<Hub>) -> anyhow::Result<Arc<Self>> {
        let consumer = kafka::reader(args, StartFrom::Earliest)?;
        let assigned = kafka::assign_all(&consumer, topic, Offset::Beginning, args.connect_timeout)?;
        Ok(Arc::new(Self {
            streams: RwLock::new(HashMap::new()),
            per_owner: RwLock::new(HashMap::new()),
            starting: Arc::default(),
            applied: watch::Sender::new(BTreeMap::new()),
            last_look: tokio::sync::Mutex::new(None),
            looks_begun: std::sync::atomic::AtomicU64::new(0),
            follower: Follower {
                topic: topic.to_owned(),
                consumer: Arc::new(consumer),
                partitions: Arc::new(PartitionWatch::new(topic, assigned)),
                timeout: args.connect_timeout,
            },
            hub,
            retired: std::sync::Mutex::new(Seen::new(RETIRED_IDS)),
        }))
    }

    /// Applies ownership records until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        self.follower
            .run(&stop, |msg| {
                if let Some(key) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) {
                    self.apply(key, msg.payload(), (msg.partition(), msg.offset()));
                }
                let (partition, next) = (msg.partition(), msg.offset() + 1);
                self.applied.send_modify(|applied| {
                    applied.insert(partition, next);
                });
            })
            .await;
    }

    /// Applies the record of `stream` at `at` (partition, offset).
    fn apply(&self, stream: &str, value: Option<&[u8]>, at: (i32, i64)) {
        let Some(value) = value else {
            self.retired.lock().expect("registry lock").insert(id_hash(stream));
            let mut streams = self.streams.write().expect("registry lock");
            if let Some(Open { owner, .. }) = streams.remove(stream) {
                let mut per_owner = self.per_owner.write().expect("registry lock");
                if let Some(count) = per_owner.get_mut(&owner) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        per_owner.remove(&owner);
                    }
                }
                drop((per_owner, streams));
                self.hub.close(stream, "stream deleted");
                tracing::debug!(stream, "stream deleted");
            }
            return;
        };
        let claim: Claim = match serde_json::from_slice(value) {
            Ok(claim) => claim,
            Err(err) => {
                tracing::warn!(topic = %self.follower.topic, stream, %err, "ignoring an unreadable ownership record");
                return;
            }
        };
        self.insert_first(stream, claim.owner.into(), at, claim.created_at);
    }

    /// First claim wins: a later claim of an open stream lost a race (or is
    /// a retried start by the owner, or this process's own claim applied
    /// ahead of the log) and changes nothing. The owner's starts of the
    /// stream still in progress stop counting as starting: it is open now.
    /// (Another key's start of it keeps its place until it returns.)
    fn insert_first(&self, stream: &str, owner: Arc<str>, claim: (i32, i64), opened_at: Timestamp) {
        let mut streams = self.streams.write().expect("registry lock");
        if !streams.contains_key(stream) {
            // Lock order: streams, starting, per_owner.
            let mut starting = self.starting.lock().expect("registry lock");
            starting.applied(&owner, stream);
            *self.per_owner.write().expect("registry lock").entry(owner.clone()).or_default() += 1;
            drop(starting);
            streams.insert(stream.to_owned(), Open { owner, claim, opened_at });
            // Only an id used before needs its results told apart by time:
            // another processor's results may carry any `event_time`.
            let reused = self.retired.lock().expect("registry lock").contains(id_hash(stream));
            self.hub.open(stream, reused.then_some(opened_at));
        }
    }

    /// The owner of `stream` as this process knows it now.
    pub fn owner_of(&self, stream: &str) -> Option<Arc<str>> {
        self.streams.read().expect("registry lock").get(stream).map(|open| open.owner.clone())
    }

    /// The owner of `stream`, where the claim that opened it is, and when.
    fn opened_by(&self, stream: &str) -> Option<(Arc<str>, (i32, i64), Timestamp)> {
        self.streams
            .read()
            .expect("registry lock")
            .get(stream)
            .map(|open| (open.owner.clone(), open.claim, open.opened_at))
    }

    /// Streams `owner` has open, as this process knows it now.
    pub fn owned_by(&self, owner: &str) -> usize {
        self.per_owner.read().expect("registry lock").get(owner).copied().unwrap_or(0)
    }

    /// A place under the quota for a start of `stream` by `owner`: `Ok(None)`
    /// if the stream is open already (a retried start, or another key's
    /// stream: it needs none), `Err(Full)` if `owner` owns and is starting
    /// `max` streams. The place is held until the start is done, so this
    /// process never lets concurrent starts of one key exceed the quota;
    /// once the claim is applied the stream counts as owned, not as
    /// starting, even while the start still holds its place. A second start
    /// of a stream already starting shares its place.
    pub fn reserve(&self, owner: &Arc<str>, stream: &str, max: usize) -> Result<Option<StartSlot>, Full> {
        // Lock order: streams, starting, per_owner.
        let streams = self.streams.read().expect("registry lock");
        if streams.contains_key(stream) {
            return Ok(None);
        }
        let mut starting = self.starting.lock().expect("registry lock");
        let generation = match starting.joined(owner, stream) {
            Some(generation) => generation,
            None if self.owned_by(owner) + starting.count(owner) >= max => return Err(Full),
            None => starting.start(owner, stream),
        };
        Ok(Some(StartSlot::new(self.starting.clone(), owner.clone(), stream.to_owned(), generation)))
    }

    /// Streams currently open.
    pub fn len(&self) -> usize {
        self.streams.read().expect("registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The owner of `stream`; when it is unknown here, first catches up with
    /// the topic, so a stream started on another replica a moment ago is
    /// found rather than reported missing.
    pub async fn owner_fresh(&self, stream: &str, deadline: Instant) -> Result<Option<Arc<str>>, RegistryError> {
        if let Some(owner) = self.owner_of(stream) {
            return Ok(Some(owner));
        }
        self.catch_up(deadline).await?;
        Ok(self.owner_of(stream))
    }

    /// Waits until everything written to the topic before this call is applied.
    ///
    /// Callers that arrive together share one look at the topic's end (a
    /// watermark query on a blocking thread, about 20 ms on the local
    /// broker): looks run one at a time, and a caller takes the result of
    /// a look that began after it arrived, which saw at least what was
    /// written before then. A flood of requests for unknown streams thus
    /// makes at most two looks at once instead of one blocking thread each.
    pub async fn catch_up(&self, deadline: Instant) -> Result<(), RegistryError> {
        use std::sync::atomic::Ordering;
        let arrived = self.looks_begun.load(Ordering::SeqCst);
        let ends = {
            let Ok(mut last) = tokio::time::timeout_at(deadline, self.last_look.lock()).await else {
                return Err(RegistryError::Unavailable("the stream registry is behind; retry shortly".into()));
            };
            match &*last {
                Some((number, ends)) if *number > arrived => ends.clone(),
                _ => {
                    let number = self.looks_begun.fetch_add(1, Ordering::SeqCst) + 1;
                    let ends = self.look(deadline).await?;
                    *last = Some((number, ends.clone()));
                    ends
                }
            }
        };
        self.wait_applied(&ends, deadline).await
    }

    /// The end of each partition of the topic that has records.
    async fn look(&self, deadline: Instant) -> Result<Ends, RegistryError> {
        let consumer = self.follower.consumer.clone();
        let topic = self.follower.topic.clone();
        let watch = self.follower.partitions.clone();
        let timeout = deadline.saturating_duration_since(Instant::now());
        let ends = tokio::task::spawn_blocking(move || -> Result<Vec<(i32, i64)>, stream_core::Error> {
            // Partitions added since the last look are assigned first, so
            // the wait below never waits on a partition nobody reads.
            let partitions = watch.refresh(&consumer, timeout)?;
            let ends = (0..partitions as i32)
                .map(|p| consumer.fetch_watermarks(&topic, p, timeout).map(|(_, high)| (p, high)))
                .collect::<Result<_, _>>()?;
            Ok(ends)
        })
        .await
        .map_err(|e| RegistryError::Unavailable(format!("watermark task: {e}")))?
        .map_err(|e| RegistryError::Unavailable(format!("cannot read the stream registry's position: {e}")))?;
        Ok(ends.into_iter().filter(|(_, high)| *high > 0).collect())
    }

    async fn wait_applied(&self, targets: &[(i32, i64)], deadline: Instant) -> Result<(), RegistryError> {
        let mut applied = self.applied.subscribe();
        let done = async {
            applied
                .wait_for(|applied| targets.iter().all(|(p, end)| applied.get(p).is_some_and(|next| next >= end)))
                .await
                .is_ok()
        };
        match tokio::time::timeout_at(deadline, done).await {
            Ok(true) => Ok(()),
            _ => Err(RegistryError::Unavailable("the stream registry is behind; retry shortly".into())),
        }
    }

    /// Claims `stream` for `owner`, unless another key holds it.
    pub async fn claim(
        &self,
        producer: &Producer,
        stream: &str,
        owner: &Arc<str>,
        deadline: Instant,
    ) -> Result<Claimed, RegistryError> {
        match self.owner_of(stream) {
            Some(current) if current == *owner => return Ok(Claimed::Existing),
            Some(_) => return Err(RegistryError::OwnedByAnother),
            None => {}
        }
        // Unknown here: the log settles it, with no look at the topic's end
        // first. Every earlier claim of the id is in its partition ahead of
        // ours, so once ours is applied the first claim is known, and with
        // it whether this start created the stream or repeated one made on
        // another replica. (The look, a watermark query on a blocking
        // thread, made a start take 21.6 ms at p50 on the local broker; 3.6
        // without it.)
        let ours = Timestamp::now();
        let (partition, offset) = self.write_claim(producer, stream, owner, ours, deadline).await?;
        self.wait_applied(&[(partition, offset + 1)], deadline).await?;
        // A claim that was not the first is now the latest record of this
        // key, and compaction would keep it: restating the first claim
        // makes the latest record agree with what every reader applied,
        // owner and start time both (replays tell the stream's results
        // from an earlier stream's by that time).
        match self.opened_by(stream) {
            Some((current, claim, _)) if current == *owner && claim == (partition, offset) => Ok(Claimed::Created),
            Some((current, _, opened_at)) if current == *owner => {
                // Started on another replica a moment ago.
                self.write_claim(producer, stream, owner, opened_at, deadline).await?;
                Ok(Claimed::Existing)
            }
            Some((winner, _, opened_at)) => {
                // We lost a race.
                self.write_claim(producer, stream, &winner, opened_at, deadline).await?;
                Err(RegistryError::OwnedByAnother)
            }
            // Deleted between our claim and now: the caller may start again.
            None => Err(RegistryError::Unavailable("the stream was deleted while starting; retry".into())),
        }
    }

    /// Claims a stream id this process has just generated (a random UUID),
    /// which no other claim can name: once the broker has acknowledged the
    /// claim it is applied here directly, without reading it back from the
    /// topic. The answer then costs one produce round trip instead of a
    /// watermark query plus a fetch of the claim (a fetch waits up to
    /// `fetch.wait.max.ms` on a quiet topic). Other replicas learn of the
    /// stream from the log as before.
    pub async fn claim_new(
        &self,
        producer: &Producer,
        stream: &str,
        owner: &Arc<str>,
        deadline: Instant,
    ) -> Result<Claimed, RegistryError> {
        let at = Timestamp::now();
        let claim = self.write_claim(producer, stream, owner, at, deadline).await?;
        self.insert_first(stream, owner.clone(), claim, at);
        Ok(Claimed::Created)
    }

    /// Deletes `stream` (a tombstone), after checking the caller owns it.
    pub async fn delete(
        &self,
        producer: &Producer,
        stream: &str,
        owner: &Arc<str>,
        deadline: Instant,
    ) -> Result<(), RegistryError> {
        match self.owner_fresh(stream, deadline).await? {
            Some(current) if current == *owner => {}
            Some(_) => return Err(RegistryError::OwnedByAnother),
            None => return Err(RegistryError::Unknown(stream.to_owned())),
        }
        let (partition, offset) = self.write(producer, stream, None, deadline).await?;
        self.wait_applied(&[(partition, offset + 1)], deadline).await
    }

    /// Writes a claim of `stream` by `owner`, started at `created_at`.
    async fn write_claim(
        &self,
        producer: &Producer,
        stream: &str,
        owner: &str,
        created_at: Timestamp,
        deadline: Instant,
    ) -> Result<(i32, i64), RegistryError> {
        let claim = Claim { owner: owner.to_owned(), created_at };
        let value = serde_json::to_vec(&claim).expect("claims serialise");
        self.write(producer, stream, Some(&value), deadline).await
    }

    /// Writes one ownership record (a tombstone without `value`) and waits
    /// for the broker's acknowledgement until `deadline`.
    async fn write(
        &self,
        producer: &Producer,
        stream: &str,
        value: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<(i32, i64), RegistryError> {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.follower.topic).key(stream);
        if let Some(value) = value {
            record = record.payload(value);
        }
        let future = producer
            .send_result(record)
            .map_err(|(err, _)| RegistryError::Unavailable(format!("cannot queue the ownership record: {err}")))?;
        match tokio::time::timeout_at(deadline, kafka::delivered(future)).await {
            Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
            Ok(Err((err, _))) => {
                Err(RegistryError::Unavailable(format!("the broker did not accept the ownership record: {err}")))
            }
            Err(_elapsed) => Err(RegistryError::Unavailable(
                "the broker did not acknowledge the ownership record in time; it may or may not have been written"
                    .into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use stream_core::testing;

    use super::*;

    async fn registry() -> Arc<Registry> {
        let args = testing::kafka_args();
        let topic = testing::unique_name("registry-quota");
        testing::create_topic(&args, &topic, 1).await;
        let hub = Hub::new(16, 0, 16);
        tokio::task::spawn_blocking(move || Registry::start(&args, &topic, hub)).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn only_a_stream_id_used_before_tells_results_apart_by_start_time() {
        let registry = registry().await;
        let owner: Arc<str> = "owner".into();
        // The test result's event is at 1 µs, before either start.
        let early = crate::delivered::tests::result(1);
        registry.insert_first("fresh", owner.clone(), (0, 0), Timestamp::from_micros(100));
        assert!(registry.hub.subscribe("fresh").unwrap().is_current(&early), "a first use: any result is its own");
        registry.apply("used", None, (0, 1));
        registry.insert_first("used", owner, (0, 2), Timestamp::from_micros(100));
        assert!(!registry.hub.subscribe("used").unwrap().is_current(&early), "deleted before: an earlier stream's");
    }

    #[tokio::test]
    async fn callers_arriving_together_share_looks_at_the_topic_end() {
        let registry = registry().await;
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let results = futures::future::join_all((0..50).map(|_| registry.catch_up(deadline))).await;
        assert!(results.iter().all(Result::is_ok), "{:?}", results.iter().find(|r| r.is_err()));
        // One look under way as the others arrived, and one begun after.
        let made = registry.looks_begun.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(made, 2, "{made} looks for 50 callers at once");
        // A caller that arrives after both looks ended makes its own: it
        // must see what was written since they were made.
        registry.catch_up(deadline).await.unwrap();
        assert_eq!(registry.looks_begun.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    fn placed(reserved: Result<Option<StartSlot>, Full>) -> StartSlot {
        match reserved {
            Ok(Some(slot)) => slot,
            Ok(None) => panic!("no place taken: the stream is open"),
            Err(Full) => panic!("refused: the quota is full"),
        }
    }

    #[tokio::test]
    async fn a_stream_applied_while_its_start_holds_a_place_counts_once() {
        let registry = registry().await;
        let owner: Arc<str> = "owner".into();
        let first = placed(registry.reserve(&owner, "s1", 2));
        // s1's claim is applied (read back from the log, or by `claim_new`)
        // before its start has returned and let its place go.
        registry.insert_first("s1", owner.clone(), (0, 0), Timestamp::now());
        assert_eq!(registry.owned_by(&owner), 1);
        let second = placed(registry.reserve(&owner, "s2", 2));
        drop(first);
        assert!(matches!(registry.reserve(&owner, "s3", 2), Err(Full)), "s1 owned and s2 starting fill the quota");
        // s2's start failed: its place is free again.
        drop(second);
        let _third = placed(registry.reserve(&owner, "s3", 2));
        let _other = placed(registry.reserve(&"other".into(), "s4", 1));
    }

    #[tokio::test]
    async fn a_start_of_an_open_stream_takes_no_place_even_at_the_quota() {
        let registry = registry().await;
        let owner: Arc<str> = "owner".into();
        registry.insert_first("s1", owner.clone(), (0, 0), Timestamp::now());
        assert!(matches!(registry.reserve(&owner, "s1", 1), Ok(None)), "a retried start is never refused");
        assert!(matches!(registry.reserve(&"other".into(), "s1", 1), Ok(None)), "another key's stream: 403 later");
        assert!(matches!(registry.reserve(&owner, "s2", 1), Err(Full)));
    }

    #[tokio::test]
    async fn concurrent_starts_of_one_stream_share_one_place() {
        let registry = registry().await;
        let owner: Arc<str> = "owner".into();
        let a = placed(registry.reserve(&owner, "s1", 1));
        let b = placed(registry.reserve(&owner, "s1", 1));
        assert!(matches!(registry.reserve(&owner, "s2", 1), Err(Full)));
        drop(a);
        assert!(matches!(registry.reserve(&owner, "s2", 1), Err(Full)), "s1 is still starting");
        drop(b);
        let _s2 = placed(registry.reserve(&owner, "s2", 1));
    }

    #[tokio::test]
    async fn a_key_that_lost_a_stream_holds_its_place_until_its_start_returns() {
        let registry = registry().await;
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let a_start = placed(registry.reserve(&a, "x", 1));
        let b_start = placed(registry.reserve(&b, "x", 1));
        registry.insert_first("x", a.clone(), (0, 0), Timestamp::now());
        assert_eq!((registry.owned_by(&a), registry.owned_by(&b)), (1, 0));
        assert!(matches!(registry.reserve(&b, "y", 1), Err(Full)), "b's start of x has not returned");
        drop(b_start);
        let _y = placed(registry.reserve(&b, "y", 1));
        drop(a_start);
        assert!(matches!(registry.reserve(&a, "z", 1), Err(Full)), "a owns x");
    }

    #[tokio::test]
    async fn a_start_that_returns_late_does_not_free_a_newer_place() {
        let registry = registry().await;
        let owner: Arc<str> = "owner".into();
        let old = placed(registry.reserve(&owner, "x", 1));
        registry.insert_first("x", owner.clone(), (0, 0), Timestamp::now());
        // Deleted (its tombstone applied) and started again while the
        // first start has still not returned.
        registry.apply("x", None, (0, 1));
        assert_eq!(registry.owned_by(&owner), 0);
        let new = placed(registry.reserve(&owner, "x", 1));
        drop(old);
        assert!(matches!(registry.reserve(&owner, "y", 1), Err(Full)), "the new start of x still holds its place");
        drop(new);
        let _y = placed(registry.reserve(&owner, "y", 1));
    }
}
