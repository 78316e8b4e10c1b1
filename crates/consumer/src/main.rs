//! `consumer`: processes events from the events topic with N workers in one
//! consumer group, writes results to the results topic and failures to the
//! dead-letter topic, at-least-once.
//!
//! Run: `cargo run -p consumer -- --workers 4` (see `--help`).

// mimalloc rather than the system allocator: a fifth of the CPU per
// message went to glibc malloc/free (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

/// Multi-worker event processor: events -> results, failures -> DLQ.
#[derive(Parser)]
#[command(version, about, after_help = consumer::AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    config: consumer::Config,
}

#[tokio::main]
async fn main() {
    consumer::memory::prefer_small_pages();
    stream_core::config::load_dotenv();
    let cli = Cli::parse();
    stream_core::telemetry::init(cli.config.log.log_format);
    let shutdown = stream_core::shutdown::on_signal();
    let code = match consumer::run(cli.config, shutdown).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: {error:#}");
            1
        }
    };
    // Exit now rather than when the runtime is dropped: that waits for every
    // blocking thread, including a start-up connection attempt that a signal
    // cut short and that only gives up at `--connect-timeout`.
    std::process::exit(code)
}
