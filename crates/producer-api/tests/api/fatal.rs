//! A producer librdkafka declares dead: an idempotent producer's fatal
//! error, as when the broker answers OutOfOrderSequenceNumber. Without a
//! replacement every later send would fail until a restart.

use crate::common;

use common::KEY_A;
use producer_api::producer::Ack;
use serde_json::{json, Value};
use stream_core::kafka::Producer;
use stream_core::schema::Event;

/// Raises a fatal error on `producer` as librdkafka does when the broker
/// breaks the idempotent producer's sequence.
fn kill(producer: &Producer) {
    // SAFETY: `native_ptr` is the live librdkafka handle `producer` owns
    // (it outlives the call), and the reason is a NUL-terminated literal;
    // `rd_kafka_test_fatal_error` only records the error on the handle.
    #[allow(unsafe_code)]
    let err = unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            producer.client().native_ptr(),
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            c"broken sequence (test)".as_ptr(),
        )
    };
    assert_eq!(err, rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
    assert!(producer.client().fatal_error().is_some());
}

async fn publish(app: &common::TestApp, n: u32) -> (u16, Value) {
    let response = common::client()
        .post(app.url("/publish"))
        .header("X-API-Key", KEY_A)
        .json(&json!({"message": {"n": n}, "key": "k"}))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_dead_producer_costs_one_503_and_is_replaced() {
    let (kafka, app) = common::spawn_app().await;
    let (status, before) = publish(&app, 1).await;
    assert_eq!(status, 200, "{before}");

    kill(&app.state.publisher.producer());
    // The request that meets the dead producer is refused as retryable,
    // saying why, and the producer is replaced.
    let (status, refused) = publish(&app, 2).await;
    assert_eq!(status, 503, "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("fatal error"), "{refused}");
    assert_eq!(app.state.publisher.replacements(), 1);
    assert!(app.state.publisher.producer().client().fatal_error().is_none());

    // Sends and the readiness probe work again at once; stream starts, on
    // the registry's own producer, were never held up.
    let (status, after) = publish(&app, 3).await;
    assert_eq!(status, 200, "{after}");
    let (status, started) = common::start_stream(&app, KEY_A, None).await;
    assert_eq!(status, 201, "{started}");
    let ready = common::client().get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    // Both acknowledged events are in the topic; the refused one is not.
    let acked: Vec<String> =
        [before, after].iter().map(|ack| serde_json::from_value::<Ack>(ack.clone()).unwrap().id).collect();
    let written: Vec<Event> = common::read_all(&kafka, &kafka.topics.events).await;
    let ids: Vec<&str> = written.iter().map(|e| e.id.as_str()).collect();
    for id in &acked {
        assert!(ids.contains(&id.as_str()), "{id} missing from {ids:?}");
    }
    let payloads: Vec<Value> = written.iter().map(|e| serde_json::from_slice(&e.data).unwrap()).collect();
    assert!(!payloads.contains(&json!({"n": 2})), "{payloads:?}");
    app.stop().await;
}

/// The stream registry writes through a producer of its own: when that one
/// dies, the start that meets it is refused and the producer replaced, and
/// the events' producer is left alone.
#[tokio::test]
async fn a_dead_registry_producer_costs_one_start_and_is_replaced() {
    let (_kafka, app) = common::spawn_app().await;
    kill(&app.state.claims.producer());
    let (status, refused) = common::start_stream(&app, KEY_A, None).await;
    assert_eq!(status, 503, "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("fatal error"), "{refused}");
    assert_eq!(app.state.claims.replacements(), 1);
    assert_eq!(app.state.publisher.replacements(), 0);

    let (status, started) = common::start_stream(&app, KEY_A, None).await;
    assert_eq!(status, 201, "{started}");
    let stream = started["stream_id"].as_str().unwrap();
    let response =
        common::client().delete(app.url(&format!("/stream/{stream}"))).header("X-API-Key", KEY_A).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let (status, sent) = publish(&app, 1).await;
    assert_eq!(status, 200, "{sent}");
    app.stop().await;
}
