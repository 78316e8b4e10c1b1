//! Events and results, and their CloudEvents Kafka binary-mode encoding.
//!
//! In binary mode the record value is the payload exactly as it was sent, and
//! the CloudEvents attributes travel as record headers (`ce_id`, `ce_source`,
//! `ce_type`, `ce_time`, `ce_specversion`, `content-type`). Tools such as
//! kcat or Redpanda Console then show the payload untouched, and any
//! CloudEvents-aware consumer understands the metadata.

use std::cell::Cell;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::json::WriteJson;

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

/// A point in time, written as RFC 3339 UTC with microseconds
/// (`2026-11-23T10:00:00.123456Z`) so latency can be measured end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    /// The current wall-clock time, truncated to whole microseconds so that
    /// a value survives a round trip through its text form unchanged.
    pub fn now() -> Self {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self::from_micros(since.as_micros() as i64)
    }

    /// Microseconds since the Unix epoch.
    pub fn from_micros(micros: i64) -> Self {
        let micros = micros.max(0) as u64;
        Self(UNIX_EPOCH + Duration::from_micros(micros))
    }

    /// Microseconds since the Unix epoch.
    pub fn as_micros(self) -> i64 {
        self.0.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
    }

    /// Time elapsed from `self` to `later`, zero if `later` is earlier
    /// (clocks of different hosts can disagree a little).
    pub fn until(self, later: Timestamp) -> Duration {
        later.0.duration_since(self.0).unwrap_or_default()
    }

    /// Parses RFC 3339 text, with or without fractional seconds, in UTC
    /// (`Z`, `+00:00`) or at any other offset (`+02:00`, `-05:30`), as a
    /// producer in another time zone writes it.
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        let bad = |reason: String| SchemaError::BadHeader { name: header::TIME, reason };
        // humantime reads UTC only: another offset is cut off here and
        // applied to the time it reads.
        let (utc_text, offset) = split_offset(text);
        let time = humantime::parse_rfc3339_weak(utc_text)
            .map_err(|e| bad(format!("{text:?} is not an RFC 3339 time: {e}")))?;
        let time = match offset {
            Offset::East(ahead) => time.checked_sub(ahead),
            Offset::West(behind) => time.checked_add(behind),
        };
        time.filter(|t| *t >= UNIX_EPOCH).map(Self).ok_or_else(|| bad(format!("{text:?} is out of range")))
    }
}

/// A time's offset from UTC.
enum Offset {
    /// Local time ahead of UTC (`+HH:MM`).
    East(Duration),
    /// Local time behind UTC (`-HH:MM`).
    West(Duration),
}

/// `text` without its `+HH:MM`/`-HH:MM` offset, and that offset; a time
/// with none (or with `Z`, which humantime reads) is returned whole.
fn split_offset(text: &str) -> (&str, Offset) {
    let none = (text, Offset::East(Duration::ZERO));
    let b = text.as_bytes();
    let Some(at) = b.len().checked_sub(6).filter(|at| *at >= 19) else { return none };
    let (sign, hh, colon, mm) = (b[at], &b[at + 1..at + 3], b[at + 3], &b[at + 4..]);
    if !matches!(sign, b'+' | b'-') || colon != b':' || !hh.iter().chain(mm).all(u8::is_ascii_digit) {
        return none;
    }
    let (hours, minutes) =
        (u64::from((hh[0] - b'0') * 10 + hh[1] - b'0'), u64::from((mm[0] - b'0') * 10 + mm[1] - b'0'));
    if hours > 23 || minutes > 59 {
        return none;
    }
    if matches!(b[at - 1], b'Z' | b'z') {
        // `Z+02:00` is two offsets: left whole for humantime to refuse.
        return none;
    }
    let by = Duration::from_secs(hours * 3600 + minutes * 60);
    let offset = if sign == b'+' { Offset::East(by) } else { Offset::West(by) };
    (&text[..at], offset)
}

/// The latest time the text form can hold: 9999-12-31T23:59:59.999999Z.
const MAX_TEXT_MICROS: u64 = 253_402_300_800_000_000 - 1;

impl Timestamp {
    /// The RFC 3339 text (`2026-11-23T10:00:00.123456Z`), on the stack.
    ///
    /// Written by hand rather than with humantime's `Display` (the crate
    /// still parses, in [`parse`](Self::parse)): every event and result
    /// writes one to five of these, and going through `fmt` into a fresh
    /// `String` cost twice the instructions (callgrind, consumer); and
    /// humantime's fails past the year 9999, where this saturates, while a
    /// record's own timestamp can be anything a producer chose.
    ///
    /// The date and time of day of the last two seconds used on each
    /// thread are kept, so most calls only write the six digits of the
    /// microseconds: a consumer writes an event's time and the time it
    /// processed it, hundreds of thousands of times a second.
    pub fn rfc3339(self) -> Rfc3339 {
        let micros = (self.as_micros() as u64).min(MAX_TEXT_MICROS);
        let (second, frac) = (micros / 1_000_000, (micros % 1_000_000) as u32);
        let mut out = RECENT_SECONDS.with(|recent| recent.text_of(second));
        put_digits(&mut out[20..26], frac);
        Rfc3339(out)
    }
}

/// Writes `value`'s last `out.len()` decimal digits, zero-padded.
fn put_digits(out: &mut [u8], mut value: u32) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The RFC 3339 text of a whole second, its microseconds zero.
fn second_text(second: u64) -> [u8; 27] {
    let (days, day_secs) = (second / 86_400, (second % 86_400) as u32);
    let (year, month, day) = civil_from_days(days as i64);
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    put_digits(&mut out[0..4], year as u32);
    put_digits(&mut out[5..7], month);
    put_digits(&mut out[8..10], day);
    put_digits(&mut out[11..13], day_secs / 3600);
    put_digits(&mut out[14..16], day_secs / 60 % 60);
    put_digits(&mut out[17..19], day_secs % 60);
    out
}

/// The text of the two seconds a thread used last (a cache this small and
/// this specific has no crate). A thread alternating between two seconds,
/// an event's and now, hits both.
struct RecentSeconds {
    seconds: Cell<[u64; 2]>,
    texts: [Cell<[u8; 27]>; 2],
    /// The slot the next miss replaces: the one used less recently.
    next: Cell<usize>,
}

thread_local! {
    // u64::MAX is past the last second the text can hold: never a hit.
    static RECENT_SECONDS: RecentSeconds = const {
        RecentSeconds {
            seconds: Cell::new([u64::MAX; 2]),
            texts: [Cell::new([0; 27]), Cell::new([0; 27])],
            next: Cell::new(0),
        }
    };
}

impl RecentSeconds {
    fn text_of(&self, second: u64) -> [u8; 27] {
        let mut seconds = self.seconds.get();
        if let Some(slot) = seconds.iter().position(|s| *s == second) {
            self.next.set(1 - slot);
            return self.texts[slot].get();
        }
        let slot = self.next.get();
        self.next.set(1 - slot);
        let text = second_text(second);
        seconds[slot] = second;
        self.seconds.set(seconds);
        self.texts[slot].set(text);
        text
    }
}

/// Year, month (1-12) and day (1-31) of a day count since 1970-01-01, in
/// the proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A [`Timestamp`]'s RFC 3339 text, 27 ASCII bytes held inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339([u8; 27]);

impl Rfc3339 {
    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("digits and punctuation are ASCII")
    }

    /// The text's bytes, ASCII.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.rfc3339().as_str())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.rfc3339().as_str())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Parsed from the text where it lies: no `String` per timestamp.
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Timestamp, E> {
                Timestamp::parse(text).map_err(E::custom)
            }
        }
        d.deserialize_str(Text)
    }
}

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
    pub fn from_message<M: Message>(msg: &M) -> Result<Self, SchemaError> {
        let mut id = None;
        let mut source = None;
        let mut event_type = None;
        let mut time = None;
        let mut content_type = None;
        let mut extensions = Vec::new();
        if let Some(headers) = msg.headers() {
            for h in headers.iter() {
                let text = || -> Result<&str, SchemaError> {
                    std::str::from_utf8(h.value.unwrap_or_default()).map_err(|_| SchemaError::BadHeader {
                        name: static_name(h.key),
                        reason: "value is not UTF-8".into(),
                    })
                };
                let value = || text().map(str::to_owned);
                match h.key {
                    header::ID => id = Some(value()?),
                    header::SOURCE => source = Some(value()?),
                    header::TYPE => event_type = Some(value()?),
                    header::TIME => time = Some(Timestamp::parse(text()?)?),
                    header::SPEC_VERSION => {}
                    header::CONTENT_TYPE => content_type = Some(value()?),
                    key => {
                        if let Some(Ok(text)) = h.value.map(|v| std::str::from_utf8(v).map(str::to_owned)) {
                            extensions.push((key.to_owned(), text));
                        }
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

/// W3C trace context (`traceparent`: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`).
pub mod trace {
    /// Whether `value` is a well-formed version-00 `traceparent`.
    pub fn is_valid(value: &str) -> bool {
        let parts: Vec<&str> = value.split('-').collect();
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && hex(parts[2], 16)
            && hex(parts[3], 2)
            && parts[1].bytes().any(|b| b != b'0')
            && parts[2].bytes().any(|b| b != b'0')
    }

    /// A new sampled trace: fresh trace id and span id.
    pub fn new_traceparent() -> String {
        // Random v4 UUIDs: never all zero (their version bits are set), as
        // W3C requires of both ids; one string is written, none in between.
        // Written as hex by uuid's encoder: formatting the two integers
        // through `fmt` took about 1,900 instructions per send in the
        // gateway (callgrind).
        let (mut trace, mut span) = (uuid::Uuid::encode_buffer(), uuid::Uuid::encode_buffer());
        let trace = uuid::Uuid::new_v4().simple().encode_lower(&mut trace);
        let span = &uuid::Uuid::new_v4().simple().encode_lower(&mut span)[..16];
        let mut out = String::with_capacity(55);
        for part in ["00-", trace, "-", span, "-01"] {
            out.push_str(part);
        }
        out
    }

    /// The trace id part of a `traceparent`, for log fields.
    pub fn trace_id(traceparent: &str) -> Option<&str> {
        traceparent.split('-').nth(1)
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

fn static_name(key: &str) -> &'static str {
    header::RESERVED.iter().copied().find(|h| *h == key).unwrap_or("extension")
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
    /// timed when processing finished (`processed_at`).
    pub fn to_event(&self, source: &str, origin: &Event) -> Event
    where
        O: WriteJson,
    {
        let data = self.to_json();
        let mut event = Event::with_bytes(source, self.stream_id.clone(), Some(JSON.into()), data);
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
    /// of a result (a fresh id, `source`, `processed_at`) with the
    /// origin's trace context. The consumer writes one per event, and the
    /// event's seven owned strings were allocated only to be freed.
    pub fn record<'a>(
        &'a self,
        data: &'a [u8],
        source: &str,
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
            id: write_new_id(&mut id),
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
    use rdkafka::message::OwnedMessage;
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
    fn times_at_any_offset_are_the_same_instant() {
        let utc = Timestamp::parse("2026-12-01T10:00:00.250Z").unwrap();
        for text in [
            "2026-12-01T10:00:00.250+00:00",
            "2026-12-01T12:00:00.250+02:00",
            "2026-12-01T04:30:00.250-05:30",
            "2026-12-01 10:00:00.25",
            "2026-12-02T09:59:00.250+23:59",
        ] {
            assert_eq!(Timestamp::parse(text).unwrap(), utc, "{text}");
        }
        let whole = Timestamp::parse("2026-12-01T10:00:00Z").unwrap();
        assert_eq!(Timestamp::parse("2026-12-01T11:00:00+01:00").unwrap(), whole);
        assert_eq!(Timestamp::parse("2026-12-01T09:00:00-01:00").unwrap(), whole);
        for bad in [
            "2026-12-01T10:00:00+24:00",
            "2026-12-01T10:00:00+02:60",
            "2026-12-01T10:00:00+0200",
            "2026-12-01T10:00:00Z+02:00",
            "2026-12-01T10:00:00.5Z+02:00",
            "1970-01-01T00:30:00+01:00",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_deserialise_from_json_text() {
        let t = Timestamp::from_micros(1_763_892_000_123_456);
        // Plain text, and text with an escape (decoded into a scratch buffer).
        for text in [r#""2025-11-23T10:00:00.123456Z""#, r#""2025-11-23T10:00:00.123456\u005a""#] {
            assert_eq!(serde_json::from_str::<Timestamp>(text).unwrap(), t, "{text}");
        }
        assert_eq!(serde_json::from_value::<Timestamp>(json!("2025-11-23T10:00:00.123456Z")).unwrap(), t);
        let err = serde_json::from_str::<Timestamp>(r#""yesterday""#).unwrap_err().to_string();
        assert!(err.contains("\"yesterday\" is not an RFC 3339 time"), "{err}");
        let err = serde_json::from_str::<Timestamp>("1763892000").unwrap_err().to_string();
        assert!(err.contains("an RFC 3339 time"), "{err}");
    }

    #[test]
    fn traceparents_are_generated_valid_and_checked() {
        let fresh = trace::new_traceparent();
        assert!(trace::is_valid(&fresh), "{fresh}");
        assert_ne!(fresh, trace::new_traceparent());
        let span = |t: &str| t.split('-').nth(2).map(str::to_owned);
        assert_ne!(span(&fresh), span(&trace::new_traceparent()), "spans are fresh too");
        assert_eq!(
            trace::trace_id("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        for bad in [
            "",
            "00-abc-def-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        ] {
            assert!(!trace::is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn timestamp_text_matches_humantime_across_the_calendar() {
        // Leap days, century years (2100 is not a leap year, 2000 is), month
        // ends, the epoch and the last representable microsecond.
        let mut samples: Vec<u64> = vec![0, 1, 951_782_400_000_000, 951_868_799_999_999, 4_107_542_400_000_000];
        samples.push(MAX_TEXT_MICROS);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for day in (0..2_932_896).step_by(97) {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            samples.push(day * 86_400_000_000 + (x >> 20) % 86_400_000_000);
        }
        for micros in samples {
            let t = Timestamp::from_micros(micros as i64);
            let expected = humantime::format_rfc3339_micros(t.0).to_string();
            assert_eq!(t.rfc3339().as_str(), expected, "{micros}");
            assert_eq!(t.to_string(), expected);
            assert_eq!(Timestamp::parse(&expected).unwrap(), t);
        }
    }

    #[test]
    fn timestamp_text_stays_right_as_seconds_come_and_go() {
        // Within a second, into the next, back to one still cached, to one
        // no longer cached, alternating between two (an event's time and
        // its processing time), across a day and a year, and saturated
        // past the year 9999.
        let day = 86_400_000_000;
        let micros = [
            1_764_547_200_000_000,
            1_764_547_200_000_001,
            1_764_547_200_999_999,
            1_764_547_201_000_000,
            1_764_547_201_123_456,
            1_764_547_200_500_000,
            1_764_547_202_000_007,
            1_764_547_200_000_007,
            1_764_547_201_654_321,
            1_764_547_200_000_008,
            1_764_547_201_654_322,
            1_767_225_599_999_999,
            1_767_225_600_000_000,
            1_767_225_600_000_000 + day,
            0,
            i64::MAX,
            i64::MAX - 1,
            1,
        ];
        for m in micros {
            let t = Timestamp::from_micros(m);
            let expected = humantime::format_rfc3339_micros(t.0.min(Timestamp::from_micros(MAX_TEXT_MICROS as i64).0));
            assert_eq!(t.rfc3339().as_str(), expected.to_string(), "{m}");
        }
    }

    #[test]
    fn timestamps_past_the_year_9999_saturate_instead_of_failing() {
        let far = Timestamp::from_micros(i64::MAX);
        assert_eq!(far.to_string(), "9999-12-31T23:59:59.999999Z");
        assert_eq!(serde_json::to_string(&far).unwrap(), "\"9999-12-31T23:59:59.999999Z\"");
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
    fn timestamps_keep_microseconds() {
        let t = Timestamp::from_micros(1_763_892_000_123_456);
        assert_eq!(t.to_string(), "2025-11-23T10:00:00.123456Z");
        assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
        assert_eq!(Timestamp::parse("2025-11-23T10:00:00Z").unwrap().as_micros(), 1_763_892_000_000_000);
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
            headers
                .iter()
                .map(|h| (h.key.to_owned(), String::from_utf8(h.value.unwrap().to_vec()).unwrap()))
                .filter(|(k, _)| k != header::ID)
                .collect()
        };
        for with_trace in [true, false] {
            if !with_trace {
                origin.extensions.clear();
                result.stream_id = None;
            }
            let data = result.to_json();
            let event = result.to_event("/consumer", &origin);
            let record = result.record(&data, "/consumer", &origin, "results", true);
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
            assert_ne!(back.id, event.id, "a fresh id");
            assert_eq!(back.time.rfc3339().as_str(), result.processed_at.rfc3339().as_str(), "timed at processed_at");
            let bare = result.record(&data, "/consumer", &origin, "results", false);
            assert!(bare.headers.is_none());
        }
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
