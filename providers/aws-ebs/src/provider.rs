//! The EBS provider: the [`Provider`] trait over the [`Ec2Api`] client.
//!
//! Identity and idempotency: a volume carries its CSI name in the
//! `CSIVolumeName` tag and a fingerprint of its creation parameters in
//! `omnidisk.csi.dev/spec`; CreateVolume is sent with a ClientToken derived
//! from the name. A retry therefore finds its volume by tag even where EC2
//! (or moto) does not honour tokens, and a same-name request with other
//! parameters is `AlreadyExists`.
//!
//! Topology: `topology.kubernetes.io/zone` in node_info and in every
//! volume's accessible topology; create requirements are read from
//! `topology.ebs.csi.aws.com/zone`, then the well-known key, and only zones
//! of the instance's region are chosen.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use omnidisk_provider_api::params::Params;
use omnidisk_provider_api::types::*;
use omnidisk_provider_api::{ErrorKind, Provider, ProviderError, Result};
use tokio::time::Instant;

use crate::batcher::{BatchError, DescribeBatcher};
use crate::client::{
    AttachState, ClientError, ClientResult, CreateDiskInput, Disk, DiskQuery, DiskState, Ec2Api,
    Instance, ModificationState, ModifyDiskInput, PageRequest, Snap, SnapQuery, SnapState,
};
use crate::device::{DeviceError, DeviceFinder};
use crate::errors::provider_error;
use crate::ids::{InstanceId, SnapshotId, VolumeId};
use crate::imds::{self, NodeIdentity};
use crate::params::{
    LARGEST_GIB, ModifyParams, VolumeParams, ceil_gib, checked_gib_bytes, client_token, parse_tag,
    size_gib, spec_fingerprint,
};
use crate::retry::Retrier;
use crate::settings::Settings;

/// Tag holding a volume's CSI name.
pub const NAME_TAG: &str = "CSIVolumeName";
/// Tag holding a snapshot's CSI name.
pub const SNAPSHOT_NAME_TAG: &str = "CSIVolumeSnapshotName";
/// Tag holding the fingerprint of a volume's creation parameters.
pub const SPEC_TAG: &str = "omnidisk.csi.dev/spec";
/// Tag holding the cluster ID.
pub const CLUSTER_TAG: &str = "omnidisk.csi.dev/cluster";
/// The topology key of the zone (the well-known label every node carries).
pub const ZONE_KEY: &str = "topology.kubernetes.io/zone";
/// The EBS driver's own zone key, read first from create requirements.
pub const EBS_ZONE_KEY: &str = "topology.ebs.csi.aws.com/zone";
/// Publish context key of the device name given to AttachVolume.
pub const DEVICE_PATH_KEY: &str = "devicePath";

/// How long an instance's device list is trusted before DescribeInstances
/// is asked again (device names this provider hands out are tracked
/// in-process on top of it).
const INSTANCE_CACHE_TTL: Duration = Duration::from_secs(60);
/// Instances one Multi-Attach volume can be attached to at once (EC2's
/// limit, Nitro instances in one zone).
const MULTI_ATTACH_LIMIT: usize = 16;
/// Retries with a fresh token after EC2 reports a burnt one.
const TOKEN_ATTEMPTS: u32 = 3;

fn gib_bytes(gib: i64) -> i64 {
    gib.saturating_mul(GIB)
}

fn batch_error(context: String, err: BatchError) -> ProviderError {
    match err {
        BatchError::Describe(e) => provider_error(context, e),
        BatchError::Stopped => ProviderError::new(ErrorKind::Unavailable, context).with_source(err),
    }
}

fn parse_volume_id(id: &str) -> Result<VolumeId> {
    VolumeId::new(id)
        .map_err(|e| ProviderError::not_found(format!("volume {id:?} not found")).with_source(e))
}

enum Step<T> {
    Done(T),
    Pending,
    Fail(ProviderError),
}

/// In-process record of device names handed out per instance, so that
/// concurrent attaches to one instance never pick the same name.
#[derive(Debug, Default)]
struct DeviceNames {
    /// instance -> device -> volume
    reserved: HashMap<String, BTreeMap<String, String>>,
}

impl DeviceNames {
    /// Picks a free name: `/dev/xvdba` .. `/dev/xvdzz`.
    fn reserve(&mut self, instance: &str, in_use: &[String], volume: &str) -> Option<String> {
        let taken = self.reserved.entry(instance.to_owned()).or_default();
        if let Some((device, _)) = taken.iter().find(|(_, v)| v.as_str() == volume) {
            return Some(device.clone());
        }
        let in_use: BTreeSet<&str> = in_use.iter().map(String::as_str).collect();
        for first in b'b'..=b'z' {
            for second in b'a'..=b'z' {
                let name = format!("/dev/xvd{}{}", first as char, second as char);
                let alias = name.replace("/dev/xvd", "/dev/sd");
                if !taken.contains_key(&name)
                    && !in_use.contains(name.as_str())
                    && !in_use.contains(alias.as_str())
                {
                    taken.insert(name.clone(), volume.to_owned());
                    return Some(name);
                }
            }
        }
        None
    }

    fn release(&mut self, instance: &str, volume: &str) {
        if let Some(taken) = self.reserved.get_mut(instance) {
            taken.retain(|_, v| v != volume);
        }
    }
}

struct Controller {
    api: Arc<dyn Ec2Api>,
    retrier: Arc<Retrier>,
    batcher: DescribeBatcher,
    devices: Mutex<DeviceNames>,
    instances: Mutex<HashMap<String, (Instant, Instance)>>,
    /// CSI name -> next token attempt, once a token is known to be burnt.
    burnt_tokens: Mutex<HashMap<String, u32>>,
}

impl Controller {
    /// Must be called within a tokio runtime: it starts the describe batcher.
    fn new(instance: &str, settings: &Settings, api: Arc<dyn Ec2Api>) -> Self {
        let retrier = Arc::new(
            Retrier::new(
                settings.api_timeout(),
                Duration::from_millis(settings.waits.throttle_base_ms),
                Duration::from_millis(settings.waits.throttle_max_ms),
            )
            .for_instance(instance),
        );
        let batcher = DescribeBatcher::spawn(
            Arc::clone(&api),
            Arc::clone(&retrier),
            Duration::from_millis(settings.waits.batch_window_ms),
            NAME_TAG,
        );
        Controller {
            api,
            retrier,
            batcher,
            devices: Mutex::default(),
            instances: Mutex::default(),
            burnt_tokens: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The aws-ebs provider.
pub struct EbsProvider {
    instance: String,
    settings: Arc<Settings>,
    /// EC2 access: `None` in node mode; otherwise made on first use (the
    /// SDK's configuration, credential chain and TLS client are not built
    /// for a driver that has not been asked anything yet).
    controller: Option<tokio::sync::OnceCell<Controller>>,
    node: tokio::sync::OnceCell<NodeIdentity>,
    finder: DeviceFinder,
}

impl std::fmt::Debug for EbsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbsProvider")
            .field("instance", &self.instance)
            .field("settings", &self.settings)
            .field(
                "controller",
                &self.controller.as_ref().map(|c| c.initialized()),
            )
            .finish_non_exhaustive()
    }
}

impl EbsProvider {
    /// A delete with retries, where EC2 answering `absent` (the resource is
    /// already gone) counts as done.
    async fn delete_retried<F, Fut>(
        &self,
        ctl: &Controller,
        operation: &'static str,
        absent: &str,
        what: String,
        call: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ClientResult<()>>,
    {
        let deadline = Instant::now() + self.settings.api_timeout() * 2;
        match ctl.retrier.run(operation, deadline, call).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some(absent) => Ok(()),
            Err(e) => Err(provider_error(what, e)),
        }
    }

    /// A provider over `api` (`None` for a node-only instance that never
    /// calls EC2). Must be called within a tokio runtime: it starts the
    /// describe batcher.
    pub fn new(instance: &str, settings: Settings, api: Option<Arc<dyn Ec2Api>>) -> Self {
        let controller = api.map(|api| {
            tokio::sync::OnceCell::new_with(Some(Controller::new(instance, &settings, api)))
        });
        Self::with_controller(instance, settings, controller)
    }

    /// A controller-side provider that builds its EC2 client with
    /// [`client::connect`](crate::client::connect) when a call first needs
    /// it. A failure there (no region, credentials that do not resolve) is
    /// that call's `FailedPrecondition` error and is tried again on the
    /// next call.
    pub fn connecting(instance: &str, settings: Settings) -> Self {
        Self::with_controller(instance, settings, Some(tokio::sync::OnceCell::new()))
    }

    fn with_controller(
        instance: &str,
        settings: Settings,
        controller: Option<tokio::sync::OnceCell<Controller>>,
    ) -> Self {
        let finder = DeviceFinder::new(&settings.node.dev_root, &settings.node.sys_root);
        Self {
            instance: instance.to_owned(),
            settings: Arc::new(settings),
            controller,
            node: tokio::sync::OnceCell::new(),
            finder,
        }
    }

    async fn ctl(&self) -> Result<&Controller> {
        let Some(cell) = &self.controller else {
            return Err(ProviderError::failed_precondition(format!(
                "aws-ebs instance {} runs in node mode and makes no EC2 calls",
                self.instance
            )));
        };
        cell.get_or_try_init(|| async {
            let sdk = crate::client::connect(&self.settings).await.map_err(|e| {
                ProviderError::failed_precondition(format!(
                    "aws-ebs instance {}: cannot set up EC2 access",
                    self.instance
                ))
                .with_source(e)
            })?;
            Ok(Controller::new(
                &self.instance,
                &self.settings,
                Arc::new(sdk),
            ))
        })
        .await
    }

    /// How many throttled EC2 answers were absorbed by backoff.
    pub fn throttled_calls(&self) -> u64 {
        self.controller
            .as_ref()
            .and_then(|c| c.get())
            .map_or(0, |c| c.retrier.throttled())
    }

    /// Deadline of a single lookup or call outside a longer wait.
    fn call_deadline(&self) -> Instant {
        Instant::now() + self.settings.api_timeout() * 2
    }

    fn deadline(&self, seconds: u64) -> Instant {
        Instant::now() + Duration::from_secs(seconds)
    }

    fn topology(zone: &str) -> Topology {
        Topology::from_pairs([(ZONE_KEY, zone)])
    }

    fn volume_of(disk: &Disk) -> Volume {
        Volume {
            id: disk.id.to_string(),
            capacity_bytes: gib_bytes(disk.size_gib),
            accessible_topology: vec![Self::topology(&disk.zone)],
            context: BTreeMap::new(),
            source: disk
                .snapshot_id
                .clone()
                .map(volume::Source::SourceSnapshotId)
                .or_else(|| {
                    disk.source_volume_id
                        .clone()
                        .map(volume::Source::SourceVolumeId)
                }),
            multi_attach: disk.multi_attach,
        }
    }

    fn status_of(disk: &Disk) -> VolumeStatus {
        let published_nodes = disk
            .attachments
            .iter()
            .filter(|a| matches!(a.state, AttachState::Attached | AttachState::Attaching))
            .map(|a| a.instance_id.clone())
            .collect();
        let abnormal = disk.state == DiskState::Error;
        VolumeStatus {
            volume: Some(Self::volume_of(disk)),
            published_nodes,
            abnormal,
            condition_message: if abnormal {
                "EBS reports the volume in state error".into()
            } else {
                String::new()
            },
        }
    }

    fn snapshot_of(snap: &Snap) -> Snapshot {
        Snapshot {
            id: snap.id.to_string(),
            source_volume_id: snap.volume_id.clone(),
            size_bytes: gib_bytes(snap.size_gib),
            creation_time_seconds: snap.start_seconds,
            creation_time_nanos: snap.start_nanos,
            ready_to_use: snap.state == SnapState::Completed,
            group_snapshot_id: String::new(),
        }
    }

    /// The region whose zones this instance may choose: `region`, else the
    /// region of `default_zone` (`None` when neither is set).
    fn region(&self) -> Option<String> {
        self.settings.region.clone().or_else(|| {
            self.settings
                .default_zone
                .as_deref()
                .and_then(region_of_zone)
        })
    }

    /// The zone for a new volume. Each topology segment set yields at most
    /// one zone: its `topology.ebs.csi.aws.com/zone` value, else its
    /// `topology.kubernetes.io/zone` value, each only when it is a zone of
    /// this instance's region (another cloud's zones, e.g. Alibaba Cloud's
    /// `cn-hangzhou-b`, are skipped). The first preferred zone that is also
    /// requisite wins, then the first requisite one; requisite topologies
    /// without any zone of this region are `ResourceExhausted`; no
    /// requirements at all give `default_zone`.
    fn pick_zone(&self, req: &CreateVolumeRequest) -> Result<String> {
        let region = self.region();
        let zone_of = |t: &Topology| zone_for_region(t, region.as_deref());
        let requisite: Vec<String> = req.requisite.iter().filter_map(zone_of).collect();
        if let Some(zone) = req
            .preferred
            .iter()
            .filter_map(zone_of)
            .find(|z| req.requisite.is_empty() || requisite.contains(z))
        {
            return Ok(zone);
        }
        if let Some(zone) = requisite.into_iter().next() {
            return Ok(zone);
        }
        if !req.requisite.is_empty() {
            let wanted: Vec<String> = req
                .requisite
                .iter()
                .map(|t| {
                    let pairs: Vec<String> =
                        t.segments.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("{{{}}}", pairs.join(", "))
                })
                .collect();
            return Err(ProviderError::resource_exhausted(format!(
                "no zone of region {} satisfies the accessibility requirement [{}] (zones are read from {EBS_ZONE_KEY}, then {ZONE_KEY})",
                region.as_deref().unwrap_or("(unknown)"),
                wanted.join(", ")
            )));
        }
        self.settings.default_zone.clone().ok_or_else(|| {
            ProviderError::invalid_argument(format!(
                "no zone: the request has no {EBS_ZONE_KEY} or {ZONE_KEY} topology of this region and `default_zone` is not set"
            ))
        })
    }

    /// The zone of a clone: CopyVolumes places it in its source's zone,
    /// which the requisite topologies (if any) must allow.
    fn clone_zone(&self, req: &CreateVolumeRequest, source: &Disk) -> Result<String> {
        let region = self.region();
        let allowed = req.requisite.is_empty()
            || req
                .requisite
                .iter()
                .any(|t| zone_for_region(t, region.as_deref()).as_deref() == Some(&source.zone));
        if allowed {
            Ok(source.zone.clone())
        } else {
            Err(ProviderError::resource_exhausted(format!(
                "a clone of volume {} is made in its zone {}, which the accessibility requirement does not allow",
                source.id, source.zone
            )))
        }
    }

    /// Tags every volume of this instance gets.
    fn base_tags(&self) -> BTreeMap<String, String> {
        let mut tags = self.settings.extra_tags.clone();
        if let Some(cluster) = &self.settings.cluster_id {
            tags.insert(CLUSTER_TAG.to_owned(), cluster.clone());
            tags.insert(
                format!("kubernetes.io/cluster/{cluster}"),
                "owned".to_owned(),
            );
        }
        tags
    }

    /// Polls one volume through the batcher until `check` decides.
    async fn wait_disk<T>(
        &self,
        ctl: &Controller,
        id: &VolumeId,
        deadline: Instant,
        what: &str,
        mut check: impl FnMut(Option<&Disk>) -> Step<T>,
    ) -> Result<T> {
        let mut interval = Duration::from_millis(self.settings.waits.poll_initial_ms);
        let max = Duration::from_millis(self.settings.waits.poll_max_ms);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ProviderError::new(
                    ErrorKind::DeadlineExceeded,
                    format!("volume {id}: gave up waiting for {what}"),
                ));
            }
            tokio::time::sleep(interval.min(deadline - now)).await;
            interval = interval.mul_f64(1.5).min(max);
            let disk = ctl
                .batcher
                .by_id(id, deadline)
                .await
                .map_err(|e| batch_error(format!("volume {id}: waiting for {what}"), e))?;
            match check(disk.as_ref()) {
                Step::Done(v) => return Ok(v),
                Step::Pending => {}
                Step::Fail(e) => return Err(e),
            }
        }
    }

    /// Waits for a new volume to become available. A volume that fails is
    /// deleted; one that does not finish in time is deleted if EC2 allows
    /// it (otherwise its name tag lets the next attempt adopt it).
    async fn wait_created(
        &self,
        ctl: &Controller,
        name: &str,
        disk: Disk,
        deadline: Instant,
    ) -> Result<Disk> {
        let outcome = match disk.state {
            DiskState::Available | DiskState::InUse => Ok(disk.clone()),
            DiskState::Error => Err(ProviderError::internal(format!(
                "volume {} for {name} failed to create",
                disk.id
            ))),
            _ => {
                self.wait_disk(ctl, &disk.id, deadline, "the volume to become available", |d| match d {
                    Some(d) if matches!(d.state, DiskState::Available | DiskState::InUse) => Step::Done(d.clone()),
                    Some(d) if d.state == DiskState::Error => Step::Fail(ProviderError::internal(format!(
                        "volume {} for {name} failed to create (state error; check the KMS key and quotas)",
                        d.id
                    ))),
                    Some(d) if matches!(d.state, DiskState::Deleting | DiskState::Deleted) => {
                        Step::Fail(ProviderError::new(
                            ErrorKind::Aborted,
                            format!("volume {} for {name} was deleted while being created", d.id),
                        ))
                    }
                    // Not visible yet (EC2 is eventually consistent) or creating.
                    _ => Step::Pending,
                })
                .await
            }
        };
        match outcome {
            Ok(d) => Ok(d),
            Err(err) => {
                self.burn_token(ctl, name);
                // The caller's deadline may be spent; give the clean-up its own.
                let cleanup = Instant::now() + self.settings.api_timeout();
                match ctl
                    .retrier
                    .run("DeleteVolume", cleanup, || ctl.api.delete_disk(&disk.id))
                    .await
                {
                    Ok(()) => {
                        tracing::info!(volume = %disk.id, name, "deleted a volume that did not finish creating")
                    }
                    Err(e) => tracing::warn!(
                        volume = %disk.id, name, error = %e,
                        "could not delete a volume that did not finish creating; a retry will adopt it by its name tag"
                    ),
                }
                Err(err)
            }
        }
    }

    fn burn_token(&self, ctl: &Controller, name: &str) {
        let mut burnt = lock(&ctl.burnt_tokens);
        let next = burnt.get(name).copied().unwrap_or(0) + 1;
        burnt.insert(name.to_owned(), next);
    }

    async fn find_by_name(
        &self,
        ctl: &Controller,
        name: &str,
        deadline: Instant,
    ) -> Result<Option<Disk>> {
        let found = ctl
            .batcher
            .by_name(name, deadline)
            .await
            .map_err(|e| batch_error(format!("looking up volume {name}"), e))?;
        let mut live: Vec<Disk> = found
            .into_iter()
            .filter(|d| !matches!(d.state, DiskState::Deleting | DiskState::Deleted))
            .collect();
        if live.len() > 1 {
            tracing::warn!(
                name,
                count = live.len(),
                "several volumes carry the same CSI name; using the first"
            );
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live.into_iter().next())
    }

    async fn instance_info(
        &self,
        ctl: &Controller,
        id: &InstanceId,
        fresh: bool,
    ) -> Result<Option<Instance>> {
        if !fresh {
            if let Some((at, inst)) = lock(&ctl.instances).get(id.as_str()) {
                if at.elapsed() < INSTANCE_CACHE_TTL {
                    return Ok(Some(inst.clone()));
                }
            }
        }
        let deadline = Instant::now() + self.settings.api_timeout() * 2;
        let inst = ctl
            .retrier
            .run("DescribeInstances", deadline, || {
                ctl.api.describe_instance(id)
            })
            .await
            .map_err(|e| provider_error(format!("describing instance {id}"), e))?;
        if let Some(inst) = &inst {
            lock(&ctl.instances).insert(id.as_str().to_owned(), (Instant::now(), inst.clone()));
        }
        Ok(inst)
    }

    async fn wait_attached(
        &self,
        ctl: &Controller,
        vol: &VolumeId,
        node: &InstanceId,
        deadline: Instant,
    ) -> Result<String> {
        self.wait_disk(ctl, vol, deadline, "the attachment", |d| {
            let Some(d) = d else {
                return Step::Fail(ProviderError::not_found(format!(
                    "volume {vol} disappeared while attaching"
                )));
            };
            match d
                .attachments
                .iter()
                .find(|a| a.instance_id == node.as_str())
            {
                Some(a) if a.state == AttachState::Attached => Step::Done(a.device.clone()),
                Some(a) if matches!(a.state, AttachState::Detaching | AttachState::Detached) => {
                    Step::Fail(ProviderError::new(
                        ErrorKind::Aborted,
                        format!("volume {vol} is being detached from {node}"),
                    ))
                }
                _ => Step::Pending,
            }
        })
        .await
    }

    async fn wait_detached(
        &self,
        ctl: &Controller,
        vol: &VolumeId,
        nodes: &[String],
        deadline: Instant,
    ) -> Result<()> {
        self.wait_disk(ctl, vol, deadline, "the detachment", |d| match d {
            None => Step::Done(()),
            Some(d) => {
                let still = d
                    .attachments
                    .iter()
                    .any(|a| nodes.contains(&a.instance_id) && a.state != AttachState::Detached);
                if still { Step::Pending } else { Step::Done(()) }
            }
        })
        .await
    }

    async fn describe_volume(
        &self,
        ctl: &Controller,
        id: &VolumeId,
        deadline: Instant,
    ) -> Result<Option<Disk>> {
        ctl.batcher
            .by_id(id, deadline)
            .await
            .map_err(|e| batch_error(format!("describing volume {id}"), e))
    }

    /// Waits until the latest modification of `id` lets the new size and
    /// performance apply (`optimizing` or `completed`).
    async fn wait_modified(
        &self,
        ctl: &Controller,
        id: &VolumeId,
        target_gib: Option<i64>,
        deadline: Instant,
    ) -> Result<()> {
        let mut interval = Duration::from_millis(self.settings.waits.poll_initial_ms);
        let max = Duration::from_millis(self.settings.waits.poll_max_ms);
        loop {
            let mods = ctl
                .retrier
                .run("DescribeVolumesModifications", deadline, || {
                    ctl.api.describe_modifications(std::slice::from_ref(id))
                })
                .await
                .map_err(|e| {
                    provider_error(format!("volume {id}: reading its modification state"), e)
                })?;
            // EC2 reports the latest modification; moto lists them all, oldest first.
            match mods.iter().rev().find(|m| m.volume_id == id.as_str()) {
                Some(m) => match &m.state {
                    ModificationState::Optimizing | ModificationState::Completed => return Ok(()),
                    ModificationState::Failed => {
                        return Err(ProviderError::internal(format!(
                            "volume {id}: the modification failed: {}",
                            m.status_message.clone().unwrap_or_default()
                        )));
                    }
                    _ => {}
                },
                // No modification record: judge by the volume itself.
                None => {
                    let disk = self.describe_volume(ctl, id, deadline).await?;
                    match (disk, target_gib) {
                        (None, _) => {
                            return Err(ProviderError::not_found(format!("volume {id} not found")));
                        }
                        (Some(d), Some(t)) if d.size_gib >= t => return Ok(()),
                        (Some(_), None) => return Ok(()),
                        _ => {}
                    }
                }
            }
            let now = Instant::now();
            if now + interval >= deadline {
                return Err(ProviderError::new(
                    ErrorKind::DeadlineExceeded,
                    format!("volume {id}: gave up waiting for the modification"),
                ));
            }
            tokio::time::sleep(interval).await;
            interval = interval.mul_f64(1.5).min(max);
        }
    }

    async fn snapshot_by_id(&self, ctl: &Controller, id: &SnapshotId) -> Result<Option<Snap>> {
        let deadline = Instant::now() + self.settings.api_timeout() * 2;
        let query = SnapQuery {
            ids: vec![id.clone()],
            ..SnapQuery::default()
        };
        let page = ctl
            .retrier
            .run("DescribeSnapshots", deadline, || {
                ctl.api
                    .describe_snapshots(query.clone(), PageRequest::default())
            })
            .await;
        match page {
            Ok(p) => Ok(p.items.into_iter().find(|s| &s.id == id)),
            Err(e) if e.code() == Some("InvalidSnapshot.NotFound") => Ok(None),
            Err(e) => Err(provider_error(format!("describing snapshot {id}"), e)),
        }
    }

    async fn node_identity(&self) -> Result<&NodeIdentity> {
        self.node
            .get_or_try_init(|| imds::resolve(&self.settings.node))
            .await
            .map_err(|e| {
                ProviderError::new(
                    ErrorKind::Unavailable,
                    "cannot determine this node's EC2 identity",
                )
                .with_source(e)
            })
    }
}

/// Paging token of list calls: `v1:<skip>:<EC2 token>`. EC2 may return more
/// than asked (moto ignores MaxResults), so the token remembers how many
/// items of the page behind the EC2 token were already returned.
fn parse_list_token(token: &str) -> Result<(usize, Option<String>)> {
    if token.is_empty() {
        return Ok((0, None));
    }
    let invalid = || {
        ProviderError::new(
            ErrorKind::Aborted,
            format!("invalid starting token {token:?}"),
        )
    };
    let rest = token.strip_prefix("v1:").ok_or_else(invalid)?;
    let (skip, ec2) = rest.split_once(':').ok_or_else(invalid)?;
    let skip = skip.parse::<usize>().map_err(|_| invalid())?;
    Ok((skip, (!ec2.is_empty()).then(|| ec2.to_owned())))
}

fn page_out<T>(
    items: Vec<T>,
    skip: usize,
    max: usize,
    used_token: Option<String>,
    next: Option<String>,
    token: &str,
) -> Result<(Vec<T>, String)> {
    if skip > items.len() {
        return Err(ProviderError::new(
            ErrorKind::Aborted,
            format!("invalid starting token {token:?}"),
        ));
    }
    let rest: Vec<T> = items.into_iter().skip(skip).collect();
    if max > 0 && rest.len() > max {
        let out: Vec<T> = rest.into_iter().take(max).collect();
        let token = format!("v1:{}:{}", skip + max, used_token.unwrap_or_default());
        return Ok((out, token));
    }
    Ok((rest, next.map(|t| format!("v1:0:{t}")).unwrap_or_default()))
}

/// The region of an EC2 zone name: the name without its trailing zone
/// letter(s) (`us-east-1a` → `us-east-1`, `us-west-2-lax-1a` →
/// `us-west-2-lax-1`).
fn region_of_zone(zone: &str) -> Option<String> {
    let region = zone.trim_end_matches(|c: char| c.is_ascii_lowercase());
    (region.len() < zone.len() && region.ends_with(|c: char| c.is_ascii_digit()))
        .then(|| region.to_owned())
}

/// Whether `zone` names an EC2 zone of `region` (EC2 zone names start with
/// the region's name and go on with a letter or a `-` for local zones).
/// Without a known region, any name shaped like an EC2 zone passes.
fn zone_in_region(zone: &str, region: Option<&str>) -> bool {
    match region {
        Some(region) => zone
            .strip_prefix(region)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '-')),
        None => region_of_zone(zone).is_some(),
    }
}

/// The zone one topology segment set names for this region, if any.
fn zone_for_region(t: &Topology, region: Option<&str>) -> Option<String> {
    [EBS_ZONE_KEY, ZONE_KEY]
        .iter()
        .filter_map(|k| t.segments.get(*k))
        .find(|z| zone_in_region(z, region))
        .cloned()
}

fn ec2_max_results(max: i32) -> Option<i32> {
    // EC2 accepts 5..=500 for volumes and 5..=1000 for snapshots.
    (max > 0).then(|| max.clamp(5, 500))
}

#[async_trait]
impl Provider for EbsProvider {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            kind: crate::KIND.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            attach_required: true,
            node_local: false,
            snapshots: true,
            clone: true,
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
                AccessMode::MultiNodeReaderOnly as i32,
                AccessMode::MultiNodeSingleWriter as i32,
                AccessMode::MultiNodeMultiWriter as i32,
            ],
            group_snapshots: false,
        }
    }

    async fn create_volume(&self, req: CreateVolumeRequest) -> Result<Volume> {
        let ctl = self.ctl().await?;
        if req.name.is_empty() {
            return Err(ProviderError::invalid_argument("the volume name is empty"));
        }
        let (snapshot, clone_of) = match &req.source {
            Some(create_volume_request::Source::SourceVolumeId(id)) => {
                (None, Some(parse_volume_id(id)?))
            }
            Some(create_volume_request::Source::SourceSnapshotId(id)) => (
                Some(SnapshotId::new(id).map_err(|e| {
                    ProviderError::not_found(format!("snapshot {id:?} not found")).with_source(e)
                })?),
                None,
            ),
            None => (None, None),
        };
        let mut params = VolumeParams::parse(&req.parameters)?;
        // The claim's VolumeAttributesClass: the same keys and rules as
        // ControllerModifyVolume, checked before anything is created.
        let mutable = ModifyParams::parse(&req.mutable_parameters)?;
        params.apply_mutable(&mutable)?;
        omnidisk_provider_api::access::check_multi_node(&req.capabilities, params.multi_attach)?;
        if params.initialization_rate.is_some() && snapshot.is_none() {
            return Err(ProviderError::invalid_argument(
                "`volumeInitializationRate` applies only to volumes restored from a snapshot",
            ));
        }
        let source_disk = match &clone_of {
            Some(src) => Some(
                self.describe_volume(ctl, src, self.call_deadline())
                    .await?
                    .filter(|d| !matches!(d.state, DiskState::Deleting | DiskState::Deleted))
                    .ok_or_else(|| {
                        ProviderError::not_found(format!("source volume {src} not found"))
                    })?,
            ),
            None => None,
        };
        let zone = match &source_disk {
            Some(src) => self.clone_zone(&req, src)?,
            None => self.pick_zone(&req)?,
        };
        let mut size = size_gib(req.required_bytes, req.limit_bytes, params.volume_type)?;
        if let Some(src) = &source_disk {
            // A copy is at least as large as its source.
            if src.size_gib > size {
                if req.limit_bytes > 0 && checked_gib_bytes(src.size_gib)? > req.limit_bytes {
                    return Err(ProviderError::out_of_range(format!(
                        "source volume {} has {} GiB, more than the limit of {} bytes",
                        src.id, src.size_gib, req.limit_bytes
                    )));
                }
                let max = params.volume_type.limits().max_gib;
                if src.size_gib > max {
                    return Err(ProviderError::out_of_range(format!(
                        "source volume {} has {} GiB, more than the {max} GiB maximum of {}",
                        src.id, src.size_gib, params.volume_type
                    )));
                }
                size = src.size_gib;
            }
        }
        if let Some(snap_id) = &snapshot {
            let snap = self
                .snapshot_by_id(ctl, snap_id)
                .await?
                .ok_or_else(|| ProviderError::not_found(format!("snapshot {snap_id} not found")))?;
            if snap.state != SnapState::Completed {
                return Err(ProviderError::new(
                    ErrorKind::Unavailable,
                    format!("snapshot {snap_id} is not completed yet"),
                ));
            }
            if snap.size_gib > size {
                if req.limit_bytes > 0 && gib_bytes(snap.size_gib) > req.limit_bytes {
                    return Err(ProviderError::out_of_range(format!(
                        "snapshot {snap_id} needs {} GiB, more than the limit of {} bytes",
                        snap.size_gib, req.limit_bytes
                    )));
                }
                size = snap.size_gib;
            }
        }
        let spec = params.resolve(size)?;
        if !mutable.is_empty() {
            mutable.check(spec.volume_type.as_str(), size)?;
        }
        let fingerprint = spec_fingerprint(
            &spec,
            &zone,
            snapshot
                .as_ref()
                .map(SnapshotId::as_str)
                .or(clone_of.as_ref().map(VolumeId::as_str)),
            &params.tags,
        );
        let result_volume = |disk: &Disk| {
            let mut v = Self::volume_of(disk);
            if let Some(src) = &clone_of {
                v.source = Some(volume::Source::SourceVolumeId(src.to_string()));
            }
            v
        };

        let fits = |d: &Disk| {
            gib_bytes(d.size_gib) >= req.required_bytes
                && (req.limit_bytes == 0 || gib_bytes(d.size_gib) <= req.limit_bytes)
        };
        let deadline = self.deadline(self.settings.waits.create_seconds);
        if let Some(existing) = self.find_by_name(ctl, &req.name, deadline).await? {
            let same = existing.tags.get(SPEC_TAG) == Some(&fingerprint) && fits(&existing);
            if !same {
                return Err(ProviderError::already_exists(format!(
                    "volume {} named {} exists with different parameters",
                    existing.id, req.name
                )));
            }
            let disk = self
                .wait_created(ctl, &req.name, existing, deadline)
                .await?;
            return Ok(result_volume(&disk));
        }

        let mut tags = self.base_tags();
        tags.extend(params.tags.clone());
        tags.insert(NAME_TAG.to_owned(), req.name.clone());
        tags.insert(SPEC_TAG.to_owned(), fingerprint);
        let mut input = CreateDiskInput {
            zone,
            size_gib: size,
            volume_type: spec.volume_type.as_str().to_owned(),
            iops: spec.iops,
            throughput: spec.throughput,
            encrypted: spec.encrypted,
            kms_key_id: spec.kms_key_id.clone(),
            snapshot_id: snapshot.clone(),
            initialization_rate: spec.initialization_rate,
            multi_attach: spec.multi_attach,
            tags,
            client_token: String::new(),
        };
        let first_attempt = lock(&ctl.burnt_tokens).get(&req.name).copied().unwrap_or(0);
        let mut created = None;
        let operation = if clone_of.is_some() {
            "CopyVolumes"
        } else {
            "CreateVolume"
        };
        for attempt in first_attempt..first_attempt + TOKEN_ATTEMPTS {
            input.client_token = client_token(&req.name, attempt);
            match ctl
                .retrier
                .run(operation, deadline, || {
                    let api = Arc::clone(&ctl.api);
                    let input = input.clone();
                    let source = clone_of.clone();
                    async move {
                        match source {
                            Some(src) => api.copy_disk(&src, input).await,
                            None => api.create_disk(input).await,
                        }
                    }
                })
                .await
            {
                Ok(disk) => {
                    created = Some(disk);
                    break;
                }
                // The token was used before with other parameters (a volume of
                // this name was deleted and is being recreated differently).
                Err(e) if e.code() == Some("IdempotentParameterMismatch") => {
                    tracing::info!(name = %req.name, attempt, "client token already used; trying the next one");
                    lock(&ctl.burnt_tokens).insert(req.name.clone(), attempt + 1);
                }
                Err(e) => return Err(provider_error(format!("creating volume {}", req.name), e)),
            }
        }
        let disk = created.ok_or_else(|| {
            ProviderError::already_exists(format!(
                "EC2 refused {TOKEN_ATTEMPTS} client tokens for {} as used with other parameters",
                req.name
            ))
        })?;
        let disk = self.wait_created(ctl, &req.name, disk, deadline).await?;
        Ok(result_volume(&disk))
    }

    async fn delete_volume(&self, req: VolumeRef) -> Result<()> {
        let ctl = self.ctl().await?;
        // An ID this provider could never have issued names no volume.
        let Ok(id) = VolumeId::new(&req.volume_id) else {
            return Ok(());
        };
        let Some(disk) = self.describe_volume(ctl, &id, self.call_deadline()).await? else {
            return Ok(());
        };
        let attached: Vec<&str> = disk
            .attachments
            .iter()
            .filter(|a| a.state != AttachState::Detached)
            .map(|a| a.instance_id.as_str())
            .collect();
        if !attached.is_empty() {
            return Err(ProviderError::failed_precondition(format!(
                "volume {id} is attached to {}",
                attached.join(", ")
            )));
        }
        if matches!(disk.state, DiskState::Deleting | DiskState::Deleted) {
            return Ok(());
        }
        self.delete_retried(
            ctl,
            "DeleteVolume",
            "InvalidVolume.NotFound",
            format!("deleting volume {id}"),
            || ctl.api.delete_disk(&id),
        )
        .await
    }

    async fn get_volume(&self, req: VolumeRef) -> Result<VolumeStatus> {
        let ctl = self.ctl().await?;
        let id = parse_volume_id(&req.volume_id)?;
        let disk = self
            .describe_volume(ctl, &id, self.call_deadline())
            .await?
            .filter(|d| !matches!(d.state, DiskState::Deleted))
            .ok_or_else(|| ProviderError::not_found(format!("volume {id} not found")))?;
        Ok(Self::status_of(&disk))
    }

    async fn list_volumes(&self, req: ListRequest) -> Result<ListVolumesResponse> {
        let ctl = self.ctl().await?;
        let (skip, ec2_token) = parse_list_token(&req.starting_token)?;
        let mut query = DiskQuery {
            tag_key: Some(NAME_TAG.to_owned()),
            ..DiskQuery::default()
        };
        if let Some(cluster) = &self.settings.cluster_id {
            query.tags.push((CLUSTER_TAG.to_owned(), cluster.clone()));
        }
        let page = PageRequest {
            max_results: ec2_max_results(req.max_entries),
            next_token: ec2_token.clone(),
        };
        let deadline = Instant::now() + self.settings.api_timeout() * 2;
        let got = ctl
            .retrier
            .run("DescribeVolumes", deadline, || {
                ctl.api.describe_disks(query.clone(), page.clone())
            })
            .await
            .map_err(|e| {
                if e.code() == Some("InvalidParameterValue") && ec2_token.is_some() {
                    ProviderError::new(
                        ErrorKind::Aborted,
                        format!("invalid starting token {:?}", req.starting_token),
                    )
                } else {
                    provider_error("listing volumes", e)
                }
            })?;
        let items: Vec<VolumeStatus> = got
            .items
            .iter()
            .filter(|d| d.state != DiskState::Deleted)
            .map(Self::status_of)
            .collect();
        let max = usize::try_from(req.max_entries.max(0)).unwrap_or(0);
        let (entries, next_token) = page_out(
            items,
            skip,
            max,
            ec2_token,
            got.next_token,
            &req.starting_token,
        )?;
        Ok(ListVolumesResponse {
            entries,
            next_token,
        })
    }

    async fn expand_volume(&self, req: ExpandVolumeRequest) -> Result<ExpandVolumeResponse> {
        let ctl = self.ctl().await?;
        let id = parse_volume_id(&req.volume_id)?;
        let node_expansion_required = req
            .capability
            .as_ref()
            .is_none_or(|c| c.access_type != AccessType::Block as i32);
        if req.required_bytes < 0 || req.limit_bytes < 0 {
            return Err(ProviderError::invalid_argument(
                "sizes must not be negative",
            ));
        }
        let target = ceil_gib(req.required_bytes)?;
        if target > LARGEST_GIB {
            return Err(ProviderError::out_of_range(format!(
                "{target} GiB exceeds the largest EBS volume ({LARGEST_GIB} GiB)"
            )));
        }
        if req.limit_bytes > 0 && checked_gib_bytes(target)? > req.limit_bytes {
            return Err(ProviderError::out_of_range(format!(
                "{target} GiB exceeds the limit of {} bytes",
                req.limit_bytes
            )));
        }
        let disk = self
            .describe_volume(ctl, &id, self.call_deadline())
            .await?
            .ok_or_else(|| ProviderError::not_found(format!("volume {id} not found")))?;
        let deadline = self.deadline(self.settings.waits.modify_seconds);
        if disk.size_gib >= target {
            return Ok(ExpandVolumeResponse {
                capacity_bytes: gib_bytes(disk.size_gib),
                node_expansion_required,
            });
        }
        if let Ok(t) = disk.volume_type.parse::<crate::params::VolumeType>() {
            if target > t.limits().max_gib {
                return Err(ProviderError::out_of_range(format!(
                    "{target} GiB exceeds the {} GiB maximum of {t}",
                    t.limits().max_gib
                )));
            }
        }
        let input = ModifyDiskInput {
            size_gib: Some(target),
            ..ModifyDiskInput::default()
        };
        match ctl
            .retrier
            .run("ModifyVolume", deadline, || {
                ctl.api.modify_disk(&id, input.clone())
            })
            .await
        {
            Ok(()) => {}
            // A previous attempt's modification is still running: wait for it
            // if it reaches our size.
            Err(e) if e.code() == Some("IncorrectModificationState") => {
                self.wait_modified(ctl, &id, None, deadline).await?;
                let disk = self.describe_volume(ctl, &id, deadline).await?;
                if disk.is_none_or(|d| d.size_gib < target) {
                    return Err(provider_error(format!("expanding volume {id}"), e));
                }
            }
            Err(e) => {
                return Err(provider_error(
                    format!("expanding volume {id} to {target} GiB"),
                    e,
                ));
            }
        }
        self.wait_modified(ctl, &id, Some(target), deadline).await?;
        Ok(ExpandVolumeResponse {
            capacity_bytes: gib_bytes(target),
            node_expansion_required,
        })
    }

    async fn modify_volume(&self, req: ModifyVolumeRequest) -> Result<()> {
        let ctl = self.ctl().await?;
        let id = parse_volume_id(&req.volume_id)?;
        let wanted = ModifyParams::parse(&req.mutable_parameters)?;
        if wanted.is_empty() {
            return Ok(());
        }
        let disk = self
            .describe_volume(ctl, &id, self.call_deadline())
            .await?
            .ok_or_else(|| ProviderError::not_found(format!("volume {id} not found")))?;
        wanted.check(&disk.volume_type, disk.size_gib)?;
        if let Some(t) = wanted
            .volume_type
            .filter(|t| disk.multi_attach && !t.multi_attach())
        {
            return Err(ProviderError::invalid_argument(format!(
                "volume {id} is a Multi-Attach volume and cannot become {t} (io1 or io2 only)"
            )));
        }
        let deadline = self.deadline(self.settings.waits.modify_seconds);
        if wanted.tags.iter().any(|(k, v)| disk.tags.get(k) != Some(v)) {
            ctl.retrier
                .run("CreateTags", deadline, || {
                    ctl.api.tag_disk(&id, wanted.tags.clone())
                })
                .await
                .map_err(|e| provider_error(format!("tagging volume {id}"), e))?;
        }
        let already = wanted
            .volume_type
            .is_none_or(|t| t.as_str() == disk.volume_type)
            && wanted.iops.is_none_or(|i| disk.iops == Some(i))
            && wanted.throughput.is_none_or(|t| disk.throughput == Some(t));
        if already {
            return Ok(());
        }
        let input = ModifyDiskInput {
            size_gib: None,
            volume_type: wanted.volume_type.map(|t| t.as_str().to_owned()),
            iops: wanted.iops,
            throughput: wanted.throughput,
        };
        ctl.retrier
            .run("ModifyVolume", deadline, || {
                ctl.api.modify_disk(&id, input.clone())
            })
            .await
            .map_err(|e| provider_error(format!("modifying volume {id}"), e))?;
        self.wait_modified(ctl, &id, None, deadline).await
    }

    async fn attach_volume(&self, req: AttachRequest) -> Result<AttachResponse> {
        let ctl = self.ctl().await?;
        let vol = parse_volume_id(&req.volume_id)?;
        let node = InstanceId::new(&req.node_id).map_err(|e| {
            ProviderError::not_found(format!("node {:?} not found", req.node_id)).with_source(e)
        })?;
        let deadline = self.deadline(self.settings.waits.attach_seconds);
        let context = |device: String| AttachResponse {
            publish_context: BTreeMap::from([(DEVICE_PATH_KEY.to_owned(), device)]),
        };
        let disk = self
            .describe_volume(ctl, &vol, deadline)
            .await?
            .ok_or_else(|| ProviderError::not_found(format!("volume {vol} not found")))?;
        if let Some(a) = disk
            .attachments
            .iter()
            .find(|a| a.instance_id == node.as_str())
        {
            match a.state {
                AttachState::Attached => return Ok(context(a.device.clone())),
                AttachState::Attaching => {
                    let device = self.wait_attached(ctl, &vol, &node, deadline).await?;
                    return Ok(context(device));
                }
                AttachState::Detached => {}
                _ => {
                    return Err(ProviderError::new(
                        ErrorKind::Aborted,
                        format!(
                            "volume {vol} is being detached from {node}; retry when it is done"
                        ),
                    ));
                }
            }
        }
        // moto moves an attached volume silently, and a multi-attach-less
        // volume must never be on two nodes: check before asking EC2.
        let elsewhere: Vec<&str> = disk
            .attachments
            .iter()
            .filter(|a| a.instance_id != node.as_str() && a.state != AttachState::Detached)
            .map(|a| a.instance_id.as_str())
            .collect();
        if !disk.multi_attach && !elsewhere.is_empty() {
            return Err(ProviderError::failed_precondition(format!(
                "volume {vol} is attached to {} and is not a Multi-Attach volume",
                elsewhere.join(", ")
            )));
        }
        if disk.multi_attach && elsewhere.len() >= MULTI_ATTACH_LIMIT {
            return Err(ProviderError::resource_exhausted(format!(
                "Multi-Attach volume {vol} is already attached to {} instances, EC2's limit",
                elsewhere.len()
            )));
        }
        let usable = disk.state == DiskState::Available
            || (disk.multi_attach && disk.state == DiskState::InUse);
        if !usable {
            return Err(ProviderError::new(
                ErrorKind::Aborted,
                format!("volume {vol} is {:?}, not available", disk.state),
            ));
        }
        let mut fresh = false;
        loop {
            let inst = self
                .instance_info(ctl, &node, fresh)
                .await?
                .ok_or_else(|| ProviderError::not_found(format!("node {node} not found")))?;
            if !inst.zone.is_empty() && !disk.zone.is_empty() && inst.zone != disk.zone {
                return Err(ProviderError::failed_precondition(format!(
                    "volume {vol} is in {} but instance {node} is in {}",
                    disk.zone, inst.zone
                )));
            }
            let device = lock(&ctl.devices)
                .reserve(node.as_str(), &inst.device_names, vol.as_str())
                .ok_or_else(|| {
                    ProviderError::resource_exhausted(format!("no free device name on {node}"))
                })?;
            let result = ctl
                .retrier
                .run("AttachVolume", deadline, || {
                    ctl.api.attach_disk(&vol, &node, &device)
                })
                .await;
            let state = match result {
                Ok(state) => state,
                Err(e) => {
                    lock(&ctl.devices).release(node.as_str(), vol.as_str());
                    // The device name is taken by something this process did
                    // not hand out: refresh the instance once and pick again.
                    let name_taken = e.code() == Some("InvalidParameterValue")
                        && matches!(&e, ClientError::Service { message, .. } if message.contains("device") || message.contains("in use"));
                    if name_taken && !fresh {
                        fresh = true;
                        continue;
                    }
                    return Err(provider_error(
                        format!("attaching volume {vol} to {node}"),
                        e,
                    ));
                }
            };
            if state == AttachState::Attached {
                return Ok(context(device));
            }
            return match self.wait_attached(ctl, &vol, &node, deadline).await {
                Ok(found) => Ok(context(if found.is_empty() { device } else { found })),
                Err(err) => {
                    if err.kind() == ErrorKind::DeadlineExceeded {
                        // Do not leave a half-done attachment behind: the next
                        // attempt starts clean instead of stuck in "attaching".
                        let cleanup = Instant::now() + self.settings.api_timeout();
                        if let Err(e) = ctl
                            .retrier
                            .run("DetachVolume", cleanup, || ctl.api.detach_disk(&vol, &node))
                            .await
                        {
                            tracing::warn!(volume = %vol, node = %node, error = %e, "could not undo a stuck attachment");
                        }
                        lock(&ctl.devices).release(node.as_str(), vol.as_str());
                    }
                    Err(err)
                }
            };
        }
    }

    async fn detach_volume(&self, req: DetachRequest) -> Result<()> {
        let ctl = self.ctl().await?;
        let Ok(vol) = VolumeId::new(&req.volume_id) else {
            return Ok(());
        };
        let node = if req.node_id.is_empty() {
            None
        } else {
            match InstanceId::new(&req.node_id) {
                Ok(n) => Some(n),
                // A node this provider never named has nothing attached.
                Err(_) => return Ok(()),
            }
        };
        let Some(disk) = self
            .describe_volume(ctl, &vol, self.call_deadline())
            .await?
        else {
            return Ok(());
        };
        let targets: Vec<String> = disk
            .attachments
            .iter()
            .filter(|a| a.state != AttachState::Detached)
            .filter(|a| node.as_ref().is_none_or(|n| a.instance_id == n.as_str()))
            .map(|a| a.instance_id.clone())
            .collect();
        let deadline = self.deadline(self.settings.waits.detach_seconds);
        for instance in &targets {
            let Ok(inst) = InstanceId::new(instance) else {
                continue;
            };
            match ctl
                .retrier
                .run("DetachVolume", deadline, || {
                    ctl.api.detach_disk(&vol, &inst)
                })
                .await
            {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.code(),
                        Some(
                            "InvalidAttachment.NotFound"
                                | "InvalidVolume.NotFound"
                                | "IncorrectState"
                        )
                    ) => {}
                Err(e) => {
                    return Err(provider_error(
                        format!("detaching volume {vol} from {inst}"),
                        e,
                    ));
                }
            }
        }
        if !targets.is_empty() {
            self.wait_detached(ctl, &vol, &targets, deadline).await?;
        }
        let mut devices = lock(&ctl.devices);
        for instance in &targets {
            devices.release(instance, vol.as_str());
        }
        if let Some(n) = &node {
            devices.release(n.as_str(), vol.as_str());
        }
        Ok(())
    }

    async fn create_snapshot(&self, req: CreateSnapshotRequest) -> Result<Snapshot> {
        let ctl = self.ctl().await?;
        if req.name.is_empty() {
            return Err(ProviderError::invalid_argument(
                "the snapshot name is empty",
            ));
        }
        let vol = parse_volume_id(&req.source_volume_id)?;
        let mut p = Params::new("aws-ebs VolumeSnapshotClass parameter", &req.parameters);
        let mut tags = self.base_tags();
        for (suffix, raw) in p.take_prefixed("tagSpecification_") {
            let (k, v) = parse_tag(&format!("tagSpecification_{suffix}"), &raw)?;
            tags.insert(k, v);
        }
        p.finish()?;
        tags.insert(SNAPSHOT_NAME_TAG.to_owned(), req.name.clone());

        let deadline = Instant::now() + self.settings.api_timeout() * 2;
        let query = SnapQuery {
            tag_values: Some((SNAPSHOT_NAME_TAG.to_owned(), vec![req.name.clone()])),
            ..SnapQuery::default()
        };
        let existing = ctl
            .retrier
            .run("DescribeSnapshots", deadline, || {
                ctl.api
                    .describe_snapshots(query.clone(), PageRequest::default())
            })
            .await
            .map_err(|e| provider_error(format!("looking up snapshot {}", req.name), e))?;
        if let Some(snap) = existing.items.iter().find(|s| s.state != SnapState::Error) {
            if snap.volume_id != vol.as_str() {
                return Err(ProviderError::already_exists(format!(
                    "snapshot {} named {} is of volume {}, not {vol}",
                    snap.id, req.name, snap.volume_id
                )));
            }
            return Ok(Self::snapshot_of(snap));
        }
        if self.describe_volume(ctl, &vol, deadline).await?.is_none() {
            return Err(ProviderError::not_found(format!("volume {vol} not found")));
        }
        let snap = ctl
            .retrier
            .run("CreateSnapshot", deadline, || {
                ctl.api.create_snapshot(&vol, tags.clone())
            })
            .await
            .map_err(|e| provider_error(format!("creating snapshot {} of {vol}", req.name), e))?;
        if snap.state == SnapState::Error {
            return Err(ProviderError::internal(format!(
                "snapshot {} of {vol} failed",
                snap.id
            )));
        }
        Ok(Self::snapshot_of(&snap))
    }

    async fn delete_snapshot(&self, req: SnapshotRef) -> Result<()> {
        let ctl = self.ctl().await?;
        let Ok(id) = SnapshotId::new(&req.snapshot_id) else {
            return Ok(());
        };
        self.delete_retried(
            ctl,
            "DeleteSnapshot",
            "InvalidSnapshot.NotFound",
            format!("deleting snapshot {id}"),
            || ctl.api.delete_snapshot(&id),
        )
        .await
    }

    async fn get_snapshot(&self, req: SnapshotRef) -> Result<Snapshot> {
        let ctl = self.ctl().await?;
        let id = SnapshotId::new(&req.snapshot_id).map_err(|e| {
            ProviderError::not_found(format!("snapshot {:?} not found", req.snapshot_id))
                .with_source(e)
        })?;
        self.snapshot_by_id(ctl, &id)
            .await?
            .map(|s| Self::snapshot_of(&s))
            .ok_or_else(|| ProviderError::not_found(format!("snapshot {id} not found")))
    }

    async fn list_snapshots(&self, req: ListSnapshotsRequest) -> Result<ListSnapshotsResponse> {
        let ctl = self.ctl().await?;
        let (skip, ec2_token) = parse_list_token(&req.starting_token)?;
        let mut query = SnapQuery::default();
        if !req.snapshot_id.is_empty() {
            match SnapshotId::new(&req.snapshot_id) {
                Ok(id) => query.ids.push(id),
                Err(_) => return Ok(ListSnapshotsResponse::default()),
            }
        } else {
            query.tag_key = Some(SNAPSHOT_NAME_TAG.to_owned());
        }
        if !req.source_volume_id.is_empty() {
            match VolumeId::new(&req.source_volume_id) {
                Ok(id) => query.volume_ids.push(id),
                Err(_) => return Ok(ListSnapshotsResponse::default()),
            }
        }
        let page = PageRequest {
            max_results: ec2_max_results(req.max_entries),
            next_token: ec2_token.clone(),
        };
        let deadline = Instant::now() + self.settings.api_timeout() * 2;
        let got = match ctl
            .retrier
            .run("DescribeSnapshots", deadline, || {
                ctl.api.describe_snapshots(query.clone(), page.clone())
            })
            .await
        {
            Ok(got) => got,
            Err(e) if e.code() == Some("InvalidSnapshot.NotFound") => {
                return Ok(ListSnapshotsResponse::default());
            }
            Err(e) => return Err(provider_error("listing snapshots", e)),
        };
        let items: Vec<Snapshot> = got.items.iter().map(Self::snapshot_of).collect();
        let max = usize::try_from(req.max_entries.max(0)).unwrap_or(0);
        let (entries, next_token) = page_out(
            items,
            skip,
            max,
            ec2_token,
            got.next_token,
            &req.starting_token,
        )?;
        Ok(ListSnapshotsResponse {
            entries,
            next_token,
        })
    }

    async fn node_info(&self) -> Result<NodeInfo> {
        let identity = self.node_identity().await?;
        Ok(NodeInfo {
            node_id: identity.instance_id.to_string(),
            topology: Some(Self::topology(&identity.zone)),
            max_volumes: identity.max_volumes,
        })
    }

    async fn find_device(&self, req: FindDeviceRequest) -> Result<FindDeviceResponse> {
        let vol = VolumeId::new(&req.volume_id).map_err(|e| {
            ProviderError::invalid_argument(format!("invalid volume ID {:?}", req.volume_id))
                .with_source(e)
        })?;
        let published = req.publish_context.get(DEVICE_PATH_KEY).cloned();
        let deadline = self.deadline(self.settings.node.device_wait_seconds);
        let mut interval = Duration::from_millis(100);
        loop {
            let finder = self.finder.clone();
            let v = vol.clone();
            let p = published.clone();
            let found = tokio::task::spawn_blocking(move || finder.find(&v, p.as_deref()))
                .await
                .map_err(|e| {
                    ProviderError::internal("device discovery task failed").with_source(e)
                })?;
            match found {
                Ok(Some(path)) => {
                    let device_path = path.to_str().map(str::to_owned).ok_or_else(|| {
                        ProviderError::internal(format!(
                            "device path {} is not UTF-8",
                            path.display()
                        ))
                    })?;
                    return Ok(FindDeviceResponse { device_path });
                }
                Ok(None) => {}
                Err(e @ DeviceError::BadPublishedPath(_)) => {
                    return Err(
                        ProviderError::invalid_argument("bad publish context").with_source(e)
                    );
                }
                Err(e) => {
                    return Err(ProviderError::failed_precondition(format!(
                        "cannot identify the device of volume {vol}"
                    ))
                    .with_source(e));
                }
            }
            if Instant::now() + interval >= deadline {
                return Err(ProviderError::new(
                    ErrorKind::DeadlineExceeded,
                    format!(
                        "the device of volume {vol} did not appear within {} s",
                        self.settings.node.device_wait_seconds
                    ),
                ));
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests;
