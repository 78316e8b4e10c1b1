//! `--event-schema` against the real broker: every way an event enters is
//! checked, a mismatch is a 422 (or an error frame) naming where, nothing
//! mismatched is written, and a bad schema file stops start-up.

use crate::common;

use common::{SchemaFile, KEY_A};
use futures::SinkExt;
use producer_api::Application;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

async fn app_with(schema: &SchemaFile) -> (stream_core::KafkaArgs, common::TestApp) {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka.clone());
    config.event_schema = Some(schema.0.clone());
    (kafka, common::start(config).await)
}

async fn post(app: &common::TestApp, path: &str, body: &Value) -> (u16, Value) {
    let response = common::client().post(app.url(path)).header("X-API-Key", KEY_A).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post_text(app: &common::TestApp, path: &str, body: &str) -> (u16, Value) {
    let response = common::client()
        .post(app.url(path))
        .header("X-API-Key", KEY_A)
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn publish_and_batch_events_are_validated_before_they_are_written() {
    let schema = SchemaFile::sensor_readings();
    let (kafka, app) = app_with(&schema).await;

    let good = json!({"sensor": "s1", "temperature": 21.5});
    let (status, ack) = post(&app, "/publish", &json!({"message": good})).await;
    assert_eq!(status, 200, "{ack}");

    let (status, reply) = post(&app, "/publish", &json!({"message": {"sensor": "s1", "temperature": "hot"}})).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"], "event does not match the schema");
    let errors = reply["detail"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{reply}");
    assert_eq!(errors[0]["path"], "/temperature");
    assert!(errors[0]["message"].as_str().unwrap().contains("number"), "{reply}");

    let (status, reply) = post(&app, "/publish", &json!({"message": "not an object"})).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["detail"]["errors"][0]["path"], "");

    // Well-formed text with no JSON value to check (a number beyond f64's
    // range, a lone UTF-16 surrogate) is malformed, as on the other routes.
    for message in [r#"{"sensor": "s1", "temperature": 1e400}"#, r#"{"sensor": "\ud800", "temperature": 1}"#] {
        let (status, reply) = post_text(&app, "/publish", &format!(r#"{{"message": {message}}}"#)).await;
        assert_eq!(status, 400, "{message}: {reply}");
        assert_eq!(reply["error"], "malformed JSON", "{reply}");
    }

    // In a batch, each record is judged on its own.
    let batch = r#"[
        {"message": {"sensor": "s2", "temperature": 3}},
        {"message": {"sensor": "s2"}},
        {"message": {"sensor": "s3", "temperature": -4}},
        {"message": {"sensor": "s4", "temperature": 1e400}}
    ]"#;
    let (status, reply) = post_text(&app, "/publish/batch", batch).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!((reply["succeeded"].as_u64(), reply["failed"].as_u64()), (Some(2), Some(2)));
    let bad = &reply["results"][1];
    assert_eq!(bad["status"], 422);
    assert_eq!(bad["error"], "event does not match the schema");
    assert!(bad["detail"]["errors"][0]["message"].as_str().unwrap().contains("temperature"), "{bad}");
    let malformed = &reply["results"][3];
    assert_eq!((&malformed["status"], &malformed["error"]), (&json!(400), &json!("malformed JSON")), "{malformed}");

    let events = common::read_all(&kafka, &kafka.topics.events).await;
    let mut sensors: Vec<String> = events.iter().map(|e| e.json_data().unwrap()["sensor"].to_string()).collect();
    sensors.sort();
    assert_eq!(sensors, ["\"s1\"", "\"s2\"", "\"s3\""], "only events that match were written");
    app.stop().await;
}

#[tokio::test]
async fn stream_sends_and_websocket_frames_are_validated() {
    let schema = SchemaFile::sensor_readings();
    let (kafka, app) = app_with(&schema).await;
    let (_, started) = common::start_stream(&app, KEY_A, None).await;
    let stream = started["stream_id"].as_str().unwrap();

    let (status, reply) = common::send(&app, KEY_A, stream, json!({"data": {"sensor": 5, "temperature": 1}})).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["detail"]["errors"][0]["path"], "/sensor");
    let (status, reply) = common::send(&app, KEY_A, stream, json!({"data": {"sensor": "a", "temperature": 1}})).await;
    assert_eq!(status, 200, "{reply}");

    let mut socket = common::connect(&app, KEY_A, stream).await;
    socket.send(Message::text(json!({"data": {"sensor": "b"}}).to_string())).await.unwrap();
    let error = common::next_frame_any(&mut socket, &["ack", "error"]).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"], "event does not match the schema");
    assert!(error["detail"]["errors"][0]["message"].as_str().unwrap().contains("temperature"), "{error}");
    // The socket stays open and takes a good event.
    socket.send(Message::text(json!({"sensor": "c", "temperature": 2}).to_string())).await.unwrap();
    let ack = common::next_frame_any(&mut socket, &["ack", "error"]).await;
    assert_eq!(ack["type"], "ack", "{ack}");

    let events = common::read_all(&kafka, &kafka.topics.events).await;
    let mut sensors: Vec<String> = events.iter().map(|e| e.json_data().unwrap()["sensor"].to_string()).collect();
    sensors.sort();
    assert_eq!(sensors, ["\"a\"", "\"c\""]);
    app.stop().await;
}

#[tokio::test]
async fn a_missing_or_invalid_schema_file_stops_start_up() {
    let kafka = stream_core::testing::kafka_args();
    let cases = [
        (None, "reading the event schema"),
        (Some(SchemaFile::text("{not json")), "is not JSON"),
        (Some(SchemaFile::with(&json!({"type": "integer", "minimum": "zero"}))), "not a valid JSON Schema"),
    ];
    for (file, expected) in cases {
        let path = match &file {
            Some(file) => file.0.clone(),
            None => std::env::temp_dir().join(stream_core::testing::unique_name("missing-schema")),
        };
        let mut config = common::config(kafka.clone());
        config.event_schema = Some(path.clone());
        let Err(err) = Application::build(config).await else { panic!("started with the schema {}", path.display()) };
        let err = format!("{err:#}");
        assert!(err.contains(expected) && err.contains(&path.display().to_string()), "{err}");
    }
}
