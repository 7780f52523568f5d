//! The `meridian` binary's library: configuration, storage, the node runtime
//! and the serve loop. `main.rs` only parses the command line and calls in.

pub mod backup;
pub mod certs;
pub mod cli;
pub mod config;
pub mod demo;
pub mod http_client;
pub mod runtime;
pub mod storage;

use std::future::Future;
use std::sync::Arc;

use meridian_web::router;
use tokio::net::TcpListener;

pub use config::{Config, ConfigError, LogFormat, ServeArgs, DEFAULT_LOG_FILTER};
pub use runtime::{NodeHandle, NodeRuntime};
pub use storage::StorageError;

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Storage could not be opened or recovered.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
    /// Replication could not start.
    #[error(transparent)]
    Replication(#[from] runtime::ReplicationError),
}

/// Serves the API on `listener` until `shutdown` resolves. Health answers at
/// once; readiness and the API wait for recovery, which runs in the
/// background. On shutdown, in-flight requests finish, then storage commits
/// what it holds and writes a final checkpoint.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let handle = Arc::new(NodeHandle::default());
    let app = router(handle.clone(), config.web_config());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopping = handle.clone();
    let limits = config.limits.clone();
    let server = tokio::spawn(async move {
        // Not axum::serve: limits::serve bounds connections and how long a client may take to send headers.
        meridian_web::limits::serve(listener, app, &limits, async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stop_rx => {}
            }
            stopping.set_stopping();
        })
        .await
    });
    let recovery_config = config.clone();
    let recovered = tokio::task::spawn_blocking(move || NodeRuntime::open(&recovery_config))
        .await
        .map_err(|err| std::io::Error::other(format!("recovery task failed: {err}")))?;
    let runtime = match recovered {
        Ok(runtime) => Arc::new(runtime),
        Err(err) => {
            let _ = stop_tx.send(());
            let _ = server.await;
            return Err(err.into());
        }
    };
    if let Err(err) = runtime.start_replication() {
        let _ = stop_tx.send(());
        let _ = server.await;
        let stopping = runtime.clone();
        tokio::task::spawn_blocking(move || stopping.shutdown()).await.ok();
        return Err(err.into());
    }
    handle.set(runtime.clone());
    tracing::info!(node_id = %runtime.node_id(), region = %config.region, "ready");
    let result = server.await.map_err(|err| std::io::Error::other(format!("server task failed: {err}")))?;
    runtime.stop_replication().await;
    tokio::task::spawn_blocking(move || runtime.shutdown()).await.ok();
    result?;
    Ok(())
}
