//! Events and results, and their CloudEvents Kafka binary-mode encoding.
//!
//! In binary mode the record value is the payload exactly as it was sent, and
//! the CloudEvents attributes travel as record headers (`ce_id`, `ce_source`,
//! `ce_type`, `ce_time`, `ce_specversion`, `content-type`). Tools such as
//! kcat or Redpanda Console then show the payload untouched, and any
//! CloudEvents-aware consumer understands the metadata.

use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};

use crate::json::WriteJson;
use crate::kafka::{raw_headers, RecordHeaders};

mod time;
pub mod trace;

pub use time::{BadTime, Rfc3339, Timestamp};

/// Record header names used by the binary-mode mapping.
pub mod header {
    pub const ID: &str = "ce_id";
    pub const SOURCE: &str = "ce_source";
    pub const TYPE: &str = "ce_type";
    pub const TIME: &str = "ce_time";
    pub const SPEC_VERSION: &str = "ce_specversion";
    pub const CONTENT_TYPE: &str = "content-type";
    /// W3C trace context, carried from the HTTP request to the result.
    pub const TRACEPARENT: &str = "traceparent";

    /// Headers this mapping owns; user-supplied headers may not use them.
    pub const RESERVED: [&str; 6] = [ID, SOURCE, TYPE, TIME, SPEC_VERSION, CONTENT_TYPE];
}

/// The CloudEvents version this crate writes.
pub const SPEC_VERSION: &str = "1.0";
/// `ce_type` of events published by the toolkit.
pub const EVENT_TYPE: &str = "streamkit.event";
/// `ce_type` of processing results.
pub const RESULT_TYPE: &str = "streamkit.result";
/// Media type of JSON payloads.
pub const JSON: &str = "application/json";

/// Why a record could not be read as an event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchemaError {
    /// A CloudEvents header is present but unusable.
    #[error("header {name}: {reason}")]
    BadHeader { name: &'static str, reason: String },
    /// The record has no value at all.
    #[error("record has no payload")]
    EmptyPayload,
    /// The payload is declared (or assumed) to be JSON but does not parse.
    #[error("payload is not valid JSON: {0}")]
    InvalidJson(String),
    /// The record key, a stream id, is not UTF-8: results are keyed by
    /// their stream id, and a changed key would land them in another
    /// stream (or partition).
    #[error("record key is not UTF-8, so it names no stream")]
    BadKey,
}

/// One event: a payload plus its CloudEvents attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `ce_id`: unique per event; results and acks refer to it.
    pub id: String,
    /// `ce_source`: who produced it, e.g. `/producer-api` or `/publisher`.
    pub source: String,
    /// `ce_type`.
    pub event_type: String,
    /// `ce_time`: when it was sent, with microseconds, for end-to-end latency.
    pub time: Timestamp,
    /// `content-type` of the payload.
    pub content_type: Option<String>,
    /// Record key: the stream id, so one stream's events stay in order.
    pub key: Option<String>,
    /// The payload bytes, exactly as sent.
    pub data: Vec<u8>,
    /// Every other header (user headers, trace context), in order.
    pub extensions: Vec<(String, String)>,
}

impl Event {
    /// A new JSON event with a fresh time-ordered id and the current time.
    pub fn json(source: impl Into<String>, key: Option<String>, value: &serde_json::Value) -> Self {
        Self::with_bytes(source, key, Some(JSON.into()), crate::json::to_vec(value))
    }

    /// A new event carrying arbitrary payload bytes.
    pub fn with_bytes(
        source: impl Into<String>,
        key: Option<String>,
        content_type: Option<String>,
        data: Vec<u8>,
    ) -> Self {
        Self {
            id: new_id(),
            source: source.into(),
            event_type: EVENT_TYPE.into(),
            time: Timestamp::now(),
            content_type,
            key,
            data,
            extensions: Vec::new(),
        }
    }

    /// The record headers of binary mode, extensions last.
    pub fn headers(&self) -> OwnedHeaders {
        Attributes {
            id: &self.id,
            source: &self.source,
            event_type: &self.event_type,
            time: self.time.rfc3339(),
            content_type: self.content_type.as_deref(),
        }
        .headers_with(&self.extensions)
    }

    /// A record for `topic` carrying this event. The record borrows the
    /// event; librdkafka copies the bytes when it is enqueued.
    pub fn record<'a>(&'a self, topic: &'a str) -> FutureRecord<'a, str, [u8]> {
        self.record_without_headers(topic).headers(self.headers())
    }

    /// The event's payload and key only, without the CloudEvents headers:
    /// a smaller record, for readers that need nothing else.
    pub fn record_without_headers<'a>(&'a self, topic: &'a str) -> FutureRecord<'a, str, [u8]> {
        let record = FutureRecord::to(topic).payload(self.data.as_slice());
        match &self.key {
            Some(key) => record.key(key.as_str()),
            None => record,
        }
    }

    /// Reads an event from a consumed record.
    ///
    /// Decoding is lenient about headers that are missing, so records written
    /// by other tools (kcat, a plain producer) can still be processed: a
    /// missing `ce_id` becomes `topic-partition-offset`, a missing `ce_time`
    /// the record's timestamp. A header that is present but malformed is an
    /// error, since guessing would hide a broken producer.
    pub fn from_message<M: Message + RecordHeaders>(msg: &M) -> Result<Self, SchemaError> {
        let mut id = None;
        let mut source = None;
        let mut event_type = None;
        let mut time = None;
        let mut content_type = None;
        let mut extensions = Vec::new();
        // Names are compared as bytes: one that is not UTF-8 is no
        // attribute, and is skipped like an extension whose value is not.
        for (name, raw) in raw_headers(msg) {
            let text = || -> Result<&str, SchemaError> {
                std::str::from_utf8(raw.unwrap_or_default()).map_err(|_| SchemaError::BadHeader {
                    name: attribute_name(name),
                    reason: "value is not UTF-8".into(),
                })
            };
            let value = || text().map(str::to_owned);
            match name {
                n if n == header::ID.as_bytes() => id = Some(value()?),
                n if n == header::SOURCE.as_bytes() => source = Some(value()?),
                n if n == header::TYPE.as_bytes() => event_type = Some(value()?),
                n if n == header::TIME.as_bytes() => {
                    let parsed = Timestamp::parse(text()?);
                    time =
                        Some(parsed.map_err(|e| SchemaError::BadHeader { name: header::TIME, reason: e.to_string() })?);
                }
                n if n == header::SPEC_VERSION.as_bytes() => {}
                n if n == header::CONTENT_TYPE.as_bytes() => content_type = Some(value()?),
                key => {
                    if let (Ok(key), Some(Ok(text))) = (std::str::from_utf8(key), raw.map(std::str::from_utf8)) {
                        extensions.push((key.to_owned(), text.to_owned()));
                    }
                }
            }
        }
        let time = time.unwrap_or_else(|| match msg.timestamp().to_millis() {
            // A hostile or corrupt record may carry any 64-bit timestamp:
            // saturate rather than overflow.
            Some(ms) => Timestamp::from_micros(ms.saturating_mul(1000)),
            None => Timestamp::now(),
        });
        Ok(Self {
            id: id.unwrap_or_else(|| format!("{}-{}-{}", msg.topic(), msg.partition(), msg.offset())),
            source: source.unwrap_or_else(|| format!("kafka:{}", msg.topic())),
            event_type: event_type.unwrap_or_else(|| EVENT_TYPE.into()),
            time,
            content_type,
            key: match msg.key() {
                Some(key) => Some(std::str::from_utf8(key).map_err(|_| SchemaError::BadKey)?.to_owned()),
                None => None,
            },
            data: msg.payload().unwrap_or_default().to_vec(),
            extensions,
        })
    }

    /// The payload parsed as JSON.
    pub fn json_data(&self) -> Result<serde_json::Value, SchemaError> {
        if self.data.is_empty() {
            return Err(SchemaError::EmptyPayload);
        }
        serde_json::from_slice(&self.data).map_err(|e| SchemaError::InvalidJson(e.to_string()))
    }

    /// The value of an extension header.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A fresh time-ordered event id (UUID v7), hyphenated, written straight
/// into its string instead of through `fmt`.
fn new_id() -> String {
    write_new_id(&mut id_buffer()).to_owned()
}

/// Room for an event id's text.
pub type IdBuffer = [u8; uuid::fmt::Hyphenated::LENGTH];

/// An empty [`IdBuffer`].
pub const fn id_buffer() -> IdBuffer {
    [0; uuid::fmt::Hyphenated::LENGTH]
}

/// A fresh time-ordered event id (UUID v7), hyphenated into `buffer`, for
/// senders that write an event's headers without building an [`Event`].
pub fn write_new_id(buffer: &mut IdBuffer) -> &str {
    uuid::Uuid::now_v7().hyphenated().encode_lower(buffer)
}

/// The id of the result that the processor `source` writes for the record
/// `origin` (hyphenated into `buffer`), `scope` telling apart processors
/// that share a source (the consumer passes its group): a UUID (version 8)
/// made from a SHA-256 of those two and the record's source, id, time and
/// key. A replayed record's result (after a crash, a rebalance, a retry)
/// carries the same id as the first, so deduplication by `ce_source` and
/// `ce_id` downstream, as CloudEvents allows, sees one result per record;
/// two records that share an id but not their time or key (an idempotency
/// key sent again after its TTL) get results with ids of their own. The
/// payload is left out: it would add a SHA-256 block per 64 bytes of it to
/// every result (the id as it is takes 274 ns against a fresh UUID v7's
/// 102, `cargo bench -p stream-core`), and two records alike in all of the
/// above, down to the microsecond, are one event sent twice.
pub fn write_result_id<'b>(source: &str, scope: &str, origin: &Event, buffer: &'b mut IdBuffer) -> &'b str {
    let time = origin.time.as_micros().to_le_bytes();
    let key = origin.key.as_deref().map(str::as_bytes);
    let digest = digest_of([
        source.as_bytes(),
        scope.as_bytes(),
        origin.source.as_bytes(),
        origin.id.as_bytes(),
        &time,
        // A missing key and an empty one are different records.
        if key.is_some() { b"k" } else { b"-" },
        key.unwrap_or_default(),
    ]);
    id_of_digest(&digest).hyphenated().encode_lower(buffer)
}

/// A SHA-256 of `parts` in order, each length-prefixed, so that no two
/// different lists give the same bytes.
pub fn digest_of<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// The UUID (version 8) made of a digest's first 16 bytes: an id derived
/// from what the digest covers.
pub fn id_of_digest(digest: &[u8; 32]) -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::new_v8(bytes)
}

/// An event's CloudEvents attributes, borrowed: what [`Event::headers`]
/// writes, for senders that hold them without an [`Event`] (the
/// publisher writes each record's headers from stack buffers and
/// constants, with no allocation of its own).
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    pub id: &'a str,
    pub source: &'a str,
    pub event_type: &'a str,
    pub time: Rfc3339,
    pub content_type: Option<&'a str>,
}

impl Attributes<'_> {
    /// The record headers of binary mode.
    pub fn headers(&self) -> OwnedHeaders {
        self.headers_with::<&str, &str>(&[])
    }

    /// The record headers of binary mode, `extensions` last.
    pub fn headers_with<K: AsRef<str>, V: AsRef<str>>(&self, extensions: &[(K, V)]) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(6 + extensions.len())
            .insert(Header { key: header::ID, value: Some(self.id) })
            .insert(Header { key: header::SOURCE, value: Some(self.source) })
            .insert(Header { key: header::TYPE, value: Some(self.event_type) })
            .insert(Header { key: header::TIME, value: Some(self.time.as_bytes()) })
            .insert(Header { key: header::SPEC_VERSION, value: Some(SPEC_VERSION) });
        if let Some(content_type) = self.content_type {
            headers = headers.insert(Header { key: header::CONTENT_TYPE, value: Some(content_type) });
        }
        for (key, value) in extensions {
            headers = headers.insert(Header { key: key.as_ref(), value: Some(value.as_ref()) });
        }
        headers
    }
}

fn attribute_name(key: &[u8]) -> &'static str {
    header::RESERVED.iter().copied().find(|h| h.as_bytes() == key).unwrap_or("extension")
}

/// What processing one event produced; the value of a record on the results
/// topic (keyed by stream id) and the frame a WebSocket client receives.
///
/// `O` is the output's type: a [`serde_json::Value`] wherever results are
/// read or built as values; the consumer writes its processor's output,
/// which may be JSON text already (see `consumer::Processed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventResult<O = serde_json::Value> {
    /// `ce_id` of the event this result answers, for correlation.
    pub event_id: String,
    /// Stream (record key) the event belonged to.
    pub stream_id: Option<String>,
    /// When the event was sent (its `ce_time`).
    pub event_time: Timestamp,
    /// When processing finished.
    pub processed_at: Timestamp,
    /// Which worker processed it.
    pub worker_id: Option<u32>,
    /// `processed_at - event_time` in microseconds.
    pub latency_us: u64,
    /// The processed payload.
    pub output: O,
    /// W3C trace context of the source event, so one request can be followed
    /// from the HTTP call through the consumer's logs to this result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl<O> EventResult<O> {
    /// The result of processing `event` into `output`, finished now: it
    /// carries the event's id, stream, send time and trace context, and the
    /// latency from the send time to now.
    pub fn answering(event: &Event, worker_id: Option<u32>, output: O) -> Self {
        let processed_at = Timestamp::now();
        Self {
            event_id: event.id.clone(),
            stream_id: event.key.clone(),
            event_time: event.time,
            processed_at,
            worker_id,
            latency_us: event.time.until(processed_at).as_micros() as u64,
            output,
            traceparent: event.extension(header::TRACEPARENT).map(str::to_owned),
        }
    }

    /// The result as JSON, written straight into one buffer: the
    /// timestamps as they are, every other string through
    /// [`json::write_str`](crate::json::write_str), the output through its
    /// [`WriteJson`]. With a `Value` output it is byte for byte what
    /// `Serialize` writes (the tests hold the two together).
    pub fn to_json(&self) -> Vec<u8>
    where
        O: WriteJson,
    {
        use crate::json::{write_int, write_str};
        let mut out = Vec::with_capacity(320);
        out.extend_from_slice(b"{\"event_id\":");
        write_str(&mut out, &self.event_id);
        out.extend_from_slice(b",\"stream_id\":");
        match &self.stream_id {
            Some(stream) => write_str(&mut out, stream),
            None => out.extend_from_slice(b"null"),
        }
        // RFC 3339 text is digits and `-:.TZ`: nothing to escape.
        out.extend_from_slice(b",\"event_time\":\"");
        out.extend_from_slice(self.event_time.rfc3339().as_bytes());
        out.extend_from_slice(b"\",\"processed_at\":\"");
        out.extend_from_slice(self.processed_at.rfc3339().as_bytes());
        out.extend_from_slice(b"\",\"worker_id\":");
        match self.worker_id {
            Some(worker) => write_int(&mut out, worker),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"latency_us\":");
        write_int(&mut out, self.latency_us);
        out.extend_from_slice(b",\"output\":");
        self.output.write_json(&mut out);
        if let Some(trace) = &self.traceparent {
            out.extend_from_slice(b",\"traceparent\":");
            write_str(&mut out, trace);
        }
        out.push(b'}');
        out
    }

    /// The result as a CloudEvent for the results topic: JSON payload,
    /// keyed by the stream id, trace context carried over from the source,
    /// timed when processing finished (`processed_at`), with the id
    /// [`write_result_id`] gives it (no scope).
    pub fn to_event(&self, source: &str, origin: &Event) -> Event
    where
        O: WriteJson,
    {
        let data = self.to_json();
        let mut event = Event::with_bytes(source, self.stream_id.clone(), Some(JSON.into()), data);
        event.id = write_result_id(source, "", origin, &mut id_buffer()).to_owned();
        event.event_type = RESULT_TYPE.into();
        event.time = self.processed_at;
        if let Some(trace) = origin.extension(header::TRACEPARENT) {
            event.extensions.push((header::TRACEPARENT.into(), trace.into()));
        }
        event
    }

    /// The record [`to_event`](Self::to_event)'s event makes, written
    /// without one: `data` (this result's [`to_json`](Self::to_json))
    /// keyed by the stream id and, `with_headers`, the CloudEvents headers
    /// of a result (its [id](write_result_id) in `scope`, `source`, `processed_at`) with the
    /// origin's trace context. The consumer writes one per event, and the
    /// event's seven owned strings were allocated only to be freed.
    pub fn record<'a>(
        &'a self,
        data: &'a [u8],
        source: &str,
        scope: &str,
        origin: &Event,
        topic: &'a str,
        with_headers: bool,
    ) -> FutureRecord<'a, str, [u8]> {
        let mut record = FutureRecord::to(topic).payload(data);
        if let Some(stream) = &self.stream_id {
            record = record.key(stream.as_str());
        }
        if !with_headers {
            return record;
        }
        let mut id = id_buffer();
        let attributes = Attributes {
            id: write_result_id(source, scope, origin, &mut id),
            source,
            event_type: RESULT_TYPE,
            // The result came to be when processing finished.
            time: self.processed_at.rfc3339(),
            content_type: Some(JSON),
        };
        let headers = match origin.extension(header::TRACEPARENT) {
            Some(trace) => attributes.headers_with(&[(header::TRACEPARENT, trace)]),
            None => attributes.headers(),
        };
        record.headers(headers)
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Headers, OwnedMessage};
    use rdkafka::Timestamp as KafkaTimestamp;
    use serde_json::json;

    use super::*;

    /// A record as a plain producer writes it: no headers at all, only a
    /// payload, maybe a key, and its create time; at `raw`, partition 1,
    /// offset 7.
    fn bare_record(payload: &[u8], key: Option<&[u8]>, created_ms: i64) -> OwnedMessage {
        OwnedMessage::new(
            Some(payload.to_vec()),
            key.map(<[u8]>::to_vec),
            "raw".into(),
            KafkaTimestamp::CreateTime(created_ms),
            1,
            7,
            None,
        )
    }

    #[test]
    fn round_trips_every_kind_of_json_payload() {
        for value in [json!({"a": 1, "b": [true, null]}), json!("hello"), json!(42), json!([1, 2]), json!(null)] {
            let mut event = Event::json("/test", Some("stream-1".into()), &value);
            event.extensions.push(("traceparent".into(), "00-abc-def-01".into()));
            let back = Event::from_message(&crate::testing::consumed(&event)).unwrap();
            assert_eq!(back, event);
            assert_eq!(back.json_data().unwrap(), value);
        }
    }

    #[test]
    fn round_trips_non_json_bytes_and_no_key() {
        let event = Event::with_bytes("/test", None, Some("application/octet-stream".into()), vec![0, 159, 146, 150]);
        let back = Event::from_message(&crate::testing::consumed(&event)).unwrap();
        assert_eq!(back, event);
        assert!(matches!(back.json_data(), Err(SchemaError::InvalidJson(_))));
    }

    #[test]
    fn headers_follow_the_binary_mode_names() {
        let event = Event::json("/test", None, &json!({}));
        let headers = event.headers();
        let names: Vec<_> = headers.iter().map(|h| h.key.to_string()).collect();
        assert_eq!(names, ["ce_id", "ce_source", "ce_type", "ce_time", "ce_specversion", "content-type"]);
        let time = std::str::from_utf8(headers.get(3).value.unwrap()).unwrap().to_string();
        // Microsecond precision: 2026-11-23T10:00:00.123456Z
        assert_eq!(time.len(), 27, "{time}");
        assert!(time.ends_with('Z'));
    }

    #[test]
    fn records_without_cloudevents_headers_still_decode() {
        let msg = bare_record(b"{\"x\":1}", Some(b"k"), 1_700_000_000_000);
        let event = Event::from_message(&msg).unwrap();
        assert_eq!(event.id, "raw-1-7");
        assert_eq!(event.key.as_deref(), Some("k"));
        assert_eq!(event.time.as_micros(), 1_700_000_000_000_000);
    }

    #[test]
    fn extreme_record_timestamps_do_not_overflow() {
        for ms in [i64::MAX, i64::MIN, -1] {
            let msg = bare_record(b"1", None, ms);
            let event = Event::from_message(&msg).unwrap();
            assert!(event.time.as_micros() >= 0, "{ms}");
        }
    }

    #[test]
    fn a_key_that_is_not_utf8_is_an_error_not_another_key() {
        let msg = bare_record(b"{}", Some(b"\xff\xfe"), 0);
        assert_eq!(Event::from_message(&msg).unwrap_err(), SchemaError::BadKey);
        let msg = bare_record(b"{}", Some(b"s-1"), 0);
        assert_eq!(Event::from_message(&msg).unwrap().key.as_deref(), Some("s-1"));
    }

    #[test]
    fn a_malformed_time_header_is_an_error() {
        let headers = OwnedHeaders::new().insert(Header { key: header::TIME, value: Some("yesterday") });
        let msg =
            OwnedMessage::new(Some(b"1".to_vec()), None, "t".into(), KafkaTimestamp::NotAvailable, 0, 0, Some(headers));
        let err = Event::from_message(&msg).unwrap_err();
        assert!(matches!(err, SchemaError::BadHeader { name: "ce_time", .. }), "{err}");
        assert!(err.to_string().contains("\"yesterday\" is not an RFC 3339 time"), "{err}");
        let headers = OwnedHeaders::new().insert(Header { key: header::TIME, value: Some(&b"\xff"[..]) });
        let msg =
            OwnedMessage::new(Some(b"1".to_vec()), None, "t".into(), KafkaTimestamp::NotAvailable, 0, 0, Some(headers));
        let err = Event::from_message(&msg).unwrap_err();
        assert_eq!(err, SchemaError::BadHeader { name: "ce_time", reason: "value is not UTF-8".into() });
    }

    #[test]
    fn a_record_stamped_past_the_year_9999_still_gets_a_result() {
        // No ce_time header: the event time comes from the record's own
        // timestamp, which a producer may set to anything.
        let msg = bare_record(b"{}", Some(b"s"), i64::MAX);
        let event = Event::from_message(&msg).unwrap();
        let result = EventResult::answering(&event, Some(0), serde_json::json!({}));
        let record = result.to_event("/consumer", &event);
        let back: serde_json::Value = serde_json::from_slice(&record.data).unwrap();
        assert_eq!(back["event_time"], "9999-12-31T23:59:59.999999Z");
        assert!(record.headers().iter().any(|h| h.key == header::TIME));
    }

    #[test]
    fn event_ids_are_hyphenated_v7_uuids() {
        let id = new_id();
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(parsed.hyphenated().to_string(), id);
    }

    #[test]
    fn a_result_answers_its_event() {
        let mut origin = Event::json("/t", Some("s".into()), &json!("x"));
        origin.time = Timestamp::from_micros(origin.time.as_micros() - 1_500);
        origin
            .extensions
            .push((header::TRACEPARENT.into(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()));
        let result = EventResult::answering(&origin, Some(3), json!({"ok": true}));
        assert_eq!(result.event_id, origin.id);
        assert_eq!(result.stream_id.as_deref(), Some("s"));
        assert_eq!(result.event_time, origin.time);
        assert_eq!(result.worker_id, Some(3));
        assert!(result.latency_us >= 1_500, "{}", result.latency_us);
        assert_eq!(result.latency_us, origin.time.until(result.processed_at).as_micros() as u64);
        assert_eq!(result.traceparent.as_deref(), origin.extension(header::TRACEPARENT));
    }

    /// A result of `origin` on stream `s`, processed now.
    fn result_of(origin: &Event) -> EventResult {
        EventResult {
            event_id: origin.id.clone(),
            stream_id: Some("s".into()),
            event_time: origin.time,
            processed_at: Timestamp::now(),
            worker_id: Some(2),
            latency_us: 10,
            output: json!({"ok": true}),
            traceparent: None,
        }
    }

    #[test]
    fn results_serialise_with_their_correlation_id() {
        let origin = Event::json("/t", Some("s".into()), &json!("x"));
        let result = result_of(&origin);
        let event = result.to_event("/consumer", &origin);
        assert_eq!(event.event_type, RESULT_TYPE);
        assert_eq!(event.key.as_deref(), Some("s"));
        let back: EventResult = serde_json::from_slice(&event.data).unwrap();
        assert_eq!(back, result);
    }

    #[test]
    fn a_result_record_carries_what_its_event_would() {
        let mut origin = Event::json("/t", Some("s".into()), &json!("x"));
        origin
            .extensions
            .push((header::TRACEPARENT.into(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()));
        let mut result = result_of(&origin);
        let named = |headers: &OwnedHeaders| -> Vec<(String, String)> {
            headers.iter().map(|h| (h.key.to_owned(), String::from_utf8(h.value.unwrap().to_vec()).unwrap())).collect()
        };
        for with_trace in [true, false] {
            if !with_trace {
                origin.extensions.clear();
                result.stream_id = None;
            }
            let data = result.to_json();
            let event = result.to_event("/consumer", &origin);
            let record = result.record(&data, "/consumer", "", &origin, "results", true);
            assert_eq!(record.payload, Some(event.data.as_slice()));
            assert_eq!(record.key, event.key.as_deref());
            let headers = record.headers.as_ref().unwrap();
            assert_eq!(named(headers), named(&event.headers()));
            assert_eq!(headers.count(), 6 + usize::from(with_trace));
            let consumed = OwnedMessage::new(
                record.payload.map(<[u8]>::to_vec),
                record.key.map(|k| k.as_bytes().to_vec()),
                "results".into(),
                KafkaTimestamp::NotAvailable,
                0,
                0,
                record.headers.clone(),
            );
            let back = Event::from_message(&consumed).unwrap();
            assert_eq!(back.id, event.id, "the same id either way");
            assert_ne!(back.id, origin.id, "the result's own id, not its event's");
            assert_eq!(back.time.rfc3339().as_str(), result.processed_at.rfc3339().as_str(), "timed at processed_at");
            let bare = result.record(&data, "/consumer", "", &origin, "results", false);
            assert!(bare.headers.is_none());
        }
    }

    #[test]
    fn a_result_id_is_the_same_each_time_its_event_is_processed() {
        let origin = Event::json("/gateway", Some("s".into()), &json!("x"));
        let id_of = |source: &str, scope: &str, origin: &Event| {
            write_result_id(source, scope, origin, &mut id_buffer()).to_owned()
        };
        let first = result_of(&origin).to_event("/consumer", &origin);
        // Processed again later (a replay after a crash), by another worker.
        let mut again = result_of(&origin);
        again.processed_at = Timestamp::from_micros(again.processed_at.as_micros() + 1_000_000);
        again.worker_id = Some(9);
        let data = again.to_json();
        let record = again.record(&data, "/consumer", "", &origin, "results", true);
        let consumed = OwnedMessage::new(None, None, "r".into(), KafkaTimestamp::NotAvailable, 0, 0, record.headers);
        let header_id = header_text(&consumed, header::ID);
        assert_eq!(header_id, first.id);
        assert_eq!(uuid::Uuid::parse_str(&first.id).unwrap().get_version_num(), 8);

        // Another event; the same id from another source; the same id and
        // source with another time (an idempotency key sent again after its
        // TTL) or key (none, or empty); another processor or group: each
        // its own id.
        let other = Event::json("/gateway", Some("s".into()), &json!("x"));
        let with = |change: &dyn Fn(&mut Event)| {
            let mut event = origin.clone();
            change(&mut event);
            event
        };
        let variants = [
            other,
            with(&|e| e.source = "/elsewhere".into()),
            with(&|e| e.time = Timestamp::from_micros(e.time.as_micros() + 1)),
            with(&|e| e.key = None),
            with(&|e| e.key = Some(String::new())),
        ];
        let mut ids =
            vec![id_of("/consumer", "", &origin), id_of("/other", "", &origin), id_of("/consumer", "g2", &origin)];
        ids.extend(variants.iter().map(|event| id_of("/consumer", "", event)));
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "{ids:?}");
        assert_eq!(ids[0], first.id);
        assert_eq!(id_of("/consumer", "", &origin.clone()), first.id, "a copy of the record is the same record");
    }

    fn header_text(msg: &OwnedMessage, name: &str) -> String {
        let value = crate::kafka::raw_header(msg, name).flatten().expect("the header");
        String::from_utf8(value.to_vec()).unwrap()
    }

    #[test]
    fn results_are_written_as_their_serialize_writes_them() {
        let base = EventResult {
            event_id: "0198f3c2-7a1e-7c3b-9d2e-1f0a2b3c4d5e".into(),
            stream_id: Some("stream-7".into()),
            event_time: Timestamp::from_micros(1_763_892_000_123_456),
            processed_at: Timestamp::from_micros(i64::MAX),
            worker_id: Some(u32::MAX),
            latency_us: u64::MAX,
            output: json!({"seq": 1, "text": "plain", "_processed": {"at": "2025-11-23T10:00:00.123456Z"}}),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        };
        let odd = EventResult {
            // Ids and stream ids come from other producers' headers and keys.
            event_id: "id \"quoted\" \\ \u{1}".into(),
            stream_id: None,
            event_time: Timestamp::from_micros(0),
            worker_id: None,
            latency_us: 0,
            output: json!(["ünïcödé\n", null, -1.5, {"": {}}]),
            traceparent: None,
            ..base.clone()
        };
        let empty =
            EventResult { event_id: String::new(), stream_id: Some(String::new()), output: json!(""), ..base.clone() };
        for result in [base, odd, empty] {
            assert_eq!(
                String::from_utf8(result.to_json()).unwrap(),
                serde_json::to_string(&result).unwrap(),
                "{result:?}"
            );
        }
    }
}
