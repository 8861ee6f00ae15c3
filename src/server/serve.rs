//! Running the app on a listener until a shutdown signal, then draining in-flight requests
//! for a bounded time.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::conn;
use super::routes::router;
use super::state::AppState;

/// How often histogram buffers are folded in when nobody scrapes /metrics.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// How often the engine thread is checked for having died.
const ENGINE_WATCH: Duration = Duration::from_millis(100);

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish and
/// returns whether they all did within `drain_timeout`.
///
/// If the engine thread dies (a panic), /health is 503 at once; the server then shuts down as
/// on a signal and returns an error, so the process exits non-zero and an orchestrator
/// restarts it instead of keeping a zombie.
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
    let engine_died = Arc::new(tokio::sync::Notify::new());
    let died = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (state, engine_died, died) = (state.clone(), engine_died.clone(), died.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ENGINE_WATCH).await;
                if state.engine().is_some_and(|e| !e.is_alive()) {
                    tracing::error!("the engine thread has died; shutting down");
                    died.store(true, Ordering::SeqCst);
                    engine_died.notify_one();
                    return;
                }
            }
        })
    };
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = {
        let state = state.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                () = engine_died.notified() => {}
            }
            tracing::info!("shutting down: no new requests; draining in-flight ones");
            state.begin_shutdown();
            let _ = signalled_tx.send(());
        }
    };
    let limits = conn::Limits {
        header_read_timeout: state.config.header_read_timeout,
        write_stall_timeout: state.config.write_stall_timeout,
    };
    let server = conn::serve_connections(listener, router(state), limits, signal);
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
    watchdog.abort();
    if died.load(Ordering::SeqCst) {
        return Err(std::io::Error::other(
            "the engine thread died (see the panic above); exiting so that a supervisor restarts \
             the server",
        ));
    }
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
