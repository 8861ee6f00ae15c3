//! Accepting and serving connections, with the limits `axum::serve` lacks: a client must send
//! a request's headers within `header_read_timeout` of the connection waiting for them (on a
//! new connection, and between requests on a kept-alive one), else the connection is closed.
//! A slowloris client trickling header bytes, or one holding an idle connection, is cut off
//! while the others are served. A client that stops reading its response for
//! `write_stall_timeout` is cut off too (`write_stall`).
//!
//! On shutdown, listening stops; a connection that never got a request through (nothing sent,
//! or headers still trickling in) is closed at once, since nothing of it was admitted; every
//! other connection is shut down gracefully: idle ones close, and ones with a request in flight
//! close once it is answered. (hyper's own graceful shutdown keeps a fresh connection open until
//! its first request arrives or its header timer fires, which would hold the drain that long.)

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

use super::write_stall::WriteStallGuard;

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    /// A write blocked this long (the client reads nothing) ends the connection.
    pub write_stall_timeout: Duration,
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
    let (stopping_tx, stopping) = watch::channel(false);
    // Each connection task holds a sender; `recv` ends once the last one has finished.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
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
        tokio::spawn(serve_one(
            stream,
            app.clone(),
            builder.clone(),
            limits,
            stopping.clone(),
            open_tx.clone(),
        ));
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    drop(open_tx);
    while open_rx.recv().await.is_some() {}
    Ok(())
}

/// One connection, from its first byte to its end; `_open` is dropped when it is over.
async fn serve_one(
    stream: tokio::net::TcpStream,
    app: Router,
    builder: Builder<TokioExecutor>,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
    _open: mpsc::Sender<()>,
) {
    // The HTTP version is sniffed from the first bytes with no timer of its own: a connection
    // that sends nothing is closed here.
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        peeked = tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut first)) => peeked,
        () = stopped(&mut stopping) => return,
    };
    if !matches!(peeked, Ok(Ok(1..))) {
        return;
    }
    let admitted = Arc::new(AtomicBool::new(false));
    let service = app.map_request({
        let admitted = admitted.clone();
        move |request| {
            admitted.store(true, Ordering::Relaxed);
            request
        }
    });
    let stream = WriteStallGuard::new(stream, limits.write_stall_timeout);
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = stopped(&mut stopping) => {
            // The service runs only inside `conn`'s poll, so this cannot race a request.
            if !admitted.load(Ordering::Relaxed) {
                return;
            }
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    // Timed-out headers, resets and clients that went away end up here.
    if let Err(e) = ended {
        tracing::debug!("connection ended: {e}");
    }
}

/// Resolves once shutdown has begun (or the server is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}
