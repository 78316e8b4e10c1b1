//! The stream API: start, send, delete, and the results view (WebSocket,
//! Server-Sent Events, or JSON of the most recent results).

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stream_core::schema::Event;
use tokio::time::Instant;

use crate::auth::Caller;
use crate::delivered::event_key;
use crate::error::AppError;
use crate::extract::{media_type, SendPayload, StreamPath};
use crate::feed::{Feed, Item, Start};
use crate::idempotency::{self, Fingerprint};
use crate::once::{publish_once, replay_marked};
use crate::producer::SOURCE;
use crate::registry::{Claimed, RegistryError};
use crate::serve::ConnectionSlot;
use crate::starting::StartSlot;
use crate::trace::{add_traceparent, traceparent};
use crate::{ws, AppState};

/// Longest stream id accepted.
pub const MAX_STREAM_ID: usize = 128;

/// Stream ids are record keys and URL path segments: letters, digits and
/// `.`, `_`, `-`, `:`; 1 to 128 characters.
pub fn validate_stream_id(id: &str) -> Result<(), AppError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_STREAM_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(AppError::Unprocessable(format!(
            "stream_id must be 1 to {MAX_STREAM_ID} characters of letters, digits, '.', '_', '-' or ':'"
        )))
    }
}

/// `POST /stream/start` body; the body itself is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    #[serde(default)]
    stream_id: Option<String>,
}

/// `{"stream_id": ...}`
#[derive(Debug, Serialize, Deserialize)]
pub struct StreamRef {
    pub stream_id: String,
}

/// `POST /stream/start`: 201 for a new stream, 200 when the caller already
/// owns the id (a retried start), 403 when another key does.
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, AppError> {
    let body = body?;
    let request = if body.trim_ascii().is_empty() {
        StartRequest::default()
    } else if media_type(&headers) == "application/x-www-form-urlencoded" {
        // The seed's clients post `stream_id=abc` as an HTML form.
        start_form(&body)?
    } else {
        if !is_json(&headers) {
            return Err(AppError::UnsupportedMediaType(
                "send the body with Content-Type: application/json or as a form (or send no body)".into(),
            ));
        }
        let shape_error = |e: serde_json::Error| {
            if e.is_data() {
                AppError::Unprocessable(e.to_string())
            } else {
                AppError::MalformedJson(e.to_string())
            }
        };
        // serde would take `[]` or `["id"]` for the struct too; only an
        // object is the documented shape.
        let value: Value = serde_json::from_slice(&body).map_err(shape_error)?;
        if !value.is_object() {
            return Err(AppError::Unprocessable("expected a JSON object {\"stream_id\"?: string}".into()));
        }
        serde_json::from_value::<StartRequest>(value).map_err(shape_error)?
    };
    let deadline = state.publisher.deadline();
    let outcome = match request.stream_id {
        Some(stream_id) => {
            validate_stream_id(&stream_id)?;
            let _slot = reserve_quota(&state, &caller, &stream_id)?;
            let outcome = state
                .claims
                .with_producer(async |producer| {
                    state.registry.claim(producer, &stream_id, &caller.owner, deadline).await
                })
                .await?;
            (stream_id, outcome)
        }
        None => {
            let stream_id = uuid::Uuid::new_v4().to_string();
            let _slot = reserve_quota(&state, &caller, &stream_id)?;
            let outcome = state
                .claims
                .with_producer(async |producer| {
                    state.registry.claim_new(producer, &stream_id, &caller.owner, deadline).await
                })
                .await?;
            (stream_id, outcome)
        }
    };
    let (stream_id, outcome) = outcome;
    let status = match outcome {
        Claimed::Created => {
            metrics::counter!("streams_started_total").increment(1);
            StatusCode::CREATED
        }
        Claimed::Existing => StatusCode::OK,
    };
    Ok((status, Json(StreamRef { stream_id })).into_response())
}

/// A form-encoded start (`stream_id=abc`): the same one optional field as
/// the JSON body; any other field is refused as in JSON.
fn start_form(body: &[u8]) -> Result<StartRequest, AppError> {
    let fields = crate::extract::form_fields(body)?;
    let mut request = StartRequest::default();
    let mut seen = false;
    for (name, value) in fields {
        match name.as_str() {
            // An HTML form sends its empty id field as `stream_id=`: no id
            // given, so one is generated (JSON's explicit "" is refused).
            "stream_id" if !seen => {
                seen = true;
                request.stream_id = Some(value).filter(|id| !id.is_empty());
            }
            "stream_id" => return Err(AppError::Unprocessable("stream_id given twice".into())),
            other => return Err(AppError::Unprocessable(format!("unknown form field {other:?}; expected stream_id"))),
        }
    }
    Ok(request)
}

/// One key may own at most `--max-streams-per-key` streams, so a single
/// client cannot fill every replica's memory with stream slots. A retried
/// start of a stream the caller already owns is never refused. Within one
/// process the limit is exact even for concurrent starts; across replicas
/// each counts the others' streams once their claims are applied.
fn reserve_quota(state: &AppState, caller: &Caller, stream_id: &str) -> Result<Option<StartSlot>, AppError> {
    let max = state.config.max_streams_per_key;
    match state.registry.reserve(&caller.owner, stream_id, max) {
        Ok(slot) => Ok(slot),
        Err(_full) => {
            metrics::counter!("stream_quota_refusals_total").increment(1);
            Err(AppError::QuotaExceeded {
                detail: format!("this key already owns {max} streams (the limit); delete some before starting more"),
                retry_after: QUOTA_RETRY_AFTER,
            })
        }
    }
}

/// Retry-After of a refusal over `--max-websockets-per-key`: connections
/// end on the client's schedule.
pub const SUBSCRIPTION_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Retry-After of a quota refusal: streams are freed by deletes, which a
/// client does on its own schedule, so this is a polite pause, not a promise.
pub const QUOTA_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether an `Accept` header lists `text/event-stream`: media types are
/// case-insensitive, and `;q=0` means "not this one". A few lines rather
/// than a content-negotiation crate: this one type is all that is chosen on.
fn accepts_event_stream(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim();
        let refused = parts.any(|param| {
            let param = param.trim();
            param.get(..2).is_some_and(|name| name.eq_ignore_ascii_case("q="))
                && param[2..].trim().parse::<f32>().is_ok_and(|q| q == 0.0)
        });
        media.eq_ignore_ascii_case("text/event-stream") && !refused
    })
}

fn is_json(headers: &HeaderMap) -> bool {
    let media_type = media_type(headers);
    media_type == "application/json" || media_type.ends_with("+json")
}

/// The registry's answers as the API gives them.
impl From<RegistryError> for AppError {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::OwnedByAnother => AppError::Forbidden,
            RegistryError::Unknown(stream) => AppError::UnknownStream(stream),
            RegistryError::Unavailable(detail) => AppError::unavailable(detail),
        }
    }
}

/// 404 for an unknown stream, 403 for another key's stream.
pub async fn authorize(state: &AppState, caller: &Caller, stream: &str, deadline: Instant) -> Result<(), AppError> {
    if validate_stream_id(stream).is_err() {
        return Err(AppError::UnknownStream(stream.to_owned()));
    }
    match state.registry.owner_fresh(stream, deadline).await? {
        Some(owner) if owner == caller.owner => Ok(()),
        Some(_) => Err(AppError::Forbidden),
        None => Err(AppError::UnknownStream(stream.to_owned())),
    }
}

/// Reply to a stream send.
#[derive(Debug, Serialize, Deserialize)]
pub struct SendAck {
    pub id: String,
    pub stream_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl IntoResponse for SendAck {
    /// The same bytes as `Json(ack)`, written directly: serde_json escapes
    /// strings a byte at a time, which was about 2 % of the gateway's
    /// instructions per send (callgrind).
    fn into_response(self) -> Response {
        use stream_core::json::{write_int, write_str};
        let mut out = Vec::with_capacity(64 + self.id.len() + self.stream_id.len() + self.topic.len());
        out.extend_from_slice(b"{\"id\":");
        write_str(&mut out, &self.id);
        out.extend_from_slice(b",\"stream_id\":");
        write_str(&mut out, &self.stream_id);
        out.extend_from_slice(b",\"topic\":");
        write_str(&mut out, &self.topic);
        out.extend_from_slice(b",\"partition\":");
        write_int(&mut out, self.partition);
        out.extend_from_slice(b",\"offset\":");
        write_int(&mut out, self.offset);
        out.push(b'}');
        ([(header::CONTENT_TYPE, "application/json")], out).into_response()
    }
}

/// `POST /stream/{id}/send`: publishes one event keyed by the stream id
/// (at most once per `Idempotency-Key`).
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    StreamPath(stream_id): StreamPath,
    SendPayload { data, headers }: SendPayload,
) -> Result<Response, AppError> {
    let deadline = state.publisher.deadline();
    authorize(&state, &caller, &stream_id, deadline).await?;
    state.check_schema(&data)?;
    let key = idempotency::Key::from_headers(&caller.owner, &headers)?;
    let mut event = Event::json(SOURCE, Some(stream_id.clone()), &data);
    add_traceparent(&mut event, traceparent(&headers));
    let topic = &state.config.kafka.topics.events;
    // Noted before the write, so a result that comes before the ack is
    // not missed.
    let idempotent_id = key.as_ref().map(idempotency::Key::event_id);
    let awaited = event_key(idempotent_id.as_deref().unwrap_or(&event.id));
    if let Some(opened_at) = state.hub.sent(&stream_id, awaited, Instant::now() + SEND_RESULT_WAIT) {
        // Its id was used before: its results are told from the earlier
        // stream's by time, even where this host's clock is behind the
        // one that started it (see `Hub::open`).
        event.time = event.time.max(opened_at);
    }
    let outcome = async {
        match key {
            None => {
                state.admit(&caller.owner, 1)?;
                let future = state.publisher.enqueue(topic, &event)?;
                Ok((state.publisher.acked(event.id, topic, future, deadline).await?, false))
            }
            Some(key) => {
                let fingerprint = Fingerprint::of([&b"send"[..], stream_id.as_bytes(), event.data.as_slice()]);
                publish_once(&state, &caller, &key, fingerprint, event).await
            }
        }
    }
    .await;
    if outcome.is_err() {
        state.hub.unsent(&stream_id, awaited);
    }
    let (ack, replayed) = outcome?;
    let ack = SendAck { id: ack.id, stream_id, topic: ack.topic, partition: ack.partition, offset: ack.offset };
    Ok(replay_marked(ack.into_response(), replayed))
}

/// `DELETE /stream/{id}`: closes the stream everywhere; its watchers'
/// connections end.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    StreamPath(stream_id): StreamPath,
) -> Result<Json<Value>, AppError> {
    if validate_stream_id(&stream_id).is_err() {
        return Err(AppError::UnknownStream(stream_id));
    }
    let deadline = state.publisher.deadline();
    state
        .claims
        .with_producer(async |producer| state.registry.delete(producer, &stream_id, &caller.owner, deadline).await)
        .await?;
    metrics::counter!("streams_deleted_total").increment(1);
    Ok(Json(json!({ "stream_id": stream_id, "deleted": true })))
}

/// How long a plain JSON read of a stream's results (no cursor) waits for
/// the result of the stream's last send through this gateway: the seed's
/// server waited 5 s for results on every such read, and its clients send
/// and then read at once.
pub const SEND_RESULT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Results one long poll returns when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Most results one long poll returns; a larger `limit` is taken as this.
pub const MAX_LIMIT: usize = 1000;
/// Longest `wait` of a long poll, in seconds: below the timeouts of
/// common proxies and HTTP clients; a longer `wait` is taken as this, and
/// the client polls again.
pub const MAX_WAIT_SECS: f64 = 10.0;

#[derive(serde::Deserialize)]
struct ResultsQuery {
    after: Option<String>,
    from: Option<String>,
    limit: Option<String>,
    wait: Option<String>,
}

/// `limit` and `wait` of a long poll.
#[derive(Debug, PartialEq)]
struct Poll {
    limit: usize,
    wait: std::time::Duration,
}

impl ResultsQuery {
    /// `limit` and `wait`, each held to its bound; what is not a number,
    /// a `limit` below 1 and a negative `wait` are refused.
    fn poll(&self) -> Result<Poll, AppError> {
        let limit = match &self.limit {
            None => DEFAULT_LIMIT,
            // A whole number too large for u64 is still above the bound.
            Some(text)
                if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<u64>().is_err() =>
            {
                MAX_LIMIT
            }
            Some(text) => text
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    AppError::BadParameter(format!(
                        "limit={text:?}: give a whole number of at least 1 (at most {MAX_LIMIT} are returned)"
                    ))
                })?
                .min(MAX_LIMIT as u64) as usize,
        };
        let wait = match &self.wait {
            None => 0.0,
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|s| *s >= 0.0)
                .ok_or_else(|| {
                    AppError::BadParameter(format!(
                        "wait={text:?}: give seconds, 0 or more (at most {MAX_WAIT_SECS} are waited)"
                    ))
                })?
                .min(MAX_WAIT_SECS),
        };
        Ok(Poll { limit, wait: std::time::Duration::from_secs_f64(wait) })
    }
}

/// `GET /stream/{id}/results` (also `/stream/{id}/stream`): a WebSocket
/// when upgrading, Server-Sent Events when the client accepts
/// `text/event-stream`, otherwise JSON: with `after` or `from`, a long poll
/// of the results after that point; without, the most recent results,
/// once the result of the stream's last send here has come (at most
/// [`SEND_RESULT_WAIT`]).
/// Every result carries its cursor (see [`crate::feed`]).
#[allow(clippy::too_many_arguments)]
pub async fn results(
    State(state): State<AppState>,
    caller: Caller,
    StreamPath(stream_id): StreamPath,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    connection: Option<Extension<ConnectionSlot>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    authorize(&state, &caller, &stream_id, state.publisher.deadline()).await?;
    let query: ResultsQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or_default())
        .map_err(|err| AppError::BadParameter(format!("malformed query: {err}")))?;
    let poll = query.poll()?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(value) => {
            Some(value.to_str().map_err(|_| AppError::BadParameter("Last-Event-ID is not a cursor".into()))?.trim())
        }
    };
    let start = Start::from_request(&stream_id, last_event_id, query.after.as_deref(), query.from.as_deref())?;
    refuse_broken_handshake(upgrade.as_ref().err())?;
    let wants_sse = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(accepts_event_stream);
    if upgrade.is_ok() || wants_sse {
        let max = state.config.max_websockets_per_key;
        let key = state.subscriptions.reserve(&caller.owner, max).ok_or_else(|| {
            metrics::counter!("websocket_key_limit_refusals_total").increment(1);
            AppError::ConnectionLimit {
                detail: format!(
                    "this key already has {max} result connections (WebSocket or SSE) open, the limit; close some first"
                ),
                retry_after: SUBSCRIPTION_RETRY_AFTER,
            }
        })?;
        let held = ws::Held { key, connection: connection.map(|Extension(slot)| slot) };
        let feed = open_feed(&state, &stream_id, start).await?;
        return Ok(match upgrade {
            Ok(upgrade) => {
                let trace = traceparent(&headers).filter(|given| stream_core::schema::trace::is_valid(given));
                ws::upgrade(state, stream_id, feed, held, trace.map(str::to_owned), upgrade)
            }
            Err(_) => ws::sse(state, feed, held),
        });
    }
    if start == Start::Live {
        let recent = state.hub.recent_after_sends(&stream_id).await;
        let next = recent.last().map(|d| d.cursor().to_owned());
        return Ok(results_body(&stream_id, &recent, next, false));
    }
    long_poll(&state, &stream_id, start, poll).await
}

/// A request that asks for a WebSocket (axum reports these two only after
/// it found `Connection: upgrade` and `Upgrade: websocket`) but whose
/// handshake cannot be completed is refused, not answered with the JSON
/// view: a version other than 13 with 426 and the version the server
/// speaks (RFC 6455, 4.2.2), a missing `Sec-WebSocket-Key` with 400.
fn refuse_broken_handshake(rejection: Option<&WebSocketUpgradeRejection>) -> Result<(), AppError> {
    match rejection {
        Some(WebSocketUpgradeRejection::InvalidWebSocketVersionHeader(_)) => Err(AppError::WebSocketVersion),
        Some(WebSocketUpgradeRejection::WebSocketKeyHeaderMissing(_)) => {
            Err(AppError::BadParameter("a WebSocket handshake needs a Sec-WebSocket-Key header".into()))
        }
        _ => Ok(()),
    }
}

async fn open_feed(state: &AppState, stream_id: &str, start: Start) -> Result<Feed, AppError> {
    let subscription = state.hub.subscribe(stream_id).ok_or_else(|| AppError::UnknownStream(stream_id.to_owned()))?;
    Feed::open(state.log.clone(), subscription, start, state.config.dedup_window).await
}

/// The JSON pull: returns as soon as at least one result is in hand (with
/// whatever follows it at once, up to `limit`), or after `wait` with none.
/// Reading the log does not count against `wait`: results already written
/// are returned even with `wait=0`.
async fn long_poll(state: &AppState, stream_id: &str, start: Start, poll: Poll) -> Result<Response, AppError> {
    let mut feed = open_feed(state, stream_id, start).await?;
    let mut results = Vec::new();
    let waited = Instant::now() + poll.wait;
    let log_deadline = state.publisher.deadline();
    while results.len() < poll.limit {
        let by = if feed.catching_up() {
            log_deadline
        } else if results.is_empty() {
            waited
        } else {
            // What arrived together with the first result.
            Instant::now() + stream_core::kafka::READER_FETCH_WAIT
        };
        match tokio::time::timeout_at(by, feed.next()).await {
            Ok(Item::Result(delivered)) => results.push(delivered),
            Ok(Item::Notice(_) | Item::Live) => continue,
            Ok(Item::Closed(_)) | Err(_) => break,
        }
    }
    let next = results.last().map(|d| d.cursor().to_owned()).or_else(|| feed.cursor().map(|c| c.encode(stream_id)));
    Ok(results_body(stream_id, &results, next, true))
}

/// `{"stream_id", "results": [frames], "next"?}`, written from the frames
/// as they are (each a JSON object).
fn results_body(
    stream_id: &str,
    results: &[std::sync::Arc<crate::delivered::Delivered>],
    next: Option<String>,
    always_next: bool,
) -> Response {
    let size: usize = results.iter().map(|d| d.frame.len() + 1).sum();
    let mut body = String::with_capacity(size + 64 + stream_id.len());
    body.push_str("{\"stream_id\":");
    body.push_str(&Value::from(stream_id).to_string());
    body.push_str(",\"results\":[");
    for (n, delivered) in results.iter().enumerate() {
        if n > 0 {
            body.push(',');
        }
        body.push_str(delivered.frame.as_str());
    }
    body.push(']');
    if next.is_some() || always_next {
        body.push_str(",\"next\":");
        body.push_str(&Value::from(next).to_string());
    }
    body.push('}');
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_are_chosen_by_the_accept_header_whatever_its_case() {
        for yes in [
            "text/event-stream",
            "TEXT/EVENT-STREAM",
            "application/json;q=0.5, Text/Event-Stream",
            "text/event-stream; charset=utf-8",
            "text/event-stream;q=0.1",
        ] {
            assert!(accepts_event_stream(yes), "{yes:?}");
        }
        for no in
            ["application/json", "*/*", "", "text/event-stream;q=0", "text/event-streams", "text/event-stream; Q=0.0"]
        {
            assert!(!accepts_event_stream(no), "{no:?}");
        }
    }

    fn poll(limit: Option<&str>, wait: Option<&str>) -> Result<Poll, AppError> {
        let query = ResultsQuery { after: None, from: None, limit: limit.map(Into::into), wait: wait.map(Into::into) };
        query.poll()
    }

    #[test]
    fn a_form_with_an_empty_id_asks_for_a_generated_one() {
        assert_eq!(start_form(b"stream_id=abc").unwrap().stream_id.as_deref(), Some("abc"));
        assert_eq!(start_form(b"stream_id=").unwrap().stream_id, None);
        assert_eq!(start_form(b"").unwrap().stream_id, None);
        assert!(matches!(start_form(b"stream_id=&stream_id=b"), Err(AppError::Unprocessable(_))));
        assert!(matches!(start_form(b"name=x"), Err(AppError::Unprocessable(_))));
    }

    #[test]
    fn long_poll_bounds_are_held_not_refused() {
        let secs = std::time::Duration::from_secs_f64;
        assert_eq!(poll(None, None).unwrap(), Poll { limit: DEFAULT_LIMIT, wait: secs(0.0) });
        assert_eq!(poll(Some("7"), Some("2.5")).unwrap(), Poll { limit: 7, wait: secs(2.5) });
        assert_eq!(poll(Some("5000"), Some("30")).unwrap(), Poll { limit: MAX_LIMIT, wait: secs(MAX_WAIT_SECS) });
        assert_eq!(poll(Some("1000"), Some("inf")).unwrap(), Poll { limit: MAX_LIMIT, wait: secs(MAX_WAIT_SECS) });
        assert_eq!(poll(Some("99999999999999999999999"), None).unwrap().limit, MAX_LIMIT);
        for (limit, wait) in [
            (Some("0"), None),
            (Some("-1"), None),
            (Some("ten"), None),
            (None, Some("-1")),
            (None, Some("soon")),
            (None, Some("NaN")),
        ] {
            assert!(matches!(poll(limit, wait), Err(AppError::BadParameter(_))), "{limit:?} {wait:?}");
        }
    }

    #[test]
    fn stream_ids() {
        for good in ["a", "0190a1b2-c3d4", "user:42", "x.y_z", &"a".repeat(MAX_STREAM_ID)] {
            validate_stream_id(good).unwrap();
        }
        for bad in ["", "a b", "a/b", "é", &"a".repeat(MAX_STREAM_ID + 1)] {
            assert!(validate_stream_id(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_send_ack_is_the_json_serde_writes() {
        let odd = ["", "plain", "quote\" back\\slash", "ctl\u{1}\n\t", "ünï\u{7f}\u{2028}", &"x".repeat(300)];
        for (n, text) in odd.iter().enumerate() {
            for (partition, offset) in [(0, 0), (i32::MAX, i64::MAX), (-1, -1001)] {
                let ack = || SendAck {
                    id: text.to_string(),
                    stream_id: odd[(n + 1) % odd.len()].to_string(),
                    topic: odd[(n + 2) % odd.len()].to_string(),
                    partition,
                    offset,
                };
                let response = ack().into_response();
                assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
                let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
                assert_eq!(body, serde_json::to_vec(&ack()).unwrap(), "{}", String::from_utf8_lossy(&body));
            }
        }
    }
}
