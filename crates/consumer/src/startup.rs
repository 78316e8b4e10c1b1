//! Start-up checks that say what to do: the broker must answer (retried
//! with visible, doubling pauses) and the topics must exist (or be created
//! with `--create-topics`).

use std::time::Duration;

use anyhow::Context as _;
use stream_core::kafka::{self, ClusterInfo};
use tokio_util::sync::CancellationToken;

use crate::Config;

/// Longest pause between two connection attempts.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Connects and checks the topics. `None` if `shutdown` came first.
pub(crate) async fn prepare(config: &Config, shutdown: &CancellationToken) -> anyhow::Result<Option<ClusterInfo>> {
    let Some(mut cluster) = connect(config, shutdown).await? else {
        return Ok(None);
    };
    let args = &config.kafka;
    if config.create_topics {
        kafka::ensure_topics(args, &kafka::project_topics(args)).await.context("--create-topics")?;
        cluster = kafka::check_cluster(args).await?;
    }
    let topics = &args.topics;
    let missing: Vec<String> = [
        ("--events-topic", "EVENTS_TOPIC", &topics.events),
        ("--results-topic", "RESULTS_TOPIC", &topics.results),
        ("--dlq-topic", "DLQ_TOPIC", &topics.dlq),
    ]
    .into_iter()
    .filter(|(_, _, name)| !cluster.topics.iter().any(|t| t == *name))
    .map(|(flag, env, name)| format!("{name} ({flag}, {env})"))
    .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "topic(s) not found on {}: {}. Let the consumer create them (the default; drop `--create-topics false` or \
             CREATE_TOPICS=false; uses --partitions and --replication-factor), or point the flags at existing topics",
            args.brokers,
            missing.join(", ")
        );
    }
    Ok(Some(cluster))
}

/// Partitions of the events topic, for the start-up log and a warning when
/// some workers would have nothing to do. `None` if metadata cannot say.
pub(crate) async fn event_partitions(config: &Config) -> Option<usize> {
    let probe = kafka::reader(&config.kafka, kafka::StartFrom::Earliest).ok()?;
    let topic = config.kafka.topics.events.clone();
    let timeout = config.kafka.connect_timeout;
    tokio::task::spawn_blocking(move || kafka::partition_count(&probe, &topic, timeout).ok()).await.ok().flatten()
}

/// Asks the cluster for metadata until it answers, `connect_attempts` times.
async fn connect(config: &Config, shutdown: &CancellationToken) -> anyhow::Result<Option<ClusterInfo>> {
    let attempts = config.connect_attempts.max(1);
    let mut pause = Duration::from_secs(1);
    tracing::info!(
        "connecting to {} (up to {attempts} attempt(s) of {:?} each)",
        config.kafka.brokers,
        config.kafka.connect_timeout
    );
    for attempt in 1.. {
        // An attempt waits up to `--connect-timeout` on a blocking thread; a
        // signal does not wait for it (`main` exits without joining it).
        let answer = tokio::select! {
            answer = kafka::check_cluster(&config.kafka) => answer,
            _ = shutdown.cancelled() => return Ok(None),
        };
        match answer {
            Ok(cluster) => {
                tracing::info!(brokers = cluster.brokers, address = %config.kafka.brokers, "connected");
                return Ok(Some(cluster));
            }
            Err(error @ stream_core::Error::Unreachable { .. }) if attempt < attempts => {
                tracing::warn!("attempt {attempt}/{attempts}: {error}; retrying in {pause:?}");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => return Ok(None),
                }
                pause = (pause * 2).min(MAX_PAUSE);
            }
            Err(error @ stream_core::Error::Unreachable { .. }) => {
                return Err(error).with_context(|| format!("giving up after {attempt} connection attempt(s)"));
            }
            Err(error) => return Err(error.into()),
        }
    }
    unreachable!("the loop returns")
}
