//! Consume throughput: the consumer (processing, result produce,
//! at-least-once commits) against a bare librdkafka read of the same topic.
//!
//! ```text
//! # 1. Load a topic with 1,000,000 JSON events of 100-200 bytes (once)
//! cargo run --release -p consumer --example throughput -- preload --topic bench --count 1000000
//! # 2. The ceiling: read it with librdkafka alone, no processing, no produce
//! cargo run --release -p consumer --example throughput -- bare --topic bench
//! # 3. The floor of the consumer's job: read it and write every record back
//! #    (payload, key, headers) to the results topic, with librdkafka alone
//! cargo run --release -p consumer --example throughput -- pipe --topic bench --results-topic bench.results
//! # 4. The consumer with 1, 2, 4 workers (a fresh group each time)
//! cargo run --release -p consumer --example throughput -- consumer --topic bench \
//!     --results-topic bench.results --dlq-topic bench.dlq --create-topics --workers 4
//! ```
//!
//! Rates are measured from the first record read to the last one finished,
//! so group joins and start-up do not count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::Offset;
use stream_core::kafka::{self, ProducerOptions, StartFrom};
use stream_core::{Event, KafkaArgs};

// The same allocator as the consumer binary, so the rates compare.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Consume throughput: the consumer vs a bare librdkafka read")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

// Parsed once; the size of the consumer's configuration does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Mode {
    /// Publish `count` JSON events of 100-200 bytes to the events topic
    /// (creating the topics if missing).
    Preload {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[arg(long, env = "COUNT", default_value_t = 1_000_000)]
        count: usize,
        /// Distinct stream ids (record keys).
        #[arg(long, env = "KEYS", default_value_t = 1_000)]
        keys: usize,
    },
    /// Read the whole events topic with librdkafka alone.
    Bare {
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Read the whole events topic and write each record, with its key and
    /// headers as read, to the results topic: librdkafka's own cost of one
    /// record in and one CloudEvents record out, without processing,
    /// ordering or commits.
    Pipe {
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Run the consumer over the whole events topic with a fresh group.
    Consumer {
        #[command(flatten)]
        config: consumer::Config,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    stream_core::config::load_dotenv();
    let cli = Cli::parse();
    stream_core::telemetry::init(stream_core::config::LogFormat::Text);
    match cli.mode {
        Mode::Preload { kafka: args, count, keys } => {
            kafka::ensure_topics(&args, &kafka::project_topics(&args)).await?;
            preload(&args, count, keys).await
        }
        Mode::Bare { kafka: args } => bare(&args).await,
        Mode::Pipe { kafka: args } => pipe(&args).await,
        Mode::Consumer { config } => {
            // As the `consumer` binary does.
            consumer::memory::prefer_small_pages();
            run_consumer(config).await
        }
    }
}

async fn preload(args: &KafkaArgs, count: usize, keys: usize) -> anyhow::Result<()> {
    let producer = kafka::producer(args, &ProducerOptions::default())?;
    let filler = "abcdefghijklmnopqrstuvwxyz0123456789".repeat(5);
    let started = Instant::now();
    let mut pending = Vec::with_capacity(count);
    let mut bytes = 0usize;
    for i in 0..count {
        // 100 to 200 bytes of JSON: a sequence number and some text whose
        // length varies with i.
        let text = &filler[..75 + (i * 7919) % 100];
        let event =
            Event::json("/bench", Some(format!("stream-{}", i % keys)), &serde_json::json!({"seq": i, "text": text}));
        bytes += event.data.len();
        loop {
            match kafka::enqueue(&producer, &args.topics.events, &event) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }
    let mut failed = 0;
    for delivery in pending {
        if kafka::delivered(delivery).await.is_err() {
            failed += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "preloaded {count} events ({:.0} bytes average) in {secs:.1} s: {:.0} events/s, {failed} failed",
        bytes as f64 / count as f64,
        count as f64 / secs
    );
    Ok(())
}

/// Records in the events topic now (sum of the partitions' end offsets).
fn topic_size(args: &KafkaArgs) -> anyhow::Result<(i64, usize)> {
    let reader = kafka::reader(args, StartFrom::Earliest)?;
    let topic = &args.topics.events;
    let partitions = kafka::partition_count(&reader, topic, Duration::from_secs(10))?;
    anyhow::ensure!(partitions > 0, "no such topic: {topic}");
    let mut total = 0;
    for p in 0..partitions as i32 {
        let (low, high) = reader.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        total += high - low;
    }
    Ok((total, partitions))
}

async fn bare(args: &KafkaArgs) -> anyhow::Result<()> {
    let (total, partitions) = topic_size(args)?;
    let reader = kafka::reader(args, StartFrom::Earliest)?;
    kafka::assign_all(&reader, &args.topics.events, Offset::Beginning, Duration::from_secs(10))?;
    let mut first = None;
    let mut count = 0i64;
    let mut bytes = 0usize;
    while count < total {
        let msg = reader.recv().await?;
        first.get_or_insert_with(Instant::now);
        bytes += msg.payload_len();
        count += 1;
    }
    let secs = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or_default();
    println!(
        "bare librdkafka read: {count} records from {partitions} partitions in {secs:.2} s: {:.0} records/s, {:.1} MB/s",
        count as f64 / secs,
        bytes as f64 / secs / 1e6
    );
    Ok(())
}

async fn pipe(args: &KafkaArgs) -> anyhow::Result<()> {
    let (total, partitions) = topic_size(args)?;
    kafka::ensure_topics(args, &kafka::project_topics(args)).await?;
    let reader = kafka::reader(args, StartFrom::Earliest)?;
    kafka::assign_all(&reader, &args.topics.events, Offset::Beginning, Duration::from_secs(10))?;
    let producer = kafka::producer(args, &ProducerOptions::default())?;
    let mut pending = std::collections::VecDeque::new();
    let mut first = None;
    let mut failed = 0;
    for _ in 0..total {
        let msg = reader.recv().await?;
        first.get_or_insert_with(Instant::now);
        let mut record = FutureRecord::to(&args.topics.results).payload(msg.payload().unwrap_or_default());
        if let Some(key) = msg.key() {
            record = record.key(key);
        }
        if let Some(headers) = msg.headers() {
            record = record.headers(headers.detach());
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => break pending.push_back(delivery),
                Err((_, back)) => {
                    record = back;
                    // Queue full: wait for the oldest ack.
                    if let Some(oldest) = pending.pop_front() {
                        failed += usize::from(kafka::delivered(oldest).await.is_err());
                    }
                }
            }
        }
    }
    for delivery in pending {
        failed += usize::from(kafka::delivered(delivery).await.is_err());
    }
    let secs = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or_default();
    println!(
        "librdkafka pipe: {total} records from {partitions} partitions read and written in {secs:.2} s: {:.0} records/s, {failed} failed",
        total as f64 / secs
    );
    Ok(())
}

async fn run_consumer(mut config: consumer::Config) -> anyhow::Result<()> {
    let (total, partitions) = topic_size(&config.kafka)?;
    config.group = format!("throughput-{}", uuid::Uuid::new_v4().simple());
    config.start_from = StartFrom::Earliest;
    let workers = config.workers;
    let stats = Arc::new(consumer::stats::Stats::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task =
        tokio::spawn(consumer::run_observed(config, consumer::DefaultProcessor, stats.clone(), shutdown.clone()));
    let mut first = None;
    loop {
        if task.is_finished() {
            break;
        }
        let s = stats.snapshot();
        let done = (s.processed + s.dead_lettered) as i64;
        if done > 0 || s.in_flight > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if done >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or_default();
    shutdown.cancel();
    task.await??;
    let s = stats.snapshot();
    println!(
        "consumer, {workers} worker(s), {partitions} partitions: {} results + {} dead letters acknowledged in {secs:.2} s: {:.0} events/s",
        s.processed,
        s.dead_lettered,
        (s.processed + s.dead_lettered) as f64 / secs
    );
    Ok(())
}
