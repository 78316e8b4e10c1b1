//! Positions in the results topic, and the cursors clients resume from.

use std::fmt::Write as _;

/// Where a record sits in the results topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub partition: i32,
    pub offset: i64,
}

/// A client's place in a stream's results: the next offset to read in
/// the stream's partition. Clients see it as an opaque token,
/// `<partition>-<next offset>-<stream tag>`; the tag (a hash of the stream
/// id) lets a cursor of another stream be refused rather than silently
/// read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub partition: i32,
    pub next: i64,
}

/// Why a cursor was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Not a cursor this gateway wrote.
    #[error("malformed cursor: pass a result's cursor as it was")]
    Malformed,
    /// A cursor of another stream's results.
    #[error("the cursor belongs to another stream")]
    OtherStream,
}

impl Cursor {
    /// The cursor right after the record at `pos`.
    pub fn after(pos: Pos) -> Self {
        Self { partition: pos.partition, next: pos.offset + 1 }
    }

    /// The token of this cursor on `stream`.
    pub fn encode(&self, stream: &str) -> String {
        let mut text = String::with_capacity(32);
        self.write(stream_tag(stream), &mut text);
        text
    }

    pub(crate) fn write(&self, tag: u32, out: &mut String) {
        let _ = write!(out, "{}-{}-{tag:08x}", self.partition, self.next);
    }

    /// Reads a token given for `stream`.
    pub fn parse(text: &str, stream: &str) -> Result<Self, CursorError> {
        let mut parts = text.split('-');
        let (Some(partition), Some(next), Some(tag), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CursorError::Malformed);
        };
        let number = |s: &str| s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() && s.len() <= 18;
        if !number(partition) || !number(next) || tag.len() != 8 {
            return Err(CursorError::Malformed);
        }
        let partition: i32 = partition.parse().map_err(|_| CursorError::Malformed)?;
        let next: i64 = next.parse().map_err(|_| CursorError::Malformed)?;
        let tag = u32::from_str_radix(tag, 16).map_err(|_| CursorError::Malformed)?;
        if tag != stream_tag(stream) {
            return Err(CursorError::OtherStream);
        }
        Ok(Self { partition, next })
    }
}

/// FNV-1a, 32 bits: ties a cursor to its stream (a check against mixing
/// up cursors, not a secret: ownership is checked on every request).
pub(crate) fn stream_tag(stream: &str) -> u32 {
    stream.bytes().fold(0x811c_9dc5u32, |hash, b| (hash ^ b as u32).wrapping_mul(0x0100_0193))
}

/// The partition Kafka clients' default (murmur2) partitioner gives `key`
/// among `partitions`: where a stream's results are, for `?from=beginning`.
pub fn partition_of(key: &[u8], partitions: usize) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// Kafka's murmur2 (the Java client's, which librdkafka's `murmur2`
/// partitioner reproduces). Kept here, not taken from a crate: the
/// `murmur2` crates hash with their own seeds and tails, and this must match
/// Kafka's bit for bit (checked against the Java client's values below).
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if tail.len() == 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_name_a_stream_and_a_position() {
        let cursor = Cursor { partition: 2, next: 41 };
        let text = cursor.encode("orders");
        assert_eq!(Cursor::parse(&text, "orders"), Ok(cursor));
        assert_eq!(Cursor::parse(&text, "other"), Err(CursorError::OtherStream));
        for bad in
            ["", "x", "1-2", "1-2-3", "-1-2-00000000", "1--2-00000000", "a-2-00000000", "1-2-0000000g", "1-2-3-4-5"]
        {
            assert_eq!(Cursor::parse(bad, "orders"), Err(CursorError::Malformed), "{bad:?}");
        }
        assert_eq!(Cursor::parse("99999999999-1-00000000", "s"), Err(CursorError::Malformed));
    }

    #[test]
    fn murmur2_is_kafkas() {
        // Kafka's own test vectors (UtilsTest.testMurmur2).
        for (key, hash) in [
            (&b"21"[..], -973932308i32),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
        ] {
            assert_eq!(murmur2(key) as i32, hash, "{}", String::from_utf8_lossy(key));
        }
    }
}
