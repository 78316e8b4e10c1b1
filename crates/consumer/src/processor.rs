//! What happens to one event: the [`Processor`] trait and the default
//! processing the `consumer` binary runs.
//!
//! A processor turns an event into the `output` of its
//! [`EventResult`](stream_core::EventResult), or refuses it with a
//! [`ProcessError`]; refused events go to the dead-letter topic. Plug in your
//! own with [`run_with`](crate::run_with).

use std::future::Future;

use serde_json::{json, Value};
use stream_core::schema::{SchemaError, Timestamp};
use stream_core::Event;

/// Who is processing, passed to every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Index of the worker (0-based) inside this process; it is also the
    /// result's `worker_id`.
    pub worker_id: u32,
}

/// Why an event could not be processed. The event is dead-lettered with the
/// [`kind`](ProcessError::kind) and the message in its headers; the worker
/// carries on with the next event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProcessError {
    /// The payload is missing or not what the processor accepts.
    #[error(transparent)]
    InvalidPayload(#[from] SchemaError),
    /// The processor refused the event for a reason of its own.
    #[error("{0}")]
    Rejected(String),
}

impl ProcessError {
    /// A short, stable name for the error, written to the `dlq_error_kind`
    /// header so dead letters can be grouped without parsing messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidPayload(SchemaError::EmptyPayload) => "empty_payload",
            Self::InvalidPayload(SchemaError::InvalidJson(_)) => "invalid_json",
            Self::InvalidPayload(SchemaError::BadHeader { .. }) => "bad_header",
            Self::Rejected(_) => "rejected",
        }
    }
}

/// Processing of one event.
///
/// Calls for events of one partition come one after another, in offset
/// order, so a processor sees each stream's events in the order they were
/// sent; calls for different partitions run concurrently. A processor may
/// be called again for an event it already saw (delivery is at-least-once),
/// so its effects should be idempotent.
pub trait Processor: Send + Sync + 'static {
    /// Returns the `output` of the event's result, or why it was refused.
    fn process(&self, event: &Event, worker: &WorkerInfo) -> impl Future<Output = Result<Value, ProcessError>> + Send;
}

/// The default processing: parse the payload as JSON and transform it.
///
/// - a string gets the processing time as a prefix, `"[<time>] text"`;
/// - an object keeps its fields and gains `_processed` with the time, the
///   worker and the number of fields it had;
/// - any other JSON value is wrapped as `{"value": .., "type": .., "processed_at": ..}`.
///
/// A payload that is empty or not JSON is refused, so it is dead-lettered.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultProcessor;

impl DefaultProcessor {
    /// The transformation itself, separate from parsing so it can be tested
    /// with a fixed time.
    pub fn transform(value: Value, processed_at: Timestamp, worker: &WorkerInfo) -> Value {
        match value {
            Value::String(text) => Value::String(format!("[{processed_at}] {text}")),
            Value::Object(mut fields) => {
                let count = fields.len();
                fields.insert(
                    "_processed".into(),
                    json!({ "at": processed_at, "worker": worker.worker_id, "fields": count }),
                );
                Value::Object(fields)
            }
            other => {
                let kind = match &other {
                    Value::Null => "null",
                    Value::Bool(_) => "boolean",
                    Value::Number(_) => "number",
                    Value::Array(_) => "array",
                    Value::String(_) | Value::Object(_) => unreachable!("handled above"),
                };
                json!({ "value": other, "type": kind, "processed_at": processed_at })
            }
        }
    }
}

impl Processor for DefaultProcessor {
    async fn process(&self, event: &Event, worker: &WorkerInfo) -> Result<Value, ProcessError> {
        let value = event.json_data()?;
        Ok(Self::transform(value, Timestamp::now(), worker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKER: WorkerInfo = WorkerInfo { worker_id: 3 };

    fn at() -> Timestamp {
        Timestamp::from_micros(1_763_892_000_123_456)
    }

    #[test]
    fn strings_get_the_processing_time_as_prefix() {
        let out = DefaultProcessor::transform(json!("hello"), at(), &WORKER);
        assert_eq!(out, json!("[2025-11-23T10:00:00.123456Z] hello"));
    }

    #[test]
    fn objects_keep_their_fields_and_gain_processing_details() {
        let out = DefaultProcessor::transform(json!({"a": 1, "b": "x"}), at(), &WORKER);
        assert_eq!(
            out,
            json!({"a": 1, "b": "x", "_processed": {"at": "2025-11-23T10:00:00.123456Z", "worker": 3, "fields": 2}})
        );
    }

    #[test]
    fn other_values_are_wrapped_with_their_type() {
        let out = DefaultProcessor::transform(json!([1, 2]), at(), &WORKER);
        assert_eq!(out, json!({"value": [1, 2], "type": "array", "processed_at": "2025-11-23T10:00:00.123456Z"}));
        let out = DefaultProcessor::transform(json!(null), at(), &WORKER);
        assert_eq!(out["type"], "null");
    }

    #[tokio::test]
    async fn payloads_that_are_not_json_are_refused() {
        let event = Event::with_bytes("/t", None, Some("text/plain".into()), b"not json {".to_vec());
        let err = DefaultProcessor.process(&event, &WORKER).await.unwrap_err();
        assert_eq!(err.kind(), "invalid_json");
        let empty = Event::with_bytes("/t", None, None, Vec::new());
        assert_eq!(DefaultProcessor.process(&empty, &WORKER).await.unwrap_err().kind(), "empty_payload");
    }
}
