//! `producer-api`: the HTTP and WebSocket gateway. Publishes JSON events to
//! Kafka and pushes processed results back to clients.
//!
//! Run: `API_KEYS=devkey producer-api` (Kafka at 127.0.0.1:19092, HTTP on
//! 0.0.0.0:8082); `producer-api --help` lists every flag and variable.
//! Without `API_KEYS` it makes up a key for the run and logs it.

use clap::Parser;
use producer_api::{Application, Config};
use stream_core::LogArgs;

const EXAMPLES: &str = "Examples:
  producer-api                       # no API_KEYS: a random key for this run, printed at startup
  API_KEYS=devkey producer-api
  producer-api --api-keys k1,k2 --listen-addr 127.0.0.1:8082 -b broker:9092
  curl -H 'X-API-Key: devkey' -H 'Content-Type: application/json' \\
       -d '{\"message\": {\"hello\": \"world\"}}' localhost:8082/publish
  curl -X POST -H 'X-API-Key: devkey' localhost:8082/stream/start     # -> {\"stream_id\": ...}
  curl -N -H 'X-API-Key: devkey' -H 'Accept: text/event-stream' localhost:8082/stream/ID/results

Routes are described at /openapi.json.";

#[derive(Parser)]
#[command(version, about = "HTTP and WebSocket gateway to Kafka", after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    stream_core::config::load_dotenv();
    let mut cli = Cli::parse();
    stream_core::telemetry::init(cli.log.log_format);
    if let Some(key) = cli.config.generate_key_if_none() {
        // The one key that is ever logged: made up for this run only, and
        // useless once the process stops.
        tracing::warn!(
            api_key = %key,
            "no API key configured (API_KEYS): generated one for this run; send it as X-API-Key, \
             or set API_KEYS=key1,key2 to choose your own"
        );
    }
    let shutdown = stream_core::shutdown::on_signal();
    let outcome = async { Application::build(cli.config).await?.run_until_stopped(shutdown).await }.await;
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
