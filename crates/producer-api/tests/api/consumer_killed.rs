//! The real consumer SIGKILLed twice while a WebSocket subscriber watches
//! 2,000 sends: each restart replays the work it had not committed, in a
//! burst that overflows the subscriber's live buffer. The subscriber still
//! gets exactly one result frame per event.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::{start_stream, KEY_A};
use futures::StreamExt;
use serde_json::{json, Value};
use stream_core::KafkaArgs;
use tokio_tungstenite::tungstenite::Message;

const EVENTS: usize = 2000;
const CHILD: &str = "PRODUCER_API_TEST_CONSUMER";

/// Not a test of its own: the consumer process the test below starts (this
/// test binary run again with `CHILD` set) and SIGKILLs. Without `CHILD` it
/// does nothing.
#[tokio::test]
async fn consumer_process() {
    let Ok(spec) = std::env::var(CHILD) else { return };
    let spec: Value = serde_json::from_str(&spec).unwrap();
    let text = |k: &str| spec[k].as_str().unwrap().to_owned();
    let mut kafka = KafkaArgs::for_brokers(text("brokers"));
    kafka.topics.events = text("events");
    kafka.topics.results = text("results");
    kafka.topics.dlq = text("dlq");
    kafka.topics.partitions = 3;
    let mut config = consumer::Config::for_tests(kafka, 2);
    config.group = text("group");
    consumer::run(config, tokio_util::sync::CancellationToken::new()).await.unwrap();
}

/// Publishes events `range` on the stream, recording their ids.
async fn publish(app: &common::TestApp, sent: &mut Vec<String>, range: std::ops::Range<usize>) {
    let records: Vec<Value> = range.map(|n| json!({"message": {"n": n}, "key": "watched"})).collect();
    for chunk in records.chunks(250) {
        let body = common::publish_batch(app, chunk).await;
        sent.extend(body["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()));
    }
}

/// Counts result frames per event until `count` events have one.
async fn wait_for(
    per_event: &mut HashMap<String, usize>,
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    count: usize,
    what: &str,
) {
    tokio::time::timeout(Duration::from_secs(120), async {
        while per_event.len() < count {
            *per_event.entry(seen.recv().await.expect("socket open")).or_default() += 1;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {count} results before {what}", per_event.len()));
}

fn start_consumer(kafka: &KafkaArgs, group: &str) -> tokio::process::Child {
    let spec = json!({
        "brokers": kafka.brokers, "events": kafka.topics.events, "results": kafka.topics.results,
        "dlq": kafka.topics.dlq, "group": group,
    });
    tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["consumer_killed::consumer_process", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, spec.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the consumer process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_result_frame_per_event_while_the_consumer_is_sigkilled_twice() {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka.clone());
    // A small live buffer, so the restarted consumer's burst overflows it
    // and the subscriber is also served from the log.
    config.ws_buffer = 8;
    let app = common::start(config).await;
    assert_eq!(start_stream(&app, KEY_A, Some(json!({"stream_id": "watched"}))).await.0, 201);
    let mut socket = common::connect(&app, KEY_A, "watched").await;
    let group = stream_core::testing::unique_name("killed-consumer");

    // Results per event id, as the socket delivers them.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(text) = message {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                assert_ne!(frame["type"], "notice", "no notice: {frame}");
                if frame["type"] == "result" {
                    seen_tx.send(frame["event_id"].as_str().unwrap().to_owned()).unwrap();
                }
            }
        }
    });
    let mut per_event: HashMap<String, usize> = HashMap::new();
    let mut sent = Vec::new();

    let mut consumer = start_consumer(&kafka, &group);
    publish(&app, &mut sent, 0..EVENTS).await;
    wait_for(&mut per_event, &mut seen_rx, 300, "the first kill").await;
    consumer.kill().await.unwrap();
    let mut consumer = start_consumer(&kafka, &group);
    wait_for(&mut per_event, &mut seen_rx, 1000, "the second kill").await;
    consumer.kill().await.unwrap();
    let _consumer = start_consumer(&kafka, &group);
    wait_for(&mut per_event, &mut seen_rx, EVENTS, "the end").await;
    // One more event: its result comes after any repeat of the others
    // (one stream, one partition, in order), so every frame is counted.
    publish(&app, &mut sent, EVENTS..EVENTS + 1).await;
    wait_for(&mut per_event, &mut seen_rx, EVENTS + 1, "the last event").await;

    let in_topic = common::read_all(&kafka, &kafka.topics.results).await.len();
    let metrics = common::client().get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let catch_ups = metrics.lines().find(|l| l.starts_with("results_catch_ups_total")).unwrap_or("no catch-up");
    eprintln!(
        "{} events, {in_topic} results in the topic, {} result frames ({catch_ups})",
        sent.len(),
        per_event.values().sum::<usize>()
    );
    assert_eq!(per_event.len(), sent.len());
    let repeated: Vec<_> = per_event.iter().filter(|(_, n)| **n != 1).collect();
    assert!(repeated.is_empty(), "events with more than one result frame: {repeated:?}");
    assert!(sent.iter().all(|id| per_event.contains_key(id)));
    reader.abort();
    app.stop().await;
}
