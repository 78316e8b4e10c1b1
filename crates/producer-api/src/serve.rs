//! The connection loop: the application ([`App`]) on hyper HTTP/1.1 connections, with
//! the limits a public endpoint needs and `axum::serve` does not set.
//!
//! - At most `max_connections` connections at once. Beyond it a new
//!   connection is accepted and closed at once, so a flood of idle sockets
//!   cannot use up the process's file descriptors and starve everyone.
//! - A request's headers must arrive within `header_read_timeout`, counted
//!   from when the connection is ready for a request: a client that sends
//!   half a request, or keeps an idle keep-alive connection, is closed then.
//! - A write that makes no progress for `write_timeout` ends the
//!   connection: a client that stopped reading (an SSE subscriber, a large
//!   answer) or vanished without a FIN does not keep its place until TCP
//!   gives up, which takes about a quarter of an hour.
//! - A WebSocket keeps its connection's place after the upgrade (the
//!   handler takes the [`ConnectionSlot`] from the request), so open sockets
//!   count against the limit too.
//! - Graceful shutdown: no new connections; requests in progress finish,
//!   and WebSockets close themselves (they watch the same token); the loop
//!   returns when every place is free again.
//!
//! This is the accept loop of `axum::serve` with hyper's builder exposed;
//! axum offers no hook for these settings.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::App;

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to receive a request's headers, from when the connection waits
    /// for one (so it is also the idle keep-alive limit).
    pub header_read_timeout: Duration,
    /// Time a write may make no progress before the connection is closed.
    pub write_timeout: Duration,
}

/// A connection's place under [`Limits::max_connections`], in every request's
/// extensions; the place is free once every clone is dropped.
#[derive(Clone)]
pub struct ConnectionSlot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// Whether a connection (or a WebSocket on it) ended because a write made
/// no progress within the write timeout.
pub(crate) fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    crate::error::caused_by::<std::io::Error>(error, |e| e.kind() == std::io::ErrorKind::TimedOut)
}

/// A listener on `addr` whose kernel queue holds `backlog` connections not
/// yet accepted. tokio's `TcpListener::bind` (like the standard library's)
/// asks for 128, which a thousand clients connecting at once overflow.
pub fn bind(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // As tokio's bind: a restarted server can take its port back at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // Linux copies TCP_NODELAY to every accepted socket: one system call
    // here instead of one per connection.
    #[cfg(target_os = "linux")]
    socket.set_nodelay(true)?;
    if let Some(cap) = capped_backlog(backlog, somaxconn()) {
        tracing::warn!(
            backlog,
            cap,
            "net.core.somaxconn caps the listen backlog: clients connecting at once beyond it wait a second each; \
             raise it with sysctl -w net.core.somaxconn={backlog}"
        );
    }
    socket.listen(backlog)
}

/// The kernel's cap on listen backlogs, where it can be read.
fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok()?.trim().parse().ok()
}

/// What the kernel will hold instead of `backlog`, when its cap is lower.
fn capped_backlog(backlog: u32, somaxconn: Option<u32>) -> Option<u32> {
    somaxconn.filter(|cap| *cap < backlog)
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then waits
/// until every connection has ended.
pub async fn serve(listener: TcpListener, app: App, limits: Limits, shutdown: CancellationToken) {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let slots = Arc::new(Semaphore::new(max));
    metrics::counter!("http_connections_refused_total").absolute(0);
    metrics::counter!("http_write_timeouts_total").absolute(0);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors or a connection reset before accept:
                    // pause briefly rather than spin, then carry on.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: close at once (the client sees a reset or EOF) instead of
            // holding a descriptor the process may need.
            metrics::counter!("http_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        #[cfg(not(target_os = "linux"))]
        let _ = stream.set_nodelay(true);
        let slot = ConnectionSlot(Arc::new(slot));
        let service = {
            let slot = slot.clone();
            TowerToHyperService::new(app.clone().map_request(move |request: Request<Incoming>| {
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(slot.clone());
                request
            }))
        };
        // A token of its own: the select below polls it at every wake-up
        // of the connection, and each poll locks the token's node. The
        // server's one token, shared by every connection, made that a lock
        // contended across the worker threads.
        let shutdown = shutdown.child_token();
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
            let mut stream = TimeoutStream::new(stream);
            stream.set_write_timeout(Some(limits.write_timeout));
            let connection = builder.serve_connection(TokioIo::new(Box::pin(stream)), service).with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        if timed_out(&error) {
                            metrics::counter!("http_write_timeouts_total").increment(1);
                        }
                        tracing::debug!(%error, "connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "connection ended with an error during shutdown");
                    }
                }
            }
        });
    }
    drop(listener);
    // Every place back: every connection (and WebSocket) has ended.
    let _ = slots.acquire_many(max as u32).await;
}

/// `max` connections (`--max-connections`), capped to leave room under
/// the process's open-file limit (Kafka sockets, files) so the cap takes
/// effect before the descriptors run out.
pub fn connection_limit(max: usize) -> usize {
    match open_file_limit() {
        Some(limit) => max.min(limit.saturating_sub(256).max(16)),
        None => max,
    }
}

/// The soft open-file limit of this process.
fn open_file_limit() -> Option<usize> {
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
    usize::try_from(soft).ok()
}

/// Raises this process's soft open-file limit to its hard limit, as a
/// server holding thousands of sockets needs (Go's runtime does the same at
/// start): a shell's usual soft limit of 1,024 would otherwise cap
/// `--max-connections` at 768. Returns the limit now in force.
pub fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpStream;

    use super::{bind, capped_backlog};

    /// Connects `n` clients at once to a listener that accepts none of them;
    /// returns how many connected within 700 ms (a dropped SYN is retried
    /// only after a second).
    async fn connected_without_accept(backlog: u32, n: usize) -> usize {
        let listener = bind("127.0.0.1:0".parse().unwrap(), backlog).unwrap();
        let addr = listener.local_addr().unwrap();
        let attempts = (0..n).map(|_| tokio::time::timeout(Duration::from_millis(700), TcpStream::connect(addr)));
        let results = futures::future::join_all(attempts).await;
        let connected = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        drop(listener);
        connected
    }

    #[tokio::test]
    async fn the_backlog_holds_a_burst_of_connections_until_they_are_accepted() {
        // A burst the kernel's own cap allows (an old kernel's somaxconn is 128).
        let burst = super::somaxconn().unwrap_or(4096).min(300) as usize;
        assert_eq!(connected_without_accept(1024, burst).await, burst);
        // The same burst against a small queue: the kernel drops SYNs, so
        // the check above does depend on the backlog asked for.
        assert!(connected_without_accept(16, burst).await < burst);
    }

    #[test]
    fn a_kernel_cap_below_the_backlog_is_reported() {
        assert_eq!(capped_backlog(4096, Some(128)), Some(128));
        assert_eq!(capped_backlog(4096, Some(4096)), None);
        assert_eq!(capped_backlog(4096, None), None);
    }

    #[tokio::test]
    async fn accepted_connections_do_not_wait_to_fill_segments() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap(), "Nagle's algorithm would hold back small answers");
    }
}
