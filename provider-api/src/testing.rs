//! A stateful in-memory provider for tests (feature `testing`).
//!
//! It keeps volumes, snapshots and attachments in maps and behaves like a
//! well-mannered backend: idempotent creates by name, `AlreadyExists` on
//! incompatible re-creates, `FailedPrecondition` when deleting an attached
//! volume, paging with opaque tokens. Tests can slow it down or make the next
//! call fail to exercise the core's in-flight guard and error mapping.
//!
//! StorageClass parameters it accepts: `device` (the block device
//! `find_device` returns, so node tests can use loop devices), `fail`
//! (a kind name; creation fails with that kind) and `multiAttach` (the
//! volume may be attached to several nodes). Its one mutable parameter is
//! `tier`, checked at creation as at modification.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::access::check_multi_node;
use crate::error::{ErrorKind, ProviderError, Result};
use crate::params::{Params, parse_settings};
use crate::provider::{Provider, ProviderFactory};
use crate::types::*;

/// Topology key of the fake provider's zone (or node, when node-local).
pub const FAKE_ZONE_KEY: &str = "fake.omnidisk.io/zone";
/// Topology key used when the fake is node-local.
pub const FAKE_NODE_KEY: &str = "fake.omnidisk.io/node";

/// Settings of a fake instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FakeSettings {
    /// Volumes must be attached before staging.
    pub attach_required: bool,
    /// Volumes belong to one node (the driver's node).
    pub node_local: bool,
    /// Total capacity in bytes; creation beyond it is `ResourceExhausted`.
    pub capacity_bytes: i64,
    /// Largest single volume (0 = no limit), for `OutOfRange` tests.
    pub max_volume_bytes: i64,
    /// Every call sleeps this long first (in-flight tests).
    pub delay_ms: u64,
    /// The zone reported in the topology.
    pub zone: String,
    /// Max volumes per node reported by `node_info`.
    pub max_volumes_per_node: i64,
}

impl Default for FakeSettings {
    fn default() -> Self {
        Self {
            attach_required: true,
            node_local: false,
            capacity_bytes: 1 << 40,
            max_volume_bytes: 0,
            delay_ms: 0,
            zone: "zone-a".into(),
            max_volumes_per_node: 16,
        }
    }
}

#[derive(Debug, Clone)]
struct FakeVolume {
    name: String,
    volume: Volume,
    parameters: BTreeMap<String, String>,
    attached: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    volumes: BTreeMap<String, FakeVolume>,
    snapshots: BTreeMap<String, (String, Snapshot)>,
    /// Group snapshots: id -> (name, group).
    groups: BTreeMap<String, (String, GroupSnapshot)>,
    fail_next: Option<ErrorKind>,
}

/// Parses the fake's mutable parameters (the same rules at creation and at
/// modification): only `tier`.
fn parse_mutable(map: &BTreeMap<String, String>) -> Result<Option<String>> {
    let mut params = Params::new("fake mutable parameter", map);
    let tier = params.take("tier");
    params.finish()?;
    Ok(tier)
}

/// The fake provider. Cloneable handles share one state.
#[derive(Debug, Clone)]
pub struct FakeProvider {
    instance: String,
    node_name: String,
    settings: FakeSettings,
    state: Arc<Mutex<State>>,
}

/// The factory for kind `fake`.
pub const FACTORY: ProviderFactory = ProviderFactory {
    kind: "fake",
    create: |init| {
        Box::pin(async move {
            let settings: FakeSettings = parse_settings(&init.settings_toml)?;
            Ok(
                Arc::new(FakeProvider::new(&init.instance, &init.node_name, settings))
                    as Arc<dyn Provider>,
            )
        })
    },
};

impl FakeProvider {
    /// A fake instance with explicit settings.
    pub fn new(instance: &str, node_name: &str, settings: FakeSettings) -> Self {
        Self {
            instance: instance.to_owned(),
            node_name: node_name.to_owned(),
            settings,
            state: Arc::default(),
        }
    }

    /// The next provider call fails with `kind`.
    pub fn fail_next(&self, kind: ErrorKind) {
        self.lock().fail_next = Some(kind);
    }

    /// Number of volumes currently held.
    pub fn volume_count(&self) -> usize {
        self.lock().volumes.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain maps behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn enter(&self) -> Result<()> {
        if self.settings.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.settings.delay_ms)).await;
        }
        match self.lock().fail_next.take() {
            Some(kind) => Err(ProviderError::new(kind, "injected failure")),
            None => Ok(()),
        }
    }

    fn topology(&self) -> Topology {
        if self.settings.node_local {
            Topology::from_pairs([(FAKE_NODE_KEY, self.node_name.as_str())])
        } else {
            Topology::from_pairs([(FAKE_ZONE_KEY, self.settings.zone.as_str())])
        }
    }

    fn used(state: &State) -> i64 {
        state
            .volumes
            .values()
            .map(|v| v.volume.capacity_bytes)
            .sum()
    }
}

fn page<T: Clone>(items: &[T], req_max: i32, token: &str) -> Result<(Vec<T>, String)> {
    let start: usize = if token.is_empty() {
        0
    } else {
        token
            .parse()
            .map_err(|_| ProviderError::aborted_token(token))?
    };
    if start > items.len() {
        return Err(ProviderError::aborted_token(token));
    }
    let max = if req_max <= 0 {
        usize::MAX
    } else {
        req_max as usize
    };
    let end = start.saturating_add(max).min(items.len());
    let next = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    Ok((items[start..end].to_vec(), next))
}

impl ProviderError {
    /// The error for a paging token this provider did not issue
    /// (CSI: `ABORTED` for an invalid starting token).
    pub fn aborted_token(token: &str) -> Self {
        ProviderError::new(
            ErrorKind::Aborted,
            format!("invalid starting token {token:?}"),
        )
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            kind: "fake".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            attach_required: self.settings.attach_required,
            node_local: self.settings.node_local,
            snapshots: true,
            clone: true,
            expand: true,
            modify: true,
            list_volumes: true,
            capacity: true,
            block: true,
            ephemeral: self.settings.node_local,
            published_nodes: true,
            access_modes: vec![
                AccessMode::SingleNodeWriter as i32,
                AccessMode::SingleNodeReaderOnly as i32,
                AccessMode::SingleNodeSingleWriter as i32,
                AccessMode::SingleNodeMultiWriter as i32,
                AccessMode::MultiNodeReaderOnly as i32,
                AccessMode::MultiNodeSingleWriter as i32,
                AccessMode::MultiNodeMultiWriter as i32,
            ],
            group_snapshots: true,
        }
    }

    async fn create_volume(&self, req: CreateVolumeRequest) -> Result<Volume> {
        self.enter().await?;
        let mut params = Params::new("fake parameter", &req.parameters);
        let device = params.take("device");
        let multi_attach = params.take_bool("multiAttach")?.unwrap_or(false);
        if let Some(kind) = params.take("fail") {
            let kind = ErrorKind::ALL
                .into_iter()
                .find(|k| k.as_str() == kind)
                .unwrap_or(ErrorKind::Internal);
            return Err(ProviderError::new(kind, "failure requested by parameter"));
        }
        params.finish()?;
        let tier = parse_mutable(&req.mutable_parameters)?;
        check_multi_node(&req.capabilities, multi_attach)?;
        if req.name.is_empty() {
            return Err(ProviderError::invalid_argument("name is empty"));
        }
        let size = req.required_bytes.max(GIB);
        if req.limit_bytes > 0 && size > req.limit_bytes {
            return Err(ProviderError::out_of_range(format!(
                "{size} bytes exceed the limit {}",
                req.limit_bytes
            )));
        }
        if self.settings.max_volume_bytes > 0 && size > self.settings.max_volume_bytes {
            return Err(ProviderError::out_of_range(format!(
                "{size} bytes exceed the largest volume, {} bytes",
                self.settings.max_volume_bytes
            )));
        }
        let topo = self.topology();
        if !req.requisite.is_empty() && !req.requisite.iter().any(|t| t.is_subset_of(&topo)) {
            return Err(ProviderError::resource_exhausted(format!(
                "instance {} cannot place a volume in the requested topology",
                self.instance
            )));
        }
        let source = req.source.clone().map(|s| match s {
            create_volume_request::Source::SourceSnapshotId(id) => {
                volume::Source::SourceSnapshotId(id)
            }
            create_volume_request::Source::SourceVolumeId(id) => volume::Source::SourceVolumeId(id),
        });
        let mut state = self.lock();
        if let Some(existing) = state.volumes.values().find(|v| v.name == req.name) {
            let fits = existing.volume.capacity_bytes >= req.required_bytes
                && (req.limit_bytes == 0 || existing.volume.capacity_bytes <= req.limit_bytes);
            if !fits || existing.volume.source != source || existing.parameters != req.parameters {
                return Err(ProviderError::already_exists(format!(
                    "volume {} exists with different properties",
                    req.name
                )));
            }
            return Ok(existing.volume.clone());
        }
        match &source {
            Some(volume::Source::SourceSnapshotId(id)) if !state.snapshots.contains_key(id) => {
                return Err(ProviderError::not_found(format!("snapshot {id} not found")));
            }
            Some(volume::Source::SourceVolumeId(id)) if !state.volumes.contains_key(id) => {
                return Err(ProviderError::not_found(format!("volume {id} not found")));
            }
            _ => {}
        }
        if Self::used(&state) + size > self.settings.capacity_bytes {
            return Err(ProviderError::resource_exhausted("fake pool is full"));
        }
        state.next_id += 1;
        let id = format!("vol-{:04}", state.next_id);
        let mut context = BTreeMap::new();
        if let Some(device) = device {
            context.insert("device".to_owned(), device);
        }
        if let Some(tier) = tier {
            context.insert("tier".to_owned(), tier);
        }
        let volume = Volume {
            id: id.clone(),
            capacity_bytes: size,
            accessible_topology: vec![topo],
            context,
            source,
            multi_attach,
        };
        state.volumes.insert(
            id,
            FakeVolume {
                name: req.name,
                volume: volume.clone(),
                parameters: req.parameters,
                attached: BTreeSet::new(),
            },
        );
        Ok(volume)
    }

    async fn delete_volume(&self, req: VolumeRef) -> Result<()> {
        self.enter().await?;
        let mut state = self.lock();
        match state.volumes.get(&req.volume_id) {
            None => Ok(()),
            Some(v) if !v.attached.is_empty() => Err(ProviderError::failed_precondition(format!(
                "volume {} is attached to {:?}",
                req.volume_id, v.attached
            ))),
            Some(_) => {
                state.volumes.remove(&req.volume_id);
                Ok(())
            }
        }
    }

    async fn get_volume(&self, req: VolumeRef) -> Result<VolumeStatus> {
        self.enter().await?;
        let state = self.lock();
        let v = state.volumes.get(&req.volume_id).ok_or_else(|| {
            ProviderError::not_found(format!("volume {} not found", req.volume_id))
        })?;
        Ok(VolumeStatus {
            volume: Some(v.volume.clone()),
            published_nodes: v.attached.iter().cloned().collect(),
            abnormal: false,
            condition_message: String::new(),
        })
    }

    async fn list_volumes(&self, req: ListRequest) -> Result<ListVolumesResponse> {
        self.enter().await?;
        let state = self.lock();
        let all: Vec<VolumeStatus> = state
            .volumes
            .values()
            .map(|v| VolumeStatus {
                volume: Some(v.volume.clone()),
                published_nodes: v.attached.iter().cloned().collect(),
                abnormal: false,
                condition_message: String::new(),
            })
            .collect();
        let (entries, next_token) = page(&all, req.max_entries, &req.starting_token)?;
        Ok(ListVolumesResponse {
            entries,
            next_token,
        })
    }

    async fn expand_volume(&self, req: ExpandVolumeRequest) -> Result<ExpandVolumeResponse> {
        self.enter().await?;
        let mut state = self.lock();
        let v = state.volumes.get_mut(&req.volume_id).ok_or_else(|| {
            ProviderError::not_found(format!("volume {} not found", req.volume_id))
        })?;
        if req.limit_bytes > 0 && req.required_bytes > req.limit_bytes {
            return Err(ProviderError::out_of_range(
                "required size exceeds the limit",
            ));
        }
        if req.required_bytes > v.volume.capacity_bytes {
            v.volume.capacity_bytes = req.required_bytes;
        }
        Ok(ExpandVolumeResponse {
            capacity_bytes: v.volume.capacity_bytes,
            node_expansion_required: true,
        })
    }

    async fn modify_volume(&self, req: ModifyVolumeRequest) -> Result<()> {
        self.enter().await?;
        let mut state = self.lock();
        let v = state.volumes.get_mut(&req.volume_id).ok_or_else(|| {
            ProviderError::not_found(format!("volume {} not found", req.volume_id))
        })?;
        if let Some(tier) = parse_mutable(&req.mutable_parameters)? {
            v.volume.context.insert("tier".into(), tier);
        }
        Ok(())
    }

    async fn attach_volume(&self, req: AttachRequest) -> Result<AttachResponse> {
        self.enter().await?;
        let mut state = self.lock();
        let v = state.volumes.get_mut(&req.volume_id).ok_or_else(|| {
            ProviderError::not_found(format!("volume {} not found", req.volume_id))
        })?;
        if !v.volume.multi_attach && !v.attached.is_empty() && !v.attached.contains(&req.node_id) {
            return Err(ProviderError::failed_precondition(format!(
                "volume {} is attached to another node",
                req.volume_id
            )));
        }
        v.attached.insert(req.node_id);
        let mut publish_context = BTreeMap::new();
        publish_context.insert("fakeAttachment".into(), req.volume_id);
        Ok(AttachResponse { publish_context })
    }

    async fn detach_volume(&self, req: DetachRequest) -> Result<()> {
        self.enter().await?;
        let mut state = self.lock();
        if let Some(v) = state.volumes.get_mut(&req.volume_id) {
            if req.node_id.is_empty() {
                v.attached.clear();
            } else {
                v.attached.remove(&req.node_id);
            }
        }
        Ok(())
    }

    async fn create_snapshot(&self, req: CreateSnapshotRequest) -> Result<Snapshot> {
        self.enter().await?;
        let mut state = self.lock();
        if let Some((_, snap)) = state.snapshots.values().find(|(n, _)| *n == req.name) {
            if snap.source_volume_id != req.source_volume_id {
                return Err(ProviderError::already_exists(format!(
                    "snapshot {} exists for another volume",
                    req.name
                )));
            }
            return Ok(snap.clone());
        }
        let size = state
            .volumes
            .get(&req.source_volume_id)
            .map(|v| v.volume.capacity_bytes)
            .ok_or_else(|| {
                ProviderError::not_found(format!("volume {} not found", req.source_volume_id))
            })?;
        state.next_id += 1;
        let id = format!("snap-{:04}", state.next_id);
        let snap = Snapshot {
            id: id.clone(),
            source_volume_id: req.source_volume_id,
            size_bytes: size,
            creation_time_seconds: 1_700_000_000 + state.next_id as i64,
            creation_time_nanos: 0,
            ready_to_use: true,
            group_snapshot_id: String::new(),
        };
        state.snapshots.insert(id, (req.name, snap.clone()));
        Ok(snap)
    }

    async fn create_group_snapshot(
        &self,
        req: CreateGroupSnapshotRequest,
    ) -> Result<GroupSnapshot> {
        self.enter().await?;
        let mut state = self.lock();
        let mut sources = req.source_volume_ids.clone();
        sources.sort();
        if let Some((_, group)) = state.groups.values().find(|(n, _)| *n == req.name) {
            let mut members: Vec<String> = group
                .snapshots
                .iter()
                .map(|s| s.source_volume_id.clone())
                .collect();
            members.sort();
            if members != sources {
                return Err(ProviderError::already_exists(format!(
                    "group snapshot {} exists for other volumes",
                    req.name
                )));
            }
            return Ok(group.clone());
        }
        if let Some(missing) = sources.iter().find(|v| !state.volumes.contains_key(*v)) {
            return Err(ProviderError::not_found(format!(
                "volume {missing} not found"
            )));
        }
        state.next_id += 1;
        let group_id = format!("group-{:04}", state.next_id);
        let created = 1_700_000_000 + state.next_id as i64;
        let mut snapshots = Vec::new();
        for volume_id in &req.source_volume_ids {
            state.next_id += 1;
            let id = format!("snap-{:04}", state.next_id);
            let size = state.volumes[volume_id].volume.capacity_bytes;
            let snap = Snapshot {
                id: id.clone(),
                source_volume_id: volume_id.clone(),
                size_bytes: size,
                creation_time_seconds: created,
                creation_time_nanos: 0,
                ready_to_use: true,
                group_snapshot_id: group_id.clone(),
            };
            state
                .snapshots
                .insert(id, (format!("{}/{volume_id}", req.name), snap.clone()));
            snapshots.push(snap);
        }
        let group = GroupSnapshot {
            id: group_id.clone(),
            snapshots,
            creation_time_seconds: created,
            creation_time_nanos: 0,
            ready_to_use: true,
        };
        state.groups.insert(group_id, (req.name, group.clone()));
        Ok(group)
    }

    async fn delete_group_snapshot(&self, req: GroupSnapshotRef) -> Result<()> {
        self.enter().await?;
        let mut state = self.lock();
        for id in &req.snapshot_ids {
            state.snapshots.remove(id);
        }
        if let Some((_, group)) = state.groups.remove(&req.group_snapshot_id) {
            for member in group.snapshots {
                state.snapshots.remove(&member.id);
            }
        }
        Ok(())
    }

    async fn get_group_snapshot(&self, req: GroupSnapshotRef) -> Result<GroupSnapshot> {
        self.enter().await?;
        self.lock()
            .groups
            .get(&req.group_snapshot_id)
            .map(|(_, g)| g.clone())
            .ok_or_else(|| {
                ProviderError::not_found(format!(
                    "group snapshot {} not found",
                    req.group_snapshot_id
                ))
            })
    }

    async fn delete_snapshot(&self, req: SnapshotRef) -> Result<()> {
        self.enter().await?;
        self.lock().snapshots.remove(&req.snapshot_id);
        Ok(())
    }

    async fn get_snapshot(&self, req: SnapshotRef) -> Result<Snapshot> {
        self.enter().await?;
        self.lock()
            .snapshots
            .get(&req.snapshot_id)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| {
                ProviderError::not_found(format!("snapshot {} not found", req.snapshot_id))
            })
    }

    async fn list_snapshots(&self, req: ListSnapshotsRequest) -> Result<ListSnapshotsResponse> {
        self.enter().await?;
        let state = self.lock();
        let all: Vec<Snapshot> = state
            .snapshots
            .values()
            .map(|(_, s)| s.clone())
            .filter(|s| req.snapshot_id.is_empty() || s.id == req.snapshot_id)
            .filter(|s| {
                req.source_volume_id.is_empty() || s.source_volume_id == req.source_volume_id
            })
            .collect();
        let (entries, next_token) = page(&all, req.max_entries, &req.starting_token)?;
        Ok(ListSnapshotsResponse {
            entries,
            next_token,
        })
    }

    async fn get_capacity(&self, req: CapacityRequest) -> Result<CapacityResponse> {
        self.enter().await?;
        if let Some(topo) = &req.topology {
            if !topo.is_subset_of(&self.topology()) {
                return Ok(CapacityResponse::default());
            }
        }
        let state = self.lock();
        Ok(CapacityResponse {
            available_bytes: self.settings.capacity_bytes - Self::used(&state),
            maximum_volume_size: self.settings.max_volume_bytes,
            minimum_volume_size: 0,
            total_bytes: self.settings.capacity_bytes,
        })
    }

    async fn node_info(&self) -> Result<NodeInfo> {
        Ok(NodeInfo {
            node_id: self.node_name.clone(),
            topology: Some(self.topology()),
            max_volumes: self.settings.max_volumes_per_node,
        })
    }

    async fn find_device(&self, req: FindDeviceRequest) -> Result<FindDeviceResponse> {
        self.enter().await?;
        let device = req
            .volume_context
            .get("device")
            .cloned()
            .or_else(|| {
                self.lock()
                    .volumes
                    .get(&req.volume_id)
                    .and_then(|v| v.volume.context.get("device").cloned())
            })
            .ok_or_else(|| {
                ProviderError::not_found(format!("no device known for volume {}", req.volume_id))
            })?;
        Ok(FindDeviceResponse {
            device_path: device,
        })
    }
}
