//! `/publish`, auth, error statuses and the operations routes, against the
//! real broker.

use crate::common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{KEY_A, KEY_B};
use producer_api::producer::Ack;
use rdkafka::message::{Headers, Message};
use serde_json::{json, Value};
use tower::ServiceExt;

fn header_value(msg: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    msg.headers()?.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

#[tokio::test]
async fn publish_is_acknowledged_and_the_record_carries_cloudevents_headers() {
    let (kafka, app) = common::spawn_app().await;
    let message = json!({"order": 42, "items": ["a", "b"]});
    let response = common::client()
        .post(app.url("/publish"))
        .header("X-API-Key", KEY_A)
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .json(&json!({"message": message, "key": "order-42", "headers": {"tenant": "acme"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let ack: Ack = response.json().await.unwrap();
    assert_eq!(ack.topic, kafka.topics.events);
    assert!(ack.offset >= 0);

    let record = common::read_record(&kafka, &ack.topic, ack.partition, ack.offset).await;
    assert_eq!(serde_json::from_slice::<Value>(record.payload().unwrap()).unwrap(), message);
    assert_eq!(record.key(), Some(&b"order-42"[..]));
    assert_eq!(header_value(&record, "ce_id").as_deref(), Some(ack.id.as_str()));
    assert_eq!(header_value(&record, "ce_source").as_deref(), Some("/producer-api"));
    assert_eq!(header_value(&record, "ce_specversion").as_deref(), Some("1.0"));
    assert_eq!(header_value(&record, "content-type").as_deref(), Some("application/json"));
    assert!(header_value(&record, "ce_type").is_some());
    assert!(header_value(&record, "ce_time").unwrap().ends_with('Z'));
    assert_eq!(header_value(&record, "tenant").as_deref(), Some("acme"));
    assert!(header_value(&record, "traceparent").unwrap().starts_with("00-0af7"));

    // Bearer works as well as X-API-Key, null is a valid message, and a
    // null key (as the OpenAPI schema allows) means a record without a key.
    let response = common::client()
        .post(app.url("/publish"))
        .bearer_auth(KEY_B)
        .json(&json!({"message": null, "key": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let ack: Ack = response.json().await.unwrap();
    let record = common::read_record(&kafka, &ack.topic, ack.partition, ack.offset).await;
    assert_eq!(record.payload(), Some(&b"null"[..]));
    assert_eq!(record.key(), None);
    app.stop().await;
}

async fn call(router: &producer_api::App, request: Request<Body>) -> (StatusCode, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body)
}

fn post(path: &str, key: Option<&str>, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut builder = Request::post(path);
    if let Some(key) = key {
        builder = builder.header("X-API-Key", key);
    }
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    builder.body(body.into()).unwrap()
}

const JSON: Option<&str> = Some("application/json");

#[tokio::test]
async fn every_error_status_has_the_json_shape() {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka);
    config.max_body_bytes = 256;
    let app = common::start(config).await;
    let router = producer_api::app(app.state.clone());

    let ok = r#"{"message": 1}"#;
    let cases: Vec<(Request<Body>, StatusCode)> = vec![
        (post("/publish", None, JSON, ok), StatusCode::UNAUTHORIZED),
        (post("/publish", Some("wrong"), JSON, ok), StatusCode::UNAUTHORIZED),
        (
            Request::post("/publish")
                .header(header::AUTHORIZATION, "Basic a2V5LWE=")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(ok))
                .unwrap(),
            StatusCode::UNAUTHORIZED,
        ),
        (post("/publish", Some(KEY_A), JSON, "{\"message\": "), StatusCode::BAD_REQUEST),
        (post("/publish", Some(KEY_A), None, ok), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (post("/publish", Some(KEY_A), Some("text/plain"), ok), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (post("/publish", Some(KEY_A), JSON, r#"{"msg": 1}"#), StatusCode::UNPROCESSABLE_ENTITY),
        (post("/publish", Some(KEY_A), JSON, r#"{"message": 1, "key": 5}"#), StatusCode::UNPROCESSABLE_ENTITY),
        (
            post("/publish", Some(KEY_A), JSON, r#"{"message": 1, "headers": {"ce_id": "x"}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            post("/publish", Some(KEY_A), JSON, format!(r#"{{"message": "{}"}}"#, "x".repeat(300))),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (post("/nowhere", Some(KEY_A), JSON, ok), StatusCode::NOT_FOUND),
        (Request::get("/publish").body(Body::empty()).unwrap(), StatusCode::METHOD_NOT_ALLOWED),
        (post("/stream/nope/send", Some(KEY_A), JSON, r#"{"data": 1}"#), StatusCode::NOT_FOUND),
    ];
    for (request, expected) in cases {
        let what = format!("{} {}", request.method(), request.uri());
        let (status, body) = call(&router, request).await;
        assert_eq!(status, expected, "{what}: {body}");
        assert!(body["error"].is_string(), "{what}: error body {body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let (_kafka, app) = common::spawn_app().await;
    let router = producer_api::app(app.state.clone());
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();

    let (status, body) = call(&router, get("/healthz")).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (status, body) = call(&router, get("/readyz")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["brokers"].as_u64().unwrap() >= 1);

    let (status, _) = call(&router, post("/publish", Some(KEY_A), JSON, r#"{"message": "m"}"#)).await;
    assert_eq!(status, StatusCode::OK);
    let response = router.clone().oneshot(get("/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text =
        String::from_utf8(axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec()).unwrap();
    for metric in
        ["http_requests_total", "http_request_duration_seconds", "produce_latency_seconds", "producer_queue_depth"]
    {
        assert!(text.contains(metric), "{metric} missing from /metrics:\n{text}");
    }
    assert!(text.contains(r#"route="/publish""#), "{text}");
    let problems = stream_core::metrics::lint(&text);
    assert!(problems.is_empty(), "promtool would complain: {problems:#?}\n{text}");
    app.stop().await;
}

#[tokio::test]
async fn requests_beyond_the_in_flight_limit_get_429() {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka);
    config.max_in_flight = 2;
    let app = common::start(config).await;
    let router = producer_api::app(app.state.clone());
    let calls = (0..200).map(|n| {
        let router = router.clone();
        async move {
            let body = format!(r#"{{"message": {n}}}"#);
            let response = router.oneshot(post("/publish", Some(KEY_A), JSON, body)).await.unwrap();
            (response.status(), response.headers().get(header::RETRY_AFTER).cloned())
        }
    });
    let outcomes = futures::future::join_all(calls).await;
    let refused: Vec<_> = outcomes.iter().filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS).collect();
    let accepted = outcomes.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(refused.len() + accepted, outcomes.len(), "only 200 or 429: {outcomes:?}");
    assert!(!refused.is_empty() && accepted >= 2, "{} refused, {accepted} accepted", refused.len());
    assert!(refused.iter().all(|(_, retry)| retry.is_some()), "429 without Retry-After");
    app.stop().await;
}

/// The health probes and the metrics are not shed by the in-flight limit:
/// a gateway whose every slot is held (here by an upload that never ends)
/// is alive, and an orchestrator must not restart it for being busy.
#[tokio::test]
async fn probes_and_metrics_answer_while_every_in_flight_slot_is_held() {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka);
    config.max_in_flight = 1;
    let app = common::start(config).await;
    let router = producer_api::app(app.state.clone());
    let stalled = Body::from_stream(futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>());
    // Polled once, it takes the only slot and waits for its body.
    let mut holder = Box::pin(router.clone().oneshot(post("/publish", Some(KEY_A), JSON, stalled)));
    assert!(futures::poll!(holder.as_mut()).is_pending(), "the stalled upload waits for its body");
    let response = router.clone().oneshot(post("/publish", Some(KEY_A), JSON, r#"{"message": 1}"#)).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "the only slot is held");
    for path in ["/healthz", "/readyz", "/metrics"] {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path} while every slot is held");
    }
    drop(holder);
    app.stop().await;
}
