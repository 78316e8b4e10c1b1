//! Pushing results to clients: WebSocket (both ways) and Server-Sent Events.
//!
//! Frames are JSON text objects with a `type`:
//! - `result`: `cursor` (the result's place in the results topic; see
//!   [`crate::feed`]) and every [`EventResult`](stream_core::EventResult)
//!   field at top level;
//! - `ack`: `{id, partition, offset}` for an event the client sent on the
//!   socket, as `{"data": ...}` or as any other JSON value;
//! - `error`: `{error, detail?}` for a client frame that was not published
//!   (`retry_after_ms` too when it was over `--rate-limit`);
//! - `notice`: `{expired, earliest, message}` when results this connection
//!   was behind on expired from the results topic before it read them (a
//!   connection that reads slowly is otherwise served from the topic, not
//!   dropped from).
//!
//! When the stream is deleted the socket closes with code 1000 (SSE ends);
//! at server shutdown it closes with 1001 after the pending acks are sent.
//! A client's Close is answered at once: tungstenite writes nothing after
//! a peer's Close but its reply, so acks still pending are not sent (their
//! events are published all the same).
//! A peer silent past the idle timeout gets 1001 too; a message over the
//! size limit 1009, text that is not UTF-8 1007, any other broken frame
//! 1002, and a panic in the socket's task 1011.

use std::collections::HashMap;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::future::{BoxFuture, Either};
use futures::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};
use stream_core::schema::{header as ce, trace, Event};
use tokio_tungstenite::tungstenite;

use crate::error::AppError;
use crate::extract::payload_of;
use crate::feed::{Feed, Item};
use crate::layers;
use crate::producer::{Ack, SOURCE};
use crate::serve::ConnectionSlot;
use crate::trace::add_traceparent;
use crate::validation::EventSchema;
use crate::AppState;

/// Events a client may have sent on one socket without an ack yet; beyond
/// it the server stops reading the socket until acks come back.
const MAX_PENDING_ACKS: usize = 1024;

/// Counts open connections of one kind in a gauge for as long as it lives.
struct Gauge(&'static str);

impl Gauge {
    fn open(kind: &'static str) -> Self {
        metrics::gauge!("open_connections", "kind" => kind).increment(1.0);
        Self(kind)
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        metrics::gauge!("open_connections", "kind" => self.0).decrement(1.0);
    }
}

/// Result connections (WebSocket, SSE) open per API key, for
/// `--max-websockets-per-key`.
#[derive(Clone, Default)]
pub struct PerKey(Arc<Mutex<HashMap<Arc<str>, usize>>>);

impl PerKey {
    /// A place for one more connection of `owner` if it holds fewer than
    /// `max`; released when the returned guard is dropped.
    pub fn reserve(&self, owner: &Arc<str>, max: usize) -> Option<KeySlot> {
        let mut open = self.0.lock().expect("per-key lock");
        let count = open.entry(owner.clone()).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(KeySlot { per_key: self.clone(), owner: owner.clone() })
    }

    /// Connections `owner` holds open now.
    pub fn open(&self, owner: &str) -> usize {
        self.0.lock().expect("per-key lock").get(owner).copied().unwrap_or(0)
    }
}

/// One result connection's place under its key's limit.
pub struct KeySlot {
    per_key: PerKey,
    owner: Arc<str>,
}

impl Drop for KeySlot {
    fn drop(&mut self) {
        let mut open = self.per_key.0.lock().expect("per-key lock");
        if let Some(count) = open.get_mut(&self.owner) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.owner);
            }
        }
    }
}

/// What a socket holds for as long as it is open: its key's place and its
/// connection's place (see [`crate::serve`]).
pub struct Held {
    pub key: KeySlot,
    pub connection: Option<ConnectionSlot>,
}

/// `trace` is the upgrade request's valid `traceparent`, given to each event
/// sent on the socket that brings none of its own.
pub fn upgrade(
    state: AppState,
    stream_id: String,
    feed: Feed,
    held: Held,
    trace: Option<String>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let max = state.config.max_body_bytes;
    upgrade
        // tungstenite allocates its read buffer up front (128 KiB by
        // default); idle sockets are the common case, and frames are small.
        .read_buffer_size(4 * 1024)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let panics = state.panics.clone();
            guarded(socket, panics, move |sink, incoming| {
                Box::pin(run_socket(state, stream_id, feed, held, trace, sink, incoming))
            })
        })
}

fn error_frame(error: &AppError) -> Utf8Bytes {
    let mut body = error.body();
    body["type"] = Value::from("error");
    body.to_string().into()
}

fn ack_frame(ack: &Ack) -> Utf8Bytes {
    json!({ "type": "ack", "id": ack.id, "partition": ack.partition, "offset": ack.offset }).to_string().into()
}

/// The sending half of a socket.
type Sink = SplitSink<WebSocket, Message>;

/// Runs `serve` over the two halves of `socket`. A panic inside it would
/// otherwise drop the connection without a word and go uncounted: it is
/// counted like a handler panic (`http_panics_total`,
/// [`AppState::panics`]), logged, and answered with close code 1011
/// (internal error) on the sending half, which outlives the panicked task.
pub async fn guarded<F>(socket: WebSocket, panics: Arc<AtomicU64>, serve: F)
where
    F: for<'a> FnOnce(&'a mut Sink, SplitStream<WebSocket>) -> BoxFuture<'a, ()>,
{
    let (mut sink, incoming) = socket.split();
    let served = AssertUnwindSafe(serve(&mut sink, incoming)).catch_unwind().await;
    if let Err(panic) = served {
        let what = layers::count_panic(&panics, &*panic);
        tracing::error!(panic = what, "a WebSocket task panicked; closing it with 1011");
        let close = Message::Close(Some(CloseFrame { code: 1011, reason: "internal error".into() }));
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close)).await;
    }
}

/// The close code for an error reading a client's frames: 1009 for a
/// message over the size limit, 1007 for text that is not UTF-8, 1002 for
/// anything else that breaks the protocol.
fn close_code(error: axum::Error) -> u16 {
    match error.into_inner().downcast::<tungstenite::Error>().map(|e| *e) {
        Ok(tungstenite::Error::Capacity(_)) => 1009,
        Ok(tungstenite::Error::Utf8(_)) => 1007,
        _ => 1002,
    }
}

async fn run_socket(
    state: AppState,
    stream_id: String,
    mut feed: Feed,
    held: Held,
    trace: Option<String>,
    sink: &mut Sink,
    mut incoming: SplitStream<WebSocket>,
) {
    let owner = held.key.owner.clone();
    let _held = held;
    let _gauge = Gauge::open("websocket");
    let mut acks = FuturesOrdered::new();
    let topic = state.config.kafka.topics.events.clone();
    // Its own token, waited on by one future for the socket's life: a
    // fresh wait per frame on the server's shared token locked that token
    // twice per frame, contended across the worker threads.
    let shutdown = state.shutdown.child_token();
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut closing: Option<CloseFrame> = None;
    let idle_timeout = state.config.ws_idle_timeout;
    let ping_every = state.config.ws_ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the peer last sent anything (a frame, a pong): a peer silent for
    // the idle timeout has vanished without a close.
    let mut last_heard = tokio::time::Instant::now();

    loop {
        if let Some(frame) = &closing {
            if acks.is_empty() {
                let _ = tokio::time::timeout(idle_timeout, sink.send(Message::Close(Some(frame.clone())))).await;
                break;
            }
        }
        let outgoing = tokio::select! {
            biased;
            _ = &mut cancelled, if closing.is_none() => {
                closing = Some(CloseFrame { code: 1001, reason: "server shutting down".into() });
                continue;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= idle_timeout {
                    metrics::counter!("websocket_idle_closes_total").increment(1);
                    tracing::debug!(stream = %stream_id, "closing a WebSocket whose peer went silent");
                    let frame = CloseFrame { code: 1001, reason: "no message or pong within the idle timeout".into() };
                    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(Some(frame)))).await;
                    break;
                }
                Some(Message::Ping(Default::default()))
            }
            Some(outcome) = acks.next(), if !acks.is_empty() => Some(Message::Text(match outcome {
                Ok(ack) => ack_frame(&ack),
                Err(error) => error_frame(&error),
            })),
            item = feed.next(), if closing.is_none() => Some(Message::Text(match item {
                Item::Result(delivered) => delivered.frame.clone(),
                Item::Notice(notice) => notice,
                Item::Live => continue,
                Item::Closed(reason) => {
                    closing = Some(CloseFrame { code: 1000, reason: reason.into() });
                    continue;
                }
            })),
            // Every arm but a ping's ends in `continue` or `break`: a
            // frame's answer is queued above.
            message = incoming.next(), if closing.is_none() && acks.len() < MAX_PENDING_ACKS => match message {
                Some(Ok(Message::Text(text))) => {
                    last_heard = tokio::time::Instant::now();
                    let event = client_event(&stream_id, text.as_str(), state.schema.as_ref(), trace.as_deref())
                        .and_then(|event| state.admit(&owner, 1).map(|()| event))
                        .map(|mut event| {
                            // Timed no earlier than the stream's start (see `Hub::open`).
                            if let Some(opened_at) = state.hub.opened_at(&stream_id) {
                                event.time = event.time.max(opened_at);
                            }
                            event
                        });
                    // Every frame's answer, ack or error, waits its turn
                    // behind the answers to earlier frames: a client reads
                    // them in the order it sent its frames.
                    match event.and_then(|event| state.publisher.enqueue(&topic, &event).map(|sent| (event, sent))) {
                        Ok((event, future)) => {
                            let publisher = state.publisher.clone();
                            let topic = topic.clone();
                            let deadline = publisher.deadline();
                            acks.push_back(Either::Left(async move {
                                publisher.acked(event.id, &topic, future, deadline).await
                            }));
                        }
                        Err(error) => acks.push_back(Either::Right(std::future::ready(Err(error)))),
                    }
                    continue;
                }
                Some(Ok(Message::Binary(_))) => {
                    last_heard = tokio::time::Instant::now();
                    let error = AppError::UnsupportedMediaType("send events as JSON text frames".into());
                    acks.push_back(Either::Right(std::future::ready(Err(error))));
                    continue;
                }
                Some(Ok(Message::Pong(_))) => {
                    last_heard = tokio::time::Instant::now();
                    continue;
                }
                // tungstenite answers a ping by itself, buffering the pong
                // ahead of the next read; it is flushed below before the
                // socket is read again. A client that sends pings and never
                // reads its pongs is then held back by TCP's flow control,
                // instead of each ping adding a pong to an unbounded write
                // buffer (one such client once took the gateway past 1 GB).
                Some(Ok(Message::Ping(_))) => {
                    last_heard = tokio::time::Instant::now();
                    None
                }
                // A message over the size limit, or a frame that breaks the
                // protocol: say why in a close frame (best effort; the
                // connection may already be unusable) and end the socket.
                Some(Err(err)) => {
                    tracing::debug!(%err, "closing a WebSocket after a bad frame");
                    let code = close_code(err);
                    let reason = match code {
                        1009 => "message larger than the limit",
                        1007 => "text that is not UTF-8",
                        _ => "protocol error",
                    };
                    let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                    break;
                }
                // The client closed: the reply tungstenite queued goes out
                // (RFC 6455 asks for one), then the connection ends.
                Some(Ok(Message::Close(_))) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), sink.flush()).await;
                    break;
                }
                // The client vanished; nothing more can be sent.
                None => break,
            },
        };
        // A peer that stopped reading without closing (its buffers full)
        // would hold this send for ever; the idle timeout bounds it too.
        // `None`: only the pong tungstenite queued goes out.
        let written = match outgoing {
            Some(message) => tokio::time::timeout(idle_timeout, sink.send(message)).await,
            None => tokio::time::timeout(idle_timeout, sink.flush()).await,
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                if crate::serve::timed_out(&error) {
                    metrics::counter!("http_write_timeouts_total").increment(1);
                }
                break;
            }
            Err(_) => {
                metrics::counter!("websocket_idle_closes_total").increment(1);
                tracing::debug!(stream = %stream_id, "closing a WebSocket that stopped reading");
                break;
            }
        }
    }
}

/// An event from a client text frame: `{"data": ...}` (or `{"message":
/// ...}`) as on `POST /stream/{id}/send`; any other JSON value is itself the
/// event's data, so a client may send its events as they are. Text that is
/// not JSON is refused, and so is data that does not match `--event-schema`.
///
/// Its trace context: the frame's own `"traceparent"` beside `"data"` (a
/// WebSocket client cannot set a header per message), else the socket's
/// (`socket_trace`, from the upgrade request), else a new trace.
fn client_event(
    stream_id: &str,
    text: &str,
    schema: Option<&EventSchema>,
    socket_trace: Option<&str>,
) -> Result<Event, AppError> {
    let mut body: Value = serde_json::from_str(text).map_err(|e| AppError::MalformedJson(e.to_string()))?;
    let (data, frame_trace) = match body {
        Value::Object(ref mut fields) if fields.contains_key("data") || fields.contains_key("message") => {
            let frame_trace = match fields.remove(ce::TRACEPARENT) {
                Some(Value::String(given)) if trace::is_valid(&given) => Some(given),
                _ => None,
            };
            (payload_of(body)?, frame_trace)
        }
        other => (other, None),
    };
    crate::validation::check(schema, &data)?;
    let mut event = Event::json(SOURCE, Some(stream_id.to_owned()), &data);
    add_traceparent(&mut event, frame_trace.as_deref().or(socket_trace));
    Ok(event)
}

/// Server-Sent Events: each result an unnamed event (a browser's
/// `EventSource.onmessage` and any SSE client's default handler get it)
/// with the same JSON as WebSocket frames and the result's cursor as the
/// event's `id` (so a browser's reconnect sends it back as
/// `Last-Event-ID`); `event: notice` when results expired before this
/// connection read them. Ends when the stream is deleted or the server
/// shuts down.
pub fn sse(state: AppState, feed: Feed, held: Held) -> Response {
    let gauge = (Gauge::open("sse"), held);
    let events = futures::stream::unfold((feed, gauge), |(mut feed, gauge)| async move {
        let event = loop {
            break match feed.next().await {
                Item::Result(delivered) => SseEvent::default().id(delivered.cursor()).data(delivered.frame.as_str()),
                Item::Notice(notice) => SseEvent::default().event("notice").data(notice.as_str()),
                Item::Live => continue,
                Item::Closed(_) => return None,
            };
        };
        Some((Ok::<_, Infallible>(event), (feed, gauge)))
    });
    let events = events.take_until(state.shutdown.clone().cancelled_owned());
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[test]
    fn close_codes_name_the_fault() {
        use tungstenite::error::{CapacityError, ProtocolError};
        let code = |e: tungstenite::Error| close_code(axum::Error::new(e));
        assert_eq!(code(tungstenite::Error::Capacity(CapacityError::MessageTooLong { size: 10, max_size: 1 })), 1009);
        assert_eq!(code(tungstenite::Error::Protocol(ProtocolError::UnmaskedFrameFromClient)), 1002);
        assert_eq!(code(tungstenite::Error::Protocol(ProtocolError::FragmentedControlFrame)), 1002);
        let not_utf8 = String::from_utf8(vec![0xff]).unwrap_err().utf8_error();
        assert_eq!(code(tungstenite::Error::Utf8(not_utf8.to_string())), 1007);
    }

    #[tokio::test]
    async fn a_panic_in_a_socket_task_is_counted_and_closes_with_1011() {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        let panics = Arc::new(AtomicU64::new(0));
        let counter = panics.clone();
        let app = axum::Router::new().route(
            "/boom",
            axum::routing::get(move |upgrade: WebSocketUpgrade| {
                let panics = counter.clone();
                async move {
                    upgrade.on_upgrade(move |socket| {
                        guarded(socket, panics, |_sink, mut incoming| {
                            Box::pin(async move {
                                // Panics once the client has spoken, mid-conversation.
                                let _ = incoming.next().await;
                                panic!("boom");
                            })
                        })
                    })
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/boom")).await.unwrap();
        client.send(tungstenite::Message::Text("hello".into())).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(10), client.next()).await.expect("closed in time");
        match closed {
            Some(Ok(tungstenite::Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Error),
            other => panic!("expected a close frame with 1011, got {other:?}"),
        }
        assert_eq!(panics.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn client_frames() {
        let event = client_event("s1", r#"{"data": {"x": 1}}"#, None, None).unwrap();
        assert_eq!(event.key.as_deref(), Some("s1"));
        assert_eq!(event.json_data().unwrap(), json!({"x": 1}));
        assert!(client_event("s1", r#"{"message": 2}"#, None, None).is_ok());
        assert_eq!(client_event("s1", "{nope", None, None).unwrap_err().status().as_u16(), 400);
        // Anything else that is JSON is the event itself.
        assert_eq!(client_event("s1", r#"{"x": 1}"#, None, None).unwrap().json_data().unwrap(), json!({"x": 1}));
        assert_eq!(client_event("s1", "[1, 2]", None, None).unwrap().json_data().unwrap(), json!([1, 2]));
        assert_eq!(client_event("s1", r#""hi""#, None, None).unwrap().json_data().unwrap(), json!("hi"));
        assert_eq!(client_event("s1", "hi", None, None).unwrap_err().status().as_u16(), 400);
        let frame: Value = serde_json::from_str(error_frame(&AppError::Forbidden).as_str()).unwrap();
        assert_eq!(frame["type"], "error");
        assert!(frame["error"].is_string());
    }

    #[test]
    fn a_frame_event_carries_the_frames_trace_else_the_sockets_else_a_new_one() {
        const SOCKET: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        const FRAME: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let trace_of = |text: &str, socket: Option<&str>| {
            let event = client_event("s1", text, None, socket).unwrap();
            event.extension(ce::TRACEPARENT).expect("every event is traced").to_owned()
        };
        let own = format!(r#"{{"data": {{"x": 1}}, "traceparent": "{FRAME}"}}"#);
        assert_eq!(trace_of(&own, Some(SOCKET)), FRAME);
        assert_eq!(client_event("s1", &own, None, None).unwrap().json_data().unwrap(), json!({"x": 1}));
        assert_eq!(trace_of(r#"{"data": 1}"#, Some(SOCKET)), SOCKET);
        assert_eq!(trace_of(r#"{"data": 1, "traceparent": "junk"}"#, Some(SOCKET)), SOCKET);
        let fresh = trace_of(r#"{"data": 1}"#, None);
        assert!(trace::is_valid(&fresh) && fresh != SOCKET && !trace::is_sampled(&fresh), "{fresh}");
    }
}
