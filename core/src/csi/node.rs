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
use crate::mount::confine::{ConfinedPath, is_confinement_error};
use crate::mount::{
    DeviceNumber, FormatOptions, FsType, MountError, MountInfo, MountOptions, Mounter, Probe,
    canonical, format, top_mounts,
};
use crate::routing::Instance;

/// Longest path accepted from the CO or a provider.
const MAX_PATH_BYTES: usize = crate::mount::confine::MAX_PATH_BYTES;
/// How long unpublish, unstage, stats and expand wait for a provider to
/// name a volume's device before giving up (they need it only to check
/// that a mount is the volume's).
const DEVICE_LOOKUP: std::time::Duration = std::time::Duration::from_secs(15);
/// A filesystem this much smaller than its device is grown at staging
/// (restores and clones larger than their source).
const GROW_SLACK_BYTES: u64 = 1 << 20;
/// Mount flags that map to per-mount `MS_*` flags the mount table shows;
/// two stagings of one volume must agree on them.
const PER_MOUNT_FLAGS: [&str; 9] = [
    "ro",
    "noatime",
    "nodiratime",
    "nosuid",
    "nodev",
    "noexec",
    "sync",
    "dirsync",
    "nosymfollow",
];
/// Flags that ask for the default and leave no trace in the mount table.
const DEFAULT_FLAGS: [&str; 10] = [
    "defaults",
    "rw",
    "async",
    "dev",
    "exec",
    "suid",
    "atime",
    "diratime",
    "relatime",
    "nolazytime",
];
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

/// A path value for messages: escaped, and cut when long.
fn shown(raw: &str) -> String {
    crate::csi::validate::shown(raw)
}

/// An `io::Error` from resolving a confined path: a symlink or an escape
/// is the caller's fault, anything else a node failure.
fn confined_io(field: &'static str, path: &ConfinedPath) -> impl FnOnce(io::Error) -> CoreError {
    let shown = path.path().display().to_string();
    move |e| {
        if is_confinement_error(&e) {
            CoreError::InvalidArgument(format!(
                "{field} {shown} crosses a symbolic link or leaves the kubelet directory"
            ))
        } else {
            CoreError::node(format!("resolving {field} {shown}"), e)
        }
    }
}

fn access_mode(cap: &csi::VolumeCapability) -> i32 {
    cap.access_mode.as_ref().map_or(0, |m| m.mode)
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

/// Whether `instance` serves CSI ephemeral inline volumes on this node:
/// its provider supports them, and `[node.ephemeral] instances` lists it
/// (when absent: node-local instances only, never a cloud instance).
pub fn serves_ephemeral(driver: &crate::Driver, instance: &Instance) -> bool {
    if !instance.info.ephemeral {
        return false;
    }
    match &driver.node.ephemeral.instances {
        Some(allowed) => allowed.iter().any(|name| *name == instance.name),
        None => instance.info.node_local,
    }
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
        target: &ConfinedPath,
        fs_type: String,
        options: MountOptions,
    ) -> CoreResult<()> {
        let (dev, tgt) = (device.to_path_buf(), target.clone());
        let what = format!(
            "mounting {} on {} as {fs_type}",
            device.display(),
            target.path().display()
        );
        let outcome = self
            .host(move |m| {
                if let Err(e) = tgt.create_dir_all() {
                    return Ok(Err(e));
                }
                m.mount(&dev, tgt.path(), &fs_type, &options).map(Ok)
            })
            .await
            .map_err(host_err(what))?;
        outcome.map_err(|e| {
            if is_confinement_error(&e) {
                CoreError::InvalidArgument(format!(
                    "{} crosses a symbolic link or leaves the kubelet directory",
                    target.path().display()
                ))
            } else {
                CoreError::node(format!("creating {}", target.path().display()), e)
            }
        })
    }

    /// A required path field, confined beneath the kubelet directory.
    fn confine(&self, field: &'static str, raw: &str) -> CoreResult<ConfinedPath> {
        validate::required(field, raw)?;
        self.driver
            .kubelet
            .confine(raw)
            .map_err(|e| CoreError::InvalidArgument(format!("{field} {} {e}", shown(raw))))
    }

    /// The device number of `id`'s block device on this node, as its
    /// provider finds it, bounded by `wait` (`None`: the provider's own
    /// bound).
    async fn volume_device(
        &self,
        instance: &Instance,
        id: &ScopedId,
        publish_context: &BTreeMap<String, String>,
        volume_context: &BTreeMap<String, String>,
        wait: Option<std::time::Duration>,
    ) -> CoreResult<(PathBuf, DeviceNumber)> {
        let lookup = self.find_device(instance, id, publish_context, volume_context);
        let device = match wait {
            None => lookup.await?,
            Some(limit) => tokio::time::timeout(limit, lookup).await.map_err(|_| {
                CoreError::FailedPrecondition(format!(
                    "provider instance {} did not name the device of {id} within {limit:?}",
                    instance.name
                ))
            })??,
        };
        let number = self.device_number(&device).await?;
        Ok((device, number))
    }

    /// The parsed ID and its instance; malformed or foreign IDs are `NotFound`.
    fn volume(&self, raw: &str) -> CoreResult<(ScopedId, &Instance)> {
        let id = validate::existing_id("volume", "volume_id", raw)?;
        let instance = self.driver.registry.for_id(&id)?;
        Ok((id, instance))
    }

    async fn stage(
        &self,
        req: csi::NodeStageVolumeRequest,
    ) -> CoreResult<csi::NodeStageVolumeResponse> {
        validate::required("volume_id", &req.volume_id)?;
        validate::required("staging_target_path", &req.staging_target_path)?;
        let cap = capability_field(req.volume_capability.as_ref())?;
        let staging = self.confine("staging_target_path", &req.staging_target_path)?;
        let (id, instance) = self.volume(&req.volume_id)?;
        let _guard = self.claim(&req.volume_id)?;
        // Two volumes staged at one path at once must not both mount.
        let _path_guard = self.claim(&format!("path:{}", staging.path().display()))?;
        if let Some(why) = validate::unsupported_by(&instance.info, cap) {
            return Err(CoreError::FailedPrecondition(why));
        }
        let (device, number) = self
            .volume_device(
                instance,
                &id,
                &req.publish_context,
                &req.volume_context,
                None,
            )
            .await?;
        let existing = self.mount_at(&staging, "staging_target_path").await?;
        let Some(mount) = mount_volume(cap) else {
            // Block volumes are bound straight from the device at publish;
            // staging only proves the device is there, and refuses a path
            // where this volume is already staged as a filesystem.
            if let Some(existing) = existing {
                return Err(CoreError::AlreadyExists(format!(
                    "{} is already a filesystem mount of device {}; {id} cannot be staged there as a block volume",
                    staging.path().display(),
                    existing.device
                )));
            }
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

        if let Some(existing) = existing {
            if existing.device != number {
                return Err(CoreError::AlreadyExists(format!(
                    "{} is already the mount of device {} ({}), not of {id}'s device {} ({number})",
                    staging.path().display(),
                    existing.source,
                    existing.device,
                    device.display()
                )));
            }
            return restage_matches(&existing, wanted, &options)
                .map(|()| csi::NodeStageVolumeResponse {})
                .map_err(|why| {
                    CoreError::AlreadyExists(format!(
                        "{id} is already staged at {} with another capability: {why}",
                        staging.path().display()
                    ))
                });
        }

        let fs_type = self
            .ensure_filesystem(&device, wanted, &format_options)
            .await?;
        if fs_type != "xfs" {
            self.grow_if_smaller(&device, &fs_type, None).await?;
        } else {
            // Copies of an XFS volume share its UUID; XFS refuses to mount
            // a second filesystem with a UUID already mounted unless told.
            options.add("nouuid");
        }
        self.mount_device(&device, &staging, fs_type.clone(), options)
            .await?;
        if fs_type == "xfs" {
            self.grow_if_smaller(&device, &fs_type, Some(staging.path()))
                .await?;
        }
        Ok(csi::NodeStageVolumeResponse {})
    }

    /// Grows the filesystem on `device` when it is smaller than the device
    /// (a volume restored or cloned into a larger size): unmounted ext
    /// filesystems offline, XFS through its mount point.
    async fn grow_if_smaller(
        &self,
        device: &Path,
        fs_type: &str,
        mount_point: Option<&Path>,
    ) -> CoreResult<()> {
        let (dev, fs) = (device.to_path_buf(), fs_type.to_owned());
        let mount_point = mount_point.map(Path::to_path_buf);
        let grown = self
            .host(move |m| {
                let Some(fs_bytes) = m.filesystem_size(&dev, &fs)? else {
                    return Ok(None);
                };
                let device_bytes = m.device_size(&dev)?;
                if fs_bytes.saturating_add(GROW_SLACK_BYTES) >= device_bytes {
                    return Ok(None);
                }
                match &mount_point {
                    Some(at) => m.grow_filesystem(&dev, at, &fs)?,
                    None => m.grow_unmounted(&dev, &fs)?,
                }
                Ok(Some((fs_bytes, device_bytes)))
            })
            .await
            .map_err(host_err(format!(
                "growing the {fs_type} filesystem on {} to its device's size",
                device.display()
            )))?;
        if let Some((from, to)) = grown {
            tracing::info!(device = %device.display(), fs = fs_type, from, to, "grew a filesystem smaller than its device");
        }
        Ok(())
    }

    /// The topmost mount exactly at `path`, after checking that no
    /// component of it is a symlink.
    async fn mount_at(
        &self,
        path: &ConfinedPath,
        field: &'static str,
    ) -> CoreResult<Option<MountInfo>> {
        let owned = path.clone();
        let checked = self
            .host(move |m| {
                if let Err(e) = owned.check() {
                    return Ok(Err(e));
                }
                m.find_mount(owned.path()).map(Ok)
            })
            .await
            .map_err(host_err(format!(
                "reading the mount table for {}",
                path.path().display()
            )))?;
        checked.map_err(confined_io(field, path))
    }

    async fn unstage(
        &self,
        req: csi::NodeUnstageVolumeRequest,
    ) -> CoreResult<csi::NodeUnstageVolumeResponse> {
        validate::required("volume_id", &req.volume_id)?;
        let staging = self.confine("staging_target_path", &req.staging_target_path)?;
        let (id, instance) = self.volume(&req.volume_id)?;
        let _guard = self.claim(&req.volume_id)?;
        if self
            .mount_at(&staging, "staging_target_path")
            .await?
            .is_none()
        {
            return Ok(csi::NodeUnstageVolumeResponse {});
        }
        self.clear_volume_mounts(instance, &id, "staging_target_path", &staging)
            .await?;
        Ok(csi::NodeUnstageVolumeResponse {})
    }

    /// Finds `id`'s device (bounded by [`DEVICE_LOOKUP`]) and clears its
    /// mounts at `path` with [`Self::clear_owned_mounts`].
    async fn clear_volume_mounts(
        &self,
        instance: &Instance,
        id: &ScopedId,
        field: &'static str,
        path: &ConfinedPath,
    ) -> CoreResult<()> {
        let (_, number) = self
            .volume_device(
                instance,
                id,
                &BTreeMap::new(),
                &BTreeMap::new(),
                Some(DEVICE_LOOKUP),
            )
            .await?;
        self.clear_owned_mounts(id, field, path, number).await
    }

    /// Unmounts the mounts stacked at `path` as long as they are `id`'s
    /// (a filesystem on its device, or its device node bound on a file),
    /// then removes the mount point it leaves. A mount of
    /// anything else is refused and left alone.
    async fn clear_owned_mounts(
        &self,
        id: &ScopedId,
        field: &'static str,
        path: &ConfinedPath,
        volume_device: DeviceNumber,
    ) -> CoreResult<()> {
        let owned = path.clone();
        let outcome = self
            .host(move |m| {
                let mut unmounted = 0;
                for _ in 0..MAX_STACKED_MOUNTS {
                    if let Err(e) = owned.check() {
                        return Ok(ClearStep::Unsafe(e));
                    }
                    let Some(top) = m.find_mount(owned.path())? else {
                        if unmounted > 0 {
                            return Ok(ClearStep::Done(owned.remove()));
                        }
                        return Ok(ClearStep::Done(Ok(())));
                    };
                    // A block binding shows its device node's number; a
                    // filesystem mount the number of its device.
                    let bound = Some(m.device_number(owned.path()).unwrap_or(top.device));
                    if bound != Some(volume_device) {
                        return Ok(ClearStep::Foreign(top));
                    }
                    m.unmount(owned.path())?;
                    unmounted += 1;
                }
                Ok(ClearStep::TooMany)
            })
            .await
            .map_err(host_err(format!("unmounting {}", path.path().display())))?;
        match outcome {
            ClearStep::Done(Ok(())) => Ok(()),
            ClearStep::Done(Err(e)) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                tracing::warn!(path = %path.path().display(), "left a non-empty directory behind after unmounting it");
                Ok(())
            }
            ClearStep::Done(Err(e)) => Err(CoreError::node(
                format!("removing {}", path.path().display()),
                e,
            )),
            ClearStep::Unsafe(e) => Err(confined_io(field, path)(e)),
            ClearStep::Foreign(top) => Err(CoreError::FailedPrecondition(format!(
                "{field} {} holds a mount of {} ({}), not of {id}'s device ({volume_device}); it is left alone",
                path.path().display(),
                top.source,
                top.device
            ))),
            ClearStep::TooMany => Err(CoreError::Internal(format!(
                "{} is still mounted after {MAX_STACKED_MOUNTS} unmounts",
                path.path().display()
            ))),
        }
    }

    async fn publish(
        &self,
        req: csi::NodePublishVolumeRequest,
    ) -> CoreResult<csi::NodePublishVolumeResponse> {
        if get_ci(&req.volume_context, EPHEMERAL_KEY) == Some("true") {
            return self.publish_ephemeral(req).await;
        }
        validate::required("volume_id", &req.volume_id)?;
        validate::required("staging_target_path", &req.staging_target_path)?;
        validate::required("target_path", &req.target_path)?;
        let cap = capability_field(req.volume_capability.as_ref())?;
        let staging = self.confine("staging_target_path", &req.staging_target_path)?;
        let target = self.confine("target_path", &req.target_path)?;
        if staging.path() == target.path() {
            return Err(CoreError::InvalidArgument(
                "target_path and staging_target_path are the same path".into(),
            ));
        }
        let (id, instance) = self.volume(&req.volume_id)?;
        let _guard = self.claim(&req.volume_id)?;
        // Two volumes published at one target at once must not both mount.
        let _path_guard = self.claim(&format!("path:{}", target.path().display()))?;
        if let Some(why) = validate::unsupported_by(&instance.info, cap) {
            return Err(CoreError::FailedPrecondition(why));
        }
        let read_only = req.readonly || reader_only(cap);
        let (device, number) = self
            .volume_device(
                instance,
                &id,
                &req.publish_context,
                &req.volume_context,
                None,
            )
            .await?;
        let exclusive = access_mode(cap) == Mode::SingleNodeSingleWriter as i32;
        let plan = PublishPlan {
            staging,
            target,
            device,
            number,
            read_only,
            exclusive,
            block: is_block(cap),
        };
        let target_shown = plan.target.path().display().to_string();
        let step = self
            .host(move |m| plan.run(m))
            .await
            .map_err(host_err(format!("publishing {id} at {target_shown}")))?;
        match step {
            PublishStep::Mounted | PublishStep::AlreadyThere => {
                Ok(csi::NodePublishVolumeResponse {})
            }
            PublishStep::Refused(err) => Err(err.into_core(&id)),
        }
    }

    async fn unpublish(
        &self,
        req: csi::NodeUnpublishVolumeRequest,
    ) -> CoreResult<csi::NodeUnpublishVolumeResponse> {
        validate::required("volume_id", &req.volume_id)?;
        let target = self.confine("target_path", &req.target_path)?;
        let _guard = self.claim(&req.volume_id)?;
        if let Ok(kubelet_id) = KubeletVolumeId::parse(&req.volume_id) {
            if let Some(record) = self.state_store().load(&kubelet_id)? {
                if record.target_path != target.path() {
                    // Not where this inline volume is published: nothing of
                    // it is at this path, and it stays as it is.
                    return Ok(csi::NodeUnpublishVolumeResponse {});
                }
                return self.unpublish_ephemeral(&kubelet_id, record, &target).await;
            }
        }
        let mounted = self.mount_at(&target, "target_path").await?.is_some();
        let (id, instance) = match self.volume(&req.volume_id) {
            Ok(found) => found,
            // An inline volume already cleaned up (its kubelet ID is no
            // driver ID): nothing of it is left to unpublish.
            Err(e) if e.is_not_found() && !mounted => {
                return Ok(csi::NodeUnpublishVolumeResponse {});
            }
            Err(e) => return Err(e),
        };
        if !mounted {
            // Nothing is mounted there; whatever else is at the path is not
            // this driver's to delete.
            return Ok(csi::NodeUnpublishVolumeResponse {});
        }
        self.clear_volume_mounts(instance, &id, "target_path", &target)
            .await?;
        Ok(csi::NodeUnpublishVolumeResponse {})
    }

    async fn publish_ephemeral(
        &self,
        req: csi::NodePublishVolumeRequest,
    ) -> CoreResult<csi::NodePublishVolumeResponse> {
        validate::required("volume_id", &req.volume_id)?;
        validate::required("target_path", &req.target_path)?;
        let cap = capability_field(req.volume_capability.as_ref())?;
        let target = self.confine("target_path", &req.target_path)?;
        let kubelet_id = KubeletVolumeId::parse(&req.volume_id)?;
        if ScopedId::parse(&req.volume_id).is_ok() {
            return Err(CoreError::InvalidArgument(format!(
                "volume_id {} of an ephemeral inline volume has the form of this driver's volume IDs; kubelet names inline volumes csi-<hash>",
                shown(&req.volume_id)
            )));
        }
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
        if !serves_ephemeral(&self.driver, instance) {
            return Err(CoreError::InvalidArgument(format!(
                "provider instance {} ({}) does not serve ephemeral inline volumes here (the provider must support them and [node.ephemeral] instances allow it; cloud instances only when listed)",
                instance.name, instance.info.kind
            )));
        }
        let _guard = self.claim(kubelet_id.as_str())?;
        let store = self.state_store();
        if let Some(record) = store.load(&kubelet_id)? {
            if record.target_path != target.path() {
                return Err(CoreError::AlreadyExists(format!(
                    "ephemeral volume {kubelet_id} is already published at {}",
                    record.target_path.display()
                )));
            }
            if self.mount_at(&target, "target_path").await?.is_some() {
                return Ok(csi::NodePublishVolumeResponse {});
            }
            // Otherwise an earlier attempt stopped half-way: creating is
            // idempotent by name, so simply go through it again.
        } else if let Some(existing) = self.mount_at(&target, "target_path").await? {
            return Err(CoreError::AlreadyExists(format!(
                "target_path {} is already a mount of {} ({}); an inline volume is not stacked over it",
                target.path().display(),
                existing.source,
                existing.device
            )));
        }

        let read_only = req.readonly || reader_only(cap);
        let size = match get_ci(ctx, SIZE_KEY) {
            None => 0,
            Some(raw) => ephemeral::parse_size(raw).map_err(CoreError::InvalidArgument)?,
        };
        let max = ephemeral::parse_size(&self.driver.node.ephemeral.max_size).map_err(|e| {
            CoreError::Internal(format!("[node.ephemeral] max_size is unusable: {e}"))
        })?;
        if size > max {
            return Err(CoreError::OutOfRange(format!(
                "an ephemeral inline volume may hold at most {max} bytes ([node.ephemeral] max_size); {size} were asked for"
            )));
        }
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
            target_path: target.path().to_path_buf(),
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
        target: &ConfinedPath,
    ) -> CoreResult<csi::NodeUnpublishVolumeResponse> {
        let id = ScopedId::parse(&record.volume_id).map_err(|e| {
            CoreError::Internal(format!(
                "the state of ephemeral volume {kubelet_id} names an unusable volume {:?}: {e}",
                record.volume_id
            ))
        })?;
        let instance = self.driver.registry.for_id(&id)?;
        if self.mount_at(target, "target_path").await?.is_some() {
            self.clear_volume_mounts(instance, &id, "target_path", target)
                .await?;
        }
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

    /// The mount of `id` at a stats or expand `volume_path`, and whether it
    /// is a block binding; `NotFound` when the path is not a mount of this
    /// volume (outside the kubelet directory, relative, unmounted, another
    /// volume's). `Err(Ok(e))` carries a device lookup failure.
    async fn owned_mount(
        &self,
        id: &ScopedId,
        instance: &Instance,
        raw: &str,
    ) -> CoreResult<Result<(ConfinedPath, MountInfo, bool, DeviceNumber), CoreError>> {
        let not_found = |why: String| {
            CoreError::NotFound(format!(
                "volume_path {} is not a mount of {id}: {why}",
                shown(raw)
            ))
        };
        let path = self
            .driver
            .kubelet
            .confine(raw)
            .map_err(|e| not_found(e.to_string()))?;
        let mount = match self.mount_at(&path, "volume_path").await {
            Ok(Some(mount)) => mount,
            Ok(None) => return Err(not_found("nothing is mounted there".into())),
            Err(CoreError::InvalidArgument(why)) => return Err(not_found(why)),
            Err(e) => return Err(e),
        };
        let number = match self
            .volume_device(
                instance,
                id,
                &BTreeMap::new(),
                &BTreeMap::new(),
                Some(DEVICE_LOOKUP),
            )
            .await
        {
            Ok((_, number)) => number,
            Err(e) => return Ok(Err(e)),
        };
        let owned = path.path().to_path_buf();
        let bound = self
            .host(move |m| Ok(m.device_number(&owned).ok()))
            .await
            .ok()
            .flatten();
        let (block, device) = match bound {
            Some(rdev) => (true, rdev),
            None => (false, mount.device),
        };
        if device != number {
            return Err(not_found(format!(
                "the mount there is of device {device}, the volume's is {number}"
            )));
        }
        Ok(Ok((path, mount, block, number)))
    }

    async fn stats(
        &self,
        req: csi::NodeGetVolumeStatsRequest,
    ) -> CoreResult<csi::NodeGetVolumeStatsResponse> {
        validate::required("volume_id", &req.volume_id)?;
        validate::required("volume_path", &req.volume_path)?;
        let (id, instance) = self.volume(&req.volume_id)?;
        let mut problems = Vec::new();
        let mut usage = Vec::new();
        match self.owned_mount(&id, instance, &req.volume_path).await? {
            Err(lookup) => problems.push(format!(
                "the device of {id} cannot be found on this node: {}",
                lookup.full_message()
            )),
            Ok((path, _, true, _)) => {
                let owned = path.path().to_path_buf();
                match self.host(move |m| m.device_size(&owned)).await {
                    Ok(size) => usage.push(csi::VolumeUsage {
                        total: i64::try_from(size).unwrap_or(i64::MAX),
                        unit: csi::volume_usage::Unit::Bytes as i32,
                        ..Default::default()
                    }),
                    Err(e) => problems.push(format!(
                        "the device bound at {} is gone: {e}",
                        path.path().display()
                    )),
                }
            }
            Ok((path, mount, false, _)) => {
                let owned = path.path().to_path_buf();
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
                        path.path().display()
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
        validate::required("volume_id", &req.volume_id)?;
        validate::required("volume_path", &req.volume_path)?;
        let (required, _limit) = validate::capacity_range(req.capacity_range.as_ref())?;
        if let Some(cap) = &req.volume_capability {
            validate::capability("volume_capability", cap)?;
        }
        if !req.staging_target_path.is_empty() {
            self.confine("staging_target_path", &req.staging_target_path)?;
        }
        let (id, instance) = self.volume(&req.volume_id)?;
        let _guard = self.claim(&req.volume_id)?;
        let (path, mount, block, _) = self.owned_mount(&id, instance, &req.volume_path).await??;
        if block {
            // A block volume grows with its device; nothing to resize here.
            let owned = path.path().to_path_buf();
            let size = self
                .host(move |m| m.device_size(&owned))
                .await
                .map_err(host_err(format!(
                    "reading the size of {}",
                    path.path().display()
                )))?;
            return Ok(csi::NodeExpandVolumeResponse {
                capacity_bytes: i64::try_from(size).unwrap_or(i64::MAX),
            });
        }
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
        let mut segments: BTreeMap<String, Option<String>> = BTreeMap::new();
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
                match segments.get(&key) {
                    None => {
                        segments.insert(key, Some(value));
                    }
                    Some(Some(previous)) if *previous != value => {
                        // Two clouds on one node (a development setup) each
                        // name their own zone under the well-known key:
                        // neither is the node's, so the key is left out and
                        // every provider places volumes by its own key.
                        tracing::info!(%key, %previous, %value, "provider instances report different values for a topology key; the key is left out of the node's topology (each provider uses its own key)");
                        segments.insert(key, None);
                    }
                    Some(_) => {}
                }
            }
            if info.max_volumes > 0 {
                limits.push(info.max_volumes);
            }
        }
        let segments: BTreeMap<String, String> = segments
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
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

/// What the blocking part of a publish found or did.
enum PublishStep {
    /// The bind mount is in place.
    Mounted,
    /// The same publication was already there.
    AlreadyThere,
    /// Nothing was changed, for this reason.
    Refused(Refusal),
}

/// Why a publish changed nothing.
enum Refusal {
    Unsafe {
        field: &'static str,
        path: PathBuf,
    },
    NotStaged(PathBuf),
    ForeignStaging {
        staging: PathBuf,
        found: DeviceNumber,
        source: String,
        want: DeviceNumber,
    },
    Occupied {
        target: PathBuf,
        found: String,
        read_only: bool,
    },
    Exclusive {
        other: PathBuf,
    },
    NotOurs(PathBuf),
    TargetIsDirectory(PathBuf),
}

impl Refusal {
    fn into_core(self, id: &ScopedId) -> CoreError {
        match self {
            Refusal::Unsafe { field, path } => CoreError::InvalidArgument(format!(
                "{field} {} crosses a symbolic link or leaves the kubelet directory",
                path.display()
            )),
            Refusal::NotStaged(staging) => CoreError::FailedPrecondition(format!(
                "{id} is not staged at {}",
                staging.display()
            )),
            Refusal::ForeignStaging {
                staging,
                found,
                source,
                want,
            } => CoreError::FailedPrecondition(format!(
                "staging_target_path {} is the mount of {source} ({found}), not {id}'s staging mount (device {want})",
                staging.display()
            )),
            Refusal::Occupied {
                target,
                found,
                read_only,
            } => CoreError::AlreadyExists(format!(
                "{} is already {found}, not a {} publication of {id}",
                target.display(),
                if read_only { "read-only" } else { "read-write" }
            )),
            Refusal::Exclusive { other } => CoreError::FailedPrecondition(format!(
                "{id} is SINGLE_NODE_SINGLE_WRITER and already published at {}",
                other.display()
            )),
            Refusal::NotOurs(target) => CoreError::FailedPrecondition(format!(
                "target_path {} already exists and was not made by this driver; a block volume is bound only on a file it creates",
                target.display()
            )),
            Refusal::TargetIsDirectory(target) => CoreError::InvalidArgument(format!(
                "target_path {} is a directory; block volumes are published on a file",
                target.display()
            )),
        }
    }
}

/// Everything a publish does on the host, run in one blocking step: one
/// read of the mount table, the checks, then the bind mount.
struct PublishPlan {
    staging: ConfinedPath,
    target: ConfinedPath,
    device: PathBuf,
    number: DeviceNumber,
    read_only: bool,
    exclusive: bool,
    block: bool,
}

impl PublishPlan {
    fn unsafe_path(field: &'static str, path: &ConfinedPath) -> PublishStep {
        PublishStep::Refused(Refusal::Unsafe {
            field,
            path: path.path().to_path_buf(),
        })
    }

    fn inspect(path: &ConfinedPath) -> impl FnOnce(io::Error) -> MountError + '_ {
        move |source| MountError::Inspect {
            path: path.path().to_path_buf(),
            source,
        }
    }

    /// Mount points where the volume is published already, other than the
    /// staging path and the target.
    fn other_publications(&self, table: &[MountInfo]) -> Option<PathBuf> {
        let device_node = canonical(&self.device);
        let in_devtmpfs = device_node
            .strip_prefix("/dev")
            .ok()
            .map(|p| Path::new("/").join(p));
        table
            .iter()
            .filter(|m| m.mount_point != self.staging.path() && m.mount_point != self.target.path())
            .find(|m| {
                if self.block {
                    in_devtmpfs.as_deref() == Some(m.root.as_path())
                } else {
                    m.device == self.number
                }
            })
            .map(|m| m.mount_point.clone())
    }

    fn run(&self, m: &dyn Mounter) -> Result<PublishStep, MountError> {
        let target_fd = match self.target.check() {
            Ok(fd) => fd,
            Err(e) if is_confinement_error(&e) => {
                return Ok(Self::unsafe_path("target_path", &self.target));
            }
            Err(e) => return Err(Self::inspect(&self.target)(e)),
        };
        let table = m.mount_table()?;
        let [existing, staged] = top_mounts(&table, [self.target.path(), self.staging.path()]);
        if let Some(existing) = existing {
            let bound = m
                .device_number(self.target.path())
                .ok()
                .unwrap_or(existing.device);
            if bound == self.number && existing.is_read_only() == self.read_only {
                return Ok(PublishStep::AlreadyThere);
            }
            return Ok(PublishStep::Refused(Refusal::Occupied {
                target: self.target.path().to_path_buf(),
                found: format!(
                    "a {} mount of {} ({bound})",
                    if existing.is_read_only() {
                        "read-only"
                    } else {
                        "read-write"
                    },
                    existing.source
                ),
                read_only: self.read_only,
            }));
        }
        if self.exclusive {
            if let Some(other) = self.other_publications(&table) {
                return Ok(PublishStep::Refused(Refusal::Exclusive { other }));
            }
        }
        if self.block {
            if let Some(fd) = target_fd {
                let stat =
                    rustix::fs::fstat(&fd).map_err(|e| Self::inspect(&self.target)(e.into()))?;
                let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
                return Ok(PublishStep::Refused(
                    if kind == rustix::fs::FileType::Directory {
                        Refusal::TargetIsDirectory(self.target.path().to_path_buf())
                    } else {
                        Refusal::NotOurs(self.target.path().to_path_buf())
                    },
                ));
            }
            match self.target.create_file() {
                Ok(()) => {}
                Err(e) if is_confinement_error(&e) => {
                    return Ok(Self::unsafe_path("target_path", &self.target));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Ok(PublishStep::Refused(Refusal::NotOurs(
                        self.target.path().to_path_buf(),
                    )));
                }
                Err(source) => {
                    return Err(MountError::CreateMountPoint {
                        path: self.target.path().to_path_buf(),
                        source,
                    });
                }
            }
            if let Err(e) = m.bind_mount(&self.device, self.target.path(), self.read_only) {
                if let Err(undo) = self.target.remove() {
                    tracing::warn!(target = %self.target.path().display(), error = %undo, "cannot remove the target file after a failed bind");
                }
                return Err(e);
            }
            return Ok(PublishStep::Mounted);
        }
        match self.staging.check() {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Ok(PublishStep::Refused(Refusal::NotStaged(
                    self.staging.path().to_path_buf(),
                )));
            }
            Err(e) if is_confinement_error(&e) => {
                return Ok(Self::unsafe_path("staging_target_path", &self.staging));
            }
            Err(e) => return Err(Self::inspect(&self.staging)(e)),
        }
        let Some(staged) = staged else {
            return Ok(PublishStep::Refused(Refusal::NotStaged(
                self.staging.path().to_path_buf(),
            )));
        };
        if staged.device != self.number {
            return Ok(PublishStep::Refused(Refusal::ForeignStaging {
                staging: self.staging.path().to_path_buf(),
                found: staged.device,
                source: staged.source,
                want: self.number,
            }));
        }
        let created = match self.target.create_dir_all() {
            Ok(created) => created,
            Err(e) if is_confinement_error(&e) => {
                return Ok(Self::unsafe_path("target_path", &self.target));
            }
            Err(source) => {
                return Err(MountError::CreateMountPoint {
                    path: self.target.path().to_path_buf(),
                    source,
                });
            }
        };
        if let Err(e) = m.bind_mount(self.staging.path(), self.target.path(), self.read_only) {
            if created {
                if let Err(undo) = self.target.remove() {
                    tracing::warn!(target = %self.target.path().display(), error = %undo, "cannot remove the target directory after a failed bind");
                }
            }
            return Err(e);
        }
        Ok(PublishStep::Mounted)
    }
}

/// What clearing a mount point found.
enum ClearStep {
    /// Everything of the volume is unmounted; the result of removing the
    /// mount point it left (or `Ok` when nothing was mounted).
    Done(io::Result<()>),
    /// A mount of something else is on top.
    Foreign(MountInfo),
    /// The path crosses a symlink.
    Unsafe(io::Error),
    /// More stacked mounts than [`MAX_STACKED_MOUNTS`].
    TooMany,
}

/// Whether an existing staging mount serves a new stage request: the same
/// read-only setting, filesystem and per-mount flags, and every requested
/// filesystem option present. `Err` says what differs.
fn restage_matches(
    existing: &MountInfo,
    wanted: FsChoice,
    options: &MountOptions,
) -> Result<(), String> {
    let ext_family = |t: &str| matches!(t, "ext2" | "ext3" | "ext4");
    if wanted.explicit
        && existing.fs_type != wanted.fs.as_str()
        && !(ext_family(&existing.fs_type) && ext_family(wanted.fs.as_str()))
    {
        return Err(format!(
            "it is mounted as {}, {} was asked for",
            existing.fs_type, wanted.fs
        ));
    }
    let requested: Vec<&str> = options
        .words()
        .iter()
        .map(String::as_str)
        .filter(|w| !DEFAULT_FLAGS.contains(w))
        .collect();
    for flag in PER_MOUNT_FLAGS {
        let asked = requested.contains(&flag);
        let present = existing.mount_options.iter().any(|o| o == flag);
        if asked != present {
            return Err(format!(
                "mount flag {flag} is {} the existing mount and {} the request",
                if present { "on" } else { "off" },
                if asked { "in" } else { "not in" }
            ));
        }
    }
    for word in requested.iter().filter(|w| !PER_MOUNT_FLAGS.contains(w)) {
        let present = existing.super_options.iter().any(|o| o == word)
            || existing.mount_options.iter().any(|o| o == word);
        if !present {
            return Err(format!("mount option {word} is not on the existing mount"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restaging_must_ask_for_what_is_mounted() {
        let mount = |fs: &str, opts: &[&str], sup: &[&str]| MountInfo {
            mount_id: 1,
            parent_id: 0,
            device: DeviceNumber { major: 7, minor: 1 },
            root: "/".into(),
            mount_point: "/k/staging".into(),
            mount_options: opts.iter().map(|o| o.to_string()).collect(),
            optional_fields: Vec::new(),
            fs_type: fs.into(),
            source: "/dev/loop1".into(),
            super_options: sup.iter().map(|o| o.to_string()).collect(),
        };
        let explicit = |fs| FsChoice { fs, explicit: true };
        let defaulted = |fs| FsChoice {
            fs,
            explicit: false,
        };
        let opts = |words: &[&str]| {
            MountOptions::parse(&words.iter().map(|w| w.to_string()).collect::<Vec<_>>()).unwrap()
        };
        let ext4 = mount("ext4", &["rw", "relatime"], &["rw", "errors=remount-ro"]);
        // (existing mount, wanted filesystem, requested flags, matches)
        let cases = [
            (&ext4, explicit(FsType::Ext4), opts(&[]), true),
            (
                &ext4,
                defaulted(FsType::Xfs),
                opts(&["defaults", "rw"]),
                true,
            ),
            (&ext4, explicit(FsType::Xfs), opts(&[]), false),
            (&ext4, explicit(FsType::Ext4), opts(&["ro"]), false),
            (&ext4, explicit(FsType::Ext4), opts(&["noatime"]), false),
            (
                &ext4,
                explicit(FsType::Ext4),
                opts(&["errors=remount-ro"]),
                true,
            ),
            (&ext4, explicit(FsType::Ext4), opts(&["discard"]), false),
        ];
        for (existing, fs, flags, ok) in cases {
            let got = restage_matches(existing, fs, &flags);
            assert_eq!(
                got.is_ok(),
                ok,
                "{flags:?} on {:?}: {got:?}",
                existing.mount_options
            );
        }
        let ro_noatime = mount("xfs", &["ro", "noatime"], &["ro", "nouuid"]);
        assert!(
            restage_matches(
                &ro_noatime,
                explicit(FsType::Xfs),
                &opts(&["ro", "noatime"])
            )
            .is_ok()
        );
        assert!(restage_matches(&ro_noatime, explicit(FsType::Xfs), &opts(&["noatime"])).is_err());
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
