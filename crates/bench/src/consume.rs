//! `bench consume`: how fast a reader drains a topic from the start.
//!
//! The topic is first filled with `--count` records (unless `--no-fill`);
//! then a reader assigned to every partition reads `--count` records from
//! the beginning. Throughput counts from the assignment to the last record.
//! The latency column is the time each `recv()` waited for its record, so a
//! stalled fetch shows up in the tail.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use publisher::report::{latency_histogram, record};
use publisher::{Pacer, Payloads};
use rdkafka::Offset;
use stream_core::config::parse_positive_duration;
use stream_core::kafka::{self, StartFrom};
use tokio_util::sync::CancellationToken;

use crate::output::{self, BenchReport, Measurement};
use crate::{Common, KafkaBench};

/// Options of `bench consume`.
#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    /// Records to read (and, unless --no-fill, to write first).
    #[arg(short = 'n', long, env = "BENCH_COUNT", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,

    /// Read what the topic already holds instead of writing --count records first.
    #[arg(long, env = "BENCH_NO_FILL")]
    pub no_fill: bool,

    /// Give up when no record arrives for this long.
    #[arg(long, env = "BENCH_IDLE_TIMEOUT", value_parser = parse_positive_duration, default_value = "10s")]
    pub idle_timeout: Duration,

    #[command(flatten)]
    pub load: KafkaBench,

    #[command(flatten)]
    pub common: Common,
}

/// Runs `bench consume`.
pub async fn run(args: &ConsumeArgs, shutdown: CancellationToken) -> anyhow::Result<BenchReport> {
    let load = &args.load;
    load.prepare().await?;
    let topic = &load.bench_topic;
    if !args.no_fill {
        tracing::info!(count = args.count, size = load.size, %topic, "filling the topic");
        let producer = publisher::producer(&load.kafka, &load.bulk_producer_options())?;
        let payloads = Payloads::generated(load.size, load.keys);
        let progress = publisher::progress_bar(args.count, false);
        let outcome = publisher::publish(
            &producer,
            topic,
            &payloads,
            args.count,
            Pacer::new(None),
            &shutdown,
            &progress,
            publisher::payload::SOURCE,
        )
        .await;
        if outcome.failed > 0 || outcome.interrupted {
            bail!("filling {topic} failed: {} of {} acknowledged", outcome.acked, args.count);
        }
    }

    let reader = kafka::reader(&load.kafka, StartFrom::Earliest)?;
    kafka::assign_all(&reader, topic, Offset::Beginning, load.kafka.connect_timeout)
        .with_context(|| format!("assigning {topic}"))?;
    tracing::info!(count = args.count, %topic, "consuming");
    let mut histogram = latency_histogram();
    let mut bytes = 0u64;
    let start = Instant::now();
    let mut received = 0u64;
    while received < args.count && !shutdown.is_cancelled() {
        let asked = Instant::now();
        let message = tokio::select! {
            m = tokio::time::timeout(args.idle_timeout, reader.recv()) => m,
            _ = shutdown.cancelled() => break,
        };
        let message = match message {
            Ok(m) => m.with_context(|| format!("reading {topic}"))?,
            Err(_) => bail!(
                "{topic} ran dry after {received} of {} records (nothing for {:?}); drop --no-fill or lower --count",
                args.count,
                args.idle_timeout
            ),
        };
        record(&mut histogram, asked.elapsed());
        bytes += message.payload_len() as u64;
        received += 1;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let mut m = Measurement::new("recv wait", received as f64 / secs, histogram);
    m.row.mb_per_sec = Some(bytes as f64 / secs / 1e6);
    m.row.errors = args.count - received;
    let plot = output::percentile_plot(
        &format!("consume: wait per record, {received} records at {:.0}/s", received as f64 / secs),
        std::slice::from_ref(&m),
    );
    output::write(
        &args.common.out_dir,
        "consume",
        "time each recv() waited for its record (reader from the beginning of the topic)",
        vec![m],
        vec![("consume".into(), plot)],
    )
}
