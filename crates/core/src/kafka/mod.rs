//! Kafka wiring: every librdkafka property the project sets is set here.
//!
//! Binaries ask for a producer, a group consumer, a reader or an admin
//! client through the factories below; users can still override any property
//! with `-X key=value`, which is applied after everything set here.
//!
//! # Layout
//!
//! - `client`: the factories, and the type aliases binaries use;
//! - `context`: log, error, rebalance and commit callbacks;
//! - `assign`: partition assignment and watching for group-less readers;
//! - `producer`: the producer whose delivery reports resolve futures,
//!   served on the Tokio runtime;
//! - `send`: enqueue an event, await its ack;
//! - `topic`: librdkafka's handle of a topic, to produce without naming it;
//! - `headers`: a record's headers read as bytes, whatever their names;
//! - `admin`: topics and cluster metadata.

mod admin;
mod assign;
mod client;
mod context;
mod headers;
mod producer;
mod send;
mod topic;

pub use admin::*;
pub use assign::*;
pub use client::*;
pub use context::*;
pub use headers::*;
pub use producer::*;
pub use send::*;
pub use topic::*;
