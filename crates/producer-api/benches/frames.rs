//! The gateway's per-result work: reading a result record and building the
//! WebSocket/SSE frame every subscriber of its stream receives.
//! `cargo bench -p producer-api`.

use criterion::{criterion_group, criterion_main, Criterion};
use producer_api::cursor::Pos;
use producer_api::delivered::Delivered;
use serde_json::json;
use stream_core::schema::{EventResult, Timestamp};

fn frames(c: &mut Criterion) {
    let result = EventResult {
        event_id: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
        stream_id: Some("5f0c7a52-3b7e-4d0e-9a53-2b1f6c0d9e11".into()),
        event_time: Timestamp::from_micros(1_763_892_000_123_456),
        processed_at: Timestamp::from_micros(1_763_892_000_125_000),
        worker_id: Some(1),
        latency_us: 1544,
        output: json!({"seq": 42, "pad": "x".repeat(70), "_processed": {"at": "2025-11-23T10:00:00.125000Z", "worker": 1, "fields": 2}}),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    };
    let record = serde_json::to_vec(&result).unwrap();
    let key = result.stream_id.clone().unwrap();
    let pos = Pos { partition: 3, offset: 123_456_789 };
    c.bench_function("result record -> frame (as routed)", |b| {
        b.iter(|| Delivered::decode(&record, Some(key.as_bytes()), pos).unwrap())
    });
    // The splice as it was before cursors (commit f2ec7b8's
    // Delivered::parse): the head parsed, then the whole value parsed
    // again into a RawValue, the type put in front. No cursor, no key.
    c.bench_function("result record -> frame (spliced, before cursors)", |b| {
        b.iter(|| {
            #[derive(serde::Deserialize)]
            struct Head<'a> {
                #[allow(dead_code)]
                #[serde(borrow)]
                event_id: &'a serde_json::value::RawValue,
                #[serde(default, borrow)]
                stream_id: Option<std::borrow::Cow<'a, str>>,
                #[allow(dead_code)]
                event_time: Timestamp,
            }
            let head: Head<'_> = serde_json::from_slice(&record).unwrap();
            let stream = head.stream_id.map(std::borrow::Cow::into_owned);
            let raw: Box<serde_json::value::RawValue> = serde_json::from_slice(&record).unwrap();
            let body = raw.get().strip_prefix('{').unwrap().trim_start();
            let mut frame = String::with_capacity(raw.get().len() + 17);
            frame.push_str("{\"type\":\"result\",");
            frame.push_str(body);
            (raw, frame, stream)
        })
    });
    c.bench_function("result record -> frame (parse and re-serialise, as before)", |b| {
        b.iter(|| {
            let parsed: EventResult = serde_json::from_slice(&record).unwrap();
            #[derive(serde::Serialize)]
            struct Frame<'a> {
                #[serde(rename = "type")]
                kind: &'static str,
                #[serde(flatten)]
                result: &'a EventResult,
            }
            serde_json::to_string(&Frame { kind: "result", result: &parsed }).unwrap()
        })
    });
}

criterion_group!(benches, frames);
criterion_main!(benches);
