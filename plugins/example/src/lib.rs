//! An out-of-tree omnidisk provider: volumes are sparse image files in a
//! directory, snapshots are copies of them.
//!
//! It exists to show provider authors the whole shape of a dylib provider
//! (see `docs/provider-abi.md`) and to be built and loaded by the driver's
//! ABI tests. It depends on no driver crate but `omnidisk-provider-api` and
//! contains no `unsafe`: the one `export_provider!` line at the bottom is all
//! the C ABI it needs.
//!
//! Instance settings (TOML):
//!
//! ```toml
//! root = "/var/lib/omnidisk-files"   # required, absolute
//! capacity_bytes = 10737418240       # optional, default 10 GiB
//! ```
//!
//! Layout under `root`: `volumes/<id>.img`, `snapshots/<id>.img` with
//! `snapshots/<id>.source` naming the source volume, and
//! `attachments/<volume id>` holding the node the volume is attached to.
//! IDs are the CSI names, which this provider accepts only if they are safe
//! as file names. `find_device` returns the image file: a node would attach
//! it with a loop device.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use omnidisk_provider_api::params::{Params, parse_settings};
use omnidisk_provider_api::types::*;
use omnidisk_provider_api::{
    ErrorKind, Provider, ProviderError, ProviderFactory, Result, async_trait,
};
use serde::Deserialize;

/// The kind name used in the driver's configuration.
pub const KIND: &str = "example-files";
/// Topology key: volumes live on the node that holds the directory.
pub const NODE_KEY: &str = "example.omnidisk.dev/node";
/// Allocation unit: sizes are rounded up to whole MiB.
const MIB: i64 = 1 << 20;

/// Instance settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Directory holding the images (absolute).
    pub root: PathBuf,
    /// Total bytes of all volumes together.
    #[serde(default = "default_capacity")]
    pub capacity_bytes: i64,
}

fn default_capacity() -> i64 {
    10 << 30
}

/// A volume or snapshot ID: usable as a file name as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ObjectId(String);

impl ObjectId {
    fn parse(value: &str) -> Option<Self> {
        let ok = !value.is_empty()
            && value.len() <= 128
            && !value.starts_with('.')
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        ok.then(|| Self(value.to_owned()))
    }
}

/// The file-backed provider.
#[derive(Debug)]
pub struct FileProvider {
    root: PathBuf,
    capacity_bytes: i64,
    node_name: String,
}

/// The factory for kind [`KIND`].
pub const FACTORY: ProviderFactory = ProviderFactory {
    kind: KIND,
    create: |init| {
        Box::pin(async move {
            let settings: Settings = parse_settings(&init.settings_toml)?;
            let provider = FileProvider::new(settings, init.node_name)?;
            tracing::info!(root = %provider.root.display(), "file provider ready");
            Ok(Arc::new(provider) as Arc<dyn Provider>)
        })
    },
};

fn io_error(what: String) -> impl FnOnce(io::Error) -> ProviderError {
    move |e| {
        let kind = match e.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                ErrorKind::ResourceExhausted
            }
            _ => ErrorKind::Internal,
        };
        ProviderError::new(kind, what).with_source(e)
    }
}

/// Pages `items` by an index token, as the trait's list calls expect.
fn page<T>(items: Vec<T>, max_entries: i32, token: &str) -> Result<(Vec<T>, String)> {
    let start: usize = if token.is_empty() {
        0
    } else {
        token
            .parse()
            .ok()
            .filter(|start| *start <= items.len())
            .ok_or_else(|| {
                ProviderError::new(ErrorKind::Aborted, format!("invalid token {token:?}"))
            })?
    };
    let max = usize::try_from(max_entries)
        .ok()
        .filter(|m| *m > 0)
        .unwrap_or(usize::MAX);
    let end = start.saturating_add(max).min(items.len());
    let next = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    Ok((
        items.into_iter().skip(start).take(end - start).collect(),
        next,
    ))
}

impl FileProvider {
    /// An instance storing its images under `settings.root`.
    pub fn new(settings: Settings, node_name: String) -> Result<Self> {
        if !settings.root.is_absolute() {
            return Err(ProviderError::invalid_argument(format!(
                "root {} must be an absolute path",
                settings.root.display()
            )));
        }
        if settings.capacity_bytes <= 0 {
            return Err(ProviderError::invalid_argument(
                "capacity_bytes must be positive",
            ));
        }
        for dir in ["volumes", "snapshots", "attachments"] {
            let path = settings.root.join(dir);
            fs::create_dir_all(&path)
                .map_err(io_error(format!("cannot create {}", path.display())))?;
        }
        Ok(Self {
            root: settings.root,
            capacity_bytes: settings.capacity_bytes,
            node_name,
        })
    }

    fn volume_path(&self, id: &ObjectId) -> PathBuf {
        self.root.join("volumes").join(format!("{}.img", id.0))
    }

    fn snapshot_path(&self, id: &ObjectId) -> PathBuf {
        self.root.join("snapshots").join(format!("{}.img", id.0))
    }

    fn snapshot_source_path(&self, id: &ObjectId) -> PathBuf {
        self.root.join("snapshots").join(format!("{}.source", id.0))
    }

    fn attachment_path(&self, id: &ObjectId) -> PathBuf {
        self.root.join("attachments").join(&id.0)
    }

    fn topology(&self) -> Topology {
        Topology::from_pairs([(NODE_KEY, self.node_name.as_str())])
    }

    /// Looks up an existing volume; an ID that cannot be ours is not found.
    fn existing_volume(&self, volume_id: &str) -> Result<(ObjectId, i64)> {
        let not_found = || ProviderError::not_found(format!("volume {volume_id} not found"));
        let id = ObjectId::parse(volume_id).ok_or_else(not_found)?;
        match fs::metadata(self.volume_path(&id)) {
            Ok(meta) => Ok((id, i64::try_from(meta.len()).unwrap_or(i64::MAX))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(not_found()),
            Err(e) => Err(io_error(format!("cannot inspect volume {volume_id}"))(e)),
        }
    }

    fn attached_node(&self, id: &ObjectId) -> Result<Option<String>> {
        match fs::read_to_string(self.attachment_path(id)) {
            Ok(node) => Ok(Some(node)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(format!("cannot read the attachment of {}", id.0))(
                e,
            )),
        }
    }

    fn volume(&self, id: &ObjectId, capacity_bytes: i64) -> Volume {
        Volume {
            id: id.0.clone(),
            capacity_bytes,
            accessible_topology: vec![self.topology()],
            ..Default::default()
        }
    }

    fn status(&self, id: &ObjectId, capacity_bytes: i64) -> Result<VolumeStatus> {
        Ok(VolumeStatus {
            volume: Some(self.volume(id, capacity_bytes)),
            published_nodes: self.attached_node(id)?.into_iter().collect(),
            ..Default::default()
        })
    }

    /// Sorted IDs of the `.img` files in `dir`.
    fn ids_in(&self, dir: &str) -> Result<Vec<ObjectId>> {
        let path = self.root.join(dir);
        let entries =
            fs::read_dir(&path).map_err(io_error(format!("cannot list {}", path.display())))?;
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error(format!("cannot list {}", path.display())))?;
            let name = entry.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".img"))
                .and_then(ObjectId::parse)
            {
                ids.push(id);
            }
        }
        ids.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(ids)
    }

    fn used_bytes(&self) -> Result<i64> {
        let mut used = 0i64;
        for id in self.ids_in("volumes")? {
            let (_, size) = self.existing_volume(&id.0)?;
            used = used.saturating_add(size);
        }
        Ok(used)
    }

    fn snapshot(&self, id: &ObjectId) -> Result<Snapshot> {
        let not_found = || ProviderError::not_found(format!("snapshot {} not found", id.0));
        let meta = match fs::metadata(self.snapshot_path(id)) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(io_error(format!("cannot inspect snapshot {}", id.0))(e)),
        };
        let source = fs::read_to_string(self.snapshot_source_path(id)).map_err(io_error(
            format!("cannot read the source of snapshot {}", id.0),
        ))?;
        let created = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default();
        Ok(Snapshot {
            id: id.0.clone(),
            source_volume_id: source,
            size_bytes: i64::try_from(meta.len()).unwrap_or(i64::MAX),
            creation_time_seconds: i64::try_from(created.as_secs()).unwrap_or(i64::MAX),
            creation_time_nanos: i32::try_from(created.subsec_nanos()).unwrap_or(0),
            ready_to_use: true,
            ..Default::default()
        })
    }
}

fn round_up(bytes: i64) -> Result<i64> {
    let bytes = bytes.max(MIB);
    bytes
        .checked_add(MIB - 1)
        .map(|b| b / MIB * MIB)
        .ok_or_else(|| ProviderError::out_of_range(format!("{bytes} bytes is too large")))
}

fn set_len(path: &Path, size: i64) -> Result<()> {
    let len = u64::try_from(size).map_err(|_| ProviderError::out_of_range("negative size"))?;
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .map_err(io_error(format!("cannot size {}", path.display())))
}

#[async_trait]
impl Provider for FileProvider {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            kind: KIND.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            attach_required: true,
            node_local: true,
            snapshots: true,
            expand: true,
            list_volumes: true,
            capacity: true,
            published_nodes: true,
            access_modes: vec![AccessMode::SingleNodeWriter as i32],
            ..Default::default()
        }
    }

    async fn create_volume(&self, req: CreateVolumeRequest) -> Result<Volume> {
        Params::new("example-files parameter", &req.parameters).finish()?;
        let id = ObjectId::parse(&req.name).ok_or_else(|| {
            ProviderError::invalid_argument(format!(
                "volume name {:?} is not a safe file name ([A-Za-z0-9._-], at most 128)",
                req.name
            ))
        })?;
        let size = round_up(req.required_bytes)?;
        if req.limit_bytes > 0 && size > req.limit_bytes {
            return Err(ProviderError::out_of_range(format!(
                "{size} bytes (whole MiB) exceed the limit of {} bytes",
                req.limit_bytes
            )));
        }
        let snapshot = match &req.source {
            None => None,
            Some(create_volume_request::Source::SourceSnapshotId(snap)) => Some(
                ObjectId::parse(snap)
                    .filter(|s| self.snapshot_path(s).exists())
                    .ok_or_else(|| {
                        ProviderError::not_found(format!("snapshot {snap} not found"))
                    })?,
            ),
            Some(create_volume_request::Source::SourceVolumeId(_)) => {
                return Err(ProviderError::invalid_argument(
                    "this provider cannot clone volumes",
                ));
            }
        };
        if let Ok((_, existing)) = self.existing_volume(&id.0) {
            let fits = existing >= req.required_bytes
                && (req.limit_bytes == 0 || existing <= req.limit_bytes);
            return if fits && snapshot.is_none() {
                Ok(self.volume(&id, existing))
            } else {
                Err(ProviderError::already_exists(format!(
                    "volume {} exists with {existing} bytes",
                    id.0
                )))
            };
        }
        if self.used_bytes()?.saturating_add(size) > self.capacity_bytes {
            return Err(ProviderError::resource_exhausted(format!(
                "{size} more bytes do not fit in the {} bytes of {}",
                self.capacity_bytes,
                self.root.display()
            )));
        }
        let path = self.volume_path(&id);
        match &snapshot {
            Some(snap) => {
                fs::copy(self.snapshot_path(snap), &path)
                    .map_err(io_error(format!("cannot restore snapshot {}", snap.0)))?;
            }
            None => {
                fs::File::create_new(&path)
                    .map_err(io_error(format!("cannot create {}", path.display())))?;
            }
        }
        set_len(&path, size)?;
        tracing::info!(volume = %id.0, size, "created volume");
        let mut volume = self.volume(&id, size);
        volume.source = snapshot.map(|s| volume::Source::SourceSnapshotId(s.0));
        Ok(volume)
    }

    async fn delete_volume(&self, req: VolumeRef) -> Result<()> {
        let Some(id) = ObjectId::parse(&req.volume_id) else {
            return Ok(());
        };
        if let Some(node) = self.attached_node(&id)? {
            return Err(ProviderError::failed_precondition(format!(
                "volume {} is attached to {node}",
                id.0
            )));
        }
        match fs::remove_file(self.volume_path(&id)) {
            Ok(()) => {
                tracing::info!(volume = %id.0, "deleted volume");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(format!("cannot delete volume {}", id.0))(e)),
        }
    }

    async fn get_volume(&self, req: VolumeRef) -> Result<VolumeStatus> {
        let (id, size) = self.existing_volume(&req.volume_id)?;
        self.status(&id, size)
    }

    async fn list_volumes(&self, req: ListRequest) -> Result<ListVolumesResponse> {
        let ids = self.ids_in("volumes")?;
        let (ids, next_token) = page(ids, req.max_entries, &req.starting_token)?;
        let mut entries = Vec::with_capacity(ids.len());
        for id in ids {
            let (id, size) = self.existing_volume(&id.0)?;
            entries.push(self.status(&id, size)?);
        }
        Ok(ListVolumesResponse {
            entries,
            next_token,
        })
    }

    async fn expand_volume(&self, req: ExpandVolumeRequest) -> Result<ExpandVolumeResponse> {
        let (id, size) = self.existing_volume(&req.volume_id)?;
        let wanted = round_up(req.required_bytes)?;
        if req.limit_bytes > 0 && wanted > req.limit_bytes {
            return Err(ProviderError::out_of_range(
                "the new size exceeds the limit",
            ));
        }
        let capacity_bytes = if wanted > size {
            if self.used_bytes()?.saturating_add(wanted - size) > self.capacity_bytes {
                return Err(ProviderError::resource_exhausted("not enough room to grow"));
            }
            set_len(&self.volume_path(&id), wanted)?;
            wanted
        } else {
            size
        };
        Ok(ExpandVolumeResponse {
            capacity_bytes,
            node_expansion_required: true,
        })
    }

    async fn attach_volume(&self, req: AttachRequest) -> Result<AttachResponse> {
        let (id, _) = self.existing_volume(&req.volume_id)?;
        match self.attached_node(&id)? {
            Some(node) if node != req.node_id => {
                return Err(ProviderError::failed_precondition(format!(
                    "volume {} is attached to {node}",
                    id.0
                )));
            }
            Some(_) => {}
            None => fs::write(self.attachment_path(&id), &req.node_id).map_err(io_error(
                format!("cannot record the attachment of {}", id.0),
            ))?,
        }
        let mut publish_context = std::collections::BTreeMap::new();
        publish_context.insert(
            "image".to_owned(),
            self.volume_path(&id).display().to_string(),
        );
        Ok(AttachResponse { publish_context })
    }

    async fn detach_volume(&self, req: DetachRequest) -> Result<()> {
        let Some(id) = ObjectId::parse(&req.volume_id) else {
            return Ok(());
        };
        match self.attached_node(&id)? {
            Some(node) if req.node_id.is_empty() || node == req.node_id => {
                fs::remove_file(self.attachment_path(&id)).map_err(io_error(format!(
                    "cannot remove the attachment of {}",
                    id.0
                )))
            }
            _ => Ok(()),
        }
    }

    async fn create_snapshot(&self, req: CreateSnapshotRequest) -> Result<Snapshot> {
        Params::new("example-files snapshot parameter", &req.parameters).finish()?;
        let id = ObjectId::parse(&req.name).ok_or_else(|| {
            ProviderError::invalid_argument(format!(
                "snapshot name {:?} is not a safe file name",
                req.name
            ))
        })?;
        if let Ok(existing) = self.snapshot(&id) {
            return if existing.source_volume_id == req.source_volume_id {
                Ok(existing)
            } else {
                Err(ProviderError::already_exists(format!(
                    "snapshot {} exists for volume {}",
                    id.0, existing.source_volume_id
                )))
            };
        }
        let (volume, _) = self.existing_volume(&req.source_volume_id)?;
        fs::write(self.snapshot_source_path(&id), &volume.0).map_err(io_error(format!(
            "cannot record the source of snapshot {}",
            id.0
        )))?;
        fs::copy(self.volume_path(&volume), self.snapshot_path(&id)).map_err(io_error(format!(
            "cannot copy volume {} into snapshot {}",
            volume.0, id.0
        )))?;
        tracing::info!(snapshot = %id.0, volume = %volume.0, "created snapshot");
        self.snapshot(&id)
    }

    async fn delete_snapshot(&self, req: SnapshotRef) -> Result<()> {
        let Some(id) = ObjectId::parse(&req.snapshot_id) else {
            return Ok(());
        };
        for path in [self.snapshot_path(&id), self.snapshot_source_path(&id)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(format!("cannot delete {}", path.display()))(e)),
            }
        }
        Ok(())
    }

    async fn get_snapshot(&self, req: SnapshotRef) -> Result<Snapshot> {
        let id = ObjectId::parse(&req.snapshot_id).ok_or_else(|| {
            ProviderError::not_found(format!("snapshot {} not found", req.snapshot_id))
        })?;
        self.snapshot(&id)
    }

    async fn list_snapshots(&self, req: ListSnapshotsRequest) -> Result<ListSnapshotsResponse> {
        let mut all = Vec::new();
        for id in self.ids_in("snapshots")? {
            if !req.snapshot_id.is_empty() && id.0 != req.snapshot_id {
                continue;
            }
            let snapshot = self.snapshot(&id)?;
            if req.source_volume_id.is_empty() || snapshot.source_volume_id == req.source_volume_id
            {
                all.push(snapshot);
            }
        }
        let (entries, next_token) = page(all, req.max_entries, &req.starting_token)?;
        Ok(ListSnapshotsResponse {
            entries,
            next_token,
        })
    }

    async fn get_capacity(&self, req: CapacityRequest) -> Result<CapacityResponse> {
        if let Some(topology) = &req.topology
            && !topology.is_subset_of(&self.topology())
        {
            return Ok(CapacityResponse::default());
        }
        Ok(CapacityResponse {
            available_bytes: (self.capacity_bytes - self.used_bytes()?).max(0),
            maximum_volume_size: self.capacity_bytes,
            minimum_volume_size: MIB,
            ..Default::default()
        })
    }

    async fn node_info(&self) -> Result<NodeInfo> {
        Ok(NodeInfo {
            node_id: self.node_name.clone(),
            topology: Some(self.topology()),
            ..Default::default()
        })
    }

    async fn find_device(&self, req: FindDeviceRequest) -> Result<FindDeviceResponse> {
        let (id, _) = self.existing_volume(&req.volume_id)?;
        Ok(FindDeviceResponse {
            device_path: self.volume_path(&id).display().to_string(),
        })
    }

    async fn volume_condition(&self, req: VolumeRef) -> Result<VolumeCondition> {
        Ok(match self.existing_volume(&req.volume_id) {
            Ok(_) => VolumeCondition::default(),
            Err(e) => VolumeCondition {
                abnormal: true,
                message: e.to_string(),
            },
        })
    }
}

#[cfg(feature = "dylib")]
omnidisk_provider_api::export_provider!(FACTORY);

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(dir: &Path) -> FileProvider {
        FileProvider::new(
            Settings {
                root: dir.to_owned(),
                capacity_bytes: 8 * MIB,
            },
            "node-a".into(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn create_is_idempotent_and_capacity_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(dir.path());
        let req = CreateVolumeRequest {
            name: "pvc-1".into(),
            required_bytes: 3 * MIB + 1,
            ..Default::default()
        };
        let v = p.create_volume(req.clone()).await.unwrap();
        assert_eq!(v.capacity_bytes, 4 * MIB);
        assert_eq!(p.create_volume(req).await.unwrap(), v);
        let too_big = CreateVolumeRequest {
            name: "pvc-2".into(),
            required_bytes: 5 * MIB,
            ..Default::default()
        };
        assert_eq!(
            p.create_volume(too_big).await.unwrap_err().kind(),
            ErrorKind::ResourceExhausted
        );
    }

    #[tokio::test]
    async fn unsafe_names_are_refused_and_unknown_ids_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(dir.path());
        let req = CreateVolumeRequest {
            name: "../escape".into(),
            ..Default::default()
        };
        assert_eq!(
            p.create_volume(req).await.unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let missing = VolumeRef {
            volume_id: "../../etc/passwd".into(),
        };
        assert_eq!(
            p.get_volume(missing).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
}
