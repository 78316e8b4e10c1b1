//! `producer-api`: the HTTP and WebSocket gateway. Publishes JSON events to
//! Kafka and pushes processed results back to clients.
//!
//! Run: `API_KEYS=devkey producer-api` (Kafka at 127.0.0.1:19092, HTTP on
//! 0.0.0.0:8082); `producer-api --help` lists every flag and variable.

use clap::Parser;
use producer_api::{Application, Config};
use stream_core::LogArgs;

const EXAMPLES: &str = "Examples:
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
    let cli = Cli::parse();
    stream_core::telemetry::init(cli.log.log_format);
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
