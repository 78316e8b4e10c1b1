//! Bulk publisher: sends N events to the events topic as fast as the broker
//! takes them, or at a fixed rate, and reports what was acknowledged and how
//! long acknowledgements took.
//!
//! ```text
//! cargo run -p publisher --release -- --count 1000000 --size 100
//! cargo run -p publisher -- --count 20000 --rate 5000 --keys 100 --json
//! ```
//!
//! # Layout
//!
//! - [`pacer`]: the open-loop send schedule behind `--rate`.
//! - [`payload`]: generated JSON of `--size` bytes, or `--from-file` lines.
//! - [`report`]: latency histograms, percentiles and the final [`Report`].
//! - [`delivery`]: the producer, whose delivery reports are callbacks the
//!   sender serves itself.
//! - [`topic`]: records handed to librdkafka with its handle of the topic.
//! - [`publish`] (here): the pipelined send loop, shared with `bench`.
//!
//! Sends are pipelined: each event is handed to librdkafka without waiting,
//! and the loop serves the delivery reports that have arrived, between
//! sends and while it waits, into a tally. When librdkafka's queue is full
//! the loop serves reports (or waits a moment for some) instead of failing
//! or spinning.

pub mod delivery;
pub mod pacer;
pub mod payload;
pub mod report;
pub mod topic;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer as _;
use stream_core::config::{parse_duration, parse_positive_duration, parse_rate, LogArgs};
use stream_core::kafka::{self, Acks, ProducerOptions, TopicSpec};
use stream_core::schema::{self, Attributes, Timestamp, EVENT_TYPE, JSON};
use stream_core::KafkaArgs;
use tokio_util::sync::CancellationToken;

pub use delivery::{producer, ready_producer, serve_reports, until_ready, BulkProducer, REPORT_SLICE};
pub use pacer::Pacer;
pub use payload::Payloads;
pub use report::{Percentiles, Report};

/// Command line of the `publisher` binary.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "publisher",
    version,
    about = "Publish N events to Kafka, pipelined, optionally at a fixed rate, and report throughput and ack latency",
    after_help = "Examples:
  publisher --count 1000000 --size 100              # as fast as possible, 100-byte JSON payloads
  publisher --count 20000 --rate 5000 --keys 100    # 5,000 msg/s over 100 keys (= stream ids)
  publisher --from-file events.ndjson --json        # one event per line, machine-readable report
  publisher --count 100000 --acks leader -X linger.ms=20

The exit code is 1 if any message failed, else 0, also when interrupted
(Ctrl-C flushes what is in flight first and still prints the report)."
)]
pub struct Args {
    /// Messages to send. Defaults to 10000, or to the number of lines with --from-file
    /// (a larger count repeats the file).
    #[arg(short = 'n', long, env = "PUBLISH_COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Target rate in messages per second, held by a fixed schedule (open loop).
    /// Unset or 0: as fast as the broker acknowledges.
    #[arg(short = 'r', long, env = "PUBLISH_RATE", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Payload size in bytes of the generated JSON events (`{"seq":N,"pad":"…"}`;
    /// below about 20 bytes, the smallest such object).
    #[arg(short = 's', long, env = "PUBLISH_SIZE", default_value_t = 100)]
    pub size: usize,

    /// Number of distinct keys (stream ids), used round-robin; 0 sends without keys.
    #[arg(short = 'k', long, env = "PUBLISH_KEYS", default_value_t = 100)]
    pub keys: u64,

    /// Send the lines of this NDJSON file (one JSON value per line) instead of generated payloads.
    #[arg(short = 'f', long, env = "PUBLISH_FROM_FILE", value_name = "FILE")]
    pub from_file: Option<PathBuf>,

    /// Acknowledgement level; `all` keeps the producer idempotent. Kafka's
    /// numbers work too: `--acks=-1` (all), `1` (leader), `0` (none).
    #[arg(long, env = "PUBLISH_ACKS", value_enum, default_value_t = Acks::All)]
    pub acks: Acks,

    /// How long librdkafka waits to fill a batch (linger.ms).
    #[arg(long, env = "PUBLISH_LINGER", value_parser = parse_duration, default_value = "5ms")]
    pub linger: Duration,

    /// Send bare records (key and payload, no CloudEvents headers), as
    /// librdkafka's rdkafka_performance does: for comparing with it.
    #[arg(long, env = "PUBLISH_NO_HEADERS")]
    pub no_headers: bool,

    /// Messages librdkafka may hold unacknowledged; when full, sending waits
    /// for acks. The default keeps several full requests in flight while
    /// the records waiting (each its own allocations, eight with CloudEvents
    /// headers) stay within the CPU's caches: 500,000 cost a quarter more
    /// CPU per record with headers, two to three times the memory and up
    /// to a second of queueing in the ack latency, for no higher rate with
    /// headers (README, Performance). Bare records reach a sixth more with
    /// 500,000; lower values cut their rate.
    #[arg(long, env = "PUBLISH_QUEUE_CAPACITY", default_value_t = 20_000)]
    pub queue_capacity: u32,

    /// Do not create the events topic if it is missing (for clusters where this client may not).
    #[arg(long, env = "PUBLISH_NO_CREATE_TOPIC")]
    pub no_create_topic: bool,

    /// Print the report as JSON on stdout (and no progress bar).
    #[arg(long, env = "PUBLISH_JSON")]
    pub json: bool,

    /// When stderr is not a terminal (a log file, CI) or with --json, a
    /// progress line is logged this often instead of the bar.
    #[arg(long, env = "PUBLISH_PROGRESS_INTERVAL", value_parser = parse_positive_duration, default_value = "5s")]
    pub progress_interval: Duration,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

impl Args {
    /// Producer settings from the flags.
    pub fn producer_options(&self) -> ProducerOptions {
        ProducerOptions {
            acks: self.acks,
            linger: self.linger,
            queue_capacity: self.queue_capacity,
            // Several requests in flight per connection: with one, the
            // rate with CloudEvents headers fell from 445k to 398k msg/s.
            pipelined: true,
            ..ProducerOptions::default()
        }
    }
}

/// Runs the publisher until every message is acknowledged or failed, or
/// `shutdown` is cancelled (then in-flight messages are still awaited).
pub async fn run(args: &Args, shutdown: CancellationToken) -> anyhow::Result<Report> {
    args.kafka.validate()?;
    let mut payloads = match &args.from_file {
        Some(path) => Payloads::from_file(path, args.keys)?,
        None => Payloads::generated(args.size, args.keys),
    };
    if args.no_headers {
        payloads = payloads.without_headers();
    }
    let count = args.count.or(payloads.len()).unwrap_or(10_000);
    let topic = &args.kafka.topics.events;
    if !args.no_create_topic {
        // A signal while the broker does not answer ends the wait: the run
        // then sends nothing and reports itself interrupted.
        let specs = [TopicSpec::new(topic, &args.kafka)];
        tokio::select! {
            created = kafka::ensure_topics(&args.kafka, &specs) => {
                created.with_context(|| format!("creating topic {topic}"))?;
            }
            _ = shutdown.cancelled() => {}
        }
    }
    // The clock starts once the producer can send: its start-up is not
    // the broker's latency.
    let producer =
        ready_producer(&args.kafka, &args.producer_options(), &shutdown).await.context("creating the producer")?;
    let show = !args.json && std::io::stderr().is_terminal();
    let progress = progress_bar(count, show);
    let lines = (!show).then(|| tokio::spawn(log_progress(progress.clone(), args.progress_interval)));
    let outcome =
        publish(&producer, topic, &payloads, count, Pacer::new(args.rate), &shutdown, &progress, payload::SOURCE).await;
    if let Some(lines) = lines {
        lines.abort();
    }
    progress.finish_and_clear();
    Ok(outcome.report(topic, args.rate))
}

/// Logs how far `progress` (a hidden bar, still counting) has gone, every
/// `every`, with the acknowledged rate since the line before. Runs until
/// aborted.
async fn log_progress(progress: ProgressBar, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let (mut before, mut then) = (progress.position(), Instant::now());
    loop {
        ticks.tick().await;
        let (acked, now) = (progress.position(), Instant::now());
        let total = progress.length().unwrap_or(0).max(1);
        let rate = (acked - before.min(acked)) as f64 / now.duration_since(then).as_secs_f64().max(1e-9);
        tracing::info!("acknowledged {acked}/{total} ({:.0} %), {rate:.0} msg/s", acked as f64 * 100.0 / total as f64);
        (before, then) = (acked, now);
    }
}

/// A progress bar on stderr with the live acknowledged rate, or a hidden one.
pub fn progress_bar(count: u64, visible: bool) -> ProgressBar {
    let target = if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let bar = ProgressBar::with_draw_target(Some(count), target);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} acked  {rate}  eta {eta}  {msg}",
        )
        .expect("static template")
        .with_key("rate", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0} msg/s", state.per_sec());
        })
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// What [`publish`] observed.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Records handed to librdkafka.
    pub sent: u64,
    pub acked: u64,
    /// Records not delivered: `sent` ones that failed, and `refused` ones.
    pub failed: u64,
    /// Records librdkafka refused to take (counted in `failed`, not `sent`).
    pub refused: u64,
    pub errors: Vec<report::ErrorCount>,
    /// Payload bytes acknowledged.
    pub bytes: u64,
    /// Latency from due (or enqueue) time to acknowledgement, microseconds.
    pub ack_latency: Histogram<u64>,
    /// First send attempt.
    pub started: Instant,
    /// Last message handed to the producer.
    pub last_sent: Instant,
    /// Last acknowledgement or failure.
    pub finished: Instant,
    pub interrupted: bool,
}

impl Outcome {
    /// Seconds from the first send to the last acknowledgement.
    pub fn elapsed(&self) -> Duration {
        self.finished.saturating_duration_since(self.started)
    }

    /// Messages handed to the producer per second, over the sending span
    /// only: the offered rate, unaffected by how long the last ack took.
    pub fn send_rate(&self) -> f64 {
        let span = self.last_sent.saturating_duration_since(self.started).as_secs_f64();
        if self.sent < 2 || span <= 0.0 {
            return 0.0;
        }
        (self.sent - 1) as f64 / span
    }

    /// The report of this outcome.
    pub fn report(&self, topic: &str, target_rate: Option<f64>) -> Report {
        let secs = self.elapsed().as_secs_f64().max(1e-9);
        Report {
            topic: topic.to_string(),
            sent: self.sent,
            acked: self.acked,
            failed: self.failed,
            errors: self.errors.clone(),
            bytes: self.bytes,
            elapsed_secs: secs,
            msgs_per_sec: self.acked as f64 / secs,
            mb_per_sec: self.bytes as f64 / secs / 1e6,
            target_rate: target_rate.filter(|r| *r > 0.0),
            ack_latency: Percentiles::of(&self.ack_latency),
            interrupted: self.interrupted,
        }
    }
}

/// Sends `count` events from `payloads` to `topic` on `pacer`'s schedule,
/// pipelined, and waits for every acknowledgement.
///
/// With a rate, each event's `ce_time` is the time it was *due*, not the
/// time it went out, and ack latency counts from then too: when the sender
/// or the broker falls behind, the delay shows in the numbers instead of
/// being hidden by a later start (coordinated omission). `source` is each
/// event's `ce_source` ([`payload::SOURCE`]; the bench tags its runs);
/// bare records (without headers) have none.
///
/// On `shutdown`, sending stops and the in-flight messages are awaited.
/// Calls on one producer must not overlap: each starts a fresh tally.
#[allow(clippy::too_many_arguments)]
pub async fn publish(
    producer: &BulkProducer,
    topic: &str,
    payloads: &Payloads,
    count: u64,
    pacer: Pacer,
    shutdown: &CancellationToken,
    progress: &ProgressBar,
    source: &str,
) -> Outcome {
    let deliveries = producer.context().clone();
    let started = Instant::now();
    let epoch = pacer.start().min(started);
    deliveries.reset(epoch);
    // The schedule's start in wall-clock time, so a due Instant maps to the
    // ce_time written into the event: both clocks read together, then
    // taken back to the schedule's start, however long ago it was made.
    let (wall_now, now) = (SystemTime::now(), Instant::now());
    let wall_start = wall_now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(now.saturating_duration_since(pacer.start()));
    let (mut sent, mut refused) = (0u64, 0u64);
    let mut refusals = Vec::new();
    let mut last_sent = started;
    let mut interrupted = false;
    // Per-record buffers, reused: the payload and the id's text.
    let mut scratch = Vec::new();
    let mut id_buffer = schema::id_buffer();
    let topic_handle = match topic::Topic::new(producer, topic) {
        Ok(handle) => Some(handle),
        Err(code) => {
            // librdkafka refuses the topic itself: every record would be
            // refused for the same reason, so none is built.
            refused = count;
            refusals.push(report::ErrorCount { error: KafkaError::MessageProduction(code).to_string(), count });
            None
        }
    };

    for seq in 0..count {
        let Some(handle) = &topic_handle else { break };
        let due = match pacer.due(seq) {
            Some(due) => {
                // Reports are served while the schedule waits, a slice at a
                // time, so each is timed close to its arrival.
                loop {
                    serve_reports(producer);
                    let now = Instant::now();
                    if due <= now || shutdown.is_cancelled() {
                        break;
                    }
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep_until(due.min(now + REPORT_SLICE).into()) => {}
                    }
                }
                due
            }
            None => Instant::now(),
        };
        if shutdown.is_cancelled() {
            interrupted = true;
            break;
        }
        // The record is written from the payload's scratch buffer, stack
        // text and constants; what is allocated per record is librdkafka's
        // (its copy of key and payload, and the headers).
        let data = payloads.data_in(seq, &mut scratch);
        let key = payloads.key_text(seq);
        let mut headers = payloads.has_headers().then(|| {
            let time = match pacer.rate() {
                Some(_) => {
                    let offset = due.saturating_duration_since(pacer.start());
                    Timestamp::from_micros((wall_start + offset).as_micros() as i64)
                }
                None => Timestamp::now(),
            };
            let id = schema::write_new_id(&mut id_buffer);
            Attributes { id, source, event_type: EVENT_TYPE, time: time.rfc3339(), content_type: Some(JSON) }.headers()
        });
        let opaque = delivery::opaque(epoch, due);
        loop {
            match handle.send(key.as_ref().map(|key| key.as_bytes()), data, headers, opaque) {
                Ok(()) => {
                    sent += 1;
                    if sent % 64 == 0 {
                        serve_reports(producer);
                    }
                    last_sent = if pacer.rate().is_some() { Instant::now() } else { due };
                    break;
                }
                Err((RDKafkaErrorCode::QueueFull, back)) => {
                    // Backpressure: librdkafka's queue is full, so wait for
                    // deliveries to make room rather than fail or spin.
                    headers = back;
                    if serve_reports(producer) == 0 {
                        tokio::time::sleep(REPORT_SLICE).await;
                    }
                }
                Err((code, _)) => {
                    refused += 1;
                    report::count_error(&mut refusals, KafkaError::MessageProduction(code).to_string());
                    break;
                }
            }
        }
        if seq % 256 == 0 {
            progress.set_position(deliveries.tally().acked);
        }
    }

    if interrupted {
        let in_flight = sent - deliveries.tally().settled();
        progress.set_message(format!("interrupted: flushing {in_flight} in flight"));
        tracing::info!(in_flight, "stopping: waiting for in-flight messages");
    }
    // Every record gets a report within the producer's delivery timeout,
    // so this wait is bounded; a second signal exits at once.
    loop {
        serve_reports(producer);
        let settled = deliveries.tally().settled();
        if settled >= sent {
            break;
        }
        tokio::time::sleep(REPORT_SLICE).await;
        progress.set_position(deliveries.tally().acked);
    }
    let tally = deliveries.tally().clone();
    progress.set_position(tally.acked);
    let mut errors = refusals;
    for e in tally.errors {
        for _ in 0..e.count {
            report::count_error(&mut errors, e.error.clone());
        }
    }
    Outcome {
        sent,
        acked: tally.acked,
        failed: tally.failed + refused,
        refused,
        errors,
        bytes: tally.bytes,
        ack_latency: tally.ack_latency,
        started,
        last_sent,
        finished: tally.last.unwrap_or(last_sent).max(last_sent),
        interrupted,
    }
}
