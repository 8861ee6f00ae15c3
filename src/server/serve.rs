//! Running the app on a listener until a shutdown signal, then draining in-flight requests
//! for a bounded time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::routes::router;
use super::state::AppState;

/// How often histogram buffers are folded in when nobody scrapes /metrics.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish and
/// returns whether they all did within `drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> std::io::Result<bool> {
    let upkeep = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(METRICS_UPKEEP);
            loop {
                tick.tick().await;
                state.metrics.upkeep();
            }
        })
    };
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = {
        let state = state.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new requests; draining in-flight ones");
            state.begin_shutdown();
            let _ = signalled_tx.send(());
        }
    };
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(signal);
    let drained = tokio::select! {
        res = server => res.map(|()| true),
        () = async {
            if signalled_rx.await.is_ok() {
                tokio::time::sleep(drain_timeout).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!("in-flight requests did not finish within {drain_timeout:?}");
            Ok(false)
        }
    };
    upkeep.abort();
    drained
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
