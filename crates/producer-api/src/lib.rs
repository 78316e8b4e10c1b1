//! HTTP and WebSocket gateway to Kafka: publish events, open streams, and
//! receive their processed results in real time.
//!
//! Run it with `producer-api` (see `--help`); tests start the same server
//! in-process with [`Application::build`] on port 0, and handlers are
//! reachable without a socket through [`app`].
//!
//! # Layout
//!
//! - [`config`]: flags and environment variables; [`keyfile`]: where a
//!   generated API key is written.
//! - [`error`]: [`AppError`], the one error type, and its JSON body.
//! - [`auth`]: API keys and the [`auth::Caller`] extractor.
//! - [`extract`]: body extractors (JSON, stream-send payloads, forms).
//! - [`producer`]: the producer wrapper (acks, timeouts, 503s).
//! - [`trace`]: a request's trace context, into its events; [`once`]:
//!   publishing at most once per `Idempotency-Key`.
//! - [`publish`]: `/publish`, `/publish/batch`.
//! - [`reader`]: following a topic (the registry's and the results').
//! - [`registry`]: stream ownership in a compacted topic; [`starting`]:
//!   starts in progress, holding places under the per-key stream quota.
//! - [`cursor`]: positions in the results topic and resume cursors.
//! - [`hub`]: per-stream fan-out of results to subscribers' mailboxes.
//! - [`delivered`]: a result record framed once for every subscriber.
//! - [`results`]: the results topic's live reader, and the topic as a log.
//! - [`feed`]: one subscriber's results: live, from the log, each once.
//! - [`streams`]: `/stream/...` handlers; [`ws`]: WebSocket and SSE.
//! - [`idempotency`]: `Idempotency-Key` (one write per key, replays);
//!   [`ratelimit`]: per-key rate limits; [`validation`]: the event schema.
//! - [`layers`]: CORS, per-request metrics and limits, panics answered 500.
//! - [`serve`]: the connection loop (connection limit, header timeout).
//! - [`deadline`]: the body read deadline (408); [`page`]: the live page at `/`.
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`; [`openapi`]: `/openapi.json`.

pub mod auth;
pub mod config;
pub mod cursor;
pub mod deadline;
pub mod delivered;
pub mod error;
pub mod extract;
pub mod feed;
pub mod hub;
pub mod idempotency;
pub mod keyfile;
pub mod layers;
pub mod once;
pub mod openapi;
pub mod ops;
pub mod page;
pub mod producer;
pub mod publish;
pub mod ratelimit;
pub mod reader;
pub mod registry;
pub mod results;
pub mod serve;
pub mod starting;
pub mod streams;
pub mod trace;
pub mod validation;
pub mod ws;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::Method;
use axum::middleware;
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;

use stream_core::kafka::{self, ProducerOptions};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
pub use crate::error::AppError;
use crate::hub::Hub;
pub use crate::layers::cors;
use crate::producer::Publisher;
use crate::registry::Registry;
use crate::results::{ResultsLog, ResultsReader};

/// Everything a handler needs. A clone is one reference count: axum clones
/// the state for every extractor and middleware of every request, and a
/// struct of eight shared pointers made that sixteen atomic operations
/// each time, contended between the cores.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

/// How long a write under an `Idempotency-Key` waits for the broker
/// (librdkafka's `message.timeout.ms` on its producer), whatever its
/// request's timeout.
pub const IDEMPOTENT_DELIVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What [`AppState`] shares.
pub struct AppStateInner {
    pub config: Arc<Config>,
    pub keys: auth::ApiKeys,
    pub publisher: Arc<Publisher>,
    /// Writes under an `Idempotency-Key`, on a producer of their own whose
    /// records wait up to [`IDEMPOTENT_DELIVERY_TIMEOUT`] for the broker:
    /// a write that outlasts its request (503) still ends in a known
    /// outcome, which the key's retries get (see [`idempotency`]).
    pub idempotent: Arc<Publisher>,
    /// Writes to the stream registry (claims and deletions), on a producer
    /// of their own that sends each record at once (`linger.ms=0`): a
    /// stream start waits for one produce round trip, not for the events'
    /// linger too, nor behind their batches.
    pub claims: Arc<Publisher>,
    pub registry: Arc<Registry>,
    pub hub: Arc<Hub>,
    /// The results topic, for subscribers that read from a cursor or fell
    /// behind the live feed.
    pub log: Arc<ResultsLog>,
    /// Cancelled when the server starts shutting down: long-lived
    /// connections (WebSocket, SSE) watch it and end themselves.
    pub shutdown: CancellationToken,
    /// Handlers that panicked (each was answered 500). Zero in a healthy
    /// server; the bad-input tests assert it stays so.
    pub panics: Arc<AtomicU64>,
    /// Result connections (WebSocket, SSE) open per API key fingerprint.
    pub subscriptions: ws::PerKey,
    /// Recent `Idempotency-Key`s and where their events went; touched only
    /// by requests that carry the header.
    pub idempotency: idempotency::Idempotency,
    /// Per-key limiters of `--rate-limit`; `None` (the default): no limit,
    /// and no cost per event.
    pub rate_limits: Option<ratelimit::RateLimits>,
    /// `--event-schema`, compiled; `None` (the default): payloads are not
    /// checked.
    pub schema: Option<validation::EventSchema>,
    in_flight: Arc<Semaphore>,
}

impl AppStateInner {
    /// Takes `events` from `owner`'s rate allowance, all or none (nothing
    /// to do without `--rate-limit`).
    pub fn admit(&self, owner: &str, events: usize) -> Result<(), AppError> {
        match &self.rate_limits {
            Some(limits) => limits.check(owner, events),
            None => Ok(()),
        }
    }

    /// Checks an event payload against `--event-schema`, if one is set.
    pub fn check_schema(&self, event: &serde_json::Value) -> Result<(), AppError> {
        validation::check(self.schema.as_ref(), event)
    }
}

/// One route of the API. The router is built from this list, and the
/// OpenAPI document is checked against it, so neither can miss a route.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub handler: MethodRouter<AppState>,
}

/// Every route the server answers.
pub fn routes(config: &Config) -> Vec<Route> {
    let single = layers::BodyLimit::new(config.max_body_bytes, "--max-body-bytes");
    let batch = layers::BodyLimit::new(config.max_batch_bytes, "--max-batch-bytes");
    let route = |method: Method, path, handler| Route { method, path, handler };
    vec![
        route(Method::POST, "/publish", post(publish::publish).layer(single)),
        route(Method::POST, "/publish/batch", post(publish::publish_batch).layer(batch)),
        route(Method::POST, "/stream/start", post(streams::start).layer(single)),
        route(Method::POST, "/stream/{id}/send", post(streams::send).layer(single)),
        route(Method::GET, "/stream/{id}/results", get(streams::results)),
        // The seed's WebSocket path; the same handler, so the same views.
        route(Method::GET, "/stream/{id}/stream", get(streams::results)),
        route(Method::DELETE, "/stream/{id}", delete(streams::delete)),
        route(Method::GET, "/", get(page::serve)),
        route(Method::GET, "/healthz", get(ops::healthz)),
        route(Method::GET, "/readyz", get(ops::readyz)),
        route(Method::GET, "/metrics", get(ops::metrics)),
        route(Method::GET, "/openapi.json", get(openapi::serve)),
        route(Method::GET, "/noop", get(ops::noop)),
    ]
}

/// The HTTP application: [`app`]'s router inside the layer that needs no
/// route. A layer of the router is boxed around every route, and each
/// request pays for a cloned service and a boxed future per layer; this
/// one wraps the router once.
pub type App = deadline::BodyDeadline<Router>;

/// The HTTP application over `state`.
pub fn app(state: AppState) -> App {
    let router = routes(&state.config).into_iter().fold(Router::new(), |router, r| router.route(r.path, r.handler));
    let router = router
        .fallback(|| async { AppError::NoRoute })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), layers::observe));
    let router = match layers::cors(&state.config) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    // A body still incomplete this long after its first read is answered
    // 408 and the connection closed: a slow upload cannot hold a request slot.
    deadline::BodyDeadline::new(router.with_state(state.clone()), state.config.body_read_timeout)
}

/// State with its Kafka clients; the background readers are returned
/// separately so the caller decides where they run.
struct Parts {
    state: AppState,
    registry_reader: Arc<Registry>,
    results_reader: ResultsReader,
}

async fn connect(config: Config) -> anyhow::Result<Parts> {
    config.validate()?;
    // Before any connection: a bad schema file is a configuration error
    // the operator should see at once, not after a broker timeout.
    let schema = config.event_schema.as_deref().map(validation::EventSchema::load).transpose()?;
    if let Some(path) = &config.event_schema {
        tracing::info!(schema = %path.display(), "event payloads are validated against the schema");
    }
    let rate_limits = ratelimit::RateLimits::new(
        config.rate_limit,
        config.rate_limit_burst,
        config.keys().iter().map(|key| Arc::from(auth::fingerprint(key))),
    );
    if rate_limits.is_some() {
        tracing::info!(rate = config.rate_limit, burst = config.rate_limit_burst, "per-key rate limit on");
    }
    // Install the recorder before anything records: samples taken before
    // it exists are lost.
    stream_core::metrics::handle();
    ops::describe_metrics();
    ops::register_series();
    let args = &config.kafka;
    let mut topics = kafka::project_topics(args);
    topics.push(registry::topic_spec(&config.streams_topic, args));
    tracing::info!("connecting to {} (start-up waits up to {:?} for it)", args.brokers, args.connect_timeout);
    kafka::ensure_topics(args, &topics).await.context("creating the topics")?;

    let options = ProducerOptions {
        linger: config.linger,
        // librdkafka gives up on a record when the request that sent it
        // has given up on the ack, so a 503 rarely hides a late write.
        delivery_timeout: config.broker_wait(),
        queue_capacity: config.producer_queue,
        ..ProducerOptions::default()
    };
    // The same producer, but a record waits for the broker long after its
    // request has answered: librdkafka times out a request on the wire
    // with its records, and a broker that answers late may still have
    // written them, so a retry of the key would write the event again.
    let patient = ProducerOptions { delivery_timeout: IDEMPOTENT_DELIVERY_TIMEOUT, ..options.clone() };
    // Registry writes are few and each has a request waiting on it.
    let at_once = ProducerOptions { linger: std::time::Duration::ZERO, ..options.clone() };
    // A publisher makes its producer from `options`, at once and again
    // whenever librdkafka declares the one it has dead.
    let publisher_of = |options: ProducerOptions, what: &'static str| -> anyhow::Result<Arc<Publisher>> {
        let args = args.clone();
        let factory: producer::Factory = Box::new(move || kafka::producer(&args, &options).context(what));
        Ok(Arc::new(Publisher::new(factory, config.broker_wait())?))
    };
    let publisher = publisher_of(options, "creating the producer")?;
    let idempotent = publisher_of(patient, "creating the producer for idempotent writes")?;
    let claims = publisher_of(at_once, "creating the producer for the stream registry")?;
    // A producer looks up a topic's leader when it is first given a record
    // for it: done now for the registry, not in the first stream start.
    // Twice: librdkafka asks for its producer id (idempotence) after a
    // metadata answer, from a broker it has learnt and is connected to;
    // after the first answer, from the bootstrap address, there is none yet,
    // and it would retry only 500 ms later.
    let (warm, topic, timeout) = (claims.clone(), config.streams_topic.clone(), config.request_timeout);
    let warmed = tokio::task::spawn_blocking(move || {
        let client = warm.producer();
        client.client().fetch_metadata(Some(&topic), timeout)?;
        client.client().fetch_metadata(Some(&topic), timeout)
    })
    .await?;
    if let Err(err) = warmed {
        tracing::warn!(%err, "no metadata of the registry topic yet: the first stream start will look it up");
    }
    let hub = Hub::new(config.ws_buffer, config.recent_results, config.dedup_window);
    let registry = Registry::start(args, &config.streams_topic, hub.clone()).context("reading the stream registry")?;
    let results_reader = ResultsReader::start(args).await.context("reading the results topic")?;
    let log = results_reader.log(args, config.request_timeout);
    let (config_ttl, config_max_keys) = (config.idempotency_ttl, config.idempotency_max_keys);
    let state = AppState(Arc::new(AppStateInner {
        keys: auth::ApiKeys::new(config.keys()),
        in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
        config: Arc::new(config),
        publisher,
        idempotent,
        claims,
        registry: registry.clone(),
        hub,
        log,
        shutdown: CancellationToken::new(),
        panics: Arc::new(AtomicU64::new(0)),
        subscriptions: ws::PerKey::default(),
        idempotency: idempotency::Idempotency::new(config_ttl, config_max_keys),
        rate_limits,
        schema,
    }));
    Ok(Parts { state, registry_reader: registry, results_reader })
}

/// The gateway, bound to its address and caught up with the stream
/// registry, ready to serve.
pub struct Application {
    listener: tokio::net::TcpListener,
    state: AppState,
    /// Stops the Kafka readers; dropped (and so cancelled) with the app.
    readers: tokio_util::sync::DropGuard,
    reader_stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Application {
    /// Connects to Kafka (creating missing topics), replays the stream
    /// registry, starts the results reader and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let listen = config.listen_addr;
        let backlog = config.listen_backlog;
        let connect_timeout = config.kafka.connect_timeout;
        let Parts { state, registry_reader, results_reader } = connect(config).await?;
        let reader_stop = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(registry_reader.run(reader_stop.clone())),
            tokio::spawn(results_reader.run(state.hub.clone(), reader_stop.clone())),
        ];
        let deadline = tokio::time::Instant::now() + connect_timeout.max(Duration::from_secs(1));
        state.registry.catch_up(deadline).await.map_err(|e| anyhow::anyhow!("replaying the stream registry: {e}"))?;
        tracing::info!(streams = state.registry.len(), "stream registry loaded");
        let listener =
            serve::bind(listen, backlog).with_context(|| format!("binding --listen-addr (LISTEN_ADDR) {listen}"))?;
        Ok(Self { listener, state, readers: reader_stop.clone().drop_guard(), reader_stop, tasks })
    }

    /// Where the server listens (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The state handlers share (tests inspect it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` is cancelled, then stops taking connections,
    /// lets in-flight requests finish (WebSockets close after their pending
    /// acks), and flushes the producer so nothing acknowledged is lost.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { listener, state, readers, reader_stop, tasks } = self;
        let grace = state.config.shutdown_timeout;
        tracing::info!(addr = %listener.local_addr()?, "producer-api listening");
        let stopping = state.shutdown.clone();
        let forward = {
            let stopping = stopping.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                stopping.cancel();
            })
        };
        let publishers = [state.publisher.clone(), state.idempotent.clone(), state.claims.clone()];
        let limits = serve::Limits {
            max_connections: serve::connection_limit(state.config.max_connections),
            header_read_timeout: state.config.header_read_timeout,
            write_timeout: state.config.write_timeout,
        };
        let server = serve::serve(listener, app(state), limits, stopping.clone());
        tokio::select! {
            _ = server => {}
            _ = async { stopping.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "connections still open after the shutdown grace period; closing them");
            }
        };
        forward.abort();
        for publisher in publishers {
            let flushed = tokio::task::spawn_blocking(move || publisher.flush(grace)).await?;
            if let Err(err) = flushed {
                tracing::error!(%err, "producer flush incomplete at shutdown");
            }
        }
        reader_stop.cancel();
        drop(readers);
        for task in tasks {
            let _ = task.await;
        }
        tracing::info!("producer-api stopped");
        Ok(())
    }
}
