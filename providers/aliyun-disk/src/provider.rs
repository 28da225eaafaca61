//! The `aliyun-disk` provider: CSI volume operations in ECS terms.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use omnidisk_provider_api::types::*;
use omnidisk_provider_api::{ErrorKind, Provider, ProviderError, Result};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::batch::DiskBatcher;
use crate::client::{
    CreateDiskArgs, CreateSnapshotArgs, Disk, DiskQuery, EcsApi, ModifySpecArgs, SnapshotQuery,
};
use crate::device::{DeviceError, DeviceFinder};
use crate::errors::ApiError;
use crate::metadata::{MetadataClient, default_max_volumes};
use crate::params::{Category, CreateParams, ModifyParams, PerformanceLevel, SnapshotParams};
use crate::settings::AliyunSettings;

/// The well-known Kubernetes zone label. Nodes report it (so the
/// scheduler's zone spreading applies) and create requirements are read
/// from it, but only for zones of this instance's region: other providers
/// on the node report their own cloud's zones under the same key.
pub const ZONE_KEY: &str = "topology.kubernetes.io/zone";
/// This provider's own zone key, the one Alibaba Cloud's CSI disk plugin
/// uses (so volumes provisioned by it keep matching nodes): read first from
/// create requirements, reported by nodes, and the key of every volume's
/// accessible topology.
pub const DISK_ZONE_KEY: &str = "topology.diskplugin.csi.alibabacloud.com/zone";
/// Tag holding the CSI volume name (for finding a disk again after a restart).
pub const VOLUME_NAME_TAG: &str = "omnidisk.csi.dev/volume-name";
/// Tag holding the CSI snapshot name.
pub const SNAPSHOT_NAME_TAG: &str = "omnidisk.csi.dev/snapshot-name";
/// Tag holding the instance name, for listing this instance's disks.
pub const INSTANCE_TAG: &str = "omnidisk.csi.dev/instance";
/// Publish-context key carrying the disk's serial.
pub const SERIAL_CONTEXT_KEY: &str = "serial";
/// Most instances ECS attaches one multi-attach disk to.
pub const MULTI_ATTACH_LIMIT: usize = 16;
/// Longest ClientToken ECS accepts.
const MAX_CLIENT_TOKEN: usize = 64;
/// Longest tag value ECS accepts.
const MAX_TAG_VALUE: usize = 128;
/// Create attempts with fresh tokens after a token turned out burned.
const MAX_TOKEN_GENERATIONS: u32 = 3;

/// Error codes meaning "this category cannot be had here, try the next one".
const CATEGORY_UNAVAILABLE: &[&str] = &[
    "InvalidDataDiskCategory.NotSupported",
    "InvalidDiskCategory.NotSupported",
    "InvalidDiskCategory.ValueUnauthorized",
    "InvalidDiskSize.NotSupported",
    "OperationDenied.NoStock",
    "Zone.NotOnSale",
];

/// Who this node is.
#[derive(Debug, Clone)]
struct NodeIdentity {
    instance_id: String,
    zone_id: String,
    max_volumes: i64,
}

/// Serializes attach/detach per ECS instance (ECS refuses concurrent ones
/// with `InvalidOperation.Conflict`), without serializing instances.
#[derive(Debug, Default)]
struct InstanceLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl InstanceLocks {
    fn get(&self, instance: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(instance.to_owned()).or_default())
    }
}

/// An `aliyun-disk` provider instance.
pub struct AliyunDiskProvider {
    instance: String,
    settings: AliyunSettings,
    api: Arc<dyn EcsApi>,
    batcher: Arc<DiskBatcher>,
    locks: InstanceLocks,
    metadata: Option<MetadataClient>,
    node: OnceCell<NodeIdentity>,
}

impl std::fmt::Debug for AliyunDiskProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AliyunDiskProvider")
            .field("instance", &self.instance)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What a wait step decided.
enum Step {
    Done,
    Wait,
    Fail(ProviderError),
}

/// The largest data disk of any category, in GiB.
const MAX_DISK_GIB: i64 = 65_536;

/// `bytes` rounded up to whole GiB (at least 1), with checked arithmetic:
/// a size near `i64::MAX` is `OutOfRange`, never an overflow.
fn gib_ceil(bytes: i64) -> Result<i64> {
    if bytes <= 0 {
        return Ok(1);
    }
    bytes.checked_add(GIB - 1).map(|b| b / GIB).ok_or_else(|| {
        ProviderError::out_of_range(format!(
            "{bytes} bytes is beyond any ECS disk (at most {MAX_DISK_GIB} GiB)"
        ))
    })
}

/// `gib` in bytes; `OutOfRange` when that does not fit an i64.
fn gib_bytes(gib: i64) -> Result<i64> {
    gib.checked_mul(GIB).ok_or_else(|| {
        ProviderError::out_of_range(format!("{gib} GiB does not fit in a byte count"))
    })
}

/// Whether `zone` is an ECS zone ID of `region`: the region ID followed by
/// `-<letters/digits>` (`cn-hangzhou-b`) or by letters (`ap-southeast-1a`).
pub fn zone_in_region(zone: &str, region: &str) -> bool {
    let Some(rest) = zone.strip_prefix(region).filter(|_| !region.is_empty()) else {
        return false;
    };
    match rest.strip_prefix('-') {
        Some(suffix) => {
            !suffix.is_empty()
                && suffix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        }
        None => !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase()),
    }
}

/// The zone one topology segment set names for this region: its
/// [`DISK_ZONE_KEY`] value, else its [`ZONE_KEY`] value, each only when it
/// is a zone of `region`. Segments of other clouds yield nothing.
fn zone_of(t: &Topology, region: &str) -> Option<String> {
    [DISK_ZONE_KEY, ZONE_KEY]
        .iter()
        .filter_map(|k| t.segments.get(*k))
        .find(|z| zone_in_region(z, region))
        .cloned()
}

fn describe_topologies(ts: &[Topology]) -> String {
    ts.iter()
        .map(|t| {
            let pairs: Vec<String> = t.segments.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{{{}}}", pairs.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The zone for a new disk in `region`. Requirements yield zones through
/// [`zone_of`]. The `zoneId` parameter wins when the requisite zones allow
/// it; then the first preferred zone that is also requisite (or any
/// preferred zone without requisite ones), then the first requisite zone,
/// then `default_zone`. Requisite topologies none of which names a zone of
/// the region are `ResourceExhausted`, naming the requirement.
pub fn choose_zone(
    requisite: &[Topology],
    preferred: &[Topology],
    region: &str,
    param_zone: Option<&str>,
    default_zone: &str,
) -> Result<String> {
    let allowed: Vec<String> = requisite
        .iter()
        .filter_map(|t| zone_of(t, region))
        .collect();
    if !requisite.is_empty() && allowed.is_empty() {
        return Err(ProviderError::resource_exhausted(format!(
            "no zone of region {region} satisfies the accessibility requirement [{}] (zones are read from {DISK_ZONE_KEY}, then {ZONE_KEY}, and must belong to the region)",
            describe_topologies(requisite)
        )));
    }
    let fits = |z: &str| requisite.is_empty() || allowed.iter().any(|a| a == z);
    if let Some(wanted) = param_zone.filter(|z| fits(z)) {
        return Ok(wanted.to_owned());
    }
    if let Some(zone) = preferred
        .iter()
        .filter_map(|t| zone_of(t, region))
        .find(|z| fits(z))
    {
        return Ok(zone);
    }
    if let Some(zone) = allowed.into_iter().next() {
        return Ok(zone);
    }
    if !default_zone.is_empty() {
        return Ok(default_zone.to_owned());
    }
    Err(ProviderError::invalid_argument(format!(
        "no zone: the request names no zone of region {region} (under {DISK_ZONE_KEY} or {ZONE_KEY}), and neither the `zoneId` parameter nor the instance's default_zone_id is set"
    )))
}

fn hashed(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

/// The ClientToken of a create attempt: readable when the name fits, hashed
/// when it does not (ECS caps tokens at 64 ASCII characters).
pub fn client_token(name: &str, variant: &str, generation: u32) -> String {
    let readable = if generation == 0 {
        format!("{name}-{variant}")
    } else {
        format!("{name}-{variant}-g{generation}")
    };
    if readable.len() <= MAX_CLIENT_TOKEN
        && readable
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        readable
    } else {
        let g = generation.to_string();
        format!("od-{}", &hashed(&[name, variant, &g])[..40])
    }
}

/// The name tag value: the name itself when it fits, else a hash.
pub fn name_tag_value(name: &str) -> String {
    if name.chars().count() <= MAX_TAG_VALUE {
        name.to_owned()
    } else {
        format!("sha256:{}", hashed(&[name]))
    }
}

/// A DiskName ECS accepts (2-128 characters, starting with a letter).
fn disk_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(120)
        .collect();
    if cleaned.starts_with(|c: char| c.is_ascii_alphabetic()) {
        cleaned
    } else {
        format!("od-{cleaned}")
    }
}

fn valid_instance_id(id: &str) -> bool {
    id.len() > 2
        && id.len() <= 64
        && id.starts_with("i-")
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn valid_disk_id(id: &str) -> bool {
    crate::device::serial_of(id).is_ok()
}

fn valid_snapshot_id(id: &str) -> bool {
    id.len() > 2
        && id.len() <= 64
        && id.starts_with("s-")
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn performance_of(disk: &Disk) -> Option<PerformanceLevel> {
    PerformanceLevel::parse(&disk.performance_level)
}

impl AliyunDiskProvider {
    /// A provider over `api`. `metadata` serves node identity.
    pub fn new(
        instance: &str,
        settings: AliyunSettings,
        api: Arc<dyn EcsApi>,
        metadata: Option<MetadataClient>,
    ) -> Self {
        let batcher = DiskBatcher::new(Arc::clone(&api), settings.waits.batch_window());
        Self {
            instance: instance.to_owned(),
            settings,
            api,
            batcher,
            locks: InstanceLocks::default(),
            metadata,
            node: OnceCell::new(),
        }
    }

    async fn describe(&self, disk_id: &str) -> Result<Option<Disk>> {
        self.batcher.describe(disk_id).await
    }

    async fn must_describe(&self, disk_id: &str) -> Result<Disk> {
        self.describe(disk_id)
            .await?
            .ok_or_else(|| ProviderError::not_found(format!("disk {disk_id} does not exist")))
    }

    /// Polls `disk_id` until `check` says done, fails, or `deadline` passes.
    async fn wait_disk(
        &self,
        disk_id: &str,
        deadline: Instant,
        what: &str,
        check: impl Fn(&Disk) -> Step,
    ) -> Result<Disk> {
        loop {
            let last_status = match self.describe(disk_id).await? {
                None => {
                    return Err(ProviderError::not_found(format!(
                        "disk {disk_id} disappeared while waiting for it to {what}"
                    )));
                }
                Some(disk) => match check(&disk) {
                    Step::Done => return Ok(disk),
                    Step::Fail(e) => return Err(e),
                    Step::Wait => disk.status,
                },
            };
            if Instant::now() + self.settings.waits.poll_interval() > deadline {
                return Err(ProviderError::new(
                    ErrorKind::DeadlineExceeded,
                    format!(
                        "disk {disk_id} did not {what} in time (last status {last_status}); the operation goes on in ECS and a repeat of this call picks it up"
                    ),
                ));
            }
            tokio::time::sleep(self.settings.waits.poll_interval()).await;
        }
    }

    fn volume_of(&self, disk: &Disk) -> Volume {
        let mut context = BTreeMap::new();
        context.insert("category".to_owned(), disk.category.clone());
        Volume {
            id: disk.disk_id.clone(),
            capacity_bytes: disk.size_gib.saturating_mul(GIB),
            accessible_topology: vec![Topology::from_pairs([(
                DISK_ZONE_KEY,
                disk.zone_id.as_str(),
            )])],
            context,
            source: (!disk.source_snapshot_id.is_empty())
                .then(|| volume::Source::SourceSnapshotId(disk.source_snapshot_id.clone())),
            multi_attach: disk.is_multi_attach(),
        }
    }

    fn status_of(&self, disk: &Disk) -> VolumeStatus {
        let abnormal = !matches!(
            disk.status.as_str(),
            "Available" | "In_use" | "Attaching" | "Detaching" | "Creating" | "ReIniting"
        );
        VolumeStatus {
            volume: Some(self.volume_of(disk)),
            published_nodes: if disk.status == "In_use"
                || (disk.is_multi_attach()
                    && matches!(disk.status.as_str(), "Attaching" | "Detaching"))
            {
                disk.attached_instances()
            } else {
                Vec::new()
            },
            abnormal,
            condition_message: if abnormal {
                format!("disk status is {}", disk.status)
            } else {
                String::new()
            },
        }
    }

    /// The zone for a new disk (see [`choose_zone`]).
    fn pick_zone(&self, req: &CreateVolumeRequest, params: &CreateParams) -> Result<String> {
        choose_zone(
            &req.requisite,
            &req.preferred,
            &self.settings.region_id,
            params.zone_id.as_deref(),
            &self.settings.default_zone_id,
        )
    }

    async fn find_by_name(&self, tag_value: &str) -> Result<Option<Disk>> {
        let page = self
            .api
            .describe_disks(&DiskQuery {
                tags: vec![(VOLUME_NAME_TAG.to_owned(), tag_value.to_owned())],
                max_results: Some(10),
                ..DiskQuery::default()
            })
            .await
            .map_err(|e| e.into_provider("looking up the disk by its name tag"))?;
        Ok(page.disks.into_iter().next())
    }

    /// Whether an existing disk satisfies the request.
    fn check_existing(
        &self,
        disk: &Disk,
        req: &CreateVolumeRequest,
        params: &CreateParams,
        required_gib: i64,
        limit_gib: i64,
        snapshot: Option<&str>,
    ) -> Result<()> {
        let category_ok =
            Category::parse(&disk.category).is_some_and(|c| params.categories.contains(&c));
        let size_ok =
            disk.size_gib >= required_gib && (limit_gib == 0 || disk.size_gib <= limit_gib);
        let source_ok = snapshot.unwrap_or("") == disk.source_snapshot_id;
        let multi_ok = disk.is_multi_attach() == params.multi_attach;
        if category_ok && size_ok && source_ok && multi_ok {
            Ok(())
        } else {
            Err(ProviderError::already_exists(format!(
                "volume {} exists as disk {} ({} GiB {}, source {:?}) which does not match this request",
                req.name, disk.disk_id, disk.size_gib, disk.category, disk.source_snapshot_id
            )))
        }
    }

    async fn wait_available(&self, disk_id: &str, deadline: Instant) -> Result<Disk> {
        self.wait_disk(disk_id, deadline, "become Available", |d| {
            match d.status.as_str() {
                "Available" | "In_use" | "Attaching" | "Detaching" => Step::Done,
                "Creating" | "ReIniting" => Step::Wait,
                other => Step::Fail(ProviderError::internal(format!(
                    "disk {} is {other} instead of Available",
                    d.disk_id
                ))),
            }
        })
        .await
    }

    async fn node_identity(&self) -> Result<&NodeIdentity> {
        self.node
            .get_or_try_init(|| async {
                let node = &self.settings.node;
                let metadata = || {
                    self.metadata.as_ref().ok_or_else(|| {
                        ProviderError::failed_precondition("no metadata service configured")
                    })
                };
                let meta_err = |what: &str, e: crate::metadata::MetadataError| {
                    ProviderError::new(
                        ErrorKind::Unavailable,
                        format!("cannot learn the node's {what}: set node.{what} or make the metadata service reachable"),
                    )
                    .with_source(e)
                };
                let instance_id = if node.instance_id.is_empty() {
                    metadata()?
                        .instance_id()
                        .await
                        .map_err(|e| meta_err("instance_id", e))?
                } else {
                    node.instance_id.clone()
                };
                if !valid_instance_id(&instance_id) {
                    return Err(ProviderError::invalid_argument(format!(
                        "{instance_id:?} is not an ECS instance ID"
                    )));
                }
                let zone_id = if node.zone_id.is_empty() {
                    metadata()?
                        .zone_id()
                        .await
                        .map_err(|e| meta_err("zone_id", e))?
                } else {
                    node.zone_id.clone()
                };
                let max_volumes = if node.max_volumes_per_node > 0 {
                    node.max_volumes_per_node
                } else {
                    let instance_type = match &self.metadata {
                        Some(m) => m.instance_type().await.unwrap_or_default(),
                        None => String::new(),
                    };
                    default_max_volumes(&instance_type, &node.max_volumes_by_family)
                };
                Ok(NodeIdentity {
                    instance_id,
                    zone_id,
                    max_volumes,
                })
            })
            .await
    }

    fn attach_context(disk: &Disk) -> AttachResponse {
        let mut publish_context = BTreeMap::new();
        let serial = crate::device::serial_of(&disk.disk_id).unwrap_or_default();
        publish_context.insert(SERIAL_CONTEXT_KEY.to_owned(), serial);
        AttachResponse { publish_context }
    }

    fn snapshot_of(s: &crate::client::Snapshot) -> Snapshot {
        Snapshot {
            id: s.snapshot_id.clone(),
            source_volume_id: s.source_disk_id.clone(),
            size_bytes: s.source_size_gib().saturating_mul(GIB),
            creation_time_seconds: s.creation_seconds(),
            creation_time_nanos: 0,
            ready_to_use: s.status == "accomplished",
            group_snapshot_id: String::new(),
        }
    }

    async fn describe_snapshot(&self, id: &str) -> Result<Option<crate::client::Snapshot>> {
        let page = self
            .api
            .describe_snapshots(&SnapshotQuery {
                snapshot_ids: vec![id.to_owned()],
                ..SnapshotQuery::default()
            })
            .await
            .map_err(|e| e.into_provider(format!("describing snapshot {id}")))?;
        Ok(page.snapshots.into_iter().find(|s| s.snapshot_id == id))
    }

    async fn find_snapshot_by_name(
        &self,
        tag_value: &str,
    ) -> Result<Option<crate::client::Snapshot>> {
        let page = self
            .api
            .describe_snapshots(&SnapshotQuery {
                tags: vec![(SNAPSHOT_NAME_TAG.to_owned(), tag_value.to_owned())],
                max_results: Some(10),
                ..SnapshotQuery::default()
            })
            .await
            .map_err(|e| e.into_provider("looking up the snapshot by its name tag"))?;
        Ok(page.snapshots.into_iter().next())
    }

    fn base_tags(
        &self,
        name_key: &str,
        name: &str,
        user: &[(String, String)],
    ) -> Vec<(String, String)> {
        let mut tags: BTreeMap<String, String> = self.settings.extra_tags.clone();
        for (k, v) in user {
            tags.insert(k.clone(), v.clone());
        }
        tags.insert(INSTANCE_TAG.to_owned(), self.instance.clone());
        tags.insert(name_key.to_owned(), name_tag_value(name));
        tags.into_iter().collect()
    }

    // The request, its parsed parameters and the derived sizing are all
    // needed together; a struct for one private call would only rename them.
    #[allow(clippy::too_many_arguments)]
    async fn create_attempts(
        &self,
        req: &CreateVolumeRequest,
        params: &CreateParams,
        zone: &str,
        required_gib: i64,
        limit_gib: i64,
        snapshot: Option<&str>,
        deadline: Instant,
    ) -> Result<Volume> {
        let mut plan = Vec::new();
        let mut skipped = Vec::new();
        for category in &params.categories {
            let level = (*category == Category::CloudEssd)
                .then_some(params.performance_level)
                .flatten();
            let (min, max) = category.size_range_gib(level);
            let size = required_gib.max(min);
            if size > max || (limit_gib > 0 && size > limit_gib) {
                skipped.push(format!("{category} takes {min}..={max} GiB"));
                continue;
            }
            plan.push((*category, level, size));
        }
        if plan.is_empty() {
            return Err(ProviderError::out_of_range(format!(
                "no category fits {required_gib} GiB{}: {}",
                if limit_gib > 0 {
                    format!(" (limit {limit_gib} GiB)")
                } else {
                    String::new()
                },
                skipped.join("; ")
            )));
        }
        let tag_value = name_tag_value(&req.name);
        let mut failures: Vec<(ErrorKind, String)> = Vec::new();
        for (category, level, size) in plan {
            let mut generation = 0;
            loop {
                let args = CreateDiskArgs {
                    zone_id: zone.to_owned(),
                    category: category.as_str().to_owned(),
                    size_gib: size,
                    disk_name: disk_name(&req.name),
                    description: format!("omnidisk volume {}", req.name),
                    snapshot_id: snapshot.map(str::to_owned),
                    performance_level: level.map(|l| l.as_str().to_owned()),
                    provisioned_iops: (category == Category::CloudAuto)
                        .then_some(params.provisioned_iops)
                        .flatten(),
                    bursting_enabled: (category == Category::CloudAuto)
                        .then_some(params.bursting_enabled)
                        .flatten(),
                    encrypted: params.encrypted,
                    kms_key_id: params.kms_key_id.clone(),
                    resource_group_id: params.resource_group_id.clone(),
                    tags: self.base_tags(VOLUME_NAME_TAG, &req.name, &params.tags),
                    client_token: client_token(&req.name, category.as_str(), generation),
                    multi_attach: params.multi_attach,
                };
                match self.api.create_disk(&args).await {
                    Ok(disk_id) => match self.describe(&disk_id).await? {
                        Some(_) => {
                            let disk = self.wait_available(&disk_id, deadline).await?;
                            return Ok(self.volume_of(&disk));
                        }
                        // The token answered with a disk that has since been
                        // deleted: it is burned, use a fresh one.
                        None if generation < MAX_TOKEN_GENERATIONS => generation += 1,
                        None => {
                            return Err(ProviderError::internal(format!(
                                "CreateDisk keeps answering with deleted disk {disk_id}"
                            )));
                        }
                    },
                    Err(e) if e.is("IdempotentParameterMismatch") => {
                        // Any disk an earlier request made carries the name
                        // tag; if there is none, the token is free to replace.
                        if let Some(disk) = self.find_by_name(&tag_value).await? {
                            self.check_existing(
                                &disk,
                                req,
                                params,
                                required_gib,
                                limit_gib,
                                snapshot,
                            )?;
                            let disk = self.wait_available(&disk.disk_id, deadline).await?;
                            return Ok(self.volume_of(&disk));
                        }
                        if generation >= MAX_TOKEN_GENERATIONS {
                            return Err(e.into_provider("creating the disk"));
                        }
                        generation += 1;
                    }
                    Err(e) if CATEGORY_UNAVAILABLE.iter().any(|c| e.is(c)) => {
                        tracing::info!(category = %category, zone, error = %e, "category unavailable; trying the next one");
                        failures
                            .push((e.kind(), format!("{category}: {}", e.code().unwrap_or("?"))));
                        break;
                    }
                    Err(e) => {
                        return Err(
                            e.into_provider(format!("creating a {category} disk in {zone}"))
                        );
                    }
                }
            }
        }
        let kind = if failures.iter().all(|(k, _)| *k == ErrorKind::OutOfRange) {
            ErrorKind::OutOfRange
        } else {
            ErrorKind::ResourceExhausted
        };
        Err(ProviderError::new(
            kind,
            format!(
                "no category could be created in {zone}: {}",
                failures
                    .into_iter()
                    .map(|(_, m)| m)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ))
    }

    /// Pages through `list`-style results with ECS's own token plus an
    /// offset, since ECS cannot return fewer than 10 items per page.
    fn split_token(token: &str) -> Result<(String, usize)> {
        if token.is_empty() {
            return Ok((String::new(), 0));
        }
        let (skip, ecs) = token
            .split_once('|')
            .ok_or_else(|| ProviderError::aborted_token_like(token))?;
        let skip = skip
            .parse()
            .map_err(|_| ProviderError::aborted_token_like(token))?;
        Ok((ecs.to_owned(), skip))
    }
}

trait AbortedToken {
    fn aborted_token_like(token: &str) -> ProviderError;
}

impl AbortedToken for ProviderError {
    fn aborted_token_like(token: &str) -> ProviderError {
        ProviderError::new(
            ErrorKind::Aborted,
            format!("invalid starting token {token:?}"),
        )
    }
}

fn page_of<T: Clone>(
    items: Vec<T>,
    skip: usize,
    max: usize,
    ecs_token: &str,
    ecs_next: &str,
) -> (Vec<T>, String) {
    let available = items.len().saturating_sub(skip);
    let take = available.min(max);
    let out: Vec<T> = items.into_iter().skip(skip).take(take).collect();
    let next = if take < available {
        format!("{}|{ecs_token}", skip + take)
    } else if !ecs_next.is_empty() {
        format!("0|{ecs_next}")
    } else {
        String::new()
    };
    (out, next)
}

fn api_err(doing: String) -> impl FnOnce(ApiError) -> ProviderError {
    move |e| e.into_provider(doing)
}

#[async_trait]
impl Provider for AliyunDiskProvider {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            kind: crate::KIND.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            attach_required: true,
            node_local: false,
            snapshots: true,
            clone: false,
            expand: true,
            modify: true,
            list_volumes: true,
            capacity: false,
            block: true,
            ephemeral: false,
            published_nodes: true,
            access_modes: vec![
                AccessMode::SingleNodeWriter as i32,
                AccessMode::SingleNodeReaderOnly as i32,
                AccessMode::SingleNodeSingleWriter as i32,
                AccessMode::SingleNodeMultiWriter as i32,
                // Multi-attach disks only (StorageClass `multiAttach`),
                // writers as raw block only: see `check_multi_node`.
                AccessMode::MultiNodeReaderOnly as i32,
                AccessMode::MultiNodeSingleWriter as i32,
                AccessMode::MultiNodeMultiWriter as i32,
            ],
            group_snapshots: false,
        }
    }

    async fn create_volume(&self, req: CreateVolumeRequest) -> Result<Volume> {
        if req.name.is_empty() {
            return Err(ProviderError::invalid_argument("the volume name is empty"));
        }
        let deadline = Instant::now() + self.settings.waits.create();
        let mut params = CreateParams::parse(
            &req.parameters,
            &self.settings.default_categories,
            &self.settings.resource_group_id,
        )?;
        if !req.mutable_parameters.is_empty() {
            params.apply(&ModifyParams::parse(&req.mutable_parameters)?)?;
        }
        omnidisk_provider_api::access::check_multi_node(&req.capabilities, params.multi_attach)?;
        let mut required_gib = gib_ceil(req.required_bytes)?;
        let limit_gib = if req.limit_bytes > 0 {
            req.limit_bytes / GIB
        } else {
            0
        };
        if req.limit_bytes > 0 && limit_gib < required_gib {
            return Err(ProviderError::out_of_range(format!(
                "{} bytes required but at most {} allowed, and disks come in whole GiB",
                req.required_bytes, req.limit_bytes
            )));
        }
        let snapshot = match &req.source {
            None => None,
            Some(create_volume_request::Source::SourceVolumeId(_)) => {
                return Err(ProviderError::unimplemented(
                    "aliyun-disk cannot clone volumes; snapshot and restore instead",
                ));
            }
            Some(create_volume_request::Source::SourceSnapshotId(id)) => {
                if !valid_snapshot_id(id) {
                    return Err(ProviderError::not_found(format!(
                        "snapshot {id:?} does not exist"
                    )));
                }
                let snap = self.describe_snapshot(id).await?.ok_or_else(|| {
                    ProviderError::not_found(format!("snapshot {id} does not exist"))
                })?;
                if snap.status != "accomplished" {
                    return Err(ProviderError::new(
                        ErrorKind::Unavailable,
                        format!(
                            "snapshot {id} is {} and cannot be restored yet",
                            snap.status
                        ),
                    ));
                }
                if limit_gib > 0 && snap.source_size_gib() > limit_gib {
                    return Err(ProviderError::out_of_range(format!(
                        "snapshot {id} is {} GiB, more than the limit of {limit_gib} GiB",
                        snap.source_size_gib()
                    )));
                }
                required_gib = required_gib.max(snap.source_size_gib());
                Some(id.clone())
            }
        };
        let zone = self.pick_zone(&req, &params)?;
        if let Some(disk) = self.find_by_name(&name_tag_value(&req.name)).await? {
            self.check_existing(
                &disk,
                &req,
                &params,
                required_gib,
                limit_gib,
                snapshot.as_deref(),
            )?;
            let disk = self.wait_available(&disk.disk_id, deadline).await?;
            return Ok(self.volume_of(&disk));
        }
        self.create_attempts(
            &req,
            &params,
            &zone,
            required_gib,
            limit_gib,
            snapshot.as_deref(),
            deadline,
        )
        .await
    }

    async fn delete_volume(&self, req: VolumeRef) -> Result<()> {
        if !valid_disk_id(&req.volume_id) {
            // Not an ID this provider issues, so it cannot exist.
            return Ok(());
        }
        let Some(disk) = self.describe(&req.volume_id).await? else {
            return Ok(());
        };
        match disk.status.as_str() {
            "In_use" => {
                return Err(ProviderError::failed_precondition(format!(
                    "disk {} is attached to {:?}",
                    disk.disk_id,
                    disk.attached_instances()
                )));
            }
            "Attaching" | "Detaching" | "Creating" | "ReIniting" => {
                return Err(ProviderError::new(
                    ErrorKind::Aborted,
                    format!(
                        "disk {} is {}; try again when it settles",
                        disk.disk_id, disk.status
                    ),
                ));
            }
            _ => {}
        }
        match self.api.delete_disk(&req.volume_id).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into_provider(format!("deleting disk {}", req.volume_id))),
        }
    }

    async fn get_volume(&self, req: VolumeRef) -> Result<VolumeStatus> {
        if !valid_disk_id(&req.volume_id) {
            return Err(ProviderError::not_found(format!(
                "disk {:?} does not exist",
                req.volume_id
            )));
        }
        let disk = self.must_describe(&req.volume_id).await?;
        Ok(self.status_of(&disk))
    }

    async fn list_volumes(&self, req: ListRequest) -> Result<ListVolumesResponse> {
        let (ecs_token, skip) = Self::split_token(&req.starting_token)?;
        let max = if req.max_entries <= 0 {
            100
        } else {
            req.max_entries as usize
        };
        let page = self
            .api
            .describe_disks(&DiskQuery {
                tags: vec![(INSTANCE_TAG.to_owned(), self.instance.clone())],
                max_results: Some(max.clamp(10, 100) as u32),
                next_token: (!ecs_token.is_empty()).then(|| ecs_token.clone()),
                ..DiskQuery::default()
            })
            .await
            .map_err(|e| {
                if e.is("InvalidParameter") && !ecs_token.is_empty() {
                    ProviderError::aborted_token_like(&req.starting_token)
                } else {
                    e.into_provider("listing disks")
                }
            })?;
        if skip > page.disks.len() {
            return Err(ProviderError::aborted_token_like(&req.starting_token));
        }
        let statuses: Vec<VolumeStatus> = page.disks.iter().map(|d| self.status_of(d)).collect();
        let (entries, next_token) = page_of(statuses, skip, max, &ecs_token, &page.next_token);
        Ok(ListVolumesResponse {
            entries,
            next_token,
        })
    }

    async fn expand_volume(&self, req: ExpandVolumeRequest) -> Result<ExpandVolumeResponse> {
        if !valid_disk_id(&req.volume_id) {
            return Err(ProviderError::not_found(format!(
                "disk {:?} does not exist",
                req.volume_id
            )));
        }
        let deadline = Instant::now() + self.settings.waits.modify();
        let new_gib = gib_ceil(req.required_bytes)?;
        if new_gib > MAX_DISK_GIB {
            return Err(ProviderError::out_of_range(format!(
                "{} bytes ({new_gib} GiB) is more than any ECS disk holds ({MAX_DISK_GIB} GiB)",
                req.required_bytes
            )));
        }
        if req.limit_bytes > 0 && gib_bytes(new_gib)? > req.limit_bytes {
            return Err(ProviderError::out_of_range(format!(
                "{} bytes required but at most {} allowed, and disks grow in whole GiB",
                req.required_bytes, req.limit_bytes
            )));
        }
        let block = req
            .capability
            .as_ref()
            .is_some_and(|c| c.access_type == AccessType::Block as i32);
        let disk = self.must_describe(&req.volume_id).await?;
        if disk.size_gib >= new_gib {
            return Ok(ExpandVolumeResponse {
                capacity_bytes: gib_bytes(disk.size_gib)?,
                node_expansion_required: !block,
            });
        }
        if let Some(category) = Category::parse(&disk.category) {
            let (_, max) = category.size_range_gib(performance_of(&disk));
            if new_gib > max {
                return Err(ProviderError::out_of_range(format!(
                    "{category} disks grow to at most {max} GiB, {new_gib} GiB asked"
                )));
            }
        }
        let token = client_token(&req.volume_id, &format!("resize{new_gib}"), 0);
        self.api
            .resize_disk(&req.volume_id, new_gib, &token)
            .await
            .map_err(api_err(format!(
                "resizing disk {} to {new_gib} GiB",
                req.volume_id
            )))?;
        let disk = self
            .wait_disk(
                &req.volume_id,
                deadline,
                &format!("grow to {new_gib} GiB"),
                |d| {
                    if d.size_gib >= new_gib {
                        Step::Done
                    } else {
                        Step::Wait
                    }
                },
            )
            .await?;
        Ok(ExpandVolumeResponse {
            capacity_bytes: gib_bytes(disk.size_gib)?,
            node_expansion_required: !block,
        })
    }

    async fn modify_volume(&self, req: ModifyVolumeRequest) -> Result<()> {
        let wanted = ModifyParams::parse(&req.mutable_parameters)?;
        if wanted.is_empty() {
            return Ok(());
        }
        if !valid_disk_id(&req.volume_id) {
            return Err(ProviderError::not_found(format!(
                "disk {:?} does not exist",
                req.volume_id
            )));
        }
        let deadline = Instant::now() + self.settings.waits.modify();
        let disk = self.must_describe(&req.volume_id).await?;
        let matches = |d: &Disk| {
            wanted.category.is_none_or(|c| d.category == c.as_str())
                && wanted
                    .performance_level
                    .is_none_or(|l| d.performance_level == l.as_str())
                && wanted
                    .provisioned_iops
                    .is_none_or(|i| d.provisioned_iops == i)
        };
        if matches(&disk) {
            return Ok(());
        }
        let target = wanted.category.or_else(|| Category::parse(&disk.category));
        if let Some(category) = target {
            let level = wanted.performance_level.or_else(|| performance_of(&disk));
            let (min, max) = category.size_range_gib(level);
            if disk.size_gib < min || disk.size_gib > max {
                return Err(ProviderError::out_of_range(format!(
                    "a {} GiB disk cannot become {category}{}: it takes {min}..={max} GiB",
                    disk.size_gib,
                    level
                        .map(|l| format!(" {}", l.as_str()))
                        .unwrap_or_default()
                )));
            }
        }
        let args = ModifySpecArgs {
            disk_id: req.volume_id.clone(),
            category: wanted.category.map(|c| c.as_str().to_owned()),
            performance_level: wanted.performance_level.map(|l| l.as_str().to_owned()),
            provisioned_iops: wanted.provisioned_iops,
        };
        self.api
            .modify_disk_spec(&args)
            .await
            .map_err(api_err(format!("modifying disk {}", req.volume_id)))?;
        self.wait_disk(
            &req.volume_id,
            deadline,
            "take its new specification",
            |d| {
                if matches(d) { Step::Done } else { Step::Wait }
            },
        )
        .await?;
        Ok(())
    }

    async fn attach_volume(&self, req: AttachRequest) -> Result<AttachResponse> {
        if !valid_instance_id(&req.node_id) {
            return Err(ProviderError::not_found(format!(
                "node {:?} is not an ECS instance ID",
                req.node_id
            )));
        }
        if !valid_disk_id(&req.volume_id) {
            return Err(ProviderError::not_found(format!(
                "disk {:?} does not exist",
                req.volume_id
            )));
        }
        let deadline = Instant::now() + self.settings.waits.attach();
        let node = req.node_id.as_str();
        let attached_here =
            |d: &Disk| d.status == "In_use" && d.attached_instances().iter().any(|i| i == node);
        loop {
            let disk = self.must_describe(&req.volume_id).await?;
            let holders = disk.attached_instances();
            if attached_here(&disk) {
                return Ok(Self::attach_context(&disk));
            }
            let multi = disk.is_multi_attach();
            if let Some(capability) = &req.capability
                && let Some(why) =
                    omnidisk_provider_api::access::multi_node_refusal(capability, multi)
            {
                return Err(ProviderError::failed_precondition(format!(
                    "disk {}: {why}",
                    disk.disk_id
                )));
            }
            if !holders.is_empty() && !holders.iter().any(|i| i == node) {
                if !multi {
                    return Err(ProviderError::failed_precondition(format!(
                        "disk {} is attached to {holders:?} and is not a multi-attach disk",
                        disk.disk_id
                    )));
                }
                if holders.len() >= MULTI_ATTACH_LIMIT {
                    return Err(ProviderError::resource_exhausted(format!(
                        "multi-attach disk {} is attached to {} instances already, the most ECS allows ({MULTI_ATTACH_LIMIT})",
                        disk.disk_id,
                        holders.len()
                    )));
                }
            }
            match disk.status.as_str() {
                "Available" => {}
                "In_use" if multi => {}
                "Attaching" | "Detaching" | "Creating" | "ReIniting" | "In_use" => {
                    self.wait_disk(&disk.disk_id, deadline, "settle", |d| {
                        if matches!(d.status.as_str(), "Available" | "In_use") {
                            Step::Done
                        } else {
                            Step::Wait
                        }
                    })
                    .await?;
                    continue;
                }
                other => {
                    return Err(ProviderError::failed_precondition(format!(
                        "disk {} is {other} and cannot be attached",
                        disk.disk_id
                    )));
                }
            }
            let lock = self.locks.get(node);
            let _guard = tokio::time::timeout_at(deadline, lock.lock())
                .await
                .map_err(|_| {
                    ProviderError::new(
                        ErrorKind::DeadlineExceeded,
                        format!("waited too long for other operations on instance {node}"),
                    )
                })?;
            // Someone may have moved the disk while this call waited for the
            // lock; AttachDisk itself then refuses, and the loop re-reads.
            match self.api.attach_disk(&req.volume_id, node).await {
                Ok(()) => {}
                Err(e)
                    if e.is("InvalidOperation.Conflict")
                        || e.is("IncorrectDiskStatus")
                        || e.is("InvalidDisk.InUse") =>
                {
                    // Another client is working on the instance or disk.
                    tracing::debug!(disk = %req.volume_id, node, error = %e, "attach conflicted; retrying");
                    if Instant::now() + self.settings.waits.poll_interval() > deadline {
                        return Err(
                            e.into_provider(format!("attaching disk {} to {node}", req.volume_id))
                        );
                    }
                    tokio::time::sleep(self.settings.waits.poll_interval()).await;
                    continue;
                }
                Err(e) => {
                    return Err(
                        e.into_provider(format!("attaching disk {} to {node}", req.volume_id))
                    );
                }
            }
            // Attaching takes seconds in ECS; asking at once only costs a call.
            tokio::time::sleep(self.settings.waits.poll_interval()).await;
            let disk = self
                .wait_disk(
                    &req.volume_id,
                    deadline,
                    &format!("attach to {node}"),
                    |d| {
                        if attached_here(d) {
                            Step::Done
                        } else if d.status == "Available" && d.attached_instances().is_empty() {
                            // ECS gave up on the attach; the caller may retry.
                            Step::Fail(ProviderError::new(
                                ErrorKind::Aborted,
                                format!("ECS did not complete attaching {} to {node}", d.disk_id),
                            ))
                        } else {
                            Step::Wait
                        }
                    },
                )
                .await?;
            return Ok(Self::attach_context(&disk));
        }
    }

    async fn detach_volume(&self, req: DetachRequest) -> Result<()> {
        if !valid_disk_id(&req.volume_id) {
            return Ok(());
        }
        let deadline = Instant::now() + self.settings.waits.detach();
        loop {
            let Some(disk) = self.describe(&req.volume_id).await? else {
                return Ok(());
            };
            let holders = disk.attached_instances();
            let node = if req.node_id.is_empty() {
                match holders.first() {
                    Some(h) => h.clone(),
                    None if disk.status == "Detaching" => String::new(),
                    None => return Ok(()),
                }
            } else {
                req.node_id.clone()
            };
            if !node.is_empty() && !holders.contains(&node) && disk.status != "Detaching" {
                return Ok(());
            }
            match disk.status.as_str() {
                "In_use" => {}
                "Attaching" | "Detaching" => {
                    self.wait_disk(&disk.disk_id, deadline, "settle", |d| {
                        if matches!(d.status.as_str(), "Available" | "In_use") {
                            Step::Done
                        } else {
                            Step::Wait
                        }
                    })
                    .await?;
                    continue;
                }
                _ => return Ok(()),
            }
            if !valid_instance_id(&node) {
                return Err(ProviderError::not_found(format!(
                    "node {node:?} is not an ECS instance ID"
                )));
            }
            let lock = self.locks.get(&node);
            let _guard = tokio::time::timeout_at(deadline, lock.lock())
                .await
                .map_err(|_| {
                    ProviderError::new(
                        ErrorKind::DeadlineExceeded,
                        format!("waited too long for other operations on instance {node}"),
                    )
                })?;
            let disk = self.must_describe(&req.volume_id).await?;
            if disk.status != "In_use" || !disk.attached_instances().contains(&node) {
                continue;
            }
            match self.api.detach_disk(&req.volume_id, &node).await {
                Ok(()) => {}
                Err(e)
                    if e.is("InvalidDisk.AlreadyDetached")
                        || e.is("DependencyViolation")
                        || e.is("InvalidDiskId.NotFound") =>
                {
                    return Ok(());
                }
                Err(e) if e.is("InvalidOperation.Conflict") || e.is("IncorrectDiskStatus") => {
                    if Instant::now() + self.settings.waits.poll_interval() > deadline {
                        return Err(e.into_provider(format!(
                            "detaching disk {} from {node}",
                            req.volume_id
                        )));
                    }
                    tokio::time::sleep(self.settings.waits.poll_interval()).await;
                    continue;
                }
                Err(e) => {
                    return Err(
                        e.into_provider(format!("detaching disk {} from {node}", req.volume_id))
                    );
                }
            }
            tokio::time::sleep(self.settings.waits.poll_interval()).await;
            let node_ref = node.as_str();
            match self
                .wait_disk(
                    &req.volume_id,
                    deadline,
                    &format!("detach from {node}"),
                    |d| {
                        if d.status == "Detaching"
                            || d.attached_instances().iter().any(|i| i == node_ref)
                        {
                            Step::Wait
                        } else {
                            Step::Done
                        }
                    },
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    async fn create_snapshot(&self, req: CreateSnapshotRequest) -> Result<Snapshot> {
        if req.name.is_empty() {
            return Err(ProviderError::invalid_argument(
                "the snapshot name is empty",
            ));
        }
        let params = SnapshotParams::parse(&req.parameters, &self.settings.resource_group_id)?;
        let tag_value = name_tag_value(&req.name);
        if let Some(existing) = self.find_snapshot_by_name(&tag_value).await? {
            if existing.source_disk_id != req.source_volume_id {
                return Err(ProviderError::already_exists(format!(
                    "snapshot {} exists for disk {}, not {}",
                    req.name, existing.source_disk_id, req.source_volume_id
                )));
            }
            return Ok(Self::snapshot_of(&existing));
        }
        if !valid_disk_id(&req.source_volume_id) {
            return Err(ProviderError::not_found(format!(
                "disk {:?} does not exist",
                req.source_volume_id
            )));
        }
        self.must_describe(&req.source_volume_id).await?;
        let mut generation = 0;
        let snapshot_id = loop {
            let args = CreateSnapshotArgs {
                disk_id: req.source_volume_id.clone(),
                snapshot_name: disk_name(&req.name),
                resource_group_id: params.resource_group_id.clone(),
                retention_days: params.retention_days,
                tags: self.base_tags(SNAPSHOT_NAME_TAG, &req.name, &params.tags),
                client_token: client_token(&req.name, "snap", generation),
            };
            match self.api.create_snapshot(&args).await {
                Ok(id) => match self.describe_snapshot(&id).await? {
                    Some(_) => break id,
                    None if generation < MAX_TOKEN_GENERATIONS => generation += 1,
                    None => {
                        return Err(ProviderError::internal(format!(
                            "CreateSnapshot keeps answering with deleted snapshot {id}"
                        )));
                    }
                },
                Err(e)
                    if e.is("IdempotentParameterMismatch")
                        && generation < MAX_TOKEN_GENERATIONS =>
                {
                    if let Some(existing) = self.find_snapshot_by_name(&tag_value).await? {
                        if existing.source_disk_id != req.source_volume_id {
                            return Err(ProviderError::already_exists(format!(
                                "snapshot {} exists for another disk",
                                req.name
                            )));
                        }
                        return Ok(Self::snapshot_of(&existing));
                    }
                    generation += 1;
                }
                Err(e) => {
                    return Err(
                        e.into_provider(format!("snapshotting disk {}", req.source_volume_id))
                    );
                }
            }
        };
        let snap = self.describe_snapshot(&snapshot_id).await?.ok_or_else(|| {
            ProviderError::internal(format!(
                "snapshot {snapshot_id} vanished right after creation"
            ))
        })?;
        Ok(Self::snapshot_of(&snap))
    }

    async fn delete_snapshot(&self, req: SnapshotRef) -> Result<()> {
        if !valid_snapshot_id(&req.snapshot_id) {
            return Ok(());
        }
        match self.api.delete_snapshot(&req.snapshot_id).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into_provider(format!("deleting snapshot {}", req.snapshot_id))),
        }
    }

    async fn get_snapshot(&self, req: SnapshotRef) -> Result<Snapshot> {
        if !valid_snapshot_id(&req.snapshot_id) {
            return Err(ProviderError::not_found(format!(
                "snapshot {:?} does not exist",
                req.snapshot_id
            )));
        }
        self.describe_snapshot(&req.snapshot_id)
            .await?
            .map(|s| Self::snapshot_of(&s))
            .ok_or_else(|| {
                ProviderError::not_found(format!("snapshot {} does not exist", req.snapshot_id))
            })
    }

    async fn list_snapshots(&self, req: ListSnapshotsRequest) -> Result<ListSnapshotsResponse> {
        if !req.snapshot_id.is_empty() {
            if !valid_snapshot_id(&req.snapshot_id) {
                return Ok(ListSnapshotsResponse::default());
            }
            let entries: Vec<Snapshot> = self
                .describe_snapshot(&req.snapshot_id)
                .await?
                .filter(|s| {
                    req.source_volume_id.is_empty() || s.source_disk_id == req.source_volume_id
                })
                .map(|s| Self::snapshot_of(&s))
                .into_iter()
                .collect();
            return Ok(ListSnapshotsResponse {
                entries,
                next_token: String::new(),
            });
        }
        let (ecs_token, skip) = Self::split_token(&req.starting_token)?;
        let max = if req.max_entries <= 0 {
            100
        } else {
            req.max_entries as usize
        };
        let query = SnapshotQuery {
            disk_id: (!req.source_volume_id.is_empty()).then(|| req.source_volume_id.clone()),
            tags: if req.source_volume_id.is_empty() {
                vec![(INSTANCE_TAG.to_owned(), self.instance.clone())]
            } else {
                Vec::new()
            },
            max_results: Some(max.clamp(10, 100) as u32),
            next_token: (!ecs_token.is_empty()).then(|| ecs_token.clone()),
            ..SnapshotQuery::default()
        };
        let page = self.api.describe_snapshots(&query).await.map_err(|e| {
            if e.is("InvalidParameter") && !ecs_token.is_empty() {
                ProviderError::aborted_token_like(&req.starting_token)
            } else {
                e.into_provider("listing snapshots")
            }
        })?;
        if skip > page.snapshots.len() {
            return Err(ProviderError::aborted_token_like(&req.starting_token));
        }
        let all: Vec<Snapshot> = page.snapshots.iter().map(Self::snapshot_of).collect();
        let (entries, next_token) = page_of(all, skip, max, &ecs_token, &page.next_token);
        Ok(ListSnapshotsResponse {
            entries,
            next_token,
        })
    }

    async fn node_info(&self) -> Result<NodeInfo> {
        let node = self.node_identity().await?;
        Ok(NodeInfo {
            node_id: node.instance_id.clone(),
            topology: Some(Topology::from_pairs([
                (DISK_ZONE_KEY, node.zone_id.as_str()),
                (ZONE_KEY, node.zone_id.as_str()),
            ])),
            max_volumes: node.max_volumes,
        })
    }

    async fn find_device(&self, req: FindDeviceRequest) -> Result<FindDeviceResponse> {
        let finder = DeviceFinder::new(
            &self.settings.node.device_root,
            &self.settings.node.sys_root,
        );
        let timeout = self.settings.waits.device();
        let path = finder
            .wait_for(&req.volume_id, timeout)
            .await
            .map_err(|e| {
                let kind = match &e {
                    DeviceError::BadDiskId(_) => ErrorKind::NotFound,
                    DeviceError::NotFound { .. } => ErrorKind::DeadlineExceeded,
                    DeviceError::WrongSerial { .. } => ErrorKind::FailedPrecondition,
                    DeviceError::Io { .. } => ErrorKind::Internal,
                };
                ProviderError::new(
                    kind,
                    format!("finding the device of disk {}", req.volume_id),
                )
                .with_source(e)
            })?;
        Ok(FindDeviceResponse {
            device_path: path.to_string_lossy().into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_fit_and_are_stable() {
        let t = client_token("pvc-0b6e1d5c-1234-4c1e-9b3a-0123456789ab", "cloud_essd", 0);
        assert!(t.len() <= 64, "{t}");
        assert_eq!(
            t,
            client_token("pvc-0b6e1d5c-1234-4c1e-9b3a-0123456789ab", "cloud_essd", 0)
        );
        assert_ne!(
            t,
            client_token("pvc-0b6e1d5c-1234-4c1e-9b3a-0123456789ab", "cloud_ssd", 0)
        );
        assert_ne!(
            t,
            client_token("pvc-0b6e1d5c-1234-4c1e-9b3a-0123456789ab", "cloud_essd", 1)
        );
        let short = client_token("pvc-1", "cloud_ssd", 0);
        assert_eq!(short, "pvc-1-cloud_ssd");
        let long = client_token(&"x".repeat(200), "cloud_ssd", 0);
        assert!(long.starts_with("od-") && long.len() <= 64, "{long}");
        let odd = client_token("名前", "cloud_ssd", 0);
        assert!(odd.is_ascii() && odd.len() <= 64);
    }

    fn topo(pairs: &[(&str, &str)]) -> Topology {
        Topology::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn zones_of_the_region_only() {
        assert!(zone_in_region("cn-hangzhou-b", "cn-hangzhou"));
        assert!(zone_in_region("ap-southeast-1a", "ap-southeast-1"));
        assert!(!zone_in_region("us-east-1a", "cn-hangzhou"));
        assert!(!zone_in_region("cn-hangzhou", "cn-hangzhou"));
        assert!(!zone_in_region("cn-hangzhou-", "cn-hangzhou"));
        assert!(!zone_in_region("cn-shanghai-finance-1z", "cn-shanghai"));
        assert!(!zone_in_region("cn-hangzhou-b", ""));

        const R: &str = "cn-hangzhou";
        let ec2 = |z: &str| topo(&[(ZONE_KEY, z)]);
        let wk = |z: &str| topo(&[(ZONE_KEY, z)]);
        let own = |z: &str| topo(&[(DISK_ZONE_KEY, z)]);
        let both = |own_z: &str, wk_z: &str| topo(&[(DISK_ZONE_KEY, own_z), (ZONE_KEY, wk_z)]);
        let other = topo(&[("topology.ebs.csi.aws.com/zone", "us-east-1a")]);
        // (requisite, preferred, zoneId parameter, default zone, Ok(zone) or Err(kind))
        type Case = (
            Vec<Topology>,
            Vec<Topology>,
            Option<&'static str>,
            &'static str,
            std::result::Result<&'static str, ErrorKind>,
        );
        let cases: Vec<Case> = vec![
            // An EC2 zone under the well-known key is never chosen.
            (
                vec![ec2("us-east-1a")],
                vec![],
                None,
                "",
                Err(ErrorKind::ResourceExhausted),
            ),
            (
                vec![ec2("us-east-1a")],
                vec![],
                None,
                "cn-hangzhou-a",
                Err(ErrorKind::ResourceExhausted),
            ),
            (
                vec![ec2("us-east-1a"), wk("cn-hangzhou-b")],
                vec![ec2("us-east-1a")],
                None,
                "",
                Ok("cn-hangzhou-b"),
            ),
            (
                vec![other.clone()],
                vec![],
                None,
                "",
                Err(ErrorKind::ResourceExhausted),
            ),
            (
                vec![other.clone(), own("cn-hangzhou-a")],
                vec![other.clone()],
                None,
                "",
                Ok("cn-hangzhou-a"),
            ),
            // The own key first, whatever the well-known key says.
            (
                vec![both("cn-hangzhou-a", "us-east-1a")],
                vec![],
                None,
                "",
                Ok("cn-hangzhou-a"),
            ),
            (
                vec![both("cn-hangzhou-a", "cn-hangzhou-b")],
                vec![],
                None,
                "",
                Ok("cn-hangzhou-a"),
            ),
            // An own-key value of another region is ignored too.
            (
                vec![both("cn-beijing-a", "cn-hangzhou-b")],
                vec![],
                None,
                "",
                Ok("cn-hangzhou-b"),
            ),
            // Preferred within requisite wins; the zoneId parameter when allowed.
            (
                vec![own("cn-hangzhou-a"), own("cn-hangzhou-b")],
                vec![own("cn-hangzhou-b")],
                None,
                "",
                Ok("cn-hangzhou-b"),
            ),
            (
                vec![own("cn-hangzhou-a"), own("cn-hangzhou-b")],
                vec![own("cn-hangzhou-k")],
                None,
                "",
                Ok("cn-hangzhou-a"),
            ),
            (
                vec![own("cn-hangzhou-a"), own("cn-hangzhou-b")],
                vec![own("cn-hangzhou-a")],
                Some("cn-hangzhou-b"),
                "",
                Ok("cn-hangzhou-b"),
            ),
            (
                vec![own("cn-hangzhou-a")],
                vec![],
                Some("cn-hangzhou-b"),
                "",
                Ok("cn-hangzhou-a"),
            ),
            // Preferred alone (no requisite), foreign preferred skipped.
            (
                vec![],
                vec![ec2("us-east-1a"), wk("cn-hangzhou-c")],
                None,
                "",
                Ok("cn-hangzhou-c"),
            ),
            (
                vec![],
                vec![ec2("us-east-1a")],
                None,
                "cn-hangzhou-a",
                Ok("cn-hangzhou-a"),
            ),
            (
                vec![],
                vec![ec2("us-east-1a")],
                None,
                "",
                Err(ErrorKind::InvalidArgument),
            ),
            // No requirements at all.
            (
                vec![],
                vec![],
                Some("cn-hangzhou-b"),
                "cn-hangzhou-a",
                Ok("cn-hangzhou-b"),
            ),
            (vec![], vec![], None, "cn-hangzhou-a", Ok("cn-hangzhou-a")),
            (vec![], vec![], None, "", Err(ErrorKind::InvalidArgument)),
        ];
        for (i, (requisite, preferred, param, default, want)) in cases.into_iter().enumerate() {
            let got = choose_zone(&requisite, &preferred, R, param, default);
            match (&got, want) {
                (Ok(z), Ok(w)) => assert_eq!(z, w, "case {i}"),
                (Err(e), Err(k)) => {
                    assert_eq!(e.kind(), k, "case {i}: {}", e.message());
                    if k == ErrorKind::ResourceExhausted {
                        // Names the requirement it could not meet.
                        assert!(
                            e.message().contains("accessibility requirement ["),
                            "{}",
                            e.message()
                        );
                        let first = requisite[0].segments.values().next().unwrap();
                        assert!(e.message().contains(first.as_str()), "{}", e.message());
                    }
                }
                _ => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn disk_names_are_acceptable() {
        assert_eq!(disk_name("pvc-1"), "pvc-1");
        assert_eq!(disk_name("1abc"), "od-1abc");
        assert_eq!(disk_name("a b/c"), "a-b-c");
        assert!(disk_name(&"y".repeat(300)).len() <= 128);
    }

    #[test]
    fn name_tags_fit() {
        assert_eq!(name_tag_value("pvc-1"), "pvc-1");
        let long = name_tag_value(&"z".repeat(300));
        assert!(long.starts_with("sha256:") && long.len() <= 128);
    }

    #[test]
    fn paging_keeps_offsets_within_ecs_pages() {
        let items: Vec<u32> = (0..25).collect();
        let (page, next) = page_of(items.clone(), 0, 10, "", "ecs2");
        assert_eq!(page, (0..10).collect::<Vec<_>>());
        assert_eq!(next, "10|");
        let (page, next) = page_of(items.clone(), 20, 10, "", "ecs2");
        assert_eq!(page.len(), 5);
        assert_eq!(next, "0|ecs2");
        let (_, next) = page_of(items, 20, 10, "", "");
        assert_eq!(next, "");
        assert!(AliyunDiskProvider::split_token("junk").is_err());
        assert_eq!(
            AliyunDiskProvider::split_token("3|tok").unwrap(),
            ("tok".into(), 3)
        );
    }

    #[test]
    fn sizes_round_up_to_whole_gib() {
        // (bytes, Some(GiB) or None for OutOfRange)
        let cases: &[(i64, Option<i64>)] = &[
            (-1, Some(1)),
            (0, Some(1)),
            (1, Some(1)),
            (GIB, Some(1)),
            (GIB + 1, Some(2)),
            (1 << 62, Some(1 << 32)),
            ((1 << 62) + 1, Some((1 << 32) + 1)),
            (i64::MAX - GIB + 1, Some(i64::MAX / GIB)),
            (i64::MAX - GIB + 2, None),
            (i64::MAX - 1, None),
            (i64::MAX, None),
        ];
        for &(bytes, want) in cases {
            match (gib_ceil(bytes), want) {
                (Ok(got), Some(want)) => assert_eq!(got, want, "{bytes}"),
                (Err(e), None) => assert_eq!(e.kind(), ErrorKind::OutOfRange, "{bytes}"),
                (got, want) => panic!("{bytes}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(gib_bytes(MAX_DISK_GIB).unwrap(), MAX_DISK_GIB * GIB);
        assert_eq!(
            gib_bytes(i64::MAX / GIB + 1).unwrap_err().kind(),
            ErrorKind::OutOfRange
        );
    }
}
