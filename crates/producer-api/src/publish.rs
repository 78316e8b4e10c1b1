//! The `/publish` and `/publish/batch` handlers.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use stream_core::schema::{header as ce, Event, JSON};

use crate::auth::Caller;
use crate::error::AppError;
use crate::extract::AppJson;
use crate::idempotency::{self, Fingerprint};
use crate::once::{publish_once, replay_marked};
use crate::producer::{Ack, SOURCE};
use crate::trace::{add_traceparent, traceparent};
use crate::validation;
use crate::AppState;

/// `POST /publish` body.
#[derive(Debug)]
pub struct PublishRequest {
    /// Any JSON value; its bytes become the record value exactly as sent.
    pub message: Box<RawValue>,
    /// Record key (e.g. a stream or entity id): same key, same partition.
    pub key: Option<String>,
    /// Extra record headers. CloudEvents' own names are reserved.
    pub headers: BTreeMap<String, String>,
}

/// Only a JSON object is a request: serde's derived impl would also take
/// an array of the fields in order (`[message, key]`), which the API does
/// not document and no client means.
impl<'de> Deserialize<'de> for PublishRequest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PublishRequest;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object {\"message\": <any JSON>, \"key\"?: string, \"headers\"?: {string: string}}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<PublishRequest, A::Error> {
                let fields = PublishFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(PublishRequest { message: fields.message, key: fields.key, headers: fields.headers })
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

#[derive(Deserialize)]
struct PublishFields {
    /// Any JSON value; its bytes become the record value exactly as sent.
    pub message: Box<RawValue>,
    /// Record key (e.g. a stream or entity id): same key, same partition.
    #[serde(default)]
    pub key: Option<String>,
    /// Extra record headers. CloudEvents' own names are reserved.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl PublishRequest {
    /// What this request asks for, to tell a retry (same message bytes,
    /// key and headers) from another request under the same
    /// `Idempotency-Key`. The trace context is left out: a retry may carry
    /// a new one.
    pub fn fingerprint(&self) -> Fingerprint {
        let key = self.key.as_deref().map(str::as_bytes);
        let has_key: &[u8] = if key.is_some() { b"1" } else { b"0" };
        let headers = self.headers.iter().flat_map(|(name, value)| [name.as_bytes(), value.as_bytes()]);
        let parts: [&[u8]; 4] = [b"publish", self.message.get().as_bytes(), has_key, key.unwrap_or_default()];
        Fingerprint::of(parts.into_iter().chain(headers))
    }

    /// The event this request describes.
    pub fn into_event(self, traceparent: Option<&str>) -> Result<Event, AppError> {
        for name in self.headers.keys() {
            if name.is_empty() || ce::RESERVED.contains(&name.as_str()) || name.starts_with("ce_") {
                return Err(AppError::Unprocessable(format!(
                    "header {name:?} is reserved or empty; CloudEvents attributes (ce_*, content-type) are set by the server"
                )));
            }
        }
        let data = self.message.get().as_bytes().to_vec();
        let mut event = Event::with_bytes(SOURCE, self.key, Some(JSON.into()), data);
        event.extensions.extend(self.headers);
        add_traceparent(&mut event, traceparent);
        Ok(event)
    }
}

/// `POST /publish`: one event, answered after the broker's ack. With an
/// `Idempotency-Key`, at most one event per key (see [`idempotency`]).
pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    AppJson(request): AppJson<PublishRequest>,
) -> Result<Response, AppError> {
    validation::check_message(state.schema.as_ref(), &request.message)?;
    let key = idempotency::Key::from_headers(&caller.owner, &headers)?;
    let fingerprint = key.as_ref().map(|_| request.fingerprint());
    let event = request.into_event(traceparent(&headers))?;
    let topic = &state.config.kafka.topics.events;
    match key.zip(fingerprint) {
        None => {
            state.admit(&caller.owner, 1)?;
            Ok(Json(state.publisher.publish(topic, &event).await?).into_response())
        }
        Some((key, fingerprint)) => {
            let (ack, replayed) = publish_once(&state, &caller, &key, fingerprint, event).await?;
            Ok(replay_marked(Json(ack).into_response(), replayed))
        }
    }
}

/// One record's outcome in a batch.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum ItemResult {
    Ok {
        index: usize,
        #[serde(flatten)]
        ack: Ack,
    },
    Failed {
        index: usize,
        status: u16,
        error: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<Value>,
    },
}

impl ItemResult {
    fn failed(index: usize, error: &AppError) -> Self {
        Self::Failed { index, status: error.status().as_u16(), error: error.to_string(), detail: error.detail() }
    }
}

/// `POST /publish/batch` reply.
#[derive(Debug, Serialize)]
struct BatchReply {
    results: Vec<ItemResult>,
    succeeded: usize,
    failed: usize,
}

/// How the batch body is framed.
enum Framing {
    Array,
    Ndjson,
}

fn framing(headers: &HeaderMap) -> Result<Framing, AppError> {
    match crate::extract::media_type(headers).as_str() {
        "application/json" => Ok(Framing::Array),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/json-seq" => {
            Ok(Framing::Ndjson)
        }
        _ => {
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            Err(AppError::UnsupportedMediaType(format!(
                "send a JSON array as application/json or one object per line as application/x-ndjson (got {content_type:?})"
            )))
        }
    }
}

/// Splits a batch body into per-record parse results; the batch as a whole
/// fails only when it cannot be framed (not JSON, not an array, too many).
fn parse_batch(framing: Framing, body: &[u8], max: usize) -> Result<Vec<Result<PublishRequest, AppError>>, AppError> {
    let too_many = |n: usize| AppError::TooLarge(format!("{n} records in one batch; the limit is {max}"));
    match framing {
        Framing::Array => {
            // Borrowed raw elements: the array is checked once, and each
            // record is parsed on its own, so one bad record fails alone.
            let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| {
                if e.is_data() {
                    AppError::Unprocessable("expected a JSON array of {\"message\": ...} objects".into())
                } else {
                    AppError::MalformedJson(e.to_string())
                }
            })?;
            if items.len() > max {
                return Err(too_many(items.len()));
            }
            Ok(items
                .into_iter()
                .map(|item| serde_json::from_str(item.get()).map_err(|e| AppError::Unprocessable(e.to_string())))
                .collect())
        }
        Framing::Ndjson => {
            let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').filter(|line| !line.trim_ascii().is_empty()).collect();
            if lines.len() > max {
                return Err(too_many(lines.len()));
            }
            Ok(lines
                .into_iter()
                .map(|line| {
                    serde_json::from_slice(line).map_err(|e| {
                        if e.is_data() {
                            AppError::Unprocessable(e.to_string())
                        } else {
                            AppError::MalformedJson(e.to_string())
                        }
                    })
                })
                .collect())
        }
    }
}

/// `POST /publish/batch`: every record is enqueued before any ack is
/// awaited, so the batch costs about one broker round trip, and each record
/// gets its own result.
pub async fn publish_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, AppError> {
    if headers.contains_key(idempotency::HEADER) {
        // Ignoring it would write the batch again on a retry the client
        // believes is safe.
        return Err(AppError::BadParameter(
            "Idempotency-Key applies to single sends (/publish, /stream/{id}/send), not to batches".into(),
        ));
    }
    let framing = framing(&headers)?;
    let body = body?;
    let mut requests = parse_batch(framing, &body, state.config.max_batch_records)?;
    if requests.is_empty() {
        return Err(AppError::Unprocessable("the batch has no records".into()));
    }
    for request in requests.iter_mut() {
        if let Err(error) =
            request.as_ref().map_or(Ok(()), |r| validation::check_message(state.schema.as_ref(), &r.message))
        {
            *request = Err(error);
        }
    }
    if state.rate_limits.is_some() {
        // Every record that is to be written counts, and the batch is
        // admitted whole or refused whole: never half-written.
        state.admit(&caller.owner, requests.iter().filter(|r| r.is_ok()).count())?;
    }
    let topic = &state.config.kafka.topics.events;
    let deadline = state.publisher.deadline();
    let trace = traceparent(&headers);

    let mut pending = Vec::with_capacity(requests.len());
    let mut results: Vec<Option<ItemResult>> = Vec::with_capacity(requests.len());
    for (index, request) in requests.into_iter().enumerate() {
        let queued = request
            .and_then(|r| r.into_event(trace))
            .and_then(|event| state.publisher.enqueue(topic, &event).map(|future| (event.id, future)));
        match queued {
            Ok((id, future)) => {
                pending.push((index, state.publisher.acked(id, topic, future, deadline)));
                results.push(None);
            }
            Err(error) => results.push(Some(ItemResult::failed(index, &error))),
        }
    }
    let (indexes, waits): (Vec<usize>, Vec<_>) = pending.into_iter().unzip();
    let acks = futures::future::join_all(waits).await;

    let mut succeeded = 0usize;
    for (index, outcome) in indexes.into_iter().zip(acks) {
        results[index] = Some(match outcome {
            Ok(ack) => {
                succeeded += 1;
                ItemResult::Ok { index, ack }
            }
            Err(error) => ItemResult::failed(index, &error),
        });
    }
    let total = results.len();
    metrics::counter!("batch_records_total", "outcome" => "acked").increment(succeeded as u64);
    metrics::counter!("batch_records_total", "outcome" => "failed").increment((total - succeeded) as u64);
    let results: Vec<ItemResult> = results.into_iter().map(|r| r.expect("every record has a result")).collect();
    // Refused for now (a full queue, an unreachable broker), at enqueue or
    // while awaiting its ack.
    let unavailable = |r: &ItemResult| matches!(r, ItemResult::Failed { status, .. } if *status == StatusCode::SERVICE_UNAVAILABLE.as_u16());
    if succeeded == 0 && results.iter().any(unavailable) {
        // Nothing was written: the client should retry the whole batch later.
        return Err(AppError::unavailable(format!("none of the {total} records was acknowledged")));
    }
    Ok(Json(BatchReply { results, succeeded, failed: total - succeeded }).into_response())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reserved_headers_are_refused() {
        let request: PublishRequest = serde_json::from_str(r#"{"message": 1, "headers": {"ce_id": "x"}}"#).unwrap();
        assert_eq!(request.into_event(None).unwrap_err().status(), StatusCode::UNPROCESSABLE_ENTITY);
        let request: PublishRequest =
            serde_json::from_str(r#"{"message": {"a": 1}, "key": "k", "headers": {"tenant": "t"}}"#).unwrap();
        let event = request.into_event(Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")).unwrap();
        assert_eq!(event.key.as_deref(), Some("k"));
        assert_eq!(event.extension("tenant"), Some("t"));
        assert_eq!(event.extension("traceparent"), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert_eq!(event.json_data().unwrap(), json!({"a": 1}));
    }

    #[test]
    fn a_missing_message_is_a_shape_error() {
        assert!(serde_json::from_str::<PublishRequest>(r#"{"key": "k"}"#).is_err());
        let array = serde_json::from_str::<PublishRequest>(r#"[1, "k"]"#).unwrap_err();
        assert!(array.is_data(), "{array}");
        let null = serde_json::from_str::<PublishRequest>(r#"{"message": null}"#).unwrap();
        assert_eq!(null.into_event(None).unwrap().data, b"null");
    }

    #[test]
    fn batches_split_per_record() {
        let body = br#"[{"message": 1}, {"nope": 2}, {"message": "x", "key": "k"}]"#;
        let items = parse_batch(Framing::Array, body, 10).unwrap();
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok() && items[2].is_ok());
        assert_eq!(items[1].as_ref().unwrap_err().status(), StatusCode::UNPROCESSABLE_ENTITY);

        let body = b"{\"message\": 1}\n\n{bad json\n{\"message\": 3}\n";
        let items = parse_batch(Framing::Ndjson, body, 10).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[1].as_ref().unwrap_err().status(), StatusCode::BAD_REQUEST);

        assert_eq!(parse_batch(Framing::Array, b"[1,", 10).unwrap_err().status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            parse_batch(Framing::Array, b"{\"message\": 1}", 10).unwrap_err().status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(parse_batch(Framing::Array, b"[1,2,3]", 2).unwrap_err().status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(parse_batch(Framing::Ndjson, b"1\n2\n3", 2).unwrap_err().status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
