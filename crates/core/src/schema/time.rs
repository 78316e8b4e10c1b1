//! Event times: RFC 3339 UTC text with microseconds, written without `fmt`
//! and read at any offset.

use std::cell::Cell;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
    pub fn parse(text: &str) -> Result<Self, BadTime> {
        let bad = BadTime;
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

/// Why a text is not a time: the text and what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct BadTime(String);

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
    fn timestamps_keep_microseconds() {
        let t = Timestamp::from_micros(1_763_892_000_123_456);
        assert_eq!(t.to_string(), "2025-11-23T10:00:00.123456Z");
        assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
        assert_eq!(Timestamp::parse("2025-11-23T10:00:00Z").unwrap().as_micros(), 1_763_892_000_000_000);
    }
}
