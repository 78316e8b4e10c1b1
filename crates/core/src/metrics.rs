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

/// Problems Prometheus's own linter (`promtool check metrics`) would report
/// in `text`, an exposition in the text format: a family without `# HELP`
/// or `# TYPE`, a counter whose name does not end in `_total`. Empty when
/// clean; tests of each binary run it over a real scrape. Its rules are
/// written here because promtool is a Go binary with no Rust equivalent,
/// and tests must not depend on it being installed.
pub fn lint(text: &str) -> Vec<String> {
    let mut help = std::collections::HashSet::new();
    let mut problems = Vec::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("#"), Some("HELP"), Some(name), text) => {
                if text.is_none() {
                    problems.push(format!("{name}: empty HELP"));
                }
                help.insert(name);
            }
            (Some("#"), Some("TYPE"), Some(name), kind) => {
                typed.insert(name);
                if !help.contains(name) {
                    problems.push(format!("{name}: no HELP text"));
                }
                if kind == Some("counter") && !name.ends_with("_total") {
                    problems.push(format!("{name}: a counter's name should end in _total"));
                }
            }
            (Some(sample), ..) if !sample.starts_with('#') => {
                let name = sample.split('{').next().unwrap_or(sample);
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix).filter(|f| typed.contains(f)))
                    .unwrap_or(name);
                if !typed.contains(family) {
                    problems.push(format!("{name}: a sample without # TYPE"));
                }
            }
            _ => {}
        }
    }
    problems.dedup();
    problems
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
pub async fn serve(addr: SocketAddr, shutdown: CancellationToken) -> crate::Result<()> {
    let io = |what: String| move |source| crate::Error::Io { what, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(io(format!("binding metrics listener {addr}")))?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics");
    let served = axum::serve(listener, router()).with_graceful_shutdown(shutdown.cancelled_owned()).await;
    served.map_err(io(format!("serving /metrics on {addr}")))
}

#[cfg(test)]
mod tests {
    use super::lint;

    #[test]
    fn the_lint_finds_what_promtool_reports() {
        let clean = "# HELP a_total Things.\n# TYPE a_total counter\na_total 3\n\
                     # HELP b_seconds Time.\n# TYPE b_seconds histogram\nb_seconds_bucket{le=\"1\"} 1\nb_seconds_sum 0.5\nb_seconds_count 1\n";
        assert_eq!(lint(clean), Vec::<String>::new());
        let bare = "# TYPE a_total counter\na_total 3\n";
        assert_eq!(lint(bare), vec!["a_total: no HELP text"]);
        let misnamed = "# HELP a Things.\n# TYPE a counter\na 1\n";
        assert_eq!(lint(misnamed), vec!["a: a counter's name should end in _total"]);
        assert_eq!(lint("c 1\n"), vec!["c: a sample without # TYPE"]);
    }
}
