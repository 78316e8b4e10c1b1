//! Prometheus metrics: one global recorder, rendered at `/metrics`.
//!
//! Code records with the `metrics` macros (`counter!`, `histogram!`,
//! `gauge!`); histograms whose name ends in `_seconds` get latency buckets
//! from 100 µs to 30 s.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Installs the recorder on first use and returns its handle.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            let upkeep = handle.clone();
            // Histograms keep raw samples until upkeep folds them in; without
            // it memory grows between scrapes.
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .expect("spawn metrics upkeep thread");
            handle
        })
        .clone()
}

/// A router serving `GET /metrics` in the Prometheus text format.
pub fn router() -> Router {
    let handle = handle();
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { ([("content-type", "text/plain; version=0.0.4")], handle.render()) }
        }),
    )
}

/// Serves [`router`] on `addr` until `shutdown` is cancelled.
pub async fn serve(addr: SocketAddr, shutdown: CancellationToken) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding metrics listener {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
    axum::serve(listener, router()).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    Ok(())
}
