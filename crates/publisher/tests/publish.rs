//! The publisher against a real broker: exact counts read back, the rate
//! held, the JSON report, and failures reflected in the exit code.

use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use publisher::{Args, Report};
use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer as _;
use rdkafka::Offset;
use stream_core::kafka::{self, StartFrom};
use stream_core::schema::{Timestamp, EVENT_TYPE, JSON};
use stream_core::{testing, Event, KafkaArgs};
use tokio_util::sync::CancellationToken;

fn args(kafka: &KafkaArgs, flags: &[&str]) -> Args {
    let mut args = Args::try_parse_from(std::iter::once("publisher").chain(flags.iter().copied())).unwrap();
    args.kafka = kafka.clone();
    args
}

/// Reads `expected` events from the start of the topic, then checks the
/// topic holds exactly that many records.
async fn read_back(kafka: &KafkaArgs, expected: usize) -> Vec<Event> {
    let topic = &kafka.topics.events;
    let reader = kafka::reader(kafka, StartFrom::Earliest).unwrap();
    let partitions = kafka::assign_all(&reader, topic, Offset::Beginning, Duration::from_secs(10)).unwrap();
    let mut events = Vec::new();
    while events.len() < expected {
        let msg = tokio::time::timeout(Duration::from_secs(30), reader.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {expected} events arrived", events.len()))
            .unwrap();
        events.push(Event::from_message(&msg).unwrap());
    }
    let mut stored = 0;
    for p in 0..partitions as i32 {
        let (low, high) = reader.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap();
        stored += high - low;
    }
    assert_eq!(stored as usize, expected, "the topic holds a different number of records than were published");
    events
}

#[tokio::test]
async fn sends_exactly_n_messages_that_a_consumer_reads_back() {
    let kafka = testing::kafka_args();
    let report =
        publisher::run(&args(&kafka, &["--count", "500", "--size", "64", "--keys", "10"]), CancellationToken::new())
            .await
            .unwrap();
    assert_eq!((report.sent, report.acked, report.failed), (500, 500, 0), "{report}");
    assert_eq!(report.bytes, 500 * 64);
    assert_eq!(report.ack_latency.count, 500);

    let events = read_back(&kafka, 500).await;
    let mut seqs: Vec<u64> = events.iter().map(|e| e.json_data().unwrap()["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..500).collect::<Vec<_>>(), "every sequence number exactly once");
    assert!(events.iter().all(|e| e.data.len() == 64 && e.source == "/publisher"));
    assert!(events.iter().all(|e| e.event_type == EVENT_TYPE && e.content_type.as_deref() == Some(JSON)));
    let ids: std::collections::BTreeSet<_> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 500, "every event has an id of its own");
    let keys: std::collections::BTreeSet<_> = events.iter().filter_map(|e| e.key.clone()).collect();
    assert_eq!(keys.len(), 10);
}

/// With --rate each event carries its due time on the fixed schedule as
/// `ce_time`: 2,000 events at 1,000/s are stamped 1 ms apart, exactly a
/// thousand in each second, whatever this machine's speed; and no run can
/// end before its last message was due.
#[tokio::test]
async fn rate_limited_events_carry_the_schedule() {
    let kafka = testing::kafka_args();
    let report =
        publisher::run(&args(&kafka, &["--count", "2000", "--rate", "1000"]), CancellationToken::new()).await.unwrap();
    assert_eq!(report.acked, 2000, "{report}");
    assert!(
        report.elapsed_secs >= 1.99,
        "the last message is due at 1.999 s, the run took {:.3} s",
        report.elapsed_secs
    );

    let events = read_back(&kafka, 2000).await;
    let mut times: Vec<i64> = events.iter().map(|e| e.time.as_micros()).collect();
    times.sort_unstable();
    let first = times[0];
    for (i, t) in times.iter().enumerate() {
        // Due at first + i ms; whole microseconds, so allow one of rounding.
        let expected = first + i as i64 * 1000;
        assert!(
            (t - expected).abs() <= 1,
            "event {i} stamped {} µs after the first, expected {}",
            t - first,
            expected - first
        );
    }
    let in_first_second = times.iter().filter(|t| **t - first < 1_000_000).count();
    assert_eq!(in_first_second, 1000);
    // Sent times are the schedule, so they also lie in the past.
    assert!(events.iter().all(|e| e.time <= Timestamp::now()));
}

/// A schedule made before the call (as `bench e2e` makes one per step)
/// stamps each event with its own due time: the schedule's start in wall
/// time is taken back from when the call reads the clocks, not taken as
/// that moment.
#[tokio::test]
async fn a_schedule_made_before_the_call_stamps_its_own_due_times() {
    let kafka = testing::kafka_args();
    testing::create_topic(&kafka, &kafka.topics.events, kafka.topics.partitions).await;
    let producer = publisher::producer(&kafka, &args(&kafka, &[]).producer_options()).unwrap();
    let payloads = publisher::Payloads::generated(64, 0);
    let (wall, now) = (Timestamp::now().as_micros(), Instant::now());
    // Began 300 ms ago: the 20 messages at 1,000/s are all late, and go at once.
    let pacer = publisher::Pacer::starting_at(Some(1000.0), now - Duration::from_millis(300));
    let progress = publisher::progress_bar(20, false);
    let outcome = publisher::publish(
        &producer,
        &kafka.topics.events,
        &payloads,
        20,
        pacer,
        &CancellationToken::new(),
        &progress,
        "/publisher",
    )
    .await;
    assert_eq!((outcome.acked, outcome.failed), (20, 0));
    let events = read_back(&kafka, 20).await;
    for event in events {
        let seq = event.json_data().unwrap()["seq"].as_i64().unwrap();
        let due = wall - 300_000 + seq * 1000;
        let off = event.time.as_micros() - due;
        // The clocks above and the call's are read microseconds apart.
        assert!(off.abs() < 20_000, "event {seq} stamped {off} µs from its due time");
    }
}

/// Runs the `publisher` binary with `--json` and `args`: its exit code and
/// the report it printed (which must parse).
fn run_binary(args: &[&str]) -> (Option<i32>, Report) {
    let output = Command::new(env!("CARGO_BIN_EXE_publisher"))
        .arg("--json")
        .args(args)
        .env_remove("KAFKA_PROPERTIES")
        .output()
        .unwrap();
    outcome(&output)
}

/// The exit code of a `publisher --json` run and the one-line report it
/// printed (which must parse).
fn outcome(output: &std::process::Output) -> (Option<i32>, Report) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(stdout.trim_end().lines().count(), 1, "the report is one line: {stdout}");
    (output.status.code(), report)
}

#[tokio::test]
async fn the_binary_prints_a_json_report_that_parses() {
    let kafka = testing::kafka_args();
    let (code, report) =
        run_binary(&["--count", "200", "--size", "32", "--brokers", &kafka.brokers, "--topic", &kafka.topics.events]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!((report.sent, report.acked, report.failed), (200, 200, 0));
    assert!(report.msgs_per_sec > 0.0 && report.ack_latency.p99_ms >= report.ack_latency.p50_ms);
}

#[tokio::test]
async fn undeliverable_messages_are_reported_and_fail_the_exit_code() {
    // Nobody listens on port 1: every message times out after 1 s.
    let (code, report) = run_binary(&[
        "--count",
        "20",
        "--no-create-topic",
        "--brokers",
        "127.0.0.1:1",
        "-X",
        "message.timeout.ms=1000",
        "--topic",
        "nowhere",
    ]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!((report.sent, report.acked, report.failed), (20, 0, 20));
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert_eq!(report.errors[0].count, 20);
}

/// Waits until the events topic holds at least `count` records.
async fn wait_until_stored(kafka: &KafkaArgs, count: i64) {
    let probe = kafka::reader(kafka, StartFrom::Earliest).unwrap();
    testing::eventually(Duration::from_secs(30), &format!("the first {count} records"), || {
        let stored: i64 = (0..kafka.topics.partitions)
            .map(|p| probe.fetch_watermarks(&kafka.topics.events, p, Duration::from_secs(5)).map_or(0, |(l, h)| h - l))
            .sum();
        std::future::ready((stored >= count).then_some(()))
    })
    .await;
}

/// Ctrl-C: sending stops, everything in flight is still acknowledged, and
/// the report says so; the topic holds exactly what was acknowledged.
#[tokio::test]
async fn interrupting_flushes_in_flight_messages_and_reports() {
    let kafka = testing::kafka_args();
    testing::create_topic(&kafka, &kafka.topics.events, kafka.topics.partitions).await;
    let shutdown = CancellationToken::new();
    let publisher_args = args(&kafka, &["--count", "1000000", "--rate", "2000"]);
    let run = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { publisher::run(&publisher_args, shutdown).await }
    });
    wait_until_stored(&kafka, 200).await;
    shutdown.cancel();
    let report = tokio::time::timeout(Duration::from_secs(30), run).await.expect("stops promptly").unwrap().unwrap();
    assert!(report.interrupted, "{report}");
    assert!(report.sent >= 200 && report.sent < 1_000_000, "{report}");
    assert_eq!((report.acked, report.failed), (report.sent, 0), "{report}");
    read_back(&kafka, report.acked as usize).await;
}

/// Ctrl-C on the binary: what is in flight is flushed and reported, and
/// the exit code is 0 because nothing failed.
#[tokio::test]
async fn the_binary_interrupted_with_nothing_failed_exits_0() {
    let kafka = testing::kafka_args();
    testing::create_topic(&kafka, &kafka.topics.events, kafka.topics.partitions).await;
    let child = Command::new(env!("CARGO_BIN_EXE_publisher"))
        .args(["--json", "--count", "1000000", "--rate", "2000", "--brokers", &kafka.brokers])
        .args(["--topic", &kafka.topics.events])
        .env_remove("KAFKA_PROPERTIES")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_stored(&kafka, 200).await;
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let (code, report) = outcome(&output);
    assert!(report.interrupted, "{report}");
    assert_eq!((report.acked, report.failed), (report.sent, 0), "{report}");
    assert_eq!(code, Some(0), "{report}");
}

#[tokio::test]
async fn no_headers_sends_bare_records() {
    let kafka = testing::kafka_args();
    let report =
        publisher::run(&args(&kafka, &["--count", "50", "--no-headers", "--keys", "0"]), CancellationToken::new())
            .await
            .unwrap();
    assert_eq!(report.acked, 50, "{report}");
    let events = read_back(&kafka, 50).await;
    // Without ce_* headers the decoder falls back to record metadata.
    assert!(events.iter().all(|e| e.source.starts_with("kafka:") && e.key.is_none() && e.data.len() == 100));
}

/// Nothing polls the producer in the background: its reports wait until
/// the sender serves them, and serving takes every one there is.
#[tokio::test]
async fn delivery_reports_wait_for_the_sender_to_serve_them() {
    let kafka = testing::kafka_args();
    testing::create_topic(&kafka, &kafka.topics.events, kafka.topics.partitions).await;
    let options = args(&kafka, &[]).producer_options();
    let producer = publisher::producer(&kafka, &options).unwrap();
    // Opaque 0: each record counts as due when the producer was made.
    let made = Instant::now();
    for n in 0..200u32 {
        let record = rdkafka::producer::BaseRecord::with_opaque_to(&kafka.topics.events, 0).payload(&[b'x'; 10]);
        producer.send(record.key(&n.to_string())).unwrap();
    }
    // Written long before this wait ends, but not reported: nobody served.
    testing::eventually(Duration::from_secs(30), "the 200 records in the topic", || async {
        let probe = kafka::reader(&kafka, StartFrom::Earliest).unwrap();
        let stored: i64 = (0..kafka.topics.partitions)
            .map(|p| probe.fetch_watermarks(&kafka.topics.events, p, Duration::from_secs(5)).map_or(0, |(l, h)| h - l))
            .sum();
        (stored == 200).then_some(())
    })
    .await;
    assert_eq!(producer.context().tally().settled(), 0);
    let serving = Instant::now();
    let mut served = 0;
    testing::eventually(Duration::from_secs(30), "every report served", || {
        served += publisher::serve_reports(&producer);
        std::future::ready((served == 200).then_some(()))
    })
    .await;
    let tally = producer.context().tally().clone();
    assert_eq!((tally.acked, tally.failed, tally.bytes), (200, 0, 2000));
    // Reports are timed when they are served, not earlier (compared at the
    // histogram's precision: it keeps each value's bucket, not the value).
    let waited = tally.ack_latency.lowest_equivalent(serving.duration_since(made).as_micros() as u64);
    assert!(tally.ack_latency.min() >= waited, "{} µs < {waited} µs", tally.ack_latency.min());
    assert_eq!(publisher::serve_reports(&producer), 0, "nothing is left to serve");
}

/// A queue of 50 records is full almost all the time: each refused record
/// waits for acks and is sent again with its own headers, and none is lost
/// or sent twice.
#[tokio::test]
async fn a_full_queue_waits_for_acks_and_loses_nothing() {
    let kafka = testing::kafka_args();
    let report = publisher::run(
        &args(&kafka, &["--count", "3000", "--keys", "10", "--queue-capacity", "50"]),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!((report.sent, report.acked, report.failed), (3000, 3000, 0), "{report}");
    let events = read_back(&kafka, 3000).await;
    assert!(events.iter().all(|e| e.source == "/publisher" && e.event_type == EVENT_TYPE), "headers kept on retry");
    let ids: std::collections::BTreeSet<_> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 3000, "every event once, with an id of its own");
}

/// A record librdkafka refuses outright (larger than `message.max.bytes`)
/// is counted as failed with librdkafka's reason, and fails the exit code.
#[tokio::test]
async fn records_librdkafka_refuses_are_counted_with_the_reason() {
    let kafka = testing::kafka_args();
    let (code, report) = run_binary(&[
        "--count",
        "5",
        "--size",
        "3000",
        "--brokers",
        &kafka.brokers,
        "-X",
        "message.max.bytes=2000",
        "--topic",
        &kafka.topics.events,
    ]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!((report.sent, report.acked, report.failed), (0, 0, 5));
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert_eq!(report.errors[0].count, 5);
    assert!(report.errors[0].error.contains("MessageSizeTooLarge"), "{}", report.errors[0].error);
}

/// A reader that closes the pipe early loses the report, not the exit code.
#[tokio::test]
async fn a_closed_stdout_does_not_panic() {
    let kafka = testing::kafka_args();
    let mut child = Command::new(env!("CARGO_BIN_EXE_publisher"))
        .args(["--count", "20", "--json", "--brokers", &kafka.brokers, "--topic", &kafka.topics.events])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// An idempotent producer cannot send before it holds a producer id;
/// `until_ready` waits for that, so a run's clock leaves its start-up out.
#[tokio::test]
async fn a_producer_is_ready_once_it_holds_a_producer_id() {
    let kafka = testing::kafka_args();
    let never = CancellationToken::new();
    let options = args(&kafka, &[]).producer_options();
    let producer = publisher::producer(&kafka, &options).unwrap();
    assert!(!publisher::until_ready(&producer, Duration::ZERO, &never).await, "not at creation");
    assert!(publisher::until_ready(&producer, Duration::from_secs(30), &never).await, "ready with a broker up");

    let unreachable = KafkaArgs::for_brokers("127.0.0.1:1");
    let producer = publisher::producer(&unreachable, &options).unwrap();
    assert!(!publisher::until_ready(&producer, Duration::from_millis(300), &never).await, "no broker, no id");
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    assert!(!publisher::until_ready(&producer, Duration::from_secs(60), &cancelled).await, "a shutdown ends the wait");

    // Without idempotence there is no id to wait for.
    let leader = args(&unreachable, &["--acks", "leader"]).producer_options();
    let producer = publisher::producer(&unreachable, &leader).unwrap();
    assert!(publisher::until_ready(&producer, Duration::from_secs(30), &never).await);
}

/// A run that could send nothing, or on no schedule, is refused by the
/// flag that says so, before anything connects.
#[test]
fn a_zero_count_or_a_rate_that_is_not_a_number_is_refused() {
    for flags in [&["--count", "0"][..], &["--rate", "NaN"], &["--rate", "inf"], &["--rate=-5"], &["--rate", "fast"]] {
        let argv = std::iter::once("publisher").chain(flags.iter().copied());
        let err = Args::try_parse_from(argv).err().unwrap_or_else(|| panic!("{flags:?} accepted"));
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{flags:?}: {err}");
    }
    assert_eq!(Args::try_parse_from(["publisher", "--rate", "0"]).unwrap().rate, Some(0.0), "0: no limit");
}

/// Without a terminal for the bar (here stderr is a pipe), a long run
/// still says how far it is, on a line of its own.
#[tokio::test]
async fn without_a_terminal_progress_is_logged_as_lines() {
    let kafka = testing::kafka_args();
    let output = Command::new(env!("CARGO_BIN_EXE_publisher"))
        .args(["--count", "1500", "--rate", "1000", "--progress-interval", "200ms"])
        .args(["--brokers", &kafka.brokers, "--topic", &kafka.topics.events])
        .env_remove("KAFKA_PROPERTIES")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("acknowledged ") && l.contains("/1500 (")).collect();
    assert!(lines.len() >= 2, "a 1.5 s run logs progress every 200 ms: {stderr}");
    assert!(lines.iter().any(|l| !l.contains("acknowledged 0/")), "the count moves: {lines:?}");
}

/// A signal while the broker does not answer ends the wait for it: the run
/// sends nothing and reports itself interrupted, long before the
/// two-minute connection timeout.
#[tokio::test]
async fn interrupted_while_waiting_for_the_broker_it_reports_at_once() {
    let mut unreachable = KafkaArgs::for_brokers("127.0.0.1:1");
    unreachable.connect_timeout = Duration::from_secs(120);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let (args, shutdown) = (args(&unreachable, &["--count", "10"]), shutdown.clone());
        async move { publisher::run(&args, shutdown).await }
    });
    shutdown.cancel();
    let report = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run ends well before the connection timeout")
        .unwrap()
        .unwrap();
    assert!(report.interrupted, "{report}");
    assert_eq!((report.sent, report.acked, report.failed), (0, 0, 0), "{report}");
}
