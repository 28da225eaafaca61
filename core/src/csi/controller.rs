//! The CSI Controller service: provisioning, attachment, snapshots,
//! expansion, listing and capacity, each routed to a provider instance.

use std::collections::BTreeMap;
use std::sync::Arc;

use omnidisk_provider_api::ErrorKind;
use omnidisk_provider_api::types as p;
use tonic::{Request, Response, Status};

use super::convert::{self, capability_in, snapshot_out, topology_in, volume_out};
use super::{log_request, traced, traced_in, validate};
use crate::error::{CoreError, CoreResult};
use crate::generated::csi;
use crate::generated::csi::controller_server::Controller;
use crate::generated::csi::controller_service_capability::{
    Rpc, Type as CapType, rpc::Type as RpcType,
};
use crate::ids::{NodeId, ScopedId};
use crate::mount::format;
use crate::routing::{Instance, Registry};
use crate::{Driver, Mode};

/// StorageClass parameter naming the provider instance.
pub const TYPE_PARAM: &str = "type";
/// StorageClass parameter (and volume context key) with the filesystem type.
pub const FS_TYPE_PARAM: &str = "fsType";

/// The Controller service.
pub struct ControllerService {
    driver: Arc<Driver>,
}

/// The StorageClass parameters split between the core and the provider.
struct SplitParams {
    instance: Option<String>,
    /// Filesystem settings, stored in the volume context for the node.
    node_context: BTreeMap<String, String>,
    /// What the provider parses.
    provider: BTreeMap<String, String>,
}

/// Separates what the core consumes (`type`, filesystem settings) from the
/// provider's parameters.
fn split_params(params: &BTreeMap<String, String>) -> CoreResult<SplitParams> {
    let mut provider = params.clone();
    let instance = take_ci(&mut provider, TYPE_PARAM);
    let mut node_context = format::extract_from_params(&mut provider)?;
    if let Some(fs) = take_ci(&mut provider, FS_TYPE_PARAM) {
        let fs = fs.to_ascii_lowercase();
        if !validate::SUPPORTED_FS_TYPES.contains(&fs.as_str()) {
            return Err(CoreError::InvalidArgument(format!(
                "parameter `fsType` {fs:?} is not supported (supported: {})",
                validate::SUPPORTED_FS_TYPES.join(", ")
            )));
        }
        node_context.insert(FS_TYPE_PARAM.to_owned(), fs);
    }
    Ok(SplitParams {
        instance,
        node_context,
        provider,
    })
}

fn take_ci(map: &mut BTreeMap<String, String>, key: &str) -> Option<String> {
    let found = map.keys().find(|k| k.eq_ignore_ascii_case(key)).cloned()?;
    map.remove(&found)
}

/// Wraps a provider's error with the instance and the storage operation.
pub(super) fn provider_err<'a>(
    instance: &'a Instance,
    op: &'static str,
) -> impl FnOnce(omnidisk_provider_api::ProviderError) -> CoreError + 'a {
    move |source| CoreError::Provider {
        instance: instance.name.clone(),
        op,
        source,
    }
}

/// A paging token over several instances: `<instance>/<provider token>`.
fn split_token<'a>(registry: &Registry, token: &'a str) -> CoreResult<Option<(&'a str, &'a str)>> {
    if token.is_empty() {
        return Ok(None);
    }
    let (instance, rest) = token
        .split_once('/')
        .ok_or_else(|| CoreError::Busy(format!("paging (invalid starting_token {token:?})")))?;
    if registry.get(instance).is_err() {
        return Err(CoreError::Busy(format!(
            "paging (invalid starting_token {token:?})"
        )));
    }
    Ok(Some((instance, rest)))
}

/// A provider's paging failure: an `Aborted` (a token it did not issue)
/// keeps its code, anything else is the provider's error.
fn paging_err(
    instance: &Instance,
    op: &'static str,
    e: omnidisk_provider_api::ProviderError,
) -> CoreError {
    match e.kind() {
        ErrorKind::Aborted => CoreError::Busy(format!("paging: {}", e.message())),
        _ => provider_err(instance, op)(e),
    }
}

/// Pages through several instances as one list. The token is
/// `<instance>/<provider token>`: the instance to continue with and where
/// its own paging stands. `fetch(instance, max, token)` returns one page of
/// one instance (`max` 0 = no limit) and that instance's next token.
async fn page_across<'a, T, F, Fut>(
    registry: &Registry,
    instances: &[&'a Instance],
    max_entries: i32,
    starting_token: &str,
    fetch: F,
) -> CoreResult<(Vec<T>, String)>
where
    F: Fn(&'a Instance, i32, String) -> Fut,
    Fut: std::future::Future<Output = CoreResult<(Vec<T>, String)>>,
{
    if max_entries < 0 {
        return Err(CoreError::InvalidArgument(
            "max_entries must not be negative".into(),
        ));
    }
    let start = split_token(registry, starting_token)?;
    let mut entries = Vec::new();
    let mut next_token = String::new();
    let mut started = start.is_none();
    for (pos, instance) in instances.iter().enumerate() {
        let mut token = String::new();
        if let Some((name, t)) = start {
            if !started {
                if instance.name != name {
                    continue;
                }
                started = true;
                token = t.to_owned();
            }
        }
        let remaining = if max_entries == 0 {
            0
        } else {
            max_entries - i32::try_from(entries.len()).unwrap_or(i32::MAX)
        };
        let (page, next) = fetch(instance, remaining, token).await?;
        entries.extend(page);
        if !next.is_empty() {
            next_token = format!("{}/{next}", instance.name);
            break;
        }
        if max_entries > 0 && entries.len() >= max_entries as usize {
            if let Some(following) = instances.get(pos + 1) {
                next_token = format!("{}/", following.name);
            }
            break;
        }
    }
    if !started {
        return Err(CoreError::Busy(format!(
            "paging (invalid starting_token {starting_token:?})"
        )));
    }
    Ok((entries, next_token))
}

impl ControllerService {
    /// The service over a driver.
    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver }
    }

    /// Instances whose controller calls this process serves.
    fn served(&self) -> impl Iterator<Item = &Instance> {
        let mode = self.driver.mode;
        self.driver
            .registry
            .iter()
            .filter(move |i| Registry::serves_controller(i, mode))
    }

    /// The instance that owns `id`, if this process serves its controller calls.
    fn owner(&self, id: &ScopedId) -> CoreResult<&Instance> {
        let instance = self.driver.registry.for_id(id)?;
        self.check_served(instance)?;
        Ok(instance)
    }

    fn check_served(&self, instance: &Instance) -> CoreResult<()> {
        if Registry::serves_controller(instance, self.driver.mode) {
            return Ok(());
        }
        Err(CoreError::InvalidArgument(match self.driver.mode {
            Mode::Controller => format!(
                "provider instance {} is node-local: its volumes are managed by the node plugins (distributed provisioning)",
                instance.name
            ),
            _ => format!(
                "provider instance {} is served by the controller plugin, not by node plugins",
                instance.name
            ),
        }))
    }

    /// The instance a `type` parameter selects, for metrics labels.
    fn type_label(&self, params: &BTreeMap<String, String>) -> String {
        let mut params = params.clone();
        let named = take_ci(&mut params, TYPE_PARAM);
        self.driver
            .registry
            .for_type(named.as_deref())
            .map(|i| i.name.clone())
            .unwrap_or_default()
    }

    /// Deletes a volume or snapshot by CSI ID. An ID this driver never
    /// issues, or an object the provider no longer has, is already deleted;
    /// an ID of an instance not configured here is refused rather than
    /// reported as done (that would lose track of a real object).
    async fn delete_owned<'a, F, Fut>(
        &'a self,
        field: &str,
        raw: &str,
        op: &'static str,
        delete: F,
    ) -> CoreResult<()>
    where
        F: FnOnce(&'a Instance, String) -> Fut,
        Fut: std::future::Future<Output = omnidisk_provider_api::Result<()>>,
    {
        validate::required(field, raw)?;
        let Ok(id) = ScopedId::parse(raw) else {
            tracing::info!(id = %validate::shown(raw), "not an omnidisk ID: nothing to delete");
            return Ok(());
        };
        let instance = self
            .driver
            .registry
            .for_id(&id)
            .map_err(|e| CoreError::FailedPrecondition(format!("cannot delete {raw}: {e}")))?;
        self.check_served(instance)?;
        let _guard = self.guard(raw)?;
        match delete(instance, id.local().to_owned()).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(provider_err(instance, op)(e)),
        }
    }

    fn guard(&self, key: &str) -> CoreResult<crate::locks::InFlightGuard> {
        self.driver
            .inflight
            .try_acquire(key)
            .ok_or_else(|| CoreError::Busy(key.to_owned()))
    }

    async fn create_volume_inner(
        &self,
        req: csi::CreateVolumeRequest,
    ) -> CoreResult<csi::CreateVolumeResponse> {
        validate::name("name", &req.name)?;
        validate::capabilities("volume_capabilities", &req.volume_capabilities)?;
        let (required_bytes, limit_bytes) = validate::capacity_range(req.capacity_range.as_ref())?;
        let split = split_params(&req.parameters)?;
        let instance = self.driver.registry.for_type(split.instance.as_deref())?;
        self.check_served(instance)?;
        for (i, c) in req.volume_capabilities.iter().enumerate() {
            if let Some(why) = validate::unsupported_by(&instance.info, c) {
                return Err(CoreError::InvalidArgument(format!(
                    "volume_capabilities[{i}]: {why}"
                )));
            }
        }
        let source = match req
            .volume_content_source
            .as_ref()
            .and_then(|s| s.r#type.as_ref())
        {
            None => None,
            Some(csi::volume_content_source::Type::Snapshot(s)) => {
                let id = validate::existing_id(
                    "snapshot",
                    "volume_content_source.snapshot.snapshot_id",
                    &s.snapshot_id,
                )?;
                if !instance.info.snapshots {
                    return Err(CoreError::Unimplemented(format!(
                        "provider instance {} cannot restore snapshots",
                        instance.name
                    )));
                }
                same_instance(instance, &id, "snapshot")?;
                Some(p::create_volume_request::Source::SourceSnapshotId(
                    id.local().to_owned(),
                ))
            }
            Some(csi::volume_content_source::Type::Volume(v)) => {
                let id = validate::existing_id(
                    "volume",
                    "volume_content_source.volume.volume_id",
                    &v.volume_id,
                )?;
                if !instance.info.clone {
                    return Err(CoreError::Unimplemented(format!(
                        "provider instance {} cannot clone volumes",
                        instance.name
                    )));
                }
                same_instance(instance, &id, "volume")?;
                Some(p::create_volume_request::Source::SourceVolumeId(
                    id.local().to_owned(),
                ))
            }
        };
        let required_bytes = fit_filesystem(
            required_bytes,
            limit_bytes,
            &req.volume_capabilities,
            &split.node_context,
        )?;
        let requirements = req.accessibility_requirements.as_ref();
        let _guard = self.guard(&format!("create-volume/{}", req.name))?;
        let created = instance
            .provider
            .create_volume(p::CreateVolumeRequest {
                name: req.name.clone(),
                required_bytes,
                limit_bytes,
                parameters: split.provider,
                source,
                requisite: requirements
                    .map_or_else(Vec::new, |r| r.requisite.iter().map(topology_in).collect()),
                preferred: requirements
                    .map_or_else(Vec::new, |r| r.preferred.iter().map(topology_in).collect()),
                capabilities: req.volume_capabilities.iter().map(capability_in).collect(),
                mutable_parameters: req.mutable_parameters.clone(),
            })
            .await
            .map_err(provider_err(instance, "create volume"))?;
        if required_bytes > 0 && created.capacity_bytes < required_bytes {
            return Err(CoreError::Internal(format!(
                "provider instance {} created {} bytes for a request of {required_bytes}",
                instance.name, created.capacity_bytes
            )));
        }
        let volume = match volume_out(&instance.name, &created, &split.node_context) {
            Ok(v) => v,
            Err(err) => {
                // The provider made something the driver cannot name: do not
                // leave it behind.
                let cleanup = instance
                    .provider
                    .delete_volume(p::VolumeRef {
                        volume_id: created.id.clone(),
                    })
                    .await;
                if let Err(e) = cleanup {
                    tracing::error!(volume = %created.id, error = %e.full_message(), "cleanup after unusable ID failed");
                }
                return Err(err);
            }
        };
        Ok(csi::CreateVolumeResponse {
            volume: Some(volume),
        })
    }

    async fn delete_volume_inner(
        &self,
        req: csi::DeleteVolumeRequest,
    ) -> CoreResult<csi::DeleteVolumeResponse> {
        self.delete_owned(
            "volume_id",
            &req.volume_id,
            "delete volume",
            |instance, local| {
                instance
                    .provider
                    .delete_volume(p::VolumeRef { volume_id: local })
            },
        )
        .await?;
        Ok(csi::DeleteVolumeResponse {})
    }

    async fn publish_inner(
        &self,
        req: csi::ControllerPublishVolumeRequest,
    ) -> CoreResult<csi::ControllerPublishVolumeResponse> {
        validate::required("volume_id", &req.volume_id)?;
        validate::required("node_id", &req.node_id)?;
        let capability = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| CoreError::missing("volume_capability"))?;
        validate::capability("volume_capability", capability)?;
        let id = validate::existing_id("volume", "volume_id", &req.volume_id)?;
        let instance = self.driver.registry.for_id(&id)?;
        if !instance.info.attach_required {
            // Local volumes need no attachment; the attacher still calls
            // because attachment is a per-driver setting.
            return Ok(csi::ControllerPublishVolumeResponse::default());
        }
        self.check_served(instance)?;
        if let Some(why) = validate::unsupported_by(&instance.info, capability) {
            return Err(CoreError::InvalidArgument(format!(
                "volume_capability: {why}"
            )));
        }
        let node = node_for(&req.node_id, instance)?;
        let _guard = self.guard(&req.volume_id)?;
        let resp = instance
            .provider
            .attach_volume(p::AttachRequest {
                volume_id: id.local().to_owned(),
                node_id: node,
                readonly: req.readonly,
                capability: Some(capability_in(capability)),
                volume_context: req.volume_context.clone(),
                csi_node_id: req.node_id.clone(),
            })
            .await
            .map_err(provider_err(instance, "attach volume"))?;
        Ok(csi::ControllerPublishVolumeResponse {
            publish_context: resp.publish_context,
        })
    }

    async fn unpublish_inner(
        &self,
        req: csi::ControllerUnpublishVolumeRequest,
    ) -> CoreResult<csi::ControllerUnpublishVolumeResponse> {
        let id = validate::existing_id("volume", "volume_id", &req.volume_id)?;
        let instance = self.driver.registry.for_id(&id)?;
        if !instance.info.attach_required {
            return Ok(csi::ControllerUnpublishVolumeResponse {});
        }
        self.check_served(instance)?;
        let node = if req.node_id.is_empty() {
            String::new()
        } else {
            node_for(&req.node_id, instance)?
        };
        let _guard = self.guard(&req.volume_id)?;
        instance
            .provider
            .detach_volume(p::DetachRequest {
                volume_id: id.local().to_owned(),
                node_id: node,
            })
            .await
            .map_err(provider_err(instance, "detach volume"))?;
        Ok(csi::ControllerUnpublishVolumeResponse {})
    }

    async fn validate_inner(
        &self,
        req: csi::ValidateVolumeCapabilitiesRequest,
    ) -> CoreResult<csi::ValidateVolumeCapabilitiesResponse> {
        validate::required("volume_id", &req.volume_id)?;
        validate::capabilities("volume_capabilities", &req.volume_capabilities)?;
        let id = validate::existing_id("volume", "volume_id", &req.volume_id)?;
        let instance = self.owner(&id)?;
        let status = instance
            .provider
            .get_volume(p::VolumeRef {
                volume_id: id.local().to_owned(),
            })
            .await
            .map_err(provider_err(instance, "get volume"))?;
        let multi_attach = status.volume.as_ref().is_some_and(|v| v.multi_attach);
        if let Some(why) = req.volume_capabilities.iter().find_map(|c| {
            validate::unsupported_by(&instance.info, c).or_else(|| {
                omnidisk_provider_api::access::multi_node_refusal(&capability_in(c), multi_attach)
            })
        }) {
            return Ok(csi::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: why,
            });
        }
        Ok(csi::ValidateVolumeCapabilitiesResponse {
            confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
                mutable_parameters: req.mutable_parameters,
            }),
            message: String::new(),
        })
    }

    async fn list_volumes_inner(
        &self,
        req: csi::ListVolumesRequest,
    ) -> CoreResult<csi::ListVolumesResponse> {
        let instances: Vec<&Instance> = self.served().filter(|i| i.info.list_volumes).collect();
        let (entries, next_token) = page_across(
            &self.driver.registry,
            &instances,
            req.max_entries,
            &req.starting_token,
            |instance, max_entries, starting_token| async move {
                let page = instance
                    .provider
                    .list_volumes(p::ListRequest {
                        max_entries,
                        starting_token,
                    })
                    .await
                    .map_err(|e| paging_err(instance, "list volumes", e))?;
                let mut entries = Vec::new();
                for status in page.entries {
                    let Some(volume) = status.volume else {
                        continue;
                    };
                    entries.push(csi::list_volumes_response::Entry {
                        volume: Some(volume_out(&instance.name, &volume, &BTreeMap::new())?),
                        status: Some(csi::list_volumes_response::VolumeStatus {
                            published_node_ids: status.published_nodes,
                            volume_condition: Some(csi::VolumeCondition {
                                abnormal: status.abnormal,
                                message: status.condition_message,
                            }),
                        }),
                    });
                }
                Ok((entries, page.next_token))
            },
        )
        .await?;
        Ok(csi::ListVolumesResponse {
            entries,
            next_token,
        })
    }

    async fn get_capacity_inner(
        &self,
        req: csi::GetCapacityRequest,
    ) -> CoreResult<csi::GetCapacityResponse> {
        for (i, c) in req.volume_capabilities.iter().enumerate() {
            validate::capability(&format!("volume_capabilities[{i}]"), c)?;
        }
        let split = split_params(&req.parameters)?;
        if split.instance.is_none() && self.driver.registry.iter().nth(1).is_some() {
            // No `type` with several instances: what this process can
            // provide across the instances it serves (the sum of their free
            // space; the largest volume any one of them can hold).
            let mut total = csi::GetCapacityResponse::default();
            for instance in self.served().filter(|i| i.info.capacity) {
                let one = self.capacity_of(instance, &req, BTreeMap::new()).await?;
                total.available_capacity = total
                    .available_capacity
                    .saturating_add(one.available_capacity);
                total.maximum_volume_size =
                    match (total.maximum_volume_size, one.maximum_volume_size) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                total.minimum_volume_size =
                    match (total.minimum_volume_size, one.minimum_volume_size) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
            }
            return Ok(total);
        }
        let instance = self.driver.registry.for_type(split.instance.as_deref())?;
        self.check_served(instance)?;
        if !instance.info.capacity {
            return Err(CoreError::InvalidArgument(format!(
                "provider instance {} does not report capacity",
                instance.name
            )));
        }
        self.capacity_of(instance, &req, split.provider).await
    }

    /// The capacity one instance reports for a request (0 when it cannot
    /// serve the requested capabilities).
    async fn capacity_of(
        &self,
        instance: &Instance,
        req: &csi::GetCapacityRequest,
        parameters: BTreeMap<String, String>,
    ) -> CoreResult<csi::GetCapacityResponse> {
        if req
            .volume_capabilities
            .iter()
            .any(|c| validate::unsupported_by(&instance.info, c).is_some())
        {
            return Ok(csi::GetCapacityResponse::default());
        }
        let resp = instance
            .provider
            .get_capacity(p::CapacityRequest {
                parameters,
                topology: req.accessible_topology.as_ref().map(topology_in),
                capabilities: req.volume_capabilities.iter().map(capability_in).collect(),
            })
            .await
            .map_err(provider_err(instance, "get capacity"))?;
        Ok(csi::GetCapacityResponse {
            available_capacity: resp.available_bytes.max(0),
            maximum_volume_size: (resp.maximum_volume_size > 0).then_some(resp.maximum_volume_size),
            minimum_volume_size: (resp.minimum_volume_size > 0).then_some(resp.minimum_volume_size),
        })
    }

    fn capabilities(&self) -> Vec<RpcType> {
        let served: Vec<&Instance> = self.served().collect();
        let any = |f: fn(&p::ProviderInfo) -> bool| served.iter().any(|i| f(&i.info));
        let all = |f: fn(&p::ProviderInfo) -> bool| {
            !served.is_empty() && served.iter().all(|i| f(&i.info))
        };
        let mut caps = vec![
            RpcType::CreateDeleteVolume,
            RpcType::GetVolume,
            RpcType::VolumeCondition,
        ];
        // Attachment is a per-driver setting: the attacher calls every
        // volume once any instance needs it (no-op for local volumes).
        if self.driver.registry.iter().any(|i| i.info.attach_required)
            && self.driver.mode != Mode::Node
        {
            caps.push(RpcType::PublishUnpublishVolume);
        }
        if all(|i| i.list_volumes) {
            caps.push(RpcType::ListVolumes);
            if all(|i| i.published_nodes) {
                caps.push(RpcType::ListVolumesPublishedNodes);
            }
        }
        if any(|i| i.capacity) {
            caps.push(RpcType::GetCapacity);
        }
        if any(|i| i.snapshots) {
            caps.extend([
                RpcType::CreateDeleteSnapshot,
                RpcType::ListSnapshots,
                RpcType::GetSnapshot,
            ]);
        }
        if any(|i| i.clone) {
            caps.push(RpcType::CloneVolume);
        }
        if any(|i| i.expand) {
            caps.push(RpcType::ExpandVolume);
        }
        if any(|i| i.modify) {
            caps.push(RpcType::ModifyVolume);
        }
        if any(|i| {
            i.access_modes
                .contains(&(p::AccessMode::SingleNodeMultiWriter as i32))
        }) {
            caps.push(RpcType::SingleNodeMultiWriter);
        }
        caps
    }

    async fn create_snapshot_inner(
        &self,
        req: csi::CreateSnapshotRequest,
    ) -> CoreResult<csi::CreateSnapshotResponse> {
        validate::name("name", &req.name)?;
        let source = validate::existing_id("volume", "source_volume_id", &req.source_volume_id)?;
        let instance = self.owner(&source)?;
        if !instance.info.snapshots {
            return Err(CoreError::InvalidArgument(format!(
                "provider instance {} does not support snapshots",
                instance.name
            )));
        }
        let _guard = self.guard(&format!("create-snapshot/{}", req.name))?;
        let snap = instance
            .provider
            .create_snapshot(p::CreateSnapshotRequest {
                name: req.name.clone(),
                source_volume_id: source.local().to_owned(),
                parameters: req.parameters.clone(),
            })
            .await
            .map_err(provider_err(instance, "create snapshot"))?;
        Ok(csi::CreateSnapshotResponse {
            snapshot: Some(snapshot_out(&instance.name, &snap)?),
        })
    }

    async fn delete_snapshot_inner(
        &self,
        req: csi::DeleteSnapshotRequest,
    ) -> CoreResult<csi::DeleteSnapshotResponse> {
        self.delete_owned(
            "snapshot_id",
            &req.snapshot_id,
            "delete snapshot",
            |instance, local| {
                instance
                    .provider
                    .delete_snapshot(p::SnapshotRef { snapshot_id: local })
            },
        )
        .await?;
        Ok(csi::DeleteSnapshotResponse {})
    }

    async fn list_snapshots_inner(
        &self,
        req: csi::ListSnapshotsRequest,
    ) -> CoreResult<csi::ListSnapshotsResponse> {
        if req.max_entries < 0 {
            return Err(CoreError::InvalidArgument(
                "max_entries must not be negative".into(),
            ));
        }
        // A filter naming something this driver never issued matches nothing.
        let mut only: Option<String> = None;
        let mut snapshot_filter = String::new();
        let mut volume_filter = String::new();
        for (raw, filter) in [
            (&req.snapshot_id, &mut snapshot_filter),
            (&req.source_volume_id, &mut volume_filter),
        ] {
            if raw.is_empty() {
                continue;
            }
            let Ok(id) = ScopedId::parse(raw) else {
                return Ok(csi::ListSnapshotsResponse::default());
            };
            if only.as_deref().is_some_and(|o| o != id.instance()) {
                return Ok(csi::ListSnapshotsResponse::default());
            }
            only = Some(id.instance().to_owned());
            *filter = id.local().to_owned();
        }
        let instances: Vec<&Instance> = self
            .served()
            .filter(|i| i.info.snapshots)
            .filter(|i| only.as_deref().is_none_or(|o| o == i.name))
            .collect();
        let (snapshot_filter, volume_filter) = (&snapshot_filter, &volume_filter);
        let (entries, next_token) = page_across(
            &self.driver.registry,
            &instances,
            req.max_entries,
            &req.starting_token,
            |instance, max_entries, starting_token| async move {
                let page = match instance
                    .provider
                    .list_snapshots(p::ListSnapshotsRequest {
                        max_entries,
                        starting_token,
                        snapshot_id: snapshot_filter.clone(),
                        source_volume_id: volume_filter.clone(),
                    })
                    .await
                {
                    Ok(page) => page,
                    // A filter naming a snapshot or volume that is gone matches nothing.
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        p::ListSnapshotsResponse::default()
                    }
                    Err(e) => return Err(paging_err(instance, "list snapshots", e)),
                };
                let entries = page
                    .entries
                    .iter()
                    .map(|snap| {
                        Ok(csi::list_snapshots_response::Entry {
                            snapshot: Some(snapshot_out(&instance.name, snap)?),
                        })
                    })
                    .collect::<CoreResult<Vec<_>>>()?;
                Ok((entries, page.next_token))
            },
        )
        .await?;
        Ok(csi::ListSnapshotsResponse {
            entries,
            next_token,
        })
    }

    async fn get_snapshot_inner(
        &self,
        req: csi::GetSnapshotRequest,
    ) -> CoreResult<csi::GetSnapshotResponse> {
        let id = validate::existing_id("snapshot", "snapshot_id", &req.snapshot_id)?;
        let instance = self.owner(&id)?;
        let snap = instance
            .provider
            .get_snapshot(p::SnapshotRef {
                snapshot_id: id.local().to_owned(),
            })
            .await
            .map_err(provider_err(instance, "get snapshot"))?;
        Ok(csi::GetSnapshotResponse {
            snapshot: Some(snapshot_out(&instance.name, &snap)?),
        })
    }

    async fn expand_inner(
        &self,
        req: csi::ControllerExpandVolumeRequest,
    ) -> CoreResult<csi::ControllerExpandVolumeResponse> {
        validate::required("volume_id", &req.volume_id)?;
        let range = req
            .capacity_range
            .as_ref()
            .ok_or_else(|| CoreError::missing("capacity_range"))?;
        let (required_bytes, limit_bytes) = validate::capacity_range(Some(range))?;
        if let Some(c) = &req.volume_capability {
            validate::capability("volume_capability", c)?;
        }
        let id = validate::existing_id("volume", "volume_id", &req.volume_id)?;
        let instance = self.owner(&id)?;
        if !instance.info.expand {
            return Err(CoreError::Unimplemented(format!(
                "provider instance {} cannot expand volumes",
                instance.name
            )));
        }
        let _guard = self.guard(&req.volume_id)?;
        let resp = instance
            .provider
            .expand_volume(p::ExpandVolumeRequest {
                volume_id: id.local().to_owned(),
                required_bytes,
                limit_bytes,
                capability: req.volume_capability.as_ref().map(capability_in),
            })
            .await
            .map_err(provider_err(instance, "expand volume"))?;
        let block = req
            .volume_capability
            .as_ref()
            .is_some_and(convert::is_block);
        Ok(csi::ControllerExpandVolumeResponse {
            capacity_bytes: resp.capacity_bytes,
            node_expansion_required: resp.node_expansion_required && !block,
        })
    }

    async fn get_volume_inner(
        &self,
        req: csi::ControllerGetVolumeRequest,
    ) -> CoreResult<csi::ControllerGetVolumeResponse> {
        let id = validate::existing_id("volume", "volume_id", &req.volume_id)?;
        let instance = self.owner(&id)?;
        let status = instance
            .provider
            .get_volume(p::VolumeRef {
                volume_id: id.local().to_owned(),
            })
            .await
            .map_err(provider_err(instance, "get volume"))?;
        let volume = status
            .volume
            .as_ref()
            .map(|v| volume_out(&instance.name, v, &BTreeMap::new()))
            .transpose()?;
        Ok(csi::ControllerGetVolumeResponse {
            volume,
            status: Some(csi::controller_get_volume_response::VolumeStatus {
                published_node_ids: status.published_nodes,
                volume_condition: Some(csi::VolumeCondition {
                    abnormal: status.abnormal,
                    message: status.condition_message,
                }),
            }),
        })
    }

    async fn modify_inner(
        &self,
        req: csi::ControllerModifyVolumeRequest,
    ) -> CoreResult<csi::ControllerModifyVolumeResponse> {
        validate::required("volume_id", &req.volume_id)?;
        if req.mutable_parameters.is_empty() {
            return Err(CoreError::missing("mutable_parameters"));
        }
        let id = validate::existing_id("volume", "volume_id", &req.volume_id)?;
        let instance = self.owner(&id)?;
        if !instance.info.modify {
            return Err(CoreError::InvalidArgument(format!(
                "provider instance {} has no mutable parameters",
                instance.name
            )));
        }
        let _guard = self.guard(&req.volume_id)?;
        instance
            .provider
            .modify_volume(p::ModifyVolumeRequest {
                volume_id: id.local().to_owned(),
                mutable_parameters: req.mutable_parameters.clone(),
            })
            .await
            .map_err(provider_err(instance, "modify volume"))?;
        Ok(csi::ControllerModifyVolumeResponse {})
    }
}

/// Smallest XFS filesystem mkfs.xfs creates (xfsprogs 5.19 and later).
pub const XFS_MIN_BYTES: i64 = 300 << 20;

/// Raises the requested size to what the volume's filesystem needs, so a
/// small XFS volume is not created only to fail at staging.
fn fit_filesystem(
    required: i64,
    limit: i64,
    caps: &[csi::VolumeCapability],
    node_context: &BTreeMap<String, String>,
) -> CoreResult<i64> {
    let fs_of = |c: &csi::VolumeCapability| match &c.access_type {
        Some(csi::volume_capability::AccessType::Mount(m)) if !m.fs_type.is_empty() => {
            Some(m.fs_type.clone())
        }
        Some(csi::volume_capability::AccessType::Mount(_)) => {
            node_context.get(FS_TYPE_PARAM).cloned()
        }
        _ => None,
    };
    if !caps.iter().filter_map(fs_of).any(|fs| fs == "xfs") || required >= XFS_MIN_BYTES {
        return Ok(required);
    }
    if limit > 0 && limit < XFS_MIN_BYTES {
        return Err(CoreError::OutOfRange(format!(
            "an XFS volume needs at least {XFS_MIN_BYTES} bytes; capacity_range.limit_bytes is {limit}"
        )));
    }
    Ok(XFS_MIN_BYTES)
}

fn same_instance(instance: &Instance, source: &ScopedId, what: &str) -> CoreResult<()> {
    if source.instance() == instance.name {
        return Ok(());
    }
    Err(CoreError::InvalidArgument(format!(
        "the source {what} {source} belongs to provider instance {}, not {}: sources must come from the same instance",
        source.instance(),
        instance.name
    )))
}

/// The provider's own ID for a CSI node ID.
fn node_for(raw: &str, instance: &Instance) -> CoreResult<String> {
    let node = NodeId::parse(raw).map_err(|e| {
        CoreError::NotFound(format!("node {} is unknown: {e}", validate::shown(raw)))
    })?;
    if let Some(id) = node.for_instance(&instance.name) {
        return Ok(id.to_owned());
    }
    // The node reported no identity of its own for this instance, so the
    // instance names nodes by their node name.
    Ok(node.name)
}

macro_rules! rpc {
    ($self:ident, $request:ident, $method:literal, $id:ident, $inner:ident) => {{
        let req = $request.into_inner();
        log_request(&req);
        let id = req.$id.clone();
        traced($method, &id, $self.$inner(req)).await
    }};
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let req = request.into_inner();
        log_request(&req);
        let name = req.name.clone();
        let instance = self.type_label(&req.parameters);
        traced_in(
            "CreateVolume",
            &name,
            &instance,
            self.create_volume_inner(req),
        )
        .await
    }

    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        rpc!(
            self,
            request,
            "DeleteVolume",
            volume_id,
            delete_volume_inner
        )
    }

    async fn controller_publish_volume(
        &self,
        request: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        rpc!(
            self,
            request,
            "ControllerPublishVolume",
            volume_id,
            publish_inner
        )
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        rpc!(
            self,
            request,
            "ControllerUnpublishVolume",
            volume_id,
            unpublish_inner
        )
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        rpc!(
            self,
            request,
            "ValidateVolumeCapabilities",
            volume_id,
            validate_inner
        )
    }

    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let req = request.into_inner();
        traced("ListVolumes", "", self.list_volumes_inner(req)).await
    }

    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let req = request.into_inner();
        let instance = self.type_label(&req.parameters);
        traced_in("GetCapacity", "", &instance, self.get_capacity_inner(req)).await
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        let capabilities = self
            .capabilities()
            .into_iter()
            .map(|t| csi::ControllerServiceCapability {
                r#type: Some(CapType::Rpc(Rpc { r#type: t as i32 })),
            })
            .collect();
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        rpc!(
            self,
            request,
            "CreateSnapshot",
            source_volume_id,
            create_snapshot_inner
        )
    }

    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        rpc!(
            self,
            request,
            "DeleteSnapshot",
            snapshot_id,
            delete_snapshot_inner
        )
    }

    async fn list_snapshots(
        &self,
        request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        rpc!(
            self,
            request,
            "ListSnapshots",
            snapshot_id,
            list_snapshots_inner
        )
    }

    async fn get_snapshot(
        &self,
        request: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        rpc!(
            self,
            request,
            "GetSnapshot",
            snapshot_id,
            get_snapshot_inner
        )
    }

    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        rpc!(
            self,
            request,
            "ControllerExpandVolume",
            volume_id,
            expand_inner
        )
    }

    async fn controller_get_volume(
        &self,
        request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        traced("ControllerGetVolume", &id, self.get_volume_inner(req)).await
    }

    async fn controller_modify_volume(
        &self,
        request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        rpc!(
            self,
            request,
            "ControllerModifyVolume",
            volume_id,
            modify_inner
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_split_between_core_and_provider() {
        let params = BTreeMap::from([
            ("type".to_string(), "fast".to_string()),
            ("FSTYPE".to_string(), "XFS".to_string()),
            ("thin".to_string(), "true".to_string()),
        ]);
        let split = split_params(&params).unwrap();
        assert_eq!(split.instance.as_deref(), Some("fast"));
        assert_eq!(
            split.node_context.get("fsType").map(String::as_str),
            Some("xfs")
        );
        assert_eq!(split.provider.len(), 1);
        assert!(split.provider.contains_key("thin"));

        let bad = BTreeMap::from([("fsType".to_string(), "ntfs".to_string())]);
        assert!(split_params(&bad).is_err());
    }

    #[test]
    fn xfs_volumes_get_at_least_the_xfs_minimum() {
        use csi::volume_capability::{AccessMode, AccessType, MountVolume};
        let cap = |fs: &str| csi::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: fs.into(),
                ..Default::default()
            })),
            access_mode: Some(AccessMode { mode: 1 }),
        };
        let none = BTreeMap::new();
        assert_eq!(
            fit_filesystem(64 << 20, 0, &[cap("xfs")], &none).unwrap(),
            XFS_MIN_BYTES
        );
        assert_eq!(
            fit_filesystem(64 << 20, 0, &[cap("ext4")], &none).unwrap(),
            64 << 20
        );
        let ctx = BTreeMap::from([(FS_TYPE_PARAM.to_string(), "xfs".to_string())]);
        assert_eq!(
            fit_filesystem(1, 0, &[cap("")], &ctx).unwrap(),
            XFS_MIN_BYTES
        );
        let err = fit_filesystem(1, 100 << 20, &[cap("xfs")], &none).unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange);
    }
}
