//! What the publisher sends: generated JSON of a given size, or the lines of
//! an NDJSON file, spread over a number of keys.

use std::path::Path;

use anyhow::{bail, Context};

/// `ce_source` of everything the publisher sends.
pub const SOURCE: &str = "/publisher";

/// A source of events, indexed by sequence number.
#[derive(Debug, Clone)]
pub struct Payloads {
    body: Body,
    keys: u64,
    /// Send CloudEvents headers (the default). Without them a record is the
    /// bare key and payload, as `rdkafka_performance` sends: the way to
    /// compare the pipeline itself with librdkafka's own benchmark.
    headers: bool,
}

#[derive(Debug, Clone)]
enum Body {
    /// `{"seq":N,"pad":"xxx"}`, padded to this many bytes.
    Generated(usize),
    /// Lines of a file, sent in order and repeated if more are asked for.
    Lines(Vec<Vec<u8>>),
}

impl Payloads {
    /// Generated JSON payloads of `size` bytes over `keys` keys (0: no key).
    pub fn generated(size: usize, keys: u64) -> Self {
        Self { body: Body::Generated(size), keys, headers: true }
    }

    /// The non-empty lines of an NDJSON file, each checked to be JSON so a
    /// malformed file is refused before anything is sent.
    pub fn from_file(path: &Path, keys: u64) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut lines = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            serde_json::from_str::<serde::de::IgnoredAny>(line)
                .with_context(|| format!("{}:{}: not a JSON value", path.display(), n + 1))?;
            lines.push(line.as_bytes().to_vec());
        }
        if lines.is_empty() {
            bail!("{} has no events (one JSON value per line expected)", path.display());
        }
        Ok(Self { body: Body::Lines(lines), keys, headers: true })
    }

    /// The same payloads sent without CloudEvents headers.
    pub fn without_headers(mut self) -> Self {
        self.headers = false;
        self
    }

    /// Whether records carry CloudEvents headers.
    pub fn has_headers(&self) -> bool {
        self.headers
    }

    /// How many distinct payloads the source has (`None`: unbounded).
    pub fn len(&self) -> Option<u64> {
        match &self.body {
            Body::Generated(_) => None,
            Body::Lines(lines) => Some(lines.len() as u64),
        }
    }

    /// Whether the source has no payloads (never true once built).
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// The key of message `seq`: `key-<seq mod keys>`, so every key gets
    /// the same share and keeps its order within one partition.
    pub fn key(&self, seq: u64) -> Option<String> {
        self.key_text(seq).map(|key| key.as_str().to_owned())
    }

    /// [`key`](Self::key) on the stack, for the send loop.
    pub fn key_text(&self, seq: u64) -> Option<KeyText> {
        (self.keys > 0).then(|| {
            let mut digits = itoa::Buffer::new();
            let digits = digits.format(seq % self.keys).as_bytes();
            let mut text = KeyText { bytes: [0; KeyText::CAPACITY], len: KEY_PREFIX.len() + digits.len() };
            text.bytes[..KEY_PREFIX.len()].copy_from_slice(KEY_PREFIX);
            text.bytes[KEY_PREFIX.len()..text.len].copy_from_slice(digits);
            text
        })
    }

    /// The payload of message `seq`.
    pub fn data(&self, seq: u64) -> Vec<u8> {
        match &self.body {
            Body::Generated(size) => {
                let mut data = Vec::new();
                generate(seq, *size, &mut data);
                data
            }
            Body::Lines(lines) => lines[(seq % lines.len() as u64) as usize].clone(),
        }
    }

    /// The payload of message `seq`, generated into `scratch` (reused from
    /// one message to the next) or borrowed from the file's lines.
    pub fn data_in<'a>(&'a self, seq: u64, scratch: &'a mut Vec<u8>) -> &'a [u8] {
        match &self.body {
            Body::Generated(size) => {
                scratch.clear();
                generate(seq, *size, scratch);
                scratch
            }
            Body::Lines(lines) => &lines[(seq % lines.len() as u64) as usize],
        }
    }
}

const KEY_PREFIX: &[u8] = b"key-";

/// A message key, `key-` and up to 20 digits, held inline.
#[derive(Debug, Clone, Copy)]
pub struct KeyText {
    bytes: [u8; KeyText::CAPACITY],
    len: usize,
}

impl KeyText {
    const CAPACITY: usize = KEY_PREFIX.len() + 20;

    /// The key.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("a prefix and digits are ASCII")
    }

    /// The key's bytes, ASCII.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Appends `{"seq":N,"pad":"…"}` of exactly `size` bytes to `out`, or the
/// shortest such object when `size` is too small to hold it.
fn generate(seq: u64, size: usize, out: &mut Vec<u8>) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(seq).as_bytes();
    let head = r#"{"seq":"#.len() + digits.len() + r#","pad":""#.len();
    let len = size.max(head + 2);
    out.reserve(len);
    let start = out.len();
    out.extend_from_slice(br#"{"seq":"#);
    out.extend_from_slice(digits);
    out.extend_from_slice(br#","pad":""#);
    out.resize(start + len - 2, b'x');
    out.extend_from_slice(b"\"}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_payloads_are_json_of_the_requested_size() {
        for size in [32, 100, 1024] {
            let data = Payloads::generated(size, 0).data(123_456);
            assert_eq!(data.len(), size);
            let value: serde_json::Value = serde_json::from_slice(&data).unwrap();
            assert_eq!(value["seq"], 123_456);
        }
        assert!(serde_json::from_slice::<serde_json::Value>(&Payloads::generated(1, 0).data(7)).is_ok());
        // The scratch buffer is reused: a shorter payload after a longer one
        // leaves nothing of the first behind.
        let mut scratch = Vec::new();
        let long = Payloads::generated(200, 0);
        assert_eq!(long.data_in(1, &mut scratch).len(), 200);
        assert_eq!(Payloads::generated(40, 0).data_in(2, &mut scratch), Payloads::generated(40, 0).data(2));
    }

    #[test]
    fn keys_cycle_and_zero_means_none() {
        let p = Payloads::generated(10, 3);
        assert_eq!(p.key(4).as_deref(), Some("key-1"));
        assert_eq!(Payloads::generated(10, 0).key(4), None);
        let many = Payloads::generated(10, u64::MAX);
        assert_eq!(many.key_text(u64::MAX - 1).unwrap().as_str(), format!("key-{}", u64::MAX - 1));
    }

    #[test]
    fn files_are_read_as_ndjson() {
        let dir = stream_core::testing::ScratchDir::new("publisher-test");
        let good = dir.join("good.ndjson");
        std::fs::write(&good, "{\"a\":1}\n\n[2]\n").unwrap();
        let p = Payloads::from_file(&good, 0).unwrap();
        assert_eq!(p.len(), Some(2));
        assert_eq!(p.data(3), b"[2]");
        let bad = dir.join("bad.ndjson");
        std::fs::write(&bad, "{\"a\":1}\nnot json\n").unwrap();
        let err = format!("{:#}", Payloads::from_file(&bad, 0).unwrap_err());
        assert!(err.contains("bad.ndjson:2"), "{err}");
    }
}
