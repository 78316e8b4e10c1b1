//! A handler that panics is answered 500 in the API's error format by the
//! request layer, which counts the panic and the request like any other.

use std::sync::atomic::Ordering::Relaxed;

use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use axum::Router;
use tower::ServiceExt;

use crate::common;

#[tokio::test]
async fn a_panicking_handler_is_answered_500_and_counted_with_its_route() {
    let (_kafka, app) = common::spawn_app().await;
    let state = app.state.clone();
    let router = Router::new()
        .route("/panics-test/boom", get(|| async { panic!("boom") as &'static str }))
        .route("/panics-test/fine", get(|| async { "ok" }))
        .layer(axum::middleware::from_fn_with_state(state.clone(), producer_api::layers::observe))
        .with_state(state.clone());
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let before = state.panics.load(Relaxed);

    let response = router.clone().oneshot(get("/panics-test/boom")).await.unwrap();
    assert_eq!(response.status(), 500);
    let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body, serde_json::json!({"error": "internal error"}));
    assert_eq!(state.panics.load(Relaxed), before + 1);

    let response = router.oneshot(get("/panics-test/fine")).await.unwrap();
    assert_eq!(response.status(), 200, "the next request is served");
    assert_eq!(state.panics.load(Relaxed), before + 1);

    let text = stream_core::metrics::handle().render();
    let line = r#"http_requests_total{method="GET",route="/panics-test/boom",status="500"} 1"#;
    assert!(text.lines().any(|l| l == line), "the panicked request is counted: {text}");
    app.stop().await;
}
