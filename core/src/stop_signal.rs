//! Ctrl-C and SIGTERM, the same way in every pgvault process: the first signal cancels
//! a token, so the running work stops cleanly (uploads aborted, no manifest, scratch
//! databases dropped); a second one exits at once, and what the cut-off work left is
//! removed by the next run (see [`crate::repository::leftovers`]).

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Which signal of the two has arrived, for the process to say what it does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopStage {
    /// The first signal: the token is cancelled next and the work winds down.
    Cancelling,
    /// The second signal: the process exits right after `announce` returns.
    Now,
}

/// Cancel `token` on the first Ctrl-C or SIGTERM and exit with `exit_code` on the
/// second. `announce` is told each stage first (a CLI prints a line, the agent logs).
/// Must be called inside a tokio runtime; when SIGTERM cannot be listened for, that is
/// logged and only Ctrl-C works.
pub fn cancel_on_signals(
    token: CancellationToken,
    exit_code: i32,
    announce: impl Fn(StopStage) + Send + 'static,
) {
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops pgvault");
                None
            }
        };
        let mut next_signal = async || match term.as_mut() {
            Some(term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            },
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        };
        next_signal().await;
        announce(StopStage::Cancelling);
        token.cancel();
        next_signal().await;
        announce(StopStage::Now);
        std::process::exit(exit_code);
    });
}

/// Wait for `work` unless `cancel` fires first; then `work` is dropped (which stops the
/// streams and blocking stages it owns) and the answer is [`Error::Cancelled`].
pub async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Error::Cancelled),
        r = work => r,
    }
}
