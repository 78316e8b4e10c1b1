//! Streams: start, send, results over WebSocket, SSE and JSON, delete, and
//! ownership shared by replicas and kept across restarts.

use crate::common;

use std::time::Duration;

use common::{KEY_A, KEY_B};
use futures::SinkExt;
use serde_json::{json, Value};
use stream_core::testing::eventually;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use common::{connect, next_frame, next_frame_within, send, start_stream};

#[tokio::test]
async fn websocket_round_trip_through_a_processor() {
    let (kafka, app) = common::spawn_app().await;
    let processor = common::Processor::start(&kafka);

    let (status, body) = start_stream(&app, KEY_A, None).await;
    assert_eq!(status, 201, "{body}");
    let stream = body["stream_id"].as_str().unwrap().to_owned();
    let mut socket = connect(&app, KEY_A, &stream).await;

    // An event sent over HTTP comes back as a result frame on the socket.
    let (status, ack) = send(&app, KEY_A, &stream, json!({"data": {"n": 1}})).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["stream_id"], stream.as_str());
    assert_eq!(ack["topic"], kafka.topics.events.as_str());
    let result = next_frame(&mut socket, "result").await;
    assert_eq!(result["event_id"], ack["id"]);
    assert_eq!(result["stream_id"], stream.as_str());
    assert_eq!(result["output"]["echo"], json!({"n": 1}));
    assert_eq!(result["worker_id"], 7);
    for field in ["event_time", "processed_at", "latency_us"] {
        assert!(!result[field].is_null(), "{field} missing from {result}");
    }

    // An event sent on the socket is acked there, then its result arrives.
    socket.send(Message::text(r#"{"data": {"n": 2}}"#)).await.unwrap();
    let (ack, result) = common::ack_and_result(&mut socket).await;
    assert!(ack["offset"].as_i64().unwrap() >= 0 && ack["partition"].is_number());
    assert_eq!(result["output"]["echo"], json!({"n": 2}));

    // The seed's field name works too; bad frames get an error frame and
    // the socket stays usable.
    socket.send(Message::text("{not json")).await.unwrap();
    let error = next_frame(&mut socket, "error").await;
    assert!(error["error"].as_str().unwrap().contains("JSON"), "{error}");
    socket.send(Message::text(r#"{"message": "three"}"#)).await.unwrap();
    let (_, result) = common::ack_and_result(&mut socket).await;
    assert_eq!(result["output"]["echo"], json!("three"));

    // Without an upgrade: the recent results as JSON.
    let recent: Value = common::client()
        .get(app.url(&format!("/stream/{stream}/results")))
        .header("X-API-Key", KEY_A)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let outputs: Vec<Value> =
        recent["results"].as_array().unwrap().iter().map(|r| r["output"]["echo"].clone()).collect();
    assert_eq!(outputs, [json!({"n": 1}), json!({"n": 2}), json!("three")]);

    // Routing is counted (the recorder is the process's, shared by the
    // tests running beside this one, hence at least).
    let metrics = common::client().get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let sample = |name: &str| -> f64 {
        let line =
            metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}: {metrics}"));
        line[name.len()..].trim().parse().unwrap()
    };
    assert!(sample("results_received_total") >= 3.0, "{metrics}");
    assert!(sample("results_routed_total") >= 3.0, "{metrics}");
    assert!(sample("result_delivery_latency_seconds_count") >= 3.0, "{metrics}");

    // Another key can neither watch nor send; deleting closes the socket.
    let response = common::client()
        .get(app.url(&format!("/stream/{stream}/results")))
        .header("X-API-Key", KEY_B)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(send(&app, KEY_B, &stream, json!({"data": 1})).await.0, 403);
    let response =
        common::client().delete(app.url(&format!("/stream/{stream}"))).header("X-API-Key", KEY_A).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let closed = common::next_close(&mut socket, Duration::from_secs(10), "socket after delete").await;
    assert_eq!(u16::from(closed.expect("close frame has a code").code), 1000);
    assert_eq!(send(&app, KEY_A, &stream, json!({"data": 1})).await.0, 404);

    processor.stop().await;
    app.stop().await;
}

/// Frames sent without waiting are answered in their order, whichever
/// answer is ready first (an error at once, an ack after the broker's);
/// a client's Close is answered with a Close, as RFC 6455 asks.
#[tokio::test]
async fn websocket_answers_follow_the_frames_order_and_a_close_is_answered() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    let (_kafka, app) = common::spawn_app().await;
    let (status, body) = start_stream(&app, KEY_A, None).await;
    assert_eq!(status, 201, "{body}");
    let stream = body["stream_id"].as_str().unwrap().to_owned();
    let mut socket = connect(&app, KEY_A, &stream).await;
    for frame in [r#"{"data": 1}"#, "not json", r#"{"data": 2}"#, "nor this"] {
        socket.send(Message::text(frame)).await.unwrap();
    }
    let mut answers = Vec::new();
    while answers.len() < 4 {
        let frame = tokio::time::timeout(Duration::from_secs(20), socket.next()).await.expect("an answer");
        let Some(Ok(Message::Text(text))) = frame else { panic!("expected an answer frame, got {frame:?}") };
        let frame: Value = serde_json::from_str(&text).unwrap();
        answers.push(frame["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(answers, ["ack", "error", "ack", "error"]);

    socket.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "done".into() }))).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("a reply to the close");
    assert!(matches!(reply, Some(Ok(Message::Close(_)))), "expected a Close back, got {reply:?}");
    app.stop().await;
}

#[tokio::test]
async fn server_sent_events_carry_results() {
    let (kafka, app) = common::spawn_app().await;
    let processor = common::Processor::start(&kafka);
    let (status, _) = start_stream(&app, KEY_A, Some(json!({"stream_id": "sse-stream"}))).await;
    assert_eq!(status, 201);

    let mut response = common::client()
        .get(app.url("/stream/sse-stream/results"))
        .header("X-API-Key", KEY_A)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));

    let (status, ack) = send(&app, KEY_A, "sse-stream", json!({"data": "hello"})).await;
    assert_eq!(status, 200, "{ack}");
    let mut text = String::new();
    let data = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let chunk = response.chunk().await.unwrap().expect("SSE stream stays open");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            if let Some(event) = text.split("\n\n").find(|e| e.contains("data: ")) {
                // A result is an unnamed event, so EventSource.onmessage gets it.
                assert!(!event.contains("event:"), "{event}");
                assert!(event.lines().any(|l| l.starts_with("id: ")), "a result event carries its cursor: {event}");
                let data = event.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                return serde_json::from_str::<Value>(data).unwrap();
            }
        }
    })
    .await
    .expect("a result event within 20 s");
    assert_eq!(data["type"], "result");
    assert_eq!(data["event_id"], ack["id"]);
    assert_eq!(data["output"]["echo"], "hello");

    processor.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn start_validates_its_body_and_is_idempotent_for_the_owner() {
    let (_kafka, app) = common::spawn_app().await;
    assert_eq!(start_stream(&app, KEY_A, Some(json!({"stream_id": "s-1"}))).await.0, 201);
    assert_eq!(start_stream(&app, KEY_A, Some(json!({"stream_id": "s-1"}))).await.0, 200);
    assert_eq!(start_stream(&app, KEY_B, Some(json!({"stream_id": "s-1"}))).await.0, 403);
    assert_eq!(start_stream(&app, KEY_A, Some(json!({"stream_id": "bad id/x"}))).await.0, 422);
    assert_eq!(start_stream(&app, KEY_A, Some(json!({"stream": "x"}))).await.0, 422);
    assert_eq!(start_stream(&app, "nobody", None).await.0, 401);
    let response = common::client()
        .post(app.url("/stream/start"))
        .header("X-API-Key", KEY_A)
        .header("Content-Type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = common::client()
        .post(app.url("/stream/start"))
        .header("X-API-Key", KEY_A)
        .header("Content-Type", "text/plain")
        .body("stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(send(&app, KEY_A, "s-1", json!({"nothing": 1})).await.0, 422);
    let response = common::client().delete(app.url("/stream/s-1")).header("X-API-Key", KEY_B).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let response =
        common::client().delete(app.url("/stream/never-started")).header("X-API-Key", KEY_A).send().await.unwrap();
    assert_eq!(response.status(), 404);
    app.stop().await;
}

/// Registry writes go through a producer that sends at once: with events
/// lingering 25 s, a start or a delete still answers long before (it
/// would have waited out the linger, and this client gives up after 10).
#[tokio::test]
async fn starts_and_deletes_do_not_wait_for_the_events_linger() {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka);
    config.linger = Duration::from_secs(25);
    config.request_timeout = Duration::from_secs(30);
    let app = common::start(config).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let start = |body: Option<Value>| {
        let request = client.post(app.url("/stream/start")).header("X-API-Key", KEY_A);
        match body {
            Some(body) => request.json(&body),
            None => request,
        }
        .send()
    };
    let response = start(None).await.expect("a start answers before the linger ends");
    assert_eq!(response.status(), 201);
    let response = start(Some(json!({"stream_id": "chosen"}))).await.expect("a start answers before the linger ends");
    assert_eq!(response.status(), 201);
    let response = client
        .delete(app.url("/stream/chosen"))
        .header("X-API-Key", KEY_A)
        .send()
        .await
        .expect("a delete answers before the linger ends");
    assert_eq!(response.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn replicas_share_ownership_and_it_survives_a_restart() {
    let kafka = stream_core::testing::kafka_args();
    let a = common::start(common::config(kafka.clone())).await;
    let b = common::start(common::config(kafka.clone())).await;

    let (status, _) = start_stream(&a, KEY_A, Some(json!({"stream_id": "shared"}))).await;
    assert_eq!(status, 201);
    // B learns of the stream through the ownership topic.
    assert_eq!(send(&b, KEY_B, "shared", json!({"data": 1})).await.0, 403);
    assert_eq!(send(&b, KEY_A, "shared", json!({"data": 1})).await.0, 200);
    assert_eq!(start_stream(&b, KEY_B, Some(json!({"stream_id": "shared"}))).await.0, 403);

    // Deleting on B closes it on A as well.
    let response = common::client().delete(b.url("/stream/shared")).header("X-API-Key", KEY_A).send().await.unwrap();
    assert_eq!(response.status(), 200);
    eventually(Duration::from_secs(10), "A to see the deletion", || async {
        (a.state.registry.owner_of("shared").is_none()).then_some(())
    })
    .await;
    assert_eq!(send(&a, KEY_A, "shared", json!({"data": 1})).await.0, 404);

    // A stream started before a restart still belongs to its key after it.
    assert_eq!(start_stream(&a, KEY_A, Some(json!({"stream_id": "durable"}))).await.0, 201);
    a.stop().await;
    b.stop().await;
    let c = common::start(common::config(kafka.clone())).await;
    assert_eq!(send(&c, KEY_B, "durable", json!({"data": 1})).await.0, 403);
    assert_eq!(send(&c, KEY_A, "durable", json!({"data": 1})).await.0, 200);
    assert_eq!(send(&c, KEY_A, "shared", json!({"data": 1})).await.0, 404);
    // The registry stores a fingerprint, never the key itself.
    let claims = common::read_all(&kafka, &format!("{}.streams", kafka.topics.events)).await;
    assert!(!claims.is_empty());
    for claim in claims {
        let text = String::from_utf8_lossy(&claim.data);
        assert!(!text.contains(KEY_A) && !text.contains(KEY_B), "raw key stored: {text}");
    }
    c.stop().await;
}

#[tokio::test]
async fn results_of_the_real_consumer_reach_the_websocket() {
    let (kafka, app) = common::spawn_app().await;
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(consumer::run(consumer::Config::for_tests(kafka.clone(), 2), stop.clone()));

    let (status, body) = start_stream(&app, KEY_A, None).await;
    assert_eq!(status, 201, "{body}");
    let stream = body["stream_id"].as_str().unwrap().to_owned();
    let mut socket = connect(&app, KEY_A, &stream).await;
    socket.send(Message::text(r#"{"data": {"temperature": 21.5}}"#)).await.unwrap();
    let ack = next_frame(&mut socket, "ack").await;
    // The group join takes a few seconds before the first result.
    let result = next_frame_within(&mut socket, "result", Duration::from_secs(60)).await;
    assert_eq!(result["event_id"], ack["id"]);
    assert_eq!(result["stream_id"], stream.as_str());
    assert!(result["worker_id"].is_number(), "{result}");

    stop.cancel();
    consumer.await.unwrap().unwrap();
    app.stop().await;
}

#[tokio::test]
async fn concurrent_starts_on_two_replicas_have_exactly_one_winner() {
    let kafka = stream_core::testing::kafka_args();
    // The loser writes twice and reads its claim back before it answers;
    // on a loaded CI machine that can outlast the 5 s test default, and a 503
    // ("retry shortly") would say nothing about who won.
    let replica = || {
        let mut config = common::config(kafka.clone());
        config.request_timeout = Duration::from_secs(30);
        config
    };
    let a = common::start(replica()).await;
    let b = common::start(replica()).await;
    for n in 0..10 {
        let id = format!("race-{n}");
        let body = json!({ "stream_id": id });
        let ((on_a, _), (on_b, _)) =
            tokio::join!(start_stream(&a, KEY_A, Some(body.clone())), start_stream(&b, KEY_B, Some(body)));
        let mut outcome = [on_a, on_b];
        outcome.sort();
        assert_eq!(outcome, [201, 403], "{id}: A got {on_a}, B got {on_b}");
        let winner = if on_a == 201 { &a } else { &b };
        let owner = winner.state.registry.owner_of(&id).expect("winner knows the stream");
        let other = if on_a == 201 { &b } else { &a };
        assert_eq!(other.state.registry.owner_of(&id), Some(owner), "{id}: replicas disagree");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_start_repeated_at_once_on_another_replica_is_the_owners_not_a_new_stream() {
    let kafka = stream_core::testing::kafka_args();
    let a = common::start(common::config(kafka.clone())).await;
    let b = common::start(common::config(kafka.clone())).await;
    for n in 0..5 {
        let id = format!("again-{n}");
        let body = json!({ "stream_id": id });
        assert_eq!(start_stream(&a, KEY_A, Some(body.clone())).await.0, 201, "{id}");
        // At once on B, which may not have read A's claim yet: B's own
        // claim comes second in the log, so the stream is A's start.
        assert_eq!(start_stream(&b, KEY_A, Some(body.clone())).await.0, 200, "{id}: a repeated start on B");
        assert_eq!(start_stream(&b, KEY_B, Some(body)).await.0, 403, "{id}: another key on B");
    }
    // Each id's latest record, the one compaction keeps, restates the
    // claim that opened the stream, start time included: replays after a
    // restart tell the stream's results from an earlier stream's by it.
    let topic = format!("{}.streams", kafka.topics.events);
    let mut claims: std::collections::HashMap<String, Vec<Value>> = Default::default();
    for record in common::read_records(&kafka, &topic).await {
        use rdkafka::Message as _;
        let (Some(key), Some(value)) = (record.key(), record.payload()) else { continue };
        let key = String::from_utf8(key.to_vec()).unwrap();
        if key.starts_with("again-") {
            claims.entry(key).or_default().push(serde_json::from_slice(value).unwrap());
        }
    }
    assert_eq!(claims.len(), 5);
    for (id, claims) in &claims {
        // One record when B had read A's claim before the repeat came.
        assert_eq!(claims.last(), claims.first(), "{id}: the latest claim is the first, restated");
    }
    a.stop().await;
    b.stop().await;
}

/// The seed's clients post `message` as an HTML form field; its text becomes
/// the event's data as a JSON string, keyed by the stream id.
#[tokio::test]
async fn send_accepts_a_form_field_as_the_seed_posts_it() {
    use rdkafka::Message as _;
    let (kafka, app) = common::spawn_app().await;
    assert_eq!(start_stream(&app, KEY_A, Some(json!({"stream_id": "formed"}))).await.0, 201);
    let post = |body: &'static str| {
        common::client()
            .post(app.url("/stream/formed/send"))
            .header("X-API-Key", KEY_A)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let response = post("message=Hello%2C+Kafka%21").await.unwrap();
    assert_eq!(response.status(), 200);
    let ack: Value = response.json().await.unwrap();
    let record = common::read_record(
        &kafka,
        ack["topic"].as_str().unwrap(),
        ack["partition"].as_i64().unwrap() as i32,
        ack["offset"].as_i64().unwrap(),
    )
    .await;
    assert_eq!(record.payload(), Some(&br#""Hello, Kafka!""#[..]));
    assert_eq!(record.key(), Some(&b"formed"[..]));

    assert_eq!(post("data=x").await.unwrap().status(), 200);
    let response = post("other=1").await.unwrap();
    assert_eq!(response.status(), 422);
    let error: Value = response.json().await.unwrap();
    assert!(error["detail"].as_str().unwrap_or_default().contains("message"), "{error}");
    app.stop().await;
}
