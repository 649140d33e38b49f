//! Turns SIGINT and SIGTERM into a cancelled [`CancellationToken`].
//!
//! The token is passed down into `run`; tasks check it at safe points. A second signal while
//! the service is stopping exits at once with code 130, for an operator who does not want to
//! wait.

use tokio_util::sync::CancellationToken;

/// Spawns the listener and returns the token it cancels.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stop requested, shutting down");
        trigger.cancel();
        wait_for_signal().await;
        tracing::warn!("second stop signal, exiting now");
        std::process::exit(130);
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the service can still be stopped by SIGKILL; never cancel.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
