//! `Idempotency-Key` on `/publish` and `/stream/{id}/send`, against the real
//! broker: retries and concurrent repeats write one event, a different body
//! is refused, and a key is forgotten after its TTL.

use crate::common;

use std::time::Duration;

use common::{KEY_A, KEY_B};
use producer_api::idempotency::Key;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// `POST path` with `key` and `Idempotency-Key: idem`: status, whether it
/// was marked replayed, and the JSON reply.
async fn post(app: &common::TestApp, path: &str, key: &str, idem: &str, body: &Value) -> (u16, bool, Value) {
    post_raw(app, path, key, idem.as_bytes(), body).await
}

/// [`post`] with the `Idempotency-Key` as raw bytes, not necessarily text.
async fn post_raw(app: &common::TestApp, path: &str, key: &str, idem: &[u8], body: &Value) -> (u16, bool, Value) {
    let response = common::client()
        .post(app.url(path))
        .header("X-API-Key", key)
        .header("Idempotency-Key", reqwest::header::HeaderValue::from_bytes(idem).unwrap())
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let replayed = match response.headers().get("idempotent-replayed") {
        Some(value) => {
            assert_eq!(value, "true");
            true
        }
        None => false,
    };
    (status, replayed, response.json().await.unwrap_or(Value::Null))
}

fn expected_id(api_key: &str, idem: &str) -> String {
    Key::new(&producer_api::auth::fingerprint(api_key), idem).event_id()
}

#[tokio::test]
async fn a_retry_after_the_client_gave_up_gets_the_first_response_and_writes_nothing() {
    let (kafka, app) = common::spawn_app().await;
    let body = json!({"message": {"order": 7}, "key": "order-7"});
    let text = body.to_string();

    // The first attempt: the whole request is sent, then the client gives
    // up (closes the connection) without reading any response, as a
    // client does when its own timeout fires.
    let mut first = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "POST /publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY_A}\r\nIdempotency-Key: retry-1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    );
    first.write_all(request.as_bytes()).await.unwrap();
    stream_core::testing::eventually(Duration::from_secs(20), "the gateway taking the first attempt", || async {
        (!app.state.idempotency.is_empty()).then_some(())
    })
    .await;
    drop(first);

    let (status, replayed, ack) = post(&app, "/publish", KEY_A, "retry-1", &body).await;
    assert_eq!(status, 200, "{ack}");
    assert!(replayed, "the retry is answered from the first attempt");
    assert_eq!(ack["id"], expected_id(KEY_A, "retry-1"));
    assert_eq!(ack["topic"], kafka.topics.events.as_str());

    // And again: the same answer.
    let (status, replayed, again) = post(&app, "/publish", KEY_A, "retry-1", &body).await;
    assert_eq!((status, replayed), (200, true));
    assert_eq!(again, ack);

    let events = common::read_all(&kafka, &kafka.topics.events).await;
    assert_eq!(events.len(), 1, "one event for three attempts");
    assert_eq!(events[0].id, ack["id"].as_str().unwrap());
    assert_eq!(events[0].json_data().unwrap(), json!({"order": 7}));
    app.stop().await;
}

#[tokio::test]
async fn concurrent_identical_sends_write_one_event() {
    let (kafka, app) = common::spawn_app().await;
    let (status, started) = common::start_stream(&app, KEY_A, None).await;
    assert_eq!(status, 201);
    let stream = started["stream_id"].as_str().unwrap().to_owned();
    let path = format!("/stream/{stream}/send");
    let body = json!({"data": {"reading": 1}});

    let attempts = (0..8).map(|_| post(&app, &path, KEY_A, "same-send", &body));
    let replies = futures::future::join_all(attempts).await;
    let first = &replies[0].2;
    for (status, _, reply) in &replies {
        assert_eq!(*status, 200, "{reply}");
        assert_eq!(reply, first, "every attempt gets the same ack");
    }
    let fresh = replies.iter().filter(|(_, replayed, _)| !replayed).count();
    assert_eq!(fresh, 1, "exactly one attempt wrote; the others were replays");
    assert_eq!(first["id"], expected_id(KEY_A, "same-send"));
    assert_eq!(first["stream_id"], stream.as_str());

    let events = common::read_all(&kafka, &kafka.topics.events).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].key.as_deref(), Some(stream.as_str()));

    // A send without the header is not deduplicated.
    let (status, plain) = common::send(&app, KEY_A, &stream, body.clone()).await;
    assert_eq!(status, 200);
    assert_ne!(plain["id"], first["id"]);
    app.stop().await;
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_refused() {
    let (kafka, app) = common::spawn_app().await;
    let (status, _, first) = post(&app, "/publish", KEY_A, "k-1", &json!({"message": 1})).await;
    assert_eq!(status, 200, "{first}");

    for other in
        [json!({"message": 2}), json!({"message": 1, "key": "k"}), json!({"message": 1, "headers": {"h": "v"}})]
    {
        let (status, replayed, reply) = post(&app, "/publish", KEY_A, "k-1", &other).await;
        assert_eq!(status, 422, "{other}: {reply}");
        assert!(!replayed);
        assert_eq!(reply["error"], "idempotency key already used for a different request");
    }
    // The same key on another route is another request too.
    let (_, started) = common::start_stream(&app, KEY_A, None).await;
    let stream = started["stream_id"].as_str().unwrap();
    let (status, _, _) = post(&app, &format!("/stream/{stream}/send"), KEY_A, "k-1", &json!({"data": 1})).await;
    assert_eq!(status, 422);

    // Keys are per API key: another caller's identical key is its own.
    let (status, replayed, theirs) = post(&app, "/publish", KEY_B, "k-1", &json!({"message": 2})).await;
    assert_eq!((status, replayed), (200, false), "{theirs}");
    assert_ne!(theirs["id"], first["id"]);

    // Malformed keys are refused (400, a header of the wrong form) before
    // anything is written, on both routes.
    for bad in ["x".repeat(300), " ".to_string(), "caf\u{e9}".to_string()] {
        for path in ["/publish".to_string(), format!("/stream/{stream}/send")] {
            let (status, _, reply) = post_raw(&app, &path, KEY_A, bad.as_bytes(), &json!({"message": 3})).await;
            assert_eq!(status, 400, "{path} {bad:?}: {reply}");
            assert!(reply["detail"].as_str().unwrap_or_default().contains("Idempotency-Key"), "{reply}");
        }
    }

    let events = common::read_all(&kafka, &kafka.topics.events).await;
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    ids.sort();
    let mut expected = vec![first["id"].as_str().unwrap(), theirs["id"].as_str().unwrap()];
    expected.sort();
    assert_eq!(ids, expected, "only the two first requests were written");
    app.stop().await;
}

#[tokio::test]
async fn a_key_is_forgotten_after_its_ttl() {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka.clone());
    config.idempotency_ttl = Duration::from_secs(1);
    let app = common::start(config).await;
    let body = json!({"message": {"n": 1}});

    let (status, replayed, first) = post(&app, "/publish", KEY_A, "short-lived", &body).await;
    assert_eq!((status, replayed), (200, false), "{first}");
    // Repeats within the TTL are replays; once it has passed, the same
    // key writes again (with the same derived id).
    let later = stream_core::testing::eventually(
        Duration::from_secs(30),
        "the key to be forgotten after its 1 s TTL",
        || async {
            let (status, replayed, reply) = post(&app, "/publish", KEY_A, "short-lived", &body).await;
            assert_eq!(status, 200, "{reply}");
            if replayed {
                assert_eq!(reply, first);
                return None;
            }
            Some(reply)
        },
    )
    .await;
    assert_eq!(later["id"], first["id"], "the id comes from the key, not from the attempt");
    assert_ne!((&later["partition"], &later["offset"]), (&first["partition"], &first["offset"]));
    let events = common::read_all(&kafka, &kafka.topics.events).await;
    assert_eq!(events.len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn two_replicas_that_each_accept_the_same_retry_write_one_event_id() {
    // Replicas do not share their memory of keys: each writes once, but
    // both writes carry the id derived from the keys, so consumers and the
    // gateways' fan-out, which deduplicate by event id, see one event.
    let kafka = stream_core::testing::kafka_args();
    let first = common::start(common::config(kafka.clone())).await;
    let second = common::start(common::config(kafka.clone())).await;
    let body = json!({"message": {"payment": 12}});
    let (status, _, a) = post(&first, "/publish", KEY_A, "pay-12", &body).await;
    assert_eq!(status, 200, "{a}");
    let (status, _, b) = post(&second, "/publish", KEY_A, "pay-12", &body).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(a["id"], b["id"]);
    let events = common::read_all(&kafka, &kafka.topics.events).await;
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.id == expected_id(KEY_A, "pay-12")), "{events:?}");
    first.stop().await;
    second.stop().await;
}

/// The broker hangs (SIGSTOP) with the first request's write on the wire:
/// the request answers 503 at its timeout, and the write goes on. Once the
/// broker answers, a retry with the same key gets that write back as a
/// replay, and the topic holds the event once.
#[tokio::test]
async fn a_retry_after_a_503_gets_the_late_write_and_writes_nothing() {
    let broker = stream_core::testing::DurableBroker::start();
    let mut kafka = stream_core::testing::kafka_args();
    kafka.brokers = broker.address.clone();
    let mut config = common::config(kafka.clone());
    config.request_timeout = Duration::from_secs(2);
    let app = common::start(config).await;
    // Connected and written to once, so the next write goes out at once.
    assert_eq!(post(&app, "/publish", KEY_A, "warm", &json!({"message": 0})).await.0, 200);

    let body = json!({"message": {"late": 1}});
    broker.freeze();
    let (status, _, reply) = post(&app, "/publish", KEY_A, "late", &body).await;
    assert_eq!(status, 503, "{reply}");
    broker.thaw();
    let reply = stream_core::testing::eventually(Duration::from_secs(60), "a retry answered 200", || async {
        let (status, replayed, reply) = post(&app, "/publish", KEY_A, "late", &body).await;
        (status == 200).then_some((replayed, reply))
    })
    .await;
    assert!(reply.0, "the retry replays the first request's write: {}", reply.1);
    let id = expected_id(KEY_A, "late");
    assert_eq!(reply.1["id"], id.as_str());
    let events = common::read_all(&kafka, &kafka.topics.events).await;
    assert_eq!(events.iter().filter(|e| e.id == id).count(), 1, "written once");
    app.stop().await;
}
