//! Opens many idle result WebSockets against a running producer-api and
//! holds them, so the server's memory per connection can be measured.
//!
//! ```sh
//! cargo run --release -p producer-api --example idle_websockets -- \
//!     --url http://127.0.0.1:8082 --key demo-key --connections 10000 --streams 10000
//! # then, in another shell: grep VmRSS /proc/$(pgrep -x producer-api)/status
//! ```
//!
//! Starts `--streams` streams, spreads the connections over them, prints
//! how many are open, and holds them until Ctrl-C (or `--hold` elapses).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Parser)]
struct Args {
    /// Base URL of the producer-api.
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    url: String,
    /// API key.
    #[arg(long, env = "API_KEY", default_value = "demo-key")]
    key: String,
    /// WebSockets to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Streams to spread them over.
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    parallel: usize,
    /// How long to hold them (e.g. 60s); until Ctrl-C if absent.
    #[arg(long, value_parser = humantime_secs)]
    hold: Option<Duration>,
}

fn humantime_secs(raw: &str) -> Result<Duration, String> {
    stream_core::config::parse_duration(raw)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::new();
    let started = Instant::now();
    let streams: Vec<String> = futures::stream::iter(0..args.streams)
        .map(|_| {
            let http = http.clone();
            let url = format!("{}/stream/start", args.url);
            let key = args.key.clone();
            async move {
                let reply: serde_json::Value =
                    http.post(url).header("X-API-Key", key).send().await?.error_for_status()?.json().await?;
                anyhow::Ok(reply["stream_id"].as_str().unwrap_or_default().to_owned())
            }
        })
        .buffer_unordered(args.parallel)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    println!("started {} streams in {:.1?}", streams.len(), started.elapsed());

    let ws_base = args.url.replacen("http", "ws", 1);
    let open = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let sockets: Vec<_> = futures::stream::iter(0..args.connections)
        .map(|i| {
            let url = format!("{ws_base}/stream/{}/results", streams[i % streams.len()]);
            let key = args.key.clone();
            let open = open.clone();
            async move {
                let mut request = url.into_client_request()?;
                request.headers_mut().insert("X-API-Key", key.parse()?);
                let (socket, _) = tokio_tungstenite::connect_async(request).await?;
                open.fetch_add(1, Ordering::Relaxed);
                anyhow::Ok(socket)
            }
        })
        .buffer_unordered(args.parallel)
        .collect()
        .await;
    let failed = sockets.iter().filter(|s| s.is_err()).count();
    if let Some(Err(err)) = sockets.iter().find(|s| s.is_err()) {
        eprintln!("first failure: {err:#}");
    }
    println!(
        "open: {} WebSockets ({failed} failed) in {:.1?}; holding them",
        open.load(Ordering::Relaxed),
        started.elapsed()
    );
    match args.hold {
        Some(hold) => tokio::time::sleep(hold).await,
        None => tokio::signal::ctrl_c().await?,
    }
    drop(sockets);
    Ok(())
}
