//! Accepting and serving connections, with the limits `axum::serve` lacks: a client must send
//! a request's headers within `header_read_timeout` of the connection waiting for them (on a
//! new connection, and between requests on a kept-alive one), else the connection is closed.
//! A slowloris client trickling header bytes, or one holding an idle connection, is cut off
//! while the others are served. On shutdown, listening stops, idle connections close, and
//! connections with a request in flight close once it is answered.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
}

/// How long to back off when `accept` fails (out of file descriptors, say), so the loop does
/// not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `shutdown` resolves, then waits for open connections to
/// finish their requests (the caller bounds that wait).
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let first_byte_limit = limits.header_read_timeout;
        tokio::spawn(async move {
            // The HTTP version is sniffed from the first bytes with no timer of its own: a
            // connection that sends nothing is closed here.
            let mut first = [0u8; 1];
            let peeked = tokio::time::timeout(first_byte_limit, stream.peek(&mut first)).await;
            if !matches!(peeked, Ok(Ok(1..))) {
                return;
            }
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            // Timed-out headers, resets and clients that went away end up here.
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
