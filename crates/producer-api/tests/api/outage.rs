//! The whole pipeline through a broker outage: direct (publisher-style)
//! producer sends, HTTP publishes through the gateway and the real consumer
//! all run while the broker (SQLite storage, so it keeps its data) is
//! killed for ten seconds and started again. Every acknowledged event must
//! be in the topic afterwards and have a result.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::KEY_A;
use serde_json::{json, Value};
use stream_core::kafka::{self, ProducerOptions};
use stream_core::schema::{Event, EventResult};
use stream_core::testing::eventually;
use tokio_util::sync::CancellationToken;

const OUTAGE: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Load {
    acked: Mutex<Vec<String>>,
    count: AtomicUsize,
    /// Every non-2xx answer: status, had Retry-After, how long it took.
    refusals: Mutex<Vec<(u16, bool, String)>>,
    saw_503: AtomicBool,
}

#[tokio::test]
async fn broker_down_ten_seconds_loses_no_acknowledged_event_and_all_get_results() {
    let mut broker = stream_core::testing::DurableBroker::start();
    let mut kafka = stream_core::testing::kafka_args();
    kafka.brokers = broker.address.clone();
    let mut config = common::config(kafka.clone());
    config.request_timeout = REQUEST_TIMEOUT;
    let broker_wait = config.broker_wait();
    let app = common::start(config).await;
    let stop_consumer = CancellationToken::new();
    let consumer = tokio::spawn(consumer::run(consumer::Config::for_tests(kafka.clone(), 2), stop_consumer.clone()));

    let stop_load = CancellationToken::new();
    let http = Arc::new(Load::default());
    let direct = Arc::new(Load::default());
    let mut tasks = Vec::new();
    // HTTP clients: publish until stopped, recording what was acknowledged
    // and how every refusal looked.
    for worker in 0..4u64 {
        let (load, stop, url) = (http.clone(), stop_load.clone(), app.url("/publish"));
        tasks.push(tokio::spawn(async move {
            let client = common::client();
            for n in 0u64.. {
                if stop.is_cancelled() {
                    break;
                }
                let body = json!({"message": {"worker": worker, "n": n}});
                let response = client.post(&url).header("X-API-Key", KEY_A).json(&body).send().await.unwrap();
                let status = response.status().as_u16();
                if status == 200 {
                    let ack: Value = response.json().await.unwrap();
                    load.acked.lock().unwrap().push(ack["id"].as_str().unwrap().to_owned());
                    load.count.fetch_add(1, Ordering::Relaxed);
                } else {
                    load.saw_503.fetch_or(status == 503, Ordering::Relaxed);
                    let retry_after = response.headers().contains_key("retry-after");
                    let body: Value = response.json().await.unwrap_or_default();
                    let detail = body["detail"].as_str().unwrap_or_default().to_owned();
                    load.refusals.lock().unwrap().push((status, retry_after, detail));
                    // Back off as told, as a client should.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    // A publisher-style producer: enqueue at a steady pace, count an event
    // only when its delivery report says it was written.
    {
        let (load, stop) = (direct.clone(), stop_load.clone());
        let options = ProducerOptions { delivery_timeout: Duration::from_secs(120), ..ProducerOptions::default() };
        let producer = kafka::producer(&kafka, &options).unwrap();
        let topic = kafka.topics.events.clone();
        tasks.push(tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(5));
            let mut deliveries = Vec::new();
            for n in 0u64.. {
                if stop.is_cancelled() {
                    break;
                }
                pace.tick().await;
                let event = Event::json("/outage-test", Some(format!("direct-{}", n % 16)), &json!({"n": n}));
                let Ok(future) = kafka::enqueue(&producer, &topic, &event) else { continue };
                let (load, id) = (load.clone(), event.id.clone());
                deliveries.push(tokio::spawn(async move {
                    if kafka::delivered(future).await.is_ok() {
                        load.acked.lock().unwrap().push(id);
                        load.count.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for delivery in deliveries {
                let _ = delivery.await;
            }
        }));
    }

    eventually(Duration::from_secs(30), "acknowledged events before the outage", || async {
        (http.count.load(Ordering::Relaxed) >= 100 && direct.count.load(Ordering::Relaxed) >= 100).then_some(())
    })
    .await;
    broker.stop();
    let down = Instant::now();
    let before = (http.count.load(Ordering::Relaxed), direct.count.load(Ordering::Relaxed));
    // A stream start while the broker is down (its claim goes through the
    // registry's own producer): 503 with Retry-After, not a hang.
    let response = common::client().post(app.url("/stream/start")).header("X-API-Key", KEY_A).send().await.unwrap();
    assert_eq!(response.status(), 503, "a start with the broker down");
    assert!(response.headers().contains_key("retry-after"), "503 without Retry-After");
    eventually(OUTAGE + Duration::from_secs(10), "a 503 while the broker is down, and the full outage", || async {
        (down.elapsed() >= OUTAGE && http.saw_503.load(Ordering::Relaxed)).then_some(())
    })
    .await;
    broker.resume();
    let up = Instant::now();
    eventually(Duration::from_secs(45), "publishing to work again on both paths", || async {
        let now = (http.count.load(Ordering::Relaxed), direct.count.load(Ordering::Relaxed));
        (now.0 >= before.0 + 50 && now.1 >= before.1 + 50).then_some(())
    })
    .await;
    let recovered_after = up.elapsed();
    eventually(Duration::from_secs(45), "stream starts to work again", || async {
        (common::start_stream(&app, KEY_A, None).await.0 == 201).then_some(())
    })
    .await;
    stop_load.cancel();
    for task in tasks {
        task.await.unwrap();
    }

    // During the outage the gateway answered 503 with Retry-After, each
    // for a reason of its own: its request timeout ran out (the request
    // was not left hanging), its queue was full, or librdkafka gave up.
    let refusals = http.refusals.lock().unwrap().clone();
    assert!(!refusals.is_empty());
    let timed_out = format!("did not acknowledge within {broker_wait:?}");
    for (status, retry_after, detail) in &refusals {
        assert_eq!(*status, 503, "only 503 while the broker is down: {refusals:?}");
        assert!(retry_after, "503 without Retry-After");
        assert!(
            detail.contains(&timed_out)
                || detail == "the producer queue is full"
                || detail.starts_with("the broker did not accept the event"),
            "a refusal without a reason: {detail:?}"
        );
    }
    assert!(
        refusals.iter().any(|(_, _, detail)| detail.contains(&timed_out)),
        "no refusal came from the request timeout: {refusals:?}"
    );

    let acked: HashSet<String> =
        http.acked.lock().unwrap().iter().chain(direct.acked.lock().unwrap().iter()).cloned().collect();
    let written: Vec<String> = common::read_all(&kafka, &kafka.topics.events).await.into_iter().map(|e| e.id).collect();
    let in_topic: HashSet<&String> = written.iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !in_topic.contains(id)).collect();
    assert!(lost.is_empty(), "{} acknowledged events are not in the topic: {lost:?}", lost.len());

    let results = eventually(Duration::from_secs(60), "a result for every acknowledged event", || async {
        let mut per_event: HashMap<String, usize> = HashMap::new();
        for event in common::read_all(&kafka, &kafka.topics.results).await {
            let result: EventResult = serde_json::from_slice(&event.data).expect("results decode");
            *per_event.entry(result.event_id).or_default() += 1;
        }
        acked.iter().all(|id| per_event.contains_key(id)).then_some(per_event)
    })
    .await;
    // The idempotent producer writes each acknowledged event once, however
    // often librdkafka retried it through the outage; results are
    // at-least-once (a consumer retry may write one twice) and only counted.
    assert_eq!(written.len(), in_topic.len(), "the events topic holds duplicates");
    let duplicates: usize = results.values().map(|n| n - 1).sum();
    eprintln!(
        "broker down {OUTAGE:?}: {} acknowledged ({} over HTTP, {} direct), {} in the topic ({} duplicates), \
         {} refusals (all 503 + Retry-After), recovered {recovered_after:?} after restart, {} results \
         ({duplicates} duplicates), 0 lost",
        acked.len(),
        http.acked.lock().unwrap().len(),
        direct.acked.lock().unwrap().len(),
        written.len(),
        written.len() - in_topic.len(),
        refusals.len(),
        results.values().sum::<usize>(),
    );

    stop_consumer.cancel();
    consumer.await.unwrap().unwrap();
    app.stop().await;
}
