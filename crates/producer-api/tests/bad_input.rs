//! Bad input over every route, table-driven: each case gets its documented
//! status and a JSON body `{"error", "detail"?}`, no handler ever panics
//! (a panic would be answered 500 and counted), and a well-behaved client
//! publishing meanwhile is not disturbed.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{KEY_A, KEY_B};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const JSON: &str = "application/json";
const NDJSON: &str = "application/x-ndjson";
/// Small limits, so oversized bodies are cheap to send.
const MAX_BODY: usize = 16 * 1024;
const MAX_BATCH: usize = 64 * 1024;
const MAX_RECORDS: usize = 100;

/// One request and the status it must get.
struct Case {
    name: String,
    method: &'static str,
    path: String,
    /// Extra request headers (`X-API-Key` among them, or not).
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
    status: u16,
}

fn case(name: impl Into<String>, method: &'static str, path: impl Into<String>, status: u16) -> Case {
    Case {
        name: name.into(),
        method,
        path: path.into(),
        headers: vec![("x-api-key", KEY_A.into())],
        body: vec![],
        status,
    }
}

impl Case {
    fn key(mut self, key: Option<&str>) -> Self {
        self.headers.retain(|(name, _)| *name != "x-api-key");
        if let Some(key) = key {
            self.headers.push(("x-api-key", key.as_bytes().to_vec()));
        }
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, content_type: Option<&str>, body: impl Into<Vec<u8>>) -> Self {
        if let Some(content_type) = content_type {
            self.headers.push(("content-type", content_type.as_bytes().to_vec()));
        }
        self.body = body.into();
        self
    }

    fn json(self, body: &str) -> Self {
        self.body(Some(JSON), body.as_bytes().to_vec())
    }
}

fn config(kafka: stream_core::KafkaArgs) -> producer_api::Config {
    let mut config = common::config(kafka);
    config.max_body_bytes = MAX_BODY;
    config.max_batch_bytes = MAX_BATCH;
    config.max_batch_records = MAX_RECORDS;
    config
}

/// Path-like, unicode, control-character and overlong stream ids, as URL
/// path segments. None of them names a stream: 404 on every stream route.
fn bad_path_ids() -> Vec<(&'static str, String)> {
    vec![
        ("encoded slash", "a%2Fb".into()),
        ("dot-dot-slash", "..%2F..".into()),
        ("encoded dot-dot", "%2E%2E%2F%2E%2E%2Fetc".into()),
        ("backslash", "..%5C..".into()),
        ("unicode", "%C3%A9t%C3%A9".into()),
        ("right-to-left override", "a%E2%80%AEb".into()),
        ("NUL", "a%00b".into()),
        ("newline", "a%0Ab".into()),
        ("escape", "%1B%5B31m".into()),
        ("space", "a%20b".into()),
        ("invalid UTF-8", "%FF%FE".into()),
        ("overlong", "a".repeat(129)),
        ("valid but unknown", "no-such-stream".into()),
    ]
}

/// Every bad request this suite sends. `owned` is a stream of KEY_A.
fn cases(owned: &str) -> Vec<Case> {
    let big = format!("{{\"message\": \"{}\"}}", "x".repeat(MAX_BODY));
    let deep = format!("{{\"message\": {}{}}}", "[".repeat(5_000), "]".repeat(5_000));
    let mut cases = vec![
        // Keys: missing, wrong, almost right, in the wrong scheme, not text.
        case("publish without a key", "POST", "/publish", 401).key(None).json(r#"{"message": 1}"#),
        case("publish with a wrong key", "POST", "/publish", 401).key(Some("nope")).json(r#"{"message": 1}"#),
        case("publish with a key's prefix", "POST", "/publish", 401).key(Some("key-")).json(r#"{"message": 1}"#),
        case("publish with a key in upper case", "POST", "/publish", 401).key(Some("KEY-A")).json(r#"{"message": 1}"#),
        case("publish with an empty key", "POST", "/publish", 401).key(Some("")).json(r#"{"message": 1}"#),
        case("publish with a non-UTF-8 key", "POST", "/publish", 401)
            .key(None)
            .header("x-api-key", b"key-\xff".to_vec())
            .json(r#"{"message": 1}"#),
        case("publish with Basic auth", "POST", "/publish", 401)
            .key(None)
            .header("authorization", format!("Basic {KEY_A}"))
            .json(r#"{"message": 1}"#),
        case("publish with an empty Bearer", "POST", "/publish", 401)
            .key(None)
            .header("authorization", "Bearer ")
            .json(r#"{"message": 1}"#),
        // Bodies: empty, malformed, truncated, not UTF-8, wrong shape.
        case("publish an empty body", "POST", "/publish", 400).json(""),
        case("publish malformed JSON", "POST", "/publish", 400).json("{message: 1}"),
        case("publish truncated JSON", "POST", "/publish", 400).json(r#"{"message": {"a": [1, 2"#),
        case("publish trailing garbage", "POST", "/publish", 400).json(r#"{"message": 1} x"#),
        case("publish plain text", "POST", "/publish", 400).json("hello"),
        case("publish invalid UTF-8", "POST", "/publish", 400)
            .body(Some(JSON), b"{\"message\": \"\xff\xfe\"}".to_vec()),
        // The message's bytes are passed on as sent, once they are checked
        // to hold a JSON value the consumer can read: nested within
        // serde_json's recursion limit, no number beyond f64, no lone
        // surrogate (as stream sends check).
        case("publish a message nested 5,000 deep", "POST", "/publish", 400).json(&deep),
        case("publish a message nested 128 deep", "POST", "/publish", 400).json(&format!(
            "{{\"message\": {}{}}}",
            "[".repeat(128),
            "]".repeat(128)
        )),
        case("publish a message nested 127 deep", "POST", "/publish", 200).json(&format!(
            "{{\"message\": {}{}}}",
            "[".repeat(127),
            "]".repeat(127)
        )),
        case("publish a number beyond f64", "POST", "/publish", 400).json(r#"{"message": {"t": 1e400}}"#),
        case("publish a lone surrogate", "POST", "/publish", 400).json(r#"{"message": "\ud800"}"#),
        case("publish a lone surrogate key", "POST", "/publish", 400).json(r#"{"message": {"\udc00": 1}}"#),
        case("publish a surrogate pair", "POST", "/publish", 200).json(r#"{"message": "\ud83d\ude00"}"#),
        case("publish headers nested 5,000 deep", "POST", "/publish", 422).json(&format!(
            "{{\"message\": 1, \"headers\": {{\"a\": {}{}}}}}",
            "[".repeat(5_000),
            "]".repeat(5_000)
        )),
        case("publish an array", "POST", "/publish", 422).json("[]"),
        case("publish the fields as an array", "POST", "/publish", 422).json(r#"[1, "key"]"#),
        case("publish null", "POST", "/publish", 422).json("null"),
        case("publish a string", "POST", "/publish", 422).json(r#""message""#),
        case("publish without message", "POST", "/publish", 422).json("{}"),
        case("publish a numeric key", "POST", "/publish", 422).json(r#"{"message": 1, "key": 5}"#),
        case("publish headers as a string", "POST", "/publish", 422).json(r#"{"message": 1, "headers": "x"}"#),
        case("publish a numeric header value", "POST", "/publish", 422).json(r#"{"message": 1, "headers": {"a": 1}}"#),
        case("publish a reserved header", "POST", "/publish", 422).json(r#"{"message": 1, "headers": {"ce_id": "x"}}"#),
        case("publish an empty header name", "POST", "/publish", 422).json(r#"{"message": 1, "headers": {"": "x"}}"#),
        // Content types and sizes.
        case("publish without a content type", "POST", "/publish", 415).body(None, r#"{"message": 1}"#),
        case("publish as text/plain", "POST", "/publish", 415).body(Some("text/plain"), r#"{"message": 1}"#),
        case("publish as a form", "POST", "/publish", 415).body(Some("application/x-www-form-urlencoded"), "message=1"),
        case("publish oversized", "POST", "/publish", 413).json(&big),
        // Batches.
        case("batch empty body", "POST", "/publish/batch", 400).json(""),
        case("batch malformed", "POST", "/publish/batch", 400).json("[{"),
        case("batch empty array", "POST", "/publish/batch", 422).json("[]"),
        case("batch an object", "POST", "/publish/batch", 422).json(r#"{"message": 1}"#),
        case("batch as text/csv", "POST", "/publish/batch", 415).body(Some("text/csv"), "a,b"),
        case("batch without a content type", "POST", "/publish/batch", 415).body(None, "[]"),
        case("batch empty NDJSON", "POST", "/publish/batch", 422).body(Some(NDJSON), "\n\n"),
        case("batch too many records", "POST", "/publish/batch", 413)
            .json(&serde_json::to_string(&vec![json!({"message": 1}); MAX_RECORDS + 1]).unwrap()),
        case("batch oversized", "POST", "/publish/batch", 413)
            .json(&format!("[{{\"message\": \"{}\"}}]", "x".repeat(MAX_BATCH))),
        case("batch without a key", "POST", "/publish/batch", 401).key(None).json(r#"[{"message": 1}]"#),
        // Stream starts: ids in the body.
        case("start with a slash in the id", "POST", "/stream/start", 422).json(r#"{"stream_id": "a/b"}"#),
        case("start with a path-like id", "POST", "/stream/start", 422).json(r#"{"stream_id": "../../etc/passwd"}"#),
        case("start with an encoded id", "POST", "/stream/start", 422).json(r#"{"stream_id": "..%2F.."}"#),
        case("start with a unicode id", "POST", "/stream/start", 422).json(r#"{"stream_id": "été"}"#),
        case("start with an emoji id", "POST", "/stream/start", 422).json(r#"{"stream_id": "\ud83d\ude00"}"#),
        case("start with a NUL in the id", "POST", "/stream/start", 422).json(r#"{"stream_id": "a\u0000b"}"#),
        case("start with a newline in the id", "POST", "/stream/start", 422).json(r#"{"stream_id": "a\nb"}"#),
        case("start with an empty id", "POST", "/stream/start", 422).json(r#"{"stream_id": ""}"#),
        case("start with an overlong id", "POST", "/stream/start", 422)
            .json(&format!(r#"{{"stream_id": "{}"}}"#, "a".repeat(129))),
        case("start with a numeric id", "POST", "/stream/start", 422).json(r#"{"stream_id": 5}"#),
        case("start with an unknown field", "POST", "/stream/start", 422).json(r#"{"stream": "x"}"#),
        case("start with a null id", "POST", "/stream/start", 201).json(r#"{"stream_id": null}"#),
        case("start with an array", "POST", "/stream/start", 422).json("[1]"),
        case("start with an empty array", "POST", "/stream/start", 422).json("[]"),
        case("start with an id in an array", "POST", "/stream/start", 422).json(r#"["x"]"#),
        case("start malformed", "POST", "/stream/start", 400).json(r#"{"stream_id": "#),
        case("start as text/plain", "POST", "/stream/start", 415).body(Some("text/plain"), r#"{"stream_id": "x"}"#),
        case("start JSON labelled a form (curl -d without -H)", "POST", "/stream/start", 415)
            .body(Some("application/x-www-form-urlencoded"), r#"{"stream_id": "x"}"#),
        case("start oversized", "POST", "/stream/start", 413).json(&big),
        case("start without a key", "POST", "/stream/start", 401).key(None),
        case("start another key's stream", "POST", "/stream/start", 403)
            .key(Some(KEY_B))
            .json(&json!({ "stream_id": owned }).to_string()),
        // Sends on an owned stream with bad bodies, and probes by another key.
        case("send malformed", "POST", format!("/stream/{owned}/send"), 400).json(r#"{"data": "#),
        case("send nested 5,000 deep", "POST", format!("/stream/{owned}/send"), 400).json(&format!(
            "{{\"data\": {}{}}}",
            "[".repeat(5_000),
            "]".repeat(5_000)
        )),
        case("send empty", "POST", format!("/stream/{owned}/send"), 400).json(""),
        case("send without data", "POST", format!("/stream/{owned}/send"), 422).json(r#"{"x": 1}"#),
        case("send an array", "POST", format!("/stream/{owned}/send"), 422).json("[1]"),
        case("send as text/plain", "POST", format!("/stream/{owned}/send"), 415).body(Some("text/plain"), "{}"),
        case("send JSON labelled a form (curl -d without -H)", "POST", format!("/stream/{owned}/send"), 415)
            .body(Some("application/x-www-form-urlencoded"), r#"{"data": 1}"#),
        case("send a form without data or message", "POST", format!("/stream/{owned}/send"), 422)
            .body(Some("application/x-www-form-urlencoded"), "x=1"),
        case("send a form value that is not UTF-8", "POST", format!("/stream/{owned}/send"), 400)
            .body(Some("application/x-www-form-urlencoded"), "data=ok%FF%FEend"),
        case("start with a form id that is not UTF-8", "POST", "/stream/start", 400)
            .body(Some("application/x-www-form-urlencoded"), "stream_id=a%C3"),
        case("send an oversized form", "POST", format!("/stream/{owned}/send"), 413)
            .body(Some("application/x-www-form-urlencoded"), format!("message={}", "x".repeat(MAX_BODY))),
        case("send oversized", "POST", format!("/stream/{owned}/send"), 413).json(&big),
        case("send without a key", "POST", format!("/stream/{owned}/send"), 401).key(None).json(r#"{"data": 1}"#),
        case("send on another key's stream", "POST", format!("/stream/{owned}/send"), 403)
            .key(Some(KEY_B))
            .json(r#"{"data": 1}"#),
        case("results of another key's stream", "GET", format!("/stream/{owned}/results"), 403).key(Some(KEY_B)),
        case("SSE of another key's stream", "GET", format!("/stream/{owned}/results"), 403)
            .key(Some(KEY_B))
            .header("accept", "text/event-stream"),
        case("delete another key's stream", "DELETE", format!("/stream/{owned}"), 403).key(Some(KEY_B)),
        case("results without a key", "GET", format!("/stream/{owned}/results"), 401).key(None),
        case("delete without a key", "DELETE", format!("/stream/{owned}"), 401).key(None),
        case("results with a wrong key in the query", "GET", format!("/stream/{owned}/results?api_key=nope"), 401)
            .key(None),
        // A write never takes its key from the URL, even a good one.
        case("send with the key in the query", "POST", format!("/stream/{owned}/send?api_key={KEY_A}"), 401)
            .key(None)
            .json(r#"{"data": 1}"#),
        case("delete with the key in the query", "DELETE", format!("/stream/{owned}?api_key={KEY_A}"), 401).key(None),
        case("publish with the key in the query", "POST", format!("/publish?api_key={KEY_A}"), 401)
            .key(None)
            .json(r#"{"message": 1}"#),
        // Paths and methods that do not exist.
        case("an extra path segment", "POST", "/stream/a/b/send", 404).json(r#"{"data": 1}"#),
        case("results with an extra segment", "GET", "/stream/a/b/results", 404),
        case("an unknown route", "GET", "/nope", 404),
        case("a path traversal route", "GET", "/stream/..%2F..%2Fmetrics", 405),
        case("a path traversal delete", "DELETE", "/stream/..%2F..%2Fmetrics", 404),
        case("GET on /publish", "GET", "/publish", 405),
        case("PUT on /publish", "PUT", "/publish", 405).json(r#"{"message": 1}"#),
        case("POST on /healthz", "POST", "/healthz", 405),
        case("PATCH on a stream", "PATCH", format!("/stream/{owned}"), 405),
    ];
    for (what, id) in bad_path_ids() {
        cases.push(case(format!("send to {what}"), "POST", format!("/stream/{id}/send"), 404).json(r#"{"data": 1}"#));
        cases.push(case(format!("results of {what}"), "GET", format!("/stream/{id}/results"), 404));
        cases.push(case(format!("delete {what}"), "DELETE", format!("/stream/{id}"), 404));
    }
    cases
}

/// Sends one case and checks its status and error body; returns what was
/// wrong, if anything.
async fn check(client: &reqwest::Client, app: &common::TestApp, case: &Case) -> Option<String> {
    let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
    let mut request = client.request(method, app.url(&case.path)).body(case.body.clone());
    for (name, value) in &case.headers {
        request = request.header(*name, reqwest::header::HeaderValue::from_bytes(value).unwrap());
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(err) => return Some(format!("{}: request failed: {err}", case.name)),
    };
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = response.bytes().await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    if status != case.status {
        return Some(format!("{}: expected {}, got {status} {text}", case.name, case.status));
    }
    if (200..300).contains(&status) {
        return None;
    }
    if !content_type.starts_with(JSON) {
        return Some(format!("{}: content type {content_type:?}, body {text}", case.name));
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
        return Some(format!("{}: body is not a JSON object: {text}", case.name));
    };
    if !fields.get("error").is_some_and(Value::is_string) || fields.keys().any(|k| k != "error" && k != "detail") {
        return Some(format!("{}: body is not {{error, detail?}}: {text}", case.name));
    }
    None
}

/// Publishes with KEY_B until stopped; every request must succeed. Returns
/// the acknowledged ids and the failures.
fn bystander(app: &common::TestApp, stop: CancellationToken) -> tokio::task::JoinHandle<(Vec<String>, Vec<String>)> {
    let url = app.url("/publish");
    tokio::spawn(async move {
        let client = common::client();
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        for n in 0.. {
            if stop.is_cancelled() && n > 0 {
                break;
            }
            let sent = client.post(&url).header("X-API-Key", KEY_B).json(&json!({"message": {"n": n}})).send().await;
            match sent {
                Ok(response) if response.status() == 200 => {
                    let ack: serde_json::Value = response.json().await.unwrap_or_default();
                    ok.push(ack["id"].as_str().unwrap_or_default().to_owned());
                }
                Ok(response) => {
                    failed.push(format!("{} {}", response.status(), response.text().await.unwrap_or_default()))
                }
                Err(err) => failed.push(err.to_string()),
            }
        }
        (ok, failed)
    })
}

/// The server's panic counter and its metrics both say: no 500, no panic.
async fn assert_no_panic(app: &common::TestApp) {
    assert_eq!(app.state.panics.load(Ordering::Relaxed), 0, "a handler panicked");
    let metrics = common::client().get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    // Every series with status 500 (requests by route, errors), unless 0.
    let five_hundreds: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.contains("status=\"500\"") && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) != Some(0.0)
        })
        .collect();
    assert!(five_hundreds.is_empty(), "500s were served: {five_hundreds:?}");
}

#[tokio::test]
async fn every_route_answers_bad_input_with_its_documented_error() {
    let kafka_args = stream_core::testing::kafka_args();
    let app = common::start(config(kafka_args.clone())).await;
    let client = common::client();
    let owned = "owned-by-a";
    let started =
        client.post(app.url("/stream/start")).header("X-API-Key", KEY_A).json(&json!({"stream_id": owned})).send();
    assert_eq!(started.await.unwrap().status(), 201);

    let stop = CancellationToken::new();
    let bystander = bystander(&app, stop.clone());
    let cases = cases(owned);
    let mut wrong = Vec::new();
    for case in &cases {
        wrong.extend(check(&client, &app, case).await);
    }
    // The same again, all at once: concurrency changes nothing.
    let all = futures::future::join_all(cases.iter().map(|case| check(&client, &app, case))).await;
    wrong.extend(all.into_iter().flatten().map(|w| format!("(concurrent) {w}")));
    stop.cancel();
    let (ok, failed) = bystander.await.unwrap();
    eprintln!(
        "{} bad-input cases, each alone and then all at once; a bystander made {} good requests meanwhile",
        cases.len(),
        ok.len()
    );

    assert!(wrong.is_empty(), "{} of {} cases were answered wrongly:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
    assert!(failed.is_empty(), "the well-behaved client was disturbed: {failed:?}");
    assert!(!ok.is_empty());
    // Every event the bystander had acknowledged is in the topic.
    let written: HashSet<String> =
        common::read_all(&kafka_args, &kafka_args.topics.events).await.into_iter().map(|e| e.id).collect();
    let missing: Vec<&String> = ok.iter().filter(|id| !written.contains(*id)).collect();
    assert!(missing.is_empty(), "{} acknowledged events are not in the topic: {missing:?}", missing.len());
    // The owned stream survived every probe.
    assert_eq!(app.state.registry.owner_of(owned).as_deref(), Some(producer_api::auth::fingerprint(KEY_A).as_str()));
    assert_no_panic(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn one_key_starting_too_many_streams_gets_429_with_retry_after() {
    let app = app_with_quota(3).await;
    let client = common::client();
    let start = |key: &'static str, id: String| {
        let request = client.post(app.url("/stream/start")).header("X-API-Key", key).json(&json!({"stream_id": id}));
        async move { request.send().await.unwrap() }
    };
    for n in 0..3 {
        assert_eq!(start(KEY_A, format!("s{n}")).await.status(), 201);
    }
    let refused = start(KEY_A, "s3".into()).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "30");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "stream quota exceeded", "{body}");
    assert!(body["detail"].as_str().unwrap().contains('3'), "{body}");
    // A retried start of an owned stream is not a new stream.
    assert_eq!(start(KEY_A, "s0".into()).await.status(), 200);
    // The quota is per key.
    assert_eq!(start(KEY_B, "b0".into()).await.status(), 201);
    // Deleting frees a slot.
    let deleted = client.delete(app.url("/stream/s1")).header("X-API-Key", KEY_A).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(start(KEY_A, "s3".into()).await.status(), 201);
    assert_eq!(start(KEY_A, "s4".into()).await.status(), 429);
    assert_no_panic(&app).await;
    app.stop().await;
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &common::TestApp, key: Option<&str>, stream: &str) -> Result<Socket, u16> {
    let mut request = app.ws_url(&format!("/stream/{stream}/results")).into_client_request().unwrap();
    if let Some(key) = key {
        request.headers_mut().insert("X-API-Key", key.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(err) => panic!("WebSocket handshake failed unexpectedly: {err}"),
    }
}

/// The next text frame as JSON, or the close frame's code.
async fn next_frame(socket: &mut Socket) -> Result<Value, Option<CloseCode>> {
    let frame = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(text.as_str()).unwrap()),
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    });
    frame.await.expect("a frame within 20 s")
}

/// A WebSocket handshake over a raw TCP connection, so the test can then
/// write frames no well-behaved client library would.
async fn raw_socket(app: &common::TestApp, stream: &str) -> tokio::net::TcpStream {
    let handshake = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let (tcp, head) = raw_handshake(app, stream, handshake).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    tcp
}

/// Sends a WebSocket upgrade with the given handshake headers (each ending
/// in CRLF) and reads the response's head, lower-cased.
async fn raw_handshake(app: &common::TestApp, stream: &str, handshake: &str) -> (tokio::net::TcpStream, String) {
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /stream/{stream}/results HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         {handshake}X-API-Key: {KEY_A}\r\n\r\n",
        app.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "handshake cut short");
        head.push(byte[0]);
    }
    (tcp, String::from_utf8_lossy(&head).to_ascii_lowercase())
}

/// Reads until the server closes the connection; returns the bytes read.
async fn read_until_closed(tcp: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closes a connection that broke the protocol");
    all
}

/// The code of the close frame among the frames a server sent. The socket
/// follows a stream, so a result frame (of any length) may come before the
/// close; tungstenite's own header parser reads each frame's length.
fn close_code(frames: &[u8]) -> Option<u16> {
    let mut cursor = std::io::Cursor::new(frames);
    while let Ok(Some((header, len))) = FrameHeader::parse(&mut cursor) {
        let start = usize::try_from(cursor.position()).ok()?;
        let payload = frames.get(start..start + usize::try_from(len).ok()?)?;
        if header.opcode == OpCode::Control(Control::Close) {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
        cursor.set_position((start + payload.len()) as u64);
    }
    None
}

#[test]
fn close_code_reads_past_frames_of_any_length() {
    let close = [&[0x88, 16, 0x03, 0xea][..], b"protocol error"].concat();
    // A 258-byte result frame first, as a subscribed socket may get one.
    let long = [&[0x81, 126, 0x01, 0x02][..], &[b'x'; 258]].concat();
    assert_eq!(close_code(&[long, close.clone()].concat()), Some(1002));
    let longest = [&[0x82, 127, 0, 0, 0, 0, 0, 0, 0, 3][..], b"abc"].concat();
    assert_eq!(close_code(&[longest, close.clone()].concat()), Some(1002));
    let short = [&[0x81, 2][..], b"hi"].concat();
    assert_eq!(close_code(&[short, close].concat()), Some(1002));
    assert_eq!(close_code(&[0x81, 126, 0x01]), None, "a cut-short frame has no close code");
}

fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    assert!(payload.len() < 126);
    let mut frame = vec![first, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn websocket_bad_frames_are_answered_and_other_sockets_carry_on() {
    let kafka = stream_core::testing::kafka_args();
    let app = common::start(config(kafka.clone())).await;
    let stop = CancellationToken::new();
    let processor = common::spawn_processor(&kafka, stop.clone());
    let client = common::client();
    let start = client.post(app.url("/stream/start")).header("X-API-Key", KEY_A).json(&json!({"stream_id": "ws"}));
    assert_eq!(start.send().await.unwrap().status(), 201);

    // Handshakes: no key, another key, unknown and path-like streams.
    assert_eq!(connect(&app, None, "ws").await.err(), Some(401));
    assert_eq!(connect(&app, Some("nope"), "ws").await.err(), Some(401));
    assert_eq!(connect(&app, Some(KEY_B), "ws").await.err(), Some(403));
    for (what, id) in bad_path_ids() {
        assert_eq!(connect(&app, Some(KEY_A), &id).await.err(), Some(404), "{what}");
    }
    // A handshake of another WebSocket version is refused with the one the
    // server speaks (RFC 6455), and one without a key is a bad request:
    // neither gets the JSON view a plain GET would.
    let other_version = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n";
    let (_, head) = raw_handshake(&app, "ws", other_version).await;
    assert!(head.starts_with("http/1.1 426"), "{head}");
    assert!(head.contains("\r\nsec-websocket-version: 13\r\n"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    let (_, head) = raw_handshake(&app, "ws", "Sec-WebSocket-Version: 13\r\n").await;
    assert!(head.starts_with("http/1.1 400"), "{head}");

    // Bad messages on an open socket: each gets an error frame, and the
    // socket stays usable.
    let mut socket = connect(&app, Some(KEY_A), "ws").await.unwrap();
    let bad = [
        (Message::Binary(vec![0, 159, 146, 150].into()), "unsupported content type"),
        (Message::Text("{\"data\": ".into()), "malformed JSON"),
        (Message::Text("".into()), "malformed JSON"),
        (Message::Text("\u{0}\u{202e}\u{1b}[31m".into()), "malformed JSON"),
    ];
    for (message, error) in bad {
        socket.send(message.clone()).await.unwrap();
        let frame = next_frame(&mut socket).await.unwrap_or_else(|code| panic!("closed ({code:?}) after {message:?}"));
        assert_eq!(frame["type"], "error", "{message:?}: {frame}");
        assert_eq!(frame["error"], error, "{message:?}: {frame}");
    }
    // Events as {"data": ...}, or as any JSON value, are published.
    for good in [r#"{"data": {"ok": true}}"#, r#"{"x": 1}"#, "[1]"] {
        socket.send(Message::Text(good.into())).await.unwrap();
        // The processor's result of the previous event may come first.
        let ack = loop {
            let frame = next_frame(&mut socket).await.unwrap();
            if frame["type"] != "result" {
                break frame;
            }
        };
        assert_eq!(ack["type"], "ack", "{good}: {ack}");
    }

    // A message over the limit closes that socket with 1009 (Message Too Big).
    let mut oversized = connect(&app, Some(KEY_A), "ws").await.unwrap();
    let huge = format!("{{\"data\": \"{}\"}}", "x".repeat(MAX_BODY));
    let _ = oversized.send(Message::Text(huge.into())).await;
    match next_frame(&mut oversized).await {
        Err(Some(code)) => assert_eq!(code, CloseCode::Size),
        // The server closes the TCP connection with the rest of the huge
        // message unread, so the kernel may reset it before the client
        // reads the close frame; the code itself is pinned by the unit
        // test ws::tests::close_codes_name_the_fault.
        Err(None) => {}
        Ok(frame) => panic!("an oversized message was answered {frame}"),
    }

    // Frames that break the protocol end only their own connection.
    // Each is told why in a close frame: 1002 (protocol error), or 1007
    // for text that is not UTF-8.
    let broken: [(&str, Vec<u8>, u16); 4] = [
        ("an unmasked client frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("a reserved opcode", masked(0x83, b"hi"), 1002),
        ("invalid UTF-8 in a text frame", masked(0x81, b"\xff\xfe\xfd"), 1007),
        ("a fragmented control frame", masked(0x09, b"ping"), 1002),
    ];
    for (what, frame, code) in broken {
        let mut tcp = raw_socket(&app, "ws").await;
        tcp.write_all(&frame).await.unwrap();
        let reply = read_until_closed(&mut tcp).await;
        assert_eq!(close_code(&reply), Some(code), "{what}: the server sent {reply:?}");
    }
    // Garbage instead of a handshake.
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n").await.unwrap();
    let reply = read_until_closed(&mut tcp).await;
    assert!(reply.is_empty() || reply.starts_with(b"HTTP/1.1 400"), "{}", String::from_utf8_lossy(&reply));

    // The first socket still works end to end: an event sent on it comes
    // back as a result.
    socket.send(Message::Text(r#"{"data": {"after": true}}"#.into())).await.unwrap();
    let result = loop {
        let frame = next_frame(&mut socket).await.unwrap_or_else(|code| panic!("socket closed: {code:?}"));
        if frame["type"] == "result" && frame["output"]["echo"]["after"] == true {
            break frame;
        }
    };
    assert_eq!(result["stream_id"], "ws");
    assert_no_panic(&app).await;
    stop.cancel();
    let _ = processor.await;
    drop(socket);
    app.stop().await;
}

/// An app whose keys may own `quota` streams each.
async fn app_with_quota(quota: usize) -> common::TestApp {
    let mut config = config(stream_core::testing::kafka_args());
    config.max_streams_per_key = quota;
    common::start(config).await
}

/// `POST /stream/start` with each body, 64 at a time (a body of `None`:
/// no body, a server-chosen id); the statuses, each 429 checked for its
/// `Retry-After`.
async fn start_at_once(app: &common::TestApp, bodies: impl Iterator<Item = Option<Value>>) -> Vec<u16> {
    let client = common::client();
    let url = app.url("/stream/start");
    futures::stream::iter(bodies)
        .map(|body| {
            let request = client.post(&url).header("X-API-Key", KEY_A);
            let request = match body {
                Some(body) => request.json(&body),
                None => request,
            };
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                if status == 429 {
                    assert_eq!(response.headers()["retry-after"], "30");
                }
                status
            }
        })
        .buffer_unordered(64)
        .collect()
        .await
}

#[tokio::test]
async fn one_key_starting_exactly_its_quota_at_once_gets_every_stream() {
    const QUOTA: usize = 300;
    let app = app_with_quota(QUOTA).await;
    // Server-chosen ids and client-chosen ones: each start holds its place
    // until it returns, after its claim is applied.
    let bodies = (0..QUOTA).map(|n| (n % 2 == 1).then(|| json!({"stream_id": format!("exact-{n}")})));
    let statuses = start_at_once(&app, bodies).await;
    assert!(
        statuses.iter().all(|s| *s == 201),
        "not all 201: {:?}",
        statuses.iter().filter(|s| **s != 201).collect::<Vec<_>>()
    );
    assert_eq!(app.state.registry.owned_by(&producer_api::auth::fingerprint(KEY_A)), QUOTA);
    let over = common::client().post(app.url("/stream/start")).header("X-API-Key", KEY_A).send().await.unwrap();
    assert_eq!(over.status(), 429, "the quota is full");
    assert_no_panic(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn one_key_starting_ten_thousand_streams_at_once_gets_exactly_its_quota() {
    const QUOTA: usize = 25;
    const STARTS: usize = 10_000;
    let app = app_with_quota(QUOTA).await;
    // 10,000 distinct ids.
    let statuses = start_at_once(&app, (0..STARTS).map(|n| Some(json!({"stream_id": format!("flood-{n}")})))).await;
    let created = statuses.iter().filter(|s| **s == 201).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((created, refused), (QUOTA, STARTS - QUOTA), "statuses other than 201/429: {:?}", {
        let mut other: Vec<u16> = statuses.iter().copied().filter(|s| *s != 201 && *s != 429).collect();
        other.dedup();
        other
    });
    assert_eq!(app.state.registry.owned_by(&producer_api::auth::fingerprint(KEY_A)), QUOTA);
    // Another key is unaffected.
    let other = common::client().post(app.url("/stream/start")).header("X-API-Key", KEY_B).send().await.unwrap();
    assert_eq!(other.status(), 201);
    assert_no_panic(&app).await;
    app.stop().await;
}
