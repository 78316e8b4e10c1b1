//! What `--event-schema` costs per event: checking a `/publish` message
//! (kept as raw JSON text, so parsed for the check) and a stream send's
//! data (already parsed), for a valid event and for one that is refused.
//! `cargo bench -p producer-api --bench validation`.

use criterion::{criterion_group, criterion_main, Criterion};
use producer_api::validation::EventSchema;
use serde_json::json;
use serde_json::value::RawValue;

fn validation(c: &mut Criterion) {
    // A typical IoT reading schema: an object of a few typed, bounded
    // fields, a pattern and an enum.
    let schema = EventSchema::new(&json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["sensor", "temperature", "unit", "at"],
        "properties": {
            "sensor": { "type": "string", "pattern": "^s[0-9]+$" },
            "temperature": { "type": "number", "minimum": -90, "maximum": 60 },
            "unit": { "enum": ["C", "F"] },
            "at": { "type": "integer", "minimum": 0 },
            "tags": { "type": "array", "items": { "type": "string" }, "maxItems": 8 }
        },
        "additionalProperties": false
    }))
    .unwrap();
    let good = json!({"sensor": "s42", "temperature": 21.5, "unit": "C", "at": 1_763_892_000_123u64, "tags": ["roof", "north"]});
    let bad = json!({"sensor": "x", "temperature": "hot", "unit": "K", "at": -1});
    let good_raw = RawValue::from_string(good.to_string()).unwrap();

    c.bench_function("schema: valid event (parsed, stream send)", |b| b.iter(|| schema.check(&good).unwrap()));
    c.bench_function("schema: valid event (raw text, /publish)", |b| b.iter(|| schema.check_raw(&good_raw).unwrap()));
    c.bench_function("schema: invalid event (4 errors reported)", |b| b.iter(|| schema.check(&bad).unwrap_err()));
}

criterion_group!(benches, validation);
criterion_main!(benches);
