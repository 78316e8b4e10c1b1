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

/// The counters without labels, with their `# HELP` text.
const COUNTERS: &[(&str, &str)] = &[
    ("http_write_timeouts_total", "Connections closed because a write made no progress within --write-timeout."),
    ("http_panics_total", "Handler panics, each answered 500."),
    ("http_connections_refused_total", "Connections closed at once because MAX_CONNECTIONS were open."),
    ("websocket_idle_closes_total", "WebSockets closed (1001) after WS_IDLE_TIMEOUT without a pong or message."),
    ("websocket_key_limit_refusals_total", "WebSocket and SSE connections refused (429) over MAX_WEBSOCKETS_PER_KEY."),
    ("producer_replacements_total", "Producers replaced after librdkafka declared them dead (an idempotence fatal error)."),
    ("streams_started_total", "Streams started."),
    ("streams_deleted_total", "Streams deleted."),
    ("stream_quota_refusals_total", "Stream starts refused (429) over MAX_STREAMS_PER_KEY."),
    ("results_received_total", "Records read from the results topic."),
    ("results_routed_total", "Results handed to at least one subscriber."),
    ("results_unrouted_total", "Results with no subscriber on this gateway, or no stream id."),
    ("results_unreadable_total", "Records of the results topic that are not a JSON object."),
    ("results_dropped_total", "Results dropped from a slow subscriber's live buffer; it then reads them from the results topic."),
    ("results_catch_ups_total", "Times a subscriber's live buffer overflowed and it switched to reading the results topic."),
    ("results_from_log_total", "Results delivered from the results topic (resumes, from=beginning, slow subscribers)."),
    ("results_log_queries_total", "Queries of the results topic for reading it from a position (watermarks, catch-up readers), each on a blocking thread."),
    ("results_duplicates_skipped_total", "Results not delivered because their event's result already was (a consumer's replay)."),
    ("results_of_earlier_streams_skipped_total", "Results not routed because their event came before their stream was started: an earlier stream's of the same id, deleted since."),
    ("results_expired_total", "Results a subscriber was behind on that had left the topic before it read them."),
    ("idempotent_replays_total", "Requests answered with the first response of their Idempotency-Key, writing nothing."),
    ("idempotency_evictions_total", "Idempotency keys forgotten before their TTL because IDEMPOTENCY_MAX_KEYS were held."),
    ("rate_limited_total", "Requests and WebSocket frames refused (429) over RATE_LIMIT."),
    ("schema_rejections_total", "Event payloads refused (422) for not matching EVENT_SCHEMA."),
];

/// Registers every counter without labels, and the labelled series the
/// dashboard reads, unchanged (so 0 in a new process): `/metrics` lists each
/// with its HELP text from the start, not from its first event, and a
/// dashboard panel over one reads 0 rather than "no data".
pub fn register_series() {
    for (name, _) in COUNTERS {
        metrics::counter!(*name).increment(0);
    }
    metrics::counter!("http_errors_total", "status" => "500").increment(0);
    for outcome in ["acked", "failed"] {
        metrics::counter!("batch_records_total", "outcome" => outcome).increment(0);
    }
    for kind in ["websocket", "sse"] {
        metrics::gauge!("open_connections", "kind" => kind).increment(0.0);
    }
}

/// The `# HELP` text of every metric the gateway exports.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    for (name, help) in COUNTERS {
        describe_counter!(*name, *help);
    }
    describe_counter!("http_requests_total", "HTTP requests answered, by method, route and status.");
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "Time from a request's arrival to its response, by method, route and status."
    );
    describe_counter!("http_errors_total", "Error responses, by status.");
    describe_gauge!("open_connections", "Open long-lived connections, by kind (websocket, sse).");
    describe_histogram!(
        "produce_latency_seconds",
        Unit::Seconds,
        "From enqueueing an event to the broker's acknowledgement."
    );
    describe_counter!("batch_records_total", "Records of /publish/batch requests, by outcome (acked, failed).");
    describe_gauge!("producer_queue_depth", "Records handed to librdkafka and not yet acknowledged.");
    describe_gauge!("open_streams", "Streams this gateway knows of.");
    describe_gauge!("result_subscribers", "Open result subscriptions (WebSocket and SSE).");
    describe_histogram!(
        "result_delivery_latency_seconds",
        Unit::Seconds,
        "From an event's ce_time to its result reaching the gateway."
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn series_are_exported_as_0_before_they_move() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            super::describe_metrics();
            super::register_series();
        });
        let text = handle.render();
        let labelled = [
            r#"http_errors_total{status="500"} 0"#,
            r#"batch_records_total{outcome="failed"} 0"#,
            r#"open_connections{kind="websocket"} 0"#,
            r#"open_connections{kind="sse"} 0"#,
        ];
        let unlabelled = super::COUNTERS.iter().map(|(name, _)| format!("{name} 0"));
        for series in labelled.into_iter().map(str::to_owned).chain(unlabelled) {
            assert!(text.lines().any(|line| line == series), "{series} missing:\n{text}");
        }
        assert!(text.contains("# HELP http_panics_total Handler panics"), "{text}");
        assert_eq!(stream_core::metrics::lint(&text), Vec::<String>::new());
    }
}
