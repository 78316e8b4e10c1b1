//! `bench api` end to end: the real gateway and consumer in this process,
//! on a real broker, with a few streams and messages.

mod common;

use std::path::Path;

use bench::{hgrm, BenchReport, Cli};
use clap::Parser;
use stream_core::testing;
use tokio_util::sync::CancellationToken;

fn api_cli(url: &str, key: &str, out: &Path, extra: &[&str]) -> Cli {
    let args = ["bench", "api", "--url", url, "--api-key", key, "--out-dir", out.to_str().unwrap()];
    Cli::try_parse_from(args.iter().chain(extra).copied()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_gets_every_result() {
    let kafka = testing::kafka_args();
    testing::create_project_topics(&kafka).await;
    let stop = CancellationToken::new();
    let app =
        producer_api::Application::build(producer_api::Config::for_tests(kafka.clone(), vec!["bench-key".into()]))
            .await
            .unwrap();
    let url = format!("http://{}", app.local_addr());
    let registry = app.state().registry.clone();
    let api = tokio::spawn(app.run_until_stopped(stop.clone()));
    let consumer = tokio::spawn(consumer::run(consumer::Config::for_tests(kafka.clone(), 2), stop.clone()));

    let out = testing::ScratchDir::new("bench-api");
    let cli =
        api_cli(&url, "bench-key", out.path(), &["--streams", "5", "--messages", "53", "--result-timeout", "60s"]);
    let report = bench::run(&cli, CancellationToken::new()).await.unwrap();

    let [request, e2e] = &report.rows[..] else { panic!("two rows expected: {report}") };
    assert_eq!((request.name.as_str(), request.latency.count, request.errors), ("request", 53, 0), "{report}");
    assert_eq!((e2e.name.as_str(), e2e.latency.count, e2e.errors), ("end-to-end", 53, 0), "{report}");
    // A result cannot arrive before its request started, nor (on the
    // median) before the request that produced it returned.
    assert!(e2e.latency.p50_ms >= request.latency.p50_ms * 0.5, "{report}");
    let parsed: BenchReport = serde_json::from_str(&std::fs::read_to_string(out.join("api.json")).unwrap()).unwrap();
    common::assert_same_rows(&parsed.rows, &report.rows);
    let d = hgrm::parse(&std::fs::read_to_string(out.join("api-end-to-end.hgrm")).unwrap()).unwrap();
    assert_eq!(d.total_count, 53);
    assert!(std::fs::read_to_string(out.join("api.svg")).unwrap().contains("end-to-end"));
    // The benchmark deletes its streams, so runs can repeat within the key's quota.
    assert_eq!(registry.len(), 0, "bench api left streams open");

    // The same through the streams' own WebSockets instead of HTTP sends.
    let cli = api_cli(&url, "bench-key", out.path(), &["--streams", "4", "--messages", "30", "--via", "ws"]);
    let report = bench::run(&cli, CancellationToken::new()).await.unwrap();
    let [request, e2e] = &report.rows[..] else { panic!("two rows expected: {report}") };
    assert_eq!((request.latency.count, request.errors, e2e.latency.count, e2e.errors), (30, 0, 30, 0), "{report}");

    // Form bodies, as the seed's clients send them, each on a connection of its own.
    let flags = ["--streams", "3", "--messages", "21", "--body", "form", "--connections", "per-request"];
    let report = bench::run(&api_cli(&url, "bench-key", out.path(), &flags), CancellationToken::new()).await.unwrap();
    let [request, e2e] = &report.rows[..] else { panic!("two rows expected: {report}") };
    assert_eq!((request.latency.count, request.errors, e2e.latency.count, e2e.errors), (21, 0, 21, 0), "{report}");

    stop.cancel();
    api.await.unwrap().unwrap();
    consumer.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_wrong_key_is_reported_with_the_status() {
    let kafka = testing::kafka_args();
    let stop = CancellationToken::new();
    let app =
        producer_api::Application::build(producer_api::Config::for_tests(kafka, vec!["right".into()])).await.unwrap();
    let url = format!("http://{}", app.local_addr());
    let api = tokio::spawn(app.run_until_stopped(stop.clone()));
    let out = testing::ScratchDir::new("bench-api");
    let err = bench::run(
        &api_cli(&url, "wrong", out.path(), &["--streams", "2", "--messages", "2"]),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("/stream/start") && err.contains("401"), "{err}");
    stop.cancel();
    api.await.unwrap().unwrap();
}
