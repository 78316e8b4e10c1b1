//! The seed's own clients, unchanged: they start a stream with a form,
//! send a form, read results as JSON, and watch `/stream/{id}/stream`.

use crate::common;

use std::time::Duration;

use common::KEY_A;
use serde_json::Value;
use stream_core::testing::eventually;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn form(app: &common::TestApp, path: &str, body: &'static str) -> (u16, Value) {
    common::post_as(app, path, "application/x-www-form-urlencoded", body).await
}

#[tokio::test]
async fn the_seeds_integration_flow_works_with_forms() {
    let (kafka, app) = common::spawn_app().await;
    let processor = common::Processor::start(&kafka);

    // gin's `c.PostForm("stream_id")`: the id comes in a form.
    let (status, body) = form(&app, "/stream/start", "stream_id=abc").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["stream_id"], "abc");
    let (status, _) = form(&app, "/stream/start", "stream_id=abc").await;
    assert_eq!(status, 200, "a retried form start is the owner's");
    assert_eq!(form(&app, "/stream/start", "stream_id=bad%20id").await.0, 422);
    assert_eq!(form(&app, "/stream/start", "other=1").await.0, 422);

    // The seed's WebSocket path is the results WebSocket.
    let mut request = app.ws_url("/stream/abc/stream").into_client_request().unwrap();
    request.headers_mut().insert("X-API-Key", KEY_A.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("/stream/{id}/stream upgrades");

    let (status, ack) = form(&app, "/stream/abc/send", "message=Hello%2C+Kafka%21").await;
    assert_eq!(status, 200, "{ack}");
    let frame = common::next_frame(&mut socket, "result").await;
    assert_eq!(frame["event_id"], ack["id"]);
    assert_eq!(frame["output"]["echo"], "Hello, Kafka!");

    // Without an upgrade: JSON that holds the message's result.
    let url = app.url("/stream/abc/results");
    let text = eventually(Duration::from_secs(20), "Hello, Kafka! in the JSON results", || async {
        let response = common::client().get(&url).header("X-API-Key", KEY_A).send().await.ok()?;
        assert_eq!(response.status(), 200);
        let text = response.text().await.ok()?;
        text.contains("Hello, Kafka!").then_some(text)
    })
    .await;
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["results"][0]["event_id"], ack["id"]);

    // The seed's own flow, as its integration test runs it: start, send,
    // then one read at once, with no socket open and no polling.
    assert_eq!(form(&app, "/stream/start", "stream_id=seed-flow").await.0, 201);
    let (status, ack) = form(&app, "/stream/seed-flow/send", "message=Hello%2C+Kafka%21").await;
    assert_eq!(status, 200, "{ack}");
    let response = common::client().get(app.url("/stream/seed-flow/results")).header("X-API-Key", KEY_A).send().await;
    let body: Value = response.unwrap().json().await.unwrap();
    assert_eq!(body["results"][0]["event_id"], ack["id"], "the read waited for the send's result: {body}");
    assert_eq!(body["results"][0]["output"]["echo"], "Hello, Kafka!");

    processor.stop().await;
    app.stop().await;
}
