//! Dead letters: how an event that failed processing is written to the DLQ
//! topic.
//!
//! The dead letter is the original record (same key, same payload bytes, all
//! original headers including `ce_*`, so it can be replayed as is) plus
//! headers saying what went wrong and where the record came from. When even
//! that is too large for the broker (an event near the size limit whose
//! result was refused for its size), it is written without the payload and
//! with [`header::PAYLOAD_DROPPED`]; when even that is too large (headers of
//! a megabyte), as a reference only: no key, no payload, none of the
//! event's headers, with [`header::HEADERS_DROPPED`]. The event itself is
//! still in its topic, where the `dlq_source_*` headers point.

use rdkafka::message::{Header, Message, OwnedHeaders};
use stream_core::kafka::RecordHeaders;
use stream_core::schema::Timestamp;

/// Header names added to dead letters.
pub mod header {
    /// Human-readable reason.
    pub const ERROR: &str = "dlq_error";
    /// Stable short name of the reason (`invalid_json`, `bad_header`, ...).
    pub const ERROR_KIND: &str = "dlq_error_kind";
    /// Topic the event was consumed from.
    pub const SOURCE_TOPIC: &str = "dlq_source_topic";
    /// Partition the event was consumed from.
    pub const SOURCE_PARTITION: &str = "dlq_source_partition";
    /// Offset of the event in that partition.
    pub const SOURCE_OFFSET: &str = "dlq_source_offset";
    /// When it was dead-lettered (RFC 3339, microseconds).
    pub const TIME: &str = "dlq_time";
    /// Consumer group that gave up on it.
    pub const GROUP: &str = "dlq_group";
    /// Worker that gave up on it.
    pub const WORKER: &str = "dlq_worker";
    /// On a dead letter written without the event's payload, because the
    /// whole was too large for the broker: the payload's size in bytes.
    pub const PAYLOAD_DROPPED: &str = "dlq_payload_dropped";
    /// On a dead letter that is only a reference to the event (no payload,
    /// none of its headers, no key), because even without the payload it
    /// was too large: how many headers the event had.
    pub const HEADERS_DROPPED: &str = "dlq_headers_dropped";
}

/// The longest [`header::ERROR`] kept, in bytes: a reason quoting a hostile
/// header (a `ce_time` of 600 KB, say) would otherwise double the letter,
/// past the broker's limit.
pub const MAX_ERROR_LEN: usize = 1024;

/// Why an event was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Value of [`header::ERROR_KIND`].
    pub kind: &'static str,
    /// Value of [`header::ERROR`], at most [`MAX_ERROR_LEN`] bytes and a
    /// note of the whole length: made only by [`Failure::new`].
    message: String,
}

impl Failure {
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_LEN {
            let whole = message.len();
            let cut = (0..=MAX_ERROR_LEN).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
            message.truncate(cut);
            message.push_str(&format!("... ({whole} bytes in all)"));
        }
        Self { kind, message }
    }

    /// Why it failed, cut to [`MAX_ERROR_LEN`] bytes.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The headers of the dead letter for `source`: its own headers first
/// (unless `originals` is false: then only their count, in
/// [`header::HEADERS_DROPPED`]), then the `dlq_*` ones.
pub fn headers<M>(source: &M, failure: &Failure, group: &str, worker_id: u32, originals: bool) -> OwnedHeaders
where
    M: Message + RecordHeaders,
{
    // A copy of librdkafka's list keeps every header as it was, a name that
    // is not UTF-8 included (rdkafka's `iter` would panic on one).
    let headers = if originals {
        source.headers_copy().unwrap_or_else(|| OwnedHeaders::new_with_capacity(8))
    } else {
        let count = source.header_count().to_string();
        OwnedHeaders::new_with_capacity(9).insert(Header { key: header::HEADERS_DROPPED, value: Some(count.as_str()) })
    };
    let partition = source.partition().to_string();
    let offset = source.offset().to_string();
    let time = Timestamp::now().to_string();
    let worker = worker_id.to_string();
    headers
        .insert(Header { key: header::ERROR, value: Some(failure.message.as_str()) })
        .insert(Header { key: header::ERROR_KIND, value: Some(failure.kind) })
        .insert(Header { key: header::SOURCE_TOPIC, value: Some(source.topic()) })
        .insert(Header { key: header::SOURCE_PARTITION, value: Some(partition.as_str()) })
        .insert(Header { key: header::SOURCE_OFFSET, value: Some(offset.as_str()) })
        .insert(Header { key: header::TIME, value: Some(time.as_str()) })
        .insert(Header { key: header::GROUP, value: Some(group) })
        .insert(Header { key: header::WORKER, value: Some(worker.as_str()) })
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Headers, OwnedMessage};
    use rdkafka::Timestamp as KafkaTimestamp;
    use stream_core::Event;

    use super::*;

    #[test]
    fn dead_letters_keep_the_original_headers_and_name_the_source() {
        let event = Event::with_bytes("/t", Some("k".into()), Some("text/plain".into()), b"oops".to_vec());
        let msg = OwnedMessage::new(
            Some(event.data.clone()),
            Some(b"k".to_vec()),
            "events".into(),
            KafkaTimestamp::CreateTime(1),
            2,
            41,
            Some(event.headers()),
        );
        let failure = Failure::new("invalid_json", "payload is not valid JSON");
        let headers = headers(&msg, &failure, "g", 1, true);
        let get = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(get("ce_id").as_deref(), Some(event.id.as_str()));
        assert_eq!(get("content-type").as_deref(), Some("text/plain"));
        assert_eq!(get(header::ERROR_KIND).as_deref(), Some("invalid_json"));
        assert_eq!(get(header::SOURCE_TOPIC).as_deref(), Some("events"));
        assert_eq!(get(header::SOURCE_PARTITION).as_deref(), Some("2"));
        assert_eq!(get(header::SOURCE_OFFSET).as_deref(), Some("41"));
        assert!(Timestamp::parse(&get(header::TIME).unwrap()).is_ok());

        // A reference only: the count of the event's headers, none of them.
        let reference = super::headers(&msg, &failure, "g", 1, false);
        let names: Vec<&str> = reference.iter().map(|h| h.key).collect();
        assert!(!names.contains(&"ce_id") && !names.contains(&"content-type"), "{names:?}");
        let dropped = reference.iter().find(|h| h.key == header::HEADERS_DROPPED).and_then(|h| h.value);
        assert_eq!(dropped, Some(event.headers().count().to_string().as_bytes()));
        assert!(names.contains(&header::SOURCE_OFFSET) && names.contains(&header::ERROR_KIND), "{names:?}");
    }

    #[test]
    fn a_long_reason_is_cut_at_a_character_with_its_length_noted() {
        assert_eq!(Failure::new("bad_header", "short").message, "short");
        let exact = "x".repeat(MAX_ERROR_LEN);
        assert_eq!(Failure::new("bad_header", exact.clone()).message, exact);
        let long = format!("bad ce_time {:?}", "\u{1}".repeat(200_000));
        let cut = Failure::new("bad_header", long.clone()).message;
        assert!(cut.len() <= MAX_ERROR_LEN + 40, "{}", cut.len());
        assert!(
            cut.starts_with("bad ce_time") && cut.ends_with(&format!("... ({} bytes in all)", long.len())),
            "{cut}"
        );
        // A cut inside a character moves back to its start.
        let wide = "é".repeat(MAX_ERROR_LEN);
        let cut = Failure::new("bad_header", wide).message;
        assert!(
            cut.starts_with(&"é".repeat(MAX_ERROR_LEN / 2)) && !cut.starts_with(&"é".repeat(MAX_ERROR_LEN / 2 + 1))
        );
    }
}
