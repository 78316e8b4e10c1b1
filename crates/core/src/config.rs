//! Command-line and environment configuration shared by every binary.
//!
//! Each binary flattens [`KafkaArgs`] and [`LogArgs`] into its own clap
//! parser, so the same flag and the same environment variable mean the same
//! thing everywhere and one `.env` file serves the whole workspace.

use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::error::{Error, Result};

/// Default bootstrap address: Redpanda's host port in `compose/`, and the
/// port the local broker script listens on, so one default serves both.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:19092";

/// Loads `.env` from the working directory (or a parent) if there is one.
///
/// Call before parsing arguments: clap reads the variables it sets. Values
/// already in the environment win over the file.
pub fn load_dotenv() {
    if let Err(err) = dotenvy::dotenv() {
        if !err.not_found() {
            eprintln!("warning: ignoring unreadable .env file: {err}");
        }
    }
}

/// How to reach the Kafka cluster, and which topics the project uses.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Kafka connection")]
pub struct KafkaArgs {
    /// Bootstrap brokers, a comma-separated list of host:port.
    #[arg(short = 'b', long, env = "KAFKA_BROKERS", default_value = DEFAULT_BROKERS)]
    pub brokers: String,

    /// Client id reported to the broker (shows up in its logs and quotas);
    /// `streamkit` when unset.
    #[arg(long, env = "KAFKA_CLIENT_ID")]
    pub client_id: Option<String>,

    /// Security protocol used to talk to the brokers.
    #[arg(long, env = "KAFKA_SECURITY_PROTOCOL", value_enum, ignore_case = true, default_value_t = SecurityProtocol::Plaintext)]
    pub security_protocol: SecurityProtocol,

    /// SASL mechanism (with sasl_plaintext or sasl_ssl).
    #[arg(long, env = "KAFKA_SASL_MECHANISM", value_enum, ignore_case = true)]
    pub sasl_mechanism: Option<SaslMechanism>,

    /// SASL user name.
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,

    /// SASL password. Prefer the environment variable: flags show up in `ps`.
    #[arg(long, env = "KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub sasl_password: Option<String>,

    /// CA certificate(s) (PEM file) used to verify the brokers' TLS certificates.
    #[arg(long, env = "KAFKA_SSL_CA_LOCATION", value_name = "FILE")]
    pub ssl_ca_location: Option<String>,

    /// Client certificate (PEM file) for mutual TLS.
    #[arg(long, env = "KAFKA_SSL_CERTIFICATE_LOCATION", value_name = "FILE")]
    pub ssl_certificate_location: Option<String>,

    /// Client private key (PEM file) for mutual TLS.
    #[arg(long, env = "KAFKA_SSL_KEY_LOCATION", value_name = "FILE")]
    pub ssl_key_location: Option<String>,

    /// Extra librdkafka property, as kcat takes it; repeatable. Applied last,
    /// so it overrides anything this tool sets. In the environment, separate
    /// several with ';'.
    #[arg(
        short = 'X',
        long = "property",
        env = "KAFKA_PROPERTIES",
        value_name = "KEY=VALUE",
        value_parser = parse_property,
        value_delimiter = ';'
    )]
    pub properties: Vec<(String, String)>,

    /// How long to wait for the cluster to answer a metadata request at start-up.
    #[arg(long, env = "KAFKA_CONNECT_TIMEOUT", value_parser = parse_positive_duration, default_value = DEFAULT_CONNECT_TIMEOUT)]
    pub connect_timeout: Duration,

    #[command(flatten)]
    pub topics: TopicArgs,
}

impl KafkaArgs {
    /// Connection settings for `brokers` with every other option at its default.
    pub fn for_brokers(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            client_id: None,
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            properties: Vec::new(),
            connect_timeout: parse_duration(DEFAULT_CONNECT_TIMEOUT).expect("the default parses"),
            topics: TopicArgs::default(),
        }
    }

    /// Checks combinations clap cannot express, naming the flag at fault.
    pub fn validate(&self) -> Result<()> {
        if self.brokers.trim().is_empty() {
            return Err(Error::Config("--brokers (KAFKA_BROKERS) is empty".into()));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::Config("--connect-timeout (KAFKA_CONNECT_TIMEOUT) must be longer than 0".into()));
        }
        for broker in self.brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
            if let Err(why) = check_broker(broker) {
                return Err(Error::Config(format!(
                    "--brokers (KAFKA_BROKERS) {:?}: {broker:?} {why}; expected host:port[,host:port...]",
                    self.brokers
                )));
            }
        }
        let sasl = matches!(self.security_protocol, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl);
        if sasl && (self.sasl_username.is_none() || self.sasl_password.is_none()) {
            return Err(Error::Config(format!(
                "--security-protocol {} needs --sasl-username and --sasl-password (KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD)",
                self.security_protocol.as_str()
            )));
        }
        if !sasl && self.sasl_mechanism.is_some() {
            return Err(Error::Config(format!(
                "--sasl-mechanism is set but --security-protocol is {}; use sasl_plaintext or sasl_ssl",
                self.security_protocol.as_str()
            )));
        }
        // librdkafka checks each property's name and value as it is set,
        // without a client: so a bad -X is named before anything connects.
        let mut properties = rdkafka::ClientConfig::new();
        for (key, value) in &self.properties {
            properties.set(key, value);
        }
        if let Err(error) = properties.create_native_config() {
            return Err(match error {
                rdkafka::error::KafkaError::ClientConfig(_, description, key, value) => {
                    Error::Config(format!("librdkafka property {key}={value:?}: {description}"))
                }
                other => Error::Kafka(other),
            });
        }
        self.topics.validate()
    }
}

// Defaults used both by the flags and by the `Default`/`for_brokers`
// constructors, so the two cannot drift apart.
const DEFAULT_CONNECT_TIMEOUT: &str = "10s";
const DEFAULT_EVENTS_TOPIC: &str = "events";
const DEFAULT_RESULTS_TOPIC: &str = "events.results";
const DEFAULT_DLQ_TOPIC: &str = "events.dlq";
const DEFAULT_PARTITIONS: i32 = 6;
const DEFAULT_REPLICATION_FACTOR: i32 = 1;

/// Names and shape of the project's topics.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Topics")]
pub struct TopicArgs {
    /// Topic the events are published to (key = stream id).
    #[arg(long = "events-topic", visible_alias = "topic", env = "EVENTS_TOPIC", default_value = DEFAULT_EVENTS_TOPIC)]
    pub events: String,

    /// Topic processed results are written to (key = stream id).
    #[arg(long = "results-topic", env = "RESULTS_TOPIC", default_value = DEFAULT_RESULTS_TOPIC)]
    pub results: String,

    /// Dead-letter topic for events that fail processing.
    #[arg(long = "dlq-topic", env = "DLQ_TOPIC", default_value = DEFAULT_DLQ_TOPIC)]
    pub dlq: String,

    /// Partitions for topics this tool creates. More partitions allow more
    /// consumer workers in parallel.
    #[arg(long, env = "TOPIC_PARTITIONS", default_value_t = DEFAULT_PARTITIONS, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,

    /// Replication factor for topics this tool creates (3 on a real cluster).
    #[arg(long, env = "TOPIC_REPLICATION_FACTOR", default_value_t = DEFAULT_REPLICATION_FACTOR, value_parser = clap::value_parser!(i32).range(1..))]
    pub replication_factor: i32,
}

impl Default for TopicArgs {
    fn default() -> Self {
        Self {
            events: DEFAULT_EVENTS_TOPIC.into(),
            results: DEFAULT_RESULTS_TOPIC.into(),
            dlq: DEFAULT_DLQ_TOPIC.into(),
            partitions: DEFAULT_PARTITIONS,
            replication_factor: DEFAULT_REPLICATION_FACTOR,
        }
    }
}

impl TopicArgs {
    /// Whether `name` is one of the project's own topic names (the
    /// defaults of `--events-topic`, `--results-topic` and `--dlq-topic`).
    pub fn is_default_name(name: &str) -> bool {
        [DEFAULT_EVENTS_TOPIC, DEFAULT_RESULTS_TOPIC, DEFAULT_DLQ_TOPIC].contains(&name)
    }

    fn validate(&self) -> Result<()> {
        for (flag, name) in
            [("--events-topic", &self.events), ("--results-topic", &self.results), ("--dlq-topic", &self.dlq)]
        {
            validate_topic_name(name).map_err(|why| Error::Config(format!("{flag} {name:?}: {why}")))?;
        }
        Ok(())
    }
}

/// Checks one bootstrap address as librdkafka reads it (`[proto://]host[:port]`,
/// IPv6 in brackets), so a typo is named at start-up instead of showing as
/// an unreachable cluster after the connect timeout.
fn check_broker(broker: &str) -> std::result::Result<(), &'static str> {
    let address = broker.split_once("://").map_or(broker, |(_, rest)| rest);
    if address.chars().any(char::is_whitespace) {
        return Err("has a space in it");
    }
    let (host, port) = match address.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, rest)) => (host, Some(rest.strip_prefix(':').ok_or("has text after its IPv6 address")?)),
            None => return Err("has no closing ] after its IPv6 address"),
        },
        // More than one colon: an IPv6 address without brackets, left to
        // librdkafka.
        None if address.matches(':').count() > 1 => (address, None),
        None => match address.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        },
    };
    if host.is_empty() {
        return Err("has no host");
    }
    match port.map(str::parse::<u16>) {
        Some(Ok(0) | Err(_)) => Err("has a port that is not a number from 1 to 65535"),
        _ => Ok(()),
    }
}

/// Kafka's rules for topic names: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() || name.len() > 249 {
        return Err("a topic name has 1 to 249 characters");
    }
    if name == "." || name == ".." {
        return Err("a topic name cannot be '.' or '..'");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err("a topic name may only contain letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// `security.protocol` values librdkafka accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// The librdkafka spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
}

/// SASL mechanisms supported without extra system libraries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The librdkafka spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Logging options shared by every binary.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log line format. Verbosity comes from RUST_LOG (e.g. `info`, `consumer=debug`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Parses `key=value` for `-X`.
pub fn parse_property(raw: &str) -> std::result::Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE (e.g. -X linger.ms=10), got {raw:?}")),
    }
}

/// Parses a human duration such as `250ms`, `10s` or `2m`.
pub fn parse_duration(raw: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|e| format!("{raw:?} is not a duration like 500ms, 10s or 1m: {e}"))
}

/// Parses a duration that must be longer than zero (a run's length, a
/// timeout).
pub fn parse_positive_duration(raw: &str) -> std::result::Result<Duration, String> {
    let duration = parse_duration(raw)?;
    if duration.is_zero() {
        return Err(format!("{raw:?} is zero; give a duration longer than 0, like 500ms or 10s"));
    }
    Ok(duration)
}

/// Parses a rate in messages per second: a finite number, 0 or more (0
/// means no limit where a flag says so).
pub fn parse_rate(raw: &str) -> std::result::Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        Ok(_) => Err(format!("{raw:?} is not a rate: give a number of messages per second, 0 or more")),
        Err(_) => Err(format!("{raw:?} is not a number of messages per second")),
    }
}

/// Parses a rate in messages per second that must be above 0.
pub fn parse_positive_rate(raw: &str) -> std::result::Result<f64, String> {
    match parse_rate(raw)? {
        0.0 => Err(format!("{raw:?}: a rate must be above 0 messages per second")),
        rate => Ok(rate),
    }
}

/// Parses `argv` (program name first) into `T` as a binary that flattens
/// `T` into its command line would; for tests of each crate's flags.
#[cfg(any(test, feature = "testing"))]
pub fn parse_flags<T: clap::Args + clap::FromArgMatches>(argv: &[&str]) -> Result<T, clap::Error> {
    let matches = T::augment_args(clap::Command::new("test")).try_get_matches_from(argv)?;
    T::from_arg_matches(&matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_librdkafka_property_is_refused_without_a_client() {
        let mut args = KafkaArgs::for_brokers("127.0.0.1:1");
        args.properties.push(("linger.ms".into(), "20".into()));
        args.validate().unwrap();
        args.properties.push(("foo.bar".into(), "1".into()));
        let err = args.validate().unwrap_err().to_string();
        assert!(err.contains("librdkafka property foo.bar=\"1\"") && err.contains("No such configuration"), "{err}");
        args.properties.pop();
        args.properties.push(("fetch.wait.max.ms".into(), "soon".into()));
        assert!(args.validate().unwrap_err().to_string().contains("fetch.wait.max.ms"));
    }

    #[test]
    fn a_zero_connect_timeout_is_refused_by_its_flag() {
        let err = parse_flags::<KafkaArgs>(&["x", "--connect-timeout", "0s"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{err}");
        assert!(err.to_string().contains("--connect-timeout"), "{err}");
    }

    #[test]
    fn rates_and_lengths_are_numbers_a_run_can_use() {
        assert_eq!(parse_rate("2500"), Ok(2500.0));
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in ["NaN", "inf", "-1", "-inf", "fast", ""] {
            assert!(parse_rate(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_positive_rate("10"), Ok(10.0));
        assert!(parse_positive_rate("0").unwrap_err().contains("above 0"));
        assert!(parse_positive_rate("NaN").is_err());
        assert_eq!(parse_positive_duration("1ms"), Ok(Duration::from_millis(1)));
        assert!(parse_positive_duration("0s").unwrap_err().contains("zero"));
        assert!(parse_positive_duration("soon").is_err());
    }

    #[test]
    fn defaults_match_the_documented_names() {
        let cli = parse_flags::<KafkaArgs>(&["x"]).unwrap();
        assert_eq!(cli.topics.events, "events");
        assert_eq!(cli.topics.results, "events.results");
        assert_eq!(cli.topics.dlq, "events.dlq");
        assert_eq!(cli.security_protocol, SecurityProtocol::Plaintext);
        cli.validate().unwrap();
    }

    #[test]
    fn properties_repeat_and_keep_equals_signs_in_values() {
        let cli = parse_flags::<KafkaArgs>(&["x", "-X", "linger.ms=10", "-X", "sasl.oauthbearer.config=a=b"]).unwrap();
        assert_eq!(
            cli.properties,
            vec![
                ("linger.ms".to_string(), "10".to_string()),
                ("sasl.oauthbearer.config".to_string(), "a=b".to_string())
            ]
        );
    }

    #[test]
    fn a_property_without_equals_is_rejected_with_an_example() {
        let err = parse_flags::<KafkaArgs>(&["x", "-X", "linger.ms"]).err().unwrap().to_string();
        assert!(err.contains("KEY=VALUE"), "{err}");
    }

    #[test]
    fn broker_lists_are_checked_before_connecting() {
        for good in [
            "127.0.0.1:19092",
            "a:1, b:2,",
            "kafka",
            "PLAINTEXT://broker-1:9092,SSL://broker-2:9093",
            "[::1]:9092",
            "[::1]",
            "fe80::1",
        ] {
            let cli = parse_flags::<KafkaArgs>(&["x", "--brokers", good]).unwrap();
            assert!(cli.validate().is_ok(), "{good}: {:?}", cli.validate());
        }
        for (bad, why) in [
            ("not a broker", "space"),
            ("host:notaport", "port"),
            ("host:0", "port"),
            ("host:70000", "port"),
            (":9092", "no host"),
            ("a:1,b:", "port"),
            ("[::1", "]"),
            ("[::1]9092", "after"),
        ] {
            let cli = parse_flags::<KafkaArgs>(&["x", "--brokers", bad]).unwrap();
            let err = cli.validate().unwrap_err().to_string();
            assert!(err.contains("--brokers") && err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn zero_partitions_or_replicas_are_refused_naming_the_flag() {
        for flag in ["--partitions", "--replication-factor"] {
            let err = parse_flags::<KafkaArgs>(&["x", flag, "0"]).err().unwrap_or_else(|| panic!("{flag} 0 accepted"));
            assert!(err.to_string().contains(flag), "{err}");
        }
    }

    #[test]
    fn topic_alias_and_bad_topic_names() {
        let cli = parse_flags::<KafkaArgs>(&["x", "--topic", "orders"]).unwrap();
        assert_eq!(cli.topics.events, "orders");
        let cli = parse_flags::<KafkaArgs>(&["x", "--topic", "bad/topic"]).unwrap();
        let err = cli.validate().unwrap_err().to_string();
        assert!(err.contains("--events-topic") && err.contains("bad/topic"), "{err}");
    }

    #[test]
    fn sasl_needs_credentials() {
        let cli =
            parse_flags::<KafkaArgs>(&["x", "--security-protocol", "sasl_ssl", "--sasl-mechanism", "SCRAM-SHA-512"])
                .unwrap();
        let err = cli.validate().unwrap_err().to_string();
        assert!(err.contains("--sasl-username"), "{err}");
    }

    #[test]
    fn security_settings_ignore_case() {
        let cli =
            parse_flags::<KafkaArgs>(&["x", "--security-protocol", "SASL_SSL", "--sasl-mechanism", "scram-sha-512"])
                .unwrap();
        assert_eq!(cli.security_protocol, SecurityProtocol::SaslSsl);
        assert_eq!(cli.sasl_mechanism, Some(SaslMechanism::ScramSha512));
        assert!(parse_flags::<KafkaArgs>(&["x", "--security-protocol", "tls"]).is_err());
    }

    #[test]
    fn durations_are_human() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").unwrap_err().contains("10s"));
    }
}
