//! Publishing at most once per `Idempotency-Key`: the idempotency store,
//! the rate limit and the producer together, for `/publish` and stream
//! sends alike.

use axum::response::Response;
use stream_core::schema::Event;

use crate::auth::Caller;
use crate::error::AppError;
use crate::idempotency::{self, Fingerprint, Written};
use crate::producer::Ack;
use crate::AppState;

/// Publishes `event` at most once per idempotency key: the first request
/// writes it (with the id derived from the key), repeats get its ack back
/// with `replayed` set. Rate limits count only the write.
pub async fn publish_once(
    state: &AppState,
    caller: &Caller,
    key: &idempotency::Key,
    fingerprint: Fingerprint,
    mut event: Event,
) -> Result<(Ack, bool), AppError> {
    let topic = &state.config.kafka.topics.events;
    let deadline = state.publisher.deadline();
    let (written, replayed) = state
        .idempotency
        .run(key, fingerprint, deadline, |id| {
            event.id = id;
            let admitted = state.admit(&caller.owner, 1);
            let (state, topic) = (state.clone(), topic.clone());
            async move {
                admitted?;
                let ack = state.idempotent.publish_to_the_end(&topic, &event).await?;
                Ok(Written { partition: ack.partition, offset: ack.offset })
            }
        })
        .await?;
    let ack = Ack { id: key.event_id(), topic: topic.clone(), partition: written.partition, offset: written.offset };
    Ok((ack, replayed))
}

/// Marks a replayed response `Idempotent-Replayed: true`.
pub fn replay_marked(mut response: Response, replayed: bool) -> Response {
    if replayed {
        response.headers_mut().insert(idempotency::REPLAYED, axum::http::HeaderValue::from_static("true"));
    }
    response
}
