//! Start-up failures say what to do; `--create-topics` creates what is missing.

mod common;

use std::time::Duration;

use consumer::Config;
use stream_core::kafka;
use stream_core::testing::kafka_args;
use stream_core::KafkaArgs;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn missing_topics_are_named_with_the_flag_that_creates_them() {
    let mut config = Config::for_tests(kafka_args(), 1);
    config.create_topics = Some(false);
    let events = config.kafka.topics.events.clone();
    let err = consumer::run(config, CancellationToken::new()).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains(&events) && text.contains("--create-topics"), "{text}");
}

/// Without `--create-topics`, a topic named by flag (a typo, say) is not
/// created: the consumer stops and says how to create it.
#[tokio::test]
async fn an_unknown_topic_name_is_refused_not_created() {
    let mut config = Config::for_tests(kafka_args(), 1);
    config.create_topics = None;
    let args = config.kafka.clone();
    let err = consumer::run(config, CancellationToken::new()).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains(&args.topics.events) && text.contains("--events-topic"), "{text}");
    assert!(text.contains("--create-topics"), "{text}");
    let cluster = kafka::check_cluster(&args).await.expect("the broker answers");
    let t = &args.topics;
    for name in [&t.events, &t.results, &t.dlq] {
        assert!(!cluster.topics.contains(name), "{name} was created");
    }
}

#[tokio::test]
async fn create_topics_creates_them_and_the_consumer_runs() {
    let config = Config::for_tests(kafka_args(), 1);
    assert_eq!(config.create_topics, Some(true));
    let args = config.kafka.clone();
    let running = common::Running::start(config);
    let cluster = stream_core::testing::eventually(common::DEADLINE, "topics created", || async {
        let cluster = kafka::check_cluster(&args).await.ok()?;
        let t = &args.topics;
        [&t.events, &t.results, &t.dlq].iter().all(|name| cluster.topics.contains(name)).then_some(cluster)
    })
    .await;
    assert!(cluster.brokers >= 1);
    running.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_unreachable_broker_is_retried_then_reported() {
    // Port 1 on localhost: nothing listens there.
    let mut args = KafkaArgs::for_brokers("127.0.0.1:1");
    args.connect_timeout = Duration::from_millis(300);
    let mut config = Config::for_tests(args, 1);
    config.connect_attempts = 2;
    let err = consumer::run(config, CancellationToken::new()).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("2 connection attempt") && text.contains("no Kafka broker reachable"), "{text}");
}

#[tokio::test]
async fn shutdown_during_connection_retries_ends_quietly() {
    let mut args = KafkaArgs::for_brokers("127.0.0.1:1");
    args.connect_timeout = Duration::from_millis(200);
    let mut config = Config::for_tests(args, 1);
    config.connect_attempts = 100;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(consumer::run(config, shutdown.clone()));
    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), task).await.expect("stops").unwrap();
    assert!(result.is_ok(), "{result:?}");
}

/// SIGTERM in the middle of a connection attempt ends the process cleanly
/// without waiting for the attempt's `--connect-timeout` (two minutes here).
#[test]
fn sigterm_during_a_connection_attempt_exits_at_once() {
    let args = KafkaArgs::for_brokers("127.0.0.1:1");
    let (mut child, seen) =
        logging_consumer(&args, "sigterm", &["--connect-timeout", "120s", "--connect-attempts", "3"], Some("info"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !next_line(&seen, deadline, "the connecting line").contains("connecting to 127.0.0.1:1") {}
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            panic!("the consumer still runs 30 s after SIGTERM, inside a 120 s connection attempt");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "a requested stop exits 0, got {status}");
}

#[tokio::test]
async fn invalid_configuration_is_rejected_before_connecting() {
    let mut config = Config::for_tests(KafkaArgs::for_brokers("127.0.0.1:1"), 0);
    config.connect_attempts = 1;
    let err = consumer::run(config, CancellationToken::new()).await.unwrap_err();
    assert!(format!("{err:#}").contains("--workers"), "{err:#}");
}

#[tokio::test]
async fn a_bad_librdkafka_property_is_named() {
    let mut args = kafka_args();
    args.properties.push(("fetch.wait.max.ms".into(), "soon".into()));
    let err = consumer::run(Config::for_tests(args, 1), CancellationToken::new()).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("fetch.wait.max.ms") && !text.contains("connection attempt"), "{text}");
}

/// The consumer binary on `args`' topics in group `<events topic>-<group>`,
/// with `flags` and `RUST_LOG` as given (unset: the default level), and a
/// channel with each line it logs.
fn logging_consumer(
    args: &KafkaArgs,
    group: &str,
    flags: &[&str],
    rust_log: Option<&str>,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut command = Command::new(env!("CARGO_BIN_EXE_consumer"));
    command
        .args(["--brokers", &args.brokers, "--topic", &args.topics.events])
        .args(["--results-topic", &args.topics.results, "--dlq-topic", &args.topics.dlq])
        .args(["--group", &format!("{}-{group}", args.topics.events)])
        .args(flags)
        // The test's own topic names: created unless `flags` say otherwise.
        .env("CREATE_TOPICS", "true")
        .env_remove("KAFKA_PROPERTIES")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match rust_log {
        Some(level) => command.env("RUST_LOG", level),
        None => command.env_remove("RUST_LOG"),
    };
    let mut child = command.spawn().expect("the consumer binary starts");
    let stderr = child.stderr.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (child, seen)
}

/// The next line of `seen`, failing the test (naming `what`) at `deadline`.
fn next_line(seen: &std::sync::mpsc::Receiver<String>, deadline: std::time::Instant, what: &str) -> String {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    seen.recv_timeout(left).unwrap_or_else(|_| panic!("{what} before the deadline"))
}

/// The throughput line goes on when there is nothing to do, so a silent log
/// means a stuck process, not an idle one.
#[test]
fn an_idle_consumer_still_logs_every_interval() {
    let args = kafka_args();
    let (mut child, seen) = logging_consumer(&args, "idle", &["--stats-interval", "300ms"], Some("info"));
    let deadline = std::time::Instant::now() + common::DEADLINE;
    let mut idle = 0;
    while idle < 2 {
        let line = next_line(&seen, deadline, "two idle lines");
        if line.contains("INFO") && line.contains("idle: processed 0") {
            idle += 1;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A caller's sampled trace is followed at the default level: the JSON log
/// has an `event processed` line with its trace id. An unsampled trace (as
/// the gateway starts for a request without one) stays at debug.
#[tokio::test]
async fn a_sampled_trace_is_logged_at_info_in_json() {
    use stream_core::Event;

    const UNSAMPLED: &str = "00-11111111111111111111111111111111-2222222222222222-00";
    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let args = kafka_args();
    stream_core::testing::create_project_topics(&args).await;
    let (mut child, seen) = logging_consumer(&args, "traced", &["--log-format", "json"], None);
    // One stream, so one partition: the unsampled event is processed first.
    let events: Vec<Event> = [UNSAMPLED, SAMPLED]
        .into_iter()
        .map(|trace| {
            let mut event = Event::json("/test", Some("traced".into()), &serde_json::json!({ "trace": trace }));
            event.extensions.push(("traceparent".into(), trace.into()));
            event
        })
        .collect();
    common::publish(&args, &events).await;
    let deadline = std::time::Instant::now() + common::DEADLINE;
    let line = loop {
        let line = next_line(&seen, deadline, "an event processed line");
        assert!(!line.contains("11111111111111111111111111111111"), "an unsampled trace logged at info: {line}");
        if line.contains("event processed") {
            break line;
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let line: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{line}");
    assert_eq!(line["event_id"], events[1].id.as_str(), "{line}");
}
