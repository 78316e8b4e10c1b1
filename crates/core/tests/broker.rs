//! stream-core against a real Kafka-protocol broker (see `testing::brokers`).

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Headers;
use rdkafka::{Message, Offset};
use serde_json::json;
use stream_core::kafka::{self, ProducerOptions, StartFrom};
use stream_core::schema::{header, Event};
use stream_core::testing;
use stream_core::{Error, KafkaArgs};

/// Reads records from every partition of `topic` until `count` arrived.
async fn read_back(args: &KafkaArgs, topic: &str, count: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let reader = kafka::reader(args, StartFrom::Earliest).unwrap();
    kafka::assign_all(&reader, topic, Offset::Beginning, Duration::from_secs(10)).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "only {} of {count} records arrived within 30 s", out.len());
        if let Ok(Ok(msg)) = tokio::time::timeout(left, reader.recv()).await {
            out.push(msg.detach());
        }
    }
    out
}

#[tokio::test]
async fn cloud_event_round_trips_through_the_broker_with_every_header() {
    let args = testing::kafka_args();
    testing::create_project_topics(&args).await;
    let producer = kafka::producer(&args, &ProducerOptions::default()).unwrap();

    let payloads = [json!({"order": 17, "items": ["a", "b"]}), json!("plain string"), json!(3.5), json!([1, null])];
    let mut sent = Vec::new();
    for (i, value) in payloads.iter().enumerate() {
        let mut event = Event::json("/test", Some(format!("stream-{i}")), value);
        event.extensions.push(("traceparent".into(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()));
        let delivery = kafka::delivered(kafka::enqueue(&producer, &args.topics.events, &event).unwrap()).await;
        let delivery = delivery.map_err(|(e, _)| e).expect("broker acknowledges");
        assert!(delivery.offset >= 0);
        sent.push(event);
    }
    // Binary, non-JSON payloads travel too.
    let raw = Event::with_bytes("/test", None, Some("application/octet-stream".into()), vec![0, 255, 10, 13]);
    kafka::delivered(kafka::enqueue(&producer, &args.topics.events, &raw).unwrap()).await.map_err(|(e, _)| e).unwrap();
    sent.push(raw);

    let received = read_back(&args, &args.topics.events, sent.len()).await;
    for original in &sent {
        let msg = received
            .iter()
            .find(|m| Event::from_message(*m).map(|e| e.id == original.id).unwrap_or(false))
            .unwrap_or_else(|| panic!("event {} not read back", original.id));
        assert_eq!(&Event::from_message(msg).unwrap(), original);
        let names: Vec<&str> = msg.headers().unwrap().iter().map(|h| h.key).collect();
        for required in header::RESERVED {
            if required == header::CONTENT_TYPE && original.content_type.is_none() {
                continue;
            }
            assert!(names.contains(&required), "header {required} missing from {names:?}");
        }
        assert_eq!(msg.payload().unwrap(), original.data.as_slice(), "payload bytes changed in transit");
    }
}

#[tokio::test]
async fn creating_topics_twice_is_harmless() {
    let args = testing::kafka_args();
    let specs = kafka::project_topics(&args);
    kafka::ensure_topics(&args, &specs).await.unwrap();
    kafka::ensure_topics(&args, &specs).await.expect("second creation must succeed");

    let info = kafka::check_cluster(&args).await.unwrap();
    for spec in &specs {
        assert!(info.topics.contains(&spec.name), "{} missing from {:?}", spec.name, info.topics);
    }
    let reader = kafka::reader(&args, StartFrom::Earliest).unwrap();
    let metadata = reader.fetch_metadata(Some(&args.topics.events), Duration::from_secs(5)).unwrap();
    assert_eq!(metadata.topics()[0].partitions().len(), args.topics.partitions as usize);
}

/// A port on which nothing listens.
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    address
}

#[tokio::test]
async fn producing_to_an_unreachable_broker_fails_within_its_timeout() {
    let args = KafkaArgs::for_brokers(dead_address());
    let options = ProducerOptions { delivery_timeout: Duration::from_secs(2), ..ProducerOptions::default() };
    let producer = kafka::producer(&args, &options).unwrap();
    let event = Event::json("/test", None, &json!({"x": 1}));
    let started = Instant::now();
    let future = kafka::enqueue(&producer, "events", &event).expect("enqueue does not need a broker");
    let outcome = tokio::time::timeout(Duration::from_secs(20), kafka::delivered(future))
        .await
        .expect("delivery must fail by itself, not hang");
    let (error, _) = outcome.expect_err("nothing can acknowledge this record");
    assert!(error.to_string().to_lowercase().contains("timed out"), "unclear error: {error}");
    assert!(started.elapsed() >= Duration::from_secs(2), "failed before its timeout: {error}");
}

#[tokio::test]
async fn an_unreachable_cluster_is_reported_with_what_to_do() {
    let mut args = KafkaArgs::for_brokers(dead_address());
    args.connect_timeout = Duration::from_millis(500);
    let err = kafka::check_cluster(&args).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&args.brokers) && text.contains("KAFKA_BROKERS"), "{text}");
    // As a binary prints it (`{:#}` of the whole chain): librdkafka's reason
    // appears once, not once per layer.
    let printed = format!("{:#}", anyhow::Error::from(err).context("giving up"));
    assert_eq!(printed.matches("Local: ").count(), 1, "{printed}");
}

/// A reader assigned fewer partitions than its topic has (as after
/// `rpk topic add-partitions` on a live topic) reads the others once its
/// `PartitionWatch` looks, each exactly once, and a second look adds none.
/// The local broker has no CreatePartitions, so the reader starts out
/// knowing only partition 0 of a 3-partition topic.
#[tokio::test]
async fn a_partition_watch_reads_partitions_added_after_the_reader_started() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    let args = testing::kafka_args();
    let topic = testing::unique_name("grown");
    testing::create_topic(&args, &topic, 3).await;
    let reader = kafka::reader(&args, StartFrom::Earliest).unwrap();
    let mut first = rdkafka::TopicPartitionList::new();
    first.add_partition_offset(&topic, 0, Offset::Beginning).unwrap();
    reader.assign(&first).unwrap();
    let reader = Arc::new(reader);
    let watch = Arc::new(kafka::PartitionWatch::new(&topic, 1));

    let producer = kafka::producer(&args, &ProducerOptions::default()).unwrap();
    for partition in 0..3 {
        let event = Event::json("/test", None, &json!({ "partition": partition }));
        let record = event.record(&topic).partition(partition);
        let sent = producer.send_result(record).map_err(|(error, _)| error).expect("enqueued");
        kafka::delivered(sent).await.expect("produced");
    }

    let look = |reader: Arc<_>, watch: Arc<kafka::PartitionWatch>| {
        tokio::task::spawn_blocking(move || watch.refresh(&reader, Duration::from_secs(10)))
    };
    assert_eq!(look(reader.clone(), watch.clone()).await.unwrap().unwrap(), 3);
    assert_eq!(look(reader.clone(), watch.clone()).await.unwrap().unwrap(), 3, "a second look changes nothing");
    assert_eq!(watch.known(), 3);

    let mut per_partition = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while per_partition.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "records arrived from partitions {per_partition:?} only");
        if let Ok(Ok(msg)) = tokio::time::timeout(left, reader.recv()).await {
            *per_partition.entry(msg.partition()).or_insert(0) += 1;
        }
    }
    assert_eq!(per_partition, BTreeMap::from([(0, 1), (1, 1), (2, 1)]));
}

/// The producer writes with librdkafka's handle of each topic, taken on its
/// first record, up to a number of topics, and by name past it: records to
/// more topics than that each arrive in their own topic, with their key,
/// timestamp, partition and headers, from handles and names alike.
#[tokio::test]
async fn records_to_many_topics_each_arrive_whole_in_their_own() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;

    let args = testing::kafka_args();
    let producer = kafka::producer(&args, &ProducerOptions::default()).unwrap();
    let topics: Vec<String> = (0..20).map(|n| testing::unique_name(&format!("handles-{n}"))).collect();
    for topic in &topics {
        testing::create_topic(&args, topic, 2).await;
    }
    let timestamp = 1_700_000_000_123i64;
    // Each topic twice: the second record of a topic finds its handle.
    for round in 0..2 {
        let mut sent = Vec::new();
        for (n, topic) in topics.iter().enumerate() {
            let key = format!("key-{n}");
            let payload = format!("record {round} of topic {n}");
            let headers = OwnedHeaders::new().insert(Header { key: "n", value: Some(key.as_bytes()) });
            let record = FutureRecord::to(topic)
                .key(key.as_str())
                .payload(payload.as_str())
                .partition(1)
                .timestamp(timestamp + n as i64)
                .headers(headers);
            sent.push(producer.send_result(record).map_err(|(error, _)| error).expect("enqueued"));
        }
        for delivery in sent {
            let delivery = kafka::delivered(delivery).await.map_err(|(error, _)| error).expect("acknowledged");
            assert_eq!(delivery.partition, 1);
        }
    }
    for (n, topic) in topics.iter().enumerate() {
        let records = read_back(&args, topic, 2).await;
        let key = format!("key-{n}");
        for (round, record) in records.iter().enumerate() {
            assert_eq!(record.topic(), topic.as_str());
            assert_eq!(record.partition(), 1, "{topic}");
            assert_eq!(record.key(), Some(key.as_bytes()), "{topic}");
            assert_eq!(record.payload(), Some(format!("record {round} of topic {n}").as_bytes()), "{topic}");
            assert_eq!(record.timestamp().to_millis(), Some(timestamp + n as i64), "{topic}");
            let header = record.headers().expect("headers kept").get(0);
            assert_eq!((header.key, header.value), ("n", Some(key.as_bytes())), "{topic}");
        }
    }
}

/// A record librdkafka refuses at once comes back whole, with the reason,
/// whether its topic's handle was just taken or is already held; the
/// producer then goes on writing.
#[tokio::test]
async fn a_refused_record_comes_back_whole_and_the_producer_goes_on() {
    use rdkafka::error::KafkaError;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    use rdkafka::types::RDKafkaErrorCode;

    let mut args = testing::kafka_args();
    args.properties.push(("message.max.bytes".into(), "2000".into()));
    let producer = kafka::producer(&args, &ProducerOptions::default()).unwrap();
    let topic = testing::unique_name("refused");
    testing::create_topic(&args, &topic, 1).await;
    let big = vec![b'x'; 3000];
    for attempt in 0..2 {
        let headers = OwnedHeaders::new().insert(Header { key: "attempt", value: Some(&[attempt as u8][..]) });
        let record = FutureRecord::to(&topic).key("k").payload(&big[..]).headers(headers);
        let (error, back) = producer.send_result(record).err().expect("a record over message.max.bytes is refused");
        assert!(matches!(error, KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)), "{error:?}");
        assert_eq!((back.topic, back.key, back.payload.map(<[u8]>::len)), (topic.as_str(), Some("k"), Some(3000)));
        let header = back.headers.as_ref().expect("headers given back").get(0);
        assert_eq!((header.key, header.value), ("attempt", Some(&[attempt as u8][..])));
    }
    let record = FutureRecord::to(&topic).key("k").payload("small");
    let sent = producer.send_result(record).map_err(|(error, _)| error).expect("enqueued");
    kafka::delivered(sent).await.map_err(|(error, _)| error).expect("acknowledged");
    let records = read_back(&args, &topic, 1).await;
    assert_eq!(records[0].payload(), Some(&b"small"[..]));
}

/// A topic name librdkafka cannot take (a NUL in it) is refused with the
/// reason, not a crash.
#[tokio::test]
async fn a_topic_name_with_a_nul_is_refused() {
    use rdkafka::producer::FutureRecord;

    let args = testing::kafka_args();
    let producer = kafka::producer(&args, &ProducerOptions::default()).unwrap();
    let record = FutureRecord::<str, str>::to("bad\0topic").payload("x");
    let (error, back) = producer.send_result(record).err().expect("refused");
    assert!(matches!(error, rdkafka::error::KafkaError::Nul(_)), "{error:?}");
    assert_eq!(back.topic, "bad\0topic");
}
