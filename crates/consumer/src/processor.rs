//! What happens to one event: the [`Processor`] trait and the default
//! processing the `consumer` binary runs.
//!
//! A processor turns an event into the `output` of its
//! [`EventResult`](stream_core::EventResult) (a [`Processed`]), or refuses
//! it with a [`ProcessError`]; refused events go to the dead-letter topic.
//! Plug in your own with [`run_with`](crate::run_with).

use std::borrow::Cow;
use std::fmt;
use std::future::Future;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Value};
use stream_core::json::{reserved, write_int, Checked, CheckedVisitor, Key, WriteJson};
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
            Self::InvalidPayload(SchemaError::BadKey) => "bad_key",
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
    /// Returns the `output` of the event's result, or why it was refused. A
    /// [`Value`] becomes one with `.into()`.
    fn process(
        &self,
        event: &Event,
        worker: &WorkerInfo,
    ) -> impl Future<Output = Result<Processed, ProcessError>> + Send;
}

/// The `output` of an event's result, as a processor returns it: a JSON
/// value, or JSON text written already.
///
/// The default processing writes text: it keeps an object payload's own
/// bytes and appends its `_processed` field, where parsing the payload into
/// a [`Value`], inserting into it and writing it out again cost about a
/// sixth of the consumer's instructions per event.
#[derive(Debug, Clone)]
pub struct Processed(Repr);

#[derive(Debug, Clone)]
enum Repr {
    Value(Value),
    /// One JSON document, without surrounding whitespace.
    Text(Vec<u8>),
}

impl From<Value> for Processed {
    fn from(value: Value) -> Self {
        Self(Repr::Value(value))
    }
}

impl Processed {
    /// JSON text as the output, once it is checked to be one JSON document
    /// (whitespace around it is dropped).
    pub fn json(text: impl Into<Vec<u8>>) -> Result<Self, serde_json::Error> {
        let mut text = text.into();
        if let Some(value) = stream_core::json::check(&text)? {
            // serde_json's own keys: what they mean is up to `Value`.
            return Ok(Self::from(value));
        }
        let start = text.len() - text.trim_ascii_start().len();
        text.truncate(text.trim_ascii_end().len());
        text.drain(..start);
        Ok(Self(Repr::Text(text)))
    }

    /// The output as a value (parsed again, if it is text).
    pub fn to_value(&self) -> Value {
        match &self.0 {
            Repr::Value(value) => value.clone(),
            Repr::Text(text) => serde_json::from_slice(text).expect("output text is checked JSON"),
        }
    }
}

impl WriteJson for Processed {
    fn write_json(&self, out: &mut Vec<u8>) {
        match &self.0 {
            Repr::Value(value) => value.write_json(out),
            Repr::Text(text) => out.extend_from_slice(text),
        }
    }
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

impl DefaultProcessor {
    /// [`transform`](Self::transform) of a payload, with the same result
    /// up to the order of keys and whitespace, and the same errors. An
    /// object whose keys are distinct and do not include `_processed` (the
    /// usual case) keeps its own text, with `_processed` appended as its
    /// last field; anything else is parsed into a [`Value`] and
    /// transformed. So is an object with a line break inside it (pretty
    /// printed): a result stays on one line, as SSE clients that read it
    /// line by line expect.
    pub fn transform_payload(
        data: &[u8],
        processed_at: Timestamp,
        worker: &WorkerInfo,
    ) -> Result<Processed, SchemaError> {
        if data.is_empty() {
            return Err(SchemaError::EmptyPayload);
        }
        let value = match serde_json::from_slice::<Shape>(data) {
            Ok(Shape::Object { fields }) if one_line_object(data.trim_ascii()) => {
                return Ok(Self::append_processed(data, fields, processed_at, worker));
            }
            Ok(Shape::Object { .. }) => serde_json::from_slice(data),
            Ok(Shape::Text(text)) => Ok(Value::String(text)),
            Ok(Shape::Other) => serde_json::from_slice(data),
            Err(error) => Err(error),
        }
        .map_err(|e| SchemaError::InvalidJson(e.to_string()))?;
        Ok(Self::transform(value, processed_at, worker).into())
    }

    /// `data`, a checked JSON object with `fields` distinct keys and no
    /// `_processed`, with `"_processed":{"at":..,"fields":..,"worker":..}`
    /// written before its closing brace (in the order a `Value` writes
    /// them).
    fn append_processed(data: &[u8], fields: usize, at: Timestamp, worker: &WorkerInfo) -> Processed {
        // JSON whitespace only around a checked document: `trim_ascii`
        // also trims form feeds, which JSON allows nowhere unescaped.
        let text = data.trim_ascii();
        let open = &text[..text.len() - 1];
        let mut out = Vec::with_capacity(text.len() + 96);
        out.extend_from_slice(open);
        if fields > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"\"_processed\":{\"at\":\"");
        out.extend_from_slice(at.rfc3339().as_bytes());
        out.extend_from_slice(b"\",\"fields\":");
        write_int(&mut out, fields);
        out.extend_from_slice(b",\"worker\":");
        write_int(&mut out, worker.worker_id);
        out.extend_from_slice(b"}}");
        Processed(Repr::Text(out))
    }
}

impl Processor for DefaultProcessor {
    async fn process(&self, event: &Event, worker: &WorkerInfo) -> Result<Processed, ProcessError> {
        Ok(Self::transform_payload(&event.data, Timestamp::now(), worker)?)
    }
}

/// Whether checked JSON text is an object without a line break: JSON
/// strings hold none unescaped, so any is whitespace between tokens.
/// memchr compares many bytes at once (SIMD), where a byte loop cost
/// about 5 instructions per byte of every payload (callgrind).
fn one_line_object(text: &[u8]) -> bool {
    text.first() == Some(&b'{') && memchr::memchr2(b'\n', b'\r', text).is_none()
}

/// What a payload is, found in one pass that checks all of it as
/// `serde_json::Value` parsing would (the same parser, numbers, escapes,
/// UTF-8 and depth limit), without building it.
enum Shape {
    /// An object with this many keys, all distinct, none `_processed`, and
    /// no serde_json key anywhere in it (see [`reserved`]).
    Object { fields: usize },
    /// A string.
    Text(String),
    /// Anything else, an object with a repeated key or `_processed` too:
    /// the `Value` transform decides.
    Other,
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut keys: Vec<Cow<'de, str>> = Vec::with_capacity(map.size_hint().unwrap_or(8));
        let mut plain = true;
        while let Some(Key(key)) = map.next_key()? {
            plain &= map.next_value::<Checked>()?.plain && !reserved(&key);
            keys.push(key);
        }
        let fields = keys.len();
        keys.sort_unstable();
        plain &= keys.windows(2).all(|pair| pair[0] != pair[1]) && keys.binary_search(&"_processed".into()).is_err();
        Ok(if plain { Shape::Object { fields } } else { Shape::Other })
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Shape, E> {
        Ok(Shape::Text(text.to_owned()))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Shape, E> {
        Ok(Shape::Text(text))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Shape, A::Error> {
        CheckedVisitor.visit_seq(seq).map(|_| Shape::Other)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::Other)
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

    /// Payloads of every shape, compact and not: plain objects (the text
    /// path) and everything the value path takes.
    fn payloads() -> Vec<(&'static [u8], bool)> {
        vec![
            (br#"{"a":1,"b":"x"}"#, true),
            (b"{}", true),
            (b" { } ", true),
            (b"\n\t{ \"a\" : [1, 2.5e3, -0, {\"b\": null}],\t \"c\":true }\r\n", true),
            // Pretty printed: rebuilt, so the result stays on one line.
            (b"{\n  \"a\": 1,\n  \"b\": [2]\n}\n", false),
            (b"{\"a\": 1,\r\"b\": \"x\"}", false),
            (br#"{"s":"\u00e9 \" \\ \n \ud83d\ude00","":{},"n":18446744073709551616}"#, true),
            (r#"{"ünï":"cödé","k":[{"_processed":1}]}"#.as_bytes(), true),
            (br#"{"\u0041":1,"A ":2}"#, true),
            // A key given twice (after unescaping too), or `_processed`
            // already there: as a `Value` does, the last one wins.
            (br#"{"a":1,"a":2}"#, false),
            (br#"{"a":1,"\u0061":2}"#, false),
            (br#"{"_processed":{"at":0},"b":2}"#, false),
            (br#""hello""#, false),
            (br#" "\ud83d\ude00 tab\t" "#, false),
            (b"[1,{\"a\":2}]", false),
            (b"42", false),
            (b"-1.5", false),
            (b"null", false),
            (b"true", false),
        ]
    }

    #[test]
    fn payloads_transform_as_their_values_do() {
        for (payload, plain) in payloads() {
            let shown = String::from_utf8_lossy(payload);
            let out = DefaultProcessor::transform_payload(payload, at(), &WORKER).unwrap();
            let value: Value = serde_json::from_slice(payload).unwrap();
            let expected = DefaultProcessor::transform(value, at(), &WORKER);
            assert_eq!(out.to_value(), expected, "{shown}");
            let mut written = Vec::new();
            out.write_json(&mut written);
            assert_eq!(serde_json::from_slice::<Value>(&written).unwrap(), expected, "{shown}");
            assert!(!written.iter().any(|&b| b == b'\n' || b == b'\r'), "one line: {shown}");
            assert_eq!(matches!(out.0, Repr::Text(_)), plain, "{shown}");
            if plain {
                // The payload's own text, then `_processed`.
                let own = payload.trim_ascii();
                assert!(written.starts_with(&own[..own.len() - 1]), "{shown}");
                assert!(written.ends_with(b",\"worker\":3}}"), "{shown}");
            }
        }
    }

    #[test]
    fn payloads_are_refused_as_value_parsing_refuses_them() {
        let deep_array = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let deep_object = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
        let bad: Vec<&[u8]> = vec![
            b"not json {",
            b"{\"a\":1",
            b"{\"a\":1}}",
            b"{\"a\":1} x",
            b"{\"a\" 1}",
            b"{\"a\":[1,]}",
            b"{a:1}",
            br#"{"a":"\ud800"}"#,
            br#"{"a":"\x"}"#,
            b"{\"a\":1e400}",
            b"{\"a\":\"\xff\"}",
            b"{\"\xff\":1}",
            b"{\"a\":\"\x01\"}",
            b"\"open",
            b"\x0c{}",
            deep_array.as_bytes(),
            deep_object.as_bytes(),
        ];
        for payload in bad {
            let shown = String::from_utf8_lossy(payload);
            let expected = Event::with_bytes("/t", None, None, payload.to_vec()).json_data().unwrap_err();
            let got = DefaultProcessor::transform_payload(payload, at(), &WORKER).unwrap_err();
            assert_eq!(got, expected, "{shown}");
            assert!(Processed::json(payload).is_err(), "{shown}");
        }
        let empty = DefaultProcessor::transform_payload(b"", at(), &WORKER).unwrap_err();
        assert_eq!(empty, SchemaError::EmptyPayload);
    }

    /// Keys serde_json reads as its own with `raw_value` on (as in this
    /// build): such payloads are taken or refused as `Value` parsing does.
    #[test]
    fn serde_json_keys_are_left_to_value_parsing() {
        for payload in [
            &br#"{"$serde_json::private::RawValue":"[1,2]"}"#[..],
            br#"{"\u0024serde_json::private::RawValue":"{\"a\":1}"}"#,
            br#"{"$serde_json::private::RawValue":1}"#,
            br#"{"$serde_json::private::RawValue":"not json"}"#,
            br#"{"a":{"$serde_json::private::RawValue":"x"}}"#,
            br#"{"a":[{"$serde_json::private::Number":"1"}]}"#,
        ] {
            let shown = String::from_utf8_lossy(payload);
            let old = Event::with_bytes("/t", None, None, payload.to_vec())
                .json_data()
                .map(|value| DefaultProcessor::transform(value, at(), &WORKER));
            let new = DefaultProcessor::transform_payload(payload, at(), &WORKER).map(|out| out.to_value());
            assert_eq!(new, old, "{shown}");
            let text = Processed::json(payload);
            assert_eq!(text.is_ok(), serde_json::from_slice::<Value>(payload).is_ok(), "{shown}");
            if let Ok(text) = text {
                assert_eq!(text.to_value(), serde_json::from_slice::<Value>(payload).unwrap(), "{shown}");
            }
        }
    }

    #[test]
    fn a_result_carries_text_output_as_it_is() {
        let event = Event::with_bytes("/t", Some("s".into()), None, br#"{"b":1, "a":[true]}"#.to_vec());
        let output = DefaultProcessor::transform_payload(&event.data, at(), &WORKER).unwrap();
        let result = stream_core::EventResult::answering(&event, Some(3), output.clone());
        let json = result.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains(r#","output":{"b":1, "a":[true],"_processed":{"at":"#), "{text}");
        let back: stream_core::EventResult = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.output, output.to_value());
        assert_eq!(back.event_id, event.id);
        assert_eq!(back.stream_id.as_deref(), Some("s"));
    }

    #[test]
    fn json_text_is_checked_and_trimmed() {
        let out = Processed::json(" {\"a\": [1]}\n").unwrap();
        let mut written = b"x".to_vec();
        out.write_json(&mut written);
        assert_eq!(written, b"x{\"a\": [1]}");
        assert_eq!(out.to_value(), json!({"a": [1]}));
        assert_eq!(Processed::from(json!({"a": [1]})).to_value(), out.to_value());
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
