//! The stream API: start, send, delete, and the results view (WebSocket,
//! Server-Sent Events, or JSON of the most recent results).

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stream_core::schema::Event;
use tokio::time::Instant;

use crate::auth::Caller;
use crate::error::AppError;
use crate::extract::{media_type, SendPayload, StreamPath};
use crate::publish::{add_traceparent, traceparent, SOURCE};
use crate::registry::{Claimed, StartSlot};
use crate::serve::ConnectionSlot;
use crate::{ws, AppState};

/// Longest stream id accepted.
pub const MAX_STREAM_ID: usize = 128;

/// Stream ids are record keys and URL path segments: letters, digits and
/// `.`, `_`, `-`, `:`; 1 to 128 characters.
pub fn validate_stream_id(id: &str) -> Result<(), AppError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_STREAM_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(AppError::Unprocessable(format!(
            "stream_id must be 1 to {MAX_STREAM_ID} characters of letters, digits, '.', '_', '-' or ':'"
        )))
    }
}

/// `POST /stream/start` body; the body itself is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    #[serde(default)]
    stream_id: Option<String>,
}

/// `{"stream_id": ...}`
#[derive(Debug, Serialize, Deserialize)]
pub struct StreamRef {
    pub stream_id: String,
}

/// `POST /stream/start`: 201 for a new stream, 200 when the caller already
/// owns the id (a retried start), 403 when another key does.
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, AppError> {
    let body = body?;
    let request = if body.trim_ascii().is_empty() {
        StartRequest::default()
    } else if media_type(&headers) == "application/x-www-form-urlencoded" {
        // The seed's clients post `stream_id=abc` as an HTML form.
        start_form(&body)?
    } else {
        if !is_json(&headers) {
            return Err(AppError::UnsupportedMediaType(
                "send the body with Content-Type: application/json or as a form (or send no body)".into(),
            ));
        }
        let shape_error = |e: serde_json::Error| {
            if e.is_data() {
                AppError::Unprocessable(e.to_string())
            } else {
                AppError::MalformedJson(e.to_string())
            }
        };
        // serde would take `[]` or `["id"]` for the struct too; only an
        // object is the documented shape.
        let value: Value = serde_json::from_slice(&body).map_err(shape_error)?;
        if !value.is_object() {
            return Err(AppError::Unprocessable("expected a JSON object {\"stream_id\"?: string}".into()));
        }
        serde_json::from_value::<StartRequest>(value).map_err(shape_error)?
    };
    let deadline = state.publisher.deadline();
    let outcome = match request.stream_id {
        Some(stream_id) => {
            validate_stream_id(&stream_id)?;
            let _slot = reserve_quota(&state, &caller, &stream_id)?;
            let outcome = state.registry.claim(&state.publisher, &stream_id, &caller.owner, deadline).await?;
            (stream_id, outcome)
        }
        None => {
            let stream_id = uuid::Uuid::new_v4().to_string();
            let _slot = reserve_quota(&state, &caller, &stream_id)?;
            let outcome = state.registry.claim_new(&state.publisher, &stream_id, &caller.owner, deadline).await?;
            (stream_id, outcome)
        }
    };
    let (stream_id, outcome) = outcome;
    let status = match outcome {
        Claimed::Created => {
            metrics::counter!("streams_started_total").increment(1);
            StatusCode::CREATED
        }
        Claimed::Existing => StatusCode::OK,
    };
    Ok((status, Json(StreamRef { stream_id })).into_response())
}

/// A form-encoded start (`stream_id=abc`): the same one optional field as
/// the JSON body; any other field is refused as in JSON.
fn start_form(body: &[u8]) -> Result<StartRequest, AppError> {
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|err| AppError::MalformedJson(format!("malformed form body: {err}")))?;
    let mut request = StartRequest::default();
    for (name, value) in fields {
        match name.as_str() {
            "stream_id" if request.stream_id.is_none() => request.stream_id = Some(value),
            "stream_id" => return Err(AppError::Unprocessable("stream_id given twice".into())),
            other => return Err(AppError::Unprocessable(format!("unknown form field {other:?}; expected stream_id"))),
        }
    }
    Ok(request)
}

/// One key may own at most `--max-streams-per-key` streams, so a single
/// client cannot fill every replica's memory with stream slots. A retried
/// start of a stream the caller already owns is never refused. Within one
/// process the limit is exact even for concurrent starts; across replicas
/// each counts the others' streams once their claims are applied.
fn reserve_quota(state: &AppState, caller: &Caller, stream_id: &str) -> Result<Option<StartSlot>, AppError> {
    if state.registry.owner_of(stream_id).is_some() {
        return Ok(None);
    }
    let max = state.config.max_streams_per_key;
    match state.registry.reserve(&caller.owner, max) {
        Some(slot) => Ok(Some(slot)),
        None => {
            metrics::counter!("stream_quota_refusals_total").increment(1);
            Err(AppError::QuotaExceeded {
                detail: format!("this key already owns {max} streams (the limit); delete some before starting more"),
                retry_after: QUOTA_RETRY_AFTER,
            })
        }
    }
}

/// Retry-After of a refusal over `--max-websockets-per-key`: connections
/// end on the client's schedule.
pub const SUBSCRIPTION_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Retry-After of a quota refusal: streams are freed by deletes, which a
/// client does on its own schedule, so this is a polite pause, not a promise.
pub const QUOTA_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

fn is_json(headers: &HeaderMap) -> bool {
    let media_type = media_type(headers);
    media_type == "application/json" || media_type.ends_with("+json")
}

/// 404 for an unknown stream, 403 for another key's stream.
pub async fn authorize(state: &AppState, caller: &Caller, stream: &str, deadline: Instant) -> Result<(), AppError> {
    if validate_stream_id(stream).is_err() {
        return Err(AppError::UnknownStream(stream.to_owned()));
    }
    match state.registry.owner_fresh(stream, deadline).await? {
        Some(owner) if owner == caller.owner => Ok(()),
        Some(_) => Err(AppError::Forbidden),
        None => Err(AppError::UnknownStream(stream.to_owned())),
    }
}

/// The payload of a stream send: `{"data": ...}`, or the older
/// `{"message": ...}`.
pub fn payload_of(body: Value) -> Result<Value, AppError> {
    match body {
        Value::Object(mut fields) => fields.remove("data").or_else(|| fields.remove("message")).ok_or_else(|| {
            AppError::Unprocessable("expected {\"data\": <any JSON>} (or {\"message\": <any JSON>})".into())
        }),
        _ => Err(AppError::Unprocessable("expected a JSON object {\"data\": <any JSON>}".into())),
    }
}

/// Reply to a stream send.
#[derive(Debug, Serialize, Deserialize)]
pub struct SendAck {
    pub id: String,
    pub stream_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// `POST /stream/{id}/send`: publishes one event keyed by the stream id.
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    StreamPath(stream_id): StreamPath,
    headers: HeaderMap,
    SendPayload(data): SendPayload,
) -> Result<Json<SendAck>, AppError> {
    let deadline = state.publisher.deadline();
    authorize(&state, &caller, &stream_id, deadline).await?;
    let mut event = Event::json(SOURCE, Some(stream_id.clone()), &data);
    add_traceparent(&mut event, traceparent(&headers));
    let topic = &state.config.kafka.topics.events;
    let future = state.publisher.enqueue(topic, &event)?;
    let ack = state.publisher.acked(event.id, topic, future, deadline).await?;
    Ok(Json(SendAck { id: ack.id, stream_id, topic: ack.topic, partition: ack.partition, offset: ack.offset }))
}

/// `DELETE /stream/{id}`: closes the stream everywhere; its watchers'
/// connections end.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    StreamPath(stream_id): StreamPath,
) -> Result<Json<Value>, AppError> {
    if validate_stream_id(&stream_id).is_err() {
        return Err(AppError::UnknownStream(stream_id));
    }
    let deadline = state.publisher.deadline();
    state.registry.delete(&state.publisher, &stream_id, &caller.owner, deadline).await?;
    metrics::counter!("streams_deleted_total").increment(1);
    Ok(Json(json!({ "stream_id": stream_id, "deleted": true })))
}

/// `GET /stream/{id}/results`: a WebSocket when upgrading, Server-Sent
/// Events when the client accepts `text/event-stream`, otherwise JSON of
/// the most recent results.
pub async fn results(
    State(state): State<AppState>,
    caller: Caller,
    StreamPath(stream_id): StreamPath,
    headers: HeaderMap,
    connection: Option<Extension<ConnectionSlot>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    authorize(&state, &caller, &stream_id, state.publisher.deadline()).await?;
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    if upgrade.is_ok() || wants_sse {
        let max = state.config.max_websockets_per_key;
        let key = state.subscriptions.reserve(&caller.owner, max).ok_or_else(|| {
            metrics::counter!("websocket_key_limit_refusals_total").increment(1);
            AppError::QuotaExceeded {
                detail: format!(
                    "this key already has {max} result connections (WebSocket or SSE) open, the limit; close some first"
                ),
                retry_after: SUBSCRIPTION_RETRY_AFTER,
            }
        })?;
        let held = ws::Held { key, connection: connection.map(|Extension(slot)| slot) };
        let subscription = state.hub.subscribe(&stream_id).ok_or_else(|| AppError::UnknownStream(stream_id.clone()))?;
        return Ok(match upgrade {
            Ok(upgrade) => ws::upgrade(state, stream_id, subscription, held, upgrade),
            Err(_) => ws::sse(state, subscription, held),
        });
    }
    #[derive(Serialize)]
    struct Recent<'a> {
        stream_id: &'a str,
        results: Vec<&'a serde_json::value::RawValue>,
    }
    let recent = state.hub.recent(&stream_id);
    let results = recent.iter().map(|d| d.result.as_ref()).collect();
    Ok(Json(Recent { stream_id: &stream_id, results }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids() {
        for good in ["a", "0190a1b2-c3d4", "user:42", "x.y_z", &"a".repeat(MAX_STREAM_ID)] {
            validate_stream_id(good).unwrap();
        }
        for bad in ["", "a b", "a/b", "é", &"a".repeat(MAX_STREAM_ID + 1)] {
            assert!(validate_stream_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn payload_forms() {
        assert_eq!(payload_of(json!({"data": {"x": 1}})).unwrap(), json!({"x": 1}));
        assert_eq!(payload_of(json!({"message": "hi"})).unwrap(), json!("hi"));
        assert_eq!(payload_of(json!({"data": null})).unwrap(), Value::Null);
        assert_eq!(payload_of(json!({"other": 1})).unwrap_err().status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(payload_of(json!([1])).unwrap_err().status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
}
