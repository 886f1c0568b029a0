//! Operations endpoints of cluster processes: Prometheus `/metrics`,
//! `/healthz` (the process is up) and `/readyz` (it can take work: the
//! leading coordinator, a registered worker).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use sluice_common::{Error, Result};

/// Install the process-wide metrics recorder (once).
pub fn install_recorder() -> Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| Error::Internal(format!("metrics recorder: {e}")))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// `/metrics`, `/healthz` and `/readyz` (`ready` says whether this
/// process can take work).
pub fn ops_routes(ready: Arc<dyn Fn() -> bool + Send + Sync>) -> Result<axum::Router> {
    let handle = install_recorder()?;
    Ok(axum::Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/healthz", get(|| std::future::ready("ok")))
        .route(
            "/readyz",
            get(move || {
                let ok = ready();
                std::future::ready(if ok { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") })
            }),
        ))
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `addr` in the background.
pub async fn serve(addr: SocketAddr, ready: Arc<dyn Fn() -> bool + Send + Sync>) -> Result<()> {
    serve_router(addr, ops_routes(ready)?).await
}

/// Serve `app` on `addr` in the background.
pub async fn serve_router(addr: SocketAddr, app: axum::Router) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::InvalidInput(format!("cannot listen on {addr} for HTTP: {e}")))?;
    tracing::info!(%addr, "HTTP endpoints listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(())
}
