//! Test support: a real broker, fresh topic names and polling with a deadline.
//!
//! Integration tests call [`brokers`] to get a bootstrap address. When
//! `KAFKA_BROKERS` is set it is used as is (CI and `just test` start the
//! broker once with `scripts/broker.sh`). Otherwise a private Nisshi broker
//! is started on a free port for this test process and stopped when the
//! process exits. When neither is possible the test fails and says which
//! command fixes it: tests never skip silently.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::KafkaArgs;
use crate::kafka::{self, TopicSpec, TracingContext};

/// The broker every test in this process uses.
pub fn brokers() -> String {
    static BROKERS: OnceLock<String> = OnceLock::new();
    BROKERS
        .get_or_init(|| match std::env::var("KAFKA_BROKERS") {
            Ok(b) if !b.trim().is_empty() => b,
            _ => LocalBroker::start().unwrap_or_else(|e| panic!("{e}")),
        })
        .clone()
}

/// Connection settings for the test broker, with every topic name made
/// unique to this call so tests never see each other's records.
pub fn kafka_args() -> KafkaArgs {
    let mut args = KafkaArgs::for_brokers(brokers());
    let tag = unique_name("t");
    args.topics.events = format!("{tag}.events");
    args.topics.results = format!("{tag}.results");
    args.topics.dlq = format!("{tag}.dlq");
    args.topics.partitions = 3;
    args.client_id = Some("streamkit-test".into());
    args
}

/// `prefix-<random>`, a fresh topic or group name.
pub fn unique_name(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}-{n:016x}")
}

/// A test's own directory under the system's temp directory, for the files
/// it writes (bench outputs, logs, a broker's database). Removed when it is
/// dropped after a passing test; kept after a failing one, and its path
/// printed, so that what is in it can be read.
pub struct ScratchDir {
    dir: tempfile::TempDir,
}

impl ScratchDir {
    /// A new empty directory named `prefix-<random>`.
    pub fn new(prefix: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("a scratch directory in {}: {e}", std::env::temp_dir().display()));
        Self { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `name` inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("the failed test's files are kept in {}", self.dir.path().display());
        }
    }
}

/// Creates the events, results and DLQ topics of `args`.
pub async fn create_project_topics(args: &KafkaArgs) {
    kafka::ensure_topics(args, &kafka::project_topics(args)).await.expect("create test topics");
}

/// Creates one topic with `partitions` partitions.
pub async fn create_topic(args: &KafkaArgs, name: &str, partitions: i32) {
    let mut spec = TopicSpec::new(name, args);
    spec.partitions = partitions;
    kafka::ensure_topics(args, &[spec]).await.expect("create test topic");
}

/// Polls `check` until it returns `Some`, failing the test with `what` once
/// `deadline` has passed. Use instead of sleeping for Kafka to catch up.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// A Nisshi broker owned by this test process.
struct LocalBroker;

impl LocalBroker {
    /// Starts `nisshi broker` on a free port with memory storage and waits
    /// until it answers metadata requests. Returns its address.
    fn start() -> Result<String, String> {
        let binary = nisshi_binary().ok_or_else(|| {
            "KAFKA_BROKERS is not set and the `nisshi` broker is not installed. Run `just test` \
             (installs and starts it), or `scripts/broker.sh install && scripts/broker.sh start` \
             and then `KAFKA_BROKERS=127.0.0.1:19092 cargo test`."
                .to_string()
        })?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port for a test broker: {e}"))?
            .port();
        let address = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("streamkit-test-broker-{port}.log"));
        let log_file = std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        // The broker runs under a small shell that kills it as soon as our
        // stdin pipe closes, i.e. when this test process exits for any
        // reason, so no broker outlives its tests; its log goes with it (a
        // start-up failure below quotes it).
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"log=$1; shift; "$@" & pid=$!; cat >/dev/null; kill $pid 2>/dev/null; wait $pid; rm -f "$log""#)
            .arg("nisshi-guard")
            .arg(&log)
            .arg(&binary)
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://{address}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{address}"))
            .args(["--storage-engine", "memory://nisshi/", "--group-initial-rebalance-delay", "500ms"])
            .env_remove("STORAGE_ENGINE")
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        static GUARD: Mutex<Vec<Child>> = Mutex::new(Vec::new());
        GUARD.lock().unwrap().push(child);

        wait_until_answering(&address, Duration::from_secs(30)).map_err(|e| {
            let tail = std::fs::File::open(&log)
                .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect::<Vec<_>>().join("\n"))
                .unwrap_or_default();
            format!("test broker on {address} did not come up: {e}\n--- {} ---\n{tail}", log.display())
        })?;
        Ok(address)
    }
}

fn nisshi_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NISSHI_BIN") {
        return Some(PathBuf::from(path));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nisshi")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME").or_else(|| {
        std::env::var_os("HOME").map(|h| {
            let mut p = PathBuf::from(h);
            p.push(".cargo");
            p.into_os_string()
        })
    }) {
        candidates.push(PathBuf::from(home).join("bin").join("nisshi"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Polls a metadata request until the broker answers.
pub fn wait_until_answering(address: &str, deadline: Duration) -> Result<(), String> {
    let args = KafkaArgs::for_brokers(address);
    let probe: BaseConsumer<TracingContext> =
        kafka::base_config(&args).create_with_context(TracingContext).map_err(|e| e.to_string())?;
    let start = Instant::now();
    loop {
        match kafka::cluster_info(probe.client(), address, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() > deadline => return Err(e.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A Nisshi broker on durable SQLite storage that a test can stop (SIGKILL)
/// and start again on the same address with its data intact: for outage
/// tests, where memory storage would forget everything on restart.
pub struct DurableBroker {
    /// `host:port` to bootstrap from; stays the same across restarts.
    pub address: String,
    /// The database (with SQLite's journal files) and the broker's log.
    dir: ScratchDir,
    child: Option<Child>,
}

impl DurableBroker {
    /// Starts a broker with an empty database on a free port.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let dir = ScratchDir::new(&format!("streamkit-durable-broker-{port}"));
        let mut broker = Self { address: format!("127.0.0.1:{port}"), dir, child: None };
        broker.resume();
        broker
    }

    /// Starts the broker again (after [`stop`](Self::stop)) on the same
    /// database and waits until it answers.
    pub fn resume(&mut self) {
        let binary = nisshi_binary().expect("the nisshi broker is not installed: run scripts/broker.sh install");
        let url = format!("tcp://{}", self.address);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nisshi.log"))
            .expect("broker log file");
        let child = Command::new(&binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--group-initial-rebalance-delay", "500ms", "--storage-engine"])
            // Nisshi resolves sqlite://PATH against its working directory.
            .arg("sqlite://nisshi.db")
            .current_dir(self.dir.path())
            .env_remove("STORAGE_ENGINE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("broker log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        self.child = Some(child);
        wait_until_answering(&self.address, Duration::from_secs(30)).expect("the durable broker answers");
    }

    /// Suspends the broker's process (SIGSTOP): its connections stay open
    /// and requests already sent get no answer, as with a broker that hangs.
    pub fn freeze(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a [`freeze`](Self::freeze)d broker go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("the broker is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap_or_else(|e| panic!("{signal} to the broker: {e}"));
    }

    /// Kills the broker at once, as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for DurableBroker {
    /// Stops the broker; its directory goes after it (kept if the test failed).
    fn drop(&mut self) {
        self.stop();
    }
}

/// `event` as a consumer reads it back (its key, payload and headers, at
/// offset 42 of partition 3 of `events`): for tests and benchmarks of
/// decoding.
pub fn consumed(event: &crate::schema::Event) -> rdkafka::message::OwnedMessage {
    rdkafka::message::OwnedMessage::new(
        Some(event.data.clone()),
        event.key.clone().map(String::into_bytes),
        "events".into(),
        rdkafka::Timestamp::CreateTime(1_700_000_000_000),
        3,
        42,
        Some(event.headers()),
    )
}

#[cfg(test)]
mod tests {
    use super::ScratchDir;

    #[test]
    fn a_scratch_dir_goes_after_a_passing_test_and_stays_after_a_failing_one() {
        let dir = ScratchDir::new("scratch");
        std::fs::write(dir.join("file"), "x").unwrap();
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists(), "{} is still there", path.display());

        let kept = std::thread::spawn(|| {
            let dir = ScratchDir::new("scratch");
            std::fs::write(dir.join("log"), "why it failed").unwrap();
            let path = dir.path().to_owned();
            std::panic::panic_any(path);
        })
        .join()
        .expect_err("the thread panics");
        let path = kept.downcast::<std::path::PathBuf>().expect("the panic carries the path");
        assert_eq!(std::fs::read_to_string(path.join("log")).unwrap(), "why it failed");
        std::fs::remove_dir_all(*path).unwrap();
    }
}
