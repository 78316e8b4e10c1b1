//! `bench api`: C concurrent streams send M messages in total through the
//! producer-api, and every result is awaited on its stream's WebSocket.
//!
//! Set-up (not timed): each stream is started (`POST /stream/start`) and
//! its results WebSocket (`GET /stream/{id}/results`) is opened. Then all
//! streams send at once, each its share of M via `POST /stream/{id}/send`.
//!
//! Clocks, all on this host's monotonic clock:
//! - request latency: just before the POST is written -> its response is
//!   read; with `--via ws`, just before the `{"data": ..}` frame is written
//!   -> its ack frame is read (with `--rate`: from the time the message was
//!   due instead).
//! - end-to-end latency: the same start -> the `{"type":"result"}` frame for
//!   that event id is read from the WebSocket, i.e. HTTP in, Kafka, consumer
//!   processing, results topic, API, WebSocket out.
//!
//! Without `--rate` each stream is a closed loop (it sends its next message
//! when the previous request returned), as the seed's benchmark did: a stall
//! then delays later sends and fewer samples fall into it (coordinated
//! omission). With `--rate` the streams follow a fixed schedule and each
//! latency counts from the time the message was due, which charges stalls.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures::{SinkExt, StreamExt};
use publisher::report::{count_error, latency_histogram, record, ErrorCount};
use publisher::{Pacer, Payloads};
use serde::Deserialize;
use stream_core::config::parse_positive_duration;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

use crate::http1::Poster;
use crate::output::{self, BenchReport, Measurement};
use crate::Common;

/// Options of `bench api`.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Base URL of the producer-api.
    #[arg(long, env = "BENCH_API_URL", default_value = "http://127.0.0.1:8082")]
    pub url: String,

    /// API key sent as X-API-Key. Without it, the first key of API_KEYS is used.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Concurrent streams, each with its own WebSocket.
    #[arg(short = 'c', long, env = "BENCH_STREAMS", default_value_t = 1000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub streams: usize,

    /// Messages in total, spread evenly over the streams.
    #[arg(short = 'm', long, env = "BENCH_MESSAGES", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,

    /// Payload size in bytes (generated JSON, the "data" of each send).
    #[arg(short = 's', long, env = "BENCH_SIZE", default_value_t = 100)]
    pub size: usize,

    /// Total offered rate in messages per second over all streams (open loop);
    /// unset: each stream sends as soon as its previous request returned.
    #[arg(short = 'r', long, env = "BENCH_RATE", value_parser = stream_core::config::parse_rate)]
    pub rate: Option<f64>,

    /// How each stream sends: `http` (POST /stream/{id}/send, as the seed did)
    /// or `ws` (a `{"data": ..}` frame on the stream's own WebSocket, acked there).
    #[arg(long, env = "BENCH_API_VIA", value_enum, default_value_t = Via::Http)]
    pub via: Via,

    /// How an HTTP send's body is encoded (`--via http`): `json`
    /// (`{"data": ..}`) or `form` (`data=..`, URL-encoded, as the seed's own
    /// clients send it; the gateway publishes a form's data as a JSON string).
    #[arg(long, env = "BENCH_BODY", value_enum, default_value_t = BodyFormat::Json)]
    pub body: BodyFormat,

    /// HTTP connections for the sends (`--via http`): `keep-alive` (one per stream, kept)
    /// or `per-request` (a new connection for each send, closed by the
    /// client after the response). The second is what a client without a
    /// connection pool does, and costs the server about what Go's default
    /// HTTP transport does when more requests run at once than the 2 idle
    /// connections per host it keeps (it then dials a connection for almost
    /// every request): it measures the gateway's cost of a connection.
    #[arg(long, env = "BENCH_CONNECTIONS", value_enum, default_value_t = Connections::KeepAlive)]
    pub connections: Connections,

    /// After the last send, how long to wait for the remaining results.
    #[arg(long, env = "BENCH_RESULT_TIMEOUT", value_parser = parse_positive_duration, default_value = "60s")]
    pub result_timeout: Duration,

    #[command(flatten)]
    pub common: Common,
}

/// The path events take into the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// One HTTP request per event.
    Http,
    /// Text frames on the stream's WebSocket, each answered by an ack frame.
    Ws,
}

/// The body of an HTTP send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BodyFormat {
    /// `{"data": <payload>}` as `application/json`.
    Json,
    /// `data=<payload, URL-encoded>` as `application/x-www-form-urlencoded`.
    Form,
}

/// How HTTP sends use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Connections {
    /// One connection per stream for all its sends.
    KeepAlive,
    /// A new connection per send, closed after its response.
    PerRequest,
}

/// What one stream measured. Latencies are kept as plain samples and
/// recorded into the run's two histograms once, at the end: a histogram
/// per stream (188 KiB each at 1 µs to 1 h, 3 digits) made a thousand
/// streams zero 377 MB, which perf showed as most of the load client's CPU.
struct StreamStats {
    request: Vec<Duration>,
    e2e: Vec<Duration>,
    sent: u64,
    failed: u64,
    missing: u64,
    errors: Vec<ErrorCount>,
    last_result: Option<Instant>,
}

#[derive(Deserialize)]
struct Started {
    stream_id: String,
}

#[derive(Deserialize)]
struct Sent<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

/// A frame's fields the bench reads, borrowed from the frame's text.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    /// Result frames: the event answered.
    #[serde(default, borrow)]
    event_id: Option<Cow<'a, str>>,
    /// Ack frames: the event published.
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
}

/// An ack frame's event id and arrival, or an error frame's text.
type Ack = Result<(String, Instant), String>;

/// Runs `bench api`.
pub async fn run(args: &ApiArgs, shutdown: CancellationToken) -> anyhow::Result<BenchReport> {
    let key = match &args.api_key {
        Some(key) => key.clone(),
        None => std::env::var("API_KEYS")
            .ok()
            .and_then(|keys| keys.split(',').map(str::trim).find(|k| !k.is_empty()).map(str::to_owned))
            .ok_or_else(|| anyhow!("bench api needs --api-key (API_KEY) or API_KEYS"))?,
    };
    let base = args.url.trim_end_matches('/').to_string();
    let ws_base = base.replacen("http", "ws", 1);
    let base_url = reqwest::Url::parse(&base).with_context(|| format!("--url {base} is not a URL"))?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.streams)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;

    // Set-up: start every stream and open its WebSocket, a few at a time.
    tracing::info!(streams = args.streams, url = %base, "starting streams");
    let mut handles = Vec::with_capacity(args.streams);
    let opened = futures::stream::iter(0..args.streams)
        .map(|_| open_stream(&http, &base, &ws_base, &key))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let mut streams = Vec::with_capacity(args.streams);
    let mut failure = None;
    for stream in opened {
        match stream {
            Ok(stream) => streams.push(stream),
            Err(error) => failure = failure.or(Some(error)),
        }
    }
    let stream_ids: Vec<String> = streams.iter().map(|(id, _)| id.clone()).collect();
    if let Some(error) = failure {
        // Leave nothing behind: the key's stream quota would remember them.
        close_streams(&http, &base, &key, stream_ids).await;
        return Err(error);
    }

    let barrier = Arc::new(Barrier::new(args.streams + 1));
    let payloads = Arc::new(Payloads::generated(args.size, 0));
    let per_stream = args.messages / args.streams as u64;
    let extra = args.messages % args.streams as u64;
    let mut seq_start = 0;
    let content_type = match args.body {
        BodyFormat::Json => "application/json",
        BodyFormat::Form => "application/x-www-form-urlencoded",
    };
    for (i, (stream_id, socket)) in streams.into_iter().enumerate() {
        let count = per_stream + u64::from((i as u64) < extra);
        let mut poster =
            Poster::new(&base_url, &format!("/stream/{stream_id}/send"), &key, content_type, Duration::from_secs(30))?;
        if args.connections == Connections::PerRequest {
            poster = poster.connection_per_request();
        }
        let task = StreamTask {
            poster,
            body: args.body,
            payloads: payloads.clone(),
            first_seq: seq_start,
            count,
            // Stream i's messages interleave with the others' on the
            // common schedule: due at start + (j * C + i) / rate.
            rate: args.rate.map(|r| r / args.streams as f64),
            offset: args.rate.map(|r| Duration::from_secs_f64(i as f64 / r)).unwrap_or_default(),
            result_timeout: args.result_timeout,
            via: args.via,
            shutdown: shutdown.clone(),
        };
        seq_start += count;
        handles.push(tokio::spawn(task.run(socket, barrier.clone())));
    }

    barrier.wait().await;
    let start = Instant::now();
    tracing::info!(messages = args.messages, "sending");
    let mut request = latency_histogram();
    let mut e2e = latency_histogram();
    let (mut sent, mut failed, mut missing) = (0, 0, 0);
    let mut errors = Vec::new();
    let mut last_result = start;
    let mut sends_done = start;
    for handle in handles {
        let (s, sends_finished) = handle.await.context("stream task panicked")?;
        for latency in s.request {
            record(&mut request, latency);
        }
        for latency in s.e2e {
            record(&mut e2e, latency);
        }
        sent += s.sent;
        failed += s.failed;
        missing += s.missing;
        for e in s.errors {
            for _ in 0..e.count {
                count_error(&mut errors, e.error.clone());
            }
        }
        last_result = last_result.max(s.last_result.unwrap_or(start));
        sends_done = sends_done.max(sends_finished);
    }
    for e in &errors {
        tracing::warn!(count = e.count, error = %e.error, "failed requests");
    }
    close_streams(&http, &base, &key, stream_ids).await;
    let send_secs = sends_done.duration_since(start).as_secs_f64().max(1e-9);
    let total_secs = last_result.duration_since(start).as_secs_f64().max(1e-9);
    let mut request_row = Measurement::new("request", sent as f64 / send_secs, request);
    request_row.row.target_rate = args.rate;
    request_row.row.errors = failed;
    let results = e2e.len();
    let mut e2e_row = Measurement::new("end-to-end", results as f64 / total_secs, e2e);
    e2e_row.row.errors = missing;
    tracing::info!(streams = args.streams, sent, results, failed, missing, seconds = total_secs, "done");
    let measurements = vec![request_row, e2e_row];
    let plot = output::percentile_plot(
        &format!(
            "api: {} streams, {} messages, {:.0} results/s",
            args.streams,
            args.messages,
            results as f64 / total_secs
        ),
        &measurements,
    );
    output::write(
        &args.common.out_dir,
        "api",
        match args.via {
            Via::Http => "request: POST /stream/{id}/send written -> response read; end-to-end: same start -> result frame on the stream's WebSocket",
            Via::Ws => "request: {\"data\"} frame written -> its ack frame read; end-to-end: same start -> result frame on the same WebSocket",
        },
        measurements,
        vec![("api".into(), plot)],
    )
}

/// Deletes the benchmark's streams, so repeated runs stay within the key's
/// stream quota. Failures are logged, not fatal: the numbers are already in.
async fn close_streams(http: &reqwest::Client, base: &str, key: &str, ids: Vec<String>) {
    let failed = futures::stream::iter(ids)
        .map(|id| async move {
            let response = http.delete(format!("{base}/stream/{id}")).header("X-API-Key", key).send().await;
            response.map(|r| r.status().is_success()).unwrap_or(false)
        })
        .buffer_unordered(64)
        .filter(|ok| futures::future::ready(!ok))
        .count()
        .await;
    if failed > 0 {
        tracing::warn!(failed, "could not delete every benchmark stream");
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_stream(http: &reqwest::Client, base: &str, ws_base: &str, key: &str) -> anyhow::Result<(String, Socket)> {
    let response = http
        .post(format!("{base}/stream/start"))
        .header("X-API-Key", key)
        .json(&serde_json::json!({}))
        .send()
        .await
        .with_context(|| format!("POST {base}/stream/start"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("POST {base}/stream/start: {status}: {}", response.text().await.unwrap_or_default());
    }
    let Started { stream_id } = response.json().await.context("reading the stream id")?;
    let url = format!("{ws_base}/stream/{stream_id}/results");
    let mut request = url.as_str().into_client_request().with_context(|| format!("bad URL {url}"))?;
    request.headers_mut().insert("X-API-Key", key.parse().context("API key is not a valid header value")?);
    // tungstenite's default read buffer is 128 KiB, allocated per socket
    // and zeroed before every read: with a thousand sockets that was a third
    // of this client's CPU (perf). Frames here are a few hundred bytes; a
    // larger one still arrives whole, as the buffer grows to a frame's size.
    // No Nagle: a WebSocket send is one small frame awaiting its ack.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let (socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .with_context(|| format!("opening WebSocket {url}"))?;
    Ok((stream_id, socket))
}

struct StreamTask {
    /// This stream's own connection for its sends.
    poster: Poster,
    body: BodyFormat,
    payloads: Arc<Payloads>,
    first_seq: u64,
    count: u64,
    rate: Option<f64>,
    offset: Duration,
    result_timeout: Duration,
    via: Via,
    shutdown: CancellationToken,
}

impl StreamTask {
    /// Sends this stream's messages and collects its results; returns the
    /// stream's numbers and when its last send finished.
    async fn run(mut self, socket: Socket, barrier: Arc<Barrier>) -> (StreamStats, Instant) {
        let (mut sink, mut frames) = socket.split();
        // Result frames may arrive before the send's response (the consumer
        // can be that fast), so arrivals are kept by event id and matched
        // with send times at the end.
        let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let notify = Arc::new(tokio::sync::Notify::new());
        let (ack_tx, mut acks) = tokio::sync::mpsc::unbounded_channel::<Ack>();
        let reader = {
            let arrivals = arrivals.clone();
            let notify = notify.clone();
            tokio::spawn(async move {
                while let Some(Ok(frame)) = frames.next().await {
                    let now = Instant::now();
                    let WsMessage::Text(text) = frame else { continue };
                    let Ok(frame) = serde_json::from_str::<Frame<'_>>(&text) else { continue };
                    match (frame.kind.as_ref(), frame.event_id, frame.id) {
                        ("result", Some(id), _) => {
                            arrivals.lock().unwrap().insert(id.into_owned(), now);
                            notify.notify_one();
                        }
                        ("ack", _, Some(id)) => {
                            let _ = ack_tx.send(Ok((id.into_owned(), now)));
                        }
                        ("error", _, _) => {
                            let _ = ack_tx.send(Err(text.to_string()));
                        }
                        _ => {}
                    }
                }
            })
        };

        let mut stats = StreamStats {
            request: Vec::with_capacity(self.count as usize),
            e2e: Vec::with_capacity(self.count as usize),
            sent: 0,
            failed: 0,
            missing: 0,
            errors: Vec::new(),
            last_result: None,
        };
        let mut started: Vec<(String, Instant)> = Vec::with_capacity(self.count as usize);
        if matches!(self.via, Via::Http) {
            // Connected before the clock starts: a thousand connects at once
            // in the first timed requests overflowed the server's listen
            // backlog, and each dropped SYN came back a second later, in the
            // p99.9. A failure here is retried, and counted, by the first send.
            let _ = self.poster.connect().await;
        }
        barrier.wait().await;
        let pacer = Pacer::starting_at(self.rate, Instant::now() + self.offset);
        for j in 0..self.count {
            if self.shutdown.is_cancelled() {
                break;
            }
            let begin = pacer.wait(j).await;
            let data = self.payloads.data(self.first_seq + j);
            let body = match (self.via, self.body) {
                (Via::Http, BodyFormat::Form) => form_body(&data),
                _ => json_body(&data),
            };
            let sent = match self.via {
                Via::Http => self.send_http(body).await,
                Via::Ws => send_ws(&mut sink, &mut acks, body).await,
            };
            match sent {
                Ok((id, acked_at)) => {
                    stats.request.push(acked_at.saturating_duration_since(begin));
                    stats.sent += 1;
                    started.push((id, begin));
                }
                Err(error) => {
                    stats.failed += 1;
                    count_error(&mut stats.errors, error);
                }
            }
        }
        let sends_finished = Instant::now();

        // Await every result of this stream (bounded by --result-timeout).
        let deadline = tokio::time::Instant::now() + self.result_timeout;
        loop {
            let have = {
                let arrivals = arrivals.lock().unwrap();
                started.iter().filter(|(id, _)| arrivals.contains_key(id)).count()
            };
            if have == started.len() || self.shutdown.is_cancelled() {
                break;
            }
            if tokio::time::timeout_at(deadline, notify.notified()).await.is_err() {
                break;
            }
        }
        let _ = sink.send(WsMessage::Close(None)).await;
        reader.abort();
        let arrivals = arrivals.lock().unwrap();
        for (id, begin) in &started {
            match arrivals.get(id) {
                Some(at) => {
                    stats.e2e.push(at.saturating_duration_since(*begin));
                    stats.last_result = Some(stats.last_result.map_or(*at, |l| l.max(*at)));
                }
                None => stats.missing += 1,
            }
        }
        (stats, sends_finished)
    }
}

impl StreamTask {
    /// `POST /stream/{id}/send`; the event id and when the response was read.
    async fn send_http(&mut self, body: Vec<u8>) -> Result<(String, Instant), String> {
        let response = self.poster.post(&body).await?;
        let at = Instant::now();
        if !(200..300).contains(&response.status) {
            let text = String::from_utf8_lossy(response.body);
            return Err(format!("{}: {}", response.status, text.chars().take(200).collect::<String>()));
        }
        let Sent { id } = serde_json::from_slice(response.body).map_err(|e| format!("bad send response: {e}"))?;
        Ok((id.into_owned(), at))
    }
}

/// `{"data": <data>}`.
fn json_body(data: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(data.len() + 9);
    body.extend_from_slice(b"{\"data\":");
    body.extend_from_slice(data);
    body.push(b'}');
    body
}

/// `data=<data, URL-encoded>`.
fn form_body(data: &[u8]) -> Vec<u8> {
    let encoded = percent_encoding::percent_encode(data, percent_encoding::NON_ALPHANUMERIC);
    let mut body = Vec::with_capacity(data.len() * 2 + 5);
    body.extend_from_slice(b"data=");
    for part in encoded {
        body.extend_from_slice(part.as_bytes());
    }
    body
}

/// One `{"data": ..}` frame on the socket, then its ack frame.
async fn send_ws(
    sink: &mut futures::stream::SplitSink<Socket, WsMessage>,
    acks: &mut tokio::sync::mpsc::UnboundedReceiver<Ack>,
    body: Vec<u8>,
) -> Result<(String, Instant), String> {
    let text = String::from_utf8(body).map_err(|e| e.to_string())?;
    sink.send(WsMessage::Text(text.into())).await.map_err(|e| format!("WebSocket send: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(30), acks.recv()).await {
        Ok(Some(Ok(ack))) => Ok(ack),
        Ok(Some(Err(frame))) => Err(format!("error frame: {}", frame.chars().take(200).collect::<String>())),
        Ok(None) => Err("WebSocket closed before the ack".into()),
        Err(_) => Err("no ack within 30 s".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_body_carries_the_data_url_encoded() {
        let data = r#"{"n":1, "s":"a&b=c+d/é"}"#.as_bytes();
        let body = form_body(data);
        let text = std::str::from_utf8(&body).unwrap();
        let encoded = text.strip_prefix("data=").expect(text);
        assert!(!encoded.contains(['&', '=', '+', ' ', '"']), "{text}");
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(encoded).collect();
        assert_eq!(decoded, data);
        assert_eq!(json_body(b"[1]"), br#"{"data":[1]}"#);
    }
}
