//! Shared foundation of the streaming toolkit: every binary in the workspace
//! is a thin layer over this crate.
//!
//! # Layout
//!
//! - [`config`]: the clap argument groups shared by every binary (Kafka
//!   connection, topic names, logging), each flag backed by an environment
//!   variable; `.env` loading.
//! - [`schema`]: the [`Event`](schema::Event) and its mapping to CloudEvents'
//!   Kafka binary mode, and the [`EventResult`](schema::EventResult) that
//!   processing produces; event times ([`Timestamp`](schema::Timestamp))
//!   and W3C trace context ([`schema::trace`]).
//! - [`json`]: compact JSON output with a fast path for strings that need
//!   no escaping (results and event payloads).
//! - [`kafka`]: producer, consumer and admin factories. Every librdkafka
//!   property the project sets is set there, with the reason beside it.
//! - [`telemetry`]: `tracing` subscriber set-up (`RUST_LOG`, `--log-format`).
//! - [`shutdown`]: one `CancellationToken` cancelled by SIGINT or SIGTERM.
//! - [`metrics`]: the Prometheus recorder and a `/metrics` endpoint.
//! - [`testing`] (feature `testing`): a real local broker for integration
//!   tests, fresh topic names and polling with a deadline.

pub mod config;
pub mod error;
pub mod json;
pub mod kafka;
pub mod metrics;
pub mod schema;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{KafkaArgs, LogArgs, TopicArgs};
pub use error::{Error, Result};
pub use schema::{Event, EventResult};
