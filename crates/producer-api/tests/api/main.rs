//! The gateway's integration tests against a real broker, as one binary:
//! linking librdkafka and the gateway once instead of once per file.
//!
//! Three suites keep their own binaries, because they read the process-wide
//! metrics and would count what tests running beside them do:
//! `bad_input.rs` (no 500 anywhere), `resume.rs` and `slow_clients.rs`
//! (results dropped and caught up, open WebSockets).

#[path = "../child/mod.rs"]
mod child;
#[path = "../common/mod.rs"]
mod common;

mod batch;
mod consumer_killed;
mod deploy;
mod fatal;
mod idempotency;
mod killed;
mod lifecycle;
mod limits;
mod openapi;
mod outage;
mod page;
mod panics;
mod publish;
mod rate_limit;
mod schema;
mod security;
mod seed;
mod streams;
mod trace;
