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
    // Listening starts here, not when the task first runs: a signal that
    // comes just after start-up must not meet the default action (an
    // abrupt exit).
    let mut signals = Signals::listen();
    tokio::spawn(async move {
        let first = signals.next().await;
        tracing::info!("{first} received: finishing in-flight work (send it again to exit at once)");
        cancel.cancel();
        let second = signals.next().await;
        tracing::warn!("{second} received again: exiting without finishing");
        std::process::exit(exit_code(second));
    });
    token
}

/// The shell's code for a process ended by the signal `name` (128 + its
/// number): what a second signal, which ends the process at once, exits with.
fn exit_code(name: &str) -> i32 {
    match name {
        "SIGTERM" => 143,
        _ => 130,
    }
}

/// Waits for SIGINT or SIGTERM and names the one that came.
pub async fn signal() -> &'static str {
    Signals::listen().next().await
}

/// SIGINT and SIGTERM, listened for from creation on.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn listen() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            interrupt: signal(SignalKind::interrupt()).expect("cannot listen for SIGINT"),
            terminate: signal(SignalKind::terminate()).expect("cannot listen for SIGTERM"),
        }
    }

    #[cfg(not(unix))]
    fn listen() -> Self {
        Self {}
    }

    /// The name of the next signal.
    #[cfg(unix)]
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> &'static str {
        tokio::signal::ctrl_c().await.expect("cannot listen for Ctrl-C");
        "SIGINT"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_signal_exits_with_the_shells_code_for_it() {
        assert_eq!(exit_code("SIGINT"), 130);
        assert_eq!(exit_code("SIGTERM"), 143);
    }
}
