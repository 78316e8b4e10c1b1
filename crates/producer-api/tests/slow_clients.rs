//! A WebSocket client that never reads and one that vanishes without a
//! close do not hold up other streams: their results still arrive.
//!
//! One test in this file, so the process-wide connection gauge it reads is
//! its own.

mod common;

use std::time::Duration;

use common::KEY_A;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use stream_core::testing::eventually;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

type Socket = common::TightSocket;

/// A WebSocket on `stream` over a socket with a tiny receive buffer, so a
/// client that stops reading pushes back on the server quickly.
async fn connect(app: &common::TestApp, stream: &str) -> Socket {
    common::connect_tight(app, KEY_A, stream).await
}

async fn start(app: &common::TestApp, stream: &str) {
    let response = common::client()
        .post(app.url("/stream/start"))
        .header("X-API-Key", KEY_A)
        .json(&json!({"stream_id": stream}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

/// Publishes `count` events of about `size` bytes keyed by `stream`.
async fn flood(app: &common::TestApp, stream: &str, count: usize, size: usize) {
    let payload = "x".repeat(size);
    for chunk in 0..count.div_ceil(250) {
        let records: Vec<Value> = (0..250.min(count - chunk * 250))
            .map(|n| json!({"message": {"n": chunk * 250 + n, "pad": payload}, "key": stream}))
            .collect();
        common::publish_batch(app, &records).await;
    }
}

#[tokio::test]
async fn slow_and_vanished_websocket_clients_do_not_hold_up_other_streams() {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka.clone());
    config.ws_buffer = 16;
    // The slow reader must stay connected however long this run takes on a
    // busy machine: the write timeout is another test's subject (limits).
    config.write_timeout = Duration::from_secs(600);
    let app = common::start(config).await;
    let stop = CancellationToken::new();
    let processor = common::spawn_processor(&kafka, stop.clone());
    for stream in ["slow", "gone", "good"] {
        start(&app, stream).await;
    }

    // Never read from; kept open to the end.
    let slow = connect(&app, "slow").await;
    // Gone without a close frame: the TCP connection just drops.
    let gone = connect(&app, "gone").await;
    drop(gone);
    let mut good = connect(&app, "good").await;

    // About 12 MB of results for the slow reader, more than any socket
    // buffer holds, and some for the vanished one.
    let flooding = async {
        flood(&app, "slow", 1500, 8 * 1024).await;
        flood(&app, "gone", 200, 8 * 1024).await;
    };
    // Meanwhile the good stream sends events on its socket, one at a time,
    // and gets every result.
    let good_stream = async {
        for n in 0..20 {
            good.send(Message::Text(json!({"data": {"n": n}}).to_string().into())).await.unwrap();
            tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    let text = match good.next().await {
                        Some(Ok(Message::Text(text))) => text,
                        // The server's keep-alive pings (answered by the client library).
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        other => panic!("good socket ended: {other:?}"),
                    };
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    if frame["type"] == "result" && frame["output"]["echo"]["n"] == n {
                        return;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("result {n} of the good stream did not arrive within 30 s"));
        }
    };
    tokio::join!(flooding, good_stream);

    // The slow reader really was overrun: its oldest results were dropped
    // rather than queued without bound.
    eventually(Duration::from_secs(30), "results dropped for the slow reader", || async {
        (common::metric(&app, "results_dropped_total").await > 0.0).then_some(())
    })
    .await;
    // The vanished client's connection was cleaned up: only two remain.
    eventually(Duration::from_secs(30), "the vanished WebSocket to be closed", || async {
        (common::metric(&app, "open_connections{kind=\"websocket\"}").await == 2.0).then_some(())
    })
    .await;
    assert_eq!(app.state.panics.load(std::sync::atomic::Ordering::Relaxed), 0);

    stop.cancel();
    let _ = processor.await;
    drop((slow, good));
    app.stop().await;
}
