//! Benchmarks of the toolkit: raw produce and consume throughput, end-to-end
//! latency through Kafka at fixed offered rates, and the HTTP/WebSocket API
//! under many concurrent streams.
//!
//! ```text
//! cargo run -p bench --release -- produce --count 1000000
//! cargo run -p bench --release -- consume --count 1000000
//! cargo run -p bench --release -- e2e --rates 1000,10000,50000 --warmup 5s --duration 20s
//! cargo run -p bench --release -- api --streams 1000 --messages 100000
//! cargo run -p bench --release -- cost api consume
//! ```
//!
//! # Layout
//!
//! - [`produce`], [`consume`], [`e2e`], [`api`], [`cost`]: one module per subcommand.
//! - [`output`]: the table, JSON report and files every subcommand writes.
//! - [`hgrm`]: HdrHistogram's percentile-distribution text format.
//! - [`http1`]: the lean keep-alive HTTP/1.1 client of the `api` load loop.
//! - [`plot`]: SVG charts.
//!
//! Latencies are recorded in microseconds into `hdrhistogram` (3
//! significant digits) and reported in milliseconds.

pub mod api;
pub mod consume;
pub mod cost;
pub mod e2e;
pub mod hgrm;
pub mod http1;
pub mod output;
pub mod plot;
pub mod produce;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use stream_core::config::{parse_duration, LogArgs};
use stream_core::kafka::{self, Acks, ProducerOptions, TopicSpec};
use stream_core::KafkaArgs;
use tokio_util::sync::CancellationToken;

pub use output::BenchReport;

/// Command line of the `bench` binary.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "bench",
    version,
    about = "Throughput and latency benchmarks: produce, consume, end to end through Kafka, and through the HTTP API",
    after_help = "With no command, bench runs e2e: latency histograms at the default rates, and the options
above are e2e's. With a command, its options go after it: bench produce --brokers HOST:PORT.

Examples:
  bench                                           # = bench e2e
  bench produce --count 1000000 --size 100        # producer throughput and ack latency
  bench consume --count 1000000                   # fills the topic, then reads it back as fast as possible
  bench e2e --rates 1000,10000,50000 --warmup 5s --duration 20s
  bench api --url http://127.0.0.1:8082 --api-key secret --streams 1000 --messages 100000
  bench cost api consume                          # CPU µs per message of every process (scripts/cost.sh)

Each run prints a table (count, rate, p50, p90, p99, p99.9, max, mean, errors), and writes
<out-dir>/<command>.json, one .hgrm percentile distribution per row and an SVG plot.
Use a release build (cargo run --release) for numbers worth quoting."
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// With no command, `bench` runs `e2e`, `cargo run -p bench`'s purpose:
    /// these are its options.
    #[command(flatten)]
    pub e2e: e2e::E2eArgs,
}

/// The benchmarks.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Producer throughput and ack latency (enqueue -> broker acknowledgement).
    #[command(after_help = "Examples:
  bench produce --count 1000000 --size 100
  bench produce --count 200000 --json --out-dir target/bench")]
    Produce(produce::ProduceArgs),
    /// Consumer throughput: read N records from the start of the topic.
    #[command(after_help = "Examples:
  bench consume --count 1000000             # writes the records first, then reads them
  bench consume --count 1000000 --no-fill   # reads records already in the topic")]
    Consume(consume::ConsumeArgs),
    /// End-to-end latency (ce_time -> received by a consumer) at fixed offered rates, open loop.
    #[command(after_help = "Examples:
  bench e2e                                     # 1000, 10000 and 50000 events/s
  bench e2e --rates 1000,10000 --warmup 5s --duration 20s")]
    E2e(e2e::E2eArgs),
    /// The HTTP API: C concurrent streams send M messages, each result awaited on its WebSocket.
    #[command(after_help = "Examples:
  bench api --url http://127.0.0.1:8082 --api-key secret
  bench api --api-key secret --streams 1000 --messages 100000 --json")]
    Api(api::ApiArgs),
    /// The cost report: CPU µs per message of the gateway, the consumer, the broker and the load
    /// client, beside throughput and latency, each series on a fresh local broker (runs the
    /// checkout's scripts/cost.sh; release builds).
    #[command(after_help = "Series:
  api              200 idle stream starts, then 1000 streams send 100,000 messages over HTTP,
                   every result awaited on its WebSocket (bench api), consumer --workers 2
  api-per-request  the same with form bodies, each send on a new connection
  go-client        the same sends through Go's default HTTP client (when go is installed)
  consume          300,000 events through consumer --workers 2, then librdkafka's own floor
  publish          1,000,000 100-byte records from publisher, bare and with CloudEvents headers
  e2e              bench e2e latency at 1,000 and 10,000 events/s

Examples:
  bench cost                      # every series (about ten minutes)
  bench cost quick api consume    # 10x smaller counts, two series

Output: a table on stdout and in bench-results/cost/cost.log. Environment: see scripts/cost.sh --help.")]
    Cost(cost::CostArgs),
}

impl Cli {
    /// The benchmark to run: the one named, or `e2e` when none is.
    pub fn command(&self) -> Command {
        self.command.clone().unwrap_or_else(|| Command::E2e(self.e2e.clone()))
    }

    /// Options shared by every subcommand.
    pub fn common(&self) -> &Common {
        match &self.command {
            Some(Command::Produce(a)) => &a.common,
            Some(Command::Consume(a)) => &a.common,
            Some(Command::E2e(a)) => &a.common,
            Some(Command::Api(a)) => &a.common,
            // Not a benchmark of its own: its script writes its own output.
            Some(Command::Cost(_)) | None => &self.e2e.common,
        }
    }
}

/// Output and logging options of every subcommand.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Output")]
pub struct Common {
    /// Directory for the .json report, .hgrm percentile files and .svg plots.
    #[arg(short = 'o', long, env = "BENCH_OUT_DIR", default_value = "bench-results")]
    pub out_dir: PathBuf,

    /// Print the report as JSON on stdout instead of a table.
    #[arg(long, env = "BENCH_JSON")]
    pub json: bool,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Kafka options of the produce, consume and e2e benchmarks.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Benchmark load")]
pub struct KafkaBench {
    /// Topic the benchmark writes and reads; created if missing with --partitions partitions.
    /// Kept apart from the events topic so a running consumer service does not process it.
    #[arg(long, env = "BENCH_TOPIC", default_value = "bench")]
    pub bench_topic: String,

    /// Payload size in bytes.
    #[arg(short = 's', long, env = "BENCH_SIZE", default_value_t = 100)]
    pub size: usize,

    /// Distinct keys, used round-robin (0: no keys).
    #[arg(short = 'k', long, env = "BENCH_KEYS", default_value_t = 100)]
    pub keys: u64,

    /// Acknowledgement level; `all` keeps the producer idempotent. Kafka's
    /// numbers work too: `--acks=-1` (all), `1` (leader), `0` (none).
    #[arg(long, env = "BENCH_ACKS", value_enum, default_value_t = Acks::All)]
    pub acks: Acks,

    /// How long librdkafka waits to fill a batch (linger.ms): a floor under produce latency,
    /// but fewer, larger requests cost the broker less and shorten the tail under load.
    /// Default: 10ms; for `e2e`, per rate: 10ms below 2,500 msg/s, 20ms from 2,500 up.
    #[arg(long, env = "BENCH_LINGER", value_parser = parse_duration)]
    pub linger: Option<Duration>,

    /// Messages librdkafka may hold unacknowledged before sends wait for acks
    /// (see publisher --queue-capacity).
    #[arg(long, env = "BENCH_QUEUE_CAPACITY", default_value_t = 20_000)]
    pub queue_capacity: u32,

    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// The bulk loads' linger when `--linger` is not given: 10ms rather than
/// librdkafka's 5, as fewer produce requests cost the broker less.
// On the local broker `e2e` at 10,000/s measured p99 31 ms and 16 s of
// broker CPU with 10ms, against 57 ms and 25 s with 5ms (at 1,000/s: p99
// 24 against 29 ms, p50 +2 ms).
pub const DEFAULT_LINGER: Duration = Duration::from_millis(10);

impl KafkaBench {
    /// `pipelined` for the bulk loads (`produce`, `consume`'s fill), as the
    /// publisher; `e2e` keeps one request in flight, as the services.
    fn producer_options(&self, pipelined: bool, linger: Duration) -> ProducerOptions {
        ProducerOptions {
            acks: self.acks,
            linger,
            queue_capacity: self.queue_capacity,
            pipelined,
            ..ProducerOptions::default()
        }
    }

    /// A bulk load's producer: pipelined, with `--linger` or the default.
    fn bulk_producer_options(&self) -> ProducerOptions {
        self.producer_options(true, self.linger.unwrap_or(DEFAULT_LINGER))
    }

    /// Validates the flags and creates the benchmark topic if missing.
    async fn prepare(&self) -> anyhow::Result<()> {
        self.kafka.validate()?;
        stream_core::config::validate_topic_name(&self.bench_topic)
            .map_err(|why| anyhow::anyhow!("--bench-topic {:?}: {why}", self.bench_topic))?;
        kafka::ensure_topics(&self.kafka, &[TopicSpec::new(&self.bench_topic, &self.kafka)])
            .await
            .with_context(|| format!("creating topic {}", self.bench_topic))
    }
}

/// Runs the chosen benchmark and writes its outputs.
pub async fn run(cli: &Cli, shutdown: CancellationToken) -> anyhow::Result<BenchReport> {
    match &cli.command() {
        Command::Produce(args) => produce::run(args, shutdown).await,
        Command::Consume(args) => consume::run(args, shutdown).await,
        Command::E2e(args) => e2e::run(args, shutdown).await,
        Command::Api(args) => api::run(args, shutdown).await,
        Command::Cost(_) => anyhow::bail!("bench cost is run by cost::run, not as a benchmark"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_command_means_e2e() {
        let cli = Cli::try_parse_from(["bench"]).unwrap();
        let Command::E2e(args) = cli.command() else { panic!("{cli:?}") };
        assert_eq!(args.rates, [1000.0, 10000.0, 50000.0]);

        let cli = Cli::try_parse_from(["bench", "--rates", "500", "--json"]).unwrap();
        let Command::E2e(args) = cli.command() else { panic!("{cli:?}") };
        assert_eq!(args.rates, [500.0]);
        assert!(cli.common().json);
    }

    #[test]
    fn commands_help_and_version_are_unchanged() {
        assert!(matches!(Cli::try_parse_from(["bench", "produce"]).unwrap().command, Some(Command::Produce(_))));
        assert!(matches!(Cli::try_parse_from(["bench", "api"]).unwrap().command, Some(Command::Api(_))));
        let help = Cli::try_parse_from(["bench", "--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        assert!(help.to_string().contains("With no command, bench runs e2e"), "{help}");
        let version = Cli::try_parse_from(["bench", "-V"]).unwrap_err();
        assert_eq!(version.kind(), clap::error::ErrorKind::DisplayVersion);
        let wrong = Cli::try_parse_from(["bench", "latency"]).unwrap_err();
        assert_eq!(wrong.kind(), clap::error::ErrorKind::InvalidSubcommand);
    }

    /// A run that could measure nothing is refused by the flag that says so.
    #[test]
    fn empty_or_meaningless_runs_are_refused() {
        for argv in [
            &["bench", "e2e", "--duration", "0s"][..],
            &["bench", "e2e", "--rates", "1000,0"],
            &["bench", "e2e", "--rates", "NaN"],
            &["bench", "produce", "--count", "0"],
            &["bench", "produce", "--rate", "NaN"],
            &["bench", "produce", "--rate", "inf"],
            &["bench", "consume", "--count", "0"],
            &["bench", "consume", "--idle-timeout", "0s"],
            &["bench", "api", "--rate=-1"],
            &["bench", "api", "--result-timeout", "0s"],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{argv:?}: {err}");
        }
        // A warm-up may be left out, and rate 0 means no limit.
        Cli::try_parse_from(["bench", "e2e", "--warmup", "0s"]).unwrap();
        Cli::try_parse_from(["bench", "produce", "--rate", "0"]).unwrap();
    }

    #[tokio::test]
    async fn e2e_refuses_a_rate_listed_twice_before_connecting() {
        let cli = Cli::try_parse_from(["bench", "e2e", "--rates", "500,2000,500", "--brokers", "127.0.0.1:1"]).unwrap();
        let Command::E2e(args) = cli.command() else { panic!("{cli:?}") };
        let err = e2e::run(&args, CancellationToken::new()).await.unwrap_err().to_string();
        assert!(err.contains("--rates lists 500 twice"), "{err}");
    }

    #[test]
    fn cost_takes_the_scripts_series_and_refuses_others() {
        let cli = Cli::try_parse_from(["bench", "cost", "quick", "api", "consume"]).unwrap();
        let Some(Command::Cost(args)) = cli.command else { panic!("{cli:?}") };
        assert_eq!(args.series, ["quick", "api", "consume"]);
        let err = Cli::try_parse_from(["bench", "cost", "apii"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(err.to_string().contains("api-per-request"), "{err}");
        // The script is where the subcommand looks for it, and agrees on
        // the series: it refuses a name before building anything.
        let script = std::fs::read_to_string(cost::script()).unwrap();
        assert!(script.contains(&format!("ALL_SERIES=\"{}\"", cost::SERIES.join(" "))), "scripts/cost.sh's series");
        let refused = std::process::Command::new("bash").arg(cost::script()).arg("apii").output().unwrap();
        assert_eq!(refused.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown series 'apii'"));
        let err = cost::run(&cost::CostArgs { series: vec!["api".into(), "quick".into()] }).unwrap_err();
        assert!(err.to_string().contains("quick goes before the series"), "{err}");
    }

    #[test]
    fn api_refuses_zero_streams_or_messages_naming_the_flag() {
        for flag in ["--streams", "--messages"] {
            let err = Cli::try_parse_from(["bench", "api", flag, "0"]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
            assert!(err.to_string().contains(flag), "{err}");
        }
    }
}
