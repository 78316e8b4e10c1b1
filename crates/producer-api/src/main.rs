//! `producer-api`: the HTTP and WebSocket gateway. Publishes JSON events to
//! Kafka and pushes processed results back to clients.
//!
//! Run: `API_KEYS=devkey producer-api` (Kafka at 127.0.0.1:19092, HTTP on
//! 0.0.0.0:8082); `producer-api --help` lists every flag and variable.
//! Without `API_KEYS` it makes up a key for the run and writes it to a file
//! only the user can read; the log says where.

// mimalloc rather than the system allocator: a fifth of the CPU per
// message went to glibc malloc/free (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::Parser;
use producer_api::{Application, Config};
use stream_core::LogArgs;

const EXAMPLES: &str = "Examples:
  producer-api        # no API_KEYS: a random key for this run, in /tmp/producer-api-8082.key
                      # (or $XDG_RUNTIME_DIR/...); the log names the file
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
async fn main() {
    stream_core::config::load_dotenv();
    let mut cli = Cli::parse();
    stream_core::telemetry::init(cli.log.log_format);
    let generated = cli.config.generate_key_if_none();
    if let Some(limit) = producer_api::serve::raise_open_file_limit() {
        tracing::info!(limit, "open-file limit");
    }
    let shutdown = stream_core::shutdown::on_signal();
    let outcome = async {
        // A signal during start-up (a broker that does not answer can hold
        // it for --connect-timeout) stops it at once.
        let app = tokio::select! {
            app = Application::build(cli.config) => app?,
            _ = shutdown.cancelled() => {
                tracing::info!("stopped during start-up");
                return Ok(());
            }
        };
        // Keys never go to the log, not even a generated one: it goes to a
        // file only this user can read, removed again at a clean exit.
        let key_file = match &generated {
            Some(key) => Some(announce_key_file(key, app.local_addr().port())?),
            None => None,
        };
        let outcome = app.run_until_stopped(shutdown).await;
        if let Some(path) = key_file {
            let _ = std::fs::remove_file(path);
        }
        outcome
    }
    .await;
    let code = match outcome {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("error: {err:#}");
            1
        }
    };
    // Exit now rather than when the runtime is dropped: that waits for every
    // blocking thread, including a start-up metadata request that a signal
    // cut short and that only gives up at --connect-timeout.
    std::process::exit(code)
}

/// Writes the generated key to its private file and logs where it is.
fn announce_key_file(key: &str, port: u16) -> anyhow::Result<std::path::PathBuf> {
    let path = producer_api::keyfile::write_key_file(key, port).with_context(|| {
        format!(
            "no API key configured, and the generated one could not be written to {}; set API_KEYS=key1,key2",
            producer_api::keyfile::key_file_path(port).display()
        )
    })?;
    tracing::warn!(
        key_file = %path.display(),
        "no API key configured (API_KEYS): generated one for this run, readable only by this user; \
         send it as X-API-Key: $(cat {}), or set API_KEYS=key1,key2 to choose your own",
        path.display()
    );
    Ok(path)
}
