//! The results topic: the process's one live reader, routing each result
//! into the [`Hub`], and the topic as a log read from a position.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use stream_core::kafka::{self, PartitionWatch, StartFrom, TracingContext};
use stream_core::schema::Timestamp;
use stream_core::KafkaArgs;
use tokio_util::sync::CancellationToken;

use crate::cursor::{partition_of, Pos};
use crate::delivered::{Decoded, Delivered, Undecodable};
use crate::error::AppError;
use crate::hub::Hub;
use crate::reader::Follower;

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
            asked: AtomicU64::new(0),
        })
    }

    /// Routes results into `hub` until `stop` is cancelled.
    pub async fn run(self, hub: Arc<Hub>, stop: CancellationToken) {
        let counts = Counts::new();
        self.follower.run(&stop, |msg| route(&hub, &counts, msg)).await;
    }
}

/// The metrics of routing, looked up once instead of by name per record.
struct Counts {
    received: metrics::Counter,
    unreadable: metrics::Counter,
    unrouted: metrics::Counter,
    routed: metrics::Counter,
    latency: metrics::Histogram,
}

impl Counts {
    fn new() -> Self {
        Self {
            received: metrics::counter!("results_received_total"),
            unreadable: metrics::counter!("results_unreadable_total"),
            unrouted: metrics::counter!("results_unrouted_total"),
            routed: metrics::counter!("results_routed_total"),
            latency: metrics::histogram!("result_delivery_latency_seconds"),
        }
    }
}

/// Hands one record of the results topic to its stream's subscribers.
fn route(hub: &Hub, counts: &Counts, msg: &BorrowedMessage<'_>) {
    counts.received.increment(1);
    let pos = Pos { partition: msg.partition(), offset: msg.offset() };
    let value = msg.payload().unwrap_or_default();
    let Decoded { delivered, stream } = match Delivered::decode(value, msg.key(), pos) {
        Ok(decoded) => decoded,
        Err(Undecodable::NotAResult) => {
            tracing::debug!(partition = pos.partition, offset = pos.offset, "skipping a non-result record");
            counts.unreadable.increment(1);
            return;
        }
        // Results of keyless events belong to no stream.
        Err(Undecodable::NoStream) => {
            counts.unrouted.increment(1);
            return;
        }
    };
    let event_time = delivered.event_time;
    if hub.route(&stream, Arc::new(delivered)) {
        counts.routed.increment(1);
        if let Some(event_time) = event_time {
            counts.latency.record(event_time.until(Timestamp::now()).as_secs_f64());
        }
    } else {
        counts.unrouted.increment(1);
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
    /// Queries started (watermarks, readers): see [`Self::queries`].
    asked: AtomicU64,
}

impl ResultsLog {
    /// How many queries of the broker this log has started (watermark
    /// reads and catch-up readers), also counted in
    /// `results_log_queries_total`: each takes a thread of the blocking
    /// pool while it runs.
    pub fn queries(&self) -> u64 {
        self.asked.load(Ordering::Relaxed)
    }

    fn count_query(&self) {
        self.asked.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("results_log_queries_total").increment(1);
    }

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
        answer(&mut self.ask_watermarks(partition)).await
    }

    /// [`Self::watermarks`], asked on the blocking pool: the handle is the
    /// answer to come.
    pub fn ask_watermarks(&self, partition: i32) -> Pending<(i64, i64)> {
        self.count_query();
        let (consumer, topic, timeout) = (self.consumer.clone(), self.topic.clone(), self.timeout);
        tokio::task::spawn_blocking(move || {
            consumer
                .fetch_watermarks(&topic, partition, timeout)
                .map_err(|e| AppError::unavailable(format!("cannot read the results topic's position: {e}")))
        })
    }

    /// A reader of `partition` from `offset`, for one connection while it
    /// catches up, made on the blocking pool: the handle is the reader to
    /// come.
    pub fn ask_reader(&self, partition: i32, offset: i64) -> Pending<StreamConsumer<TracingContext>> {
        self.count_query();
        let (args, topic) = (self.args.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || {
            kafka::partition_reader(&args, &topic, partition, offset)
                .map_err(|e| AppError::unavailable(format!("cannot read the results topic: {e}")))
        })
    }
}

/// A question to the broker running on the blocking pool. Dropping the
/// handle does not stop the task; whoever may stop waiting and ask again
/// (a feed, see [`crate::feed`]) keeps the handle and waits on it again, so
/// a socket's `select!` does not start one blocking task per turn.
pub type Pending<T> = tokio::task::JoinHandle<Result<T, AppError>>;

/// The answer to `pending`; waiting on it again after a dropped wait is
/// safe.
pub async fn answer<T>(pending: &mut Pending<T>) -> Result<T, AppError> {
    pending.await.map_err(|e| AppError::Internal(format!("results topic task: {e}")))?
}
