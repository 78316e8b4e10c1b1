//! Helpers shared by the integration tests: the gateway on a free port,
//! a small processing step, and readers of what reached Kafka.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use producer_api::{AppState, Application, Config};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use stream_core::kafka::{self, ProducerOptions, StartFrom, TracingContext};
use stream_core::schema::{Event, EventResult};
use stream_core::KafkaArgs;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

pub const KEY_A: &str = "key-a";
pub const KEY_B: &str = "key-b";

/// A running gateway.
pub struct TestApp {
    pub addr: SocketAddr,
    pub state: AppState,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Shuts down and waits for the server to stop.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.expect("server task").expect("server stopped cleanly");
    }
}

pub fn config(kafka: KafkaArgs) -> Config {
    stream_core::telemetry::init(stream_core::config::LogFormat::Text);
    Config::for_tests(kafka, vec![KEY_A.into(), KEY_B.into()])
}

/// Fresh topics and a gateway on them.
pub async fn spawn_app() -> (KafkaArgs, TestApp) {
    let kafka = stream_core::testing::kafka_args();
    let app = start(config(kafka.clone())).await;
    (kafka, app)
}

pub async fn start(config: Config) -> TestApp {
    let application = Application::build(config).await.expect("gateway starts");
    let addr = application.local_addr();
    let state = application.state().clone();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(application.run_until_stopped(shutdown.clone()));
    TestApp { addr, state, shutdown, handle }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// Publishes `records` through `/publish/batch` as key A and returns the
/// reply, after checking that every record was accepted.
pub async fn publish_batch(app: &TestApp, records: &[Value]) -> Value {
    let json = serde_json::to_vec(records).unwrap();
    let (status, body) = post_as(app, "/publish/batch", "application/json", json).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["failed"], 0, "{body}");
    body
}

/// [`spawn_processor`] with its own stop: `Processor::start`, then `stop`
/// at the end of the test.
pub struct Processor {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Processor {
    pub fn start(kafka: &KafkaArgs) -> Self {
        let stop = CancellationToken::new();
        let task = spawn_processor(kafka, stop.clone());
        Self { stop, task }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// A stand-in for the consumer: reads the events topic and writes one
/// `EventResult` per event to the results topic, keyed by stream id.
pub fn spawn_processor(kafka: &KafkaArgs, stop: CancellationToken) -> JoinHandle<()> {
    let reader = kafka::reader(kafka, StartFrom::Earliest).unwrap();
    kafka::assign_all(&reader, &kafka.topics.events, Offset::Beginning, kafka.connect_timeout).unwrap();
    let producer = kafka::producer(kafka, &ProducerOptions::default()).unwrap();
    let results = kafka.topics.results.clone();
    tokio::spawn(async move {
        // Results are enqueued without waiting for each ack (librdkafka
        // keeps them in order): waiting per record made this stand-in the
        // bottleneck of tests that send thousands of events.
        let mut acks = futures::stream::FuturesOrdered::<BoxFuture<'static, OwnedDeliveryResult>>::new();
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                Some(delivered) = acks.next(), if !acks.is_empty() => {
                    delivered.expect("result delivered");
                    continue;
                }
                msg = reader.recv() => msg.expect("processor reads events"),
            };
            let event = Event::from_message(&msg).expect("events decode");
            let result = EventResult::answering(&event, Some(7), json!({ "echo": event.json_data().ok() }));
            let out = result.to_event("/test-processor", &event);
            let future = kafka::enqueue(&producer, &results, &out).expect("enqueue result");
            acks.push_back(Box::pin(kafka::delivered(future)));
        }
    })
}

/// POSTs `body` as `content_type` to `path` with [`KEY_A`]; the status and
/// the JSON reply (null when there is none).
pub async fn post_as(app: &TestApp, path: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let response = client()
        .post(app.url(path))
        .header("X-API-Key", KEY_A)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The sum of the samples of the metric series starting with `name`, as
/// `/metrics` reports them now.
pub async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = client().get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Reads the record at `partition`/`offset` of `topic`.
pub async fn read_record(
    kafka: &KafkaArgs,
    topic: &str,
    partition: i32,
    offset: i64,
) -> rdkafka::message::OwnedMessage {
    let reader = kafka::reader(kafka, StartFrom::Earliest).unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset)).unwrap();
    reader.assign(&tpl).unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(20), reader.recv())
        .await
        .expect("record arrives within 20 s")
        .expect("record reads");
    msg.detach()
}

/// Every record of `topic` currently in it (from the beginning up to the
/// high watermarks), as events.
pub async fn read_all(kafka: &KafkaArgs, topic: &str) -> Vec<Event> {
    read_records(kafka, topic).await.iter().map(|msg| Event::from_message(msg).unwrap()).collect()
}

/// Every record of `topic` currently in it, as they are, in each
/// partition's order.
pub async fn read_records(kafka: &KafkaArgs, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    let reader: StreamConsumer<TracingContext> = kafka::reader(kafka, StartFrom::Earliest).unwrap();
    let partitions = kafka::assign_all(&reader, topic, Offset::Beginning, kafka.connect_timeout).unwrap();
    let mut remaining: i64 = 0;
    for p in 0..partitions as i32 {
        let (low, high) = reader.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap();
        remaining += high - low;
    }
    let mut records = Vec::new();
    while remaining > 0 {
        let msg = tokio::time::timeout(Duration::from_secs(20), reader.recv()).await.expect("records arrive").unwrap();
        records.push(msg.detach());
        remaining -= 1;
    }
    records
}

/// A client WebSocket to the gateway.
pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `POST /stream/start` with `key` (and a body if given): status and JSON reply.
pub async fn start_stream(app: &TestApp, key: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = client().post(app.url("/stream/start")).header("X-API-Key", key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `POST /stream/{stream}/send`: status and JSON reply.
pub async fn send(app: &TestApp, key: &str, stream: &str, body: Value) -> (u16, Value) {
    let response = client()
        .post(app.url(&format!("/stream/{stream}/send")))
        .header("X-API-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Opens the stream's results WebSocket with `key`.
pub async fn connect(app: &TestApp, key: &str, stream: &str) -> Socket {
    let mut request = app.ws_url(&format!("/stream/{stream}/results")).into_client_request().unwrap();
    request.headers_mut().insert("X-API-Key", key.parse().unwrap());
    tokio_tungstenite::connect_async(request).await.expect("WebSocket upgrade").0
}

/// A WebSocket over a plain TCP socket, as [`connect_tight`] opens it.
pub type TightSocket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket on `stream`'s results as `key`, over a socket with a tiny
/// (4 KiB) receive buffer: a client that stops reading pushes back on the
/// server after a few frames instead of megabytes.
pub async fn connect_tight(app: &TestApp, key: &str, stream: &str) -> TightSocket {
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let tcp = tcp.connect(app.addr).await.unwrap();
    let mut request = app.ws_url(&format!("/stream/{stream}/results")).into_client_request().unwrap();
    request.headers_mut().insert("X-API-Key", key.parse().unwrap());
    tokio_tungstenite::client_async(request, tcp).await.expect("WebSocket upgrade").0
}

/// The close frame the server sends next, skipping other frames; panics
/// (naming `what`) if the socket ends without one or none comes `within`.
pub async fn next_close(socket: &mut Socket, within: Duration, what: &str) -> Option<CloseFrame> {
    tokio::time::timeout(within, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("{what}: expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: no close frame within {within:?}"))
}

/// The next JSON text frame of a given type, skipping others.
pub async fn next_frame(socket: &mut Socket, kind: &str) -> Value {
    next_frame_within(socket, kind, Duration::from_secs(20)).await
}

/// The next JSON text frame of type `kind` within `deadline`, skipping others.
pub async fn next_frame_within(socket: &mut Socket, kind: &str, deadline: Duration) -> Value {
    tokio::time::timeout(deadline, async {
        loop {
            match socket.next().await.expect("socket open").expect("frame") {
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    if frame["type"] == kind {
                        return frame;
                    }
                }
                Message::Close(frame) => panic!("closed while waiting for {kind}: {frame:?}"),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} frame within {deadline:?}"))
}

/// The ack of an event sent on `socket` and that event's result frame.
/// The result may come first: the processor can read the event before the
/// broker's acknowledgement reaches the gateway.
pub async fn ack_and_result(socket: &mut Socket) -> (Value, Value) {
    let mut ack: Option<Value> = None;
    let mut results = Vec::new();
    loop {
        let frame = next_frame_any(socket, &["ack", "result"]).await;
        if frame["type"] == "ack" {
            ack = Some(frame);
        } else {
            results.push(frame);
        }
        if let Some(ack) = &ack {
            if let Some(result) = results.iter().find(|r| r["event_id"] == ack["id"]) {
                return (ack.clone(), result.clone());
            }
        }
    }
}

/// The next JSON text frame whose type is one of `kinds`, skipping others.
pub async fn next_frame_any(socket: &mut Socket, kinds: &[&str]) -> Value {
    let deadline = Duration::from_secs(20);
    tokio::time::timeout(deadline, async {
        loop {
            match socket.next().await.expect("socket open").expect("frame") {
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    if kinds.iter().any(|kind| frame["type"] == *kind) {
                        return frame;
                    }
                }
                Message::Close(frame) => panic!("closed while waiting for {kinds:?}: {frame:?}"),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kinds:?} frame within {deadline:?}"))
}

/// A JSON Schema file for the tests (removed when dropped): objects with a
/// string `sensor` and a numeric `temperature`.
pub struct SchemaFile(pub std::path::PathBuf);

impl SchemaFile {
    pub fn sensor_readings() -> Self {
        Self::with(&json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["sensor", "temperature"],
            "properties": {
                "sensor": { "type": "string" },
                "temperature": { "type": "number" }
            }
        }))
    }

    pub fn with(schema: &Value) -> Self {
        Self::text(&schema.to_string())
    }

    pub fn text(text: &str) -> Self {
        let path = std::env::temp_dir().join(stream_core::testing::unique_name("event-schema") + ".json");
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
}

impl Drop for SchemaFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
