//! One subscriber's results, in the stream's order, each once: the live
//! feed from the [`Hub`](crate::hub::Hub), and the log (the results
//! topic) wherever the live feed cannot serve.
//!
//! A feed reads from the log while it is behind: after a resume from a
//! cursor, with `?from=beginning`, and whenever its live buffer overflowed
//! (a slow client). It subscribes to the live feed first, then asks the
//! partition's high watermark `H`: every result at `H` or later reaches
//! the subscription, so reading the log up to `H` and then taking the
//! subscription's results that come after the last one read leaves no gap
//! and repeats nothing. If the live buffer overflowed meanwhile, it reads
//! on to a new watermark before switching. The log reader exists only
//! while catching up, one per connection, with a small bounded queue
//! ([`stream_core::kafka::partition_reader`]).
//!
//! Deduplication: a consumer that crashes may write a second result for
//! an event. The hub keeps, per open stream, the event ids of its last
//! `window` results and does not route a result whose event id is among
//! them, so live subscribers never see such a replay. A feed reading the
//! log applies the same rule with its own memory (it may read replays
//! whose originals this process never routed), and on a resume (or an
//! overflow) first reads back up to `window` records of the partition
//! before the cursor, only to learn their event ids. So a replay is skipped when its original is
//! among the stream's last `window` results before it (across a resume,
//! also within `window` records of the partition before the cursor). A
//! consumer replays at most its uncommitted work, far inside the default
//! window of 10,000. Memory: about 24 bytes per remembered id, per stream,
//! and per connection that has read from the log.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use serde_json::json;
use stream_core::kafka::TracingContext;

use crate::cursor::{Cursor, CursorError, Pos};
use crate::delivered::Delivered;
use crate::error::AppError;
use crate::hub::{Next, Seen, Subscription};
use crate::results::{answer, Pending, ResultsLog};

/// Where a feed starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Results from now on (no cursor given).
    Live,
    /// Right after a cursor.
    After(Cursor),
    /// The stream's oldest retained result.
    Beginning,
}

impl Start {
    /// The start a request asks for: `Last-Event-ID` (a browser's SSE
    /// reconnect sends it by itself, with the URL it first used, so it wins
    /// over the URL's `after`), else `after`, else `from=beginning`. A
    /// cursor is a later point than the beginning, so it wins over `from`
    /// (a client that started with `from=beginning` and resumes keeps its
    /// URL). An empty `Last-Event-ID` is none (as in the SSE standard).
    pub fn from_request(
        stream: &str,
        last_event_id: Option<&str>,
        after: Option<&str>,
        from: Option<&str>,
    ) -> Result<Self, AppError> {
        match (last_event_id.filter(|id| !id.is_empty()).or(after), from) {
            (Some(text), _) => match Cursor::parse(text, stream) {
                Ok(cursor) => Ok(Self::After(cursor)),
                Err(CursorError::Malformed) => {
                    Err(AppError::BadParameter(format!("malformed cursor {text:?}: pass a result's cursor as it was")))
                }
                Err(CursorError::OtherStream) => {
                    Err(AppError::BadParameter(format!("cursor {text:?} belongs to another stream")))
                }
            },
            (None, Some("beginning")) => Ok(Self::Beginning),
            (None, Some(other)) => Err(AppError::BadParameter(format!("from={other:?}: the only value is beginning"))),
            (None, None) => Ok(Self::Live),
        }
    }
}

/// What a feed gives its connection.
#[derive(Debug)]
pub enum Item {
    Result(Arc<Delivered>),
    /// A `notice` frame: results this feed was behind on expired from the
    /// log before it could read them.
    Notice(Utf8Bytes),
    /// The feed has read the log up to the live feed and serves from it
    /// now (no frame; a long poll stops waiting for the log).
    Live,
    /// The stream was closed (deleted); nothing more will come.
    Closed(&'static str),
}

/// A read of the log in progress.
struct CatchUp {
    partition: i32,
    /// The next offset to read.
    next: i64,
    /// Records before this offset are read only to remember their event ids.
    silent_before: i64,
    /// Read up to here, then join the live feed; `None`: look it up (after
    /// emptying the live buffer, whose contents the read covers).
    until: Option<i64>,
    reader: Option<StreamConsumer<TracingContext>>,
    /// The watermark query or the reader being made, kept while a caller
    /// is not waiting (see [`Feed::next`]).
    asked_until: Option<Pending<(i64, i64)>>,
    opening: Option<Pending<StreamConsumer<TracingContext>>>,
}

impl CatchUp {
    fn new(partition: i32, next: i64, silent_before: i64) -> Box<Self> {
        Box::new(Self { partition, next, silent_before, until: None, reader: None, asked_until: None, opening: None })
    }
}

/// One subscriber's results (see the module docs).
pub struct Feed {
    log: Arc<ResultsLog>,
    subscription: Subscription,
    /// The last result this feed delivered or passed over; the live feed's
    /// results at or before it are not delivered again.
    last: Option<Pos>,
    seen: Seen,
    /// Event ids remembered, and records read back before a resume.
    window: usize,
    catch_up: Option<Box<CatchUp>>,
    notice: Option<Utf8Bytes>,
}

/// After this long without a record while catching up, the feed checks
/// whether its stream was closed and goes on waiting.
const CATCH_UP_IDLE: Duration = Duration::from_millis(500);

impl Feed {
    /// A feed of `subscription`'s stream from `start`: `410` when the
    /// cursor's results are no longer retained, `400` when it names a
    /// position the topic never had.
    pub async fn open(
        log: Arc<ResultsLog>,
        subscription: Subscription,
        start: Start,
        window: usize,
    ) -> Result<Self, AppError> {
        let mut feed =
            Self { log, subscription, last: None, seen: Seen::new(window), window, catch_up: None, notice: None };
        match start {
            Start::Live => {}
            Start::After(cursor) => {
                if cursor.partition as usize >= feed.log.partitions() {
                    return Err(AppError::BadParameter("the cursor names a partition the topic does not have".into()));
                }
                let (low, high) = feed.log.watermarks(cursor.partition).await?;
                if cursor.next > high {
                    return Err(AppError::BadParameter("the cursor is past the end of the results".into()));
                }
                if cursor.next < low {
                    let earliest = Cursor { partition: cursor.partition, next: low };
                    return Err(AppError::CursorExpired { earliest: earliest.encode(feed.subscription.stream()) });
                }
                feed.last = Some(Pos { partition: cursor.partition, offset: cursor.next - 1 });
                feed.catch_up = Some(CatchUp::new(
                    cursor.partition,
                    cursor.next.saturating_sub(window as i64).max(low),
                    cursor.next,
                ));
            }
            Start::Beginning => {
                // The oldest retained record: nothing before it counts as
                // missed.
                let partition = feed.log.partition_of(feed.subscription.stream());
                let (low, _) = feed.log.watermarks(partition).await?;
                feed.catch_up = Some(CatchUp::new(partition, low, low));
            }
        }
        Ok(feed)
    }

    /// Whether the feed is reading the log (rather than waiting for live
    /// results).
    pub fn catching_up(&self) -> bool {
        self.catch_up.is_some()
    }

    /// Where a client resumes to get what this feed has not delivered yet,
    /// once it has a position.
    pub fn cursor(&self) -> Option<Cursor> {
        match (&self.catch_up, self.last) {
            // Never before the point it started delivering from (while it
            // reads back only to learn event ids).
            (Some(catch_up), _) if catch_up.until.is_some() => {
                Some(Cursor { partition: catch_up.partition, next: catch_up.next.max(catch_up.silent_before) })
            }
            (_, Some(last)) => Some(Cursor::after(last)),
            _ => None,
        }
    }

    /// The stream's next result for this subscriber. Cancel-safe: the
    /// feed's state is only changed between awaits, so a connection may
    /// drop this future to do something else and call again. A query of
    /// the broker in flight (they run on the blocking pool, and a dropped
    /// wait does not stop them) is kept and waited on again, never asked
    /// twice: a socket whose `select!` drops this future on every ack once
    /// started a blocking task per turn, hundreds at once.
    pub async fn next(&mut self) -> Item {
        loop {
            if let Some(notice) = self.notice.take() {
                return Item::Notice(notice);
            }
            let Some(catch_up) = self.catch_up.as_deref_mut() else {
                match self.subscription.next().await {
                    Next::Result(delivered) => {
                        if self.accept(&delivered, false) {
                            return Item::Result(delivered);
                        }
                    }
                    Next::Dropped { count, from } => {
                        // A slow reader: serve it from the log where its
                        // buffer overflowed, instead of skipping. The
                        // records before that are read back first, only to
                        // learn their event ids: this feed delivered them
                        // live, and a replay of one may be among the dropped.
                        metrics::counter!("results_catch_ups_total").increment(1);
                        tracing::debug!(
                            stream = self.subscription.stream(),
                            count,
                            "live buffer overflowed; reading from the log"
                        );
                        self.catch_up = Some(CatchUp::new(
                            from.partition,
                            from.offset.saturating_sub(self.window as i64).max(0),
                            from.offset,
                        ));
                    }
                    Next::Closed(reason) => return Item::Closed(reason),
                }
                continue;
            };
            if let Some(reason) = self.subscription.closed() {
                return Item::Closed(reason);
            }
            let partition = catch_up.partition;
            let Some(until) = catch_up.until else {
                if catch_up.asked_until.is_none() {
                    // What the live buffer holds was written before the
                    // watermark asked next, so the log read covers it.
                    self.subscription.reset();
                    catch_up.asked_until = Some(self.log.ask_watermarks(partition));
                }
                let answered = answer(catch_up.asked_until.as_mut().expect("asked")).await;
                let catch_up = self.catch_up.as_deref_mut().expect("catching up");
                catch_up.asked_until = None;
                match answered {
                    Ok((low, high)) => {
                        if catch_up.next < low {
                            // Only records this feed was to deliver count as
                            // missed; the look-back before them may be gone.
                            let missed = low - catch_up.next.max(catch_up.silent_before);
                            if missed > 0 {
                                metrics::counter!("results_expired_total").increment(missed as u64);
                                let earliest = Cursor { partition, next: low }.encode(self.subscription.stream());
                                self.notice = Some(expired_notice(missed, &earliest));
                            }
                            catch_up.next = low;
                            catch_up.reader = None;
                            catch_up.opening = None;
                        }
                        catch_up.until = Some(high);
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "cannot read the results topic's watermarks; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                continue;
            };
            if catch_up.next >= until {
                if self.subscription.overflowed() {
                    // Results dropped from the live buffer while catching
                    // up may lie beyond `until`: read on to a new end.
                    catch_up.until = None;
                    continue;
                }
                let level = Pos { partition, offset: until - 1 };
                self.catch_up = None;
                if self.last.is_none_or(|last| last.partition != partition || last.offset < level.offset) {
                    self.last = Some(level);
                }
                return Item::Live;
            }
            let Some(reader) = catch_up.reader.as_ref() else {
                let from = catch_up.next;
                let log = &self.log;
                let answered = answer(catch_up.opening.get_or_insert_with(|| log.ask_reader(partition, from))).await;
                let catch_up = self.catch_up.as_deref_mut().expect("catching up");
                catch_up.opening = None;
                match answered {
                    Ok(reader) => catch_up.reader = Some(reader),
                    Err(err) => {
                        tracing::debug!(error = %err, "cannot open a reader of the results topic; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                continue;
            };
            let message = match tokio::time::timeout(CATCH_UP_IDLE, reader.recv()).await {
                Err(_) => continue,
                Ok(Err(err)) => {
                    tracing::debug!(%err, "catch-up read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Ok(Ok(message)) => message,
            };
            let pos = Pos { partition: message.partition(), offset: message.offset() };
            let stream = self.subscription.stream();
            // Most records of the partition are other streams': their key
            // says so without parsing them.
            let decoded = match message.key() {
                Some(key) if key != stream.as_bytes() => None,
                // An earlier stream's result (of the same id, since
                // deleted) is not this stream's, even from the beginning.
                key => Delivered::decode(message.payload().unwrap_or_default(), key, pos)
                    .ok()
                    .filter(|decoded| decoded.stream == stream && self.subscription.is_current(&decoded.delivered)),
            };
            drop(message);
            let catch_up = self.catch_up.as_deref_mut().expect("catching up");
            if pos.partition != partition || pos.offset < catch_up.next {
                continue;
            }
            catch_up.next = pos.offset + 1;
            let Some(decoded) = decoded else { continue };
            if pos.offset < catch_up.silent_before {
                self.seen.insert(decoded.delivered.event);
                continue;
            }
            let delivered = Arc::new(decoded.delivered);
            if self.accept(&delivered, true) {
                metrics::counter!("results_from_log_total").increment(1);
                return Item::Result(delivered);
            }
        }
    }

    /// Whether to deliver `delivered`: not if it is at or before the last
    /// result passed on (the live feed repeating what the log gave), nor if
    /// its event's result was delivered already (a consumer's replay). The
    /// hub already keeps replays out of the live feed (per stream); this
    /// feed's own memory covers what it read from the log, whose replays
    /// the hub may not have seen (before this process started).
    fn accept(&mut self, delivered: &Delivered, from_log: bool) -> bool {
        if let Some(last) = self.last {
            if last.partition == delivered.pos.partition && delivered.pos.offset <= last.offset {
                return false;
            }
        }
        self.last = Some(delivered.pos);
        let fresh = if from_log { self.seen.insert(delivered.event) } else { !self.seen.contains(delivered.event) };
        if !fresh {
            metrics::counter!("results_duplicates_skipped_total").increment(1);
        }
        fresh
    }
}

fn expired_notice(missed: i64, earliest: &str) -> Utf8Bytes {
    json!({
        "type": "notice",
        "expired": missed,
        "earliest": earliest,
        "message": format!("{missed} results expired from the log before this connection could read them"),
    })
    .to_string()
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_from_request() {
        let cursor = Cursor { partition: 0, next: 5 }.encode("s");
        let later = Cursor { partition: 0, next: 9 }.encode("s");
        assert_eq!(Start::from_request("s", None, None, None).unwrap(), Start::Live);
        assert_eq!(Start::from_request("s", None, None, Some("beginning")).unwrap(), Start::Beginning);
        let after = Start::from_request("s", None, Some(&cursor), None).unwrap();
        assert_eq!(after, Start::After(Cursor { partition: 0, next: 5 }));
        // A browser's reconnect: Last-Event-ID beats the URL's after.
        let resumed = Start::from_request("s", Some(&later), Some(&cursor), Some("beginning")).unwrap();
        assert_eq!(resumed, Start::After(Cursor { partition: 0, next: 9 }));
        let both = Start::from_request("s", None, Some(&cursor), Some("beginning")).unwrap();
        assert_eq!(both, Start::After(Cursor { partition: 0, next: 5 }), "a cursor wins over from");
        assert_eq!(
            Start::from_request("s", Some(""), None, None).unwrap(),
            Start::Live,
            "an empty Last-Event-ID is none"
        );
        for (after, from) in [(Some("junk"), None), (None, Some("end")), (Some(""), None)] {
            let err = Start::from_request("s", None, after, from).unwrap_err();
            assert_eq!(err.status(), 400, "{after:?} {from:?}");
        }
        assert_eq!(Start::from_request("t", None, Some(&cursor), None).unwrap_err().status(), 400);
    }
}
