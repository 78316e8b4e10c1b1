//! `publisher`: bulk-publish events to Kafka and report throughput and ack
//! latency. Run `cargo run -p publisher -- --help` for the options, e.g.
//! `cargo run -p publisher --release -- --count 1000000 --size 100`.

// mimalloc rather than the system allocator: a fifth of the CPU per
// message went to glibc malloc/free (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write as _;

use clap::Parser;
use publisher::Args;
use stream_core::{config, shutdown, telemetry};

#[tokio::main]
async fn main() {
    config::load_dotenv();
    let args = Args::parse();
    telemetry::init(args.log.log_format);
    let shutdown = shutdown::on_signal();
    match publisher::run(&args, shutdown).await {
        Ok(report) => {
            let text = if args.json {
                // One line: a machine reading stdout line by line gets it whole.
                serde_json::to_string(&report).expect("reports serialise")
            } else {
                report.to_string()
            };
            // A reader that went away (`| head`) only misses the report: the
            // records are sent, and the exit code still says how it went.
            let _ = writeln!(std::io::stdout(), "{text}");
            // Non-zero only if a message failed: an interrupted run that
            // flushed everything it sent did what it was asked.
            std::process::exit(if report.failed > 0 { 1 } else { 0 });
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(1);
        }
    }
}
