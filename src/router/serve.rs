//! Building the front from a config (models loading in the background, each on its own) and
//! serving it until a shutdown signal, then draining.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::net::TcpListener;

use super::cascade::Route;
use super::config::MultiConfig;
use super::dispatch::{router, Front, LocalModel};
use super::metrics::RouteMetrics;
use super::target::Target;
use crate::engine::EngineArgs;
use crate::server::{AppState, ServerConfig};

/// The label of the per-key counters, which count over all models.
pub const ALL_MODELS: &str = "all";

const METRICS_UPKEEP: Duration = Duration::from_secs(5);
const ENGINE_WATCH: Duration = Duration::from_millis(200);

/// The front for `cfg`: `base` carries the server-wide options (keys, limits); `models` holds
/// each model's own server options, in the config's order. Models are not loaded yet.
pub fn build(
    cfg: &MultiConfig,
    base: &ServerConfig,
    models: Vec<ServerConfig>,
) -> Result<Arc<Front>> {
    let gate = AppState::new(ServerConfig {
        served_model_names: vec![ALL_MODELS.into()],
        ..base.clone()
    });
    let models: Vec<Arc<LocalModel>> = models
        .into_iter()
        .map(|c| {
            LocalModel::new(AppState::new(ServerConfig {
                api_key: None,
                api_keys: Vec::new(),
                ..c
            }))
        })
        .collect();
    let route_metrics = Arc::new(RouteMetrics::default());
    let mut routes = Vec::new();
    for r in &cfg.routes {
        let targets = r
            .targets
            .iter()
            .map(|t| {
                let local = models.iter().find(|m| m.names.contains(&t.model)).cloned();
                Target::new(t, if t.is_upstream() { None } else { local })
            })
            .collect::<Result<Vec<_>>>()?;
        routes.push(Arc::new(Route::new(
            r.clone(),
            targets,
            route_metrics.clone(),
        )?));
    }
    Ok(Arc::new(Front {
        models,
        routes,
        gate,
        route_metrics,
    }))
}

/// Loads every model on its own blocking thread; one that fails is marked failed (on /health)
/// and the others go on. `args[i]` is Err when model `i`'s engine flags were bad.
pub async fn load_all(front: &Arc<Front>, args: Vec<Result<EngineArgs, String>>) {
    let mut tasks = Vec::new();
    for (m, a) in front.models.iter().zip(args) {
        let m = m.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            let res = a
                .map_err(anyhow::Error::msg)
                .and_then(|a| crate::server::load_into(&m.state, a));
            match res {
                Ok(()) => tracing::info!("model `{}` loaded", m.names[0]),
                Err(e) => m.set_failed(format!("{e:#}")),
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Serves until `shutdown`, then drains for at most `drain_timeout`; true if every in-flight
/// request finished. An engine that dies marks its model failed; the others keep serving.
pub async fn serve(
    listener: TcpListener,
    front: Arc<Front>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> std::io::Result<bool> {
    let upkeep = {
        let front = front.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(METRICS_UPKEEP);
            loop {
                tick.tick().await;
                for m in &front.models {
                    m.state.metrics.upkeep();
                }
                front.gate.metrics.upkeep();
            }
        })
    };
    let watchdog = {
        let front = front.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ENGINE_WATCH).await;
                for m in &front.models {
                    if m.failure().is_none() && m.state.engine().is_some_and(|e| !e.is_alive()) {
                        m.set_failed("its engine thread died (see the panic in the log)".into());
                    }
                }
            }
        })
    };
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = {
        let front = front.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new requests; draining in-flight ones");
            front.begin_shutdown();
            let _ = signalled_tx.send(());
        }
    };
    let limits = crate::server::conn::Limits {
        header_read_timeout: front.gate.config.header_read_timeout,
        write_stall_timeout: front.gate.config.write_stall_timeout,
    };
    let server =
        crate::server::conn::serve_connections(listener, router(front.clone()), limits, signal);
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
    drained
}
