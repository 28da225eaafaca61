//! The `local-lvm` provider: volumes are LVs in one volume group of the
//! node the driver runs on.
//!
//! Thick instances (no `thin_pool` setting) make linear LVs; snapshots are
//! classic copy-on-write snapshots whose COW area is as large as the origin,
//! so they can never overflow and become invalid. Restoring or cloning a
//! thick source makes a new LV and copies the source's blocks into it (done
//! here in Rust, device to device). lvm cannot grow the origin of an active
//! classic snapshot, so such a volume refuses expansion (and deletion)
//! until its snapshots are deleted.
//!
//! Thin instances make thin LVs in the configured pool; snapshots, restores
//! and clones are thin snapshots, which cost no copy and no space up front,
//! and thin origins can be grown while they have snapshots.
//!
//! Every LV this provider makes is tagged (see [`crate::names`]); LVs without
//! the tags are invisible to list and get and are never changed.

use std::cmp::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use omnidisk_provider_api::params::Params;
use omnidisk_provider_api::types::{
    AccessMode, AccessType, CapacityRequest, CapacityResponse, CreateSnapshotRequest,
    CreateVolumeRequest, ExpandVolumeRequest, ExpandVolumeResponse, FindDeviceRequest,
    FindDeviceResponse, InitRequest, ListRequest, ListSnapshotsRequest, ListSnapshotsResponse,
    ListVolumesResponse, NodeInfo, ProviderInfo, Snapshot, SnapshotRef, Topology, Volume,
    VolumeCondition, VolumeRef, VolumeStatus, create_volume_request, volume,
};
use omnidisk_provider_api::{ErrorKind, Provider, ProviderError, Result};

use crate::device;
use crate::errors::{csi_name_error, device_error, lvm_error};
use crate::lvm::{Allocation, CommandRunner, LogicalVolume, LvName, Lvm, LvmError, LvmRunner};
use crate::names::{self, ObjectKind, Ownership};
use crate::settings::{Settings, Validated};

/// The provider kind in the configuration.
pub const KIND: &str = "local-lvm";
/// The topology key naming the node a volume lives on.
pub const TOPOLOGY_KEY: &str = "topology.omnidisk.csi.dev/node";
/// Size of a volume when the request names none.
pub const DEFAULT_VOLUME_BYTES: u64 = 1 << 30;

/// Access modes a node-local volume can serve.
const ACCESS_MODES: [AccessMode; 4] = [
    AccessMode::SingleNodeWriter,
    AccessMode::SingleNodeReaderOnly,
    AccessMode::SingleNodeSingleWriter,
    AccessMode::SingleNodeMultiWriter,
];

/// A local-lvm provider instance.
#[derive(Debug)]
pub struct LvmProvider {
    instance: String,
    node_name: String,
    settings: Validated,
    lvm: Lvm,
}

fn to_i64(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

fn to_u64(what: &str, bytes: i64) -> Result<u64> {
    u64::try_from(bytes)
        .map_err(|_| ProviderError::invalid_argument(format!("{what} must not be negative")))
}

fn round_up(bytes: u64, extent: u64) -> Result<u64> {
    if extent == 0 {
        return Err(ProviderError::internal(
            "the volume group reports an extent size of 0",
        ));
    }
    bytes
        .div_ceil(extent)
        .checked_mul(extent)
        .ok_or_else(|| ProviderError::out_of_range(format!("{bytes} bytes is too large")))
}

/// The size a reader of the LV's device sees: a classic snapshot's device
/// is as large as its origin, whatever its COW area.
fn visible_size(lv: &LogicalVolume) -> u64 {
    if lv.attr.is_classic_snapshot() {
        lv.origin_size.unwrap_or(lv.size)
    } else {
        lv.size
    }
}

fn not_found(kind: ObjectKind, id: &str) -> ProviderError {
    ProviderError::not_found(format!("{} {id} not found", kind.noun()))
}

/// Returns entries after the token's name, at most `max` (<= 0: all), and
/// the token for the next page. Names are the sort key, so deletions between
/// pages neither repeat nor skip entries.
fn page<T>(mut items: Vec<(String, T)>, max: i32, token: &str) -> Result<(Vec<T>, String)> {
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let after = if token.is_empty() {
        None
    } else {
        let name = URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|n| names::kind_of_id(n).is_some())
            .ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::Aborted,
                    format!("invalid starting token {token:?}"),
                )
            })?;
        Some(name)
    };
    let rest: Vec<(String, T)> = items
        .into_iter()
        .filter(|(n, _)| after.as_ref().is_none_or(|a| n.cmp(a) == Ordering::Greater))
        .collect();
    let max = if max <= 0 { usize::MAX } else { max as usize };
    let more = rest.len() > max;
    let taken: Vec<(String, T)> = rest.into_iter().take(max).collect();
    let next = match (more, taken.last()) {
        (true, Some((name, _))) => URL_SAFE_NO_PAD.encode(name),
        _ => String::new(),
    };
    Ok((taken.into_iter().map(|(_, t)| t).collect(), next))
}

impl LvmProvider {
    /// An instance running lvm through `runner`.
    pub fn new(init: &InitRequest, settings: Validated, runner: Arc<dyn LvmRunner>) -> Self {
        let lvm = Lvm::new(runner, settings.vg.clone());
        Self {
            instance: init.instance.clone(),
            node_name: init.node_name.clone(),
            settings,
            lvm,
        }
    }

    /// An instance from its init request, running the real lvm binary.
    pub fn from_init(init: &InitRequest) -> Result<Self> {
        let settings = Settings::from_toml(&init.settings_toml)?;
        let runner = CommandRunner::new(
            settings.raw.command_prefix.clone(),
            settings.raw.lvm_path.clone(),
            settings.raw.lvm_config.clone(),
            settings.command_timeout,
        )
        .for_instance(&init.instance);
        Ok(Self::new(init, settings, Arc::new(runner)))
    }

    fn topology(&self) -> Topology {
        Topology::from_pairs([(TOPOLOGY_KEY, self.node_name.as_str())])
    }

    /// Whether a topology (requisite entry, capacity segment) allows this
    /// node. Segments of other keys belong to other providers' topologies
    /// and do not constrain an LVM volume.
    fn allows_this_node(&self, topology: &Topology) -> bool {
        topology
            .segments
            .get(TOPOLOGY_KEY)
            .is_none_or(|node| *node == self.node_name)
    }

    /// Every LV of the VG except those other instances sharing the VG own.
    async fn list_all(&self) -> Result<Vec<LogicalVolume>> {
        let mut lvs = self.lvm.list().await.map_err(|e| {
            lvm_error(
                format!("listing logical volumes of volume group {}", self.lvm.vg()),
                e,
            )
        })?;
        lvs.retain(|lv| !names::belongs_to_other_instance(lv, &self.instance));
        Ok(lvs)
    }

    /// Our LV `name` of `kind`, with its ownership.
    fn ours<'a>(
        lvs: &'a [LogicalVolume],
        kind: ObjectKind,
        name: &str,
    ) -> Option<(&'a LogicalVolume, Ownership)> {
        names::parse_id(kind, name)?;
        let lv = lvs.iter().find(|lv| lv.name == name)?;
        names::ownership(lv).map(|own| (lv, own))
    }

    fn volume_of(&self, lv: &LogicalVolume, own: &Ownership) -> Volume {
        let source = own.source.as_ref().map(|src| match names::kind_of_id(src) {
            Some(ObjectKind::Snapshot) => volume::Source::SourceSnapshotId(src.clone()),
            _ => volume::Source::SourceVolumeId(src.clone()),
        });
        Volume {
            id: lv.name.clone(),
            capacity_bytes: to_i64(lv.size),
            accessible_topology: vec![self.topology()],
            context: Default::default(),
            source,
            multi_attach: false,
        }
    }

    fn status_of(
        &self,
        lvs: &[LogicalVolume],
        lv: &LogicalVolume,
        own: &Ownership,
    ) -> VolumeStatus {
        let (abnormal, condition_message) = match condition(lvs, lv, own) {
            Some(message) => (true, message),
            None => (false, String::new()),
        };
        VolumeStatus {
            volume: Some(self.volume_of(lv, own)),
            published_nodes: Vec::new(),
            abnormal,
            condition_message,
        }
    }

    fn snapshot_of(lv: &LogicalVolume, own: &Ownership) -> Snapshot {
        let (seconds, nanos) = lv
            .created
            .map(|t| (t.unix_timestamp(), t.nanosecond() as i32))
            .unwrap_or((0, 0));
        Snapshot {
            id: lv.name.clone(),
            source_volume_id: own
                .source
                .clone()
                .or_else(|| lv.origin.clone())
                .unwrap_or_default(),
            size_bytes: to_i64(visible_size(lv)),
            creation_time_seconds: seconds,
            creation_time_nanos: nanos,
            ready_to_use: true,
            group_snapshot_id: String::new(),
        }
    }

    /// Bytes that new (or grown) volumes may still take.
    async fn headroom(&self, lvs: &[LogicalVolume]) -> Result<u64> {
        Ok(self.space(lvs).await?.0)
    }

    /// (bytes a new volume may take, total size of the VG or thin pool).
    async fn space(&self, lvs: &[LogicalVolume]) -> Result<(u64, u64)> {
        let spare = self.settings.spare_bytes;
        match &self.settings.thin {
            None => {
                let vg =
                    self.lvm.group().await.map_err(|e| {
                        lvm_error(format!("reading volume group {}", self.lvm.vg()), e)
                    })?;
                Ok((vg.free.saturating_sub(spare), vg.size))
            }
            Some((pool_name, ratio)) => {
                let pool = lvs
                    .iter()
                    .find(|lv| lv.name == pool_name.as_str() && lv.is_thin_pool())
                    .ok_or_else(|| {
                        ProviderError::failed_precondition(format!(
                            "thin pool {pool_name} not found in volume group {}",
                            self.lvm.vg()
                        ))
                    })?;
                Ok((thin_headroom(lvs, pool, *ratio, spare), pool.size))
            }
        }
    }

    async fn extent_size(&self) -> Result<u64> {
        self.lvm
            .group()
            .await
            .map(|vg| vg.extent_size)
            .map_err(|e| lvm_error(format!("reading volume group {}", self.lvm.vg()), e))
    }

    /// The size a new volume gets: the request (or the source's size, or
    /// the default) rounded up to whole extents, within the limit.
    fn new_volume_size(
        required: u64,
        limit: u64,
        source_size: Option<u64>,
        extent: u64,
    ) -> Result<u64> {
        let wanted = match (required, source_size) {
            (0, Some(src)) => src,
            (0, None) if limit > 0 => DEFAULT_VOLUME_BYTES.min(limit),
            (0, None) => DEFAULT_VOLUME_BYTES,
            (req, src) => req.max(src.unwrap_or(0)),
        };
        let size = round_up(wanted, extent)?;
        if limit > 0 && size > limit {
            // Rounding up overshot the limit: the largest whole-extent size
            // within it serves as long as it still holds what is required.
            let floor = limit / extent * extent;
            if floor > 0 && floor >= required.max(source_size.unwrap_or(0)) {
                return Ok(floor);
            }
            return Err(ProviderError::out_of_range(format!(
                "the volume needs {size} bytes (the request or its source, rounded up to \
                 {extent}-byte extents), more than the limit of {limit} bytes"
            )));
        }
        Ok(size)
    }

    /// Runs the steps after lvcreate for a volume made from `source`: grow
    /// to `size`, copy the source's blocks unless the LV is a thin snapshot
    /// of it, then drop the pending tag. Safe to repeat after a crash.
    async fn finish_pending(
        &self,
        lv: &LogicalVolume,
        source: &LogicalVolume,
        size: u64,
    ) -> Result<()> {
        let name = LvName::new(&lv.name)
            .map_err(|e| ProviderError::internal("unexpected LV name").with_source(e))?;
        if lv.size < size {
            self.lvm
                .extend(&name, size)
                .await
                .map_err(|e| lvm_error(format!("growing new volume {name} to {size} bytes"), e))?;
        }
        let shares_blocks = lv.is_thin() && lv.origin.as_deref() == Some(source.name.as_str());
        if !shares_blocks {
            self.copy_blocks(source, &name).await?;
        }
        let pending = names::pending_tag().map_err(csi_name_error)?;
        self.lvm
            .retag(&name, &[], &[pending])
            .await
            .map_err(|e| lvm_error(format!("marking volume {name} complete"), e))
    }

    async fn copy_blocks(&self, source: &LogicalVolume, target: &LvName) -> Result<()> {
        let source_name = LvName::new(&source.name)
            .map_err(|e| ProviderError::internal("unexpected LV name").with_source(e))?;
        let mut paths = Vec::new();
        for (name, active) in [(&source_name, source.attr.is_active()), (target, false)] {
            // A classic snapshot is active whenever its origin is; asking
            // lvm to activate it again would prompt about the origin.
            if !active {
                self.lvm
                    .activate(name)
                    .await
                    .map_err(|e| lvm_error(format!("activating {name} for copying"), e))?;
            }
            let path = device::device_path(&self.settings.raw.device_root, self.lvm.vg(), name);
            device::wait_for(&path, self.settings.device_wait)
                .await
                .map_err(|e| device_error(format!("waiting for the device of {name}"), e))?;
            paths.push(path);
        }
        let bytes = visible_size(source);
        tracing::info!(from = %source_name, to = %target, bytes, "copying volume contents");
        device::copy(&paths[0], &paths[1], bytes)
            .await
            .map_err(|e| device_error(format!("copying {source_name} into {target}"), e))
    }

    async fn find_volume(&self, lv_name: &LvName) -> Result<(Vec<LogicalVolume>, usize)> {
        let lvs = self.list_all().await?;
        let index = lvs
            .iter()
            .position(|lv| lv.name == lv_name.as_str() && names::ownership(lv).is_some())
            .ok_or_else(|| not_found(ObjectKind::Volume, lv_name.as_str()))?;
        Ok((lvs, index))
    }

    fn check_capabilities(req: &CreateVolumeRequest) -> Result<()> {
        for cap in &req.capabilities {
            let mode = cap.access_mode;
            if mode != AccessMode::Unspecified as i32
                && !ACCESS_MODES.iter().any(|m| *m as i32 == mode)
            {
                let name = AccessMode::try_from(mode)
                    .map(|m| m.as_str_name())
                    .unwrap_or("unknown");
                return Err(ProviderError::invalid_argument(format!(
                    "access mode {name} is not supported: local LVM volumes live on one node"
                )));
            }
        }
        Ok(())
    }

    /// An existing LV of the requested name: the same volume (returned,
    /// finishing it if a crash interrupted it) or a conflict.
    async fn existing_volume(
        &self,
        req: &CreateVolumeRequest,
        lvs: &[LogicalVolume],
        lv: &LogicalVolume,
        wanted_source: Option<&LvName>,
    ) -> Result<Volume> {
        let conflict = |why: String| {
            ProviderError::already_exists(format!(
                "volume {:?} (LV {}) already exists {why}",
                req.name, lv.name
            ))
        };
        let Some(own) = names::ownership(lv) else {
            return Err(conflict("and was not created by omnidisk".into()));
        };
        if own.csi_name.as_deref() != Some(req.name.as_str()) {
            return Err(conflict(format!(
                "for another name ({:?})",
                own.csi_name.as_deref().unwrap_or("unreadable")
            )));
        }
        if own.source.as_deref() != wanted_source.map(LvName::as_str) {
            return Err(conflict(format!(
                "with another source ({})",
                own.source.as_deref().unwrap_or("none")
            )));
        }
        let required = to_u64("required_bytes", req.required_bytes)?;
        let limit = to_u64("limit_bytes", req.limit_bytes)?;
        if own.pending {
            let source = lvs
                .iter()
                .find(|s| Some(s.name.as_str()) == own.source.as_deref())
                .ok_or_else(|| {
                    ProviderError::not_found(format!(
                        "source {} of unfinished volume {} no longer exists",
                        own.source.as_deref().unwrap_or("(none)"),
                        lv.name
                    ))
                })?;
            let extent = self.extent_size().await?;
            let size = Self::new_volume_size(required, limit, Some(visible_size(source)), extent)?
                .max(lv.size);
            self.finish_pending(lv, source, size).await?;
            let lvs = self.list_all().await?;
            let (lv, own) = Self::ours(&lvs, ObjectKind::Volume, &lv.name)
                .ok_or_else(|| not_found(ObjectKind::Volume, &lv.name))?;
            return Ok(self.volume_of(lv, &own));
        }
        if lv.size < required || (limit > 0 && lv.size > limit) {
            return Err(conflict(format!(
                "with {} bytes, outside the requested range {required}..{}",
                lv.size,
                if limit > 0 {
                    limit.to_string()
                } else {
                    "".into()
                }
            )));
        }
        Ok(self.volume_of(lv, &own))
    }
}

/// What may still be allocated in a thin pool: its size times the
/// overprovision ratio, less the virtual sizes already handed out (every
/// thin LV in the pool: our volumes and snapshots and anybody else's) and
/// the spare. It is also capped at the pool's free data space times the ratio:
/// overprovisioning promises space that writes may claim later, but an
/// almost full pool must stop taking new volumes whatever their sizes add
/// up to, or they would fail on their first writes.
fn thin_headroom(lvs: &[LogicalVolume], pool: &LogicalVolume, ratio: f64, spare: u64) -> u64 {
    let virtual_used: u64 = lvs
        .iter()
        .filter(|lv| lv.pool_lv.as_deref() == Some(pool.name.as_str()))
        .map(|lv| lv.size)
        .sum();
    let promised = (pool.size as f64 * ratio) as u64;
    let by_promise = promised.saturating_sub(virtual_used);
    let used_fraction = pool.data_percent.unwrap_or(0.0).clamp(0.0, 100.0) / 100.0;
    let free_data = (pool.size as f64 * (1.0 - used_fraction)) as u64;
    let by_data = (free_data as f64 * ratio) as u64;
    by_promise.min(by_data).saturating_sub(spare)
}

/// Why an LV is abnormal, from its attributes (lvs(8) `lv_attr` and
/// `lv_health_status`), its thin pool's, and our pending tag.
fn condition(lvs: &[LogicalVolume], lv: &LogicalVolume, own: &Ownership) -> Option<String> {
    let mut problems = Vec::new();
    match lv.attr.health {
        'p' => problems.push("partial: a physical volume of the LV is missing".to_owned()),
        'F' => problems.push("failed".to_owned()),
        'D' => problems.push("its thin pool is out of data space".to_owned()),
        'M' => problems.push("its thin pool metadata is read-only".to_owned()),
        'r' => problems.push("refresh needed".to_owned()),
        'm' => problems.push("RAID mismatches found".to_owned()),
        _ => {}
    }
    if !lv.health_status.is_empty() && problems.is_empty() {
        problems.push(format!("health status {:?}", lv.health_status));
    }
    if let Some(pool) = lv
        .pool_lv
        .as_deref()
        .and_then(|p| lvs.iter().find(|x| x.name == p))
    {
        if matches!(pool.attr.health, 'F' | 'D' | 'M') || !pool.health_status.is_empty() {
            problems.push(format!(
                "thin pool {} is unhealthy (attr {}, {:?})",
                pool.name, pool.attr_text, pool.health_status
            ));
        }
    }
    if !lv.attr.is_active() && !lv.attr.state_unknown() {
        problems.push("the logical volume is not active".to_owned());
    }
    if own.pending {
        problems.push("its creation from a source is not finished".to_owned());
    }
    if problems.is_empty() {
        None
    } else {
        Some(problems.join("; "))
    }
}

#[async_trait]
impl Provider for LvmProvider {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            kind: KIND.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            attach_required: false,
            node_local: true,
            snapshots: true,
            clone: true,
            expand: true,
            modify: false,
            list_volumes: true,
            capacity: true,
            block: true,
            ephemeral: true,
            published_nodes: false,
            access_modes: ACCESS_MODES.iter().map(|m| *m as i32).collect(),
            group_snapshots: false,
        }
    }

    async fn create_volume(&self, req: CreateVolumeRequest) -> Result<Volume> {
        Params::new("local-lvm StorageClass parameter", &req.parameters).finish()?;
        Self::check_capabilities(&req)?;
        if !req.requisite.is_empty() && !req.requisite.iter().any(|t| self.allows_this_node(t)) {
            return Err(ProviderError::resource_exhausted(format!(
                "instance {} can only place volumes on node {:?} ({TOPOLOGY_KEY}), which the \
                 requisite topologies do not include",
                self.instance, self.node_name
            )));
        }
        let name = names::lv_name_for(ObjectKind::Volume, &req.name).map_err(csi_name_error)?;
        let required = to_u64("required_bytes", req.required_bytes)?;
        let limit = to_u64("limit_bytes", req.limit_bytes)?;
        if limit > 0 && required > limit {
            return Err(ProviderError::out_of_range(format!(
                "required_bytes {required} exceeds limit_bytes {limit}"
            )));
        }
        let source = match &req.source {
            None => None,
            Some(create_volume_request::Source::SourceSnapshotId(id)) => Some(
                names::parse_id(ObjectKind::Snapshot, id)
                    .ok_or_else(|| not_found(ObjectKind::Snapshot, id))?,
            ),
            Some(create_volume_request::Source::SourceVolumeId(id)) => Some(
                names::parse_id(ObjectKind::Volume, id)
                    .ok_or_else(|| not_found(ObjectKind::Volume, id))?,
            ),
        };

        let lvs = self.list_all().await?;
        if let Some(existing) = lvs.iter().find(|lv| lv.name == name.as_str()) {
            return self
                .existing_volume(&req, &lvs, existing, source.as_ref())
                .await;
        }

        let source_lv = match &source {
            None => None,
            Some(src) => {
                let kind = names::kind_of_id(src.as_str()).unwrap_or(ObjectKind::Volume);
                let lv = Self::ours(&lvs, kind, src.as_str())
                    .map(|(lv, _)| lv)
                    .ok_or_else(|| not_found(kind, src.as_str()))?;
                Some(lv)
            }
        };
        let extent = self.extent_size().await?;
        let size = Self::new_volume_size(required, limit, source_lv.map(visible_size), extent)?;
        let headroom = self.headroom(&lvs).await?;
        if size > headroom {
            return Err(ProviderError::resource_exhausted(format!(
                "volume group {} cannot take a {size}-byte volume: {headroom} bytes available \
                 (after a spare of {} bytes)",
                self.lvm.vg(),
                self.settings.spare_bytes
            )));
        }

        let plain_allocation = match &self.settings.thin {
            None => Allocation::Thick { bytes: size },
            Some((pool, _)) => Allocation::Thin {
                pool: pool.clone(),
                bytes: size,
            },
        };
        let (allocation, pending) = match source_lv {
            None => (plain_allocation, false),
            Some(src) if src.is_thin() => (
                Allocation::ThinSnapshot {
                    origin: source
                        .clone()
                        .ok_or_else(|| ProviderError::internal("source lost"))?,
                    skip_activation: false,
                },
                true,
            ),
            Some(_) => (plain_allocation, true),
        };
        let tags = names::tags_for(&self.instance, &req.name, source.as_ref(), pending)
            .map_err(csi_name_error)?;
        tracing::info!(volume = %name, csi_name = %req.name, size, ?allocation, "creating volume");
        self.lvm
            .create(&name, &allocation, &tags)
            .await
            .map_err(|e| lvm_error(format!("creating volume {name} ({size} bytes)"), e))?;

        let lvs = self.list_all().await?;
        let created = lvs
            .iter()
            .find(|lv| lv.name == name.as_str())
            .ok_or_else(|| {
                ProviderError::internal(format!("volume {name} vanished after lvcreate"))
            })?;
        if let Some(src) = source_lv {
            self.finish_pending(created, src, size).await?;
        }
        let lvs = self.list_all().await?;
        let (lv, own) = Self::ours(&lvs, ObjectKind::Volume, name.as_str()).ok_or_else(|| {
            ProviderError::internal(format!("volume {name} vanished after lvcreate"))
        })?;
        Ok(self.volume_of(lv, &own))
    }

    async fn delete_volume(&self, req: VolumeRef) -> Result<()> {
        let Some(name) = names::parse_id(ObjectKind::Volume, &req.volume_id) else {
            return Ok(());
        };
        let lvs = self.list_all().await?;
        let Some(lv) = lvs.iter().find(|lv| lv.name == name.as_str()) else {
            return Ok(());
        };
        if names::ownership(lv).is_none() {
            return Err(ProviderError::failed_precondition(format!(
                "LV {name} was not created by omnidisk; not deleting it"
            )));
        }
        if lv.attr.is_classic_origin() {
            let snaps: Vec<&str> = lvs
                .iter()
                .filter(|s| s.origin.as_deref() == Some(name.as_str()))
                .map(|s| s.name.as_str())
                .collect();
            return Err(ProviderError::failed_precondition(format!(
                "volume {name} has snapshots ({}); delete them first",
                snaps.join(", ")
            )));
        }
        tracing::info!(volume = %name, "deleting volume");
        match self.lvm.remove(&name).await {
            Ok(()) | Err(LvmError::NotFound { .. }) => Ok(()),
            Err(e) => Err(lvm_error(format!("deleting volume {name}"), e)),
        }
    }

    async fn get_volume(&self, req: VolumeRef) -> Result<VolumeStatus> {
        let lvs = self.list_all().await?;
        let (lv, own) = Self::ours(&lvs, ObjectKind::Volume, &req.volume_id)
            .ok_or_else(|| not_found(ObjectKind::Volume, &req.volume_id))?;
        Ok(self.status_of(&lvs, lv, &own))
    }

    async fn list_volumes(&self, req: ListRequest) -> Result<ListVolumesResponse> {
        let lvs = self.list_all().await?;
        let items: Vec<(String, VolumeStatus)> = lvs
            .iter()
            .filter_map(|lv| {
                Self::ours(&lvs, ObjectKind::Volume, &lv.name)
                    .map(|(lv, own)| (lv.name.clone(), self.status_of(&lvs, lv, &own)))
            })
            .collect();
        let (entries, next_token) = page(items, req.max_entries, &req.starting_token)?;
        Ok(ListVolumesResponse {
            entries,
            next_token,
        })
    }

    async fn expand_volume(&self, req: ExpandVolumeRequest) -> Result<ExpandVolumeResponse> {
        let name = names::parse_id(ObjectKind::Volume, &req.volume_id)
            .ok_or_else(|| not_found(ObjectKind::Volume, &req.volume_id))?;
        let required = to_u64("required_bytes", req.required_bytes)?;
        let limit = to_u64("limit_bytes", req.limit_bytes)?;
        let (lvs, index) = self.find_volume(&name).await?;
        let lv = &lvs[index];
        let node_expansion_required = req
            .capability
            .as_ref()
            .is_none_or(|c| c.access_type != AccessType::Block as i32);
        let extent = self.extent_size().await?;
        let target = round_up(required, extent)?;
        if target <= lv.size {
            return Ok(ExpandVolumeResponse {
                capacity_bytes: to_i64(lv.size),
                node_expansion_required,
            });
        }
        if limit > 0 && target > limit {
            return Err(ProviderError::out_of_range(format!(
                "{required} bytes rounded up to whole {extent}-byte extents is {target}, more \
                 than the limit of {limit} bytes"
            )));
        }
        if lv.attr.is_classic_origin() {
            return Err(ProviderError::failed_precondition(format!(
                "volume {name} has classic (thick) snapshots, and lvm cannot grow the origin of \
                 an active snapshot; delete its snapshots first"
            )));
        }
        let headroom = self.headroom(&lvs).await?;
        if target - lv.size > headroom {
            return Err(ProviderError::resource_exhausted(format!(
                "volume group {} cannot grow {name} by {} bytes: {headroom} bytes available",
                self.lvm.vg(),
                target - lv.size
            )));
        }
        tracing::info!(volume = %name, from = lv.size, to = target, "expanding volume");
        self.lvm
            .extend(&name, target)
            .await
            .map_err(|e| lvm_error(format!("growing volume {name} to {target} bytes"), e))?;
        Ok(ExpandVolumeResponse {
            capacity_bytes: to_i64(target),
            node_expansion_required,
        })
    }

    async fn create_snapshot(&self, req: CreateSnapshotRequest) -> Result<Snapshot> {
        Params::new("local-lvm VolumeSnapshotClass parameter", &req.parameters).finish()?;
        let name = names::lv_name_for(ObjectKind::Snapshot, &req.name).map_err(csi_name_error)?;
        let source = names::parse_id(ObjectKind::Volume, &req.source_volume_id)
            .ok_or_else(|| not_found(ObjectKind::Volume, &req.source_volume_id))?;
        let lvs = self.list_all().await?;
        if let Some(existing) = lvs.iter().find(|lv| lv.name == name.as_str()) {
            let own = names::ownership(existing);
            let same = own.as_ref().is_some_and(|o| {
                o.csi_name.as_deref() == Some(req.name.as_str())
                    && o.source.as_deref() == Some(source.as_str())
            });
            return match (same, own) {
                (true, Some(own)) => Ok(Self::snapshot_of(existing, &own)),
                _ => Err(ProviderError::already_exists(format!(
                    "snapshot {:?} (LV {name}) already exists for another source or name",
                    req.name
                ))),
            };
        }
        let (origin, _) = Self::ours(&lvs, ObjectKind::Volume, source.as_str())
            .ok_or_else(|| not_found(ObjectKind::Volume, source.as_str()))?;
        let allocation = if origin.is_thin() {
            // Thin snapshots skip activation (lvm's default): they are
            // backups, and inactive ones cost no device-mapper table.
            Allocation::ThinSnapshot {
                origin: source.clone(),
                skip_activation: true,
            }
        } else {
            // COW area = origin size: the snapshot can never overflow.
            let bytes = origin.size;
            let vg = self
                .lvm
                .group()
                .await
                .map_err(|e| lvm_error(format!("reading volume group {}", self.lvm.vg()), e))?;
            let available = vg.free.saturating_sub(self.settings.spare_bytes);
            if bytes > available {
                return Err(ProviderError::resource_exhausted(format!(
                    "a thick snapshot of {source} needs {bytes} bytes of copy-on-write space; \
                     {available} bytes are available"
                )));
            }
            Allocation::ClassicSnapshot {
                origin: source.clone(),
                bytes,
            }
        };
        let tags = names::tags_for(&self.instance, &req.name, Some(&source), false)
            .map_err(csi_name_error)?;
        tracing::info!(snapshot = %name, source = %source, ?allocation, "creating snapshot");
        self.lvm
            .create(&name, &allocation, &tags)
            .await
            .map_err(|e| lvm_error(format!("creating snapshot {name} of {source}"), e))?;
        let lvs = self.list_all().await?;
        let (lv, own) = Self::ours(&lvs, ObjectKind::Snapshot, name.as_str()).ok_or_else(|| {
            ProviderError::internal(format!("snapshot {name} vanished after lvcreate"))
        })?;
        Ok(Self::snapshot_of(lv, &own))
    }

    async fn delete_snapshot(&self, req: SnapshotRef) -> Result<()> {
        let Some(name) = names::parse_id(ObjectKind::Snapshot, &req.snapshot_id) else {
            return Ok(());
        };
        let lvs = self.list_all().await?;
        let Some(lv) = lvs.iter().find(|lv| lv.name == name.as_str()) else {
            return Ok(());
        };
        if names::ownership(lv).is_none() {
            return Err(ProviderError::failed_precondition(format!(
                "LV {name} was not created by omnidisk; not deleting it"
            )));
        }
        tracing::info!(snapshot = %name, "deleting snapshot");
        match self.lvm.remove(&name).await {
            Ok(()) | Err(LvmError::NotFound { .. }) => Ok(()),
            Err(e) => Err(lvm_error(format!("deleting snapshot {name}"), e)),
        }
    }

    async fn get_snapshot(&self, req: SnapshotRef) -> Result<Snapshot> {
        let lvs = self.list_all().await?;
        let (lv, own) = Self::ours(&lvs, ObjectKind::Snapshot, &req.snapshot_id)
            .ok_or_else(|| not_found(ObjectKind::Snapshot, &req.snapshot_id))?;
        Ok(Self::snapshot_of(lv, &own))
    }

    async fn list_snapshots(&self, req: ListSnapshotsRequest) -> Result<ListSnapshotsResponse> {
        let lvs = self.list_all().await?;
        let items: Vec<(String, Snapshot)> = lvs
            .iter()
            .filter_map(|lv| Self::ours(&lvs, ObjectKind::Snapshot, &lv.name))
            .map(|(lv, own)| (lv.name.clone(), Self::snapshot_of(lv, &own)))
            .filter(|(_, s)| req.snapshot_id.is_empty() || s.id == req.snapshot_id)
            .filter(|(_, s)| {
                req.source_volume_id.is_empty() || s.source_volume_id == req.source_volume_id
            })
            .collect();
        let (entries, next_token) = page(items, req.max_entries, &req.starting_token)?;
        Ok(ListSnapshotsResponse {
            entries,
            next_token,
        })
    }

    async fn get_capacity(&self, req: CapacityRequest) -> Result<CapacityResponse> {
        Params::new("local-lvm StorageClass parameter", &req.parameters).finish()?;
        if let Some(topology) = &req.topology {
            if !self.allows_this_node(topology) {
                return Ok(CapacityResponse::default());
            }
        }
        let lvs = self.list_all().await?;
        let (available, total) = self.space(&lvs).await?;
        let available = to_i64(available);
        Ok(CapacityResponse {
            available_bytes: available,
            maximum_volume_size: available,
            minimum_volume_size: 0,
            total_bytes: to_i64(total),
        })
    }

    async fn node_info(&self) -> Result<NodeInfo> {
        Ok(NodeInfo {
            node_id: self.node_name.clone(),
            topology: Some(self.topology()),
            max_volumes: 0,
        })
    }

    async fn find_device(&self, req: FindDeviceRequest) -> Result<FindDeviceResponse> {
        let name = names::parse_id(ObjectKind::Volume, &req.volume_id)
            .ok_or_else(|| not_found(ObjectKind::Volume, &req.volume_id))?;
        let (lvs, index) = self.find_volume(&name).await?;
        if !lvs[index].attr.is_active() {
            self.lvm
                .activate(&name)
                .await
                .map_err(|e| lvm_error(format!("activating volume {name}"), e))?;
        }
        let path = device::device_path(&self.settings.raw.device_root, self.lvm.vg(), &name);
        device::wait_for(&path, self.settings.device_wait)
            .await
            .map_err(|e| device_error(format!("waiting for the device of volume {name}"), e))?;
        let device_path = path
            .to_str()
            .ok_or_else(|| {
                ProviderError::internal(format!("device path {path:?} is not valid UTF-8"))
            })?
            .to_owned();
        Ok(FindDeviceResponse { device_path })
    }

    async fn volume_condition(&self, req: VolumeRef) -> Result<VolumeCondition> {
        let lvs = self.list_all().await?;
        let (lv, own) = Self::ours(&lvs, ObjectKind::Volume, &req.volume_id)
            .ok_or_else(|| not_found(ObjectKind::Volume, &req.volume_id))?;
        Ok(match condition(&lvs, lv, &own) {
            Some(message) => VolumeCondition {
                abnormal: true,
                message,
            },
            None => VolumeCondition {
                abnormal: false,
                message: "healthy".into(),
            },
        })
    }
}

#[cfg(test)]
#[path = "provider_tests.rs"]
mod tests;
