//! A result record framed for delivery: its JSON exactly as the consumer
//! wrote it, with its type and cursor put in front, built once and shared
//! by every subscriber.

use axum::extract::ws::Utf8Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use stream_core::schema::{EventResult, Timestamp};

use crate::cursor::{stream_tag, Cursor, Pos};

/// FNV-1a, 64 bits, of an event id's JSON text: what per-subscriber
/// deduplication remembers instead of the id itself.
fn event_hash(raw: &str) -> u64 {
    raw.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, b| (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// One result as it is delivered: the record's JSON exactly as the
/// consumer wrote it, with its type and cursor in front, built once and
/// shared by every subscriber.
#[derive(Debug)]
pub struct Delivered {
    /// `{"type":"result","cursor":"...", ...the result's fields}`.
    pub frame: Utf8Bytes,
    /// Where the result record is, for resuming and for joining a catch-up
    /// read with the live feed without a gap or a repeat.
    pub pos: Pos,
    /// Hash of the result's `event_id` (of its position when it has none),
    /// for deduplication.
    pub event: u64,
    /// When the event the result is for happened, if the result says.
    pub event_time: Option<Timestamp>,
    /// Length of the cursor inside the frame.
    cursor_len: u8,
}

/// The hash [`Delivered::event`] holds for a result of the event `id`:
/// that of the id's JSON text, as a result writes it.
pub fn event_key(id: &str) -> u64 {
    // An id with nothing to escape (a UUID, as every id made here) is its
    // JSON text in quotes: hashed as it stands, without writing it out.
    if id.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        let step = |hash: u64, b: u8| (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        let open = step(0xcbf2_9ce4_8422_2325, b'"');
        return step(id.bytes().fold(open, step), b'"');
    }
    match serde_json::to_string(id) {
        Ok(text) => event_hash(&text),
        Err(_) => 0,
    }
}

const FRAME_HEAD: &str = "{\"type\":\"result\",\"cursor\":\"";

/// The fields of a result the router itself reads; the rest (above all the
/// output, of any size) is passed through as bytes, never parsed into a
/// tree and written again. Only the stream is needed (the record key, else
/// `stream_id`), so any processor's JSON objects reach their subscribers:
/// without an `event_id` a result is told apart by its position, and
/// without an `event_time` its lag is not measured. An object with a
/// `type` or `cursor` of its own is not one: the frame puts the gateway's
/// in front, and a client would read one or the other.
#[derive(Deserialize)]
struct ResultHead<'a> {
    #[serde(default, borrow)]
    event_id: Option<&'a RawValue>,
    /// Read only when the record has no key, and only as text.
    #[serde(default, borrow)]
    stream_id: Option<&'a RawValue>,
    /// Read as a time only when it is one (RFC 3339).
    #[serde(default, borrow)]
    event_time: Option<&'a RawValue>,
    /// Whether there is one at all: `null` too (an `Option` reads it as
    /// absent), since a client reading the frame's last `type` or `cursor`
    /// would lose its place on a `null`.
    #[serde(default, rename = "type", deserialize_with = "present")]
    own_type: bool,
    #[serde(default, deserialize_with = "present")]
    cursor: bool,
}

/// A field that is there, whatever its value.
fn present<'de, D: serde::Deserializer<'de>>(field: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(field).map(|_| true)
}

/// A result record read and framed, with the stream it belongs to.
#[derive(Debug)]
pub struct Decoded {
    pub delivered: Delivered,
    pub stream: String,
}

/// Why a record was not routed.
#[derive(Debug, PartialEq, Eq)]
pub enum Undecodable {
    /// Not a result object.
    NotAResult,
    /// Neither a key nor a `stream_id`: it belongs to no stream.
    NoStream,
}

impl Delivered {
    /// A result record's value framed for delivery, with the stream it
    /// belongs to: the record key, else the result's `stream_id`.
    pub fn decode(value: &[u8], key: Option<&[u8]>, pos: Pos) -> Result<Decoded, Undecodable> {
        // UTF-8 checked once for the whole value: serde_json reading a
        // `str` checks no string again (from bytes it checks every key and
        // string it reads, about 1,000 instructions per result).
        let text = std::str::from_utf8(value).map_err(|_| Undecodable::NotAResult)?;
        let head: ResultHead<'_> = serde_json::from_str(text).map_err(|_| Undecodable::NotAResult)?;
        if head.own_type || head.cursor {
            return Err(Undecodable::NotAResult);
        }
        let stream = match key.and_then(|k| std::str::from_utf8(k).ok()) {
            Some(key) => key.to_owned(),
            None => head
                .stream_id
                .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
                .ok_or(Undecodable::NoStream)?,
        };
        let text = text.trim_ascii();
        let event = match head.event_id {
            Some(id) => event_hash(id.get()),
            None => event_hash(&format!("@{}:{}", pos.partition, pos.offset)),
        };
        // A time is plain ASCII: a string with escapes in it is not one.
        let event_time = head
            .event_time
            .and_then(|raw| raw.get().strip_prefix('"')?.strip_suffix('"'))
            .and_then(|text| Timestamp::parse(text).ok());
        let delivered = Self::frame(text, &stream, pos, event, event_time).ok_or(Undecodable::NotAResult)?;
        Ok(Decoded { delivered, stream })
    }

    /// The frame of a result object: its own text with `"type":"result"`
    /// and its cursor put in front of its first field.
    fn frame(text: &str, stream: &str, pos: Pos, event: u64, event_time: Option<Timestamp>) -> Option<Self> {
        let body = text.strip_prefix('{')?.trim_start();
        let mut frame = String::with_capacity(text.len() + FRAME_HEAD.len() + 40);
        frame.push_str(FRAME_HEAD);
        Cursor::after(pos).write(stream_tag(stream), &mut frame);
        let cursor_len = (frame.len() - FRAME_HEAD.len()) as u8;
        frame.push('"');
        if !body.starts_with('}') {
            frame.push(',');
        }
        frame.push_str(body);
        Some(Self { frame: frame.into(), pos, event, event_time, cursor_len })
    }

    /// A delivered result from a result value (tests, and results built here).
    pub fn new(result: &EventResult, pos: Pos) -> Self {
        let text = serde_json::to_string(result).expect("results serialise");
        let event = serde_json::to_string(&result.event_id).expect("ids serialise");
        let stream = result.stream_id.as_deref().unwrap_or_default();
        Self::frame(&text, stream, pos, event_hash(&event), Some(result.event_time)).expect("a result is a JSON object")
    }

    /// This result's cursor: a client that has it resumes right after it.
    pub fn cursor(&self) -> &str {
        &self.frame.as_str()[FRAME_HEAD.len()..FRAME_HEAD.len() + self.cursor_len as usize]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    pub(crate) fn result(n: u64) -> Arc<Delivered> {
        Arc::new(Delivered::new(
            &EventResult {
                event_id: format!("e{n}"),
                stream_id: Some("s".into()),
                event_time: Timestamp::from_micros(1),
                processed_at: Timestamp::from_micros(2),
                worker_id: Some(0),
                latency_us: n,
                output: json!({"n": n}),
                traceparent: None,
            },
            Pos { partition: 1, offset: n as i64 },
        ))
    }

    pub(crate) fn latency(d: &Delivered) -> u64 {
        serde_json::from_str::<EventResult>(d.frame.as_str()).unwrap().latency_us
    }

    #[test]
    fn an_event_key_is_the_hash_of_the_id_as_a_result_writes_it() {
        for id in ["0193a8f2-7c1e-7d4a-9b1e-3f2a1c0d9e8f", "", "é", "quote\"d", "back\\slash", "tab\t"] {
            let text = serde_json::to_string(id).unwrap();
            assert_eq!(event_key(id), event_hash(&text), "{id:?}");
        }
    }

    #[test]
    fn records_that_are_not_results_are_refused() {
        let pos = Pos { partition: 0, offset: 0 };
        for bad in [
            &b"not json"[..],
            b"[1]",
            b"\"text\"",
            b"[\"e\", \"s\", 1]",
            b"{\"event_id\": ",
            b"{\"type\": \"x\", \"output\": 1}",
            b"{\"cursor\": \"c\"}",
            b"{\"type\": null, \"output\": 1}",
            b"{\"output\": 1, \"cursor\": null}",
        ] {
            assert_eq!(Delivered::decode(bad, Some(b"s"), pos).unwrap_err(), Undecodable::NotAResult);
        }
        let good = serde_json::to_vec(&serde_json::from_str::<EventResult>(result(3).frame.as_str()).unwrap()).unwrap();
        let decoded = Delivered::decode(&good, None, pos).unwrap();
        assert_eq!(decoded.stream, "s");
        assert_eq!(latency(&decoded.delivered), 3);
        assert_eq!(Delivered::decode(&good, Some(b"key"), pos).unwrap().stream, "key", "the key wins");
        let keyless = br#"{"event_id":"e","event_time":"2025-01-01T00:00:00Z"}"#;
        assert_eq!(Delivered::decode(keyless, None, pos).unwrap_err(), Undecodable::NoStream);
        // A stream_id that is not text names no stream; the key still does.
        let numbered = br#"{"stream_id": 5}"#;
        assert_eq!(Delivered::decode(numbered, None, pos).unwrap_err(), Undecodable::NoStream);
        assert_eq!(Delivered::decode(numbered, Some(b"s"), pos).unwrap().stream, "s");
    }

    /// Another processor's results: any JSON object with a stream reaches
    /// its subscribers, with or without our fields.
    #[test]
    fn any_object_with_a_stream_is_a_result() {
        let at = |offset| Pos { partition: 2, offset };
        let decoded = Delivered::decode(br#"{"output":"HELLO"}"#, Some(b"s"), at(5)).unwrap();
        assert_eq!(decoded.stream, "s");
        assert_eq!(decoded.delivered.event_time, None);
        let frame: serde_json::Value = serde_json::from_str(decoded.delivered.frame.as_str()).unwrap();
        assert_eq!(frame, json!({"type": "result", "cursor": decoded.delivered.cursor(), "output": "HELLO"}));
        // Without an event id, a result is its position: the same record read
        // twice is one result, two records are two.
        let again = Delivered::decode(br#"{"output":"HELLO"}"#, Some(b"s"), at(5)).unwrap();
        let next = Delivered::decode(br#"{"output":"HELLO"}"#, Some(b"s"), at(6)).unwrap();
        assert_eq!(decoded.delivered.event, again.delivered.event);
        assert_ne!(decoded.delivered.event, next.delivered.event);
        let empty = Delivered::decode(b"{}", Some(b"s"), at(7)).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(empty.delivered.frame.as_str()).unwrap()["type"],
            "result"
        );
        let odd = br#"{"stream_id":"t","event_id":7,"event_time":"yesterday"}"#;
        let decoded = Delivered::decode(odd, None, at(8)).unwrap();
        assert_eq!((decoded.stream.as_str(), decoded.delivered.event_time), ("t", None));
        let timed = br#"{"event_time":"2025-01-01T00:00:00Z"}"#;
        assert!(Delivered::decode(timed, Some(b"s"), at(9)).unwrap().delivered.event_time.is_some());
    }

    #[tokio::test]
    async fn frames_flatten_the_result_behind_its_cursor() {
        let delivered = result(7);
        let frame: serde_json::Value = serde_json::from_str(delivered.frame.as_str()).unwrap();
        assert_eq!(frame["type"], "result");
        assert_eq!(frame["event_id"], "e7");
        assert_eq!(frame["output"]["n"], 7);
        assert_eq!(frame["stream_id"], "s");
        assert_eq!(frame["cursor"], delivered.cursor());
        assert_eq!(Cursor::parse(delivered.cursor(), "s"), Ok(Cursor { partition: 1, next: 8 }));
        assert_eq!(delivered.event, result(7).event, "the same event id, the same hash");
        assert_ne!(delivered.event, result(8).event);
    }
}
