//! A stateful in-process EC2 for what moto does not model: states that take
//! time (creating, attaching, detaching, modifying, pending snapshots),
//! ClientToken semantics with IdempotentParameterMismatch, MaxResults and
//! NextToken paging, throttling bursts, calls that hang, and volumes that
//! fail to create. Times use tokio's clock, so tests run with paused time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::*;

/// Instances one Multi-Attach volume can be attached to at once.
const MULTI_ATTACH_LIMIT: usize = 16;

/// Knobs of the fake.
#[derive(Debug, Clone)]
pub(crate) struct FakeConfig {
    pub honour_tokens: bool,
    pub create_delay: Duration,
    pub attach_delay: Duration,
    pub detach_delay: Duration,
    pub modify_delay: Duration,
    pub snapshot_delay: Duration,
    /// New volumes end in state `error` instead of `available`.
    pub fail_creation: bool,
    /// The next N calls are throttled.
    pub throttle_next: u32,
    /// Operations that never answer.
    pub hang: HashSet<&'static str>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            honour_tokens: true,
            create_delay: Duration::ZERO,
            attach_delay: Duration::ZERO,
            detach_delay: Duration::ZERO,
            modify_delay: Duration::ZERO,
            snapshot_delay: Duration::ZERO,
            fail_creation: false,
            throttle_next: 0,
            hang: HashSet::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct FakeAttachment {
    instance: String,
    device: String,
    attached_at: Instant,
    detached_at: Option<Instant>,
}

#[derive(Debug, Clone)]
struct FakeVolume {
    disk: Disk,
    ready_at: Instant,
    fails: bool,
    deleted: bool,
    attachments: Vec<FakeAttachment>,
    modification: Option<(Instant, ModifyDiskInput)>,
}

#[derive(Debug, Clone)]
struct FakeSnap {
    snap: Snap,
    ready_at: Instant,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    volumes: BTreeMap<String, FakeVolume>,
    /// ClientToken -> (what the call asked for, the volume it made).
    tokens: HashMap<String, (String, VolumeId)>,
    instances: BTreeMap<String, (String, String)>,
    snapshots: BTreeMap<String, FakeSnap>,
}

/// The fake EC2.
#[derive(Debug, Default)]
pub(crate) struct FakeEc2 {
    state: Mutex<State>,
    pub config: Mutex<FakeConfig>,
    pub calls: CallCounter,
}

fn service(operation: &'static str, code: &str, message: impl Into<String>) -> ClientError {
    ClientError::Service {
        operation,
        code: code.into(),
        message: message.into(),
    }
}

impl FakeVolume {
    fn view(&self, now: Instant) -> Disk {
        let mut disk = self.disk.clone();
        disk.state = if self.deleted {
            DiskState::Deleted
        } else if now < self.ready_at {
            DiskState::Creating
        } else if self.fails {
            DiskState::Error
        } else {
            DiskState::Available
        };
        if let Some((at, m)) = &self.modification {
            if now >= *at {
                if let Some(s) = m.size_gib {
                    disk.size_gib = s;
                }
                if let Some(t) = &m.volume_type {
                    disk.volume_type = t.clone();
                }
                disk.iops = m.iops.or(disk.iops);
                disk.throughput = m.throughput.or(disk.throughput);
            }
        }
        disk.attachments = self
            .attachments
            .iter()
            .filter(|a| a.detached_at.is_none_or(|d| now < d))
            .map(|a| DiskAttachment {
                instance_id: a.instance.clone(),
                device: a.device.clone(),
                state: if a.detached_at.is_some() {
                    AttachState::Detaching
                } else if now < a.attached_at {
                    AttachState::Attaching
                } else {
                    AttachState::Attached
                },
            })
            .collect();
        if disk.state == DiskState::Available && !disk.attachments.is_empty() {
            disk.state = DiskState::InUse;
        }
        disk
    }
}

fn paged<T: Clone>(items: Vec<T>, page: &PageRequest) -> ClientResult<Page<T>> {
    let start: usize = match &page.next_token {
        None => 0,
        Some(t) => t
            .parse()
            .map_err(|_| service("Describe", "InvalidParameterValue", "bad NextToken"))?,
    };
    let max = page
        .max_results
        .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    let end = start.saturating_add(max).min(items.len());
    let slice = items.get(start..end).map(<[T]>::to_vec).unwrap_or_default();
    Ok(Page {
        items: slice,
        next_token: (end < items.len()).then(|| end.to_string()),
    })
}

fn tag_matches(tags: &BTreeMap<String, String>, query: &Option<(String, Vec<String>)>) -> bool {
    match query {
        None => true,
        Some((k, values)) => tags.get(k).is_some_and(|v| values.contains(v)),
    }
}

impl FakeEc2 {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn configure(&self, f: impl FnOnce(&mut FakeConfig)) {
        f(&mut self.config.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn cfg(&self) -> FakeConfig {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds a running instance.
    pub(crate) fn add_instance(&self, id: &str, zone: &str) {
        self.lock()
            .instances
            .insert(id.to_owned(), (zone.to_owned(), "m5.large".to_owned()));
    }

    /// Volumes that exist (not deleted), in any state.
    pub(crate) fn live_volumes(&self) -> Vec<Disk> {
        let now = Instant::now();
        self.lock()
            .volumes
            .values()
            .filter(|v| !v.deleted)
            .map(|v| v.view(now))
            .collect()
    }

    /// Calls of one operation so far.
    pub(crate) fn count(&self, operation: &str) -> u64 {
        self.calls.snapshot().get(operation).copied().unwrap_or(0)
    }

    /// Records the call, then throttles or hangs as configured.
    async fn enter(&self, operation: &'static str) -> ClientResult<()> {
        self.calls.record(operation);
        let hang = {
            let mut cfg = self.config.lock().unwrap_or_else(|e| e.into_inner());
            if cfg.throttle_next > 0 {
                cfg.throttle_next -= 1;
                return Err(service(
                    operation,
                    "RequestLimitExceeded",
                    "Request limit exceeded.",
                ));
            }
            cfg.hang.contains(operation)
        };
        if hang {
            tokio::time::sleep(Duration::from_secs(365 * 24 * 3600)).await;
        }
        Ok(())
    }
}

/// The volume an already used ClientToken made, or the mismatch error.
fn token_hit(
    st: &State,
    cfg: &FakeConfig,
    operation: &'static str,
    token: &str,
    key: &str,
    now: Instant,
) -> Option<ClientResult<Disk>> {
    if !cfg.honour_tokens {
        return None;
    }
    let (seen, id) = st.tokens.get(token)?;
    if seen != key {
        return Some(Err(service(
            operation,
            "IdempotentParameterMismatch",
            "token reused with other parameters",
        )));
    }
    Some(
        st.volumes
            .get(id.as_str())
            .map(|v| v.view(now))
            .ok_or_else(|| service(operation, "InternalError", "token maps to nothing")),
    )
}

/// Adds a new volume (CreateVolume or CopyVolumes) and remembers its token.
#[allow(clippy::too_many_arguments)]
fn insert_volume(
    st: &mut State,
    cfg: &FakeConfig,
    now: Instant,
    operation: &'static str,
    input: CreateDiskInput,
    zone: String,
    source_volume_id: Option<String>,
    key: String,
) -> ClientResult<Disk> {
    st.next_id += 1;
    let id =
        VolumeId::new(&format!("vol-{:017x}", st.next_id)).map_err(|e| ClientError::Malformed {
            operation,
            detail: e.to_string(),
        })?;
    let disk = Disk {
        id: id.clone(),
        zone,
        size_gib: input.size_gib,
        volume_type: input.volume_type.clone(),
        iops: input.iops.or((input.volume_type == "gp3").then_some(3000)),
        throughput: input
            .throughput
            .or((input.volume_type == "gp3").then_some(125)),
        encrypted: input.encrypted,
        kms_key_id: input.kms_key_id.clone(),
        snapshot_id: input.snapshot_id.as_ref().map(|s| s.as_str().to_owned()),
        source_volume_id,
        multi_attach: input.multi_attach,
        state: DiskState::Creating,
        tags: input.tags.clone(),
        attachments: Vec::new(),
    };
    let volume = FakeVolume {
        disk,
        ready_at: now + cfg.create_delay,
        fails: cfg.fail_creation,
        deleted: false,
        attachments: Vec::new(),
        modification: None,
    };
    let view = volume.view(now);
    st.volumes.insert(id.as_str().to_owned(), volume);
    if cfg.honour_tokens {
        st.tokens.insert(input.client_token, (key, id));
    }
    Ok(view)
}

#[async_trait]
impl Ec2Api for FakeEc2 {
    async fn create_disk(&self, input: CreateDiskInput) -> ClientResult<Disk> {
        const OP: &str = "CreateVolume";
        self.enter(OP).await?;
        let cfg = self.cfg();
        let now = Instant::now();
        let mut st = self.lock();
        let mut key = input.clone();
        key.client_token.clear();
        let key = format!("{OP} {key:?}");
        if let Some(found) = token_hit(&st, &cfg, OP, &input.client_token, &key, now) {
            return found;
        }
        let zone = input.zone.clone();
        insert_volume(&mut st, &cfg, now, OP, input, zone, None, key)
    }

    async fn copy_disk(&self, source: &VolumeId, input: CreateDiskInput) -> ClientResult<Disk> {
        const OP: &str = "CopyVolumes";
        self.enter(OP).await?;
        let cfg = self.cfg();
        let now = Instant::now();
        let mut st = self.lock();
        // CopyVolumes takes no zone: the copy is made where the source is.
        let mut key = input.clone();
        key.client_token.clear();
        key.zone.clear();
        let key = format!("{OP} {source} {key:?}");
        if let Some(found) = token_hit(&st, &cfg, OP, &input.client_token, &key, now) {
            return found;
        }
        let src = st
            .volumes
            .get(source.as_str())
            .filter(|v| !v.deleted)
            .map(|v| v.view(now))
            .ok_or_else(|| {
                service(
                    OP,
                    "InvalidVolume.NotFound",
                    format!("The volume '{source}' does not exist."),
                )
            })?;
        if !matches!(src.state, DiskState::Available | DiskState::InUse) {
            return Err(service(
                OP,
                "IncorrectState",
                format!("The source volume {source} is {:?}", src.state),
            ));
        }
        if input.size_gib < src.size_gib {
            return Err(service(
                OP,
                "InvalidParameterValue",
                format!(
                    "The size of the copy ({} GiB) must be at least the size of the source volume ({} GiB)",
                    input.size_gib, src.size_gib
                ),
            ));
        }
        let mut input = input;
        input.snapshot_id = None;
        input.initialization_rate = None;
        insert_volume(
            &mut st,
            &cfg,
            now,
            OP,
            input,
            src.zone,
            Some(source.as_str().to_owned()),
            key,
        )
    }

    async fn delete_disk(&self, id: &VolumeId) -> ClientResult<()> {
        const OP: &str = "DeleteVolume";
        self.enter(OP).await?;
        let now = Instant::now();
        let mut st = self.lock();
        let v = st
            .volumes
            .get_mut(id.as_str())
            .filter(|v| !v.deleted)
            .ok_or_else(|| {
                service(
                    OP,
                    "InvalidVolume.NotFound",
                    format!("The volume '{id}' does not exist."),
                )
            })?;
        if !v.view(now).attachments.is_empty() {
            return Err(service(
                OP,
                "VolumeInUse",
                format!("Volume {id} is currently attached"),
            ));
        }
        v.deleted = true;
        Ok(())
    }

    async fn describe_disks(
        &self,
        query: DiskQuery,
        page: PageRequest,
    ) -> ClientResult<Page<Disk>> {
        self.enter("DescribeVolumes").await?;
        let now = Instant::now();
        let st = self.lock();
        let items: Vec<Disk> = st
            .volumes
            .values()
            .filter(|v| !v.deleted)
            .map(|v| v.view(now))
            .filter(|d| query.ids.is_empty() || query.ids.contains(&d.id))
            .filter(|d| tag_matches(&d.tags, &query.tag_values))
            .filter(|d| query.tags.iter().all(|(k, v)| d.tags.get(k) == Some(v)))
            .filter(|d| {
                query
                    .tag_key
                    .as_ref()
                    .is_none_or(|k| d.tags.contains_key(k))
            })
            .collect();
        paged(items, &page)
    }

    async fn attach_disk(
        &self,
        id: &VolumeId,
        instance: &InstanceId,
        device: &str,
    ) -> ClientResult<AttachState> {
        const OP: &str = "AttachVolume";
        self.enter(OP).await?;
        let cfg = self.cfg();
        let now = Instant::now();
        let mut st = self.lock();
        if !st.instances.contains_key(instance.as_str()) {
            return Err(service(
                OP,
                "InvalidInstanceID.NotFound",
                "no such instance",
            ));
        }
        let taken = st.volumes.values().any(|v| {
            v.view(now)
                .attachments
                .iter()
                .any(|a| a.instance_id == instance.as_str() && a.device == device)
        });
        if taken {
            return Err(service(
                OP,
                "InvalidParameterValue",
                format!(
                    "Invalid value '{device}' for unixDevice. Attachment point {device} is already in use"
                ),
            ));
        }
        let v = st
            .volumes
            .get_mut(id.as_str())
            .filter(|v| !v.deleted)
            .ok_or_else(|| service(OP, "InvalidVolume.NotFound", "no such volume"))?;
        let view = v.view(now);
        // An attached volume is in-use: the attachment checks below answer
        // for it (VolumeInUse unless Multi-Attach).
        if !matches!(view.state, DiskState::Available | DiskState::InUse) {
            return Err(service(
                OP,
                "IncorrectState",
                format!("vol is {:?}", view.state),
            ));
        }
        if view
            .attachments
            .iter()
            .any(|a| a.instance_id == instance.as_str())
        {
            return Err(service(
                OP,
                "VolumeInUse",
                format!("{id} is already attached to {instance}"),
            ));
        }
        // Real EC2 refuses a second attachment of a non-multi-attach volume,
        // and a 17th of a multi-attach one.
        if !view.multi_attach && !view.attachments.is_empty() {
            return Err(service(
                OP,
                "VolumeInUse",
                format!("{id} is already attached"),
            ));
        }
        if view.attachments.len() >= MULTI_ATTACH_LIMIT {
            return Err(service(
                OP,
                "AttachmentLimitExceeded",
                format!("{id} is attached to {MULTI_ATTACH_LIMIT} instances"),
            ));
        }
        v.attachments.push(FakeAttachment {
            instance: instance.as_str().to_owned(),
            device: device.to_owned(),
            attached_at: now + cfg.attach_delay,
            detached_at: None,
        });
        Ok(if cfg.attach_delay.is_zero() {
            AttachState::Attached
        } else {
            AttachState::Attaching
        })
    }

    async fn detach_disk(&self, id: &VolumeId, instance: &InstanceId) -> ClientResult<()> {
        const OP: &str = "DetachVolume";
        self.enter(OP).await?;
        let cfg = self.cfg();
        let now = Instant::now();
        let mut st = self.lock();
        let v = st
            .volumes
            .get_mut(id.as_str())
            .filter(|v| !v.deleted)
            .ok_or_else(|| service(OP, "InvalidVolume.NotFound", "no such volume"))?;
        let a = v
            .attachments
            .iter_mut()
            .find(|a| a.instance == instance.as_str() && a.detached_at.is_none_or(|d| now < d))
            .ok_or_else(|| service(OP, "InvalidAttachment.NotFound", "not attached"))?;
        if a.detached_at.is_none() {
            a.detached_at = Some(now + cfg.detach_delay);
        }
        v.attachments
            .retain(|a| a.detached_at.is_none_or(|d| now < d));
        Ok(())
    }

    async fn modify_disk(&self, id: &VolumeId, input: ModifyDiskInput) -> ClientResult<()> {
        const OP: &str = "ModifyVolume";
        self.enter(OP).await?;
        let cfg = self.cfg();
        let now = Instant::now();
        let mut st = self.lock();
        let v = st
            .volumes
            .get_mut(id.as_str())
            .filter(|v| !v.deleted)
            .ok_or_else(|| service(OP, "InvalidVolume.NotFound", "no such volume"))?;
        if let Some((at, _)) = &v.modification {
            if now < *at {
                return Err(service(
                    OP,
                    "IncorrectModificationState",
                    "a modification is in progress",
                ));
            }
        }
        // Fold the finished modification into the volume before the next one.
        let current = v.view(now);
        v.disk.size_gib = current.size_gib;
        v.disk.volume_type = current.volume_type;
        v.disk.iops = current.iops;
        v.disk.throughput = current.throughput;
        if input.size_gib.is_some_and(|s| s < v.disk.size_gib) {
            return Err(service(OP, "InvalidParameterValue", "cannot shrink"));
        }
        v.modification = Some((now + cfg.modify_delay, input));
        Ok(())
    }

    async fn describe_modifications(&self, ids: &[VolumeId]) -> ClientResult<Vec<Modification>> {
        self.enter("DescribeVolumesModifications").await?;
        let now = Instant::now();
        let st = self.lock();
        Ok(ids
            .iter()
            .filter_map(|id| st.volumes.get(id.as_str()))
            .filter_map(|v| {
                let (at, m) = v.modification.as_ref()?;
                Some(Modification {
                    volume_id: v.disk.id.as_str().to_owned(),
                    state: if now < *at {
                        ModificationState::Modifying
                    } else {
                        ModificationState::Optimizing
                    },
                    target_size_gib: m.size_gib,
                    status_message: None,
                })
            })
            .collect())
    }

    async fn tag_disk(&self, id: &VolumeId, tags: BTreeMap<String, String>) -> ClientResult<()> {
        const OP: &str = "CreateTags";
        self.enter(OP).await?;
        let mut st = self.lock();
        let v = st
            .volumes
            .get_mut(id.as_str())
            .filter(|v| !v.deleted)
            .ok_or_else(|| service(OP, "InvalidVolume.NotFound", "no such volume"))?;
        v.disk.tags.extend(tags);
        Ok(())
    }

    async fn describe_instance(&self, id: &InstanceId) -> ClientResult<Option<Instance>> {
        self.enter("DescribeInstances").await?;
        let now = Instant::now();
        let st = self.lock();
        Ok(st.instances.get(id.as_str()).map(|(zone, itype)| {
            let mut device_names = vec!["/dev/xvda".to_owned()];
            for v in st.volumes.values() {
                for a in v.view(now).attachments {
                    if a.instance_id == id.as_str() {
                        device_names.push(a.device);
                    }
                }
            }
            Instance {
                id: id.as_str().to_owned(),
                zone: zone.clone(),
                instance_type: itype.clone(),
                state: "running".into(),
                device_names,
            }
        }))
    }

    async fn create_snapshot(
        &self,
        volume: &VolumeId,
        tags: BTreeMap<String, String>,
    ) -> ClientResult<Snap> {
        const OP: &str = "CreateSnapshot";
        self.enter(OP).await?;
        let cfg = self.cfg();
        let now = Instant::now();
        let mut st = self.lock();
        let size = st
            .volumes
            .get(volume.as_str())
            .filter(|v| !v.deleted)
            .map(|v| v.view(now).size_gib)
            .ok_or_else(|| service(OP, "InvalidVolume.NotFound", "no such volume"))?;
        st.next_id += 1;
        let id = SnapshotId::new(&format!("snap-{:017x}", st.next_id)).map_err(|e| {
            ClientError::Malformed {
                operation: OP,
                detail: e.to_string(),
            }
        })?;
        let snap = Snap {
            id: id.clone(),
            volume_id: volume.as_str().to_owned(),
            size_gib: size,
            state: SnapState::Pending,
            start_seconds: 1_700_000_000 + i64::try_from(st.next_id).unwrap_or(0),
            start_nanos: 0,
            tags,
        };
        st.snapshots.insert(
            id.as_str().to_owned(),
            FakeSnap {
                snap: snap.clone(),
                ready_at: now + cfg.snapshot_delay,
            },
        );
        let mut out = snap;
        if cfg.snapshot_delay.is_zero() {
            out.state = SnapState::Completed;
        }
        Ok(out)
    }

    async fn delete_snapshot(&self, id: &SnapshotId) -> ClientResult<()> {
        const OP: &str = "DeleteSnapshot";
        self.enter(OP).await?;
        self.lock()
            .snapshots
            .remove(id.as_str())
            .map(|_| ())
            .ok_or_else(|| service(OP, "InvalidSnapshot.NotFound", "no such snapshot"))
    }

    async fn describe_snapshots(
        &self,
        query: SnapQuery,
        page: PageRequest,
    ) -> ClientResult<Page<Snap>> {
        self.enter("DescribeSnapshots").await?;
        let now = Instant::now();
        let st = self.lock();
        let items: Vec<Snap> = st
            .snapshots
            .values()
            .map(|s| {
                let mut snap = s.snap.clone();
                snap.state = if now < s.ready_at {
                    SnapState::Pending
                } else {
                    SnapState::Completed
                };
                snap
            })
            .filter(|s| query.ids.is_empty() || query.ids.contains(&s.id))
            .filter(|s| {
                query.volume_ids.is_empty()
                    || query.volume_ids.iter().any(|v| v.as_str() == s.volume_id)
            })
            .filter(|s| tag_matches(&s.tags, &query.tag_values))
            .filter(|s| {
                query
                    .tag_key
                    .as_ref()
                    .is_none_or(|k| s.tags.contains_key(k))
            })
            .collect();
        paged(items, &page)
    }
}
