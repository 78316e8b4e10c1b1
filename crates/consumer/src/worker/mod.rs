//! One worker: a member of the consumer group, with one task per assigned
//! partition.
//!
//! The group member is polled on a thread of its own, so that its rebalance
//! callback may block: before partitions are taken away it waits for their
//! in-flight results to be acknowledged, stores their offsets and commits
//! them, while the partition tasks keep running on the Tokio runtime.
//!
//! Each partition task processes its records one after another (per-key
//! order), enqueues each result without waiting for the previous ack
//! (pipelining), and stores an offset only once every record up to it has
//! its result or dead letter acknowledged (at-least-once).

mod acks;
mod context;
mod delivery;
mod partition;
mod poll;
mod record;
mod shared;

pub(crate) use context::WorkerContext;
pub(crate) use poll::poll_loop;
pub use shared::RESULT_SOURCE;
pub(crate) use shared::{Meters, Shared};
