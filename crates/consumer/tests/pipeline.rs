//! The consumer in-process against a real broker: results, dead letters,
//! order, shared partitions, commits on shutdown.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use consumer::{Config, DefaultProcessor, ProcessError, Processed, Processor, WorkerInfo};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::json;
use stream_core::testing::{create_project_topics, eventually, kafka_args};
use stream_core::Event;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_gets_one_result_with_its_id_and_shutdown_commits() {
    let args = kafka_args();
    create_project_topics(&args).await;
    let results = Collector::start(&args, &args.topics.results).await;

    let mut events = json_events(300, 10);
    events.push(Event::json("/test", Some("s-text".into()), &json!("hello")));
    events.push(Event::json("/test", None, &json!([1, 2, 3])));
    publish(&args, &events).await;
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();

    let config = Config::for_tests(args.clone(), 2);
    let group = config.group.clone();
    let running = Running::start(config);
    let got = results.wait_for_ids(&ids).await;
    running.stop().await.expect("clean shutdown");

    let by_id: HashMap<&str, &stream_core::EventResult> = got.iter().map(|r| (r.event_id.as_str(), r)).collect();
    for event in &events {
        let result = by_id[event.id.as_str()];
        assert_eq!(result.stream_id, event.key, "results are keyed by the event's stream");
        assert_eq!(result.event_time, event.time);
        assert!(result.worker_id.unwrap() < 2);
        assert!(result.processed_at >= event.time);
    }
    let text = &by_id[events[300].id.as_str()].output;
    assert!(text.as_str().unwrap().starts_with('[') && text.as_str().unwrap().ends_with("] hello"), "{text}");
    let object = &by_id[events[0].id.as_str()].output;
    assert_eq!(object["seq"], 0);
    assert!(object["_processed"]["worker"].is_u64(), "{object}");
    assert_eq!(by_id[events[301].id.as_str()].output["type"], "array");
    // Records on the results topic are keyed by stream id too.
    for record in results.records.lock().unwrap().iter() {
        let result: stream_core::EventResult = serde_json::from_slice(record.payload().unwrap()).unwrap();
        assert_eq!(record.key().map(|k| String::from_utf8_lossy(k).into_owned()), result.stream_id);
        assert_eq!(header(record, "ce_type").as_deref(), Some("streamkit.result"));
    }
    assert_eq!(got.len(), events.len(), "no duplicates in a clean run");

    // Shutdown committed everything that was finished: all of it.
    let (committed, end) = committed_and_end(&args, &group, &args.topics.events).await;
    assert_eq!(committed, end, "committed offsets reach the end of every partition");
}

/// `--result-headers false`: each result is its JSON and its key only.
#[tokio::test]
async fn results_without_headers_are_the_json_and_the_key_alone() {
    let args = kafka_args();
    create_project_topics(&args).await;
    let results = Collector::start(&args, &args.topics.results).await;
    let events = json_events(50, 5);
    publish(&args, &events).await;
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();

    let mut config = Config::for_tests(args.clone(), 1);
    config.result_headers = false;
    let running = Running::start(config);
    let got = results.wait_for_ids(&ids).await;
    running.stop().await.expect("clean shutdown");

    assert_eq!(got.len(), events.len());
    for record in results.records.lock().unwrap().iter() {
        assert!(record.headers().is_none_or(|h| h.count() == 0), "headers on a bare result");
        let result: stream_core::EventResult = serde_json::from_slice(record.payload().unwrap()).unwrap();
        assert_eq!(record.key().map(|k| String::from_utf8_lossy(k).into_owned()), result.stream_id);
        assert!(result.stream_id.is_some());
    }
}

#[tokio::test]
async fn poison_events_go_to_the_dlq_with_headers_and_the_rest_is_processed() {
    let args = kafka_args();
    create_project_topics(&args).await;
    let results = Collector::start(&args, &args.topics.results).await;
    let dead = Collector::start(&args, &args.topics.dlq).await;

    let mut events = Vec::new();
    let mut poison = HashSet::new();
    for i in 0..120 {
        let key = Some(format!("stream-{}", i % 4));
        if i % 12 == 5 {
            let bad = Event::with_bytes("/test", key, Some("text/plain".into()), format!("not json {i}").into_bytes());
            poison.insert(bad.id.clone());
            events.push(bad);
        } else {
            events.push(Event::json("/test", key, &json!({ "i": i })));
        }
    }
    publish(&args, &events).await;
    let good: Vec<String> = events.iter().filter(|e| !poison.contains(&e.id)).map(|e| e.id.clone()).collect();

    let config = Config::for_tests(args.clone(), 1);
    let running = Running::start(config);
    let got = results.wait_for_ids(&good).await;
    dead.wait_for_len(poison.len(), "dead letters").await;
    running.stop().await.expect("clean shutdown");

    assert!(got.iter().all(|r| !poison.contains(&r.event_id)), "poison events have no result");
    let letters = dead.records.lock().unwrap().clone();
    assert_eq!(letters.len(), poison.len());
    for letter in &letters {
        let id = header(letter, "ce_id").expect("original ce_id kept");
        assert!(poison.contains(&id));
        let original = events.iter().find(|e| e.id == id).unwrap();
        assert_eq!(letter.payload(), Some(original.data.as_slice()), "payload kept byte for byte");
        assert_eq!(letter.key(), original.key.as_deref().map(str::as_bytes));
        assert_eq!(header(letter, "content-type").as_deref(), Some("text/plain"));
        assert_eq!(header(letter, consumer::dlq::header::ERROR_KIND).as_deref(), Some("invalid_json"));
        assert!(header(letter, consumer::dlq::header::ERROR).unwrap().contains("not valid JSON"));
        assert_eq!(header(letter, consumer::dlq::header::SOURCE_TOPIC).as_deref(), Some(args.topics.events.as_str()));
        let partition: i32 = header(letter, consumer::dlq::header::SOURCE_PARTITION).unwrap().parse().unwrap();
        let offset: i64 = header(letter, consumer::dlq::header::SOURCE_OFFSET).unwrap().parse().unwrap();
        assert!((0..3).contains(&partition) && offset >= 0);
        stream_core::schema::Timestamp::parse(&header(letter, consumer::dlq::header::TIME).unwrap()).unwrap();
    }
}

/// A record key is a stream id: one that is not UTF-8 names no stream, and
/// rewriting it would route its result to another one. Its event is
/// dead-lettered with its key as it was; the next event is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_key_is_not_utf8_is_dead_lettered_with_the_key_as_it_was() {
    let args = kafka_args();
    create_project_topics(&args).await;
    let results = Collector::start(&args, &args.topics.results).await;
    let dead = Collector::start(&args, &args.topics.dlq).await;
    let producer = stream_core::kafka::producer(&args, &stream_core::kafka::ProducerOptions::default()).unwrap();
    let key = [0xffu8, 0xfe];
    let headers = OwnedHeaders::new().insert(Header { key: "ce_id", value: Some("bad-key-1") });
    let record = FutureRecord::to(&args.topics.events).key(&key[..]).payload(&b"{}"[..]).headers(headers);
    write_record(&producer, record).await;
    let fine = Event::json("/test", Some("s".into()), &json!({"ok": true}));
    publish(&args, std::slice::from_ref(&fine)).await;

    let running = Running::start(Config::for_tests(args.clone(), 1));
    results.wait_for_ids(std::slice::from_ref(&fine.id)).await;
    dead.wait_for_len(1, "the dead letter").await;
    running.stop().await.expect("clean shutdown");
    let letter = dead.records.lock().unwrap()[0].clone();
    assert_eq!(letter.key(), Some(&key[..]), "the key as it was");
    assert_eq!(header(&letter, "ce_id").as_deref(), Some("bad-key-1"));
    assert_eq!(header(&letter, consumer::dlq::header::ERROR_KIND).as_deref(), Some("bad_key"));
    assert!(results.results().iter().all(|r| r.event_id != "bad-key-1"), "no result under a rewritten key");
}

/// A record with no value at all (null, as a tombstone has) is dead-lettered
/// as it was: with no value, not an empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_without_a_value_is_dead_lettered_without_one() {
    let args = kafka_args();
    create_project_topics(&args).await;
    let dead = Collector::start(&args, &args.topics.dlq).await;
    let producer = stream_core::kafka::producer(&args, &stream_core::kafka::ProducerOptions::default()).unwrap();
    let headers = OwnedHeaders::new().insert(Header { key: "ce_id", value: Some("no-value-1") });
    let record = FutureRecord::<str, [u8]>::to(&args.topics.events).key("s").headers(headers);
    write_record(&producer, record).await;

    let running = Running::start(Config::for_tests(args.clone(), 1));
    dead.wait_for_len(1, "the dead letter").await;
    running.stop().await.expect("clean shutdown");
    let letter = dead.records.lock().unwrap()[0].clone();
    assert_eq!(header(&letter, "ce_id").as_deref(), Some("no-value-1"));
    assert_eq!(header(&letter, consumer::dlq::header::ERROR_KIND).as_deref(), Some("empty_payload"));
    assert_eq!(letter.payload(), None, "no value, as the event had none");
}

/// Header names are bytes on the wire and any producer may write one that
/// is not UTF-8. Such a header is no CloudEvents attribute: the event is
/// processed as if it were absent, and a dead letter keeps it as it was.
/// (rdkafka's own header reader panics on such a name.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_that_is_not_utf8_is_no_attribute_and_is_kept_in_dead_letters() {
    let args = kafka_args();
    create_project_topics(&args).await;
    let results = Collector::start(&args, &args.topics.results).await;
    let dead = Collector::start(&args, &args.topics.dlq).await;
    let producer = stream_core::kafka::producer(&args, &stream_core::kafka::ProducerOptions::default()).unwrap();
    let name = [0xffu8, b'c', b'e'];
    for (id, payload) in [("odd-name-fine", &br#"{"ok":true}"#[..]), ("odd-name-poison", b"not json")] {
        let headers = stream_core::kafka::add_raw_header(OwnedHeaders::new(), &name, Some(b"\xfe\x00"));
        let headers = headers.insert(Header { key: "ce_id", value: Some(id) });
        let record = FutureRecord::to(&args.topics.events).key("s").payload(payload).headers(headers);
        write_record(&producer, record).await;
    }
    let after = Event::json("/test", Some("s".into()), &json!({"after": true}));
    publish(&args, std::slice::from_ref(&after)).await;

    let running = Running::start(Config::for_tests(args.clone(), 1));
    results.wait_for_ids(&["odd-name-fine".to_owned(), after.id.clone()]).await;
    dead.wait_for_len(1, "the dead letter").await;
    running.stop().await.expect("clean shutdown");
    let letter = dead.records.lock().unwrap()[0].clone();
    assert_eq!(header(&letter, "ce_id").as_deref(), Some("odd-name-poison"));
    assert_eq!(header(&letter, consumer::dlq::header::ERROR_KIND).as_deref(), Some("invalid_json"));
    let odd = stream_core::kafka::raw_headers(&letter).find(|(key, _)| *key == name);
    assert_eq!(odd, Some((&name[..], Some(&b"\xfe\x00"[..]))), "the header as it was");
}

/// Headers any producer may write can make a dead letter too large: a
/// `ce_time` of 600 KB quoted in the reason would double the letter, and
/// 1,000 headers of 1,000 bytes leave it too large without the payload.
/// The reason is cut short, and the second event's letter is a reference
/// to it; the consumer carries on (it stopped on both before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_make_a_dead_letter_too_large_cannot_stop_the_consumer() {
    let args = kafka_args();
    create_project_topics(&args).await;
    let results = Collector::start(&args, &args.topics.results).await;
    let dead = Collector::start(&args, &args.topics.dlq).await;
    let mut big = args.clone();
    big.properties.push(("message.max.bytes".into(), "4000000".into()));
    let producer = stream_core::kafka::producer(&big, &stream_core::kafka::ProducerOptions::default()).unwrap();
    let long_time = "x".repeat(600_000);
    let headers = OwnedHeaders::new()
        .insert(Header { key: "ce_id", value: Some("long-time") })
        .insert(Header { key: "ce_time", value: Some(long_time.as_str()) });
    let value = vec![b'h'; 1_000];
    let many = (0..1_000)
        .fold(OwnedHeaders::new().insert(Header { key: "ce_id", value: Some("many-headers") }), |h, i| {
            h.insert(Header { key: &format!("h{i}"), value: Some(&value) })
        });
    for (headers, payload) in [(headers, "{}"), (many, "not json")] {
        let record = FutureRecord::to(&args.topics.events).key("s").payload(payload).headers(headers);
        write_record(&producer, record).await;
    }
    let after = Event::json("/test", Some("s".into()), &json!({"after": true}));
    publish(&args, std::slice::from_ref(&after)).await;

    let running = Running::start(Config::for_tests(args.clone(), 1));
    results.wait_for_ids(std::slice::from_ref(&after.id)).await;
    dead.wait_for_len(2, "both dead letters").await;
    running.stop().await.expect("the run goes on, and stops cleanly");
    let letters = dead.records.lock().unwrap().clone();
    let long = letters.iter().find(|l| header(l, "ce_id").as_deref() == Some("long-time")).expect("whole letter");
    assert_eq!(header(long, consumer::dlq::header::ERROR_KIND).as_deref(), Some("bad_header"));
    let reason = header(long, consumer::dlq::header::ERROR).unwrap();
    assert!(reason.len() <= consumer::dlq::MAX_ERROR_LEN + 40 && reason.contains("bytes in all"), "{}", reason.len());
    assert_eq!(header(long, "ce_time").map(|t| t.len()), Some(600_000), "the event's own header as it was");
    let reference = letters.iter().find(|l| header(l, "ce_id").is_none()).expect("a reference");
    assert_eq!(header(reference, consumer::dlq::header::HEADERS_DROPPED).as_deref(), Some("1001"));
    assert_eq!(header(reference, consumer::dlq::header::ERROR_KIND).as_deref(), Some("invalid_json"));
    assert!(reference.key().is_none() && reference.payload().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_per_key_is_kept() {
    let args = kafka_args();
    create_project_topics(&args).await;
    let results = Collector::start(&args, &args.topics.results).await;
    let keys = 5;
    let per_key = 200;
    let events = json_events(keys * per_key, keys);
    publish(&args, &events).await;
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();

    let running = Running::start(Config::for_tests(args.clone(), 3));
    let got = results.wait_for_ids(&ids).await;
    running.stop().await.expect("clean shutdown");

    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for result in &got {
        seqs.entry(result.stream_id.clone().unwrap()).or_default().push(result.output["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs.len(), keys);
    for (key, seq) in seqs {
        let expected: Vec<u64> = (0..per_key as u64).collect();
        assert_eq!(seq, expected, "results of {key} arrive in the order the events were sent");
    }
}

/// Counts what one consumer instance processed.
struct Counting(Arc<AtomicU64>);

impl Processor for Counting {
    async fn process(&self, event: &Event, worker: &WorkerInfo) -> Result<Processed, ProcessError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        DefaultProcessor.process(event, worker).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_partitions_and_process_everything() {
    let args = kafka_args();
    create_project_topics(&args).await;
    let results = Collector::start(&args, &args.topics.results).await;

    let first = Config::for_tests(args.clone(), 1);
    let mut second = Config::for_tests(args.clone(), 1);
    second.group = first.group.clone();
    let (count_a, count_b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let a = Running::start_with(first, Counting(count_a.clone()));
    let b = Running::start_with(second, Counting(count_b.clone()));

    // Keep publishing until both instances have been given partitions.
    let mut ids = Vec::new();
    eventually(common::DEADLINE, "both instances processing", || {
        let events = json_events(30, 30);
        ids.extend(events.iter().map(|e| e.id.clone()));
        let (args, a, b) = (args.clone(), count_a.clone(), count_b.clone());
        async move {
            publish(&args, &events).await;
            (a.load(Ordering::Relaxed) > 0 && b.load(Ordering::Relaxed) > 0).then_some(())
        }
    })
    .await;
    let more = json_events(300, 30);
    ids.extend(more.iter().map(|e| e.id.clone()));
    publish(&args, &more).await;

    let got = results.wait_for_ids(&ids).await;
    a.stop().await.expect("first instance stops cleanly");
    b.stop().await.expect("second instance stops cleanly");
    let unique: HashSet<&str> = got.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(unique.len(), ids.len());
    eprintln!(
        "instance A processed {}, B {}, results {} for {} events",
        count_a.load(Ordering::Relaxed),
        count_b.load(Ordering::Relaxed),
        got.len(),
        ids.len()
    );
}
