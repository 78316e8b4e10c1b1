//! Fault injection with librdkafka's mock cluster (in addition to the real
//! broker tests): produce errors that outlast librdkafka's own retries are
//! retried by the consumer, not dead-lettered, and every event still gets
//! its result.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use consumer::{Config, DefaultProcessor};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use stream_core::testing::{eventually, unique_name};
use stream_core::KafkaArgs;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_produce_errors_are_retried_not_dead_lettered() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let args = mock_topics(&cluster);
    let events = json_events(200, 10);
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    publish(&args, &events).await;
    let results = Collector::start(&args, &args.topics.results).await;

    // From now on produce requests fail with a retriable error for a while,
    // and librdkafka gives up on a record after one second: the delivery
    // errors reach the consumer, which must retry them itself.
    cluster.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 40]);
    let mut config = Config::for_tests(args.clone(), 1);
    config.create_topics = Some(false); // the mock cluster has no CreateTopics
    config.kafka.properties.push(("message.timeout.ms".into(), "1000".into()));
    let stats = Arc::new(consumer::stats::Stats::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(consumer::run_observed(config, DefaultProcessor, stats.clone(), shutdown.clone()));

    let got = results.wait_for_ids(&ids).await;
    eventually(DEADLINE, "in-flight count back to zero", || async { (stats.snapshot().in_flight == 0).then_some(()) })
        .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), task).await.expect("stops").unwrap().expect("clean run");

    let s = stats.snapshot();
    assert!(s.retries > 0, "the injected errors must have reached the consumer: {s:?}");
    assert_eq!(s.dead_lettered, 0, "transient errors are not dead-lettered: {s:?}");
    assert_eq!(s.failed, 0);
    assert!(got.len() >= ids.len());
}

/// A mock cluster with the three topics of fresh names.
/// Publishes one event whose payload is not JSON (dead-lettered as
/// `invalid_json`) and returns it.
async fn publish_poison(args: &KafkaArgs) -> stream_core::Event {
    let poison = stream_core::Event::with_bytes("/test", Some("k".into()), None, b"not json".to_vec());
    publish(args, std::slice::from_ref(&poison)).await;
    poison
}

fn mock_topics(cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>) -> KafkaArgs {
    let mut args = KafkaArgs::for_brokers(cluster.bootstrap_servers());
    let tag = unique_name("faults");
    args.topics.events = format!("{tag}.events");
    args.topics.results = format!("{tag}.results");
    args.topics.dlq = format!("{tag}.dlq");
    for topic in [&args.topics.events, &args.topics.results, &args.topics.dlq] {
        cluster.create_topic(topic, 3, 1).expect("mock topic");
    }
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_the_broker_refuses_for_good_dead_letters_its_event() {
    refused_results_are_dead_lettered(RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE).await;
}

/// An event whose dead letter is too large for the broker (one near the
/// size limit whose result was refused for its size, say) is dead-lettered
/// without its payload, naming the payload's size and where the event is:
/// one such event cannot stop the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_large_for_the_broker_goes_without_the_payload() {
    // The whole dead letter is refused for its size, once.
    let (poison, letter) = dead_letter_refused_for_size(1).await;
    assert!(rdkafka::Message::payload(&letter).unwrap_or_default().is_empty(), "written without the payload");
    assert_eq!(header(&letter, consumer::dlq::header::PAYLOAD_DROPPED).as_deref(), Some("8"), "b\"not json\"");
    assert_eq!(header(&letter, "ce_id"), Some(poison.id.clone()));
    assert_eq!(header(&letter, consumer::dlq::header::ERROR_KIND).as_deref(), Some("invalid_json"));
    assert_eq!(header(&letter, consumer::dlq::header::SOURCE_OFFSET).as_deref(), Some("0"));
}

/// A dead letter too large even without the payload (an event whose
/// headers alone are near the limit) is written as a reference to the
/// event: no key, no payload, none of its headers, their count, and where
/// the event is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_large_without_the_payload_goes_as_a_reference() {
    // The whole letter and the one without the payload are both refused.
    let (poison, letter) = dead_letter_refused_for_size(2).await;
    assert!(rdkafka::Message::payload(&letter).is_none(), "no payload");
    assert!(rdkafka::Message::key(&letter).is_none(), "no key");
    assert_eq!(header(&letter, "ce_id"), None, "none of the event's headers");
    let count = poison.headers().count().to_string();
    assert_eq!(header(&letter, consumer::dlq::header::HEADERS_DROPPED), Some(count));
    assert_eq!(header(&letter, consumer::dlq::header::PAYLOAD_DROPPED).as_deref(), Some("8"));
    assert_eq!(header(&letter, consumer::dlq::header::ERROR_KIND).as_deref(), Some("invalid_json"));
    assert_eq!(header(&letter, consumer::dlq::header::SOURCE_OFFSET).as_deref(), Some("0"));
}

/// Publishes one poison event to a mock cluster whose next `refusals`
/// produce requests are refused for their size, runs the consumer until the
/// event's dead letter is written, and returns the event and its letter,
/// checking that the run went on, stopped cleanly and wrote one letter.
async fn dead_letter_refused_for_size(refusals: usize) -> (stream_core::Event, rdkafka::message::OwnedMessage) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let args = mock_topics(&cluster);
    let poison = publish_poison(&args).await;
    let dead = Collector::start(&args, &args.topics.dlq).await;

    let refused = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; refusals];
    cluster.request_errors(RDKafkaApiKey::Produce, &refused);
    let mut config = Config::for_tests(args.clone(), 1);
    config.create_topics = Some(false);
    let running = Running::start(config);
    let letter =
        eventually(DEADLINE, "the dead letter", || async { dead.records.lock().unwrap().first().cloned() }).await;
    running.stop().await.expect("the run goes on, and stops cleanly");
    assert_eq!(dead.records.lock().unwrap().len(), 1);
    (poison, letter)
}

/// An error that is neither a timeout, a leader move nor a broker outage is
/// permanent: retrying it would stall the partition for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_failure_is_permanent_not_retried() {
    refused_results_are_dead_lettered(RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED).await;
}

/// The first produce request (a batch of results) is refused with `error`;
/// those results' events must reach the dead-letter topic, the others
/// their results, and the run must stay healthy without retrying.
async fn refused_results_are_dead_lettered(error: RDKafkaRespErr) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let args = mock_topics(&cluster);
    let events = json_events(50, 5);
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    publish(&args, &events).await;
    let results = Collector::start(&args, &args.topics.results).await;
    let dead = Collector::start(&args, &args.topics.dlq).await;

    cluster.request_errors(RDKafkaApiKey::Produce, &[error]);
    let mut config = Config::for_tests(args.clone(), 1);
    config.create_topics = Some(false);
    let running = Running::start(config);
    let stats = running.stats.clone();

    eventually(DEADLINE, "every event answered by a result or a dead letter", || async {
        let answered: std::collections::HashSet<String> = results
            .results()
            .into_iter()
            .map(|r| r.event_id)
            .chain(dead.records.lock().unwrap().iter().filter_map(|m| header(m, "ce_id")))
            .collect();
        ids.iter().all(|id| answered.contains(id)).then_some(())
    })
    .await;
    running.stop().await.expect("clean shutdown");
    assert_eq!(stats.snapshot().retries, 0, "{error:?} is permanent: never retried");
    let letters = dead.records.lock().unwrap().clone();
    assert!(!letters.is_empty(), "the refused results' events are dead-lettered");
    for letter in &letters {
        assert_eq!(header(letter, consumer::dlq::header::ERROR_KIND).as_deref(), Some("result_undeliverable"));
        assert!(header(letter, consumer::dlq::header::ERROR).unwrap().contains(&args.topics.results));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_written_stops_the_run_without_committing_it() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let args = mock_topics(&cluster);
    publish_poison(&args).await;

    // Every produce is refused for good: the dead letter cannot be written.
    cluster.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 50]);
    let mut config = Config::for_tests(args.clone(), 1);
    config.create_topics = Some(false);
    let group = config.group.clone();
    let shutdown = CancellationToken::new();
    let err = tokio::time::timeout(DEADLINE, consumer::run(config, shutdown))
        .await
        .expect("the run ends by itself")
        .expect_err("the run fails");
    let text = format!("{err:#}");
    assert!(text.contains("cannot write the dead letter") && text.contains(&args.topics.dlq), "{text}");
    let (committed, _) = committed_and_end(&args, &group, &args.topics.events).await;
    assert!(committed.values().all(|&o| o <= 0), "nothing committed past the lost event: {committed:?}");
}
