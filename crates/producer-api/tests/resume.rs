//! Results that survive a reconnect: every result carries a cursor; SSE
//! (`Last-Event-ID`), WebSocket (`?after=`) and the JSON long poll resume
//! right after it with exactly the rest, in order; a slow subscriber is
//! served from the log; a consumer's replayed results reach a subscriber
//! once.

mod child;
mod common;

use std::time::Duration;

use common::{send, start_stream, KEY_A, KEY_B};
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::TopicPartitionList;
use serde_json::{json, Value};
use stream_core::kafka::{self, ProducerOptions};
use stream_core::schema::{Event, EventResult};
use stream_core::testing::eventually;
use stream_core::KafkaArgs;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// An open Server-Sent Events response and what has been read of it.
struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    async fn open(base: &str, stream: &str, key: &str, last_event_id: Option<&str>, query: &str) -> Sse {
        let mut request = common::client()
            .get(format!("{base}/stream/{stream}/results{query}"))
            .header("X-API-Key", key)
            .header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        Sse { response, buffer: String::new() }
    }

    /// The next result event (an unnamed one): its id and its data.
    async fn next_result(&mut self) -> (String, Value) {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                while let Some(end) = self.buffer.find("\n\n") {
                    let event: String = self.buffer.drain(..end + 2).collect();
                    assert!(!event.contains("event: notice"), "unexpected notice: {event}");
                    if !event.lines().any(|l| l.starts_with("data: ")) {
                        continue;
                    }
                    assert!(!event.contains("event:"), "a result is an unnamed event: {event}");
                    let id = event.lines().find_map(|l| l.strip_prefix("id: ")).expect("a result event has an id");
                    let data = event.lines().find_map(|l| l.strip_prefix("data: ")).expect("data");
                    return (id.to_owned(), serde_json::from_str(data).unwrap());
                }
                let chunk = self.response.chunk().await.unwrap().expect("the SSE stream stays open");
                self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .expect("a result event within 30 s")
    }
}

/// `n` of a result of an event sent by [`send_n`].
fn n_of(result: &Value) -> i64 {
    result["output"]["echo"]["n"].as_i64().unwrap_or_else(|| panic!("no n in {result}"))
}

/// The `n` of every result in a JSON page or recent view, in order.
fn ns_of(body: &Value) -> Vec<i64> {
    body["results"].as_array().unwrap_or_else(|| panic!("no results in {body}")).iter().map(n_of).collect()
}

async fn send_n(base: &common::TestApp, stream: &str, range: std::ops::Range<i64>) {
    for n in range {
        let (status, body) = send(base, KEY_A, stream, json!({"data": {"n": n}})).await;
        assert_eq!(status, 200, "{body}");
    }
}

/// A WebSocket on `stream`'s results with `query`.
async fn ws(app_ws_url: String) -> common::Socket {
    ws_as(KEY_A, app_ws_url).await
}

async fn ws_as(key: &str, app_ws_url: String) -> common::Socket {
    let mut request = app_ws_url.into_client_request().unwrap();
    request.headers_mut().insert("X-API-Key", key.parse().unwrap());
    tokio_tungstenite::connect_async(request).await.expect("WebSocket upgrade").0
}

#[tokio::test]
async fn sse_resumes_after_last_event_id_with_exactly_the_rest_in_order() {
    let (kafka, app) = common::spawn_app().await;
    let processor = common::Processor::start(&kafka);
    assert_eq!(start_stream(&app, KEY_A, Some(json!({"stream_id": "sse"}))).await.0, 201);

    let base = app.url("");
    let mut sse = Sse::open(&base, "sse", KEY_A, None, "").await;
    send_n(&app, "sse", 0..10).await;
    let mut last = String::new();
    for expect in 0..5 {
        let (id, data) = sse.next_result().await;
        assert_eq!(n_of(&data), expect);
        assert_eq!(data["cursor"], id.as_str(), "the event id is the frame's cursor");
        last = id;
    }
    // The connection drops mid-stream; the client keeps sending.
    drop(sse);
    send_n(&app, "sse", 10..20).await;

    let mut sse = Sse::open(&base, "sse", KEY_A, Some(&last), "").await;
    for expect in 5..20 {
        assert_eq!(n_of(&sse.next_result().await.1), expect);
    }
    // Then it is live, and nothing came twice: the next result is the next event's.
    send_n(&app, "sse", 20..21).await;
    assert_eq!(n_of(&sse.next_result().await.1), 20);

    // A browser's reconnect sends Last-Event-ID with the URL it first used:
    // the header wins over the URL's older cursor.
    let (_, first) = Sse::open(&base, "sse", KEY_A, None, "?from=beginning").await.next_result().await;
    assert_eq!(n_of(&first), 0);
    let after_first = first["cursor"].as_str().unwrap().to_owned();
    let mut sse = Sse::open(&base, "sse", KEY_A, Some(&last), &format!("?after={after_first}")).await;
    assert_eq!(n_of(&sse.next_result().await.1), 5);

    // Another replica resumes from the same cursor.
    let replica = common::start(common::config(kafka.clone())).await;
    let mut sse = Sse::open(&replica.url(""), "sse", KEY_A, Some(&last), "").await;
    for expect in 5..21 {
        assert_eq!(n_of(&sse.next_result().await.1), expect);
    }
    drop(sse);
    replica.stop().await;

    processor.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn websocket_resumes_after_a_cursor_and_joins_the_live_feed() {
    let (kafka, app) = common::spawn_app().await;
    let processor = common::Processor::start(&kafka);
    assert_eq!(start_stream(&app, KEY_A, Some(json!({"stream_id": "ws"}))).await.0, 201);

    let mut socket = ws(app.ws_url("/stream/ws/results")).await;
    send_n(&app, "ws", 0..8).await;
    let mut cursor = String::new();
    for expect in 0..4 {
        let frame = common::next_frame(&mut socket, "result").await;
        assert_eq!(n_of(&frame), expect);
        cursor = frame["cursor"].as_str().expect("frames carry a cursor").to_owned();
    }
    drop(socket);
    send_n(&app, "ws", 8..15).await;

    // The seed's path takes the cursor too.
    let mut socket = ws(app.ws_url(&format!("/stream/ws/stream?after={cursor}"))).await;
    for expect in 4..15 {
        assert_eq!(n_of(&common::next_frame(&mut socket, "result").await), expect);
    }
    send_n(&app, "ws", 15..16).await;
    assert_eq!(n_of(&common::next_frame(&mut socket, "result").await), 15);

    // From the beginning, on a second socket.
    let mut all = ws(app.ws_url("/stream/ws/results?from=beginning")).await;
    for expect in 0..16 {
        assert_eq!(n_of(&common::next_frame(&mut all, "result").await), expect);
    }

    processor.stop().await;
    app.stop().await;
}

async fn get_json(url: &str) -> (u16, Value) {
    get_json_as(KEY_A, url).await
}

async fn get_json_as(key: &str, url: &str) -> (u16, Value) {
    let response = common::client().get(url).header("X-API-Key", key).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_json_long_poll_pages_through_a_stream() {
    let (kafka, app) = common::spawn_app().await;
    let processor = common::Processor::start(&kafka);
    assert_eq!(start_stream(&app, KEY_A, Some(json!({"stream_id": "poll"}))).await.0, 201);
    send_n(&app, "poll", 0..25).await;

    // Page by page with `next`, 10 at a time, until all 25 are read.
    let mut seen = Vec::new();
    let mut url = app.url("/stream/poll/results?from=beginning&limit=10&wait=5");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < 25 {
        assert!(tokio::time::Instant::now() < deadline, "only {seen:?} paged through within 60 s");
        let (status, page) = get_json(&url).await;
        assert_eq!(status, 200, "{page}");
        let results = page["results"].as_array().unwrap();
        assert!(results.len() <= 10, "limit honoured");
        seen.extend(results.iter().map(n_of));
        let next = page["next"].as_str().expect("a page names the next cursor");
        if let Some(last) = results.last() {
            assert_eq!(last["cursor"], next);
        }
        url = app.url(&format!("/stream/poll/results?after={next}&limit=10&wait=5"));
    }
    assert_eq!(seen, (0..25).collect::<Vec<_>>(), "every result once, in order");

    // Level with the stream: a poll with a short wait answers empty, with
    // the same cursor to poll from again.
    let (status, page) = get_json(&url.replace("wait=5", "wait=0.2")).await;
    assert_eq!(status, 200);
    assert_eq!(page["results"], json!([]));
    let next = page["next"].as_str().unwrap().to_owned();
    assert!(url.contains(&next));

    // A long poll returns as soon as a result arrives.
    let poll_url = app.url(&format!("/stream/poll/results?after={next}&wait=10"));
    let poll = tokio::spawn(async move { get_json(&poll_url).await });
    send_n(&app, "poll", 25..26).await;
    let (status, page) = poll.await.unwrap();
    assert_eq!(status, 200, "{page}");
    assert_eq!(ns_of(&page), [25]);

    // Without after/from: the recent results, as before, now with cursors.
    let (_, recent) = get_json(&app.url("/stream/poll/results")).await;
    let recent = recent["results"].as_array().unwrap();
    assert_eq!(recent.len(), 26);
    assert!(recent.iter().all(|r| r["cursor"].is_string()));

    processor.stop().await;
    app.stop().await;
}

/// A feed's caller may drop its wait to do something else (a socket's
/// `select!` takes an ack or a client frame instead) and call again. The
/// broker queries a catch-up makes (watermarks, a reader) run on the
/// blocking pool and outlive a dropped wait: they are kept and waited on
/// again, not asked anew. Asked anew, a socket sending while it caught up
/// once held over 500 blocking threads and slowed every other client.
#[tokio::test]
async fn a_feed_whose_wait_is_dropped_while_it_asks_the_broker_asks_once() {
    use futures::FutureExt;
    use producer_api::feed::{Feed, Item, Start};

    let (kafka, app) = common::spawn_app().await;
    let processor = common::Processor::start(&kafka);
    assert_eq!(start_stream(&app, KEY_A, Some(json!({"stream_id": "asks"}))).await.0, 201);
    send_n(&app, "asks", 0..20).await;
    eventually(Duration::from_secs(60), "the 20 results routed", || async {
        let (_, recent) = get_json(&app.url("/stream/asks/results")).await;
        (recent["results"].as_array()?.len() == 20).then_some(())
    })
    .await;

    let subscription = app.state.hub.subscribe("asks").expect("the stream is open");
    let mut feed = Feed::open(app.state.log.clone(), subscription, Start::Beginning, 100).await.unwrap();
    let asked_before = app.state.log.queries();
    let mut got = Vec::new();
    // Polled once and dropped, over and over, while the catch-up's
    // queries run.
    for _ in 0..200 {
        if let Some(item) = feed.next().now_or_never() {
            got.push(item);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let asked = app.state.log.queries() - asked_before;
    // A watermark read and a reader; one more of each would be a re-ask
    // after an overflow, which nothing here causes.
    assert!(asked <= 2, "{asked} queries of the broker for one catch-up polled 200 times");
    let mut ns = Vec::new();
    let mut got = got.into_iter();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let item = match got.next() {
                Some(item) => item,
                None if ns.len() < 20 => feed.next().await,
                None => break,
            };
            match item {
                Item::Result(delivered) => {
                    ns.push(n_of(&serde_json::from_str::<Value>(delivered.frame.as_str()).unwrap()))
                }
                Item::Live | Item::Notice(_) => {}
                Item::Closed(reason) => panic!("closed: {reason}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {ns:?} of 20 results within 60 s"));
    assert_eq!(ns, (0..20).collect::<Vec<_>>(), "every result once, in order, however often the wait was dropped");

    processor.stop().await;
    app.stop().await;
}

/// A stream deleted and started again under its id, here by another key,
/// is a new stream: the earlier one's results are in neither its replay
/// from the beginning nor its live feed, not even one that comes late.
#[tokio::test]
async fn a_stream_started_again_under_a_deleted_id_holds_none_of_the_earlier_results() {
    let (kafka, app) = common::spawn_app().await;
    let processor = common::Processor::start(&kafka);
    assert_eq!(start_stream(&app, KEY_A, Some(json!({"stream_id": "reused"}))).await.0, 201);
    send_n(&app, "reused", 0..3).await;
    let (_, recent) = get_json(&app.url("/stream/reused/results")).await;
    assert_eq!(ns_of(&recent), [0, 1, 2]);
    // An event of the earlier stream whose result is still to come.
    let late = Event::json("/test", Some("reused".into()), &json!({"n": 50}));

    let deleted = common::client().delete(app.url("/stream/reused")).header("X-API-Key", KEY_A).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(start_stream(&app, KEY_B, Some(json!({"stream_id": "reused"}))).await.0, 201);
    let mut live = ws_as(KEY_B, app.ws_url("/stream/reused/results")).await;
    let producer = kafka::producer(&kafka, &ProducerOptions::default()).unwrap();
    write_result(&producer, &kafka, &late, 50).await;
    for n in [100, 101] {
        let (status, body) = send(&app, KEY_B, "reused", json!({"data": {"n": n}})).await;
        assert_eq!(status, 200, "{body}");
    }
    for expect in [100, 101] {
        assert_eq!(n_of(&common::next_frame(&mut live, "result").await), expect, "only the new stream's results, live");
    }
    let mut replay = ws_as(KEY_B, app.ws_url("/stream/reused/results?from=beginning")).await;
    for expect in [100, 101] {
        assert_eq!(n_of(&common::next_frame(&mut replay, "result").await), expect, "only the new stream's, replayed");
    }
    let (status, page) = get_json_as(KEY_B, &app.url("/stream/reused/results?from=beginning&wait=5")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ns_of(&page), [100, 101]);
    let (_, recent) = get_json_as(KEY_B, &app.url("/stream/reused/results")).await;
    assert_eq!(ns_of(&recent), [100, 101]);

    processor.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn bad_and_expired_cursors_are_refused() {
    let (kafka, app) = common::spawn_app().await;
    let processor = common::Processor::start(&kafka);
    for stream in ["mine", "other"] {
        assert_eq!(start_stream(&app, KEY_A, Some(json!({"stream_id": stream}))).await.0, 201);
    }
    send_n(&app, "mine", 0..3).await;
    send_n(&app, "other", 0..1).await;
    let (_, page) = get_json(&app.url("/stream/other/results?from=beginning&wait=10")).await;
    let other_cursor = page["results"][0]["cursor"].as_str().unwrap().to_owned();
    let (_, page) = get_json(&app.url("/stream/mine/results?from=beginning&limit=1&wait=10")).await;
    let first = page["results"][0]["cursor"].as_str().unwrap().to_owned();

    for query in [
        "?after=garbage".to_owned(),
        format!("?after={other_cursor}"),
        "?from=end".to_owned(),
        "?from=beginning&limit=0".to_owned(),
        "?from=beginning&limit=-1".to_owned(),
        "?from=beginning&wait=-1".to_owned(),
        "?from=beginning&wait=soon".to_owned(),
    ] {
        let (status, body) = get_json(&app.url(&format!("/stream/mine/results{query}"))).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["error"].is_string());
    }
    // Beyond their bounds, limit and wait are held to them, not refused:
    // the three results are there, so the page comes at once.
    let (status, page) = get_json(&app.url("/stream/mine/results?from=beginning&limit=5000&wait=30")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["results"].as_array().unwrap().len(), 3, "{page}");
    // SSE and WebSocket refuse before they start.
    let sse = common::client()
        .get(app.url("/stream/mine/results"))
        .header("X-API-Key", KEY_A)
        .header("Accept", "text/event-stream")
        .header("Last-Event-ID", &other_cursor)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 400);
    let mut request = app.ws_url("/stream/mine/results?after=1-2").into_client_request().unwrap();
    request.headers_mut().insert("X-API-Key", KEY_A.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!("expected a 400, got {other:?}"),
    }

    // Records before the cursor deleted (as retention does): 410 with the
    // earliest cursor still served, from which the rest reads.
    let partition: i32 = first.split('-').next().unwrap().parse().unwrap();
    let (_, all) = get_json(&app.url("/stream/mine/results?from=beginning&wait=10")).await;
    let third = all["results"][2].clone();
    let third_offset = third["cursor"].as_str().unwrap().split('-').nth(1).unwrap().parse::<i64>().unwrap() - 1;
    delete_records_before(&kafka, &kafka.topics.results, partition, third_offset).await;
    let (status, body) = get_json(&app.url(&format!("/stream/mine/results?after={first}"))).await;
    assert_eq!(status, 410, "{body}");
    let earliest = body["detail"]["earliest"].as_str().expect("410 names the earliest cursor").to_owned();
    let (status, page) = get_json(&app.url(&format!("/stream/mine/results?after={earliest}&wait=10"))).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["results"][0]["event_id"], third["event_id"]);
    let sse = common::client()
        .get(app.url("/stream/mine/results"))
        .header("X-API-Key", KEY_A)
        .header("Accept", "text/event-stream")
        .header("Last-Event-ID", &first)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 410);
    // The beginning is now the oldest retained result, with no notice.
    let (_, page) = get_json(&app.url("/stream/mine/results?from=beginning&wait=10")).await;
    assert_eq!(page["results"][0]["event_id"], third["event_id"]);
    let (_, data) = Sse::open(&app.url(""), "mine", KEY_A, None, "?from=beginning").await.next_result().await;
    assert_eq!(data["event_id"], third["event_id"]);

    processor.stop().await;
    app.stop().await;
}

/// Deletes the records of `topic`/`partition` before `offset`, as
/// retention would.
async fn delete_records_before(kafka: &KafkaArgs, topic: &str, partition: i32, offset: i64) {
    let admin: AdminClient<DefaultClientContext> = kafka::base_config(kafka).create().expect("an admin client");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset)).unwrap();
    let done = admin.delete_records(&tpl, &AdminOptions::new()).await.expect("the broker deletes records");
    for element in done.elements() {
        element.error().expect("records deleted");
    }
}

/// Writes a result for `event` straight to the results topic, as a
/// consumer does (twice when it replays after a crash).
async fn write_result(producer: &kafka::Producer, kafka: &KafkaArgs, event: &Event, n: i64) {
    let result = EventResult::answering(event, Some(1), json!({"echo": {"n": n}}));
    let record = result.to_event("/test", event);
    kafka::delivered(kafka::enqueue(producer, &kafka.topics.results, &record).unwrap()).await.unwrap();
}

#[tokio::test]
async fn a_replayed_result_reaches_a_subscriber_once_live_and_across_a_resume() {
    let (kafka, app) = common::spawn_app().await;
    assert_eq!(start_stream(&app, KEY_A, Some(json!({"stream_id": "dup"}))).await.0, 201);
    let producer = kafka::producer(&kafka, &ProducerOptions::default()).unwrap();
    let events: Vec<Event> = (0..4).map(|n| Event::json("/test", Some("dup".into()), &json!({"n": n}))).collect();

    let mut socket = ws(app.ws_url("/stream/dup/results")).await;
    // A consumer crashed after writing the results of events 0 and 1 and
    // before committing: it writes them again, then goes on.
    for n in [0, 1, 0, 1, 2] {
        write_result(&producer, &kafka, &events[n as usize], n).await;
    }
    let mut cursor_of_1 = String::new();
    for expect in 0..3 {
        let frame = common::next_frame(&mut socket, "result").await;
        assert_eq!(n_of(&frame), expect, "each event's result once, in order");
        if expect == 1 {
            cursor_of_1 = frame["cursor"].as_str().unwrap().to_owned();
        }
    }
    write_result(&producer, &kafka, &events[3], 3).await;
    assert_eq!(n_of(&common::next_frame(&mut socket, "result").await), 3, "no repeat came between");

    // Resumed after event 1's first result: the replays of 0 and 1 that
    // follow it in the log were delivered before the resume; they are skipped.
    let mut resumed = ws(app.ws_url(&format!("/stream/dup/results?after={cursor_of_1}"))).await;
    for expect in [2, 3] {
        assert_eq!(n_of(&common::next_frame(&mut resumed, "result").await), expect);
    }
    let (_, page) = get_json(&app.url(&format!("/stream/dup/results?after={cursor_of_1}&wait=5"))).await;
    assert_eq!(ns_of(&page), [2, 3]);
    app.stop().await;
}

/// A client that stops reading long enough for its live buffer to
/// overflow gets every result anyway, from the log, in order, and no
/// notice.
#[tokio::test]
async fn a_slow_subscriber_is_served_from_the_log_not_dropped() {
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka.clone());
    config.ws_buffer = 4;
    let app = common::start(config).await;
    let processor = common::Processor::start(&kafka);
    assert_eq!(start_stream(&app, KEY_A, Some(json!({"stream_id": "slow"}))).await.0, 201);

    // A socket with a tiny receive buffer that is not read for now.
    let mut socket = common::connect_tight(&app, KEY_A, "slow").await;

    // Batches of results until the live buffer has overflowed (the socket
    // buffers in between take a few MB first), then one more batch.
    let pad = "x".repeat(8 * 1024);
    let mut count: i64 = 0;
    let mut overflowed_at = None;
    while overflowed_at.is_none_or(|at| count < at + 100) {
        assert!(count < 3000, "3000 results of 8 KiB did not overflow a 4-result buffer");
        let records: Vec<Value> =
            (count..count + 100).map(|n| json!({"message": {"n": n, "pad": pad}, "key": "slow"})).collect();
        common::publish_batch(&app, &records).await;
        count += 100;
        if overflowed_at.is_none() {
            let last = count - 1;
            eventually(Duration::from_secs(60), "the batch's results routed", || async {
                let (_, recent) = get_json(&app.url("/stream/slow/results")).await;
                (recent["results"].as_array()?.last().map(n_of) == Some(last)).then_some(())
            })
            .await;
            if common::metric(&app, "results_dropped_total").await > 0.0 {
                overflowed_at = Some(count);
            }
        }
    }
    let count_all = count;
    assert!(app.state.hub.subscribers() == 1);
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while got.len() < count_all as usize {
            match socket.next().await.expect("socket open").expect("frame") {
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    assert_eq!(frame["type"], "result", "no notice: {frame}");
                    got.push(n_of(&frame));
                }
                Message::Close(frame) => panic!("closed: {frame:?}"),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {count_all} results within 60 s", got.len()));
    assert_eq!(got, (0..count_all).collect::<Vec<_>>(), "every result once, in order");
    assert!(common::metric(&app, "results_catch_ups_total").await >= 1.0, "the log served what the buffer dropped");
    let text = common::client().get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let problems = stream_core::metrics::lint(&text);
    assert!(problems.is_empty(), "promtool would complain: {problems:#?}");

    processor.stop().await;
    app.stop().await;
}

/// The gateway killed (SIGKILL) while a client watches: the client resumes
/// on a fresh gateway process with its cursor and misses nothing.
#[tokio::test]
async fn resume_on_a_fresh_gateway_after_sigkill() {
    const KEY: &str = "resume-kill-key";
    let kafka = stream_core::testing::kafka_args();
    let mut first = child::Gateway::start(&kafka, KEY, &[]).await;
    let processor = common::Processor::start(&kafka);
    let response = common::client()
        .post(first.url("/stream/start"))
        .header("X-API-Key", KEY)
        .json(&json!({"stream_id": "killed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let send_to = |gateway: &child::Gateway, n: i64| {
        common::client()
            .post(gateway.url("/stream/killed/send"))
            .header("X-API-Key", KEY)
            .json(&json!({"data": {"n": n}}))
            .send()
    };

    let base = first.url("");
    let mut sse = Sse::open(&base, "killed", KEY, None, "").await;
    for n in 0..5 {
        assert_eq!(send_to(&first, n).await.unwrap().status(), 200);
    }
    let mut last = String::new();
    for expect in 0..3 {
        let (id, data) = sse.next_result().await;
        assert_eq!(n_of(&data), expect);
        last = id;
    }
    first.kill();
    drop(sse);

    let second = child::Gateway::start(&kafka, KEY, &[]).await;
    for n in 5..10 {
        assert_eq!(send_to(&second, n).await.unwrap().status(), 200);
    }
    let mut sse = Sse::open(&second.url(""), "killed", KEY, Some(&last), "").await;
    for expect in 3..10 {
        assert_eq!(n_of(&sse.next_result().await.1), expect);
    }
    assert_eq!(send_to(&second, 10).await.unwrap().status(), 200);
    assert_eq!(n_of(&sse.next_result().await.1), 10);

    processor.stop().await;
}
