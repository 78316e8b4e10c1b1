//! The layers every request passes: CORS, and the request layer (in-flight
//! limit, metrics, error reports, panics answered 500); and the body limit
//! of the routes that read one.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
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

/// The answer to a handler that panicked: a 500 in the API's error format,
/// counted (`http_panics_total`, [`AppState::panics`]) instead of the
/// connection dropped: a panic is a bug, and it must be visible rather than
/// silent.
pub fn panic_to_500(panics: &AtomicU64, panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = count_panic(panics, &*panic);
    AppError::Internal(format!("handler panicked: {what}")).into_response()
}

/// Counts a panic of a handler or a WebSocket task (`http_panics_total`,
/// [`AppState::panics`]) and returns its message.
pub fn count_panic<'a>(panics: &AtomicU64, panic: &'a (dyn std::any::Any + Send)) -> &'a str {
    panics.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("http_panics_total").increment(1);
    stream_core::telemetry::panic_message(panic)
}

/// Per-request metrics and error reports, the in-flight limit that sheds
/// load with 429 instead of queueing without bound, and a handler's panic
/// answered 500 ([`panic_to_500`]).
///
/// The panic is caught here rather than by tower-http's `CatchPanicLayer`:
/// a layer of axum's router is boxed around every route and costs each
/// request a cloned service and a boxed future (callgrind: about 1,500
/// instructions), and the request it answers must still be counted here.
pub async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // The probes and the metrics are not shed: a gateway busy to its limit
    // (or held there by slow uploads) is alive and ready, and says so.
    let probe = matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics");
    let _permit = match state.in_flight.clone().try_acquire_owned() {
        Ok(permit) => Some(permit),
        Err(_) if probe => None,
        Err(_) => {
            let response = AppError::TooManyRequests.into_response();
            error::report(&response);
            return response;
        }
    };
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let started = Instant::now();
    let response = match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => panic_to_500(&state.panics, panic),
    };
    error::report(&response);
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    record_request(&method, route, response.status().as_u16(), started.elapsed());
    response
}

/// The method as a metric label: a method outside HTTP's own is `other`,
/// so a client cannot add a time series per made-up method.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Counts a request in `http_requests_total` and records its duration in
/// `http_request_duration_seconds`, by method, route and status. Each
/// worker thread keeps the handles it has looked up: building the labelled
/// key and finding it in the recorder on every request was a twentieth of
/// the gateway's instructions per request (callgrind). Routes are the
/// router's own paths, methods and statuses few, so the list stays short.
fn record_request(method: &Method, route: &str, status: u16, elapsed: Duration) {
    struct Handles {
        method: &'static str,
        status: u16,
        route: Box<str>,
        requests: metrics::Counter,
        duration: metrics::Histogram,
    }
    thread_local! {
        static HANDLES: RefCell<Vec<Handles>> = const { RefCell::new(Vec::new()) };
    }
    let method = method_label(method);
    HANDLES.with_borrow_mut(|handles| {
        let at = match handles.iter().position(|h| h.status == status && h.method == method && *h.route == *route) {
            Some(at) => at,
            None => {
                // Handles taken before the recorder exists would count
                // into nothing for the thread's lifetime.
                stream_core::metrics::handle();
                let labels =
                    [("method", method.to_owned()), ("route", route.to_owned()), ("status", status.to_string())];
                handles.push(Handles {
                    method,
                    status,
                    route: route.into(),
                    requests: metrics::counter!("http_requests_total", &labels),
                    duration: metrics::histogram!("http_request_duration_seconds", &labels),
                });
                handles.len() - 1
            }
        };
        handles[at].requests.increment(1);
        handles[at].duration.record(elapsed.as_secs_f64());
    })
}

/// A route's body limit: a body that declares more bytes than `max`
/// (`Content-Length`) is answered 413 before any of it is read, and so
/// before a `100 Continue` invites it; a body that declares no length
/// (chunked) is cut off at `max` as it is read (axum's `DefaultBodyLimit`).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    max: usize,
    flag: &'static str,
}

impl BodyLimit {
    /// At most `max` bytes, set by `flag` (named in the 413's detail).
    pub fn new(max: usize, flag: &'static str) -> Self {
        Self { max, flag }
    }
}

impl<S> tower::Layer<S> for BodyLimit {
    type Service = DeclaredLength<<axum::extract::DefaultBodyLimit as tower::Layer<S>>::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        DeclaredLength {
            inner: tower::Layer::layer(&axum::extract::DefaultBodyLimit::max(self.max), inner),
            limit: *self,
        }
    }
}

/// The service of [`BodyLimit`].
#[derive(Debug, Clone)]
pub struct DeclaredLength<S> {
    inner: S,
    limit: BodyLimit,
}

impl<S> tower::Service<Request> for DeclaredLength<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = futures::future::Either<std::future::Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        match declared {
            Some(length) if length > self.limit.max as u64 => {
                let BodyLimit { max, flag } = self.limit;
                let error =
                    AppError::TooLarge(format!("the body declares {length} bytes; the limit is {max} ({flag})"));
                futures::future::Either::Left(std::future::ready(Ok(error.into_response())))
            }
            _ => futures::future::Either::Right(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn requests_are_counted_per_method_route_and_status_from_cached_handles() {
        let made_up = Method::from_bytes(b"BREW").unwrap();
        for _ in 0..3 {
            record_request(&made_up, "/layers-test", 418, Duration::from_millis(2));
        }
        record_request(&Method::POST, "/layers-test", 418, Duration::from_millis(2));
        record_request(&Method::POST, "/layers-test", 200, Duration::from_millis(2));
        let text = stream_core::metrics::handle().render();
        let counted = |labels: &str| sample(&text, &format!("http_requests_total{{{labels}}}"));
        assert_eq!(counted(r#"method="other",route="/layers-test",status="418""#), Some(3.0), "{text}");
        assert_eq!(counted(r#"method="POST",route="/layers-test",status="418""#), Some(1.0));
        assert_eq!(counted(r#"method="POST",route="/layers-test",status="200""#), Some(1.0));
        assert!(!text.contains("BREW"), "a made-up method is no label of its own");
        let timed =
            sample(&text, r#"http_request_duration_seconds_count{method="other",route="/layers-test",status="418"}"#);
        assert_eq!(timed, Some(3.0));
    }

    #[tokio::test]
    async fn a_panic_is_answered_500_in_the_error_format_and_counted() {
        let panics = AtomicU64::new(0);
        let response = panic_to_500(&panics, Box::new("boom"));
        assert_eq!(response.status(), 500);
        let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, serde_json::json!({"error": "internal error"}));
        assert_eq!(panics.load(Ordering::Relaxed), 1);
    }
}
