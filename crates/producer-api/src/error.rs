//! The one error type of the HTTP API, and its JSON body.
//!
//! Every failure a client can see is an [`AppError`]; it maps to a status
//! code and `{"error": "...", "detail"?: ...}`. Causes the client cannot act
//! on (librdkafka's wording, internal errors) go to the log, not the body.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// Everything that can go wrong in a request.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the body is not JSON (or not UTF-8 NDJSON).
    #[error("malformed JSON")]
    MalformedJson(String),
    /// 400: a query parameter or header of the wrong form (a malformed
    /// cursor, a cursor of another stream, a limit out of range).
    #[error("invalid parameter")]
    BadParameter(String),
    /// 410: the cursor names results the topic no longer retains.
    #[error("cursor expired: its results are no longer retained")]
    CursorExpired { earliest: String },
    /// 401: no API key, or one that is not configured.
    #[error("missing or invalid API key")]
    Unauthorized,
    /// 403: the stream belongs to another key.
    #[error("this stream belongs to another API key")]
    Forbidden,
    /// 404: the stream does not exist (or was deleted).
    #[error("unknown stream")]
    UnknownStream(String),
    /// 404: no such route.
    #[error("no such route")]
    NoRoute,
    /// 405: the route exists for other methods.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 408: the body did not arrive within `--body-read-timeout`.
    #[error("request body not received in time")]
    BodyTimeout,
    /// 426: a WebSocket handshake of a version other than 13 (RFC 6455).
    #[error("unsupported WebSocket version")]
    WebSocketVersion,
    /// 413: the body (or the batch) is larger than configured.
    #[error("request body too large")]
    TooLarge(String),
    /// 415: the body has the wrong content type.
    #[error("unsupported content type")]
    UnsupportedMediaType(String),
    /// 422: valid JSON of the wrong shape.
    #[error("invalid request")]
    Unprocessable(String),
    /// 422: the event payload does not match `--event-schema`; one entry
    /// per mismatch, `{path, message}` (path: a JSON Pointer into the event).
    #[error("event does not match the schema")]
    SchemaMismatch(Vec<SchemaViolation>),
    /// 422: an `Idempotency-Key` already used by this API key for a
    /// different request.
    #[error("idempotency key already used for a different request")]
    IdempotencyConflict,
    /// 429: the caller's key sent more events than `--rate-limit` allows.
    #[error("rate limited")]
    RateLimited {
        /// When enough capacity is back for the refused events (for a
        /// batch larger than the burst: when the whole burst is back).
        retry_after: Duration,
        /// The key's burst: events it may send at once.
        limit: u32,
        /// Why, when waiting alone will not help (a batch larger than the
        /// burst).
        detail: Option<String>,
    },
    /// 429: the server is already handling as many requests as allowed.
    #[error("too many requests in flight")]
    TooManyRequests,
    /// 429: the caller's key already owns as many streams as allowed.
    #[error("stream quota exceeded")]
    QuotaExceeded { detail: String, retry_after: Duration },
    /// 429: the caller's key already has as many result connections
    /// (WebSocket or SSE) open as allowed.
    #[error("too many result connections for this key")]
    ConnectionLimit { detail: String, retry_after: Duration },
    /// 503: the broker is unreachable, slow, or the producer queue is full.
    #[error("broker unavailable, retry later")]
    Unavailable { detail: String, retry_after: Duration },
    /// 500: a bug or an unexpected failure; the detail is logged only.
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    /// A 503 with the default retry hint.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::Unavailable { detail: detail.into(), retry_after: Duration::from_secs(1) }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::BadParameter(_) => StatusCode::BAD_REQUEST,
            Self::CursorExpired { .. } => StatusCode::GONE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::UnknownStream(_) | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::WebSocketVersion => StatusCode::UPGRADE_REQUIRED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable(_) | Self::SchemaMismatch(_) | Self::IdempotencyConflict => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::TooManyRequests
            | Self::QuotaExceeded { .. }
            | Self::ConnectionLimit { .. }
            | Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client may see beyond the one-line message.
    pub fn detail(&self) -> Option<Value> {
        match self {
            Self::MalformedJson(d)
            | Self::TooLarge(d)
            | Self::UnsupportedMediaType(d)
            | Self::Unprocessable(d)
            | Self::BadParameter(d)
            | Self::QuotaExceeded { detail: d, .. }
            | Self::ConnectionLimit { detail: d, .. }
            | Self::Unavailable { detail: d, .. } => Some(Value::String(d.clone())),
            Self::UnknownStream(id) => Some(json!({ "stream_id": id })),
            Self::CursorExpired { earliest } => Some(json!({ "earliest": earliest })),
            Self::SchemaMismatch(errors) => Some(json!({ "errors": errors })),
            Self::RateLimited { detail: Some(d), .. } => Some(Value::String(d.clone())),
            Self::WebSocketVersion => Some(Value::String("this server speaks WebSocket version 13".into())),
            Self::IdempotencyConflict => Some(Value::String(
                "this Idempotency-Key was first sent with another body (or to another route or stream); \
                 use a new key for a new request"
                    .into(),
            )),
            _ => None,
        }
    }

    /// The JSON body: `{"error": "...", "detail"?: ...}`.
    pub fn body(&self) -> Value {
        let mut body = json!({ "error": self.to_string() });
        if let Some(detail) = self.detail() {
            body["detail"] = detail;
        }
        if let Self::RateLimited { retry_after, .. } = self {
            body["retry_after_ms"] = Value::from(retry_after_ms(*retry_after));
        }
        body
    }
}

impl IntoResponse for AppError {
    /// The status, body and headers, without side effects: the error rides
    /// along in the response's extensions, and [`report`] logs and counts it.
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(self.body())).into_response();
        let retry_after = match &self {
            Self::Unavailable { retry_after, .. }
            | Self::QuotaExceeded { retry_after, .. }
            | Self::ConnectionLimit { retry_after, .. } => Some(retry_after.as_secs().max(1)),
            Self::TooManyRequests => Some(1),
            Self::RateLimited { retry_after, .. } => Some(whole_seconds(*retry_after)),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Self::WebSocketVersion = self {
            // RFC 6455, 4.2.2: the refusal names the versions the server
            // takes; RFC 9110: a 426 names the protocol to upgrade to.
            let headers = response.headers_mut();
            headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        if let Self::Unauthorized = self {
            // RFC 9110: a 401 names the scheme it takes (`X-API-Key` works
            // too, and is what the message says).
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"streamkit\""));
        }
        if let Self::RateLimited { retry_after, limit, .. } = &self {
            // draft-ietf-httpapi-ratelimit-headers: the quota (the burst),
            // what is left of it (nothing), and seconds until it allows
            // the refused request again.
            let headers = response.headers_mut();
            headers.insert("ratelimit-limit", HeaderValue::from(*limit));
            headers.insert("ratelimit-remaining", HeaderValue::from(0));
            headers.insert("ratelimit-reset", HeaderValue::from(whole_seconds(*retry_after)));
        }
        response.extensions_mut().insert(Reported(Arc::new(self)));
        response
    }
}

/// The error an error response was made from, kept for [`report`].
#[derive(Debug, Clone)]
pub struct Reported(pub Arc<AppError>);

/// Logs and counts the error `response` was made from (nothing for other
/// responses). The request layer calls it once per response, so every
/// error is seen once however deep it was raised.
pub fn report(response: &Response) -> Option<&AppError> {
    let Reported(error) = response.extensions().get::<Reported>()?;
    match &**error {
        AppError::Internal(cause) => tracing::error!(%cause, "internal error"),
        AppError::Unavailable { detail, .. } => tracing::warn!(%detail, "answering 503"),
        error => tracing::debug!(%error, detail = ?error.detail(), "request refused"),
    }
    metrics::counter!("http_errors_total", "status" => response.status().as_str().to_owned()).increment(1);
    Some(error)
}

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> Self {
        let text = rejection.body_text();
        match rejection {
            JsonRejection::JsonDataError(_) => Self::Unprocessable(text),
            JsonRejection::JsonSyntaxError(_) => Self::MalformedJson(text),
            JsonRejection::MissingJsonContentType(_) => {
                Self::UnsupportedMediaType("send the body with Content-Type: application/json".into())
            }
            JsonRejection::BytesRejection(bytes) => bytes.into(),
            other => match other.status() {
                StatusCode::PAYLOAD_TOO_LARGE => Self::TooLarge(text),
                StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType(text),
                StatusCode::UNPROCESSABLE_ENTITY => Self::Unprocessable(text),
                _ => Self::MalformedJson(text),
            },
        }
    }
}

impl From<BytesRejection> for AppError {
    fn from(rejection: BytesRejection) -> Self {
        if caused_by::<crate::deadline::BodyDeadlineExceeded>(&rejection, |_| true) {
            return Self::BodyTimeout;
        }
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::TooLarge(rejection.body_text()),
            _ => Self::MalformedJson(rejection.body_text()),
        }
    }
}

/// One way an event fails `--event-schema`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SchemaViolation {
    /// JSON Pointer to the offending part of the event (`""`: the whole event).
    pub path: String,
    /// What is wrong, without echoing the value.
    pub message: String,
}

/// A wait in whole seconds, rounded up and at least 1 (`Retry-After`
/// cannot say "0.2 s", and 0 would invite an immediate retry).
pub fn whole_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// A wait in milliseconds, rounded up, for WebSocket clients that can
/// retry sooner than a second.
pub fn retry_after_ms(wait: Duration) -> u64 {
    let ms = wait.as_millis() as u64;
    ms + u64::from(wait.as_nanos() % 1_000_000 > 0)
}

/// Whether `error` or anything in its source chain is an `E` for which
/// `holds` is true.
pub(crate) fn caused_by<E: std::error::Error + 'static>(
    error: &(dyn std::error::Error + 'static),
    holds: impl Fn(&E) -> bool,
) -> bool {
    std::iter::successors(Some(error), |error| error.source())
        .any(|error| error.downcast_ref::<E>().is_some_and(&holds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_carries_retry_after() {
        let response = AppError::unavailable("queue full").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn rate_limited_rounds_its_waits_up() {
        let error = AppError::RateLimited { retry_after: Duration::from_millis(1200), limit: 5, detail: None };
        assert_eq!(error.body(), json!({"error": "rate limited", "retry_after_ms": 1200}));
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()["ratelimit-limit"], "5");
        assert_eq!(response.headers()["ratelimit-remaining"], "0");
        assert_eq!(response.headers()["ratelimit-reset"], "2");
        assert_eq!(whole_seconds(Duration::from_millis(3)), 1);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_ms(Duration::from_micros(1500)), 2);
    }

    #[test]
    fn schema_mismatch_lists_its_errors() {
        let error = AppError::SchemaMismatch(vec![SchemaViolation { path: "/t".into(), message: "m".into() }]);
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            error.body(),
            json!({"error": "event does not match the schema", "detail": {"errors": [{"path": "/t", "message": "m"}]}})
        );
    }

    #[test]
    fn an_error_response_carries_its_error_for_the_report() {
        let response = AppError::Internal("disk on fire".into()).into_response();
        assert!(matches!(report(&response), Some(AppError::Internal(cause)) if cause == "disk on fire"));
        assert!(report(&StatusCode::OK.into_response()).is_none());
    }

    #[test]
    fn body_has_error_and_optional_detail() {
        assert_eq!(AppError::Unauthorized.body(), json!({"error": "missing or invalid API key"}));
        let response = AppError::Unauthorized.into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"streamkit\"");
        assert_eq!(AppError::UnknownStream("s".into()).body()["detail"]["stream_id"], "s");
        // Internal causes never reach the client.
        assert_eq!(AppError::Internal("secret".into()).body(), json!({"error": "internal error"}));
    }
}
