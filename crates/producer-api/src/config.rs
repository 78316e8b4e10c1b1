//! The gateway's command-line and environment configuration.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use stream_core::config::{parse_duration, KafkaArgs};

// Every default, named once: clap shows it in --help and `Config::for_tests`
// starts from the same value.
const DEFAULT_LISTEN_ADDR: &str = "0.0.0.0:8082";
const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
const DEFAULT_MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
const DEFAULT_MAX_BATCH_RECORDS: usize = 10_000;
const DEFAULT_WS_BUFFER: usize = 256;
const DEFAULT_DEDUP_WINDOW: usize = 10_000;
const DEFAULT_RECENT_RESULTS: usize = 100;
const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;
/// Five times the seed's load (1000 streams): streams stay open until
/// deleted, and the seed's clients never delete theirs, so a quota of
/// exactly one run refused every start of the next.
const DEFAULT_MAX_STREAMS_PER_KEY: usize = 5000;
const DEFAULT_PRODUCER_QUEUE: u32 = 200_000;
const DEFAULT_MAX_WEBSOCKETS_PER_KEY: usize = 2000;
const DEFAULT_IDEMPOTENCY_MAX_KEYS: usize = 100_000;
const DEFAULT_REQUEST_TIMEOUT: &str = "10s";
const DEFAULT_PRODUCER_LINGER: &str = "1ms";
const DEFAULT_HEADER_READ_TIMEOUT: &str = "20s";
const DEFAULT_BODY_READ_TIMEOUT: &str = "30s";
const DEFAULT_WRITE_TIMEOUT: &str = "60s";
const DEFAULT_WS_PING_INTERVAL: &str = "20s";
const DEFAULT_WS_IDLE_TIMEOUT: &str = "60s";
const DEFAULT_IDEMPOTENCY_TTL: &str = "1h";
const DEFAULT_SHUTDOWN_TIMEOUT: &str = "30s";

/// A count that must be at least 1 (0 would refuse everything or hang).
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

/// A duration default, parsed as clap parses it.
fn default_duration(text: &str) -> Duration {
    parse_duration(text).expect("defaults parse")
}

/// Everything the gateway needs to run; flatten it into a clap parser.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Gateway")]
pub struct Config {
    /// Address the HTTP server listens on (port 0 picks a free port).
    #[arg(long, env = "LISTEN_ADDR", default_value = DEFAULT_LISTEN_ADDR)]
    pub listen_addr: SocketAddr,

    /// API keys accepted in `X-API-Key` or `Authorization: Bearer`,
    /// comma-separated. A stream belongs to the key that started it.
    /// With no key configured, the gateway makes up one random key for the
    /// run and writes it to a file only its user can read (the log names the
    /// file, never the key): it never runs open.
    #[arg(long = "api-keys", env = "API_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<String>,

    /// A single API key, as older deployments set it; added to --api-keys.
    #[arg(long = "api-key", env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Compacted topic holding stream ownership (stream id -> hash of the
    /// owning key), shared by every replica and read from the start at boot.
    #[arg(long, env = "STREAMS_TOPIC", default_value = "events.streams")]
    pub streams_topic: String,

    /// Longest a request waits for the broker. A publish not acknowledged by
    /// then is answered 503 with Retry-After; it never hangs. The answer
    /// leaves a twentieth of it (at most 250 ms) early, to reach a client
    /// that times the request with the same timeout in time.
    #[arg(long, env = "REQUEST_TIMEOUT", value_parser = parse_duration, default_value = DEFAULT_REQUEST_TIMEOUT)]
    pub request_timeout: Duration,

    /// Largest request body in bytes for single requests (publish, send, start).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES, value_parser = at_least_one())]
    pub max_body_bytes: usize,

    /// Largest `/publish/batch` body in bytes.
    #[arg(long, env = "MAX_BATCH_BYTES", default_value_t = DEFAULT_MAX_BATCH_BYTES, value_parser = at_least_one())]
    pub max_batch_bytes: usize,

    /// Most records in one `/publish/batch` request.
    #[arg(long, env = "MAX_BATCH_RECORDS", default_value_t = DEFAULT_MAX_BATCH_RECORDS, value_parser = at_least_one())]
    pub max_batch_records: usize,

    /// Results buffered per WebSocket or SSE connection. When a slow reader
    /// lets it fill, the connection reads on from the results topic instead
    /// (one reader per such connection, until it has caught up), so nothing
    /// is skipped and memory stays bounded.
    #[arg(long, env = "WS_BUFFER", default_value_t = DEFAULT_WS_BUFFER, value_parser = at_least_one())]
    pub ws_buffer: usize,

    /// Event ids remembered per open stream (and per connection while it
    /// reads from the results topic) to skip a second result for the same
    /// event, a consumer's replay after a crash: about 24 bytes each. On a
    /// resume from a cursor, also how many records before it are read back
    /// to learn them. A replay is skipped when its original is among the
    /// stream's last this-many results; a consumer replays at most its
    /// uncommitted work (`--max-in-flight` 5,000 per partition, plus a
    /// second). 0 turns deduplication off.
    #[arg(long, env = "DEDUP_WINDOW", default_value_t = DEFAULT_DEDUP_WINDOW)]
    pub dedup_window: usize,

    /// Most recent results kept per open stream for `GET /stream/{id}/results`
    /// without an upgrade. Results of unknown streams are not kept.
    #[arg(long, env = "RECENT_RESULTS", default_value_t = DEFAULT_RECENT_RESULTS)]
    pub recent_results: usize,

    /// Requests handled at once; beyond it requests are refused with 429 at
    /// once instead of queueing without bound.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT, value_parser = at_least_one())]
    pub max_in_flight: usize,

    /// Streams one API key may have open at once; a start beyond it gets
    /// 429 with Retry-After. Bounds the memory one client can take.
    #[arg(long, env = "MAX_STREAMS_PER_KEY", default_value_t = DEFAULT_MAX_STREAMS_PER_KEY, value_parser = at_least_one())]
    pub max_streams_per_key: usize,

    /// Origins allowed to call the API from a browser (CORS), comma-separated,
    /// e.g. `https://app.example.com`; `*` allows any origin. Empty (the
    /// default): no CORS headers, so browsers refuse cross-origin calls.
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Records the producer may hold unsent; beyond it publishes get 503.
    #[arg(long, env = "PRODUCER_QUEUE", default_value_t = DEFAULT_PRODUCER_QUEUE)]
    pub producer_queue: u32,

    /// How long the producer of events waits to fill a batch. Each request
    /// waits for its ack, so this adds directly to request latency. Stream
    /// starts and deletions are sent at once, without it.
    #[arg(long, env = "PRODUCER_LINGER", value_parser = parse_duration, default_value = DEFAULT_PRODUCER_LINGER)]
    pub linger: Duration,

    /// Connections served at once (HTTP and WebSocket together). Beyond it
    /// a new connection is closed at once, so a flood of idle sockets cannot
    /// use up the process's file descriptors; it is also capped below the
    /// process's open-file limit.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = at_least_one())]
    pub max_connections: usize,

    /// Connections the kernel may hold for the server before it accepts
    /// them (the `listen` backlog; Linux caps it at `net.core.somaxconn`).
    /// When it is full, a new client's SYN is dropped and retried a second
    /// later: with 128 (the usual default), a thousand clients connecting at
    /// once waited 1 s at the p99.
    #[arg(long, env = "LISTEN_BACKLOG", default_value_t = DEFAULT_LISTEN_BACKLOG, value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64))]
    pub listen_backlog: u32,

    /// Time a client has to send a request's headers, counted from when its
    /// connection is ready for a request: a half-sent request, or a
    /// keep-alive connection idle this long, is closed. (hyper times both
    /// with one timer; 20 s leaves clients room to reuse a pooled
    /// connection after a pause.)
    #[arg(long, env = "HEADER_READ_TIMEOUT", value_parser = parse_duration, default_value = DEFAULT_HEADER_READ_TIMEOUT)]
    pub header_read_timeout: Duration,

    /// Time a client has to send a request's whole body, counted from the
    /// first read of it, however steadily it trickles in (a slow upload is
    /// answered 408 and the connection closed).
    #[arg(long, env = "BODY_READ_TIMEOUT", value_parser = parse_duration, default_value = DEFAULT_BODY_READ_TIMEOUT)]
    pub body_read_timeout: Duration,

    /// Time a connection's writes may make no progress: a client that
    /// stops reading (an SSE subscriber, a large answer) or vanishes
    /// without closing is disconnected then, not held until TCP gives up.
    #[arg(long, env = "WRITE_TIMEOUT", value_parser = parse_duration, default_value = DEFAULT_WRITE_TIMEOUT)]
    pub write_timeout: Duration,

    /// Result connections (WebSocket or SSE) one API key may hold open at
    /// once; beyond it an upgrade is answered 429 with Retry-After.
    #[arg(long, env = "MAX_WEBSOCKETS_PER_KEY", default_value_t = DEFAULT_MAX_WEBSOCKETS_PER_KEY, value_parser = at_least_one())]
    pub max_websockets_per_key: usize,

    /// How often the server pings an open WebSocket.
    #[arg(long, env = "WS_PING_INTERVAL", value_parser = parse_duration, default_value = DEFAULT_WS_PING_INTERVAL)]
    pub ws_ping_interval: Duration,

    /// A WebSocket from which nothing (not even a pong) arrived for this
    /// long is closed (1001): its peer has vanished.
    #[arg(long, env = "WS_IDLE_TIMEOUT", value_parser = parse_duration, default_value = DEFAULT_WS_IDLE_TIMEOUT)]
    pub ws_idle_timeout: Duration,

    /// How long an `Idempotency-Key` is remembered per API key, from its
    /// write's acknowledgement (a key whose write is still in flight does
    /// not expire): a repeat within it gets the first response back and
    /// writes nothing.
    #[arg(long, env = "IDEMPOTENCY_TTL", value_parser = parse_duration, default_value = DEFAULT_IDEMPOTENCY_TTL)]
    pub idempotency_ttl: Duration,

    /// Most idempotency keys remembered at once, over all API keys (fixed
    /// size entries of at most about 300 bytes, so the default bounds them
    /// to about 30 MiB). When
    /// full, the oldest is forgotten before its TTL (and counted in
    /// `idempotency_evictions_total`).
    #[arg(long, env = "IDEMPOTENCY_MAX_KEYS", default_value_t = DEFAULT_IDEMPOTENCY_MAX_KEYS, value_parser = at_least_one())]
    pub idempotency_max_keys: usize,

    /// Events per second each API key may publish (over /publish, each
    /// record of /publish/batch, stream sends and WebSocket event frames);
    /// beyond it requests get 429. Fractions allowed (0.5: one every two
    /// seconds). Unset or 0: no limit.
    #[arg(long, env = "RATE_LIMIT")]
    pub rate_limit: Option<f64>,

    /// Events a key may send at once above its rate before being limited
    /// (and the largest batch it can send). Default: one second's worth of
    /// the rate (at least 1).
    #[arg(long, env = "RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<NonZeroU32>,

    /// A JSON Schema (2020-12) file every event payload must match; a
    /// mismatch is answered 422 and nothing is written. Read once at
    /// start-up: a missing or invalid file stops the gateway. `$ref`s must
    /// point inside the file (no network or file lookups).
    #[arg(long, env = "EVENT_SCHEMA")]
    pub event_schema: Option<PathBuf>,

    /// Time given to in-flight requests and the producer flush at shutdown.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", value_parser = parse_duration, default_value = DEFAULT_SHUTDOWN_TIMEOUT)]
    pub shutdown_timeout: Duration,

    // Last, so the gateway's own flags are listed first in --help.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

impl Config {
    /// A configuration for tests: listens on 127.0.0.1 on a free port,
    /// shorter timeouts, everything else at its default.
    pub fn for_tests(kafka: KafkaArgs, api_keys: Vec<String>) -> Self {
        let streams_topic = format!("{}.streams", kafka.topics.events);
        Self {
            kafka,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_keys,
            api_key: None,
            streams_topic,
            // Shorter than in production, so a failing test fails sooner.
            request_timeout: Duration::from_secs(5),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            max_batch_records: DEFAULT_MAX_BATCH_RECORDS,
            ws_buffer: DEFAULT_WS_BUFFER,
            dedup_window: DEFAULT_DEDUP_WINDOW,
            recent_results: DEFAULT_RECENT_RESULTS,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_streams_per_key: DEFAULT_MAX_STREAMS_PER_KEY,
            cors_origins: Vec::new(),
            producer_queue: DEFAULT_PRODUCER_QUEUE,
            linger: default_duration(DEFAULT_PRODUCER_LINGER),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
            header_read_timeout: default_duration(DEFAULT_HEADER_READ_TIMEOUT),
            body_read_timeout: default_duration(DEFAULT_BODY_READ_TIMEOUT),
            write_timeout: default_duration(DEFAULT_WRITE_TIMEOUT),
            max_websockets_per_key: DEFAULT_MAX_WEBSOCKETS_PER_KEY,
            ws_ping_interval: default_duration(DEFAULT_WS_PING_INTERVAL),
            ws_idle_timeout: default_duration(DEFAULT_WS_IDLE_TIMEOUT),
            shutdown_timeout: Duration::from_secs(10),
            idempotency_ttl: default_duration(DEFAULT_IDEMPOTENCY_TTL),
            idempotency_max_keys: DEFAULT_IDEMPOTENCY_MAX_KEYS,
            rate_limit: None,
            rate_limit_burst: None,
            event_schema: None,
        }
    }

    /// Every configured key (`--api-keys` plus `--api-key`), blanks removed.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .api_keys
            .iter()
            .chain(self.api_key.iter())
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        // Repeats anywhere in the list, not only adjacent ones; first
        // mention kept, order otherwise as given.
        let mut seen = std::collections::HashSet::new();
        keys.retain(|k| seen.insert(k.clone()));
        keys
    }

    /// With no key configured, adds one random key for this run and returns
    /// it, so the gateway starts with no flags but is never open. Hand it to
    /// the user with [`crate::keyfile::write_key_file`], not the log.
    pub fn generate_key_if_none(&mut self) -> Option<String> {
        if !self.keys().is_empty() {
            return None;
        }
        let key = format!("dev-{}", uuid::Uuid::new_v4().simple());
        self.api_keys = vec![key.clone()];
        Some(key)
    }

    /// Configured CORS origins, blanks removed.
    pub fn cors_origins(&self) -> Vec<String> {
        self.cors_origins.iter().map(|o| o.trim().to_string()).filter(|o| !o.is_empty()).collect()
    }

    /// How long a request waits for the broker before it is answered 503,
    /// and how long librdkafka tries to deliver its record: the request
    /// timeout less a twentieth of it, at most 250 ms. The handler's clock
    /// starts after the request was read and routed, and the answer still
    /// has to travel, so a client that times the request from its side
    /// with the same timeout gets the 503 before it gives up. librdkafka
    /// gives up on the record at the same moment, so a 503 rarely hides a
    /// late write.
    pub fn broker_wait(&self) -> Duration {
        self.request_timeout - (self.request_timeout / 20).min(Duration::from_millis(250))
    }

    /// Checks what clap cannot, naming the flag at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.kafka.validate()?;
        stream_core::config::validate_topic_name(&self.streams_topic)
            .map_err(|why| anyhow::anyhow!("--streams-topic {:?}: {why}", self.streams_topic))?;
        if self.keys().is_empty() {
            anyhow::bail!("no API key configured: set API_KEYS=key1,key2 (or API_KEY=key, or --api-keys)");
        }
        for origin in self.cors_origins() {
            if origin != "*" && axum::http::HeaderValue::from_str(&origin).is_err() {
                anyhow::bail!("--cors-origins: {origin:?} is not a valid origin");
            }
        }
        for (flag, value) in [
            ("--request-timeout", self.request_timeout),
            ("--header-read-timeout", self.header_read_timeout),
            ("--body-read-timeout", self.body_read_timeout),
            ("--write-timeout", self.write_timeout),
            ("--ws-ping-interval", self.ws_ping_interval),
            ("--ws-idle-timeout", self.ws_idle_timeout),
            ("--idempotency-ttl", self.idempotency_ttl),
        ] {
            if value.is_zero() {
                anyhow::bail!("{flag} must be positive");
            }
        }
        if let Some(rate) = self.rate_limit {
            if !(0.0..=1e9).contains(&rate) {
                anyhow::bail!("--rate-limit must be between 0 (no limit) and 1e9 events per second, not {rate}");
            }
        }
        if self.rate_limit_burst.is_some() && self.rate_limit.unwrap_or(0.0) == 0.0 {
            anyhow::bail!("--rate-limit-burst is set but --rate-limit is not: set RATE_LIMIT (events per second) too");
        }
        Ok(())
    }
}

/// Default of `--max-connections`: room for 10,000 WebSockets and the
/// HTTP clients beside them, under the usual 20,000 open-file limit of a
/// service (see [`Config::connection_limit`] for lower limits).
pub const DEFAULT_MAX_CONNECTIONS: usize = 15_000;

/// Default of `--listen-backlog`: Linux's default `somaxconn` since 5.4.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;

#[cfg(test)]
mod tests {
    use stream_core::config::parse_flags;

    use super::*;

    #[test]
    fn keys_come_from_both_flags() {
        let cli = parse_flags::<Config>(&["x", "--api-keys", "a, b,", "--api-key", "c"]).unwrap();
        assert_eq!(cli.keys(), ["a", "b", "c"]);
        cli.validate().unwrap();
        assert_eq!(cli.listen_addr.port(), 8082);
        assert_eq!(cli.listen_backlog, 4096);
        assert!(parse_flags::<Config>(&["x", "--listen-backlog", "0"]).is_err());
        let cli = parse_flags::<Config>(&["x", "--api-keys", "a,b,a,c,b", "--api-key", "a"]).unwrap();
        assert_eq!(cli.keys(), ["a", "b", "c"], "repeats anywhere are dropped");
    }

    #[test]
    fn no_key_is_a_configuration_error_until_one_is_generated() {
        let mut cli = parse_flags::<Config>(&["x", "--api-keys", " ,"]).unwrap();
        let err = cli.validate().unwrap_err().to_string();
        assert!(err.contains("API_KEYS"), "{err}");

        let key = cli.generate_key_if_none().expect("a generated key");
        assert!(key.len() > 30, "{key}");
        assert_eq!(cli.keys(), std::slice::from_ref(&key));
        cli.validate().unwrap();
        assert_eq!(cli.generate_key_if_none(), None, "one key is enough");
        assert_eq!(cli.keys(), [key]);

        let mut other = parse_flags::<Config>(&["x"]).unwrap();
        assert_ne!(other.generate_key_if_none(), Some(cli.keys()[0].clone()));
    }

    #[test]
    fn zero_counts_are_refused_naming_the_flag() {
        for flag in
            ["--ws-buffer", "--max-in-flight", "--max-connections", "--idempotency-max-keys", "--rate-limit-burst"]
        {
            let err = parse_flags::<Config>(&["x", flag, "0"]).err().unwrap_or_else(|| panic!("{flag} 0 accepted"));
            assert!(err.to_string().contains(flag), "{err}");
        }
        // 0 keeps its meaning where it has one: no deduplication.
        assert_eq!(parse_flags::<Config>(&["x", "--dedup-window", "0"]).unwrap().dedup_window, 0);
    }

    #[test]
    fn requests_are_answered_a_little_before_their_timeout() {
        let wait = |timeout: &str| parse_flags::<Config>(&["x", "--request-timeout", timeout]).unwrap().broker_wait();
        assert_eq!(wait("2s"), Duration::from_millis(1_900));
        assert_eq!(wait("10s"), Duration::from_millis(9_750));
        assert_eq!(wait("100ms"), Duration::from_millis(95));
    }

    #[test]
    fn a_configured_key_is_never_replaced() {
        let mut cli = parse_flags::<Config>(&["x", "--api-key", "mine"]).unwrap();
        assert_eq!(cli.generate_key_if_none(), None);
        assert_eq!(cli.keys(), ["mine"]);
    }

    #[test]
    fn for_tests_listens_on_a_free_local_port() {
        let config = Config::for_tests(KafkaArgs::for_brokers("127.0.0.1:1"), vec!["k".into()]);
        assert_eq!(config.listen_addr.port(), 0);
        assert!(config.listen_addr.ip().is_loopback());
        config.validate().unwrap();
    }
}
