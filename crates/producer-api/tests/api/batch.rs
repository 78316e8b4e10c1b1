//! `/publish/batch`: JSON arrays and NDJSON, per-record results, limits.

use crate::common;

use serde_json::{json, Value};

async fn post_batch(app: &common::TestApp, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    common::post_as(app, "/publish/batch", content_type, body).await
}

#[tokio::test]
async fn one_bad_record_does_not_fail_the_rest() {
    let (kafka, app) = common::spawn_app().await;
    let body = json!([
        {"message": {"n": 0}, "key": "k"},
        {"msg": "wrong shape"},
        {"message": {"n": 2}, "headers": {"ce_type": "reserved"}},
        {"message": {"n": 3}, "headers": {"h": "v"}},
    ]);
    let (status, reply) = post_batch(&app, "application/json", body.to_string()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!((reply["succeeded"].as_u64(), reply["failed"].as_u64()), (Some(2), Some(2)));
    let results = reply["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["index"], i);
    }
    assert_eq!(results[1]["status"], 422);
    assert_eq!(results[2]["status"], 422);
    assert!(results[1]["error"].is_string());
    let ids: Vec<&str> = [&results[0], &results[3]].iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(results[0]["topic"], kafka.topics.events.as_str());

    let events = common::read_all(&kafka, &kafka.topics.events).await;
    assert_eq!(events.len(), 2, "only the good records are written");
    for id in ids {
        let event = events.iter().find(|e| e.id == id).expect("acked record is in the topic");
        assert!(event.json_data().unwrap()["n"] == 0 || event.extension("h") == Some("v"));
    }
    app.stop().await;
}

#[tokio::test]
async fn ndjson_batches_report_bad_lines_individually() {
    let (kafka, app) = common::spawn_app().await;
    let mut body = String::new();
    for n in 0..500 {
        body.push_str(&json!({"message": {"n": n}, "key": format!("k{}", n % 7)}).to_string());
        body.push('\n');
    }
    body.push_str("{broken\n\n");
    let (status, reply) = post_batch(&app, "application/x-ndjson", body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!((reply["succeeded"].as_u64(), reply["failed"].as_u64()), (Some(500), Some(1)));
    assert_eq!(reply["results"][500]["status"], 400);
    let events = common::read_all(&kafka, &kafka.topics.events).await;
    assert_eq!(events.len(), 500);
    app.stop().await;
}

#[tokio::test]
async fn batch_limits_and_framing_errors() {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka);
    config.max_batch_records = 3;
    config.max_batch_bytes = 1000;
    let app = common::start(config).await;

    let four = json!([{"message": 1}, {"message": 2}, {"message": 3}, {"message": 4}]).to_string();
    assert_eq!(post_batch(&app, "application/json", four).await.0, 413);
    assert_eq!(post_batch(&app, "application/x-ndjson", "{}\n{}\n{}\n{}\n").await.0, 413);
    let big = json!([{"message": "x".repeat(2000)}]).to_string();
    assert_eq!(post_batch(&app, "application/json", big).await.0, 413);
    assert_eq!(post_batch(&app, "text/csv", "a,b").await.0, 415);
    assert_eq!(post_batch(&app, "application/json", "[{").await.0, 400);
    assert_eq!(post_batch(&app, "application/json", r#"{"message": 1}"#).await.0, 422);
    assert_eq!(post_batch(&app, "application/json", "[]").await.0, 422);
    let (status, body) = post_batch(&app, "application/json; charset=utf-8", r#"[{"message": 1}]"#).await;
    assert_eq!((status, body["succeeded"].as_u64()), (200, Some(1)));
    app.stop().await;
}

/// A batch has no idempotency: an `Idempotency-Key` on one is refused
/// rather than ignored, so a client's "safe" retry cannot write it twice.
#[tokio::test]
async fn an_idempotency_key_on_a_batch_is_refused_and_nothing_is_written() {
    let (kafka, app) = common::spawn_app().await;
    let reply = common::client()
        .post(app.url("/publish/batch"))
        .header("X-API-Key", common::KEY_A)
        .header("Idempotency-Key", "batch-1")
        .json(&json!([{"message": 1}]))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 400);
    let body: Value = reply.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap_or_default().contains("not to batches"), "{body}");
    let (status, _) = post_batch(&app, "application/json", json!([{"message": 2}]).to_string()).await;
    assert_eq!(status, 200);
    let events = common::read_all(&kafka, &kafka.topics.events).await;
    assert_eq!(events.iter().map(|e| e.json_data().unwrap()).collect::<Vec<_>>(), [json!(2)]);
    app.stop().await;
}
