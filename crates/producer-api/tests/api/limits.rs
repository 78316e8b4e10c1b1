//! Slow, idle and greedy clients cannot exhaust the gateway: half-sent
//! requests and trickled bodies time out, connections beyond the limit are
//! closed at once, one key cannot hold more result connections than its
//! limit, and a WebSocket whose peer went silent is closed.

use crate::common;

use std::time::{Duration, Instant};

use common::{KEY_A, KEY_B};
use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Reads until the server closes the connection (EOF or reset); returns
/// what it sent before closing.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return seen,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

async fn healthz_ok(app: &common::TestApp) -> bool {
    let response = common::client().get(app.url("/healthz")).send().await;
    response.map(|r| r.status() == 200).unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_while_other_clients_are_served() {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka);
    config.header_read_timeout = Duration::from_secs(2);
    let app = common::start(config).await;

    // A thousand clients each send half a request and wait.
    let mut stalled = Vec::new();
    for _ in 0..1000 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        stalled.push(stream);
    }
    let started = Instant::now();
    // Meanwhile a normal client keeps getting answers.
    for _ in 0..5 {
        assert!(healthz_ok(&app).await, "a normal client is served while others stall");
    }
    // Every stalled connection is closed by the server, none answered 200.
    let closes = stalled.into_iter().map(|mut stream| async move { read_until_closed(&mut stream).await });
    let replies = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(closes))
        .await
        .expect("every half-sent request is closed within the header timeout (plus slack)");
    let waited = started.elapsed();
    assert!(replies.iter().all(|r| !r.starts_with(b"HTTP/1.1 200")), "no half-sent request was answered");
    assert!(waited >= Duration::from_secs(1), "closed by the timeout, not at once ({waited:?})");
    assert!(healthz_ok(&app).await);

    // An idle keep-alive connection is closed by the same timeout.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(30), read_until_closed(&mut idle)).await.expect("closed");
    assert!(answered.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answered));
    app.stop().await;
}

/// What the slow-body tests send of their 100-byte `/publish` body at once.
const BODY_START: &str = "{\"message\":";

/// The head of a `/publish` whose 100-byte body starts with [`BODY_START`].
fn slow_publish_head() -> String {
    format!(
        "POST /publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY_A}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{BODY_START}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_is_answered_408() {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka);
    config.body_read_timeout = Duration::from_secs(1);
    let app = common::start(config).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = slow_publish_head();
    stream.write_all(head.as_bytes()).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(20), read_until_closed(&mut stream)).await.expect("answered");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    app.stop().await;
}

/// A body that declares more than the limit is refused before it is sent:
/// no `100 Continue` invites it, and no read waits for it.
#[tokio::test]
async fn a_body_declared_over_the_limit_is_answered_413_before_it_is_sent() {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka);
    config.max_body_bytes = 1000;
    config.max_batch_bytes = 5000;
    let app = common::start(config).await;
    for (path, length, flag) in [("/publish", 1001, "--max-body-bytes"), ("/publish/batch", 5001, "--max-batch-bytes")]
    {
        for expect in ["", "Expect: 100-continue\r\n"] {
            let mut stream = TcpStream::connect(app.addr).await.unwrap();
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY_A}\r\nContent-Type: application/json\r\n\
                 Content-Length: {length}\r\n{expect}\r\n{{\"message\": "
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let mut reply = Vec::new();
            while !String::from_utf8_lossy(&reply).contains("}") {
                let mut buf = [0u8; 1024];
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed without an answer: {}", String::from_utf8_lossy(&reply));
                reply.extend_from_slice(&buf[..n]);
            }
            let reply = String::from_utf8_lossy(&reply);
            assert!(reply.starts_with("HTTP/1.1 413"), "{path} {expect:?}: {reply}");
            assert!(reply.contains(flag) && reply.contains(&length.to_string()), "{reply}");
        }
    }
    // A body within the limit is still read and published.
    let reply = common::client()
        .post(app.url("/publish"))
        .header("X-API-Key", KEY_A)
        .json(&json!({"message": "x".repeat(900)}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    app.stop().await;
}

/// A byte every 200 ms keeps each gap far inside the 1 s timeout, but the
/// 100-byte body would take 20 s: the deadline covers the whole body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_in_steadily_is_answered_408() {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka);
    config.body_read_timeout = Duration::from_secs(1);
    let app = common::start(config).await;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = slow_publish_head();
    write.write_all(head.as_bytes()).await.unwrap();
    let body_left = 100 - BODY_START.len();
    let trickle = tokio::spawn(async move {
        for _ in 0..body_left {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(b" ").await.is_err() {
                return false;
            }
        }
        true
    });
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    let answered = tokio::time::timeout(Duration::from_secs(15), async {
        while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "answered while the body was still trickling in");
    let sent_whole_body = trickle.is_finished() && trickle.await.unwrap();
    assert!(!sent_whole_body, "answered before the whole body was sent");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka);
    config.max_connections = 20;
    let app = common::start(config).await;

    // Twenty idle keep-alive connections, each proven accepted by an answer.
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    // The next one is closed without an answer, quickly.
    let mut extra = TcpStream::connect(app.addr).await.unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let reply = tokio::time::timeout(Duration::from_secs(5), read_until_closed(&mut extra)).await.expect("closed fast");
    assert!(reply.is_empty(), "refused without an answer: {}", String::from_utf8_lossy(&reply));

    // Once some close, new connections are served again.
    held.truncate(10);
    stream_core::testing::eventually(Duration::from_secs(10), "a place frees up", || async {
        healthz_ok(&app).await.then_some(())
    })
    .await;
    drop(held);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_websocket_limit_gets_429_while_other_keys_connect() {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka);
    config.max_websockets_per_key = 2;
    let app = common::start(config).await;
    let mut streams = Vec::new();
    for key in [KEY_A, KEY_A, KEY_A, KEY_B] {
        let (status, body) = common::start_stream(&app, key, Some(json!({}))).await;
        assert_eq!(status, 201, "{body}");
        streams.push(body["stream_id"].as_str().unwrap().to_owned());
    }
    let first = common::connect(&app, KEY_A, &streams[0]).await;
    let second = common::connect(&app, KEY_A, &streams[1]).await;

    // The third of key A is refused with 429 and Retry-After ...
    let mut request = app.ws_url(&format!("/stream/{}/results", streams[2])).into_client_request().unwrap();
    request.headers_mut().insert("X-API-Key", KEY_A.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!("expected 429, got {:?}", other.map(|(_, r)| r.status())),
    }
    // ... and so is an SSE subscription of that key ...
    let sse = common::client()
        .get(app.url(&format!("/stream/{}/results", streams[2])))
        .header("X-API-Key", KEY_A)
        .header("Accept", "Text/Event-Stream")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 429);
    let body: serde_json::Value = sse.json().await.unwrap();
    assert_eq!(body["error"], "too many result connections for this key", "not the stream quota: {body}");
    // ... while key B connects.
    let other = common::connect(&app, KEY_B, &streams[3]).await;

    // A closed socket frees its place.
    drop(first);
    stream_core::testing::eventually(Duration::from_secs(10), "the closed socket's place is free", || async {
        (app.state.subscriptions.open(&app.state.keys.check(KEY_A).unwrap()) < 2).then_some(())
    })
    .await;
    let third = common::connect(&app, KEY_A, &streams[2]).await;
    drop((second, third, other));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_whose_peer_went_silent_is_closed_and_one_that_answers_pings_stays() {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka);
    config.ws_ping_interval = Duration::from_millis(200);
    config.ws_idle_timeout = Duration::from_secs(1);
    let app = common::start(config).await;
    let (_, body) = common::start_stream(&app, KEY_A, Some(json!({}))).await;
    let stream = body["stream_id"].as_str().unwrap().to_owned();

    // A client that reads (and so answers pings, as tungstenite does by
    // itself) all along, in a task of its own.
    let live = common::connect(&app, KEY_A, &stream).await;
    let (pings_tx, pings) = tokio::sync::watch::channel(0u32);
    let reader = tokio::spawn(async move {
        let mut live = live;
        let mut count = 0;
        loop {
            match live.next().await {
                Some(Ok(Message::Ping(_))) => {
                    count += 1;
                    let _ = pings_tx.send(count);
                }
                Some(Ok(Message::Close(frame))) => return format!("closed: {frame:?}"),
                None | Some(Err(_)) => return "disconnected".to_string(),
                _ => {}
            }
        }
    });

    // A client that never reads (so never answers a ping) is closed: the
    // server lets go of it (one subscriber left, the live one) ...
    let silent = common::connect(&app, KEY_A, &stream).await;
    assert_eq!(app.state.hub.subscribers(), 2);
    stream_core::testing::eventually(Duration::from_secs(10), "the silent socket dropped by the server", || async {
        (app.state.hub.subscribers() == 1).then_some(())
    })
    .await;
    // ... and the client, reading at last, finds it closed.
    let closed = tokio::time::timeout(Duration::from_secs(10), async move {
        let mut silent = silent;
        loop {
            match silent.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return None,
            }
        }
    })
    .await
    .expect("the silent client's socket is closed");
    // The close frame (1001) arrives unless the client's late pongs hit the
    // already closed socket first, which ends the read with an error.
    assert!(matches!(closed, Some(1001) | None), "closed as going away: {closed:?}");
    // The live one, which saw a ping every 200 ms, stays open.
    assert_eq!(app.state.hub.subscribers(), 1);
    assert!(!reader.is_finished(), "the client that answers pings is still open: {:?}", reader.await);
    assert!(*pings.borrow() >= 3, "the server pings every 200 ms ({} pings seen)", *pings.borrow());
    reader.abort();
    app.stop().await;
}

/// A client that floods pings and never reads the pongs: tungstenite
/// answers each ping by itself, and the gateway sends each pong before it
/// reads on, so TCP's flow control stops the client once the buffers
/// between them are full. Before, each ping read added a pong to an
/// unbounded write buffer, and one such socket took the gateway past 1 GB
/// in seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_flooding_pings_without_reading_is_held_back() {
    use futures::SinkExt;

    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka);
    // Neither the server's pings nor the idle timeout end the socket first.
    config.ws_ping_interval = Duration::from_secs(600);
    config.ws_idle_timeout = Duration::from_secs(600);
    let app = common::start(config).await;
    let (_, body) = common::start_stream(&app, KEY_A, Some(json!({}))).await;
    let stream = body["stream_id"].as_str().unwrap().to_owned();

    let mut socket = common::connect_tight(&app, KEY_A, &stream).await;

    // The largest ping (125 bytes), 131 bytes on the wire from a client.
    let ping = Message::Ping(vec![7u8; 125].into());
    let cap: usize = 64 << 20;
    let mut sent: usize = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.send(ping.clone())).await {
            Ok(Ok(())) => sent += 131,
            Ok(Err(error)) => panic!("the ping flood ended with {error} after {} KiB", sent >> 10),
            // Nothing moved for 5 s: the gateway stopped reading.
            Err(_) => break,
        }
        assert!(sent < cap, "the gateway read {} MiB of pings whose pongs nobody read", sent >> 20);
    }
    eprintln!("the ping flood was held back after {} KiB", sent >> 10);
    // The gateway serves other clients meanwhile.
    assert!(healthz_ok(&app).await);
    // The flooding client goes; its socket's task ends with it.
    drop(socket);
    stream_core::testing::eventually(Duration::from_secs(30), "the flooding socket let go", || async {
        (app.state.hub.subscribers() == 0).then_some(())
    })
    .await;
    app.stop().await;
}

/// An SSE subscriber that stops reading: once its socket's buffers are full
/// and the gateway's writes make no progress for `--write-timeout`, the
/// connection is closed and counted, while a subscriber that reads keeps
/// its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_subscriber_that_stops_reading_is_disconnected() {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka.clone());
    config.write_timeout = Duration::from_secs(1);
    let app = common::start(config).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let processor = common::spawn_processor(&kafka, stop.clone());
    for stream in ["stalled", "reader"] {
        assert_eq!(common::start_stream(&app, KEY_A, Some(json!({"stream_id": stream}))).await.0, 201);
    }
    let timeouts_before = common::metric(&app, "http_write_timeouts_total").await;

    // A tiny receive buffer, so the gateway's writes stall soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(app.addr).await.unwrap();
    let request = format!(
        "GET /stream/stalled/results HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY_A}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 64];
    let n = stalled.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    let mut reader = common::client()
        .get(app.url("/stream/reader/results"))
        .header("X-API-Key", KEY_A)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(reader.status(), 200);

    // About 12 MB of results for the stalled subscriber, more than any
    // socket buffer holds; it reads nothing from here on.
    let payload = "x".repeat(8 * 1024);
    for chunk in 0..6 {
        let records: Vec<_> =
            (0..250).map(|n| json!({"message": {"n": chunk * 250 + n, "pad": payload}, "key": "stalled"})).collect();
        common::publish_batch(&app, &records).await;
    }
    stream_core::testing::eventually(Duration::from_secs(60), "the stalled subscriber's write timeout", || async {
        (common::metric(&app, "http_write_timeouts_total").await > timeouts_before).then_some(())
    })
    .await;
    // Its connection is closed: what the kernel still held, then the end.
    let drained = tokio::time::timeout(Duration::from_secs(30), read_until_closed(&mut stalled)).await;
    assert!(drained.is_ok(), "the stalled connection was closed");

    // The subscriber that reads still gets its results.
    let (status, ack) = common::send(&app, KEY_A, "reader", json!({"data": "still here"})).await;
    assert_eq!(status, 200, "{ack}");
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !text.contains(ack["id"].as_str().unwrap()) {
            let chunk = reader.chunk().await.unwrap().expect("the reading subscriber's stream stays open");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the reading subscriber's result within 30 s");

    stop.cancel();
    let _ = processor.await;
    app.stop().await;
}
