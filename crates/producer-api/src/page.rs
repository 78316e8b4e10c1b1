//! `GET /`: a small page for people: start a stream, send events, watch the
//! processed results arrive with their latency. Plain HTML and JavaScript
//! compiled into the binary, so there is nothing to build or deploy.
//!
//! Browsers cannot set headers on a WebSocket, so the page passes its key as
//! `?api_key=` when it opens the results socket.

use axum::response::Html;

/// `GET /`.
pub async fn serve() -> Html<&'static str> {
    Html(include_str!("page.html"))
}
