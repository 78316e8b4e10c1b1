//! The library's error type.

use std::time::Duration;

use rdkafka::error::KafkaError;

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the shared Kafka wiring.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value that librdkafka or this crate rejects. The
    /// message names the flag or property and the bad value.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// No broker answered a metadata request in time.
    #[error("no Kafka broker reachable at {brokers} within {timeout:?} ({reason}); start one with `just broker` (or `just up` with Docker), or point KAFKA_BROKERS at a running cluster")]
    Unreachable {
        /// The bootstrap list that was tried.
        brokers: String,
        /// How long we waited.
        timeout: Duration,
        /// librdkafka's own reason: part of the message, and deliberately
        /// not an error source, so `{:#}` does not print it twice more.
        reason: KafkaError,
    },

    /// Creating a topic failed for a reason other than "already exists".
    #[error("could not create topic {topic}: {reason}")]
    TopicCreation {
        /// The topic that could not be created.
        topic: String,
        /// The broker's reason.
        reason: String,
    },

    /// A record that does not decode as an event.
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaError),

    /// A producer was created outside a Tokio runtime, which it needs to
    /// serve its delivery reports.
    #[error("a producer must be created inside a Tokio runtime, which serves its delivery reports")]
    NoRuntime,

    /// An I/O operation failed: what was being done, and the OS's reason.
    #[error("{what}")]
    Io {
        /// What was being done, e.g. which address was being bound.
        what: String,
        /// The OS's reason.
        #[source]
        source: std::io::Error,
    },

    /// Any other error reported by librdkafka.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}
