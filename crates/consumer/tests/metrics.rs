//! The consumer's Prometheus metrics, alone in this test binary so that the
//! process-wide recorder holds only this run's counts: exact values, and a
//! scrape that Prometheus's linter would accept.

mod common;

use common::*;
use consumer::Config;
use stream_core::testing::{create_project_topics, eventually, kafka_args};
use stream_core::Event;

const GOOD: usize = 45;
const POISON: usize = 5;
/// More partitions than the events have keys (ten), so at least two stay
/// empty: their lag is still reported (0), though nothing is ever
/// committed on them.
const PARTITIONS: i32 = 12;

#[tokio::test]
async fn metrics_count_exactly_what_happened_and_pass_the_lint() {
    let mut args = kafka_args();
    args.topics.partitions = PARTITIONS;
    create_project_topics(&args).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = Config::for_tests(args.clone(), 1);
    config.metrics_addr = Some(format!("127.0.0.1:{port}").parse().unwrap());
    config.stats_interval = std::time::Duration::from_millis(500);
    let mut events = json_events(GOOD, 5);
    for n in 0..POISON {
        events.push(Event::with_bytes(
            "/test",
            Some(format!("poison-{n}")),
            Some("text/plain".into()),
            b"{not json".to_vec(),
        ));
    }
    publish(&args, &events).await;
    let running = Running::start(config);

    let body = eventually(DEADLINE, "metrics for every event, and the lag", || async move {
        let body = scrape(port).await?;
        (value(&body, "consumer_events_processed_total") == Some(GOOD as f64)
            && value(&body, "consumer_events_dead_lettered_total") == Some(POISON as f64)
            && (0..PARTITIONS).all(|partition| lag_of(&body, partition) == Some(0.0)))
        .then_some(body)
    })
    .await;
    running.stop().await.expect("clean shutdown");

    assert_eq!(value(&body, "consumer_events_failed_total{kind=\"invalid_json\"}"), Some(POISON as f64), "{body}");
    // Every other kind is exported as 0 from the start, so rate() over them
    // works before the first failure of that kind.
    for kind in ["empty_payload", "bad_header", "bad_key", "rejected", "panic", "result_undeliverable"] {
        assert_eq!(
            value(&body, &format!("consumer_events_failed_total{{kind=\"{kind}\"}}")),
            Some(0.0),
            "{kind}: {body}"
        );
    }
    assert_eq!(value(&body, "consumer_end_to_end_latency_seconds_count"), Some(GOOD as f64), "{body}");
    assert_eq!(value(&body, "consumer_processing_seconds_count"), Some((GOOD + POISON) as f64), "{body}");
    assert_eq!(value(&body, "consumer_produce_retries_total"), Some(0.0), "{body}");
    assert_eq!(value(&body, "consumer_poll_errors_total"), Some(0.0), "{body}");
    // Exported from the start, before any rebalance.
    assert!(value(&body, "consumer_rebalances_total").is_some(), "{body}");
    let problems = stream_core::metrics::lint(&body);
    assert!(problems.is_empty(), "promtool would complain: {problems:#?}\n{body}");
}

/// The `consumer_lag` of one partition of the events topic.
fn lag_of(body: &str, partition: i32) -> Option<f64> {
    let label = format!("partition=\"{partition}\"");
    body.lines()
        .filter(|line| line.starts_with("consumer_lag{") && line.contains(&label))
        .find_map(|line| line.rsplit_once(' ')?.1.parse().ok())
}

/// The value of the sample named exactly `series` (name and labels).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scrape(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    let (_, body) = body.split_once("\r\n\r\n")?;
    Some(body.to_owned())
}
