//! The CSI services, one module each, plus conversions and validation.

pub mod controller;
pub mod convert;
pub mod group_controller;
pub mod identity;
pub mod node;
pub mod validate;

use std::future::Future;
use std::time::Instant;

use tonic::{Code, Response, Status};
use tracing::Instrument;

use crate::error::CoreError;

/// Runs one RPC handler inside a span carrying the method and the volume
/// (or snapshot) ID, logs the outcome with its gRPC code and duration,
/// records it in the metrics, and converts the error into a status: the only
/// way handlers produce one. The instance label comes from the ID.
pub async fn traced<T, F>(
    method: &'static str,
    object_id: &str,
    handler: F,
) -> Result<Response<T>, Status>
where
    F: Future<Output = Result<T, CoreError>>,
{
    let instance = crate::ids::ScopedId::parse(object_id)
        .map(|id| id.instance().to_owned())
        .unwrap_or_default();
    traced_in(method, object_id, &instance, handler).await
}

/// [`traced`] with an explicit instance label (calls routed by `type`).
pub async fn traced_in<T, F>(
    method: &'static str,
    object_id: &str,
    instance: &str,
    handler: F,
) -> Result<Response<T>, Status>
where
    F: Future<Output = Result<T, CoreError>>,
{
    let span = tracing::info_span!("rpc", method, id = %crate::csi::validate::shown(object_id));
    async move {
        let start = Instant::now();
        let result = handler.await;
        let elapsed = start.elapsed();
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        match result {
            Ok(response) => {
                crate::metrics::global().record_operation(method, instance, Code::Ok, elapsed);
                tracing::info!(outcome = "OK", elapsed_ms, "done");
                Ok(Response::new(response))
            }
            Err(err) => {
                let status = Status::from(err);
                crate::metrics::global().record_operation(method, instance, status.code(), elapsed);
                tracing::warn!(outcome = ?status.code(), elapsed_ms, error = %status.message(), "failed");
                Err(status)
            }
        }
    }
    .instrument(span)
    .await
}

/// Requests whose secrets must not be logged. `redacted` returns a copy safe
/// to print at debug level.
pub trait Redact: Clone + std::fmt::Debug {
    /// A copy with secret fields replaced.
    fn redacted(&self) -> Self;
}

macro_rules! redact_secrets {
    ($($ty:ty),* $(,)?) => {
        $(impl Redact for $ty {
            fn redacted(&self) -> Self {
                let mut copy = self.clone();
                for value in copy.secrets.values_mut() {
                    *value = "<redacted>".to_owned();
                }
                copy
            }
        })*
    };
}

use crate::generated::csi;
redact_secrets!(
    csi::CreateVolumeRequest,
    csi::DeleteVolumeRequest,
    csi::ControllerPublishVolumeRequest,
    csi::ControllerUnpublishVolumeRequest,
    csi::ValidateVolumeCapabilitiesRequest,
    csi::CreateSnapshotRequest,
    csi::DeleteSnapshotRequest,
    csi::ListSnapshotsRequest,
    csi::GetSnapshotRequest,
    csi::ControllerExpandVolumeRequest,
    csi::ControllerModifyVolumeRequest,
    csi::CreateVolumeGroupSnapshotRequest,
    csi::DeleteVolumeGroupSnapshotRequest,
    csi::GetVolumeGroupSnapshotRequest,
    csi::NodeStageVolumeRequest,
    csi::NodePublishVolumeRequest,
    csi::NodeExpandVolumeRequest,
);

/// Logs a request at debug level with its secrets redacted.
pub fn log_request<R: Redact>(request: &R) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        tracing::debug!(request = ?request.redacted(), "request");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let mut req = csi::CreateVolumeRequest {
            name: "pvc-1".into(),
            ..Default::default()
        };
        req.secrets.insert("password".into(), "hunter2".into());
        let shown = format!("{:?}", req.redacted());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("pvc-1"));
        assert!(shown.contains("<redacted>"));
    }
}
