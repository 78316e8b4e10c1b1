//! `bench produce`: how fast the project's producer settings move records,
//! and how long acknowledgements take.
//!
//! Clocks: a message's latency runs from the moment it is handed to
//! librdkafka (or, with `--rate`, from the moment it was due on the fixed
//! schedule) to the moment its delivery report is collected.

use clap::Args;
use publisher::{Pacer, Payloads};
use tokio_util::sync::CancellationToken;

use crate::output::{self, BenchReport, Measurement};
use crate::{Common, KafkaBench};

/// Options of `bench produce`.
#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    /// Messages to send.
    #[arg(short = 'n', long, env = "BENCH_COUNT", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,

    /// Offered rate in messages per second (open loop); unset: as fast as possible.
    #[arg(short = 'r', long, env = "BENCH_RATE", value_parser = stream_core::config::parse_rate)]
    pub rate: Option<f64>,

    /// Send bare records (no CloudEvents headers), as rdkafka_performance does.
    #[arg(long, env = "BENCH_NO_HEADERS")]
    pub no_headers: bool,

    #[command(flatten)]
    pub load: KafkaBench,

    #[command(flatten)]
    pub common: Common,
}

/// Runs `bench produce`.
pub async fn run(args: &ProduceArgs, shutdown: CancellationToken) -> anyhow::Result<BenchReport> {
    let load = &args.load;
    load.prepare().await?;
    let producer = publisher::ready_producer(&load.kafka, &load.bulk_producer_options(), &shutdown).await?;
    let mut payloads = Payloads::generated(load.size, load.keys);
    if args.no_headers {
        payloads = payloads.without_headers();
    }
    let progress = publisher::progress_bar(args.count, false);
    tracing::info!(count = args.count, size = load.size, topic = %load.bench_topic, "producing");
    let outcome = publisher::publish(
        &producer,
        &load.bench_topic,
        &payloads,
        args.count,
        Pacer::new(args.rate),
        &shutdown,
        &progress,
        publisher::payload::SOURCE,
    )
    .await;
    let report = outcome.report(&load.bench_topic, args.rate);
    let mut m = Measurement::new("ack", report.msgs_per_sec, outcome.ack_latency);
    m.row.target_rate = report.target_rate;
    m.row.mb_per_sec = Some(report.mb_per_sec);
    // Failed (refused ones included) and never tried (an interrupted run).
    m.row.errors = report.failed + (args.count - report.sent - outcome.refused);
    let plot = output::percentile_plot(
        &format!("produce: ack latency, {} x {} B at {:.0} msg/s", report.acked, load.size, report.msgs_per_sec),
        std::slice::from_ref(&m),
    );
    output::write(
        &args.common.out_dir,
        "produce",
        "handed to the producer (or due, with --rate) -> delivery report",
        vec![m],
        vec![("produce".into(), plot)],
    )
}
