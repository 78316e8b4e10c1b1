//! The producer the gateway and the consumer write through: librdkafka's,
//! with each record's delivery report resolved as a future, and the
//! reports served on the Tokio runtime that sends.
//!
//! rdkafka's `FutureProducer` does the same with a polling thread of its
//! own: each report wakes that thread, which wakes every waiting task from
//! outside the runtime and frees each record away from the thread that
//! allocated it. Here librdkafka signals when its report queue stops being
//! empty, and a task on the runtime empties it: one cross-thread wake-up
//! per batch of reports instead of one per record.
//!
//! Records go to librdkafka with its handle of their topic, taken on the
//! first record to that topic ([`super::TopicHandle`]), not by name.

use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::client::Client;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::future_producer::{Delivery, OwnedDeliveryResult};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, FutureRecord, Producer as _, ProducerContext};
use rdkafka::{ClientContext, IntoOpaque};
use tokio::sync::{oneshot, Notify};

use super::context::{log_producer_error, log_to_tracing};
use super::topic::{Produce, TopicHandle};
use crate::error::{Error, Result};

/// How often the reports are looked at even without a signal: a safety
/// net only, since librdkafka signals every time its queue fills again.
const IDLE_LOOK: Duration = Duration::from_millis(100);

/// Reports served before the serving task lets others run.
const SERVE_BATCH: usize = 32;

/// Topics whose handles a producer keeps; records to any further topic are
/// sent by name. The gateway and the consumer write to two or three.
const MAX_TOPIC_HANDLES: usize = 16;

/// A producer whose sends return a [`DeliveryFuture`]. Cheap to clone; the
/// last clone dropped purges what is still queued (see `BaseProducer`).
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("in_flight", &self.in_flight_count()).finish()
    }
}

struct Inner {
    /// Dropped before `base`: the signal is turned off and the queue
    /// handle released while the client is still alive.
    reports: ReportQueue,
    /// librdkafka's handles of the topics written to, by name, each taken
    /// on the first record to it; dropped before `base` too.
    topics: RwLock<Handles>,
    base: BaseProducer<DeliveryContext>,
}

/// Topic names and librdkafka's handles of them.
type Handles = Vec<(Box<str>, TopicHandle)>;

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the serving task see that the producer is gone.
        self.reports.wake.notify_one();
    }
}

/// A handle on librdkafka's report queue, which signals `wake` whenever it
/// stops being empty.
struct ReportQueue {
    queue: *mut rdsys::rd_kafka_queue_t,
    wake: Arc<Notify>,
}

// SAFETY: a librdkafka queue handle may be used from any thread (every
// queue operation takes the queue's own lock), and the handle is released
// only once, in `Drop`.
#[allow(unsafe_code)]
unsafe impl Send for ReportQueue {}
// SAFETY: as above; the only operations through `&self` are the queue's
// length, which librdkafka reads under its lock.
#[allow(unsafe_code)]
unsafe impl Sync for ReportQueue {}

/// Called by librdkafka's threads when the report queue stops being empty.
#[allow(unsafe_code)]
unsafe extern "C" fn reports_arrived(_client: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `Notify` that `ReportQueue` keeps alive until
    // it has turned this callback off.
    let wake = unsafe { &*(opaque as *const Notify) };
    wake.notify_one();
}

impl ReportQueue {
    fn new<C: ClientContext>(client: &Client<C>) -> Self {
        let wake = Arc::new(Notify::new());
        // SAFETY: `native_ptr` is the live client; the handle returned is
        // released in `Drop`, before the client (see `Inner`). The opaque
        // pointer is the `Notify` held by `wake` for as long as the
        // callback is on.
        #[allow(unsafe_code)]
        let queue = unsafe {
            let queue = rdsys::rd_kafka_queue_get_main(client.native_ptr());
            rdsys::rd_kafka_queue_cb_event_enable(queue, Some(reports_arrived), Arc::as_ptr(&wake) as *mut c_void);
            queue
        };
        Self { queue, wake }
    }

    fn len(&self) -> usize {
        // SAFETY: the handle is live until `Drop`.
        #[allow(unsafe_code)]
        unsafe {
            rdsys::rd_kafka_queue_length(self.queue)
        }
    }
}

impl Drop for ReportQueue {
    fn drop(&mut self) {
        // SAFETY: turns the callback off before the `Notify` it points to
        // can go, then releases the handle, once.
        #[allow(unsafe_code)]
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(self.queue, None, std::ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(self.queue);
        }
    }
}

/// Logs to `tracing` like [`super::TracingContext`], and completes each
/// record's future with its delivery report.
#[derive(Default)]
pub struct DeliveryContext;

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_to_tracing(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_producer_error(error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<oneshot::Sender<OwnedDeliveryResult>>;

    fn delivery(&self, report: &DeliveryResult<'_>, done: Self::DeliveryOpaque) {
        let owned = match report {
            Ok(message) => Ok(Delivery {
                partition: message.partition(),
                offset: message.offset(),
                timestamp: message.timestamp(),
            }),
            Err((error, message)) => Err((error.clone(), message.detach())),
        };
        // The sender may have stopped waiting (a request timed out).
        let _ = done.send(owned);
    }
}

/// A record's delivery report: where the broker put it, or why it failed
/// (with a copy of the record to retry from). Fails with `RecvError` only
/// if the producer went away with the record still queued.
pub struct DeliveryFuture {
    report: oneshot::Receiver<OwnedDeliveryResult>,
}

impl Future for DeliveryFuture {
    type Output = std::result::Result<OwnedDeliveryResult, oneshot::error::RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.report).poll(cx)
    }
}

impl Producer {
    /// The producer `base`, whose reports a task on the current Tokio
    /// runtime serves. Fails outside a runtime.
    pub(crate) fn serving(base: BaseProducer<DeliveryContext>) -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let reports = ReportQueue::new(base.client());
        let wake = reports.wake.clone();
        let inner = Arc::new(Inner { reports, topics: RwLock::new(Vec::new()), base });
        // Reports queued before the signal was on are served at once.
        wake.notify_one();
        runtime.spawn(serve(Arc::downgrade(&inner), wake));
        Ok(Self { inner })
    }

    /// Hands `record` to librdkafka without waiting; the future resolves
    /// with its delivery report. A record librdkafka refuses at once (its
    /// queue is full, say) comes back with the error.
    #[allow(clippy::result_large_err)] // the record is handed back by value, as rdkafka does
    pub fn send_result<'a, K, P>(
        &self,
        record: FutureRecord<'a, K, P>,
    ) -> std::result::Result<DeliveryFuture, (KafkaError, FutureRecord<'a, K, P>)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (done, report) = oneshot::channel();
        let sent = match self.topic_handle(record.topic) {
            Some((topics, at)) => Self::send_with_handle(&topics[at].1, record, done),
            // Past the handles kept, or a name librdkafka makes no handle
            // of: that fails here with rdkafka's error.
            None => self.send_by_name(record, done),
        };
        sent.map(|()| DeliveryFuture { report })
    }

    /// librdkafka's handle of `topic` (at its index in the list the guard
    /// holds), taken now if this is the topic's first record; `None` past
    /// [`MAX_TOPIC_HANDLES`] topics or if librdkafka makes no handle of it.
    /// Handles are never removed, so an index stays valid.
    fn topic_handle(&self, topic: &str) -> Option<(RwLockReadGuard<'_, Handles>, usize)> {
        let find = |topics: &Handles| topics.iter().position(|(name, _)| **name == *topic);
        let topics = self.inner.topics.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = find(&topics) {
            return Some((topics, at));
        }
        drop(topics);
        let mut topics = self.inner.topics.write().unwrap_or_else(PoisonError::into_inner);
        if find(&topics).is_none() {
            if topics.len() >= MAX_TOPIC_HANDLES {
                return None;
            }
            // SAFETY: the handle is kept in `Inner::topics`, which is
            // dropped before `Inner::base`, the client it is made on.
            #[allow(unsafe_code)]
            let handle = unsafe { TopicHandle::new(self.inner.base.client(), topic) }.ok()?;
            topics.push((topic.into(), handle));
        }
        drop(topics);
        let topics = self.inner.topics.read().unwrap_or_else(PoisonError::into_inner);
        let at = find(&topics)?;
        Some((topics, at))
    }

    /// Sends `record` with `handle`, librdkafka's handle of its topic.
    #[allow(clippy::result_large_err)]
    fn send_with_handle<'a, K, P>(
        handle: &TopicHandle,
        mut record: FutureRecord<'a, K, P>,
        done: oneshot::Sender<OwnedDeliveryResult>,
    ) -> std::result::Result<(), (KafkaError, FutureRecord<'a, K, P>)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let opaque = Box::new(done).into_ptr();
        let sent = handle.produce(Produce {
            partition: record.partition,
            key: record.key.map(ToBytes::to_bytes),
            payload: record.payload.map(ToBytes::to_bytes),
            timestamp: record.timestamp,
            headers: record.headers.take(),
            opaque,
        });
        sent.map_err(|(code, headers)| {
            // SAFETY: librdkafka refused the record, so the opaque made
            // above is still ours, and is taken back once.
            #[allow(unsafe_code)]
            drop(unsafe { <Box<oneshot::Sender<OwnedDeliveryResult>>>::from_ptr(opaque) });
            record.headers = headers;
            (KafkaError::MessageProduction(code), record)
        })
    }

    /// Sends `record` naming its topic, as rdkafka does.
    #[allow(clippy::result_large_err)]
    fn send_by_name<'a, K, P>(
        &self,
        record: FutureRecord<'a, K, P>,
        done: oneshot::Sender<OwnedDeliveryResult>,
    ) -> std::result::Result<(), (KafkaError, FutureRecord<'a, K, P>)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let record = BaseRecord {
            topic: record.topic,
            partition: record.partition,
            payload: record.payload,
            key: record.key,
            timestamp: record.timestamp,
            headers: record.headers,
            delivery_opaque: Box::new(done),
        };
        match self.inner.base.send(record) {
            Ok(()) => Ok(()),
            Err((error, back)) => Err((
                error,
                FutureRecord {
                    topic: back.topic,
                    partition: back.partition,
                    payload: back.payload,
                    key: back.key,
                    timestamp: back.timestamp,
                    headers: back.headers,
                },
            )),
        }
    }

    /// The librdkafka client (fatal errors, metadata).
    pub fn client(&self) -> &Client<DeliveryContext> {
        self.inner.base.client()
    }

    /// Records handed to librdkafka and not yet acknowledged.
    pub fn in_flight_count(&self) -> i32 {
        self.inner.base.in_flight_count()
    }

    /// Waits (blocking the calling thread) until every queued record is
    /// acknowledged or failed, serving their reports, or until `timeout`.
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.inner.base.flush(timeout)
    }

    /// Serves everything queued now (reports, errors, and librdkafka's
    /// log lines, which rdkafka routes through the same queue), letting
    /// other tasks run between batches. librdkafka signals only when the
    /// queue stops being empty, so it is emptied every time; each poll
    /// takes one entry off it.
    async fn serve_queued(&self) {
        loop {
            for _ in 0..SERVE_BATCH {
                if self.inner.reports.len() == 0 {
                    return;
                }
                self.inner.base.poll(Duration::ZERO);
            }
            tokio::task::yield_now().await;
        }
    }
}

/// The task that serves a producer's delivery reports while it lives.
async fn serve(producer: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let _ = tokio::time::timeout(IDLE_LOOK, wake.notified()).await;
        let Some(inner) = producer.upgrade() else { return };
        let producer_now = Producer { inner };
        producer_now.serve_queued().await;
        // If every other handle went meanwhile, dropping this one purges
        // the producer and waits for the purge: not on the runtime.
        if let Some(last) = Arc::into_inner(producer_now.inner) {
            tokio::task::spawn_blocking(move || drop(last));
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::ClientConfig;

    use super::*;

    #[test]
    fn outside_a_runtime_the_producer_says_what_it_needs() {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:9");
        let error = Producer::serving(config.create_with_context(DeliveryContext).unwrap()).unwrap_err();
        assert!(matches!(error, Error::NoRuntime), "{error}");
    }

    #[tokio::test]
    async fn the_serving_task_ends_with_the_last_handle() {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:9");
        let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
        let producer = Producer::serving(config.create_with_context(DeliveryContext).unwrap()).unwrap();
        let copy = producer.clone();
        assert_eq!(tasks(), 1, "one task serves the reports");
        drop(producer);
        tokio::task::yield_now().await;
        assert_eq!(tasks(), 1, "a clone keeps it");
        drop(copy);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tasks() > 0 {
            assert!(std::time::Instant::now() < deadline, "the serving task outlived its producer");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
