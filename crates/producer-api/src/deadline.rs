//! The body read deadline: a request's whole body must arrive within
//! `--body-read-timeout` of the handler's first read, or the read fails and
//! the request is answered 408.
//!
//! Kept here rather than taken from tower-http: its `RequestBodyTimeout`
//! restarts the timer at every frame, so a client that sends one byte just
//! inside each timeout can hold a request (and its in-flight place) for as
//! long as the body limit lasts.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::Request;
use axum::BoxError;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::Service;

/// The error a body read fails with once its deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the body read timeout")]
pub struct BodyDeadlineExceeded;

pin_project! {
    /// A request body that fails with [`BodyDeadlineExceeded`] when it is
    /// still incomplete `timeout` after its first read. A body never read
    /// (a GET, a WebSocket upgrade) starts no timer.
    pub struct DeadlineBody<B> {
        timeout: Duration,
        #[pin]
        deadline: Option<Sleep>,
        #[pin]
        body: B,
    }
}

impl<B> DeadlineBody<B> {
    pub fn new(body: B, timeout: Duration) -> Self {
        Self { timeout, deadline: None, body }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if this.deadline.is_none() {
            this.deadline.set(Some(tokio::time::sleep(*this.timeout)));
        }
        // What has arrived is taken first; the deadline fails only a read
        // that would otherwise wait.
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        match this.deadline.as_pin_mut().map(|deadline| deadline.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Some(Err(Box::new(BodyDeadlineExceeded)))),
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A service whose requests' bodies each get a [`DeadlineBody`].
#[derive(Debug, Clone)]
pub struct BodyDeadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S> BodyDeadline<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

impl<S, B> Service<Request<B>> for BodyDeadline<S>
where
    S: Service<Request<DeadlineBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> S::Future {
        let timeout = self.timeout;
        self.inner.call(request.map(|body| DeadlineBody::new(body, timeout)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    /// A body fed by a channel: one frame per message, ended when the
    /// sender is dropped.
    struct Fed(mpsc::Receiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|chunk| chunk.map(|chunk| Ok(Frame::data(chunk))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_trickling_fails_at_its_deadline() {
        let (tx, rx) = mpsc::channel(1);
        let mut body = std::pin::pin!(DeadlineBody::new(Fed(rx), Duration::from_secs(10)));
        // A byte every 4 s: each gap is well inside the timeout, which a
        // timer restarted per frame would never see.
        let feeder = tokio::spawn(async move {
            while tx.send(Bytes::from_static(b" ")).await.is_ok() {
                tokio::time::sleep(Duration::from_secs(4)).await;
            }
        });
        let started = tokio::time::Instant::now();
        let mut frames = 0;
        let err = loop {
            match body.frame().await {
                Some(Ok(_)) => {
                    frames += 1;
                    assert!(frames < 10, "still reading after 36 s: the deadline never came");
                }
                Some(Err(err)) => break err,
                None => panic!("the body ended"),
            }
        };
        assert!(err.is::<BodyDeadlineExceeded>(), "{err}");
        assert_eq!(frames, 3, "the bytes at 0, 4 and 8 s are read, then the deadline at 10 s");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_arrives_in_time_is_read_whole() {
        let (tx, rx) = mpsc::channel(4);
        let body = DeadlineBody::new(Fed(rx), Duration::from_secs(10));
        tokio::spawn(async move {
            for chunk in [&b"{\"a\""[..], b":", b"1}"] {
                tokio::time::sleep(Duration::from_secs(3)).await;
                tx.send(Bytes::from_static(chunk)).await.unwrap();
            }
        });
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"{\"a\":1}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_never_read_starts_no_timer() {
        let (_tx, rx) = mpsc::channel::<Bytes>(1);
        let mut body = std::pin::pin!(DeadlineBody::new(Fed(rx), Duration::from_secs(1)));
        tokio::time::sleep(Duration::from_secs(5)).await;
        // The first read starts the timer: the bytes have a full second.
        let read = tokio::time::timeout(Duration::from_millis(900), body.frame()).await;
        assert!(read.is_err(), "still waiting for data, not failed");
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyDeadlineExceeded>());
    }
}
