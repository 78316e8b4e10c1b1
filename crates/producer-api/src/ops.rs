//! Operations endpoints: liveness, readiness, Prometheus metrics.

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};
use stream_core::kafka;

use crate::error::AppError;
use crate::AppState;

/// How long `/readyz` waits for broker metadata.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: the process is up and serving.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /noop`: does nothing, with no auth; the baseline that load tests
/// compare `/publish` against, so the difference is the cost of Kafka.
pub async fn noop() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when broker metadata answers within 2 s, else 503.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, AppError> {
    let publisher = state.publisher.clone();
    let brokers = state.config.kafka.brokers.clone();
    let info = tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer as _;
        kafka::cluster_info(publisher.producer().client(), &brokers, READY_TIMEOUT)
    })
    .await
    .map_err(|e| AppError::Internal(format!("readiness probe: {e}")))?
    .map_err(|e| AppError::unavailable(e.to_string()))?;
    Ok(Json(json!({
        "status": "ready",
        "brokers": info.brokers,
        "open_streams": state.registry.len(),
        "subscribers": state.hub.subscribers(),
    })))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    metrics::gauge!("producer_queue_depth").set(f64::from(state.publisher.queue_depth()));
    metrics::gauge!("open_streams").set(state.registry.len() as f64);
    metrics::gauge!("result_subscribers").set(state.hub.subscribers() as f64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], stream_core::metrics::handle().render())
}
