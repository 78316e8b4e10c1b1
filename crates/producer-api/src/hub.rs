//! Result fan-out: per open stream, its subscribers' bounded mailboxes and
//! its most recent results.
//!
//! Only open streams (those in the registry) have a slot; results for any
//! other key are counted and dropped, so nothing is buffered for streams
//! nobody can watch. Each slot keeps the last `recent` results for the
//! plain JSON view. Each subscriber (a WebSocket or SSE connection) has its
//! own bounded mailbox: when a slow reader lets it fill, the oldest result
//! is dropped and the reader is told from where (its feed then reads the
//! log). Routing never waits for a subscriber, so one slow client cannot
//! delay another stream.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};

use stream_core::schema::Timestamp;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cursor::Pos;
use crate::delivered::Delivered;

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
    /// The stream's last send through this gateway whose result has not
    /// come yet, and until when a plain JSON read waits for it.
    awaited: Option<(u64, Instant)>,
    /// When the stream was started, if its id was used before (see
    /// [`Hub::open`]).
    opened_at: Option<Timestamp>,
}

/// Open streams and their subscribers.
pub struct Hub {
    slots: Mutex<HashMap<String, Slot>>,
    mailbox_capacity: usize,
    recent: usize,
    dedup_window: usize,
    /// Woken when an awaited send's result comes (see [`Hub::sent`]).
    settled: Notify,
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
            settled: Notify::new(),
        })
    }

    /// Makes room for a stream's results. With `opened_at` (the stream's
    /// id was used before: the stream was started then), results of
    /// events from before then are an earlier stream's, deleted since,
    /// perhaps by another key: they are not routed here nor replayed (see
    /// [`Hub::route`], [`Subscription::is_current`]).
    pub fn open(&self, stream: &str, opened_at: Option<Timestamp>) {
        self.slots.lock().expect("hub lock").entry(stream.to_owned()).or_insert_with(|| Slot {
            recent: VecDeque::new(),
            subscribers: Vec::new(),
            seen: Seen::new(self.dedup_window),
            awaited: None,
            opened_at,
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
    /// is not open here. A result of an event from before the stream was
    /// started belongs to an earlier stream of the same id and is dropped.
    pub fn route(&self, stream: &str, delivered: Arc<Delivered>) -> bool {
        let mut slots = self.slots.lock().expect("hub lock");
        let Some(slot) = slots.get_mut(stream) else {
            return false;
        };
        if slot.opened_at.is_some_and(|opened| delivered.event_time.is_some_and(|at| at < opened)) {
            metrics::counter!("results_of_earlier_streams_skipped_total").increment(1);
            return true;
        }
        if slot.awaited.is_some_and(|(event, _)| event == delivered.event) {
            slot.awaited = None;
            self.settled.notify_waiters();
        }
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
        let opened_at = {
            let mut slots = self.slots.lock().expect("hub lock");
            let slot = slots.get_mut(stream)?;
            slot.subscribers.push(mailbox.clone());
            slot.opened_at
        };
        Some(Subscription { hub: self.clone(), stream: stream.to_owned(), mailbox, opened_at })
    }

    /// The most recent results of `stream`, oldest first, at once (tests;
    /// the JSON view reads them with [`recent_after_sends`](Self::recent_after_sends)).
    #[cfg(test)]
    pub fn recent(&self, stream: &str) -> Vec<Arc<Delivered>> {
        self.slots
            .lock()
            .expect("hub lock")
            .get(stream)
            .map(|slot| slot.recent.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Notes that the event with id hash `event` (see
    /// [`event_key`](crate::delivered::event_key)) is being sent to
    /// `stream` through this gateway: until its result comes, or `by`, a
    /// plain JSON read of the stream's results waits for it (see
    /// [`recent_after_sends`](Self::recent_after_sends)). A result already
    /// here (a repeated idempotent send) is not waited for.
    ///
    /// Returns when the stream was started if its id was used before (see
    /// [`Hub::open`]): the event must be timed no earlier.
    pub fn sent(&self, stream: &str, event: u64, by: Instant) -> Option<Timestamp> {
        let mut slots = self.slots.lock().expect("hub lock");
        let slot = slots.get_mut(stream)?;
        // The dedup window holds the last results' ids (the newest result
        // too, for a hub that keeps no window).
        if !slot.seen.contains(event) && slot.recent.back().is_none_or(|d| d.event != event) {
            slot.awaited = Some((event, by));
        }
        slot.opened_at
    }

    /// When `stream` was started, if its id was used before (see
    /// [`Hub::open`]): events sent to it are timed no earlier.
    pub fn opened_at(&self, stream: &str) -> Option<Timestamp> {
        self.slots.lock().expect("hub lock").get(stream)?.opened_at
    }

    /// The send of `event` failed: no result is coming for it.
    pub fn unsent(&self, stream: &str, event: u64) {
        let mut slots = self.slots.lock().expect("hub lock");
        if let Some(slot) = slots.get_mut(stream) {
            if slot.awaited.is_some_and(|(awaited, _)| awaited == event) {
                slot.awaited = None;
                self.settled.notify_waiters();
            }
        }
    }

    /// The most recent results of `stream`, once the result of its last
    /// send through this gateway is among them or its wait is over. A
    /// client that sends and then reads (the seed's clients do) finds its
    /// result without polling: one stream's results come in the order of
    /// its sends, so the last one's result comes after the others'.
    pub async fn recent_after_sends(&self, stream: &str) -> Vec<Arc<Delivered>> {
        loop {
            // Registered before the look, so a result routed between the
            // look and the wait still wakes it.
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let by = {
                let slots = self.slots.lock().expect("hub lock");
                let Some(slot) = slots.get(stream) else {
                    return Vec::new();
                };
                match slot.awaited {
                    Some((_, by)) if Instant::now() < by => by,
                    _ => return slot.recent.iter().cloned().collect(),
                }
            };
            let _ = tokio::time::timeout_at(by, settled).await;
        }
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

/// The ids are hashes already; hashing them again buys nothing. Ten
/// lines, so not worth `nohash-hasher` as a dependency.
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
    opened_at: Option<Timestamp>,
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

    /// Whether a result read from the log is this stream's and not an
    /// earlier one's of the same id (see [`Hub::open`]).
    pub fn is_current(&self, delivered: &Delivered) -> bool {
        self.opened_at.is_none_or(|opened| delivered.event_time.is_none_or(|at| at >= opened))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(slot) = self.hub.slots.lock().expect("hub lock").get_mut(&self.stream) {
            slot.subscribers.retain(|m| !Arc::ptr_eq(m, &self.mailbox));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::delivered::event_key;
    use crate::delivered::tests::{latency, result};

    /// Whether `read` is still waiting after the runtime has run
    /// everything else it can (time is paused: nothing times out).
    async fn still_waiting(read: &tokio::task::JoinHandle<Vec<u64>>) -> bool {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        !read.is_finished()
    }

    fn read_after_sends(hub: &Arc<Hub>) -> tokio::task::JoinHandle<Vec<u64>> {
        let hub = hub.clone();
        tokio::spawn(async move { hub.recent_after_sends("s").await.iter().map(|d| latency(d)).collect() })
    }

    /// A result of an event at `micros` (its latency is `micros` too).
    fn result_at(micros: i64) -> Arc<Delivered> {
        let result = stream_core::schema::EventResult {
            event_id: format!("t{micros}"),
            stream_id: Some("s".into()),
            event_time: Timestamp::from_micros(micros),
            processed_at: Timestamp::from_micros(micros + 1),
            worker_id: None,
            latency_us: micros as u64,
            output: serde_json::json!(null),
            traceparent: None,
        };
        Arc::new(Delivered::new(&result, Pos { partition: 0, offset: micros }))
    }

    #[tokio::test]
    async fn a_stream_started_again_under_a_used_id_gets_only_its_own_results() {
        let hub = Hub::new(8, 8, 100);
        // A first use of an id: results of any time are its own (another
        // processor may write any event_time).
        hub.open("s", None);
        assert!(hub.subscribe("s").unwrap().is_current(&result_at(5)));
        hub.route("s", result_at(5));
        assert_eq!(hub.recent("s").len(), 1);
        hub.close("s", "deleted");

        // Started again at 100: results of earlier events are the earlier
        // stream's.
        hub.open("s", Some(Timestamp::from_micros(100)));
        let sub = hub.subscribe("s").unwrap();
        assert!(!sub.is_current(&result_at(99)), "not replayed");
        assert!(sub.is_current(&result_at(100)));
        assert!(hub.route("s", result_at(99)), "the stream is open");
        hub.route("s", result_at(150));
        match sub.next().await {
            Next::Result(d) => assert_eq!(latency(&d), 150, "the late result of the earlier stream was not routed"),
            other => panic!("{other:?}"),
        }
        let recent: Vec<u64> = hub.recent("s").iter().map(|d| latency(d)).collect();
        assert_eq!(recent, [150]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_plain_read_waits_for_the_result_of_the_last_send() {
        let hub = Hub::new(4, 10, 100);
        hub.open("s", None);
        hub.route("s", result(1));
        assert_eq!(event_key("e2"), result(2).event, "a send's key is its result's");
        let by = Instant::now() + Duration::from_secs(5);
        hub.sent("s", event_key("e2"), by);
        let read = read_after_sends(&hub);
        assert!(still_waiting(&read).await, "the last send has no result yet");
        hub.route("s", result(2));
        assert!(!still_waiting(&read).await, "its result ends the wait, with no time passing");
        assert_eq!(read.await.unwrap(), [1, 2]);

        // A send that failed is not waited for.
        hub.sent("s", event_key("e3"), by);
        let read = read_after_sends(&hub);
        assert!(still_waiting(&read).await);
        hub.unsent("s", event_key("e3"));
        assert!(!still_waiting(&read).await);
        assert_eq!(read.await.unwrap(), [1, 2]);

        // A result that is already here (an idempotent repeat) neither.
        hub.sent("s", event_key("e2"), by);
        assert!(!still_waiting(&read_after_sends(&hub)).await);

        // A result that never comes holds a read until the send's bound.
        hub.sent("s", event_key("e4"), Instant::now() + Duration::from_secs(5));
        let read = read_after_sends(&hub);
        assert!(still_waiting(&read).await);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(still_waiting(&read).await, "4 s of 5");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(read.await.unwrap(), [1, 2]);
        assert!(!still_waiting(&read_after_sends(&hub)).await, "its bound is over for later reads too");

        // A stream deleted while a read waits answers what it had: nothing.
        hub.sent("s", event_key("e5"), Instant::now() + Duration::from_secs(5));
        let read = read_after_sends(&hub);
        assert!(still_waiting(&read).await);
        hub.close("s", "deleted");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(read.await.unwrap().is_empty(), "no slot, no results");
    }

    #[tokio::test]
    async fn a_full_mailbox_drops_the_oldest_and_says_so() {
        let hub = Hub::new(2, 3, 100);
        assert!(hub.subscribe("s").is_none(), "only open streams can be watched");
        hub.open("s", None);
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
        hub.open("s", None);
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
        hub.open("s", None);
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
