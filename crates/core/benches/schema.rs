//! The per-event work every process repeats: encoding an event's CloudEvents
//! headers, decoding a consumed record back into an event, and building a
//! result record from an event, and a result's JSON. `cargo bench -p
//! stream-core`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::json;
use stream_core::schema::{header, Event, EventResult};

fn event() -> Event {
    let payload = json!({"seq": 42, "pad": "x".repeat(70)});
    let mut event = Event::json("/bench", Some("stream-42".into()), &payload);
    event
        .extensions
        .push((header::TRACEPARENT.into(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()));
    event
}

fn schema(c: &mut Criterion) {
    let event = event();
    c.bench_function("event: new JSON event (id, time, payload)", |b| {
        let payload = json!({"seq": 42, "pad": "x".repeat(70)});
        b.iter(|| Event::json("/bench", Some("stream-42".into()), &payload))
    });
    c.bench_function("event: CloudEvents headers", |b| b.iter(|| event.headers()));
    let record = stream_core::testing::consumed(&event);
    c.bench_function("event: decode a consumed record", |b| b.iter(|| Event::from_message(&record).unwrap()));
    c.bench_function("result: answer an event and encode the result record", |b| {
        b.iter_batched(
            || json!({"seq": 42, "pad": "x".repeat(70), "_processed": {"worker": 0}}),
            |output| {
                let result = EventResult::answering(&event, Some(0), output);
                let out = result.to_event("/consumer", &event);
                out.headers()
            },
            BatchSize::SmallInput,
        )
    });
    // A result's id, derived from its event, beside the fresh UUID v7 it
    // replaced, in one run.
    c.bench_function("result: id derived from the event (SHA-256, UUID v8)", |b| {
        b.iter(|| {
            stream_core::schema::write_result_id(
                "/consumer",
                "events-processor",
                &event,
                &mut stream_core::schema::id_buffer(),
            )
            .len()
        })
    });
    c.bench_function("result: fresh id (UUID v7)", |b| {
        b.iter(|| stream_core::schema::write_new_id(&mut stream_core::schema::id_buffer()).len())
    });
    // The result's JSON alone, the derived `Serialize` beside the writer
    // that replaced it, in one run so the machine's drift hits both.
    let result = EventResult::answering(
        &event,
        Some(0),
        json!({"seq": 42, "text": "abcdefghijklmnopqrstuvwxyz0123456789".repeat(3), "_processed": {"at": event.time, "worker": 0, "fields": 2}}),
    );
    c.bench_function("result: JSON through serde_json::to_vec", |b| b.iter(|| serde_json::to_vec(&result).unwrap()));
    c.bench_function("result: JSON through EventResult::to_json", |b| b.iter(|| result.to_json()));
}

criterion_group!(benches, schema);
criterion_main!(benches);
