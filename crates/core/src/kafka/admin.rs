//! Topics and cluster metadata: creating what the project needs, checking
//! that a broker answers.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::Client;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;

use super::client::{base_config, create, finish};
use super::context::TracingContext;
use crate::config::KafkaArgs;
use crate::error::{Error, Result};

/// A topic the project needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i32,
    /// Topic configuration, e.g. `cleanup.policy=compact`.
    pub config: Vec<(String, String)>,
}

impl TopicSpec {
    /// A topic with the partition count and replication of `args`.
    pub fn new(name: impl Into<String>, args: &KafkaArgs) -> Self {
        Self {
            name: name.into(),
            partitions: args.topics.partitions,
            replication_factor: args.topics.replication_factor,
            config: Vec::new(),
        }
    }
}

/// The events, results and dead-letter topics.
pub fn project_topics(args: &KafkaArgs) -> Vec<TopicSpec> {
    let t = &args.topics;
    vec![TopicSpec::new(&t.events, args), TopicSpec::new(&t.results, args), TopicSpec::new(&t.dlq, args)]
}

/// Creates the topics that do not exist yet; existing ones are left as they
/// are, so calling this on every start is safe.
pub async fn ensure_topics(args: &KafkaArgs, specs: &[TopicSpec]) -> Result<()> {
    let admin: AdminClient<TracingContext> = create(&finish(base_config(args), args), TracingContext)?;
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            s.config.iter().fold(
                NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(s.replication_factor)),
                |topic, (k, v)| topic.set(k, v),
            )
        })
        .collect();
    let options =
        AdminOptions::new().operation_timeout(Some(args.connect_timeout)).request_timeout(Some(args.connect_timeout));
    let results = admin.create_topics(&new_topics, &options).await.map_err(|reason| match reason {
        KafkaError::AdminOp(RDKafkaErrorCode::OperationTimedOut) => {
            Error::Unreachable { brokers: args.brokers.clone(), timeout: args.connect_timeout, reason }
        }
        other => Error::Kafka(other),
    })?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(Error::TopicCreation { topic, reason: code.to_string() }),
        }
    }
    Ok(())
}

/// What a metadata request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// Brokers in the cluster.
    pub brokers: usize,
    /// Topics visible to this client.
    pub topics: Vec<String>,
}

/// Asks the cluster for metadata through an existing client (blocking; call
/// from `spawn_blocking` in async code).
pub fn cluster_info<C: ClientContext>(client: &Client<C>, brokers: &str, timeout: Duration) -> Result<ClusterInfo> {
    let metadata = client.fetch_metadata(None, timeout).map_err(|reason| Error::Unreachable {
        brokers: brokers.to_string(),
        timeout,
        reason,
    })?;
    Ok(ClusterInfo {
        brokers: metadata.brokers().len(),
        topics: metadata.topics().iter().map(|t| t.name().to_string()).collect(),
    })
}

/// Checks that the cluster answers within `args.connect_timeout`.
pub async fn check_cluster(args: &KafkaArgs) -> Result<ClusterInfo> {
    let probe: BaseConsumer<TracingContext> = create(&finish(base_config(args), args), TracingContext)?;
    let brokers = args.brokers.clone();
    let timeout = args.connect_timeout;
    tokio::task::spawn_blocking(move || cluster_info(probe.client(), &brokers, timeout))
        .await
        .expect("metadata probe panicked")
}
