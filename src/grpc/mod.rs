//! The gRPC API (`flare serve --grpc-port`): package `flare.v1` from proto/flare/v1/flare.proto,
//! served by tonic beside the HTTP API on the same [`AppState`]. `Generate` converts to the
//! HTTP completion request and takes its path (validation, API keys and limits, admission,
//! metrics); dropping the response stream (the client cancelled or went away) aborts the engine
//! request, which frees its KV blocks.

mod service;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::server::AppState;

pub use service::FlareService;

/// Generated messages, server and client.
pub mod pb {
    tonic::include_proto!("flare.v1");
}

/// Serves the gRPC API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(pb::flare_server::FlareServer::new(FlareService::new(state)))
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY each small response waits on the client's delayed ACK
            // (~40 ms per request on Linux).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
