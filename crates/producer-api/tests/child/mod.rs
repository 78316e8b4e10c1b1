//! The real `producer-api` binary as a child process, for tests about what
//! only a whole process shows: its logs, and being killed.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use stream_core::testing::{eventually, ScratchDir};
use stream_core::KafkaArgs;

/// A running `producer-api` process; killed when dropped.
pub struct Gateway {
    pub child: Child,
    pub addr: String,
    /// Everything the process wrote to stdout and stderr.
    pub log: PathBuf,
    /// Holds the log; kept if the test fails.
    _dir: ScratchDir,
}

impl Gateway {
    /// Starts the binary on `kafka`'s topics with `keys`, plus `env`, and
    /// waits until it answers `/healthz`.
    pub async fn start(kafka: &KafkaArgs, keys: &str, env: &[(&str, &str)]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let dir = ScratchDir::new("producer-api-child");
        let log = dir.join("producer-api.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_producer-api"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("API_KEYS", keys)
            .env("LISTEN_ADDR", &addr)
            .env("KAFKA_BROKERS", &kafka.brokers)
            .env("EVENTS_TOPIC", &kafka.topics.events)
            .env("RESULTS_TOPIC", &kafka.topics.results)
            .env("DLQ_TOPIC", &kafka.topics.dlq)
            .env("STREAMS_TOPIC", format!("{}.streams", kafka.topics.events))
            .env("TOPIC_PARTITIONS", kafka.topics.partitions.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = command.spawn().expect("starting producer-api");
        let gateway = Self { child, addr, log, _dir: dir };
        let url = gateway.url("/healthz");
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        eventually(Duration::from_secs(60), "producer-api to answer /healthz", || {
            let request = client.get(&url);
            async move { request.send().await.ok().filter(|r| r.status() == 200).map(|_| ()) }
        })
        .await;
        gateway
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What the process logged so far.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    /// Kills the process; its log's directory goes after it.
    fn drop(&mut self) {
        self.kill();
    }
}
