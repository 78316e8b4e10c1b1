//! The consumer's command line (every flag also an environment variable).

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::Args;
use stream_core::config::{parse_duration, LogArgs, LogFormat};
use stream_core::kafka::StartFrom;
use stream_core::KafkaArgs;

/// Examples shown at the end of `--help`.
pub const AFTER_HELP: &str = "\
Examples:
  # Four workers on the default topics (events -> events.results, events.dlq)
  consumer --workers 4

  # Create missing topics first, serve Prometheus metrics on :9464
  consumer --create-topics --metrics-addr 0.0.0.0:9464

  # Another topic and group, against a remote cluster
  KAFKA_BROKERS=broker1:9092,broker2:9092 consumer --topic orders --group orders-processor

Delivery is at-least-once: an event's offset is committed only after its
result (or its dead letter) is acknowledged by the broker, so a crash
replays unfinished events and never skips one. Events whose payload cannot
be processed (not JSON, say) go to the dead-letter topic with dlq_error,
dlq_error_kind, dlq_source_topic, dlq_source_partition, dlq_source_offset
and dlq_time headers, next to their original ce_* headers (without the
payload, and with dlq_payload_dropped, when the whole is too large for the
broker; as a reference to the event only, with dlq_headers_dropped, when
even that is).

The process runs without transparent huge pages: less memory and, under
light load, less CPU per event. MIMALLOC_ALLOW_THP=1 in the environment
(not in .env, which is read too late) keeps them.";

// Defaults the flags and `Config::for_tests` share.
const DEFAULT_MAX_IN_FLIGHT: usize = 5_000;
const DEFAULT_DRAIN_TIMEOUT: &str = "10s";
const DEFAULT_START_FROM: StartFrom = StartFrom::Earliest;
const DEFAULT_RESULT_HEADERS: bool = true;
const MAX_WORKERS: usize = 1024;

/// Command-line and environment configuration of the consumer.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Workers (group members) in this process. Partitions are spread over
    /// them; more workers than partitions leaves some idle.
    #[arg(short = 'w', long, env = "WORKERS", default_value_t = 2,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_WORKERS as u64))]
    pub workers: usize,

    /// Consumer group. Processes sharing it split the partitions between
    /// them; a new group starts at --start-from.
    #[arg(short = 'g', long, env = "CONSUMER_GROUP", default_value = "events-processor")]
    pub group: String,

    /// Where a group without committed offsets starts reading.
    #[arg(long, env = "START_FROM", value_enum, default_value_t = DEFAULT_START_FROM)]
    pub start_from: StartFrom,

    /// Create the events, results and DLQ topics if they do not exist
    /// (with --partitions and --replication-factor); existing topics are
    /// never changed. Unset, the project's own topics (`events`,
    /// `events.results`, `events.dlq`) are created when missing, so a
    /// consumer started first on a fresh broker works, while a topic named
    /// by flag or environment must exist: a typo in a name fails at
    /// start-up, saying so, instead of creating a topic nothing writes to.
    /// `--create-topics` creates whatever names are given; `--create-topics
    /// false` creates none.
    #[arg(
        long,
        env = "CREATE_TOPICS",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub create_topics: Option<bool>,

    /// Write each result as a CloudEvent: the result JSON plus the ce_*
    /// headers and the event's traceparent. `--result-headers false` writes
    /// the JSON and the key (the stream id) only: smaller records, all that
    /// producer-api needs to route results, and cheaper on brokers where
    /// headers are costly.
    #[arg(
        long,
        env = "RESULT_HEADERS",
        default_value_t = DEFAULT_RESULT_HEADERS,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub result_headers: bool,

    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 0.0.0.0:9464.
    /// Off unless set.
    #[arg(long, env = "METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Records per partition whose results may await their ack at once.
    /// Higher pipelines more; each is replayed after a crash.
    #[arg(long, env = "CONSUMER_MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_in_flight: usize,

    /// How long the group waits for a silent worker before moving its
    /// partitions to others (a killed process is noticed after this).
    #[arg(long, env = "SESSION_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub session_timeout: Duration,

    /// How long a rebalance or shutdown waits for in-flight results to be
    /// acknowledged before giving up on them (they are then processed again).
    #[arg(long, env = "DRAIN_TIMEOUT", value_parser = parse_duration, default_value = DEFAULT_DRAIN_TIMEOUT)]
    pub drain_timeout: Duration,

    /// Connection attempts at start-up (each waits --connect-timeout), with
    /// doubling pauses between them, before giving up.
    #[arg(long, env = "CONNECT_ATTEMPTS", default_value_t = 5, value_parser = RangedU64ValueParser::<u32>::new().range(1..))]
    pub connect_attempts: u32,

    /// Period of the throughput log line and of the lag statistics.
    #[arg(long, env = "STATS_INTERVAL", value_parser = parse_duration, default_value = "10s")]
    pub stats_interval: Duration,

    // The shared groups come last: each sets its own help heading, which
    // would otherwise carry over to the consumer's own flags.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

impl Config {
    /// A configuration for tests: `workers` workers in a fresh group, topics
    /// created if missing, no metrics listener, a short session timeout.
    pub fn for_tests(kafka: KafkaArgs, workers: usize) -> Self {
        Self {
            kafka,
            log: LogArgs { log_format: LogFormat::Text },
            workers,
            group: format!("consumer-test-{}", uuid::Uuid::new_v4().simple()),
            start_from: DEFAULT_START_FROM,
            // Tests name their own topics.
            create_topics: Some(true),
            result_headers: DEFAULT_RESULT_HEADERS,
            metrics_addr: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            session_timeout: Duration::from_secs(6),
            drain_timeout: parse_duration(DEFAULT_DRAIN_TIMEOUT).expect("the default parses"),
            connect_attempts: 3,
            stats_interval: Duration::from_secs(5),
        }
    }

    /// Checks what clap cannot, naming the flag at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.kafka.validate()?;
        let invalid = |msg: String| Err(anyhow::anyhow!("invalid configuration: {msg}"));
        // clap enforces these ranges on the command line; a Config built in
        // code gets the same checks here.
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return invalid(format!("--workers (WORKERS) is {}; use 1 to {MAX_WORKERS}", self.workers));
        }
        if self.max_in_flight == 0 || self.connect_attempts == 0 {
            return invalid("--max-in-flight and --connect-attempts must be at least 1".into());
        }
        if self.group.trim().is_empty() {
            return invalid("--group (CONSUMER_GROUP) is empty".into());
        }
        if self.stats_interval.is_zero() {
            return invalid("--stats-interval (STATS_INTERVAL) must be longer than 0".into());
        }
        // librdkafka refuses a session timeout outside 1 ms..1 h or above
        // max.poll.interval.ms (5 min unless -X sets it), and says so only
        // after connecting, in its own terms.
        let max_poll_ms = self
            .kafka
            .properties
            .iter()
            .rev()
            .find(|(key, _)| key == "max.poll.interval.ms")
            .and_then(|(_, value)| value.parse::<u64>().ok())
            .unwrap_or(300_000);
        let heartbeat_ms = self
            .kafka
            .properties
            .iter()
            .rev()
            .find(|(key, _)| key == "heartbeat.interval.ms")
            .and_then(|(_, value)| value.parse::<u64>().ok())
            .unwrap_or(3_000);
        let session_ms = self.session_timeout.as_millis();
        // librdkafka takes a session shorter than its heartbeat, and the
        // member then loses its partitions before it can say it is alive:
        // it sits idle for ever, with no error.
        if session_ms <= u128::from(heartbeat_ms) {
            return invalid(format!(
                "--session-timeout (SESSION_TIMEOUT) is {:?}, not longer than the heartbeat interval ({heartbeat_ms} ms; \
                 -X heartbeat.interval.ms=N sets it): a member would lose its partitions between two heartbeats. \
                 Use at least three heartbeats (Kafka and Redpanda brokers refuse sessions under 6 s by default)",
                self.session_timeout
            ));
        }
        if !(1..=3_600_000).contains(&session_ms) || session_ms > u128::from(max_poll_ms) {
            return invalid(format!(
                "--session-timeout (SESSION_TIMEOUT) is {:?}; use 1ms to {}s (the group's max.poll.interval.ms, \
                 which -X max.poll.interval.ms=N raises, up to 1 h)",
                self.session_timeout,
                max_poll_ms.min(3_600_000) / 1000
            ));
        }
        let t = &self.kafka.topics;
        if t.events == t.results || t.events == t.dlq {
            return invalid(format!(
                "the events topic {:?} is also the results or DLQ topic; the consumer would read its own output \
                 (set --results-topic and --dlq-topic to other names)",
                t.events
            ));
        }
        if t.results == t.dlq {
            return invalid(format!(
                "the results topic {:?} is also the DLQ topic; a reader of results would take dead letters for \
                 results (set --results-topic and --dlq-topic to different names)",
                t.results
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use stream_core::config::parse_flags;

    use super::*;

    #[test]
    fn defaults_are_valid() {
        let cli = parse_flags::<Config>(&["consumer"]).unwrap();
        assert_eq!(cli.group, "events-processor");
        assert_eq!(cli.workers, 2);
        assert!(cli.metrics_addr.is_none());
        assert_eq!(cli.create_topics, None, "the project's own topics are created; others must exist");
        cli.validate().unwrap();
    }

    #[test]
    fn a_session_timeout_librdkafka_would_refuse_is_refused_first_by_name() {
        let check = |args: &[&str]| parse_flags::<Config>(args).unwrap().validate();
        for bad in ["0s", "10m", "2h"] {
            let err = check(&["consumer", "--session-timeout", bad]).unwrap_err().to_string();
            assert!(err.contains("--session-timeout (SESSION_TIMEOUT)"), "{bad}: {err}");
        }
        for short in ["1ms", "3s"] {
            let err = check(&["consumer", "--session-timeout", short]).unwrap_err().to_string();
            assert!(err.contains("heartbeat interval (3000 ms"), "{short}: {err}");
        }
        check(&["consumer", "--session-timeout", "3s", "-X", "heartbeat.interval.ms=1000"]).unwrap();
        check(&["consumer", "--session-timeout", "45s"]).unwrap();
        check(&["consumer", "--session-timeout", "10m", "-X", "max.poll.interval.ms=900000"]).unwrap();
    }

    #[test]
    fn create_topics_can_be_switched_on_and_off() {
        let parse = |args: &[&str]| parse_flags::<Config>(args).unwrap().create_topics;
        assert_eq!(parse(&["consumer"]), None);
        assert_eq!(parse(&["consumer", "--create-topics"]), Some(true));
        assert_eq!(parse(&["consumer", "--create-topics", "true", "--workers", "3"]), Some(true));
        assert_eq!(parse(&["consumer", "--create-topics", "false"]), Some(false));
        assert_eq!(parse(&["consumer", "--create-topics=false", "--workers", "3"]), Some(false));
    }

    #[test]
    fn out_of_range_counts_are_rejected_naming_the_flag() {
        for (flag, value) in
            [("--workers", "0"), ("--workers", "1025"), ("--max-in-flight", "0"), ("--connect-attempts", "0")]
        {
            let err =
                parse_flags::<Config>(&["consumer", flag, value]).err().unwrap_or_else(|| panic!("{flag} {value}"));
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{flag} {value}");
            assert!(err.to_string().contains(flag), "{err}");
        }
    }

    #[test]
    fn reading_its_own_output_is_rejected() {
        let cli = parse_flags::<Config>(&["consumer", "--topic", "x", "--results-topic", "x"]).unwrap();
        let err = cli.validate().unwrap_err().to_string();
        assert!(err.contains("--results-topic"), "{err}");
        let cli = parse_flags::<Config>(&["consumer", "--results-topic", "x", "--dlq-topic", "x"]).unwrap();
        let err = cli.validate().unwrap_err().to_string();
        assert!(err.contains("invalid configuration") && err.contains("--dlq-topic"), "{err}");
    }

    #[test]
    fn test_configs_get_fresh_groups() {
        let a = Config::for_tests(KafkaArgs::for_brokers("x:1"), 1);
        let b = Config::for_tests(KafkaArgs::for_brokers("x:1"), 1);
        assert_ne!(a.group, b.group);
        a.validate().unwrap();
    }
}
