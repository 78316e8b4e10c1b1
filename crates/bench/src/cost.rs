//! `bench cost`: the cost report, CPU time per message of every process on
//! the event path (gateway, consumer, broker, load client) beside
//! throughput and latency. The report starts and stops those processes and
//! a fresh broker per series, so it lives in `scripts/cost.sh`; this
//! subcommand runs that script of the checkout `bench` was built from,
//! with the arguments given.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use clap::Args;

/// The series `scripts/cost.sh` knows, in its order.
pub const SERIES: [&str; 6] = ["api", "api-per-request", "go-client", "consume", "publish", "e2e"];

/// Options of `bench cost`.
#[derive(Debug, Clone, Args)]
pub struct CostArgs {
    /// `quick` for 10x smaller counts, then the series to run (default: all):
    /// api, api-per-request, go-client, consume, publish, e2e.
    #[arg(value_name = "SERIES", value_parser = parse_series)]
    pub series: Vec<String>,
}

fn parse_series(text: &str) -> Result<String, String> {
    if text == "quick" || SERIES.contains(&text) {
        Ok(text.to_owned())
    } else {
        Err(format!("choose quick or a series: {}", SERIES.join(", ")))
    }
}

/// `scripts/cost.sh` of the checkout this binary was built from.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cost.sh")
}

/// Runs the report; its exit code.
pub fn run(args: &CostArgs) -> anyhow::Result<i32> {
    let script = script();
    anyhow::ensure!(
        script.is_file(),
        "bench cost runs scripts/cost.sh of a streamkit checkout, and there is none at {} \
         (run `cargo run -p bench --release -- cost` in the repository)",
        script.display()
    );
    if let Some(at) = args.series.iter().position(|s| s == "quick") {
        anyhow::ensure!(at == 0, "quick goes before the series: bench cost quick api");
    }
    let status = Command::new("bash")
        .arg(&script)
        .args(&args.series)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    Ok(status.code().unwrap_or(1))
}
