//! The provider trait, in storage terms.
//!
//! Every method takes one plain message and returns one plain message so the
//! same trait can be served across the dylib ABI (method number, encoded
//! request, encoded response). IDs a provider sees and returns are its own:
//! the core wraps them with the instance name to make CSI IDs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{ProviderError, Result};
use crate::types::*;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

fn unsupported(what: &str) -> ProviderError {
    ProviderError::unimplemented(format!("this provider does not support {what}"))
}

/// A storage backend instance. Implementations must be cheap to share
/// (`Arc<dyn Provider>`) and safe to call concurrently; the core guarantees
/// only that two calls never work on the same volume at once.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// What this provider can do. Called once at start and cached.
    fn info(&self) -> ProviderInfo;

    /// Creates a volume named `req.name`, or returns the existing one if a
    /// volume of that name exists with compatible properties
    /// (`AlreadyExists` otherwise).
    async fn create_volume(&self, req: CreateVolumeRequest) -> Result<Volume>;

    /// Deletes a volume. A volume that does not exist is success.
    async fn delete_volume(&self, req: VolumeRef) -> Result<()>;

    /// Describes one volume (`NotFound` when absent).
    async fn get_volume(&self, req: VolumeRef) -> Result<VolumeStatus>;

    /// Lists volumes, paged by an opaque token of the provider's choosing.
    async fn list_volumes(&self, _req: ListRequest) -> Result<ListVolumesResponse> {
        Err(unsupported("listing volumes"))
    }

    /// Grows a volume to at least `required_bytes`.
    async fn expand_volume(&self, _req: ExpandVolumeRequest) -> Result<ExpandVolumeResponse> {
        Err(unsupported("expansion"))
    }

    /// Changes mutable parameters (VolumeAttributesClass).
    async fn modify_volume(&self, _req: ModifyVolumeRequest) -> Result<()> {
        Err(unsupported("modifying volumes"))
    }

    /// Attaches a volume to a node; attaching to the same node twice returns
    /// the same publish context.
    async fn attach_volume(&self, _req: AttachRequest) -> Result<AttachResponse> {
        Err(unsupported("attaching volumes"))
    }

    /// Detaches a volume from a node; an already detached volume is success.
    async fn detach_volume(&self, _req: DetachRequest) -> Result<()> {
        Err(unsupported("detaching volumes"))
    }

    /// Creates a snapshot named `req.name` (idempotent like `create_volume`).
    async fn create_snapshot(&self, _req: CreateSnapshotRequest) -> Result<Snapshot> {
        Err(unsupported("snapshots"))
    }

    /// Deletes a snapshot. A snapshot that does not exist is success.
    async fn delete_snapshot(&self, _req: SnapshotRef) -> Result<()> {
        Err(unsupported("snapshots"))
    }

    /// Describes one snapshot (`NotFound` when absent).
    async fn get_snapshot(&self, _req: SnapshotRef) -> Result<Snapshot> {
        Err(unsupported("snapshots"))
    }

    /// Lists snapshots, optionally filtered.
    async fn list_snapshots(&self, _req: ListSnapshotsRequest) -> Result<ListSnapshotsResponse> {
        Err(unsupported("snapshots"))
    }

    /// Snapshots several volumes of this instance at one point in time
    /// (crash-consistent), idempotent by `req.name`: the same name with
    /// other source volumes is `AlreadyExists`. Only called when
    /// `ProviderInfo::group_snapshots` is set.
    async fn create_group_snapshot(
        &self,
        _req: CreateGroupSnapshotRequest,
    ) -> Result<GroupSnapshot> {
        Err(unsupported("group snapshots"))
    }

    /// Deletes a group snapshot and the member snapshots named in
    /// `req.snapshot_ids`. A group that does not exist is success.
    async fn delete_group_snapshot(&self, _req: GroupSnapshotRef) -> Result<()> {
        Err(unsupported("group snapshots"))
    }

    /// Describes one group snapshot (`NotFound` when absent).
    async fn get_group_snapshot(&self, _req: GroupSnapshotRef) -> Result<GroupSnapshot> {
        Err(unsupported("group snapshots"))
    }

    /// Free capacity for new volumes with the given parameters and topology.
    async fn get_capacity(&self, _req: CapacityRequest) -> Result<CapacityResponse> {
        Err(unsupported("capacity reporting"))
    }

    /// How this provider identifies the node the driver runs on.
    async fn node_info(&self) -> Result<NodeInfo>;

    /// Finds the block device of an attached volume on this node, waiting a
    /// bounded time for it to appear, and verifies that it is that volume.
    async fn find_device(&self, req: FindDeviceRequest) -> Result<FindDeviceResponse>;

    /// Health of a volume as seen from this node.
    async fn volume_condition(&self, _req: VolumeRef) -> Result<VolumeCondition> {
        Ok(VolumeCondition::default())
    }
}

/// How a provider kind is instantiated. Each provider crate exposes one, and
/// the core keeps a table of the compiled-in ones; the dylib export macro
/// uses the same factory.
#[derive(Clone, Copy)]
pub struct ProviderFactory {
    /// The kind name used in the configuration (`kind = "local-lvm"`).
    pub kind: &'static str,
    /// Creates an instance from its settings.
    pub create: CreateInstance,
}

/// The signature of [`ProviderFactory::create`].
pub type CreateInstance = fn(InitRequest) -> BoxFuture<'static, Result<Arc<dyn Provider>>>;

impl std::fmt::Debug for ProviderFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderFactory")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}
