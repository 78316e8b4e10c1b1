//! `bench`: throughput and latency benchmarks of the toolkit. Run
//! `cargo run -p bench --release -- --help`, e.g.
//! `cargo run -p bench --release -- e2e --rates 1000,10000`. With no
//! command it runs `e2e`.

// mimalloc rather than the system allocator: a fifth of the CPU per
// message went to glibc malloc/free (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bench::Cli;
use clap::Parser;
use stream_core::{config, shutdown, telemetry};

#[tokio::main]
async fn main() {
    config::load_dotenv();
    let cli = Cli::parse();
    if let Some(bench::Command::Cost(args)) = &cli.command {
        match bench::cost::run(args) {
            Ok(code) => std::process::exit(code),
            Err(err) => {
                eprintln!("error: {err:#}");
                std::process::exit(1);
            }
        }
    }
    telemetry::init(cli.common().log.log_format);
    let shutdown = shutdown::on_signal();
    match bench::run(&cli, shutdown).await {
        Ok(report) => {
            if cli.common().json {
                // One line: a machine reading stdout line by line gets it whole.
                println!("{}", serde_json::to_string(&report).expect("reports serialise"));
            } else {
                println!("{report}");
            }
            let errors: u64 = report.rows.iter().map(|r| r.errors).sum();
            std::process::exit(if errors > 0 { 1 } else { 0 });
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(1);
        }
    }
}
