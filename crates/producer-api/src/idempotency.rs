//! Idempotent sends: `Idempotency-Key` on `POST /publish` and
//! `POST /stream/{id}/send`.
//!
//! - A repeat of a key by the same API key within `--idempotency-ttl` of
//!   the first request's outcome gets the first response (same id,
//!   partition, offset) and writes nothing. A key whose write is still in
//!   flight does not expire, however short the TTL.
//! - A repeat with a different request is refused (422), never confused
//!   with the first.
//! - A repeat arriving while the first is still in flight waits for it.
//!   The first write is not bounded by its request's timeout: a request
//!   that answered 503 (the broker had not acknowledged in time) leaves
//!   its write running until librdkafka reports it, so a retry gets the
//!   write's outcome (a replay once it is acknowledged) instead of
//!   writing the event a second time.
//! - The event id is derived from the API key's fingerprint and the
//!   idempotency key, so two replicas that each accept the same retry (this
//!   memory is per process) still write one `ce_id`, and downstream
//!   deduplication by event id sees one event.
//!
//! Memory is bounded by `--idempotency-max-keys` entries of fixed size
//! (digests, not the keys or bodies themselves): when full, the oldest entry
//! is forgotten early. Requests without the header never touch this module.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Tokio's clock, so the tests can move it; the same clock otherwise.
use tokio::time::Instant;

use axum::http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::error::AppError;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The response header on a replayed response.
pub const REPLAYED: &str = "idempotent-replayed";
/// Longest idempotency key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// Where the first request's event was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub partition: i32,
    pub offset: i64,
}

/// An idempotency key, scoped to the API key that sent it.
#[derive(Debug, Clone)]
pub struct Key {
    digest: [u8; 32],
}

impl Key {
    /// The `Idempotency-Key` of a request by `owner` (its key fingerprint),
    /// if it has one; 400 for a value that is blank, too long or not
    /// printable ASCII (a header of the wrong form, as a malformed cursor).
    pub fn from_headers(owner: &str, headers: &HeaderMap) -> Result<Option<Self>, AppError> {
        // A prebuilt name: the lookup on every send, with or without the
        // header, does not parse the name again.
        const NAME: HeaderName = HeaderName::from_static(HEADER);
        let Some(value) = headers.get(&NAME) else {
            return Ok(None);
        };
        let key = value.to_str().map(str::trim).unwrap_or_default();
        if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(AppError::BadParameter(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} printable ASCII characters (space to ~)"
            )));
        }
        Ok(Some(Self::new(owner, key)))
    }

    pub fn new(owner: &str, key: &str) -> Self {
        let digest = Sha256::new()
            .chain_update(b"streamkit-idempotency:")
            .chain_update(owner.as_bytes())
            .chain_update(b"\0")
            .chain_update(key.as_bytes())
            .finalize()
            .into();
        Self { digest }
    }

    /// The event id of this key's event: a UUID (version 8) made of the
    /// key's digest, the same on every replica and every retry.
    pub fn event_id(&self) -> String {
        stream_core::schema::id_of_digest(&self.digest).to_string()
    }
}

/// A digest of what a request asks for, to tell a true repeat from a reuse
/// of the key for something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// A digest of `parts` in order ([`digest_of`](stream_core::schema::digest_of)).
    pub fn of<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        Self(stream_core::schema::digest_of(parts))
    }
}

/// The outcome of the first request, as its repeats see it: `None` until
/// it is acknowledged; the sender dropped without a value if it failed.
type Outcome = watch::Receiver<Option<Written>>;

enum State {
    InFlight(Outcome),
    Done(Written),
}

struct Entry {
    request: Fingerprint,
    /// Identifies this entry in [`Store::order`] (a key forgotten and used
    /// again gets a new entry with a later time).
    since: Instant,
    state: State,
}

#[derive(Default)]
struct Store {
    entries: HashMap<[u8; 32], Entry>,
    /// Entries oldest first; every TTL is the same, so this is also the
    /// order in which they expire. An entry gets a new mark (and its old
    /// one goes stale) when its write is acknowledged.
    order: VecDeque<([u8; 32], Instant)>,
}

impl Store {
    fn forget_front(&mut self) {
        if let Some((digest, since)) = self.order.pop_front() {
            if self.entries.get(&digest).is_some_and(|e| e.since == since) {
                self.entries.remove(&digest);
            }
        }
    }

    fn expire(&mut self, now: Instant, ttl: Duration) {
        while let Some(&(digest, since)) = self.order.front() {
            if now.duration_since(since) < ttl {
                break;
            }
            // A write still in flight may yet land: a retry must wait for
            // it, not write again. Expiry resumes once it is done (within
            // the producer's delivery timeout), from its new mark.
            let in_flight = self.entries.get(&digest).is_some_and(|e| {
                e.since == since && matches!(&e.state, State::InFlight(outcome) if !abandoned(outcome))
            });
            if in_flight {
                break;
            }
            self.forget_front();
        }
    }
}

/// A first request whose task died (a panic) left no outcome and never will.
fn abandoned(outcome: &Outcome) -> bool {
    outcome.borrow().is_none() && outcome.has_changed().is_err()
}

impl Store {
    /// Bound on marks: one per entry, one stale mark per acknowledged
    /// entry, and those of failed first requests, already removed.
    fn marks_full(&self, max: usize) -> bool {
        self.order.len() >= 3 * max
    }
}

/// The memory of recent idempotency keys.
pub struct Idempotency {
    store: Arc<Mutex<Store>>,
    ttl: Duration,
    max: usize,
}

/// Records the first request's outcome: where it was written, or (on
/// failure) nothing, so that a retry writes again, with the same id.
fn finish(store: &Mutex<Store>, digest: &[u8; 32], since: Instant, written: Option<Written>) {
    let mut store = store.lock().expect("idempotency lock");
    let ours = store.entries.get_mut(digest).filter(|e| e.since == since);
    match (ours, written) {
        (Some(entry), Some(written)) => {
            // The TTL counts from here: a slow write does not shorten it.
            let now = Instant::now();
            entry.state = State::Done(written);
            entry.since = now;
            store.order.push_back((*digest, now));
        }
        (Some(_), None) => {
            store.entries.remove(digest);
        }
        // Forgotten meanwhile (evicted or expired): nothing to record.
        (None, _) => {}
    }
}

/// What to do with a request.
enum Claim {
    /// It is the first: write, then record.
    Lead(watch::Sender<Option<Written>>, Instant),
    Replay(Written),
    Wait(Outcome),
}

impl Idempotency {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self { store: Arc::default(), ttl, max: max.max(1) }
    }

    /// Keys remembered now (expired ones may still count until the next
    /// request purges them).
    pub fn len(&self) -> usize {
        self.store.lock().expect("idempotency lock").entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn claim(&self, key: &Key, request: Fingerprint) -> Result<Claim, AppError> {
        let now = Instant::now();
        let mut store = self.store.lock().expect("idempotency lock");
        store.expire(now, self.ttl);
        // A first request whose task died left no outcome and never will:
        // forget it rather than wait on it for ever.
        let abandoned = store.entries.get(&key.digest).is_some_and(|e| match &e.state {
            State::InFlight(outcome) => abandoned(outcome),
            State::Done(_) => false,
        });
        if abandoned {
            store.entries.remove(&key.digest);
        }
        if let Some(entry) = store.entries.get(&key.digest) {
            if entry.request != request {
                return Err(AppError::IdempotencyConflict);
            }
            return Ok(match &entry.state {
                State::Done(written) => Claim::Replay(*written),
                State::InFlight(outcome) => Claim::Wait(outcome.clone()),
            });
        }
        // The order also holds stale marks, so it is bounded too.
        while store.entries.len() >= self.max || store.marks_full(self.max) {
            metrics::counter!("idempotency_evictions_total").increment(1);
            store.forget_front();
        }
        let (sender, outcome) = watch::channel(None);
        store.entries.insert(key.digest, Entry { request, since: now, state: State::InFlight(outcome) });
        store.order.push_back((key.digest, now));
        Ok(Claim::Lead(sender, now))
    }

    /// Runs `write` (given the event id to use) once per key: the first
    /// request writes, repeats get its outcome. Returns where the event
    /// was written and whether this is a replay. `write` runs in its own
    /// task, so neither a client that gives up (disconnects) nor the
    /// request's `deadline` abandons a write that repeats would wait for:
    /// past the deadline the request answers 503, and the write's outcome
    /// is recorded when it comes.
    pub async fn run<F, Fut>(
        &self,
        key: &Key,
        request: Fingerprint,
        deadline: tokio::time::Instant,
        write: F,
    ) -> Result<(Written, bool), AppError>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<Written, AppError>> + Send + 'static,
    {
        let mut write = Some(write);
        loop {
            match self.claim(key, request)? {
                Claim::Replay(written) => {
                    metrics::counter!("idempotent_replays_total").increment(1);
                    return Ok((written, true));
                }
                Claim::Wait(mut outcome) => {
                    let waited = tokio::time::timeout_at(deadline, outcome.wait_for(Option::is_some))
                        .await
                        .map(|done| done.map(|written| *written));
                    match waited {
                        Ok(Ok(written)) => {
                            metrics::counter!("idempotent_replays_total").increment(1);
                            return Ok((written.expect("waited for a value"), true));
                        }
                        // The first request failed and was forgotten: try
                        // again, now perhaps as the first.
                        Ok(Err(_closed)) => continue,
                        Err(_elapsed) => {
                            return Err(AppError::unavailable(
                                "the first request with this Idempotency-Key is still in flight",
                            ))
                        }
                    }
                }
                Claim::Lead(sender, since) => {
                    let write = write.take().expect("a request leads at most once");
                    let (store, digest) = (self.store.clone(), key.digest);
                    let outcome = write(key.event_id());
                    // The write and its record run on in their own task if
                    // this request is dropped (its client gave up).
                    let task = tokio::spawn(async move {
                        let outcome = outcome.await;
                        let written = outcome.as_ref().ok().copied();
                        finish(&store, &digest, since, written);
                        if let Some(written) = written {
                            let _ = sender.send(Some(written));
                        }
                        outcome
                    });
                    let outcome = match tokio::time::timeout_at(deadline, task).await {
                        Ok(Ok(outcome)) => outcome,
                        Ok(Err(join)) => Err(AppError::Internal(format!("an idempotent write failed: {join}"))),
                        Err(_elapsed) => Err(AppError::unavailable(
                            "the broker did not acknowledge in time; the event may or may not have been written: \
                             a retry with the same Idempotency-Key gets its outcome",
                        )),
                    };
                    return outcome.map(|written| (written, false));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn deadline() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn ids_depend_on_the_api_key_and_the_idempotency_key() {
        let id = Key::new("owner-a", "k1").event_id();
        assert_eq!(id, Key::new("owner-a", "k1").event_id());
        assert_ne!(id, Key::new("owner-b", "k1").event_id());
        assert_ne!(id, Key::new("owner-a", "k2").event_id());
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 8);
        assert_ne!(Fingerprint::of([&b"ab"[..], b"c"]), Fingerprint::of([&b"a"[..], b"bc"]));

        let mut headers = HeaderMap::new();
        assert!(Key::from_headers("o", &headers).unwrap().is_none());
        headers.insert(HEADER, " k1 ".parse().unwrap());
        assert_eq!(Key::from_headers("o", &headers).unwrap().unwrap().digest, Key::new("o", "k1").digest);
        for bad in ["", &"x".repeat(MAX_KEY_LEN + 1)] {
            headers.insert(HEADER, bad.parse().unwrap());
            assert_eq!(Key::from_headers("o", &headers).unwrap_err().status().as_u16(), 400, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn repeats_replay_and_a_different_request_is_refused() {
        let memory = Idempotency::new(Duration::from_secs(60), 10);
        let key = Key::new("o", "k");
        let body = Fingerprint::of([&b"body"[..]]);
        let writes = Arc::new(AtomicUsize::new(0));
        let write = |writes: Arc<AtomicUsize>| {
            move |_id: String| async move {
                let n = writes.fetch_add(1, Ordering::SeqCst);
                Ok(Written { partition: 0, offset: n as i64 })
            }
        };
        let first = memory.run(&key, body, deadline(), write(writes.clone())).await.unwrap();
        assert_eq!(first, (Written { partition: 0, offset: 0 }, false));
        let again = memory.run(&key, body, deadline(), write(writes.clone())).await.unwrap();
        assert_eq!(again, (Written { partition: 0, offset: 0 }, true));
        let other = memory.run(&key, Fingerprint::of([&b"other"[..]]), deadline(), write(writes.clone())).await;
        assert_eq!(other.unwrap_err().status().as_u16(), 422);
        assert_eq!(writes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_first_request_is_forgotten() {
        let memory = Idempotency::new(Duration::from_secs(60), 10);
        let key = Key::new("o", "k");
        let body = Fingerprint::of([&b"body"[..]]);
        let failed = memory.run(&key, body, deadline(), |_| async { Err(AppError::unavailable("down")) }).await;
        assert_eq!(failed.unwrap_err().status().as_u16(), 503);
        assert!(memory.is_empty());
        let ok = memory.run(&key, body, deadline(), |_| async { Ok(Written { partition: 1, offset: 7 }) }).await;
        assert_eq!(ok.unwrap(), (Written { partition: 1, offset: 7 }, false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_outlasts_its_request_is_recorded_for_the_retry() {
        let memory = Arc::new(Idempotency::new(Duration::from_secs(60), 10));
        let key = Key::new("o", "k");
        let body = Fingerprint::of([&b"body"[..]]);
        let (ack, acked) = tokio::sync::oneshot::channel::<()>();
        let writes = Arc::new(AtomicUsize::new(0));
        let counted = writes.clone();
        // The broker acknowledges only after the request's 5 s deadline.
        let first = memory
            .run(&key, body, deadline(), move |_| async move {
                counted.fetch_add(1, Ordering::SeqCst);
                acked.await.expect("acknowledged");
                Ok(Written { partition: 2, offset: 9 })
            })
            .await;
        assert_eq!(first.unwrap_err().status().as_u16(), 503, "past the deadline");
        // A retry while the write is still in flight waits for it, and
        // gets 503 again at its own deadline: it writes nothing.
        let during = memory.run(&key, body, deadline(), |_| async { Ok(Written { partition: 0, offset: 0 }) }).await;
        assert_eq!(during.unwrap_err().status().as_u16(), 503);
        ack.send(()).unwrap();
        let retry = memory.run(&key, body, deadline(), |_| async { Ok(Written { partition: 0, offset: 0 }) }).await;
        assert_eq!(retry.unwrap(), (Written { partition: 2, offset: 9 }, true), "the late write, replayed");
        assert_eq!(writes.load(Ordering::SeqCst), 1);
    }

    /// With a TTL shorter than the write, a retry after the TTL still waits
    /// for the write in flight and then replays it: it writes nothing.
    #[tokio::test(start_paused = true)]
    async fn a_key_does_not_expire_while_its_write_is_in_flight() {
        let memory = Arc::new(Idempotency::new(Duration::from_secs(3), 10));
        let key = Key::new("o", "k");
        let body = Fingerprint::of([&b"body"[..]]);
        let (ack, acked) = tokio::sync::oneshot::channel::<()>();
        let writes = Arc::new(AtomicUsize::new(0));
        let counted = writes.clone();
        let first = memory
            .run(&key, body, deadline(), move |_| async move {
                counted.fetch_add(1, Ordering::SeqCst);
                acked.await.expect("acknowledged");
                Ok(Written { partition: 2, offset: 9 })
            })
            .await;
        assert_eq!(first.unwrap_err().status().as_u16(), 503, "past the 5 s deadline, beyond the 3 s TTL");
        let write_again = |_| async { Ok(Written { partition: 0, offset: 0 }) };
        let during = memory.run(&key, body, deadline(), write_again).await;
        assert_eq!(during.unwrap_err().status().as_u16(), 503, "still in flight: waited, wrote nothing");
        ack.send(()).unwrap();
        tokio::task::yield_now().await;
        // Acknowledged just now: the TTL counts from here.
        tokio::time::advance(Duration::from_secs(2)).await;
        let retry = memory.run(&key, body, deadline(), write_again).await;
        assert_eq!(retry.unwrap(), (Written { partition: 2, offset: 9 }, true));
        assert_eq!(writes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn memory_is_bounded_and_entries_expire() {
        let memory = Idempotency::new(Duration::from_secs(60), 3);
        let body = Fingerprint::of([&b"body"[..]]);
        for i in 0..5 {
            let key = Key::new("o", &i.to_string());
            memory.run(&key, body, deadline(), |_| async { Ok(Written { partition: 0, offset: 0 }) }).await.unwrap();
        }
        assert_eq!(memory.len(), 3);
        let oldest = Key::new("o", "0");
        let (_, replayed) =
            memory.run(&oldest, body, deadline(), |_| async { Ok(Written { partition: 0, offset: 0 }) }).await.unwrap();
        assert!(!replayed, "the oldest key was forgotten to make room");

        let short = Idempotency::new(Duration::from_millis(1), 3);
        let key = Key::new("o", "k");
        short.run(&key, body, deadline(), |_| async { Ok(Written { partition: 0, offset: 0 }) }).await.unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let (_, replayed) =
            short.run(&key, body, deadline(), |_| async { Ok(Written { partition: 0, offset: 1 }) }).await.unwrap();
        assert!(!replayed, "expired");
        assert_eq!(short.len(), 1);
    }
}
