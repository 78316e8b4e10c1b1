//! Per-key rate limits (`--rate-limit`, `--rate-limit-burst`) against the
//! real broker: 429 with Retry-After and RateLimit-* headers, batches whole
//! or not at all, WebSocket error frames, and other keys unaffected.
//!
//! The rate is one event per 1000 s, so nothing refills during a test and
//! the outcomes do not depend on how fast the machine is.

use crate::common;

use common::{KEY_A, KEY_B};
use futures::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

async fn limited_app(burst: u32) -> (stream_core::KafkaArgs, common::TestApp) {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka.clone());
    config.rate_limit = Some(0.001);
    config.rate_limit_burst = std::num::NonZeroU32::new(burst);
    (kafka, common::start(config).await)
}

async fn publish(app: &common::TestApp, key: &str, n: u32) -> reqwest::Response {
    common::client()
        .post(app.url("/publish"))
        .header("X-API-Key", key)
        .json(&json!({"message": {"n": n}}))
        .send()
        .await
        .unwrap()
}

async fn batch(app: &common::TestApp, key: &str, records: usize) -> (u16, Value) {
    let body: Vec<Value> = (0..records).map(|n| json!({"message": {"n": n}})).collect();
    let response =
        common::client().post(app.url("/publish/batch")).header("X-API-Key", key).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn header(response: &reqwest::Response, name: &str) -> u64 {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a whole number"))
}

#[tokio::test]
async fn over_the_limit_is_429_with_its_headers_and_other_keys_are_unaffected() {
    let (kafka, app) = limited_app(2).await;
    let (status, started) = common::start_stream(&app, KEY_A, None).await;
    assert_eq!(status, 201, "starting a stream is not an event");
    let stream = started["stream_id"].as_str().unwrap();

    assert_eq!(publish(&app, KEY_A, 0).await.status(), 200);
    let (status, reply) = common::send(&app, KEY_A, stream, json!({"data": 1})).await;
    assert_eq!(status, 200, "{reply}");

    let refused = publish(&app, KEY_A, 2).await;
    assert_eq!(refused.status(), 429);
    let retry_after = header(&refused, "retry-after");
    assert!(retry_after >= 1, "{retry_after}");
    assert_eq!(header(&refused, "ratelimit-limit"), 2);
    assert_eq!(header(&refused, "ratelimit-remaining"), 0);
    assert!(header(&refused, "ratelimit-reset") >= 1);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "rate limited");
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0, "{body}");

    // Stream sends draw on the same allowance.
    let (status, _) = common::send(&app, KEY_A, stream, json!({"data": 2})).await;
    assert_eq!(status, 429);

    // Another key has its own.
    for n in 0..2 {
        assert_eq!(publish(&app, KEY_B, n).await.status(), 200, "key B is not limited by key A's use");
    }
    assert_eq!(publish(&app, KEY_B, 2).await.status(), 429);

    let events = common::read_all(&kafka, &kafka.topics.events).await;
    assert_eq!(events.len(), 4, "two events per key, none of the refused ones");
    app.stop().await;
}

#[tokio::test]
async fn a_batch_is_admitted_whole_or_refused_whole() {
    let (kafka, app) = limited_app(5).await;
    let (status, reply) = batch(&app, KEY_A, 3).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["succeeded"], 3);

    // Two events left: a batch of three is refused whole...
    let (status, reply) = batch(&app, KEY_A, 3).await;
    assert_eq!(status, 429, "{reply}");
    assert_eq!(reply["error"], "rate limited");
    // ...and the two left are still there for a batch that fits.
    let (status, reply) = batch(&app, KEY_A, 2).await;
    assert_eq!(status, 200, "{reply}");

    // A batch larger than the burst is over the limit too (429), and the
    // reply says that waiting alone will not let it through.
    let (status, reply) = batch(&app, KEY_B, 6).await;
    assert_eq!(status, 429, "{reply}");
    assert_eq!(reply["error"], "rate limited");
    assert!(reply["detail"].as_str().unwrap().contains("send at most 5 per batch"), "{reply}");
    // ...and nothing of it was taken from the allowance: five fit.
    let (status, reply) = batch(&app, KEY_B, 5).await;
    assert_eq!(status, 200, "{reply}");

    let events = common::read_all(&kafka, &kafka.topics.events).await;
    assert_eq!(events.len(), 10, "3 + 2 from key A, 5 from key B, none of the refused batches");
    app.stop().await;
}

#[tokio::test]
async fn websocket_event_frames_over_the_limit_get_an_error_frame_and_are_not_published() {
    let (kafka, app) = limited_app(2).await;
    let (_, started) = common::start_stream(&app, KEY_A, None).await;
    let stream = started["stream_id"].as_str().unwrap();
    let mut socket = common::connect(&app, KEY_A, stream).await;
    for n in 0..3 {
        socket.send(Message::text(json!({"data": {"n": n}}).to_string())).await.unwrap();
    }
    // Acks and the error may come in either order: the refusal is
    // answered at once, the acks when the broker confirms.
    let mut acks = 0;
    let mut errors = Vec::new();
    while acks + errors.len() < 3 {
        let frame = common::next_frame_any(&mut socket, &["ack", "error"]).await;
        if frame["type"] == "ack" {
            acks += 1;
        } else {
            errors.push(frame);
        }
    }
    assert_eq!(acks, 2);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["error"], "rate limited");
    assert!(errors[0]["retry_after_ms"].as_u64().unwrap() > 0, "{}", errors[0]);

    let events = common::read_all(&kafka, &kafka.topics.events).await;
    assert_eq!(events.len(), 2);
    let mut sent: Vec<i64> = events.iter().map(|e| e.json_data().unwrap()["n"].as_i64().unwrap()).collect();
    sent.sort();
    assert_eq!(sent, [0, 1], "the third frame was not published");
    app.stop().await;
}
