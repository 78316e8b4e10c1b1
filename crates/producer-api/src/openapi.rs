//! `GET /openapi.json`: the API described in OpenAPI 3.1.
//!
//! Written by hand rather than generated from the types (utoipa): most of
//! it is what the types do not say (each route's error statuses, the
//! `Retry-After` and `RateLimit-*` headers, cursors, the long poll), and
//! two checks keep it from drifting: `tests/api/openapi.rs` compares its
//! routes and errors with the router's, and schemathesis
//! (`scripts/schemathesis.sh`, `--checks all`) checks every response the
//! running server gives against these schemas.

use std::sync::OnceLock;

use axum::Json;
use serde_json::{json, Value};

/// `GET /openapi.json`.
pub async fn serve() -> Json<Value> {
    static DOC: OnceLock<Value> = OnceLock::new();
    Json(DOC.get_or_init(document).clone())
}

fn error(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn unavailable() -> Value {
    json!({
        "description": "The broker is unreachable or slow, or the producer queue is full. Retry after the delay given.",
        "headers": { "Retry-After": { "schema": { "type": "integer" }, "description": "Seconds to wait" } },
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn ok(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    })
}

fn json_body(schema: &str) -> Value {
    json!({
        "required": true,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    })
}

fn too_many(description: &str) -> Value {
    json!({
        "description": description,
        "headers": { "Retry-After": { "schema": { "type": "integer" }, "description": "Seconds to wait" } },
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn rate_limited(description: &str) -> Value {
    let whole = |d: &str| json!({ "schema": { "type": "integer", "minimum": 0 }, "description": d });
    json!({
        "description": description,
        "headers": {
            "Retry-After": whole("Seconds to wait (at least 1)"),
            "RateLimit-Limit": whole("Events the key may send at once (its burst); with --rate-limit only"),
            "RateLimit-Remaining": whole("Events the key may send now; with --rate-limit only"),
            "RateLimit-Reset": whole("Seconds until the refused events would be allowed; with --rate-limit only")
        },
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

/// `Idempotency-Key`, on the routes that honour it.
fn idempotency_key_param() -> Value {
    json!({
        "name": "Idempotency-Key", "in": "header", "required": false,
        "description": "Send the event at most once per key: a repeat by the same API key within --idempotency-ttl (IDEMPOTENCY_TTL, default 1h) gets the first response back, marked Idempotent-Replayed: true, and writes nothing; a repeat while the first is in flight waits for it; the same key with a different request is refused with 422. The event id is derived from the API key and this key, so retries through different replicas carry one ce_id.",
        "schema": { "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]*[\\x21-\\x7e][\\x20-\\x7e]*$" }
    })
}

/// A 200 that may be a replay of an earlier request with the same
/// `Idempotency-Key`.
fn ok_replayable(description: &str, schema: &str) -> Value {
    let mut response = ok(description, schema);
    response["headers"] = json!({ "Idempotent-Replayed": {
        "schema": { "type": "string", "enum": ["true"] },
        "description": "Present on a repeat of an Idempotency-Key: this is the first request's response, and nothing new was written"
    } });
    response
}

/// The responses every authenticated JSON route can give.
fn authed(mut responses: serde_json::Map<String, Value>) -> Value {
    let mut unauthorized = error("Missing or invalid API key (X-API-Key, or Authorization: Bearer)");
    unauthorized["headers"] = json!({ "WWW-Authenticate": {
        "schema": { "type": "string" }, "description": "The scheme the route takes: Bearer realm=\"streamkit\""
    } });
    responses.insert("401".into(), unauthorized);
    responses.entry("500").or_insert_with(|| error("An unexpected failure; the cause is in the server's log"));
    responses
        .entry("429")
        .or_insert_with(|| too_many("Too many requests in flight (--max-in-flight); retry after a second"));
    Value::Object(responses)
}

/// What `validate_stream_id` accepts.
fn stream_id_schema() -> Value {
    json!({ "type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9._:-]+$" })
}

fn stream_id_param() -> Value {
    json!({ "name": "id", "in": "path", "required": true, "schema": stream_id_schema() })
}

/// `GET /stream/{id}/results`, also served as `/stream/{id}/stream` (the
/// seed's WebSocket path).
fn results_operation(security: &Value) -> Value {
    let map = |v: Value| match v {
        Value::Object(m) => m,
        _ => unreachable!("responses are objects"),
    };
    let cursor = "A result's `cursor`, as it was delivered: resume right after that result";
    json!({
        "summary": "Results of a stream: WebSocket (upgrade; both ways), Server-Sent Events (Accept: text/event-stream), or JSON: a long poll from a cursor, or the most recent results",
        "description": "Every result carries a `cursor`, its place in the results topic (an opaque token). Resume right after it with `after` (WebSocket, SSE, JSON) or the `Last-Event-ID` header (SSE; each SSE event's id is its cursor, so browsers send it by themselves); `from=beginning` starts at the stream's oldest retained result; without either, results from now on (JSON: the most recent ones, once the result of the stream's last send through this gateway is among them, waiting up to 5 s for it, so that a client that sends and then reads finds its result). A resumed connection reads the log and then joins the live results with no gap and no repeat, on any replica. Each connection delivers one result per event id (a consumer's replay after a crash is skipped). A connection that reads slowly is served from the log, not dropped from. WebSocket frames are JSON objects with a type: result (cursor, then the EventResult fields at top level), ack {id, partition, offset} for each event the client sends as a text frame ({\"data\": ...}, or any other JSON value taken as the event itself), error {error, detail?} for a frame that was not published (a payload that does not match --event-schema has detail.errors [{path, message}]; over --rate-limit it is {\"error\": \"rate limited\", \"retry_after_ms\": N}), notice {expired, earliest, message} when results expired from the log before the connection read them. With `after` or `from`, the JSON answer is a long poll: it returns as soon as at least one result is available (with what follows at once, up to `limit`), or after `wait` seconds with none; poll again with `next`. Browsers may pass the key as ?api_key=.",
        "security": security,
        "parameters": [
            stream_id_param(),
            { "name": "api_key", "in": "query", "required": false, "schema": { "type": "string" } },
            { "name": "after", "in": "query", "required": false, "description": cursor, "schema": { "$ref": "#/components/schemas/Cursor" } },
            { "name": "from", "in": "query", "required": false, "description": "beginning: start at the stream's oldest retained result (a cursor, if given too, wins)", "schema": { "type": "string", "enum": ["beginning"] } },
            { "name": "limit", "in": "query", "required": false, "description": "JSON long poll: most results in one answer; above 1000, 1000", "schema": { "type": "integer", "minimum": 1, "default": 100 } },
            { "name": "wait", "in": "query", "required": false, "description": "JSON long poll: seconds to wait for a result when none is available; above 10, 10", "schema": { "type": "number", "minimum": 0, "default": 0 } },
            { "name": "Last-Event-ID", "in": "header", "required": false, "description": format!("{cursor} (SSE reconnects); wins over `after`; empty: none"), "schema": { "anyOf": [{ "$ref": "#/components/schemas/Cursor" }, { "const": "" }] } }
        ],
        "responses": authed(map(json!({
            "101": { "description": "Switching to WebSocket" },
            "200": {
                "description": "JSON results (a long poll page with `after`/`from`, else the most recent), or an SSE stream of results as unnamed events (id: the cursor) and `notice` events",
                "content": {
                    "application/json": { "schema": { "$ref": "#/components/schemas/Results" } },
                    "text/event-stream": { "schema": { "type": "string" } }
                }
            },
            "400": error("Malformed cursor, a cursor of another stream, or limit/wait out of range; a WebSocket handshake without Sec-WebSocket-Key"),
            "426": {
                "description": "A WebSocket handshake of a version other than 13",
                "headers": {
                    "Sec-WebSocket-Version": { "schema": { "type": "string" }, "description": "13, the version the server speaks" },
                    "Upgrade": { "schema": { "type": "string" }, "description": "websocket" }
                },
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
            },
            "403": error("The stream belongs to another key"),
            "404": error("Unknown stream"),
            "429": too_many("The key already has --max-websockets-per-key result connections (WebSocket or SSE) open, or too many requests in flight"),
            "410": {
                "description": "The cursor's results are no longer retained; resume from detail.earliest",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Expired" } } }
            },
            "503": unavailable()
        })))
    })
}

/// The whole document.
pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "producer-api",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Publish JSON events to Kafka and receive processed results over WebSocket or SSE."
        },
        "paths": paths(),
        "components": components(),
    })
}

/// Every route, by path and method.
fn paths() -> Value {
    let security = json!([{ "apiKey": [] }, { "bearer": [] }]);
    let map = |v: Value| match v {
        Value::Object(m) => m,
        _ => unreachable!("responses are objects"),
    };
    json!({
        "/publish": { "post": {
            "summary": "Publish one event; replies after the broker acknowledged it (acks=all)",
            "security": security,
            "parameters": [idempotency_key_param()],
            "requestBody": json_body("PublishRequest"),
            "responses": authed(map(json!({
                "200": ok_replayable("Written (or, with a repeated Idempotency-Key, written earlier)", "Ack"),
                "400": error("Malformed JSON, or a malformed Idempotency-Key (blank, over 255 characters or not printable ASCII)"),
                "408": error("The body did not arrive within --body-read-timeout"),
                "413": error("Body larger than --max-body-bytes"),
                "415": error("Content-Type is not application/json"),
                "422": error("Valid JSON of the wrong shape, or a reserved header; a message that does not match --event-schema (detail.errors: [{path, message}]); an Idempotency-Key that was used for a different request"),
                "429": rate_limited("The key is over --rate-limit (see the RateLimit headers), or too many requests in flight"),
                "503": unavailable()
            })))
        }},
        "/publish/batch": { "post": {
            "summary": "Publish many events: a JSON array, or NDJSON (application/x-ndjson); one result per record",
            "security": security,
            "requestBody": {
                "required": true,
                "content": {
                    "application/json": { "schema": { "type": "array", "minItems": 1, "items": {
                        "description": "A PublishRequest. Records are checked one by one: one that is not a PublishRequest gets status 422 (or 400) in results, and the others are still written"
                    } } },
                    "application/x-ndjson": { "schema": { "$ref": "#/components/schemas/PublishRequest" } }
                }
            },
            "responses": authed(map(json!({
                "200": ok("Per-record results (some records may have failed; a record that does not match --event-schema has status 422 and detail.errors)", "BatchResult"),
                "400": error("The body is not JSON"),
                "408": error("The body did not arrive within --body-read-timeout"),
                "413": error("More bytes than --max-batch-bytes, or records than --max-batch-records"),
                "415": error("Content-Type is neither application/json nor application/x-ndjson"),
                "422": error("Not an array, or empty"),
                "429": rate_limited("The batch's records do not fit in the key's --rate-limit now, or never can (more records than its --rate-limit-burst; the detail says so): nothing was written (a batch is admitted whole or refused whole); or too many requests in flight"),
                "503": unavailable()
            })))
        }},
        "/stream/start": { "post": {
            "summary": "Start a stream owned by the calling key (body optional)",
            "security": security,
            "requestBody": { "required": false, "content": {
                "application/json": { "schema": { "$ref": "#/components/schemas/StartRequest" } },
                "application/x-www-form-urlencoded": { "schema": { "$ref": "#/components/schemas/StartForm" } }
            } },
            "responses": authed(map(json!({
                "201": ok("Started", "StreamRef"),
                "200": ok("Already started by this key", "StreamRef"),
                "400": error("Malformed JSON"),
                "403": error("The id belongs to another key"),
                "408": error("The body did not arrive within --body-read-timeout"),
                "413": error("Body too large"),
                "415": error("Content-Type is neither application/json nor a form"),
                "422": error("Invalid stream_id"),
                "429": too_many("The key already owns --max-streams-per-key streams (MAX_STREAMS_PER_KEY, default 5000), or too many requests in flight"),
                "503": unavailable()
            })))
        }},
        "/stream/{id}/send": { "post": {
            "summary": "Publish one event on a stream (record key = stream id)",
            "security": security,
            "parameters": [stream_id_param(), idempotency_key_param()],
            "requestBody": {
                "required": true,
                "content": {
                    "application/json": { "schema": { "$ref": "#/components/schemas/SendRequest" } },
                    "application/x-www-form-urlencoded": { "schema": { "$ref": "#/components/schemas/SendForm" } }
                }
            },
            "responses": authed(map(json!({
                "200": ok_replayable("Written (or, with a repeated Idempotency-Key, written earlier)", "SendAck"),
                "400": error("Malformed JSON or form, or a malformed Idempotency-Key (blank, over 255 characters or not printable ASCII)"),
                "403": error("The stream belongs to another key"),
                "404": error("Unknown stream"),
                "408": error("The body did not arrive within --body-read-timeout"),
                "413": error("Body too large"),
                "415": error("Content-Type is neither application/json nor a form"),
                "422": error("Neither data nor message given; data that does not match --event-schema (detail.errors: [{path, message}]); an Idempotency-Key that was used for a different request"),
                "429": rate_limited("The key is over --rate-limit (see the RateLimit headers), or too many requests in flight"),
                "503": unavailable()
            })))
        }},
        "/stream/{id}/results": { "get": results_operation(&security) },
        "/stream/{id}/stream": { "get": results_operation(&security) },
        "/stream/{id}": { "delete": {
            "summary": "Delete a stream; its WebSockets close with code 1000 and SSE streams end",
            "description": "The id may then be started again, by any key, as a new stream: its results, live or replayed (from=beginning, cursors), hold none of the deleted stream's, told apart by the time each stream was started. Each replica remembers the last 100,000 deleted ids, and one restarted later those whose deletion records the registry topic still holds.",
            "security": security,
            "parameters": [stream_id_param()],
            "responses": authed(map(json!({
                "200": { "description": "Deleted", "content": { "application/json": { "schema": { "type": "object" } } } },
                "403": error("The stream belongs to another key"),
                "404": error("Unknown stream"),
                "503": unavailable()
            })))
        }},
        "/": { "get": {
            "summary": "Live page: start a stream, send events, watch results arrive", "security": [],
            "responses": { "200": { "description": "HTML page", "content": { "text/html": {} } } }
        }},
        "/healthz": { "get": {
            "summary": "Liveness", "security": [],
            "responses": { "200": { "description": "Up" } }
        }},
        "/readyz": { "get": {
            "summary": "Readiness: broker metadata answers within 2 s", "security": [],
            "responses": { "200": { "description": "Ready" }, "503": unavailable() }
        }},
        "/metrics": { "get": {
            "summary": "Prometheus metrics", "security": [],
            "responses": { "200": { "description": "Text exposition format", "content": { "text/plain": {} } } }
        }},
        "/openapi.json": { "get": {
            "summary": "This document", "security": [],
            "responses": { "200": { "description": "OpenAPI 3.1", "content": { "application/json": {} } } }
        }},
        "/noop": { "get": {
            "summary": "Does nothing (no auth); the baseline for load tests", "security": [],
            "responses": { "200": { "description": "ok", "content": { "text/plain": {} } } }
        }}
    })
}

/// The request and response schemas the paths refer to.
fn components() -> Value {
    json!({
        "securitySchemes": {
            "apiKey": { "type": "apiKey", "in": "header", "name": "X-API-Key" },
            "bearer": { "type": "http", "scheme": "bearer" }
        },
        "schemas": {
            "Error": {
                "type": "object", "required": ["error"],
                "properties": {
                    "error": { "type": "string" },
                    "detail": { "description": "More about the error: text, or an object (a schema mismatch: {\"errors\": [{\"path\": JSON Pointer, \"message\": string}]})" },
                    "retry_after_ms": { "type": "integer", "description": "When rate limited: milliseconds until the refused events would be allowed" }
                }
            },
            "PublishRequest": {
                "type": "object", "required": ["message"],
                "properties": {
                    "message": { "description": "Any JSON value; it becomes the record value" },
                    "key": { "type": ["string", "null"], "description": "Record key: same key, same partition. Omitted or null: no key" },
                    "headers": {
                        "type": "object",
                        "description": "Extra record headers; CloudEvents' names (ce_*, content-type) are set by the server",
                        "propertyNames": { "minLength": 1, "not": { "pattern": "^(ce_|content-type$)" } },
                        "additionalProperties": { "type": "string" }
                    }
                }
            },
            "Ack": {
                "type": "object", "required": ["id", "topic", "partition", "offset"],
                "properties": {
                    "id": { "type": "string", "description": "ce_id of the event" },
                    "topic": { "type": "string" },
                    "partition": { "type": "integer" },
                    "offset": { "type": "integer" }
                }
            },
            "BatchResult": {
                "type": "object",
                "properties": {
                    "succeeded": { "type": "integer" },
                    "failed": { "type": "integer" },
                    "results": { "type": "array", "items": { "type": "object", "description": "{index, id, topic, partition, offset} or {index, status, error, detail?}" } }
                }
            },
            "StartRequest": {
                "type": "object", "additionalProperties": false,
                "properties": { "stream_id": {
                    "type": ["string", "null"], "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9._:-]+$",
                    "description": "Omitted or null: the server picks a UUID"
                } }
            },
            "StartForm": {
                "type": "object", "additionalProperties": false,
                "properties": { "stream_id": {
                    "type": "string", "maxLength": 128, "pattern": "^[A-Za-z0-9._:-]*$",
                    "description": "empty, as an HTML form sends an empty field: a generated id"
                } }
            },
            "StreamRef": { "type": "object", "required": ["stream_id"], "properties": { "stream_id": { "type": "string" } } },
            "SendRequest": {
                "type": "object",
                "anyOf": [{ "required": ["data"] }, { "required": ["message"] }],
                "properties": { "data": { "description": "Any JSON value" }, "message": { "description": "Alias of data" } }
            },
            "SendForm": {
                "type": "object",
                "description": "A form field's text becomes the event's data, as a JSON string",
                "anyOf": [{ "required": ["data"] }, { "required": ["message"] }],
                "properties": { "data": { "type": "string" }, "message": { "type": "string", "description": "Alias of data" } }
            },
            "SendAck": {
                "type": "object", "required": ["id", "stream_id", "topic", "partition", "offset"],
                "properties": {
                    "id": { "type": "string" }, "stream_id": { "type": "string" }, "topic": { "type": "string" },
                    "partition": { "type": "integer" }, "offset": { "type": "integer" }
                }
            },
            "EventResult": {
                "type": "object",
                "properties": {
                    "event_id": { "type": "string" }, "stream_id": { "type": ["string", "null"] },
                    "event_time": { "type": "string", "format": "date-time" },
                    "processed_at": { "type": "string", "format": "date-time" },
                    "worker_id": { "type": ["integer", "null"] }, "latency_us": { "type": "integer" },
                    "output": {}
                }
            },
            "Cursor": {
                "type": "string", "pattern": "^[0-9]{1,9}-[0-9]{1,18}-[0-9a-f]{8}$",
                "description": "A result's place in the results topic; opaque: pass it back as it was"
            },
            "Result": {
                "type": "object",
                "description": "A result as delivered: type and cursor, then the EventResult fields (or whatever object another processor wrote)",
                "required": ["type", "cursor"],
                "properties": {
                    "type": { "const": "result" }, "cursor": { "$ref": "#/components/schemas/Cursor" },
                    "event_id": { "type": "string" }, "stream_id": { "type": ["string", "null"] },
                    "event_time": { "type": "string", "format": "date-time" },
                    "processed_at": { "type": "string", "format": "date-time" },
                    "worker_id": { "type": ["integer", "null"] }, "latency_us": { "type": "integer" },
                    "output": {}
                }
            },
            "Results": {
                "type": "object", "required": ["stream_id", "results"],
                "properties": {
                    "stream_id": { "type": "string" },
                    "results": { "type": "array", "items": { "$ref": "#/components/schemas/Result" } },
                    "next": {
                        "oneOf": [{ "$ref": "#/components/schemas/Cursor" }, { "type": "null" }],
                        "description": "Poll again with after=next (the last result's cursor; with none, where this poll ended)"
                    }
                }
            },
            "Expired": {
                "type": "object", "required": ["error", "detail"],
                "properties": {
                    "error": { "type": "string" },
                    "detail": {
                        "type": "object", "required": ["earliest"],
                        "properties": { "earliest": { "$ref": "#/components/schemas/Cursor" } }
                    }
                }
            }
        }
    })
}
