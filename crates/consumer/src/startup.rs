//! Start-up checks that say what to do: the broker must answer (retried
//! with visible, doubling pauses) and the topics must exist (the project's
//! own are created when missing, others with `--create-topics`).

use std::time::Duration;

use anyhow::Context as _;
use stream_core::kafka::{self, ClusterInfo, TopicSpec};
use stream_core::{KafkaArgs, TopicArgs};
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
    let create = to_create(config.create_topics, kafka::project_topics(args));
    // A missing topic that will not be created fails the start before any
    // other is created.
    missing_topics(&cluster, args, |name| !create.iter().any(|spec| spec.name == name))?;
    if !create.is_empty() {
        kafka::ensure_topics(args, &create).await.context("--create-topics")?;
        cluster = kafka::check_cluster(args).await?;
    }
    missing_topics(&cluster, args, |_| true)?;
    Ok(Some(cluster))
}

/// Fails naming each of the project's topics that `cluster` lacks, among
/// those `considered`, with its flag and variable and what to do.
fn missing_topics(cluster: &ClusterInfo, args: &KafkaArgs, considered: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    let topics = &args.topics;
    let missing: Vec<String> = [
        ("--events-topic", "EVENTS_TOPIC", &topics.events),
        ("--results-topic", "RESULTS_TOPIC", &topics.results),
        ("--dlq-topic", "DLQ_TOPIC", &topics.dlq),
    ]
    .into_iter()
    .filter(|(_, _, name)| considered(name) && !cluster.topics.iter().any(|t| t == *name))
    .map(|(flag, env, name)| format!("{name} ({flag}, {env})"))
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "topic(s) not found on {}: {}. Check the name, point the flag at an existing topic, or let the consumer \
         create it with `--create-topics` (CREATE_TOPICS=true; uses --partitions and --replication-factor)",
        args.brokers,
        missing.join(", ")
    )
}

/// The topics to create: with `--create-topics` every one, with
/// `--create-topics false` none, and unset only those with the project's
/// own names (see [`crate::Config::create_topics`]).
fn to_create(create_topics: Option<bool>, topics: Vec<TopicSpec>) -> Vec<TopicSpec> {
    match create_topics {
        Some(true) => topics,
        Some(false) => Vec::new(),
        None => topics.into_iter().filter(|spec| TopicArgs::is_default_name(&spec.name)).collect(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(specs: Vec<TopicSpec>) -> Vec<String> {
        specs.into_iter().map(|spec| spec.name).collect()
    }

    #[test]
    fn unset_creates_only_the_projects_own_topics() {
        let mut args = KafkaArgs::for_brokers("127.0.0.1:9092");
        let all = |args: &KafkaArgs| kafka::project_topics(args);
        assert_eq!(names(to_create(None, all(&args))), ["events", "events.results", "events.dlq"]);
        args.topics.events = "typo-events".into();
        assert_eq!(names(to_create(None, all(&args))), ["events.results", "events.dlq"]);
        assert_eq!(names(to_create(Some(true), all(&args))), ["typo-events", "events.results", "events.dlq"]);
        assert!(to_create(Some(false), all(&KafkaArgs::for_brokers("127.0.0.1:9092"))).is_empty());
    }
}
