//! The layers every request passes: CORS, panics answered 500, and the
//! request layer (in-flight limit, metrics, error reports).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::{CatchPanicLayer, ResponseForPanic};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::{self, AppError};
use crate::{idempotency, AppState, Config};

/// CORS for the configured origins; none configured, no CORS headers at all
/// (browsers then refuse cross-origin calls, the safe default).
pub fn cors(config: &Config) -> Option<CorsLayer> {
    let origins = config.cors_origins();
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static(idempotency::HEADER),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                HeaderName::from_static(idempotency::REPLAYED),
                HeaderName::from_static("ratelimit-limit"),
                HeaderName::from_static("ratelimit-remaining"),
                HeaderName::from_static("ratelimit-reset"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// Turns a handler panic into a 500 in the API's error format, and counts
/// it, instead of dropping the connection: a panic is a bug, and it must be
/// visible (`http_panics_total`, [`AppState::panics`]) rather than silent.
pub fn catch_panic(panics: Arc<AtomicU64>) -> CatchPanicLayer<PanicTo500> {
    CatchPanicLayer::custom(PanicTo500(panics))
}

/// The answer [`catch_panic`] gives, counting into its counter.
#[derive(Debug, Clone)]
pub struct PanicTo500(Arc<AtomicU64>);

impl ResponseForPanic for PanicTo500 {
    type ResponseBody = axum::body::Body;

    fn response_for_panic(&mut self, panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
        self.0.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("http_panics_total").increment(1);
        let what = stream_core::telemetry::panic_message(&*panic);
        AppError::Internal(format!("handler panicked: {what}")).into_response()
    }
}

/// Per-request metrics and error reports, and the in-flight limit that sheds load with 429
/// instead of queueing without bound.
pub async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        let response = AppError::TooManyRequests.into_response();
        error::report(&response);
        return response;
    };
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    error::report(&response);
    let route = route.unwrap_or_else(|| "unmatched".into());
    let status = response.status().as_u16().to_string();
    let labels = [("method", method.to_string()), ("route", route), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use axum::routing::get;
    use axum::Router;

    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_and_counted() {
        let panics = Arc::new(AtomicU64::new(0));
        let router = Router::new()
            .route("/boom", get(|| async { panic!("boom") as &'static str }))
            .route("/fine", get(|| async { "ok" }))
            .layer(catch_panic(panics.clone()));
        let response = router.clone().oneshot(Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), 500);
        let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, serde_json::json!({"error": "internal error"}));
        assert_eq!(panics.load(Ordering::Relaxed), 1);
        let response = router.oneshot(Request::get("/fine").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(panics.load(Ordering::Relaxed), 1);
    }
}
