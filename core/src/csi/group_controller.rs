//! The CSI GroupController service: volume group snapshots, crash-consistent
//! snapshots of several volumes of one provider instance (CSI spec,
//! "Group Controller Service RPC").
//!
//! Group snapshot IDs are scoped like volume and snapshot IDs
//! (`v1.<instance>.<provider id>`), so a delete or get routes by the ID
//! alone, and each member snapshot is an ordinary snapshot of the instance
//! (it restores into a volume like any other).

use std::collections::BTreeSet;
use std::sync::Arc;

use omnidisk_provider_api::ErrorKind;
use omnidisk_provider_api::types as p;
use tonic::{Request, Response, Status};

use super::controller::provider_err;
use super::convert::group_snapshot_out;
use super::{log_request, traced, traced_in, validate};
use crate::Driver;
use crate::error::{CoreError, CoreResult};
use crate::generated::csi;
use crate::generated::csi::group_controller_server::GroupController;
use crate::generated::csi::group_controller_service_capability::{
    Rpc, Type as CapType, rpc::Type as RpcType,
};
use crate::ids::ScopedId;
use crate::routing::{Instance, Registry};

/// The GroupController service.
pub struct GroupControllerService {
    driver: Arc<Driver>,
}

/// True when this process serves group snapshots for at least one instance.
pub fn serves_group_snapshots(driver: &Driver) -> bool {
    driver
        .registry
        .iter()
        .any(|i| i.info.group_snapshots && Registry::serves_controller(i, driver.mode))
}

impl GroupControllerService {
    /// The service over a driver.
    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver }
    }

    /// The instance that may take group snapshots of `id`'s instance here.
    fn group_instance(&self, id: &ScopedId) -> CoreResult<&Instance> {
        let instance = self.driver.registry.for_id(id)?;
        if !Registry::serves_controller(instance, self.driver.mode) {
            return Err(CoreError::InvalidArgument(format!(
                "provider instance {} is not served by this {} plugin",
                instance.name,
                self.driver.mode.as_str()
            )));
        }
        if !instance.info.group_snapshots {
            return Err(CoreError::InvalidArgument(format!(
                "provider instance {} ({}) cannot take group snapshots",
                instance.name, instance.info.kind
            )));
        }
        Ok(instance)
    }

    /// Parses member snapshot IDs named by the CO: each must be an ID of
    /// `instance`.
    fn member_ids(
        &self,
        field: &str,
        raw: &[String],
        instance: &Instance,
    ) -> CoreResult<Vec<String>> {
        raw.iter()
            .enumerate()
            .map(|(i, id)| {
                let field = format!("{field}[{i}]");
                validate::required(&field, id)?;
                let parsed = ScopedId::parse(id).map_err(|e| {
                    CoreError::InvalidArgument(format!(
                        "{field} is not a snapshot ID of this driver: {e}"
                    ))
                })?;
                if parsed.instance() != instance.name {
                    return Err(CoreError::InvalidArgument(format!(
                        "{field} {id} belongs to provider instance {}, not to the group's instance {}",
                        parsed.instance(),
                        instance.name
                    )));
                }
                Ok(parsed.local().to_owned())
            })
            .collect()
    }

    async fn create_inner(
        &self,
        req: csi::CreateVolumeGroupSnapshotRequest,
    ) -> CoreResult<csi::CreateVolumeGroupSnapshotResponse> {
        validate::name("name", &req.name)?;
        if req.source_volume_ids.is_empty() {
            return Err(CoreError::missing("source_volume_ids"));
        }
        for (i, id) in req.source_volume_ids.iter().enumerate() {
            validate::required(&format!("source_volume_ids[{i}]"), id)?;
        }
        let mut ids = Vec::with_capacity(req.source_volume_ids.len());
        let mut seen = BTreeSet::new();
        for (i, raw) in req.source_volume_ids.iter().enumerate() {
            if !seen.insert(raw.as_str()) {
                return Err(CoreError::InvalidArgument(format!(
                    "source_volume_ids[{i}] {raw} is listed twice"
                )));
            }
            ids.push(validate::existing_id(
                "volume",
                &format!("source_volume_ids[{i}]"),
                raw,
            )?);
        }
        let instances: BTreeSet<&str> = ids.iter().map(ScopedId::instance).collect();
        if instances.len() > 1 {
            let listed: Vec<String> = ids
                .iter()
                .map(|id| format!("{id} ({})", id.instance()))
                .collect();
            return Err(CoreError::InvalidArgument(format!(
                "a group snapshot spans one provider instance; source_volume_ids name several: {}",
                listed.join(", ")
            )));
        }
        let instance = self.group_instance(&ids[0])?;
        let _guard = self
            .driver
            .inflight
            .try_acquire(&format!("create-group-snapshot/{}", req.name))
            .ok_or_else(|| CoreError::Busy(format!("group snapshot {}", req.name)))?;
        let group = instance
            .provider
            .create_group_snapshot(p::CreateGroupSnapshotRequest {
                name: req.name.clone(),
                source_volume_ids: ids.iter().map(|id| id.local().to_owned()).collect(),
                parameters: req.parameters.clone(),
            })
            .await
            .map_err(provider_err(instance, "create group snapshot"))?;
        let covered: BTreeSet<&str> = group
            .snapshots
            .iter()
            .map(|s| s.source_volume_id.as_str())
            .collect();
        if ids.iter().any(|id| !covered.contains(id.local())) {
            return Err(CoreError::Internal(format!(
                "provider instance {} returned group snapshot {} without a member for every source volume",
                instance.name, group.id
            )));
        }
        Ok(csi::CreateVolumeGroupSnapshotResponse {
            group_snapshot: Some(group_snapshot_out(&instance.name, &group)?),
        })
    }

    async fn delete_inner(
        &self,
        req: csi::DeleteVolumeGroupSnapshotRequest,
    ) -> CoreResult<csi::DeleteVolumeGroupSnapshotResponse> {
        validate::required("group_snapshot_id", &req.group_snapshot_id)?;
        let Ok(id) = ScopedId::parse(&req.group_snapshot_id) else {
            tracing::info!(id = %validate::shown(&req.group_snapshot_id), "not an omnidisk ID: nothing to delete");
            return Ok(csi::DeleteVolumeGroupSnapshotResponse {});
        };
        // An ID of an instance not configured here is refused rather than
        // reported as deleted (that would lose track of a real object).
        self.driver.registry.for_id(&id).map_err(|e| {
            CoreError::FailedPrecondition(format!(
                "cannot delete group snapshot {}: {e}",
                req.group_snapshot_id
            ))
        })?;
        let instance = self.group_instance(&id)?;
        let members = self.member_ids("snapshot_ids", &req.snapshot_ids, instance)?;
        let _guard = self
            .driver
            .inflight
            .try_acquire(&req.group_snapshot_id)
            .ok_or_else(|| CoreError::Busy(req.group_snapshot_id.clone()))?;
        match instance
            .provider
            .delete_group_snapshot(p::GroupSnapshotRef {
                group_snapshot_id: id.local().to_owned(),
                snapshot_ids: members,
            })
            .await
        {
            Ok(()) => Ok(csi::DeleteVolumeGroupSnapshotResponse {}),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Ok(csi::DeleteVolumeGroupSnapshotResponse {})
            }
            Err(e) => Err(provider_err(instance, "delete group snapshot")(e)),
        }
    }

    async fn get_inner(
        &self,
        req: csi::GetVolumeGroupSnapshotRequest,
    ) -> CoreResult<csi::GetVolumeGroupSnapshotResponse> {
        let id = validate::existing_id(
            "group snapshot",
            "group_snapshot_id",
            &req.group_snapshot_id,
        )?;
        let instance = self.group_instance(&id)?;
        let members = self.member_ids("snapshot_ids", &req.snapshot_ids, instance)?;
        let group = instance
            .provider
            .get_group_snapshot(p::GroupSnapshotRef {
                group_snapshot_id: id.local().to_owned(),
                snapshot_ids: members,
            })
            .await
            .map_err(provider_err(instance, "get group snapshot"))?;
        Ok(csi::GetVolumeGroupSnapshotResponse {
            group_snapshot: Some(group_snapshot_out(&instance.name, &group)?),
        })
    }
}

#[tonic::async_trait]
impl GroupController for GroupControllerService {
    async fn group_controller_get_capabilities(
        &self,
        _request: Request<csi::GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::GroupControllerGetCapabilitiesResponse>, Status> {
        let capabilities = if serves_group_snapshots(&self.driver) {
            vec![csi::GroupControllerServiceCapability {
                r#type: Some(CapType::Rpc(Rpc {
                    r#type: RpcType::CreateDeleteGetVolumeGroupSnapshot as i32,
                })),
            }]
        } else {
            Vec::new()
        };
        Ok(Response::new(csi::GroupControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn create_volume_group_snapshot(
        &self,
        request: Request<csi::CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::CreateVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        log_request(&req);
        let name = req.name.clone();
        let instance = req
            .source_volume_ids
            .first()
            .and_then(|id| ScopedId::parse(id).ok())
            .map(|id| id.instance().to_owned())
            .unwrap_or_default();
        traced_in(
            "CreateVolumeGroupSnapshot",
            &name,
            &instance,
            self.create_inner(req),
        )
        .await
    }

    async fn delete_volume_group_snapshot(
        &self,
        request: Request<csi::DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::DeleteVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        log_request(&req);
        let id = req.group_snapshot_id.clone();
        traced("DeleteVolumeGroupSnapshot", &id, self.delete_inner(req)).await
    }

    async fn get_volume_group_snapshot(
        &self,
        request: Request<csi::GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::GetVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        log_request(&req);
        let id = req.group_snapshot_id.clone();
        traced("GetVolumeGroupSnapshot", &id, self.get_inner(req)).await
    }
}
