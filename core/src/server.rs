//! Serving: the CSI services on a unix socket, and the HTTP health endpoint.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;

use crate::Driver;
use crate::csi::controller::ControllerService;
use crate::csi::group_controller::GroupControllerService;
use crate::csi::identity::IdentityService;
use crate::csi::node::NodeService;
use crate::generated::csi::controller_server::ControllerServer;
use crate::generated::csi::group_controller_server::GroupControllerServer;
use crate::generated::csi::identity_server::IdentityServer;
use crate::generated::csi::node_server::NodeServer;

/// Permissions of the CSI socket: owner and group (the kubelet and the
/// sidecars run as root or share the group), nobody else.
const SOCKET_MODE: u32 = 0o660;

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Something other than a socket is at the endpoint path.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// A live socket is at the endpoint path: another driver serves on it.
    #[error(
        "{0} is in use: a running process accepts connections on it (another driver?); \
         refusing to take it over"
    )]
    InUse(PathBuf),
    /// Filesystem work around the socket failed.
    #[error("preparing socket {path}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The health endpoint could not bind.
    #[error("binding the health endpoint on {addr}")]
    Health {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server")]
    Transport(#[source] tonic::transport::Error),
}

/// Binds the unix socket. It appears at `path` only with its final mode
/// ([`SOCKET_MODE`]): it is bound inside a fresh 0700 directory next to
/// `path` (so nobody else can connect whatever the umask), restricted there
/// and then renamed into place, replacing a stale socket atomically. A socket
/// that still accepts connections belongs to a running driver and is left
/// alone ([`ServeError::InUse`]); anything else at `path` is never replaced.
pub fn bind_socket(path: &Path) -> Result<UnixListener, ServeError> {
    let wrap = |source| ServeError::Socket {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(ServeError::InUse(path.to_owned())),
                // Nobody listens: stale, replaced by the rename below.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                    ) => {}
                Err(e) => return Err(wrap(e)),
            }
        }
        Ok(_) => return Err(ServeError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(wrap(e)),
    }
    let Some(name) = path.file_name() else {
        return Err(wrap(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the socket path has no file name",
        )));
    };
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(wrap)?;
    let private = dir.join(format!(
        ".{}.binding-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // The umask can only take bits away from 0700.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(wrap)?;
    let staged = private.join("socket");
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(SOCKET_MODE))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&staged);
    let cleaned = std::fs::remove_dir(&private);
    let listener = bound.map_err(wrap)?;
    cleaned.map_err(wrap)?;
    Ok(listener)
}

mod authority;

/// Serves Identity, Controller, GroupController and (in node/all mode)
/// Node on `listener` until `shutdown` completes.
///
/// Every connection goes through [`authority::AuthorityFix`], so clients
/// that send the socket path (or nothing) as the HTTP/2 `:authority` are
/// served like those that send `localhost`.
pub async fn serve(
    driver: Arc<Driver>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let node = driver
        .mode
        .serves_node()
        .then(|| NodeServer::new(NodeService::new(driver.clone())));
    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(driver.clone())))
        .add_service(ControllerServer::new(ControllerService::new(
            driver.clone(),
        )))
        .add_service(GroupControllerServer::new(GroupControllerService::new(
            driver.clone(),
        )))
        .add_optional_service(node)
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener)
                .map(|accepted| accepted.map(authority::AuthorityFix::new)),
            shutdown,
        )
        .await
        .map_err(ServeError::Transport)
}

/// Serves `GET /healthz` and `GET /readyz` (200 once the driver is ready,
/// as Probe reports, 503 before) and `GET /metrics` (Prometheus text) on
/// `addr`.
pub async fn serve_http(
    driver: Arc<Driver>,
    addr: SocketAddr,
) -> Result<impl Future<Output = std::io::Result<()>>, ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Health { addr, source })?;
    Ok(async move { axum::serve(listener, http_router(driver)).await })
}

/// The HTTP routes (health and metrics).
pub fn http_router(driver: Arc<Driver>) -> axum::Router {
    use axum::http::{StatusCode, header};
    let health = {
        let driver = driver.clone();
        move || {
            let driver = driver.clone();
            async move {
                if driver.is_ready() {
                    (StatusCode::OK, "ok\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
        }
    };
    let metrics = move || {
        let driver = driver.clone();
        async move {
            refresh_gauges(&driver).await;
            (
                [(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                crate::metrics::global().encode(),
            )
        }
    };
    axum::Router::new()
        .route("/healthz", axum::routing::get(health.clone()))
        .route("/readyz", axum::routing::get(health))
        .route("/metrics", axum::routing::get(metrics))
}

/// How long `/metrics` serves capacity it sampled before asking the
/// providers again. Capacity calls fork lvm commands or call cloud APIs; a
/// scraper (or anyone who reaches the port) must not drive them.
pub const CAPACITY_SAMPLE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// `/metrics`' capacity sampling state: the time of the last sample and the
/// lock a refresh holds, so at most one runs at a time.
#[derive(Debug, Default)]
pub struct CapacitySample {
    refresh: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Reads the gauges that are sampled rather than counted. Capacity is asked
/// of the providers at most once per [`CAPACITY_SAMPLE_TTL`], by one scrape
/// at a time; a scrape that finds a refresh running, or a fresh sample,
/// serves the gauges as they are without waiting.
async fn refresh_gauges(driver: &Driver) {
    let m = crate::metrics::global();
    m.inflight.set(driver.inflight.len() as i64);
    let Ok(mut last) = driver.capacity_sample.refresh.try_lock() else {
        return;
    };
    if last.is_some_and(|at| at.elapsed() < CAPACITY_SAMPLE_TTL) {
        return;
    }
    sample_capacity(driver).await;
    *last = Some(tokio::time::Instant::now());
}

async fn sample_capacity(driver: &Driver) {
    use omnidisk_provider_api::types::CapacityRequest;
    let m = crate::metrics::global();
    for instance in driver.registry.iter() {
        let local_here = instance.info.node_local && driver.mode.serves_node();
        if !instance.info.capacity || (instance.info.node_local && !local_here) {
            continue;
        }
        let call = instance.provider.get_capacity(CapacityRequest::default());
        match tokio::time::timeout(std::time::Duration::from_secs(5), call).await {
            Ok(Ok(cap)) => {
                let labels = crate::metrics::InstanceLabels {
                    instance: instance.name.clone(),
                };
                m.capacity_available
                    .get_or_create(&labels)
                    .set(cap.available_bytes);
                if cap.total_bytes > 0 {
                    m.capacity_total.get_or_create(&labels).set(cap.total_bytes);
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(instance = %instance.name, error = %e.full_message(), "capacity for metrics")
            }
            Err(_) => tracing::debug!(instance = %instance.name, "capacity for metrics timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names in `dir` other than `keep`: leftovers of binding.
    fn leftovers(dir: &Path, keep: &str) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != keep)
            .collect()
    }

    #[tokio::test]
    async fn stale_sockets_are_replaced_and_other_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/csi.sock");
        let first = bind_socket(&path).unwrap();
        drop(first);
        // The socket file is left behind, as after a crash.
        assert!(path.exists());
        let _second = bind_socket(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        assert!(leftovers(&dir.path().join("sub"), "csi.sock").is_empty());

        let file = dir.path().join("precious");
        std::fs::write(&file, b"data").unwrap();
        assert!(matches!(bind_socket(&file), Err(ServeError::NotASocket(_))));
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
    }

    #[tokio::test]
    async fn a_live_socket_of_another_driver_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        let first = bind_socket(&path).unwrap();
        let err = bind_socket(&path).unwrap_err();
        assert!(matches!(err, ServeError::InUse(_)), "{err:?}");
        assert!(err.to_string().contains("in use"), "{err}");
        // The first listener still owns the path and answers.
        let client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (_accepted, _) =
            tokio::time::timeout(std::time::Duration::from_secs(5), first.accept())
                .await
                .unwrap()
                .unwrap();
        drop(client);
        assert!(leftovers(dir.path(), "csi.sock").is_empty());
    }

    #[tokio::test]
    async fn the_socket_never_appears_with_more_than_its_final_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (path, stop) = (path.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let (mut seen, mut widest) = (0u32, 0u32);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(meta) = std::fs::symlink_metadata(&path) {
                        seen += 1;
                        widest |= meta.permissions().mode() & 0o777;
                    }
                }
                (seen, widest)
            })
        };
        for _ in 0..200 {
            // Dropped at once: the next round replaces a stale socket.
            drop(bind_socket(&path).unwrap());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (seen, widest) = watcher.join().unwrap();
        assert!(seen > 0, "the watcher never saw the socket");
        assert_eq!(widest & !SOCKET_MODE, 0, "seen with mode {widest:o}");
        assert!(leftovers(dir.path(), "csi.sock").is_empty());
    }
}
