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
