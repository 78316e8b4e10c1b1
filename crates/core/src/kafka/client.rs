//! Client factories: every librdkafka property the project sets, for the
//! producer, group consumers and group-less readers.

use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};

use super::context::{GroupContext, TracingContext};
use super::producer::{DeliveryContext, Producer};
use crate::config::KafkaArgs;
use crate::error::{Error, Result};

/// A consumer in a group, with rebalances and commits logged.
pub type GroupConsumer = StreamConsumer<GroupContext>;

/// Settings common to every client: where the brokers are and how to
/// authenticate. Extra `-X` properties are *not* applied here but by
/// [`finish`], after each factory has added its own settings.
pub fn base_config(args: &KafkaArgs) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.brokers)
        .set("client.id", args.client_id.as_deref().unwrap_or("streamkit"))
        .set("security.protocol", args.security_protocol.as_str())
        // Requests go out as soon as they are written: with Nagle's
        // algorithm a small produce or fetch request can wait for the ack
        // of the previous one, which adds up to a delayed-ACK interval to
        // request latency. Batching is librdkafka's job (linger.ms).
        .set("socket.nagle.disable", "true")
        // Let librdkafka hand us every level; `RUST_LOG` decides what is shown.
        .set_log_level(RDKafkaLogLevel::Debug);
    if let Some(mechanism) = args.sasl_mechanism {
        config.set("sasl.mechanism", mechanism.as_str());
    }
    for (key, value) in [
        ("sasl.username", &args.sasl_username),
        ("sasl.password", &args.sasl_password),
        ("ssl.ca.location", &args.ssl_ca_location),
        ("ssl.certificate.location", &args.ssl_certificate_location),
        ("ssl.key.location", &args.ssl_key_location),
    ] {
        if let Some(value) = value {
            config.set(key, value);
        }
    }
    config
}

/// Applies the user's `-X` overrides last, so they win.
pub(crate) fn finish(mut config: ClientConfig, args: &KafkaArgs) -> ClientConfig {
    for (key, value) in &args.properties {
        config.set(key, value);
    }
    config
}

pub(crate) fn create<T, C>(config: &ClientConfig, context: C) -> Result<T>
where
    T: rdkafka::config::FromClientConfigAndContext<C>,
    C: ClientContext,
{
    config.create_with_context(context).map_err(|err| match err {
        KafkaError::ClientConfig(_, description, key, value) => {
            Error::Config(format!("librdkafka property {key}={value:?}: {description}"))
        }
        other => Error::Kafka(other),
    })
}

/// How many brokers must acknowledge a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Acks {
    /// Every in-sync replica (durable; required for idempotence).
    #[value(alias = "-1")]
    All,
    /// The partition leader only.
    #[value(alias = "1")]
    Leader,
    /// Nobody: fire and forget.
    #[value(alias = "0")]
    None,
}

/// Producer tuning that differs between binaries.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// Acknowledgement level. Only `All` keeps idempotence on.
    pub acks: Acks,
    /// How long a record may wait for more records to share its batch.
    pub linger: Duration,
    /// Total time librdkafka may spend delivering a record, retries included;
    /// after it the record fails with a timeout instead of waiting forever.
    pub delivery_timeout: Duration,
    /// Records that may wait in librdkafka's queue before sends are refused
    /// with `QueueFull`, which is where callers apply backpressure.
    pub queue_capacity: u32,
    /// An idempotent producer keeps up to five produce requests in flight
    /// per broker connection instead of one: for bulk senders, whose rate
    /// depends on it (see [`producer`] for why one is the default).
    pub pipelined: bool,
    /// How often librdkafka emits statistics to the context (`None`: off).
    pub statistics_interval: Option<Duration>,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        Self {
            acks: Acks::All,
            // The latency/throughput trade-off: each batch is one request and
            // one broker append, so batching is what makes high rates
            // cheap. Waiting up to 5 ms for company costs at most 5 ms of
            // latency at low rates; at high rates batches fill before the
            // linger expires and it costs nothing. (librdkafka's default
            // since 1.7; stated here because everything depends on it.)
            linger: Duration::from_millis(5),
            delivery_timeout: Duration::from_secs(30),
            queue_capacity: 500_000,
            pipelined: false,
            statistics_interval: None,
        }
    }
}

/// An idempotent producer (unless `acks` is lowered), with logs in `tracing`.
///
/// Unless [`ProducerOptions::pipelined`], it keeps one produce request in
/// flight per broker connection. librdkafka 2.12's idempotent producer
/// sends one request per partition at a time anyway (its window of five is
/// counted in messages), and while a partition with a due batch waits for
/// its ack, the broker thread polls its socket with a zero timeout: 3-4
/// polls per message in the gateway. With the connection's one request in
/// flight, librdkafka builds no further request until the ack comes, and
/// the thread sleeps. Kafka handles a connection's requests one at a time
/// anyway (it mutes the connection until it has answered), so pipelining
/// saves only the network's round trip between them; `-X
/// max.in.flight.requests.per.connection=5` restores it. Measured in the
/// README's API case (three interleaved runs each): the gateway's librdkafka
/// threads 7.5 -> 4.8 µs per message, the consumer's 4.0 -> 3.2 µs per
/// event, the broker 16.6 -> 15.0 µs. A bulk publisher lost a tenth of its
/// rate with headers (445k -> 398k msg/s): it pipelines.
///
/// Its delivery reports are served by a task on the current Tokio runtime
/// (see [`Producer`]), so it must be created inside one.
pub fn producer(args: &KafkaArgs, options: &ProducerOptions) -> Result<Producer> {
    Producer::serving(create(&producer_config(args, options), DeliveryContext)?)
}

/// The same producer settings for any producer type and context. A bulk
/// sender (publisher, bench) uses a `BaseProducer` whose context takes
/// delivery reports as callbacks, served by the sending thread: at hundreds
/// of thousands of records a second, a future and a channel per record cost
/// more than the send.
pub fn producer_with_context<T, C>(args: &KafkaArgs, options: &ProducerOptions, context: C) -> Result<T>
where
    T: rdkafka::config::FromClientConfigAndContext<C>,
    C: ClientContext,
{
    create(&producer_config(args, options), context)
}

/// Every property of a producer, the user's `-X` overrides applied last.
fn producer_config(args: &KafkaArgs, options: &ProducerOptions) -> ClientConfig {
    let mut config = base_config(args);
    let idempotent = options.acks == Acks::All;
    config
        // Idempotence: retries after a lost ack or a broker restart cannot
        // duplicate or reorder records within a partition. It needs acks=all.
        .set("enable.idempotence", idempotent.to_string())
        .set(
            "acks",
            match options.acks {
                Acks::All => "all",
                Acks::Leader => "1",
                Acks::None => "0",
            },
        )
        .set("linger.ms", options.linger.as_millis().to_string())
        // Large batches (up to 1 MB, 10k records) once linger lets them fill.
        .set("batch.size", "1000000")
        .set("batch.num.messages", "10000")
        .set("message.timeout.ms", options.delivery_timeout.as_millis().to_string())
        .set("queue.buffering.max.messages", options.queue_capacity.to_string())
        // Same key -> same partition as the Java client and Redpanda's tools
        // (murmur2), so a stream keeps its partition whoever produces to it.
        .set("partitioner", "murmur2_random");
    if idempotent && !options.pipelined {
        // See `producer` for why.
        config.set("max.in.flight.requests.per.connection", "1");
    }
    if let Some(interval) = options.statistics_interval {
        config.set("statistics.interval.ms", interval.as_millis().max(1).to_string());
    }
    finish(config, args)
}

/// Where a group starts when it has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartFrom {
    /// The oldest record still retained: nothing published before the first
    /// start is missed.
    Earliest,
    /// Only records published from now on.
    Latest,
}

/// Group consumer tuning.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Consumer group id: workers sharing it split the partitions.
    pub group: String,
    /// How long the group waits for a silent member before moving its
    /// partitions. Shorter means faster recovery from a killed worker; too
    /// short means spurious rebalances under GC-free but busy hosts.
    pub session_timeout: Duration,
    /// Where to start without a committed offset.
    pub start_from: StartFrom,
    /// How often librdkafka emits statistics to the context's `stats`
    /// callback (consumer lag per partition, fetch queues). `None` leaves
    /// them off: parsing them costs a little CPU.
    pub statistics_interval: Option<Duration>,
}

impl ConsumerOptions {
    /// Defaults for `group`.
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            session_timeout: Duration::from_secs(10),
            start_from: StartFrom::Earliest,
            statistics_interval: None,
        }
    }
}

/// An at-least-once group consumer: offsets are committed automatically in
/// the background, but only offsets the application has *stored* (with
/// `store_offset`) after it finished a record. A crash therefore replays
/// unfinished records and never skips one.
pub fn group_consumer<C: ConsumerContext + 'static>(
    args: &KafkaArgs,
    options: &ConsumerOptions,
    context: C,
) -> Result<StreamConsumer<C>> {
    let mut config = base_config(args);
    config
        .set("group.id", &options.group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        // Commit stored offsets every second: at most a second of finished
        // work is replayed after a crash.
        .set("auto.commit.interval.ms", "1000")
        .set("session.timeout.ms", options.session_timeout.as_millis().to_string())
        .set(
            "auto.offset.reset",
            match options.start_from {
                StartFrom::Earliest => "earliest",
                StartFrom::Latest => "latest",
            },
        )
        .set("enable.partition.eof", "false");
    fetch_settings(&mut config, GROUP_FETCH_WAIT);
    if let Some(interval) = options.statistics_interval {
        // The only way to see consumer lag per partition without extra
        // requests to the brokers: librdkafka reports it in its statistics.
        config.set("statistics.interval.ms", interval.as_millis().max(1).to_string());
    }
    create(&finish(config, args), context)
}

/// A consumer outside any group, for reading partitions it assigns itself
/// (the API's results router, tests, bench). It never commits.
pub fn reader(args: &KafkaArgs, start_from: StartFrom) -> Result<StreamConsumer<TracingContext>> {
    create(&finish(reader_config(args, start_from), args), TracingContext)
}

/// A group-less reader of one partition of `topic` from `offset`, for a
/// client catching up from the log (the gateway's resumed and overrun
/// subscribers). One exists per catching-up connection, so its local
/// queue is kept small: librdkafka's default (64 MiB and 100,000 messages
/// per partition) would let a thousand catching-up clients take gigabytes.
/// Reading stops at the queue's bound until the client takes records.
pub fn partition_reader(
    args: &KafkaArgs,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<StreamConsumer<TracingContext>> {
    let mut config = reader_config(args, StartFrom::Earliest);
    config.set("queued.max.messages.kbytes", "1024").set("queued.min.messages", "1000");
    let consumer: StreamConsumer<TracingContext> = create(&finish(config, args), TracingContext)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))?;
    consumer.assign(&tpl)?;
    Ok(consumer)
}

pub(crate) fn reader_config(args: &KafkaArgs, start_from: StartFrom) -> ClientConfig {
    let mut config = base_config(args);
    config
        // librdkafka wants a group id for any consumer; this one is never
        // joined (assign, not subscribe) and nothing is committed to it.
        .set("group.id", format!("streamkit-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            match start_from {
                StartFrom::Earliest => "earliest",
                StartFrom::Latest => "latest",
            },
        )
        .set("enable.partition.eof", "false");
    fetch_settings(&mut config, READER_FETCH_WAIT);
    config
}

/// How long a group member's fetch may wait for data (`fetch.wait.max.ms`).
///
/// Kafka and Redpanda answer a waiting fetch as soon as a record arrives, so
/// there the wait only sets how often an idle consumer asks. The local
/// Nisshi broker instead re-checks a waiting fetch at 0, 1/2, 3/4 ... of the
/// wait, which makes the wait both a latency and a batching interval. For
/// the group that processes events, batching wins: in the API case
/// (scripts/cost.sh) 100 ms cost the consumer 16 µs of CPU per event and
/// the broker 20 µs per message, against 24 and 30 µs at 10 ms.
pub const GROUP_FETCH_WAIT: Duration = Duration::from_millis(100);

/// The same for group-less readers, which deliver to people and
/// benchmarks (the gateway's results feed, bench e2e): latency wins. At
/// 10 ms bench e2e on Nisshi saw p50 10 ms and p99 20 ms at 1,000 events/s,
/// against 33 and 65 ms at 100 ms.
pub const READER_FETCH_WAIT: Duration = Duration::from_millis(10);

pub(crate) fn fetch_settings(config: &mut ClientConfig, wait: Duration) {
    config
        .set("fetch.wait.max.ms", wait.as_millis().to_string())
        // librdkafka 2.x postpones a partition's next fetch by this much
        // whenever its local queue is over its thresholds (default 1 s); at
        // 10,000 events/s that showed as 60-70 ms at p99 in bench e2e,
        // 29-36 ms without it. At 0 the broker thread re-checks without
        // sleeping for as long as the queue stays full: a consumer working
        // through a backlog made 344,000 `poll` calls for 300,000 events,
        // 7,300 at 10 ms. 1 ms sleeps between the checks and adds at most
        // that to a record's wait. The queue stays bounded by
        // queued.max.messages.kbytes either way.
        .set("fetch.queue.backoff.ms", "1");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_take_kafkas_numbers_too() {
        use clap::ValueEnum;
        for (text, acks) in [
            ("all", Acks::All),
            ("-1", Acks::All),
            ("leader", Acks::Leader),
            ("1", Acks::Leader),
            ("none", Acks::None),
            ("0", Acks::None),
        ] {
            assert_eq!(Acks::from_str(text, false), Ok(acks), "{text}");
        }
        assert!(Acks::from_str("2", false).is_err());
    }

    #[test]
    fn bad_properties_name_the_key() {
        let mut args = KafkaArgs::for_brokers("127.0.0.1:1");
        args.properties.push(("linger.ms".into(), "soon".into()));
        let err = producer(&args, &ProducerOptions::default()).expect_err("must fail").to_string();
        assert!(err.contains("linger.ms"), "{err}");
    }

    #[tokio::test]
    async fn an_idempotent_producer_keeps_one_request_in_flight_unless_told_otherwise() {
        let mut args = KafkaArgs::for_brokers("127.0.0.1:1");
        let key = "max.in.flight.requests.per.connection";
        let config = producer_config(&args, &ProducerOptions::default());
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get(key), Some("1"));
        let _accepted = producer(&args, &ProducerOptions::default()).expect("librdkafka takes one with idempotence");
        let leader = ProducerOptions { acks: Acks::Leader, ..ProducerOptions::default() };
        assert_eq!(producer_config(&args, &leader).get(key), None, "librdkafka's default pipelines");
        let bulk = ProducerOptions { pipelined: true, ..ProducerOptions::default() };
        assert_eq!(producer_config(&args, &bulk).get(key), None, "idempotence allows five");
        args.properties.push((key.into(), "5".into()));
        assert_eq!(producer_config(&args, &ProducerOptions::default()).get(key), Some("5"));
        let _accepted = producer(&args, &ProducerOptions::default()).expect("five is within idempotence's limit");
    }

    #[test]
    fn user_properties_override_the_defaults() {
        let mut args = KafkaArgs::for_brokers("127.0.0.1:1");
        args.properties.push(("linger.ms".into(), "50".into()));
        let config = finish(base_config(&args), &args);
        assert_eq!(config.get("linger.ms"), Some("50"));
    }
}
