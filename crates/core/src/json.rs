//! Compact JSON output, byte for byte what `serde_json::to_vec` writes, with
//! a fast path for strings; and [`Checked`], JSON text checked as parsing
//! it into a `serde_json::Value` would check it, without building one.
//!
//! Kept here rather than taken from a crate: serde_json escapes strings one
//! byte at a time, which callgrind put at about 11 instructions per byte and
//! a fifth of the consumer's instructions (every result carries ids,
//! timestamps and the event's text). Most strings need no escaping, so
//! they are checked 16 bytes at a time and copied whole; any string that
//! does need escaping is handed to serde_json itself. The SIMD JSON crates
//! that would do the same bring far larger dependency trees.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Appends `text` as a JSON string.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    if needs_escape(text.as_bytes()) {
        serde_json::to_writer(&mut *out, text).expect("writing to a Vec cannot fail");
    } else {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// Appends an integer as JSON (serde_json writes integers with itoa too).
pub fn write_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `value` as compact JSON.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => serde_json::to_writer(&mut *out, number).expect("writing to a Vec cannot fail"),
        Value::String(text) => write_str(out, text),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(fields) => {
            out.push(b'{');
            for (i, (name, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, name);
                out.push(b':');
                write_value(out, item);
            }
            out.push(b'}');
        }
    }
}

/// Something that writes itself as JSON: a result's `output`, as a
/// [`Value`] (compact) or as JSON text a processor kept or wrote itself
/// (as it is).
pub trait WriteJson {
    /// Appends `self` as one JSON value.
    fn write_json(&self, out: &mut Vec<u8>);
}

impl WriteJson for Value {
    fn write_json(&self, out: &mut Vec<u8>) {
        write_value(out, self);
    }
}

/// `value` as compact JSON.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_value(&mut out, value);
    out
}

/// Whether a string needs any escaping in JSON: a control character, a
/// quote or a backslash. Everything else, UTF-8 included, is written as is.
fn needs_escape(bytes: &[u8]) -> bool {
    let special = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        // No early exit inside a chunk, so the compiler checks all 16 bytes
        // at once with vector compares.
        if chunk.iter().fold(false, |hit, &b| hit | special(b)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| special(b))
}

/// Checks that `text` is one JSON document that parsing it into a `Value`
/// accepts, in one pass that builds nothing. `Some` holds the `Value` when
/// it had to be built to tell: an object with a [`reserved`] key, whose
/// meaning is up to `Value` parsing.
pub fn check(text: &[u8]) -> Result<Option<Value>, serde_json::Error> {
    if serde_json::from_slice::<Checked>(text)?.plain {
        Ok(None)
    } else {
        serde_json::from_slice::<Value>(text).map(Some)
    }
}

/// A key serde_json gives a meaning of its own when it parses a `Value`
/// with some of its features on (`raw_value`, on in this build through
/// axum, turns `{"$serde_json::private::RawValue": "[1]"}` into `[1]`).
/// An object that has one anywhere is left to `Value` parsing, so it is
/// taken or refused exactly as before.
pub fn reserved(key: &str) -> bool {
    key.starts_with("$serde_json::private::")
}

/// An object key, borrowed from the payload unless it had escapes.
pub struct Key<'de>(pub Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Any JSON value, checked and dropped: what `Value` parsing accepts and
/// refuses, without allocating (strings are only looked at; a key with an
/// escape is decoded), and whether it is free of [`reserved`] keys.
pub struct Checked {
    /// Free of [`reserved`] keys.
    pub plain: bool,
}

const PLAIN: Checked = Checked { plain: true };

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

/// The visitor behind [`Checked`], for callers that check the parts of a
/// value they take apart themselves.
pub struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        let mut plain = true;
        while let Some(Key(key)) = map.next_key()? {
            plain &= map.next_value::<Checked>()?.plain && !reserved(&key);
        }
        Ok(Checked { plain })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        let mut plain = true;
        while let Some(item) = seq.next_element::<Checked>()? {
            plain &= item.plain;
        }
        Ok(Checked { plain })
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Checked, E> {
        Ok(PLAIN)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Checked, E> {
        Ok(PLAIN)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Checked, E> {
        Ok(PLAIN)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Checked, E> {
        Ok(PLAIN)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Checked, E> {
        Ok(PLAIN)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Checked, E> {
        Ok(PLAIN)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Every string shape that matters: empty, each escape at the start, in
    /// the middle and at the end of a 16-byte chunk and of the remainder,
    /// every control character, multi-byte UTF-8 and '/', which serde_json
    /// leaves alone.
    fn strings() -> Vec<String> {
        let mut all = vec![
            String::new(),
            "plain ascii text".into(),
            "exactly sixteen!".into(),
            "naïve café — ünïcödé ✓ 😀".into(),
            "a/b </script>".into(),
            "\u{7f} del and \u{80} and \u{2028} line separator".into(),
        ];
        for special in (0u8..0x20).map(char::from).chain(['"', '\\']) {
            for at in [0, 7, 15, 16, 17, 31, 40] {
                let mut text: String = "x".repeat(41);
                text.replace_range(at..at + 1, &special.to_string());
                all.push(text);
            }
        }
        all
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        for text in strings() {
            let mut out = Vec::new();
            write_str(&mut out, &text);
            assert_eq!(out, serde_json::to_vec(&text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn values_are_written_as_serde_json_writes_them() {
        let mut cases = vec![
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(-17),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.5),
            json!(-0.0),
            json!(1e300),
            json!(0.1),
            json!([]),
            json!({}),
            json!([1, "two", [3, {"four": null}], {"": ""}]),
            json!({"z": 1, "a": {"nested": [true, false]}, "with \"quote\"": "back\\slash\n"}),
        ];
        cases.extend(strings().into_iter().map(|text| json!({ (text.clone()): [text] })));
        for value in cases {
            assert_eq!(to_vec(&value), serde_json::to_vec(&value).unwrap(), "{value}");
        }
    }

    /// Values read back from their own text, as a consumer reads payloads:
    /// what was parsed must come out as serde_json would write it.
    #[test]
    fn parsed_payloads_round_trip() {
        for text in [
            r#"{"seq":1,"text":"abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz"}"#,
            r#"{"escaped":"tab\there \u0001 \"q\" \\ \ud83d\ude00","n":[1.25,-3,12345678901234567890]}"#,
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(to_vec(&value), serde_json::to_vec(&value).unwrap(), "{text}");
        }
    }
}
