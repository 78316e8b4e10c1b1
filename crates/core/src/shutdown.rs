//! Graceful shutdown: one token, cancelled by SIGINT or SIGTERM.
//!
//! Every long-running task watches the token (`token.cancelled().await`) and
//! finishes what it has started: producers flush, consumers commit. A second
//! signal exits at once, for when a flush cannot complete.

use tokio_util::sync::CancellationToken;

/// Returns a token that is cancelled on the first SIGINT or SIGTERM.
/// Must be called inside a Tokio runtime.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let first = signal().await;
        tracing::info!("{first} received: finishing in-flight work (send it again to exit at once)");
        cancel.cancel();
        let second = signal().await;
        tracing::warn!("{second} received again: exiting without finishing");
        std::process::exit(130);
    });
    token
}

/// Waits for SIGINT or SIGTERM and names the one that came.
pub async fn signal() -> &'static str {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.expect("cannot listen for SIGINT");
        "SIGINT"
    };
    #[cfg(unix)]
    let terminate = async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot listen for SIGTERM")
            .recv()
            .await;
        "SIGTERM"
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<&'static str>();
    tokio::select! {
        name = ctrl_c => name,
        name = terminate => name,
    }
}
