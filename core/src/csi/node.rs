//! The CSI Node service: staging (find the device, format it if it is
//! blank, mount it), publishing (bind mounts), statistics, expansion and
//! the node's identity.
//!
//! Every idempotency decision reads the mount table through the
//! [`Mounter`], never a cache here, so a restarted driver continues where
//! the previous one stopped. The only state kept on disk is the mapping of
//! ephemeral inline volumes to the volumes created for them.

mod ephemeral;

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use omnidisk_provider_api::ErrorKind;
use omnidisk_provider_api::params::SIDECAR_PREFIX;
use omnidisk_provider_api::types as p;
use tonic::{Request, Response, Status};

use self::ephemeral::{EPHEMERAL_KEY, KubeletVolumeId, Record, SIZE_KEY, StateStore};
use super::controller::{FS_TYPE_PARAM, TYPE_PARAM};
use super::convert::{capability_in, is_block};
use super::{log_request, traced, validate};
use crate::Driver;
use crate::error::{CoreError, CoreResult};
use crate::generated::csi;
use crate::generated::csi::node_server::Node;
use crate::generated::csi::node_service_capability::{Rpc, Type as CapType, rpc::Type as RpcType};
use crate::generated::csi::volume_capability::AccessType;
use crate::generated::csi::volume_capability::access_mode::Mode;
use crate::ids::{MAX_NODE_ID_BYTES, NodeId, ScopedId};
use crate::locks::InFlightGuard;
use crate::mount::{
    DeviceNumber, FormatOptions, FsType, MountError, MountInfo, MountOptions, Mounter, Probe,
    format, top_mounts,
};
use crate::routing::Instance;

/// Longest path accepted from the CO.
const MAX_PATH_BYTES: usize = 4096;
/// Mounts stacked on one path that unpublish/unstage will peel off before
/// giving up (more means something else keeps mounting there).
const MAX_STACKED_MOUNTS: usize = 16;
/// Filesystems the node mounts when it finds them on a volume whose
/// filesystem type was not asked for explicitly.
const MOUNTABLE_FOUND: [&str; 4] = ["ext2", "ext3", "ext4", "xfs"];

/// The Node service.
pub struct NodeService {
    driver: Arc<Driver>,
}

fn provider_err(
    instance: &Instance,
    op: &'static str,
) -> impl FnOnce(omnidisk_provider_api::ProviderError) -> CoreError {
    let name = instance.name.clone();
    move |source| CoreError::Provider {
        instance: name,
        op,
        source,
    }
}

/// Turns a mounter failure into the core's error: refused options are the
/// caller's fault, everything else is a node failure with its cause kept.
fn host_err(what: impl Into<String>) -> impl FnOnce(MountError) -> CoreError {
    let what = what.into();
    move |err| match err {
        MountError::InvalidMountOption(_) | MountError::InvalidFormatOptions(_) => {
            CoreError::InvalidArgument(format!("{what}: {err}"))
        }
        other => CoreError::node(what, other.into()),
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> CoreError {
    let what = what.into();
    move |err| CoreError::node(what, err)
}

/// Checks a path handed over by the CO or a provider before it reaches a
/// syscall: absolute, no `..`, no control characters.
fn checked_path(raw: &str) -> Option<PathBuf> {
    let path = Path::new(raw);
    let ok = path.is_absolute()
        && raw.len() <= MAX_PATH_BYTES
        && !raw.chars().any(char::is_control)
        && !path.components().any(|c| matches!(c, Component::ParentDir));
    ok.then(|| path.to_path_buf())
}

/// A required path field of a request.
fn path_field(field: &str, raw: &str) -> CoreResult<PathBuf> {
    validate::required(field, raw)?;
    checked_path(raw).ok_or_else(|| {
        CoreError::InvalidArgument(format!(
            "{field} must be an absolute path without `..` or control characters, got {raw:?}"
        ))
    })
}

fn capability_field(cap: Option<&csi::VolumeCapability>) -> CoreResult<&csi::VolumeCapability> {
    let cap = cap.ok_or_else(|| CoreError::missing("volume_capability"))?;
    validate::capability("volume_capability", cap)?;
    Ok(cap)
}

fn reader_only(cap: &csi::VolumeCapability) -> bool {
    let mode = cap.access_mode.as_ref().map_or(0, |m| m.mode);
    mode == Mode::SingleNodeReaderOnly as i32 || mode == Mode::MultiNodeReaderOnly as i32
}

fn mount_volume(cap: &csi::VolumeCapability) -> Option<&csi::volume_capability::MountVolume> {
    match &cap.access_type {
        Some(AccessType::Mount(m)) => Some(m),
        _ => None,
    }
}

fn get_ci<'a>(map: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// The filesystem a volume should have and whether someone asked for it.
#[derive(Debug, Clone, Copy)]
struct FsChoice {
    fs: FsType,
    explicit: bool,
}

/// Which filesystem type to mount an existing filesystem `found` with,
/// when `wanted` was asked for. Never reformat: a mismatch the node cannot
/// bridge is an error.
fn filesystem_to_mount(found: &str, wanted: FsChoice) -> CoreResult<String> {
    let ext_family = |t: &str| matches!(t, "ext2" | "ext3" | "ext4");
    if found == wanted.fs.as_str() || (ext_family(found) && ext_family(wanted.fs.as_str())) {
        return Ok(found.to_owned());
    }
    if !wanted.explicit && MOUNTABLE_FOUND.contains(&found) {
        return Ok(found.to_owned());
    }
    Err(CoreError::FailedPrecondition(format!(
        "the volume already holds a {found} filesystem, not {}; it is never reformatted",
        wanted.fs
    )))
}

fn rpc_capability(kind: RpcType) -> csi::NodeServiceCapability {
    csi::NodeServiceCapability {
        r#type: Some(CapType::Rpc(Rpc {
            r#type: kind as i32,
        })),
    }
}

impl NodeService {
    /// The service over a driver.
    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver }
    }

    /// Runs blocking mounter work off the async executor.
    async fn host<T, F>(&self, work: F) -> Result<T, MountError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Mounter) -> Result<T, MountError> + Send + 'static,
    {
        let mounter = self.driver.mounter.clone();
        // Mount-table reads and mount syscalls are short but blocking. On the
        // multi-threaded runtime run them in place (the runtime hands this
        // worker's other tasks to another thread meanwhile), which saves a
        // thread hand-off per step; elsewhere use the blocking pool.
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            return tokio::task::block_in_place(move || work(mounter.as_ref()));
        }
        tokio::task::spawn_blocking(move || work(mounter.as_ref()))
            .await
            .map_err(|e| MountError::TaskFailed(e.to_string()))?
    }

    async fn find_mount(&self, path: &Path) -> CoreResult<Option<MountInfo>> {
        let owned = path.to_path_buf();
        self.host(move |m| m.find_mount(&owned))
            .await
            .map_err(host_err(format!(
                "reading the mount table for {}",
                path.display()
            )))
    }

    async fn device_number(&self, device: &Path) -> CoreResult<DeviceNumber> {
        let owned = device.to_path_buf();
        self.host(move |m| m.device_number(&owned))
            .await
            .map_err(host_err(format!("checking device {}", device.display())))
    }

    fn claim(&self, key: &str) -> CoreResult<InFlightGuard> {
        self.driver
            .inflight
            .try_acquire(key)
            .ok_or_else(|| CoreError::Busy(key.to_owned()))
    }

    fn state_store(&self) -> StateStore {
        StateStore::new(&self.driver.node.state_dir)
    }

    fn choose_fs(&self, cap_fs: &str, ctx: &BTreeMap<String, String>) -> CoreResult<FsChoice> {
        if !cap_fs.is_empty() {
            return Ok(FsChoice {
                fs: FsType::parse(cap_fs)?,
                explicit: true,
            });
        }
        if let Some(fs) = get_ci(ctx, FS_TYPE_PARAM).filter(|v| !v.is_empty()) {
            return Ok(FsChoice {
                fs: FsType::parse(fs)?,
                explicit: true,
            });
        }
        let default = &self.driver.node.default_fs_type;
        let fs = FsType::parse(default).map_err(|e| {
            CoreError::Internal(format!(
                "the configured default filesystem is unusable: {e}"
            ))
        })?;
        Ok(FsChoice {
            fs,
            explicit: false,
        })
    }

    async fn find_device(
        &self,
        instance: &Instance,
        id: &ScopedId,
        publish_context: &BTreeMap<String, String>,
        volume_context: &BTreeMap<String, String>,
    ) -> CoreResult<PathBuf> {
        let found = instance
            .provider
            .find_device(p::FindDeviceRequest {
                volume_id: id.local().to_owned(),
                publish_context: publish_context.clone(),
                volume_context: volume_context.clone(),
            })
            .await
            .map_err(provider_err(instance, "find device"))?;
        checked_path(&found.device_path).ok_or_else(|| {
            CoreError::Internal(format!(
                "provider instance {} returned an unusable device path {:?} for {id}",
                instance.name, found.device_path
            ))
        })
    }

    /// Formats `device` if it holds nothing and returns the filesystem type
    /// to mount it with.
    async fn ensure_filesystem(
        &self,
        device: &Path,
        wanted: FsChoice,
        options: &FormatOptions,
    ) -> CoreResult<String> {
        let dev = device.to_path_buf();
        let probe = self
            .host(move |m| m.probe(&dev))
            .await
            .map_err(host_err(format!(
                "cannot tell whether {} holds a filesystem, so it is not formatted",
                device.display()
            )))?;
        match probe {
            Probe::Unformatted => {
                let dev = device.to_path_buf();
                let opts = options.clone();
                let fs = wanted.fs;
                tracing::info!(device = %device.display(), fs = %fs, "formatting a blank volume");
                self.host(move |m| m.format(&dev, fs, &opts))
                    .await
                    .map_err(host_err(format!("formatting {} as {fs}", device.display())))?;
                Ok(fs.as_str().to_owned())
            }
            Probe::Filesystem(found) => filesystem_to_mount(&found, wanted),
            Probe::Other(what) => Err(CoreError::FailedPrecondition(format!(
                "{} holds {what}, not a filesystem; it is never formatted over",
                device.display()
            ))),
        }
    }

    async fn mount_device(
        &self,
        device: &Path,
        target: &Path,
        fs_type: String,
        options: MountOptions,
    ) -> CoreResult<()> {
        tokio::fs::create_dir_all(target)
            .await
            .map_err(io_err(format!("creating {}", target.display())))?;
        let (dev, tgt) = (device.to_path_buf(), target.to_path_buf());
        let what = format!(
            "mounting {} on {} as {fs_type}",
            device.display(),
            target.display()
        );
        self.host(move |m| m.mount(&dev, &tgt, &fs_type, &options))
            .await
            .map_err(host_err(what))
    }

    /// Unmounts everything stacked on `path`, then removes the directory
    /// or file a publish or stage created there, in one blocking step.
    /// Absent is fine; a directory that is not empty is left alone (its
    /// contents were written while nothing was mounted, and are not this
    /// driver's to delete).
    async fn clear_mount_point(&self, path: &Path) -> CoreResult<()> {
        let owned = path.to_path_buf();
        let cleared = self
            .host(move |m| {
                // The kernel says whether anything is mounted: unmounting a
                // path that is no mount point fails with EINVAL (ENOENT when
                // it is gone), which saves reading the mount table around
                // every unmount.
                for _ in 0..MAX_STACKED_MOUNTS {
                    match m.unmount(&owned) {
                        Ok(()) => continue,
                        Err(e)
                            if matches!(
                                e.io_kind(),
                                io::ErrorKind::InvalidInput | io::ErrorKind::NotFound
                            ) =>
                        {
                            return Ok(Some(remove_mount_point(&owned)));
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(None)
            })
            .await
            .map_err(host_err(format!("unmounting {}", path.display())))?;
        match cleared {
            None => Err(CoreError::Internal(format!(
                "{} is still mounted after {MAX_STACKED_MOUNTS} unmounts",
                path.display()
            ))),
            Some(Ok(())) => Ok(()),
            Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Some(Err(e)) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                tracing::warn!(path = %path.display(), "left a non-empty directory behind after unmounting it");
                Ok(())
            }
            Some(Err(e)) => Err(CoreError::node(format!("removing {}", path.display()), e)),
        }
    }

    async fn stage(
        &self,
        req: csi::NodeStageVolumeRequest,
    ) -> CoreResult<csi::NodeStageVolumeResponse> {
        let id = validate::existing_id("volume", "volume_id", &req.volume_id)?;
        let staging = path_field("staging_target_path", &req.staging_target_path)?;
        let cap = capability_field(req.volume_capability.as_ref())?;
        let _guard = self.claim(&req.volume_id)?;
        let instance = self.driver.registry.for_id(&id)?;
        if let Some(why) = validate::unsupported_by(&instance.info, cap) {
            return Err(CoreError::FailedPrecondition(why));
        }
        let device = self
            .find_device(instance, &id, &req.publish_context, &req.volume_context)
            .await?;
        let number = self.device_number(&device).await?;
        let Some(mount) = mount_volume(cap) else {
            // Block volumes are bound straight from the device at publish;
            // staging only proves the device is there.
            return Ok(csi::NodeStageVolumeResponse {});
        };

        let wanted = self.choose_fs(&mount.fs_type, &req.volume_context)?;
        let format_options = format::from_context(&req.volume_context)?;
        format_options.mkfs_args(wanted.fs)?;
        let mut options = MountOptions::parse(&mount.mount_flags)
            .map_err(host_err("volume_capability.mount.mount_flags"))?;
        if reader_only(cap) {
            options.make_read_only();
        }

        if let Some(existing) = self.find_mount(&staging).await? {
            if existing.device == number {
                return Ok(csi::NodeStageVolumeResponse {});
            }
            return Err(CoreError::AlreadyExists(format!(
                "{} is already the mount of device {} ({}), not of {id}'s device {} ({number})",
                staging.display(),
                existing.source,
                existing.device,
                device.display()
            )));
        }

        let fs_type = self
            .ensure_filesystem(&device, wanted, &format_options)
            .await?;
        self.mount_device(&device, &staging, fs_type, options)
            .await?;
        Ok(csi::NodeStageVolumeResponse {})
    }

    async fn unstage(
        &self,
        req: csi::NodeUnstageVolumeRequest,
    ) -> CoreResult<csi::NodeUnstageVolumeResponse> {
        validate::required("volume_id", &req.volume_id)?;
        let staging = path_field("staging_target_path", &req.staging_target_path)?;
        let _guard = self.claim(&req.volume_id)?;
        self.clear_mount_point(&staging).await?;
        Ok(csi::NodeUnstageVolumeResponse {})
    }

    async fn publish(
        &self,
        req: csi::NodePublishVolumeRequest,
    ) -> CoreResult<csi::NodePublishVolumeResponse> {
        if get_ci(&req.volume_context, EPHEMERAL_KEY) == Some("true") {
            return self.publish_ephemeral(req).await;
        }
        let id = validate::existing_id("volume", "volume_id", &req.volume_id)?;
        let target = path_field("target_path", &req.target_path)?;
        let cap = capability_field(req.volume_capability.as_ref())?;
        let _guard = self.claim(&req.volume_id)?;
        let instance = self.driver.registry.for_id(&id)?;
        if let Some(why) = validate::unsupported_by(&instance.info, cap) {
            return Err(CoreError::FailedPrecondition(why));
        }
        let read_only = req.readonly || reader_only(cap);
        if is_block(cap) {
            self.publish_block(instance, &id, &req, &target, read_only)
                .await?;
        } else {
            self.publish_mount(&id, &req.staging_target_path, &target, read_only)
                .await?;
        }
        Ok(csi::NodePublishVolumeResponse {})
    }

    async fn publish_mount(
        &self,
        id: &ScopedId,
        staging_raw: &str,
        target: &Path,
        read_only: bool,
    ) -> CoreResult<()> {
        if staging_raw.is_empty() {
            return Err(CoreError::FailedPrecondition(
                "staging_target_path is required: this driver stages volumes before publishing them".into(),
            ));
        }
        let staging = path_field("staging_target_path", staging_raw)?;
        // One blocking step: one read of the mount table, then the bind
        // mount if the target is free.
        let (src, tgt) = (staging.clone(), target.to_path_buf());
        let step = self
            .host(move |m| {
                let [staged, existing] = top_mounts(&m.mount_table()?, [&src, &tgt]);
                let Some(staged) = staged else {
                    return Ok(PublishStep::NotStaged);
                };
                if let Some(existing) = existing {
                    return Ok(PublishStep::Occupied {
                        staged: staged.device,
                        existing: existing.device,
                        existing_read_only: existing.is_read_only(),
                    });
                }
                std::fs::create_dir_all(&tgt).map_err(|source| MountError::CreateMountPoint {
                    path: tgt.clone(),
                    source,
                })?;
                m.bind_mount(&src, &tgt, read_only)?;
                Ok(PublishStep::Mounted)
            })
            .await
            .map_err(host_err(format!(
                "bind-mounting {} on {}",
                staging.display(),
                target.display()
            )))?;
        match step {
            PublishStep::Mounted => Ok(()),
            PublishStep::NotStaged => Err(CoreError::FailedPrecondition(format!(
                "{id} is not staged at {}",
                staging.display()
            ))),
            PublishStep::Occupied {
                staged,
                existing,
                existing_read_only,
            } => {
                if existing == staged && existing_read_only == read_only {
                    return Ok(());
                }
                Err(CoreError::AlreadyExists(format!(
                    "{} is already a {} mount of device {}, not a {} mount of {id} ({})",
                    target.display(),
                    if existing_read_only {
                        "read-only"
                    } else {
                        "read-write"
                    },
                    existing,
                    if read_only { "read-only" } else { "read-write" },
                    staged
                )))
            }
        }
    }

    async fn publish_block(
        &self,
        instance: &Instance,
        id: &ScopedId,
        req: &csi::NodePublishVolumeRequest,
        target: &Path,
        read_only: bool,
    ) -> CoreResult<()> {
        let device = self
            .find_device(instance, id, &req.publish_context, &req.volume_context)
            .await?;
        let number = self.device_number(&device).await?;
        if let Some(existing) = self.find_mount(target).await? {
            let bound = self.device_number(target).await.ok();
            if bound == Some(number) && existing.is_read_only() == read_only {
                return Ok(());
            }
            return Err(CoreError::AlreadyExists(format!(
                "{} is already a mount of something other than a {} binding of {id}'s device {}",
                target.display(),
                if read_only { "read-only" } else { "read-write" },
                device.display()
            )));
        }
        match tokio::fs::metadata(target).await {
            Ok(meta) if meta.is_dir() => {
                return Err(CoreError::InvalidArgument(format!(
                    "target_path {} is a directory; block volumes are published on a file",
                    target.display()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = target.parent() {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(io_err(format!("creating {}", parent.display())))?;
                }
                tokio::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(target)
                    .await
                    .map_err(io_err(format!("creating {}", target.display())))?;
            }
            Err(e) => {
                return Err(CoreError::node(
                    format!("inspecting {}", target.display()),
                    e,
                ));
            }
        }
        let (src, tgt) = (device.clone(), target.to_path_buf());
        self.host(move |m| m.bind_mount(&src, &tgt, read_only))
            .await
            .map_err(host_err(format!(
                "bind-mounting {} on {}",
                device.display(),
                target.display()
            )))
    }

    async fn unpublish(
        &self,
        req: csi::NodeUnpublishVolumeRequest,
    ) -> CoreResult<csi::NodeUnpublishVolumeResponse> {
        validate::required("volume_id", &req.volume_id)?;
        let target = path_field("target_path", &req.target_path)?;
        let _guard = self.claim(&req.volume_id)?;
        // Unpublish needs no provider: a volume whose instance was removed
        // from the configuration can still be unmounted.
        if let Ok(kubelet_id) = KubeletVolumeId::parse(&req.volume_id) {
            if let Some(record) = self.state_store().load(&kubelet_id)? {
                return self.unpublish_ephemeral(&kubelet_id, record, &target).await;
            }
        }
        self.clear_mount_point(&target).await?;
        Ok(csi::NodeUnpublishVolumeResponse {})
    }

    async fn publish_ephemeral(
        &self,
        req: csi::NodePublishVolumeRequest,
    ) -> CoreResult<csi::NodePublishVolumeResponse> {
        let kubelet_id = KubeletVolumeId::parse(&req.volume_id)?;
        let target = path_field("target_path", &req.target_path)?;
        let cap = capability_field(req.volume_capability.as_ref())?;
        let Some(mount) = mount_volume(cap) else {
            return Err(CoreError::InvalidArgument(
                "ephemeral inline volumes are filesystem volumes, not block volumes".into(),
            ));
        };
        let ctx = &req.volume_context;
        let instance_name = get_ci(ctx, TYPE_PARAM).ok_or_else(|| {
            CoreError::InvalidArgument(format!(
                "ephemeral inline volumes need the volume attribute `type` naming a provider instance (configured: {})",
                self.driver.registry.names()
            ))
        })?;
        let instance = self.driver.registry.get(instance_name)?;
        if !instance.info.ephemeral {
            return Err(CoreError::InvalidArgument(format!(
                "provider instance {} ({}) does not serve ephemeral inline volumes",
                instance.name, instance.info.kind
            )));
        }
        let _guard = self.claim(kubelet_id.as_str())?;
        let store = self.state_store();
        if let Some(record) = store.load(&kubelet_id)? {
            if record.target_path != target {
                return Err(CoreError::AlreadyExists(format!(
                    "ephemeral volume {kubelet_id} is already published at {}",
                    record.target_path.display()
                )));
            }
            if self.find_mount(&target).await?.is_some() {
                return Ok(csi::NodePublishVolumeResponse {});
            }
            // Otherwise an earlier attempt stopped half-way: creating is
            // idempotent by name, so simply go through it again.
        }

        let read_only = req.readonly || reader_only(cap);
        let size = match get_ci(ctx, SIZE_KEY) {
            None => 0,
            Some(raw) => ephemeral::parse_size(raw).map_err(CoreError::InvalidArgument)?,
        };
        let mut params: BTreeMap<String, String> = ctx
            .iter()
            .filter(|(k, _)| {
                !k.starts_with(SIDECAR_PREFIX)
                    && ![TYPE_PARAM, SIZE_KEY, FS_TYPE_PARAM]
                        .iter()
                        .any(|known| k.eq_ignore_ascii_case(known))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let format_context = format::extract_from_params(&mut params)?;
        let format_options = format::from_context(&format_context)?;
        let wanted = self.choose_fs(&mount.fs_type, ctx)?;
        format_options.mkfs_args(wanted.fs)?;
        let mut options = MountOptions::parse(&mount.mount_flags)
            .map_err(host_err("volume_capability.mount.mount_flags"))?;
        if read_only {
            options.make_read_only();
        }

        let volume = instance
            .provider
            .create_volume(p::CreateVolumeRequest {
                name: kubelet_id.as_str().to_owned(),
                required_bytes: size,
                parameters: params,
                capabilities: vec![capability_in(cap)],
                ..Default::default()
            })
            .await
            .map_err(provider_err(instance, "create ephemeral volume"))?;
        let id = super::convert::scoped(&instance.name, &volume.id)?;
        let mut record = Record {
            volume_id: id.to_string(),
            target_path: target.clone(),
            attached_node: None,
        };
        // Saved before anything else can fail, so unpublish can always clean up.
        store.save(&kubelet_id, &record)?;

        let publish_context = if instance.info.attach_required {
            let csi_node_id = self.info().await?.node_id;
            let node = instance
                .provider
                .node_info()
                .await
                .map_err(provider_err(instance, "node info"))?
                .node_id;
            record.attached_node = Some(node.clone());
            store.save(&kubelet_id, &record)?;
            instance
                .provider
                .attach_volume(p::AttachRequest {
                    volume_id: id.local().to_owned(),
                    node_id: node,
                    readonly: read_only,
                    capability: Some(capability_in(cap)),
                    volume_context: volume.context.clone(),
                    csi_node_id,
                })
                .await
                .map_err(provider_err(instance, "attach ephemeral volume"))?
                .publish_context
        } else {
            BTreeMap::new()
        };
        let device = self
            .find_device(instance, &id, &publish_context, &volume.context)
            .await?;
        self.device_number(&device).await?;
        let fs_type = self
            .ensure_filesystem(&device, wanted, &format_options)
            .await?;
        self.mount_device(&device, &target, fs_type, options)
            .await?;
        tracing::info!(volume = %id, kubelet_volume = %kubelet_id, "ephemeral volume published");
        Ok(csi::NodePublishVolumeResponse {})
    }

    async fn unpublish_ephemeral(
        &self,
        kubelet_id: &KubeletVolumeId,
        record: Record,
        target: &Path,
    ) -> CoreResult<csi::NodeUnpublishVolumeResponse> {
        self.clear_mount_point(target).await?;
        let id = ScopedId::parse(&record.volume_id).map_err(|e| {
            CoreError::Internal(format!(
                "the state of ephemeral volume {kubelet_id} names an unusable volume {:?}: {e}",
                record.volume_id
            ))
        })?;
        let instance = self.driver.registry.for_id(&id)?;
        if let Some(node) = &record.attached_node {
            instance
                .provider
                .detach_volume(p::DetachRequest {
                    volume_id: id.local().to_owned(),
                    node_id: node.clone(),
                })
                .await
                .map_err(provider_err(instance, "detach ephemeral volume"))?;
        }
        instance
            .provider
            .delete_volume(p::VolumeRef {
                volume_id: id.local().to_owned(),
            })
            .await
            .map_err(provider_err(instance, "delete ephemeral volume"))?;
        self.state_store().remove(kubelet_id)?;
        tracing::info!(volume = %id, kubelet_volume = %kubelet_id, "ephemeral volume deleted");
        Ok(csi::NodeUnpublishVolumeResponse {})
    }

    async fn stats(
        &self,
        req: csi::NodeGetVolumeStatsRequest,
    ) -> CoreResult<csi::NodeGetVolumeStatsResponse> {
        let id = validate::existing_id("volume", "volume_id", &req.volume_id)?;
        let path = path_field("volume_path", &req.volume_path)?;
        let instance = self.driver.registry.for_id(&id)?;
        let is_dir = match tokio::fs::metadata(&path).await {
            Ok(meta) => Some(meta.is_dir()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CoreError::NotFound(format!(
                    "volume_path {} does not exist",
                    path.display()
                )));
            }
            // A mount whose device vanished can fail stat with EIO: report
            // it as a condition below rather than fail the call.
            Err(_) => None,
        };

        let mut problems = Vec::new();
        let mut usage = Vec::new();
        match self.find_mount(&path).await? {
            None => problems.push(format!("{} is not a mount point any more", path.display())),
            Some(mount) if is_dir == Some(false) => {
                let owned = path.clone();
                match self.host(move |m| m.device_size(&owned)).await {
                    Ok(size) => usage.push(csi::VolumeUsage {
                        total: i64::try_from(size).unwrap_or(i64::MAX),
                        unit: csi::volume_usage::Unit::Bytes as i32,
                        ..Default::default()
                    }),
                    Err(e) => problems.push(format!(
                        "the device bound at {} is gone: {e}",
                        mount.mount_point.display()
                    )),
                }
            }
            Some(mount) => {
                let owned = path.clone();
                match self.host(move |m| m.filesystem_stats(&owned)).await {
                    Ok(st) => {
                        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                        usage.push(csi::VolumeUsage {
                            available: n(st.available_bytes),
                            total: n(st.total_bytes),
                            used: n(st.used_bytes),
                            unit: csi::volume_usage::Unit::Bytes as i32,
                        });
                        usage.push(csi::VolumeUsage {
                            available: n(st.free_inodes),
                            total: n(st.total_inodes),
                            used: n(st.used_inodes),
                            unit: csi::volume_usage::Unit::Inodes as i32,
                        });
                    }
                    Err(e) => problems.push(format!(
                        "cannot read the filesystem at {}: {e}",
                        path.display()
                    )),
                }
                if let Some(source) = checked_path(&mount.source) {
                    if self.device_number(&source).await.ok() != Some(mount.device) {
                        problems.push(format!("device {} of the mount is gone", source.display()));
                    }
                }
            }
        }
        match instance
            .provider
            .volume_condition(p::VolumeRef {
                volume_id: id.local().to_owned(),
            })
            .await
        {
            Ok(c) if c.abnormal => problems.push(if c.message.is_empty() {
                format!(
                    "provider instance {} reports the volume abnormal",
                    instance.name
                )
            } else {
                c.message
            }),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Unimplemented => {}
            Err(e) => {
                tracing::warn!(instance = %instance.name, error = %e.full_message(), "cannot read the volume condition")
            }
        }
        Ok(csi::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(csi::VolumeCondition {
                abnormal: !problems.is_empty(),
                message: problems.join("; "),
            }),
        })
    }

    async fn expand(
        &self,
        req: csi::NodeExpandVolumeRequest,
    ) -> CoreResult<csi::NodeExpandVolumeResponse> {
        let id = validate::existing_id("volume", "volume_id", &req.volume_id)?;
        let path = path_field("volume_path", &req.volume_path)?;
        let (required, _limit) = validate::capacity_range(req.capacity_range.as_ref())?;
        if let Some(cap) = &req.volume_capability {
            validate::capability("volume_capability", cap)?;
        }
        let _guard = self.claim(&req.volume_id)?;
        self.driver.registry.for_id(&id)?;
        let meta = match tokio::fs::metadata(&path).await {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CoreError::NotFound(format!(
                    "volume_path {} does not exist",
                    path.display()
                )));
            }
            Err(e) => return Err(CoreError::node(format!("inspecting {}", path.display()), e)),
        };
        let block = req.volume_capability.as_ref().is_some_and(is_block) || !meta.is_dir();
        if block {
            // A block volume grows with its device; nothing to resize here.
            let owned = path.clone();
            let size = self
                .host(move |m| m.device_size(&owned))
                .await
                .map_err(host_err(format!("reading the size of {}", path.display())))?;
            return Ok(csi::NodeExpandVolumeResponse {
                capacity_bytes: i64::try_from(size).unwrap_or(i64::MAX),
            });
        }

        let mut mount = self.find_mount(&path).await?;
        if mount.is_none() && !req.staging_target_path.is_empty() {
            let staging = path_field("staging_target_path", &req.staging_target_path)?;
            mount = self.find_mount(&staging).await?;
        }
        let mount = mount.ok_or_else(|| {
            CoreError::FailedPrecondition(format!("{id} is not mounted at {}", path.display()))
        })?;
        let device = checked_path(&mount.source).ok_or_else(|| {
            CoreError::Internal(format!(
                "the mount at {} has no device path (source {:?})",
                mount.mount_point.display(),
                mount.source
            ))
        })?;
        if self.device_number(&device).await? != mount.device {
            return Err(CoreError::Internal(format!(
                "{} is no longer the device mounted at {}",
                device.display(),
                mount.mount_point.display()
            )));
        }
        let (dev, mount_point, fs_type) = (
            device.clone(),
            mount.mount_point.clone(),
            mount.fs_type.clone(),
        );
        self.host(move |m| m.grow_filesystem(&dev, &mount_point, &fs_type))
            .await
            .map_err(host_err(format!(
                "growing the {} filesystem on {}",
                mount.fs_type,
                device.display()
            )))?;
        let dev = device.clone();
        let size = self
            .host(move |m| m.device_size(&dev))
            .await
            .map_err(host_err(format!(
                "reading the size of {}",
                device.display()
            )))?;
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        if required > 0 && size < required {
            return Err(CoreError::FailedPrecondition(format!(
                "device {} has {size} bytes, less than the {required} asked for; the controller expansion has not reached this node yet",
                device.display()
            )));
        }
        Ok(csi::NodeExpandVolumeResponse {
            capacity_bytes: size,
        })
    }

    async fn info(&self) -> CoreResult<csi::NodeGetInfoResponse> {
        let mut node_id = NodeId {
            name: self.driver.node_name.clone(),
            per_instance: BTreeMap::new(),
        };
        let mut segments = BTreeMap::new();
        let mut limits = Vec::new();
        for instance in self.driver.registry.iter() {
            let info = match instance.provider.node_info().await {
                Ok(info) => info,
                Err(e) if instance.info.node_local => {
                    // This node's own storage: without its node info the
                    // scheduler would place volumes here that cannot work.
                    return Err(provider_err(instance, "node info")(e));
                }
                Err(e) => {
                    tracing::warn!(instance = %instance.name, error = %e.full_message(), "provider instance cannot describe this node; leaving it out of the node's topology");
                    continue;
                }
            };
            if !info.node_id.is_empty() && info.node_id != node_id.name {
                node_id
                    .per_instance
                    .insert(instance.name.clone(), info.node_id);
            }
            for (key, value) in info.topology.map(|t| t.segments).unwrap_or_default() {
                if let Some(previous) = segments.insert(key.clone(), value.clone()) {
                    if previous != value {
                        tracing::warn!(%key, %previous, %value, "provider instances disagree on a topology segment; keeping the last");
                    }
                }
            }
            if info.max_volumes > 0 {
                limits.push(info.max_volumes);
            }
        }
        let text = node_id.to_string();
        if text.len() > MAX_NODE_ID_BYTES || NodeId::parse(&text).is_err() {
            return Err(CoreError::Internal(format!(
                "the node ID {text:?} cannot be encoded (too long, or a provider node ID contains ';' or '=')"
            )));
        }
        let max_volumes_per_node = if self.driver.node.max_volumes_per_node > 0 {
            self.driver.node.max_volumes_per_node
        } else {
            limits.into_iter().min().unwrap_or(0)
        };
        Ok(csi::NodeGetInfoResponse {
            node_id: text,
            max_volumes_per_node,
            accessible_topology: (!segments.is_empty()).then_some(csi::Topology { segments }),
        })
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        log_request(&req);
        let id = req.volume_id.clone();
        traced("NodeStageVolume", &id, self.stage(req)).await
    }

    async fn node_unstage_volume(
        &self,
        request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        tracing::debug!(request = ?req, "request");
        let id = req.volume_id.clone();
        traced("NodeUnstageVolume", &id, self.unstage(req)).await
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        log_request(&req);
        let id = req.volume_id.clone();
        traced("NodePublishVolume", &id, self.publish(req)).await
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        tracing::debug!(request = ?req, "request");
        let id = req.volume_id.clone();
        traced("NodeUnpublishVolume", &id, self.unpublish(req)).await
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        tracing::debug!(request = ?req, "request");
        let id = req.volume_id.clone();
        traced("NodeGetVolumeStats", &id, self.stats(req)).await
    }

    async fn node_expand_volume(
        &self,
        request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        log_request(&req);
        let id = req.volume_id.clone();
        traced("NodeExpandVolume", &id, self.expand(req)).await
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        let capabilities = [
            RpcType::StageUnstageVolume,
            RpcType::GetVolumeStats,
            RpcType::ExpandVolume,
            RpcType::VolumeCondition,
            RpcType::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(rpc_capability)
        .collect();
        traced("NodeGetCapabilities", "", async {
            Ok(csi::NodeGetCapabilitiesResponse { capabilities })
        })
        .await
    }

    async fn node_get_info(
        &self,
        _request: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        traced("NodeGetInfo", "", self.info()).await
    }
}

/// What the blocking part of a filesystem publish found or did.
enum PublishStep {
    /// The bind mount is in place.
    Mounted,
    /// Nothing is mounted at the staging path.
    NotStaged,
    /// Something is already mounted at the target.
    Occupied {
        staged: DeviceNumber,
        existing: DeviceNumber,
        existing_read_only: bool,
    },
}

/// Removes an unmounted mount point: a directory (filesystem targets and
/// staging paths) or a file (block targets). Blocking.
fn remove_mount_point(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_from_outside_are_checked() {
        assert_eq!(
            path_field("target_path", "/var/lib/kubelet/x").unwrap(),
            Path::new("/var/lib/kubelet/x")
        );
        for bad in ["relative/path", "/a/../etc", "/a/b\n", "/a/\0b"] {
            let err = path_field("target_path", bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(err.to_string().contains("target_path"), "{err}");
        }
        assert_eq!(
            path_field("target_path", "").unwrap_err().to_string(),
            "target_path is required"
        );
        assert!(checked_path(&format!("/{}", "x".repeat(MAX_PATH_BYTES))).is_none());
    }

    #[test]
    fn existing_filesystems_are_mounted_not_reformatted() {
        let explicit = |fs| FsChoice { fs, explicit: true };
        let defaulted = |fs| FsChoice {
            fs,
            explicit: false,
        };
        assert_eq!(
            filesystem_to_mount("ext4", explicit(FsType::Ext4)).unwrap(),
            "ext4"
        );
        assert_eq!(
            filesystem_to_mount("ext3", explicit(FsType::Ext4)).unwrap(),
            "ext3"
        );
        assert_eq!(
            filesystem_to_mount("xfs", defaulted(FsType::Ext4)).unwrap(),
            "xfs"
        );
        let err = filesystem_to_mount("xfs", explicit(FsType::Ext4)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.to_string().contains("never reformatted"), "{err}");
        assert!(filesystem_to_mount("btrfs", defaulted(FsType::Ext4)).is_err());
    }

    #[test]
    fn refused_options_are_invalid_arguments_and_host_failures_internal() {
        let err = host_err("x")(MountError::InvalidMountOption("bind".into()));
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let err = host_err("mounting /dev/a on /b")(MountError::Unmount {
            target: "/b".into(),
            source: io::Error::from_raw_os_error(libc::EBUSY),
        });
        assert_eq!(err.code(), tonic::Code::Internal);
        let msg = err.full_message();
        assert!(
            msg.starts_with("mounting /dev/a on /b: cannot unmount /b"),
            "{msg}"
        );
        assert!(msg.to_lowercase().contains("busy"), "{msg}");
    }
}
