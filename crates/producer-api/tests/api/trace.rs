//! W3C trace context travels from the HTTP request into the event's headers,
//! through the consumer, into the result the client receives.

use crate::common;

use std::time::Duration;

use serde_json::{json, Value};
use stream_core::schema::{header, trace};
use tokio_util::sync::CancellationToken;

const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn a_request_without_trace_context_starts_a_new_trace() {
    let (kafka, app) = common::spawn_app().await;
    let http = common::client();
    for given in [None, Some("not-a-traceparent")] {
        let mut request = http.post(app.url("/publish")).header("X-API-Key", common::KEY_A);
        if let Some(value) = given {
            request = request.header("traceparent", value);
        }
        let reply = request.json(&json!({ "message": {"n": 1} })).send().await.unwrap();
        assert_eq!(reply.status(), 200);
    }
    let events = common::read_all(&kafka, &kafka.topics.events).await;
    assert_eq!(events.len(), 2);
    let traces: Vec<&str> =
        events.iter().map(|e| e.extension(header::TRACEPARENT).expect("traceparent header")).collect();
    for t in &traces {
        assert!(trace::is_valid(t), "generated traceparent {t} is malformed");
    }
    assert_ne!(traces[0], traces[1], "each request starts its own trace");
    app.stop().await;
}

#[tokio::test]
async fn the_callers_trace_reaches_the_result_on_the_websocket() {
    let (kafka, app) = common::spawn_app().await;
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(consumer::run(consumer::Config::for_tests(kafka.clone(), 1), stop.clone()));
    let http = common::client();
    let (status, started) = common::start_stream(&app, common::KEY_A, None).await;
    assert_eq!(status, 201, "{started}");
    let stream = started["stream_id"].as_str().unwrap().to_owned();
    let mut socket = common::connect(&app, common::KEY_A, &stream).await;
    let sent = http
        .post(app.url(&format!("/stream/{stream}/send")))
        .header("X-API-Key", common::KEY_A)
        .header("traceparent", TRACE)
        .json(&json!({ "data": "traced" }))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let ack: Value = sent.json().await.unwrap();

    // The first result waits for the consumer's group join.
    let result = common::next_frame_within(&mut socket, "result", Duration::from_secs(60)).await;
    assert_eq!(result["event_id"], ack["id"]);
    assert_eq!(result["traceparent"], TRACE, "{result}");

    stop.cancel();
    consumer.await.unwrap().unwrap();
    app.stop().await;
}

#[tokio::test]
async fn events_sent_on_the_websocket_carry_the_upgrades_or_their_frames_trace() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    const FRAME: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (kafka, app) = common::spawn_app().await;
    let (status, started) = common::start_stream(&app, common::KEY_A, None).await;
    assert_eq!(status, 201, "{started}");
    let stream = started["stream_id"].as_str().unwrap().to_owned();
    let mut request = app.ws_url(&format!("/stream/{stream}/results")).into_client_request().unwrap();
    request.headers_mut().insert("X-API-Key", common::KEY_A.parse().unwrap());
    request.headers_mut().insert("traceparent", TRACE.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("WebSocket upgrade");
    let frames = [json!({"data": "socket's"}), json!({"data": "frame's", "traceparent": FRAME})];
    let mut ids = Vec::new();
    for frame in frames {
        socket.send(Message::Text(frame.to_string().into())).await.unwrap();
        ids.push(common::next_frame(&mut socket, "ack").await["id"].as_str().unwrap().to_owned());
    }
    let events = common::read_all(&kafka, &kafka.topics.events).await;
    let trace_of = |id: &str| {
        let event = events.iter().find(|e| e.id == id).unwrap_or_else(|| panic!("event {id} not in the topic"));
        event.extension(header::TRACEPARENT).map(str::to_owned)
    };
    assert_eq!(trace_of(&ids[0]).as_deref(), Some(TRACE));
    assert_eq!(trace_of(&ids[1]).as_deref(), Some(FRAME));
    let data: Vec<Value> = events.iter().map(|e| e.json_data().unwrap()).collect();
    assert_eq!(data, [json!("socket's"), json!("frame's")], "the trace field is not part of the data");
    app.stop().await;
}
