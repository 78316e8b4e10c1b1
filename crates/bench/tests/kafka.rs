//! The Kafka benchmarks end to end on small counts against a real broker:
//! each runs, counts what it should, and writes outputs that parse.

mod common;

use std::path::Path;
use std::process::Command;

use bench::hgrm;
use bench::{BenchReport, Cli};
use clap::Parser;
use stream_core::testing::{self, ScratchDir};
use stream_core::KafkaArgs;
use tokio_util::sync::CancellationToken;

fn out_dir() -> ScratchDir {
    ScratchDir::new("bench-out")
}

/// Parses `flags` as a bench command line, pointed at the test broker and a
/// fresh topic.
fn cli(kafka: &KafkaArgs, out: &Path, flags: &[&str]) -> Cli {
    let mut cli =
        Cli::try_parse_from(["bench"].iter().chain(flags).copied().chain(["--out-dir", out.to_str().unwrap()]))
            .unwrap();
    let load = match &mut cli.command {
        Some(bench::Command::Produce(a)) => &mut a.load,
        Some(bench::Command::Consume(a)) => &mut a.load,
        Some(bench::Command::E2e(a)) => &mut a.load,
        None => &mut cli.e2e.load,
        Some(bench::Command::Api(_) | bench::Command::Cost(_)) => unreachable!("not a Kafka benchmark"),
    };
    load.kafka = kafka.clone();
    load.bench_topic = kafka.topics.events.clone();
    cli
}

/// Checks the files a report names: the JSON parses back to the same rows,
/// each `.hgrm` holds the row's count, and the plots are SVG.
fn check_outputs(report: &BenchReport) {
    let json = std::fs::read_to_string(report.json.as_ref().unwrap()).unwrap();
    let parsed: BenchReport = serde_json::from_str(&json).unwrap();
    common::assert_same_rows(&parsed.rows, &report.rows);
    for row in &report.rows {
        let text = std::fs::read_to_string(row.hgrm.as_ref().unwrap()).unwrap();
        let distribution = hgrm::parse(&text).unwrap();
        assert_eq!(distribution.total_count, row.latency.count, "{}", row.name);
        assert!((distribution.max_ms - row.latency.max_ms).abs() <= row.latency.max_ms * 0.01 + 0.001);
    }
    assert!(!report.plots.is_empty());
    for plot in &report.plots {
        let svg = std::fs::read_to_string(plot).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{}", plot.display());
    }
}

#[tokio::test]
async fn produce_counts_every_ack() {
    let kafka = testing::kafka_args();
    let out = out_dir();
    let report =
        bench::run(&cli(&kafka, out.path(), &["produce", "--count", "300", "--size", "50"]), CancellationToken::new())
            .await
            .unwrap();
    assert_eq!(report.command, "produce");
    let row = &report.rows[0];
    assert_eq!((row.latency.count, row.errors), (300, 0), "{report}");
    assert!(row.rate > 0.0 && row.mb_per_sec.unwrap() > 0.0);
    check_outputs(&report);
    assert!(out.join("produce-ack.hgrm").is_file() && out.join("produce.svg").is_file());
}

/// Records librdkafka refuses outright (larger than `message.max.bytes`)
/// are each one error, not counted again as never sent.
#[tokio::test]
async fn refused_records_are_counted_once() {
    let kafka = testing::kafka_args();
    let out = out_dir();
    let report = bench::run(
        &cli(&kafka, out.path(), &["produce", "--count", "5", "--size", "1100000", "--bench-topic", "bench-refused"]),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let row = &report.rows[0];
    assert_eq!((row.latency.count, row.errors), (0, 5), "{report}");
}

#[tokio::test]
async fn consume_reads_what_it_filled() {
    let kafka = testing::kafka_args();
    let out = out_dir();
    let report =
        bench::run(&cli(&kafka, out.path(), &["consume", "--count", "400"]), CancellationToken::new()).await.unwrap();
    let row = &report.rows[0];
    assert_eq!((row.latency.count, row.errors), (400, 0), "{report}");
    assert!((row.mb_per_sec.unwrap() - row.rate * 100.0 / 1e6).abs() < 1e-6, "100-byte records");
    check_outputs(&report);
}

#[tokio::test]
async fn consume_fails_clearly_when_the_topic_runs_dry() {
    let kafka = testing::kafka_args();
    let out = out_dir();
    let err = bench::run(
        &cli(&kafka, out.path(), &["consume", "--count", "10", "--no-fill", "--idle-timeout", "2s"]),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("ran dry after 0 of 10"), "{err:#}");
}

#[tokio::test]
async fn e2e_records_the_window_at_each_rate() {
    let kafka = testing::kafka_args();
    // The second rate gets a producer of its own, with a longer linger.
    let flags = ["e2e", "--rates", "200,2500", "--warmup", "500ms", "--duration", "1s", "--keys", "7"];
    let out = out_dir();
    let report = bench::run(&cli(&kafka, out.path(), &flags), CancellationToken::new()).await.unwrap();
    assert_eq!(report.rows.len(), 2, "{report}");
    for (row, rate) in report.rows.iter().zip([200.0, 2500.0]) {
        assert_eq!(row.target_rate, Some(rate));
        assert_eq!(row.errors, 0, "{report}");
        // Exactly the messages due in the 1 s recording window are
        // recorded; warm-up ones are not.
        assert_eq!(row.latency.count, rate as u64, "recorded at {rate}/s: {report}");
        assert!(row.latency.p50_ms > 0.0 && row.latency.max_ms >= row.latency.p99_ms);
    }
    check_outputs(&report);
    assert_eq!(report.plots.len(), 2);
    let svg = std::fs::read_to_string(&report.plots[0]).unwrap();
    assert!(svg.contains("offered rate") && svg.contains("p99"));
}

#[tokio::test]
async fn the_binary_prints_json_and_writes_files() {
    let kafka = testing::kafka_args();
    let out = out_dir();
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["produce", "--count", "100", "--json", "--brokers", &kafka.brokers])
        .args(["--bench-topic", &kafka.topics.events, "--out-dir", out.path().to_str().unwrap()])
        .env_remove("KAFKA_PROPERTIES")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let report: BenchReport = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(stdout.trim_end().lines().count(), 1, "the report is one line: {stdout}");
    assert_eq!(report.rows[0].latency.count, 100);
    check_outputs(&report);
}
