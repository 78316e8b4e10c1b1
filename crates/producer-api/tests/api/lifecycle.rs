//! Start-up failures, backpressure when the broker is gone, recovery when
//! it returns, and graceful shutdown that loses no acknowledged event.

use crate::common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::KEY_A;
use futures::SinkExt;
use serde_json::{json, Value};
use stream_core::testing::eventually;
use stream_core::KafkaArgs;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn start_up_fails_fast_and_clearly_without_a_broker() {
    let mut kafka = KafkaArgs::for_brokers("127.0.0.1:1");
    kafka.connect_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let err = producer_api::Application::build(common::config(kafka)).await.err().expect("no broker, no start");
    let text = format!("{err:#}");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    assert!(text.contains("127.0.0.1:1") || text.contains("topic"), "{text}");
}

/// SIGTERM while start-up waits for a broker that does not answer ends the
/// process at once and cleanly, not after its --connect-timeout.
#[test]
fn sigterm_during_start_up_exits_at_once() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_producer-api"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("API_KEYS", "k")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("KAFKA_BROKERS", "127.0.0.1:1")
        .env("KAFKA_CONNECT_TIMEOUT", "120s")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting producer-api");
    let (lines, seen) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = seen.recv_timeout(left).expect("the 'connecting to' line before the deadline");
        if line.contains("connecting to 127.0.0.1:1") {
            break;
        }
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("producer-api still runs 30 s after SIGTERM, inside a 120 s connection wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "a requested stop exits 0, got {status}");
}

#[tokio::test]
async fn a_configuration_without_keys_is_refused() {
    let config = producer_api::Config::for_tests(KafkaArgs::for_brokers("127.0.0.1:1"), vec![]);
    let err = producer_api::Application::build(config).await.err().expect("no keys, no start");
    assert!(format!("{err:#}").contains("API_KEYS"), "{err:#}");
}

#[tokio::test]
async fn a_listen_address_in_use_is_named_with_its_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = common::config(stream_core::testing::kafka_args());
    config.listen_addr = taken.local_addr().unwrap();
    let err = producer_api::Application::build(config).await.err().expect("the port is taken");
    let text = format!("{err:#}");
    let port = taken.local_addr().unwrap().port().to_string();
    assert!(text.contains("--listen-addr") && text.contains(&port), "{text}");
}

async fn publish(app: &common::TestApp, n: u64) -> reqwest::Response {
    common::client()
        .post(app.url("/publish"))
        .header("X-API-Key", KEY_A)
        .json(&json!({"message": {"n": n}}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn broker_down_means_503_within_the_timeout_then_recovery() {
    let mut broker = stream_core::testing::DurableBroker::start();
    let mut kafka = stream_core::testing::kafka_args();
    kafka.brokers = broker.address.clone();
    let mut config = common::config(kafka);
    config.request_timeout = Duration::from_secs(2);
    config.producer_queue = 1;
    let app = common::start(config).await;
    assert_eq!(publish(&app, 0).await.status(), 200);

    broker.stop();
    // The first publish waits for an ack that cannot come; meanwhile the
    // queue (one record) is full, so a second is refused at once.
    let started = Instant::now();
    let (first, second) = tokio::join!(publish(&app, 1), async {
        // The second request goes out once the first one's record fills the queue.
        stream_core::testing::eventually(Duration::from_secs(2), "the first record to be queued", || async {
            (app.state.publisher.queue_depth() >= 1).then_some(())
        })
        .await;
        let batch = common::client()
            .post(app.url("/publish/batch"))
            .header("X-API-Key", KEY_A)
            .json(&json!([{"message": 2}, {"message": 3}]))
            .send()
            .await
            .unwrap();
        (publish(&app, 2).await, batch)
    });
    let waited = started.elapsed();
    assert_eq!(first.status(), 503);
    assert_eq!(first.headers()["retry-after"], "1");
    let body: Value = first.json().await.unwrap();
    assert!(body["error"].is_string() && body["detail"].is_string(), "{body}");
    assert!(waited < Duration::from_secs(5), "answered after {waited:?} with a 2 s timeout");
    assert_eq!(second.0.status(), 503);
    assert!(second.0.headers().contains_key("retry-after"));
    // Refused by the full queue, not by waiting out the timeout: the reason
    // says which path answered (how fast is the bench's business).
    let body: Value = second.0.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap_or_default().contains("queue is full"), "{body}");
    // A batch none of whose records could be queued is refused whole, as
    // one whose records all timed out is: the client retries it later.
    let batch = second.1;
    assert_eq!(batch.status(), 503);
    assert_eq!(batch.headers()["retry-after"], "1");
    let body: Value = batch.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap_or_default().contains("none of the 2 records"), "{body}");
    let ready = common::client().get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    broker.resume();
    eventually(Duration::from_secs(60), "publishing to work again", || async {
        (publish(&app, 3).await.status() == 200).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_loses_no_acknowledged_event() {
    let (kafka, app) = common::spawn_app().await;
    let client = common::client();
    let url = app.url("/publish");
    let count = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for worker in 0..8u64 {
        let client = client.clone();
        let url = url.clone();
        let count = count.clone();
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0.. {
                let sent = client
                    .post(&url)
                    .header("X-API-Key", KEY_A)
                    .json(&json!({"message": {"worker": worker, "n": n}}))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == 200 => {
                        let ack: Value = response.json().await.unwrap();
                        acked.push(ack["id"].as_str().unwrap().to_owned());
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    // Refused or cut off at shutdown: not acknowledged.
                    _ => break,
                }
            }
            acked
        }));
    }
    eventually(Duration::from_secs(30), "some events to be acknowledged", || async {
        (count.load(Ordering::Relaxed) > 100).then_some(())
    })
    .await;
    app.shutdown.cancel();
    app.handle.await.unwrap().unwrap();
    let mut acked = HashSet::new();
    for sender in senders {
        acked.extend(sender.await.unwrap());
    }
    assert!(!acked.is_empty());
    let written: HashSet<String> =
        common::read_all(&kafka, &kafka.topics.events).await.into_iter().map(|e| e.id).collect();
    let lost: Vec<_> = acked.difference(&written).collect();
    assert!(lost.is_empty(), "{} acknowledged events missing from the topic: {lost:?}", lost.len());
}

#[tokio::test]
async fn at_shutdown_open_websockets_close_with_1001() {
    let (kafka, app) = common::spawn_app().await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let (status, body) = common::start_stream(&app, KEY_A, None).await;
        assert_eq!(status, 201, "{body}");
        let stream = body["stream_id"].as_str().unwrap().to_owned();
        sockets.push(common::connect(&app, KEY_A, &stream).await);
    }
    sockets[0].send(Message::text(r#"{"data": {"n": 1}}"#)).await.unwrap();
    let ack = common::next_frame(&mut sockets[0], "ack").await;
    app.shutdown.cancel();
    for (n, socket) in sockets.iter_mut().enumerate() {
        let close = common::next_close(socket, Duration::from_secs(20), &format!("socket {n} at shutdown"))
            .await
            .expect("the close frame has a code");
        assert_eq!(u16::from(close.code), 1001, "socket {n}: {close:?}");
        assert_eq!(close.reason.as_str(), "server shutting down");
    }
    app.handle.await.unwrap().unwrap();
    let written = common::read_all(&kafka, &kafka.topics.events).await;
    assert!(written.iter().any(|e| e.id == ack["id"].as_str().unwrap()), "the acked event is written");
}
