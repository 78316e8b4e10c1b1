//! The live page at `GET /`, driven in a real headless Chromium (Debian's
//! `chromium`, installed by `scripts/setup.sh`) through the DevTools protocol:
//! a person's key, a click on "Start stream", a click on "Send event", and
//! the processed result appearing in the page's table.

use crate::common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A headless browser page controlled over the DevTools protocol.
struct Browser {
    process: tokio::process::Child,
    socket: Socket,
    next_id: u64,
    /// Chromium's profile, removed after the browser has exited.
    profile: stream_core::testing::ScratchDir,
}

impl Drop for Browser {
    /// Kills Chromium and waits briefly for it to exit. Its helper
    /// processes follow it within moments and may still write into the
    /// profile meanwhile, so after a passing test the profile is removed
    /// until it stays gone (after a failing one it is kept).
    fn drop(&mut self) {
        let _ = self.process.start_kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.process.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if std::thread::panicking() {
            return;
        }
        let profile = self.profile.path();
        while Instant::now() < deadline {
            let _ = std::fs::remove_dir_all(profile);
            std::thread::sleep(Duration::from_millis(50));
            if !profile.exists() {
                break;
            }
        }
    }
}

impl Browser {
    async fn launch() -> Self {
        let binary = ["chromium", "chromium-browser", "google-chrome"]
            .into_iter()
            .find(|b| std::process::Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
            .expect("no Chromium found: install Debian's `chromium` package (scripts/setup.sh does)");
        let profile = stream_core::testing::ScratchDir::new("chromium-profile");
        // The flags keep a headless Chromium from reaching out to the network
        // (this machine has none) and from needing a sandbox as root.
        let mut process = tokio::process::Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-crash-reporter",
                "--disable-breakpad",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            // Its own temporary files too (org.chromium.Chromium.*).
            .env("TMPDIR", profile.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        let mut lines = BufReader::new(process.stderr.take().unwrap()).lines();
        let browser_url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_owned();
                }
            }
            panic!("chromium exited before opening its DevTools port");
        })
        .await
        .expect("chromium did not open its DevTools port within 30 s");
        // Keep draining stderr so Chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let http = browser_url.trim_start_matches("ws://").split('/').next().unwrap().to_owned();
        let targets: Value =
            reqwest::get(format!("http://{http}/json/list")).await.unwrap().json().await.expect("target list");
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let (socket, _) = tokio_tungstenite::connect_async(page).await.expect("connect to the page");
        Self { process, socket, next_id: 0, profile }
    }

    /// Sends one DevTools command and returns its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({ "id": id, "method": method, "params": params });
        self.socket.send(Message::text(command.to_string())).await.unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within 30 s"))
                .expect("DevTools socket closed")
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method} failed: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Opens the gateway's page, enters key A and clicks "start".
    async fn open_and_start(app: &common::TestApp) -> Self {
        let mut browser = Self::launch().await;
        browser.call("Page.navigate", json!({ "url": app.url("/") })).await;
        browser
            .wait_for(
                "document.readyState === 'complete' && !!document.getElementById('start')",
                Duration::from_secs(30),
            )
            .await;
        browser
            .eval(&format!(
                "document.getElementById('key').value = '{}'; document.getElementById('start').click(); true",
                common::KEY_A
            ))
            .await;
        browser
    }

    /// Evaluates JavaScript in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }))
            .await;
        assert!(result.get("exceptionDetails").is_none(), "{expression} threw: {result}");
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy.
    async fn wait_for(&mut self, expression: &str, deadline: Duration) -> Value {
        let start = Instant::now();
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        loop {
            poll.tick().await;
            let value = self.eval(expression).await;
            if !(value.is_null() || value == false || value == "" || value == 0) {
                return value;
            }
            let page_status = self.eval("document.getElementById('status')?.textContent").await;
            assert!(
                start.elapsed() < deadline,
                "page never reached `{expression}`; its status line says {page_status}"
            );
        }
    }
}

#[tokio::test]
async fn a_person_starts_a_stream_sends_an_event_and_sees_the_result() {
    let (kafka, app) = common::spawn_app().await;
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(consumer::run(consumer::Config::for_tests(kafka.clone(), 1), stop.clone()));

    let mut browser = Browser::open_and_start(&app).await;
    let stream = browser
        .wait_for(
            "!document.getElementById('send').disabled && document.getElementById('stream').textContent",
            Duration::from_secs(30),
        )
        .await;
    assert!(app.state.registry.owner_of(stream.as_str().unwrap()).is_some(), "the page's stream {stream} is unknown");

    browser
        .eval(r#"document.getElementById('payload').value = '{"temperature": 30.5}'; document.getElementById('send').click(); true"#)
        .await;
    // The first result waits for the consumer's group join (a few seconds).
    let row = browser.wait_for("document.querySelector('#results tr')?.innerText", Duration::from_secs(60)).await;
    let row = row.as_str().unwrap();
    assert!(row.contains("temperature") && row.contains("30.5"), "unexpected result row: {row}");
    let event_id = browser.eval("document.querySelector('#results tr').dataset.eventId").await;
    let sent = common::read_all(&kafka, &kafka.topics.events).await;
    assert!(sent.iter().any(|e| e.id == event_id.as_str().unwrap()), "row {event_id} is not an event that was sent");

    // The person leaves the page; a result arrives meanwhile; they come
    // back (or reload): the page shows what it showed, and resumes its
    // socket after the last result it had, so the new one appears too.
    let stream = stream.as_str().unwrap().to_owned();
    browser.call("Page.navigate", json!({ "url": "about:blank" })).await;
    let (status, ack) = common::send(&app, common::KEY_A, &stream, json!({"data": {"while": "away"}})).await;
    assert_eq!(status, 200, "{ack}");
    let recent_url = app.url(&format!("/stream/{stream}/results"));
    stream_core::testing::eventually(Duration::from_secs(60), "the result of the event sent while away", || async {
        let response = common::client().get(&recent_url).header("X-API-Key", common::KEY_A).send().await.ok()?;
        response.text().await.ok()?.contains("away").then_some(())
    })
    .await;
    browser.call("Page.navigate", json!({ "url": app.url("/") })).await;
    let rows = browser
        .wait_for(
            "document.querySelectorAll('#results tr').length === 2 && document.getElementById('results').innerText",
            Duration::from_secs(30),
        )
        .await;
    let rows = rows.as_str().unwrap();
    assert!(rows.contains("away") && rows.contains("30.5"), "after coming back the page shows: {rows}");

    stop.cancel();
    consumer.await.unwrap().unwrap();
    app.stop().await;
}

#[tokio::test]
async fn the_page_shows_why_an_event_does_not_match_the_schema() {
    let schema = common::SchemaFile::sensor_readings();
    let kafka = stream_core::testing::kafka_args();
    let mut config = common::config(kafka.clone());
    config.event_schema = Some(schema.0.clone());
    let app = common::start(config).await;

    let mut browser = Browser::open_and_start(&app).await;
    browser.wait_for("!document.getElementById('send').disabled", Duration::from_secs(30)).await;
    browser
        .eval(r#"document.getElementById('payload').value = '{"sensor": "s1", "temperature": "hot"}'; document.getElementById('send').click(); true"#)
        .await;
    let status = browser
        .wait_for(
            "document.getElementById('status').className === 'error' && document.getElementById('status').textContent",
            Duration::from_secs(30),
        )
        .await;
    let status = status.as_str().unwrap();
    assert!(status.contains("422") && status.contains("event does not match the schema"), "{status}");
    assert!(status.contains("/temperature") && status.contains("number"), "the page says where: {status}");
    assert!(common::read_all(&kafka, &kafka.topics.events).await.is_empty(), "nothing was written");
    app.stop().await;
}
