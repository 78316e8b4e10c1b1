//! The W3C trace context of a request, carried into the events it writes.

use axum::http::HeaderMap;
use stream_core::schema::{header as ce, trace, Event};

/// Carries the caller's W3C trace context into the record, unless the
/// caller set it as a header explicitly. A request without a valid one starts
/// a new trace, so every event can be followed through the consumer's logs to
/// its result.
pub fn add_traceparent(event: &mut Event, traceparent: Option<&str>) {
    if event.extension(ce::TRACEPARENT).is_some() {
        return;
    }
    let trace = match traceparent {
        Some(given) if trace::is_valid(given) => given.to_owned(),
        _ => trace::new_traceparent(),
    };
    // The gateway's end of an event's trail through the logs; the consumer
    // logs the same trace id with the event's result ("event processed").
    // At info for a trace its caller sampled, at debug otherwise: a line
    // per event is too many for every event at the default level.
    // The trace id is cut out only when the line is written.
    if trace::is_sampled(&trace) {
        tracing::info!(event_id = %event.id, trace_id = trace::trace_id(&trace).unwrap_or(&trace), "event traced");
    } else {
        tracing::debug!(event_id = %event.id, trace_id = trace::trace_id(&trace).unwrap_or(&trace), "event traced");
    }
    event.extensions.push((ce::TRACEPARENT.into(), trace));
}

/// The request's `traceparent` header, if it is text.
pub fn traceparent(headers: &HeaderMap) -> Option<&str> {
    headers.get(ce::TRACEPARENT).and_then(|v| v.to_str().ok())
}
