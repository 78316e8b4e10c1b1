//! The event processor: N workers in one consumer group read the events
//! topic, process each event, and write its result to the results topic
//! (keyed by stream id) or, if processing fails, the event to the
//! dead-letter topic. Delivery is at-least-once.
//!
//! Run it with `cargo run -p consumer -- --workers 4`; the library entry
//! points are [`run`] (default processing) and [`run_with`] (your own
//! [`Processor`]), both stopped by a `CancellationToken`.
//!
//! # Layout
//!
//! - [`config`]: [`Config`], the command line (every flag also an environment variable).
//! - [`processor`]: the [`Processor`] trait and [`DefaultProcessor`].
//! - `worker`: group members polled on their own threads (`poll`), one
//!   task per partition (`partition`), pipelined result produces with
//!   retries and dead letters (`delivery`), a partition's results settled
//!   in offset order as their acks come (`acks`), finishing and committing
//!   on revoke and shutdown (`context`), the state a run's tasks share
//!   (`shared`); a consumed record is handed to its partition task
//!   uncopied (`record`).
//! - [`dlq`]: the dead-letter record and its headers.
//! - [`stats`]: counters for the periodic throughput line.
//! - [`memory`]: transparent huge pages off for the process.
//! - `startup`: broker connection with retries, topic checks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use stream_core::kafka::{self, ConsumerOptions, ProducerOptions};
use tokio_util::sync::CancellationToken;

pub mod config;
pub mod dlq;
pub mod memory;
pub mod processor;
mod startup;
pub mod stats;
mod worker;

pub use config::{Config, AFTER_HELP};
pub use processor::{DefaultProcessor, ProcessError, Processed, Processor, WorkerInfo};
pub use worker::RESULT_SOURCE;

/// Runs the consumer with the [`DefaultProcessor`] until `shutdown` is
/// cancelled; returns once the finished work is committed.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(config, DefaultProcessor, shutdown).await
}

/// Runs the consumer with your own processor until `shutdown` is cancelled
/// or the run fails (e.g. a dead letter that cannot be written).
pub async fn run_with<P: Processor>(config: Config, processor: P, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_observed(config, processor, Arc::new(stats::Stats::default()), shutdown).await
}

/// [`run_with`], counting into `stats`, which the caller can read while the
/// consumer runs (progress displays, benchmarks).
pub async fn run_observed<P: Processor>(
    config: Config,
    processor: P,
    stats: Arc<stats::Stats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let Some(_cluster) = startup::prepare(&config, &shutdown).await? else {
        return Ok(());
    };
    let partitions = startup::event_partitions(&config).await;
    if let Some(p) = partitions.filter(|p| *p < config.workers) {
        tracing::warn!(
            "{} has {p} partition(s) but --workers is {}: {} worker(s) will stay idle; \
             add partitions or lower --workers",
            config.kafka.topics.events,
            config.workers,
            config.workers - p
        );
    }
    // Installing the recorder first makes every metric handle below real;
    // without a listener it only costs the bookkeeping.
    let _ = stream_core::metrics::handle();

    let producer = kafka::producer(&config.kafka, &ProducerOptions::default()).context("creating the producer")?;
    let stop = shutdown.child_token();
    let shared = Arc::new(worker::Shared {
        processor,
        producer,
        group: config.group.clone(),
        results_topic: config.kafka.topics.results.clone(),
        result_headers: config.result_headers,
        dlq_topic: config.kafka.topics.dlq.clone(),
        max_in_flight: config.max_in_flight,
        drain_timeout: config.drain_timeout,
        stats: stats.clone(),
        runtime: tokio::runtime::Handle::current(),
        stop: stop.clone(),
        failure: Mutex::new(None),
        meters: worker::Meters::new(),
    });

    if let Some(addr) = config.metrics_addr {
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(error) = stream_core::metrics::serve(addr, stop).await {
                shared.fail(anyhow::Error::new(error).context("--metrics-addr (METRICS_ADDR)"));
            }
        });
    }
    tokio::spawn(stats::log_throughput(stats.clone(), config.stats_interval, stop.clone()));

    let mut options = ConsumerOptions::new(&config.group);
    options.session_timeout = config.session_timeout;
    options.start_from = config.start_from;
    options.statistics_interval = Some(config.stats_interval);

    /// How long a stopping consumer waits for its workers to leave the
    /// group once their work is committed.
    const CLOSE_PATIENCE: Duration = Duration::from_secs(10);

    let mut finished = Vec::with_capacity(config.workers);
    for id in 0..config.workers as u32 {
        let context = worker::WorkerContext::new(id, config.drain_timeout, stats.clone());
        let member = match kafka::group_consumer(&config.kafka, &options, context) {
            Ok(member) => Arc::new(member),
            Err(error) => {
                shared.fail(anyhow::Error::new(error).context(format!("creating worker {id}")));
                break;
            }
        };
        if let Err(error) = rdkafka::consumer::Consumer::subscribe(member.as_ref(), &[&config.kafka.topics.events]) {
            shared.fail(anyhow::Error::new(error).context(format!("worker {id}: subscribing")));
            break;
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
        let shared_for_thread = shared.clone();
        let spawned = std::thread::Builder::new().name(format!("consumer-worker-{id}")).spawn(move || {
            worker::poll_loop(shared_for_thread, member.clone(), id);
            let _ = done_tx.send(());
            // Dropping the last handle closes the member: librdkafka leaves
            // the group, and waits for its coordinator as long as it takes.
            drop(member);
            let _ = closed_tx.send(());
        });
        if let Err(error) = spawned {
            shared.fail(anyhow::Error::new(error).context("spawning a worker thread"));
            break;
        }
        finished.push((id, done_rx, closed_rx));
    }
    tracing::info!(
        workers = config.workers,
        partitions = partitions.map_or_else(|| "?".to_string(), |p| p.to_string()),
        group = %config.group,
        events = %config.kafka.topics.events,
        results = %config.kafka.topics.results,
        dlq = %config.kafka.topics.dlq,
        "consumer running"
    );
    let mut closing = Vec::with_capacity(finished.len());
    for (id, done, closed) in finished {
        if done.await.is_err() {
            shared.fail(anyhow::anyhow!("worker {id} panicked"));
        }
        closing.push((id, closed));
    }
    // Each worker has committed its work; what is left is leaving the
    // group, which librdkafka waits for without end while the group's
    // coordinator is unreachable. Past `CLOSE_PATIENCE` the run ends
    // without it: the group moves the partitions once the member's session
    // times out.
    let closed_by = tokio::time::Instant::now() + CLOSE_PATIENCE;
    for (id, closed) in closing {
        if tokio::time::timeout_at(closed_by, closed).await.is_err() {
            tracing::warn!(
                worker = id,
                "leaving the consumer group did not finish within {CLOSE_PATIENCE:?} (is the broker reachable?); \
                 stopping without it: its partitions move to other members when its session times out"
            );
        }
    }
    stop.cancel();
    // Everything stored was acknowledged already; this only waits for
    // results whose drain timed out, so they are not lost needlessly.
    let producer = shared.producer.clone();
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
    let snapshot = stats.snapshot();
    tracing::info!(
        processed = snapshot.processed,
        dead_lettered = snapshot.dead_lettered,
        failed = snapshot.failed,
        "consumer stopped"
    );
    let failure = shared.failure.lock().unwrap().take();
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
