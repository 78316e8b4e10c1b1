//! `bench e2e`: end-to-end latency through Kafka at fixed offered rates.
//!
//! For each rate a producer sends on a fixed schedule (open loop: message i
//! is due at start + i/rate whether or not earlier ones were slow), and a
//! reader assigned to every partition receives them. Clocks:
//!
//! - send: the event's `ce_time` header, which is the time the message was
//!   *due* on the schedule (wall clock, microseconds). A message that went
//!   out late because the producer stalled is charged for the stall, so
//!   coordinated omission cannot hide it.
//! - receive: the wall clock read as soon as the reader's `recv()` returns.
//!
//! Both clocks are this host's, so no clock skew enters. Messages due in the
//! warm-up window (the first rate × warm-up of a step, told by the `seq` in
//! their payload) are received but not recorded; those due in the recording
//! window are, exactly rate × duration of them. Several rates in one run
//! give latency against throughput.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use publisher::report::latency_histogram;
use publisher::{Pacer, Payloads};
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use stream_core::config::{parse_duration, parse_positive_duration, parse_positive_rate};
use stream_core::kafka::{self, raw_headers, StartFrom, TracingContext};
use stream_core::schema::{header, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::output::{self, BenchReport, Measurement};
use crate::plot::{self, Axis, Series};
use crate::{Common, KafkaBench};

/// Options of `bench e2e`.
#[derive(Debug, Clone, Args)]
pub struct E2eArgs {
    /// Offered rates in messages per second, run one after another.
    #[arg(long, env = "BENCH_RATES", value_delimiter = ',', default_value = "1000,10000,50000", value_parser = parse_positive_rate)]
    pub rates: Vec<f64>,

    /// Warm-up at each rate: sent and received, not recorded.
    #[arg(long, env = "BENCH_WARMUP", value_parser = parse_duration, default_value = "5s")]
    pub warmup: Duration,

    /// Recording window at each rate.
    #[arg(long, env = "BENCH_DURATION", value_parser = parse_positive_duration, default_value = "20s")]
    pub duration: Duration,

    /// After the last send of a rate, how long to wait for the remaining messages.
    #[arg(long, env = "BENCH_DRAIN_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub drain_timeout: Duration,

    #[command(flatten)]
    pub load: KafkaBench,

    #[command(flatten)]
    pub common: Common,
}

/// The producer's linger at `rate` when `--linger` is not given. Nisshi's
/// cost per produce request (and per batch its fetches list) keeps a busy
/// broker's tail long at 10 ms; from 2,500/s, 20 ms halves the batches for
/// a shorter tail, while below that 10 ms keeps the wait a batch adds small.
// A fresh broker per run, 2026-12-02 (a slow phase), p50 / p99 in ms with
// 10 ms against 20 ms: 10,000/s 23.1 / 65.6 and 23.5 / 67.3 against 20.6 /
// 39.3 and 20.9 / 41.1 (broker CPU 26 against 17 s); 20,000/s 26.4 / 71.5
// against 23.6 / 50.4; 5,000/s 28.3 / 83.1 against 24.7 / 54.1; 2,500/s
// 21.2 / 58.0 against 20.6 / 39.6; 1,000/s 19.4 / 47.8 and 18.5 / 43.0
// against 25.2 / 53.3 and 22.2 / 38.0.
fn step_linger(rate: f64) -> Duration {
    if rate >= 2_500.0 {
        Duration::from_millis(20)
    } else {
        crate::DEFAULT_LINGER
    }
}

/// What the reader saw of one rate step.
struct Step {
    /// Messages from this `seq` on are due in the recording window.
    record_from_seq: u64,
    received: u64,
    latency: Histogram<u64>,
}

type Steps = Arc<Mutex<HashMap<String, Step>>>;

/// Runs `bench e2e`.
pub async fn run(args: &E2eArgs, shutdown: CancellationToken) -> anyhow::Result<BenchReport> {
    let load = &args.load;
    if args.rates.is_empty() || args.rates.iter().any(|r| !(*r > 0.0 && r.is_finite())) {
        anyhow::bail!("--rates needs positive numbers, e.g. --rates 1000,10000");
    }
    // Each rate names its step's events and its output files.
    if let Some(twice) = args.rates.iter().enumerate().find_map(|(i, r)| args.rates[..i].contains(r).then_some(r)) {
        anyhow::bail!("--rates lists {twice} twice; each rate is one step, with its own histogram file");
    }
    load.prepare().await?;
    let topic = load.bench_topic.clone();
    let reader = kafka::reader(&load.kafka, StartFrom::Latest)?;
    kafka::assign_at_end(&reader, &topic, load.kafka.connect_timeout).with_context(|| format!("assigning {topic}"))?;
    // One producer per linger: the rates of a run may want different ones.
    let mut producer: Option<(Duration, publisher::BulkProducer)> = None;
    let payloads = Payloads::generated(load.size, load.keys);

    let steps: Steps = Arc::default();
    let stop_reader = CancellationToken::new();
    let reading = tokio::spawn(read(reader, steps.clone(), stop_reader.clone()));
    // Tags events of this run, so records of an earlier run still in the
    // topic are never counted.
    let run_id = format!("{:x}", SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos());

    let mut measurements = Vec::new();
    for &rate in &args.rates {
        if shutdown.is_cancelled() {
            break;
        }
        let tag = format!("/bench/e2e/{run_id}/{rate}");
        let count = (rate * (args.warmup + args.duration).as_secs_f64()).round() as u64;
        // Message i is due at i / rate after the step's start.
        let record_from_seq = (rate * args.warmup.as_secs_f64() - 1e-9).ceil().max(0.0) as u64;
        steps.lock().unwrap().insert(tag.clone(), Step { record_from_seq, received: 0, latency: latency_histogram() });
        let linger = load.linger.unwrap_or_else(|| step_linger(rate));
        if producer.as_ref().is_none_or(|(current, _)| *current != linger) {
            // The step's warm-up covers the new producer's first requests.
            let options = load.producer_options(false, linger);
            producer = Some((linger, publisher::ready_producer(&load.kafka, &options, &shutdown).await?));
        }
        let (_, producer) = producer.as_ref().expect("created above");
        tracing::info!(rate, count, warmup = ?args.warmup, duration = ?args.duration, ?linger, "e2e step");
        let progress = publisher::progress_bar(count, false);
        let outcome =
            publisher::publish(producer, &topic, &payloads, count, Pacer::new(Some(rate)), &shutdown, &progress, &tag)
                .await;

        // Wait for the stragglers, polling the reader's count.
        let deadline = Instant::now() + args.drain_timeout;
        loop {
            let received = steps.lock().unwrap()[&tag].received;
            if received >= outcome.acked || Instant::now() > deadline || shutdown.is_cancelled() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let step = steps.lock().unwrap().remove(&tag).expect("step registered above");
        // The rate column is the offered rate achieved by the sender; a
        // sender that cannot keep up is flagged in the table.
        let mut m = Measurement::new(format!("@{rate}/s"), outcome.send_rate(), step.latency);
        m.row.target_rate = Some(rate);
        m.row.mb_per_sec = None;
        // Failed (refused ones included), never tried (an interrupted run),
        // and acknowledged but never read back.
        let untried = count - outcome.sent - outcome.refused;
        m.row.errors = outcome.failed + untried + outcome.acked.saturating_sub(step.received);
        measurements.push(m);
    }
    stop_reader.cancel();
    reading.await.context("reader task")?;

    let plots = vec![
        ("e2e".to_string(), rate_plot(&measurements)),
        (
            "e2e-percentiles".to_string(),
            output::percentile_plot("e2e latency: percentile curve per rate", &measurements),
        ),
    ];
    output::write(
        &args.common.out_dir,
        "e2e",
        "ce_time (when the message was due on the open-loop schedule) -> reader's recv() returned",
        measurements,
        plots,
    )
}

/// Receives every message and records its latency into the step it belongs to.
async fn read(reader: StreamConsumer<TracingContext>, steps: Steps, stop: CancellationToken) {
    loop {
        let message = tokio::select! {
            m = reader.recv() => m,
            _ = stop.cancelled() => return,
        };
        let received_us = Timestamp::now().as_micros();
        let message = match message {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(%error, "e2e reader");
                continue;
            }
        };
        let (mut source, mut sent) = (None, None);
        for (name, value) in raw_headers(&message) {
            let text = || value.and_then(|v| std::str::from_utf8(v).ok());
            if name == header::SOURCE.as_bytes() {
                source = text();
            } else if name == header::TIME.as_bytes() {
                sent = text().and_then(|t| Timestamp::parse(t).ok());
            }
        }
        let (Some(source), Some(sent)) = (source, sent) else { continue };
        let mut steps = steps.lock().unwrap();
        if let Some(step) = steps.get_mut(source) {
            step.received += 1;
            if message.payload().and_then(seq_of).is_some_and(|seq| seq >= step.record_from_seq) {
                let latency = (received_us - sent.as_micros()).max(1) as u64;
                step.latency.saturating_record(latency);
            }
        }
    }
}

/// The `seq` of a generated payload (`{"seq":N,...}`).
fn seq_of(payload: &[u8]) -> Option<u64> {
    let digits = payload.strip_prefix(br#"{"seq":"#)?;
    let end = digits.iter().position(|b| !b.is_ascii_digit()).unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Latency percentiles against offered rate, both on log scales.
fn rate_plot(measurements: &[Measurement]) -> String {
    let rows: Vec<_> = measurements.iter().map(|m| (m.row.target_rate.unwrap_or(m.row.rate), m.row.latency)).collect();
    type Pick = fn(&publisher::Percentiles) -> f64;
    let pick: [(&str, Pick); 5] = [
        ("p50", |l| l.p50_ms),
        ("p90", |l| l.p90_ms),
        ("p99", |l| l.p99_ms),
        ("p99.9", |l| l.p999_ms),
        ("max", |l| l.max_ms),
    ];
    let series: Vec<Series> = pick
        .iter()
        .map(|(name, f)| Series { name: (*name).into(), points: rows.iter().map(|(r, l)| (*r, f(l))).collect() })
        .collect();
    let (min_rate, max_rate) = rows.iter().fold((f64::MAX, 0f64), |(lo, hi), (r, _)| (lo.min(*r), hi.max(*r)));
    let (min_ms, max_ms) = rows.iter().fold((f64::MAX, 0f64), |(lo, hi), (_, l)| (lo.min(l.p50_ms), hi.max(l.max_ms)));
    let x = Axis::log("offered rate (messages/s)", min_rate.min(max_rate), max_rate, "/s");
    let y = Axis::log("end-to-end latency (ms)", min_ms.min(max_ms).max(0.01), max_ms.max(0.1), " ms");
    plot::chart("e2e latency against offered rate", &x, &y, &series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_linger_follows_the_rate() {
        assert_eq!(step_linger(1_000.0), Duration::from_millis(10));
        assert_eq!(step_linger(2_499.0), Duration::from_millis(10));
        assert_eq!(step_linger(2_500.0), Duration::from_millis(20));
        assert_eq!(step_linger(50_000.0), Duration::from_millis(20));
    }
}
