//! An attachment simulator for moto (feature `moto`): what the Nitro
//! hypervisor, the kernel and udev do on a node when EBS attaches a volume,
//! played on loop devices under a private device root and sysfs root.
//!
//! Each [`AttachSimulator::sync`] pass asks moto which volumes are attached
//! to the simulated instance and makes the node match:
//! - a newly attached volume gets a loop device over a sparse file of the
//!   volume's size (kept across detach and re-attach, so data survives as
//!   on EBS), exposed as NVMe namespace `nvme<N>n1` (`<dev>/nvme<N>n1`
//!   links to the loop node), its controller serial in
//!   `<sys>/block/nvme<N>n1/device/serial` (the volume ID without its dash,
//!   space-padded to 20 like EBS), the udev link
//!   `<dev>/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<hex>` and the
//!   alias for the device name given at attach time (`<dev>/xvdba`);
//! - a detached volume loses its loop device, device link, sysfs entry and
//!   every link that still points at its name (a link re-pointed elsewhere,
//!   like a stale udev link, stays);
//! - a volume moto reports larger grows: the file is extended and the loop
//!   driver told (`losetup -c`), as the kernel sees an EBS resize;
//! - the file of a volume moto no longer knows is removed.
//!
//! Namespace numbers are reused lowest-first, as NVMe controller numbers
//! are, so a stale link can name a device that now holds another volume:
//! exactly the case the provider's serial check exists for.
//!
//! [`AttachSimulator::watch`] runs passes in the background, so devices
//! appear some time after an attach, as on a real node. Needs root
//! (`losetup`). Loop devices are detached when the simulator is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::device::DeviceFinder;
use crate::ids::{IdError, InstanceId, VolumeId};

const GIB: u64 = 1 << 30;

/// Why the simulator could not do its part.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// An ID given to the simulator or reported by moto is malformed.
    #[error("malformed ID")]
    Id(#[source] IdError),
    /// A device name given to the simulator is not of the form `nvme<N>n1`.
    #[error("{0:?} is not a simulated device name (nvme<N>n1)")]
    DeviceName(String),
    /// An EC2 call against moto failed.
    #[error("EC2 {operation} against moto failed")]
    Ec2 {
        /// The EC2 action.
        operation: &'static str,
        /// The SDK error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// moto does not know the simulated instance.
    #[error("moto does not know instance {0}")]
    NoInstance(String),
    /// A file or link under the simulator's root could not be changed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `losetup` could not be run or failed.
    #[error("losetup {args}: {reason}")]
    Losetup {
        /// Its arguments, for the message.
        args: String,
        /// Its complaint or why it did not run.
        reason: String,
    },
}

impl SimError {
    fn ec2(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Ec2 {
            operation,
            source: Box::new(source),
        }
    }
}

fn io_err<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> SimError + 'p {
    move |source| SimError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// One simulated device: an attached volume as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimDevice {
    /// The volume.
    pub volume_id: String,
    /// The NVMe namespace name, `nvme<N>n1`.
    pub name: String,
    /// `<dev root>/<name>`, what the provider's `find_device` returns.
    pub path: PathBuf,
    /// The loop device behind it, `/dev/loop<M>`.
    pub loop_device: PathBuf,
    /// The size the loop device has.
    pub size_bytes: u64,
    /// The device name given at attach time (`/dev/xvdba`), if moto had
    /// one of the EBS form.
    pub published: Option<String>,
}

/// What one pass changed, by volume ID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Volumes whose device appeared.
    pub appeared: Vec<String>,
    /// Volumes whose device went away.
    pub removed: Vec<String>,
    /// Volumes whose device grew.
    pub grown: Vec<String>,
}

impl SyncReport {
    /// True when the pass changed nothing.
    pub fn is_empty(&self) -> bool {
        self.appeared.is_empty() && self.removed.is_empty() && self.grown.is_empty()
    }
}

/// An attachment as moto reports it.
#[derive(Debug, Clone)]
struct Wanted {
    size_bytes: u64,
    published: Option<String>,
}

struct Shared {
    ec2: aws_sdk_ec2::Client,
    instance: InstanceId,
    /// The instance's root device name; its volume is not simulated.
    root_device: Option<String>,
    dev_root: PathBuf,
    sys_root: PathBuf,
    backing_dir: PathBuf,
    /// One pass at a time: a pass awaits moto and losetup.
    pass: tokio::sync::Mutex<()>,
    exposed: Mutex<BTreeMap<String, SimDevice>>,
    last_error: Mutex<Option<String>>,
}

/// Simulates one instance's node; see the module documentation.
pub struct AttachSimulator {
    shared: Arc<Shared>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for AttachSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachSimulator")
            .field("instance", &self.shared.instance)
            .field("dev_root", &self.shared.dev_root)
            .field("sys_root", &self.shared.sys_root)
            .field("watching", &self.watcher.is_some())
            .finish()
    }
}

/// True for a device name given at attach time that EBS accepts for data
/// volumes, `/dev/xvd[a-z]{1,2}` or `/dev/sd[a-z]{1,2}`.
fn is_published_name(path: &str) -> bool {
    path.strip_prefix("/dev/")
        .and_then(|n| n.strip_prefix("xvd").or_else(|| n.strip_prefix("sd")))
        .is_some_and(|s| (1..=2).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase()))
}

fn is_sim_device_name(name: &str) -> bool {
    name.strip_prefix("nvme")
        .and_then(|n| n.strip_suffix("n1"))
        .is_some_and(|n| !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes `path` if it is a link whose target's file name is `name`.
fn remove_link_to(path: &Path, name: &str) -> Result<(), SimError> {
    match std::fs::read_link(path) {
        Ok(target) if target.file_name().and_then(|n| n.to_str()) == Some(name) => {
            std::fs::remove_file(path).map_err(io_err("remove", path))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SimError::Io {
            action: "read link",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Replaces whatever is at `link` with a link to `target`.
fn replace_link(target: &Path, link: &Path) -> Result<(), SimError> {
    match std::fs::remove_file(link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SimError::Io {
                action: "remove",
                path: link.to_owned(),
                source,
            });
        }
    }
    symlink(target, link).map_err(io_err("create link", link))
}

async fn losetup(args: &[&std::ffi::OsStr]) -> Result<String, SimError> {
    let shown = || {
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let out = tokio::process::Command::new("losetup")
        .args(args)
        .output()
        .await
        .map_err(|e| SimError::Losetup {
            args: shown(),
            reason: format!("cannot run losetup: {e}"),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(SimError::Losetup {
            args: shown(),
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

impl AttachSimulator {
    /// A simulator for `instance_id` in moto at `endpoint`, keeping its
    /// device root (`<root>/dev`), sysfs root (`<root>/sys`) and volume
    /// files (`<root>/volumes`) under `root`, which the caller owns.
    pub async fn new(endpoint: &str, instance_id: &str, root: &Path) -> Result<Self, SimError> {
        let instance = InstanceId::new(instance_id).map_err(SimError::Id)?;
        let ec2 = crate::moto::sdk_client(endpoint).await;
        let described = ec2
            .describe_instances()
            .instance_ids(instance.as_str())
            .send()
            .await
            .map_err(|e| SimError::ec2("DescribeInstances", e))?;
        let found = described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(instance.as_str()))
            .ok_or_else(|| SimError::NoInstance(instance.to_string()))?;
        let root_device = found.root_device_name().map(str::to_owned);
        let dev_root = root.join("dev");
        let sys_root = root.join("sys");
        let backing_dir = root.join("volumes");
        for dir in [
            dev_root.join("disk/by-id"),
            sys_root.join("block"),
            backing_dir.clone(),
        ] {
            std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        Ok(Self {
            shared: Arc::new(Shared {
                ec2,
                instance,
                root_device,
                dev_root,
                sys_root,
                backing_dir,
                pass: tokio::sync::Mutex::new(()),
                exposed: Mutex::new(BTreeMap::new()),
                last_error: Mutex::new(None),
            }),
            watcher: None,
        })
    }

    /// The device root to give the provider (`node.dev_root`).
    pub fn dev_root(&self) -> &Path {
        &self.shared.dev_root
    }

    /// The sysfs root to give the provider (`node.sys_root`).
    pub fn sys_root(&self) -> &Path {
        &self.shared.sys_root
    }

    /// The simulated instance.
    pub fn instance_id(&self) -> &str {
        self.shared.instance.as_str()
    }

    /// The by-id link udev would make for `volume_id`.
    pub fn by_id_path(&self, volume_id: &str) -> Result<PathBuf, SimError> {
        let volume = VolumeId::new(volume_id).map_err(SimError::Id)?;
        Ok(self.shared.by_id_path(&volume))
    }

    /// The device of `volume_id`, if it is exposed now.
    pub fn device(&self, volume_id: &str) -> Option<SimDevice> {
        self.shared.exposed().get(volume_id).cloned()
    }

    /// Every exposed device, by volume ID.
    pub fn devices(&self) -> BTreeMap<String, SimDevice> {
        self.shared.exposed().clone()
    }

    /// Points `volume_id`'s by-id link at device `name`, as a stale udev
    /// link left over from an earlier attachment would.
    pub fn point_by_id(&self, volume_id: &str, name: &str) -> Result<(), SimError> {
        if !is_sim_device_name(name) {
            return Err(SimError::DeviceName(name.to_owned()));
        }
        let link = self.by_id_path(volume_id)?;
        replace_link(&Path::new("../..").join(name), &link)
    }

    /// The last error of a background pass, if the latest one failed.
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// One pass: makes the node match moto's attachments now.
    pub async fn sync(&self) -> Result<SyncReport, SimError> {
        self.shared.sync().await
    }

    /// Runs a pass every `every` in the background until
    /// [`stop_watching`](Self::stop_watching) or drop. Failures are logged
    /// and kept for [`last_error`](Self::last_error); the next pass retries.
    pub fn watch(&mut self, every: Duration) {
        self.stop_watching();
        let shared = Arc::clone(&self.shared);
        self.watcher = Some(tokio::spawn(async move {
            loop {
                let failure = match shared.sync().await {
                    Ok(_) => None,
                    Err(e) => {
                        let text = error_chain(&e);
                        tracing::warn!(error = %text, "attachment simulator pass failed");
                        Some(text)
                    }
                };
                *shared
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = failure;
                tokio::time::sleep(every).await;
            }
        }));
    }

    /// Stops background passes (a pass under way is cut short; the next
    /// [`sync`](Self::sync) finishes its work).
    pub fn stop_watching(&mut self) {
        if let Some(task) = self.watcher.take() {
            task.abort();
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl Drop for AttachSimulator {
    fn drop(&mut self) {
        self.stop_watching();
        let exposed = std::mem::take(&mut *self.shared.exposed());
        for device in exposed.values() {
            // Blocking is fine here: a drop runs at the end of a test or
            // a harness, and a leaked loop device outlives the process.
            let detached = std::process::Command::new("losetup")
                .arg("-d")
                .arg(&device.loop_device)
                .status();
            if !detached.is_ok_and(|s| s.success()) {
                tracing::warn!(
                    loop_device = %device.loop_device.display(),
                    "attachment simulator could not detach its loop device"
                );
            }
        }
    }
}

impl Shared {
    fn exposed(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SimDevice>> {
        self.exposed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The link the provider's finder looks at first.
    fn by_id_path(&self, volume: &VolumeId) -> PathBuf {
        DeviceFinder::new(&self.dev_root, &self.sys_root).by_id_path(volume)
    }

    fn backing_path(&self, volume: &VolumeId) -> PathBuf {
        self.backing_dir.join(format!("{volume}.img"))
    }

    /// Every volume moto knows, and the ones attached to our instance.
    async fn describe(&self) -> Result<(BTreeSet<VolumeId>, BTreeMap<VolumeId, Wanted>), SimError> {
        // moto ignores paging: one call returns everything.
        let out = self
            .ec2
            .describe_volumes()
            .send()
            .await
            .map_err(|e| SimError::ec2("DescribeVolumes", e))?;
        let mut known = BTreeSet::new();
        let mut attached = BTreeMap::new();
        for volume in out.volumes() {
            let Some(id) = volume.volume_id() else {
                continue;
            };
            let id = VolumeId::new(id).map_err(SimError::Id)?;
            known.insert(id.clone());
            let ours = volume.attachments().iter().find(|a| {
                a.instance_id() == Some(self.instance.as_str())
                    && matches!(
                        a.state(),
                        Some(
                            aws_sdk_ec2::types::VolumeAttachmentState::Attached
                                | aws_sdk_ec2::types::VolumeAttachmentState::Attaching
                        )
                    )
            });
            let Some(attachment) = ours else {
                continue;
            };
            let device = attachment.device();
            if device.is_some() && device == self.root_device.as_deref() {
                continue;
            }
            let gib = u64::try_from(volume.size().unwrap_or(0)).unwrap_or(0);
            attached.insert(
                id,
                Wanted {
                    size_bytes: gib.saturating_mul(GIB),
                    published: device.filter(|d| is_published_name(d)).map(str::to_owned),
                },
            );
        }
        Ok((known, attached))
    }

    async fn sync(&self) -> Result<SyncReport, SimError> {
        let _pass = self.pass.lock().await;
        let (known, attached) = self.describe().await?;
        let mut report = SyncReport::default();

        let gone: Vec<SimDevice> = self
            .exposed()
            .values()
            .filter(|d| VolumeId::new(&d.volume_id).map_or(true, |id| !attached.contains_key(&id)))
            .cloned()
            .collect();
        for device in gone {
            self.remove(&device).await?;
            self.exposed().remove(&device.volume_id);
            report.removed.push(device.volume_id);
        }

        for (volume, wanted) in &attached {
            let current = self.exposed().get(volume.as_str()).cloned();
            match current {
                None => {
                    let device = self.expose(volume, wanted).await?;
                    self.exposed().insert(volume.to_string(), device);
                    report.appeared.push(volume.to_string());
                }
                Some(device) if wanted.size_bytes > device.size_bytes => {
                    self.grow(volume, &device, wanted.size_bytes).await?;
                    if let Some(d) = self.exposed().get_mut(volume.as_str()) {
                        d.size_bytes = wanted.size_bytes;
                    }
                    report.grown.push(volume.to_string());
                }
                Some(_) => {}
            }
        }

        self.remove_deleted_files(&known)?;
        Ok(report)
    }

    fn next_free_name(&self) -> String {
        let exposed = self.exposed();
        let taken: BTreeSet<&str> = exposed.values().map(|d| d.name.as_str()).collect();
        // nvme0n1 is the root volume on a real node.
        (1..)
            .map(|n| format!("nvme{n}n1"))
            .find(|name| !taken.contains(name.as_str()))
            .unwrap_or_default()
    }

    async fn expose(&self, volume: &VolumeId, wanted: &Wanted) -> Result<SimDevice, SimError> {
        let backing = self.backing_path(volume);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&backing)
            .map_err(io_err("open", &backing))?;
        let len = file.metadata().map_err(io_err("stat", &backing))?.len();
        if len < wanted.size_bytes {
            // Sparse: a GiB volume costs only what is written to it.
            file.set_len(wanted.size_bytes)
                .map_err(io_err("size", &backing))?;
        }
        drop(file);
        let loop_device = self.attach_loop(&backing).await?;
        let name = self.next_free_name();
        let device = SimDevice {
            volume_id: volume.to_string(),
            path: self.dev_root.join(&name),
            name,
            loop_device,
            size_bytes: wanted.size_bytes.max(len),
            published: wanted.published.clone(),
        };
        if let Err(e) = self.make_links(volume, &device) {
            let _ = losetup(&["-d".as_ref(), device.loop_device.as_os_str()]).await;
            return Err(e);
        }
        tracing::debug!(volume = %volume, device = %device.name, loop_device = %device.loop_device.display(), "simulated attach");
        Ok(device)
    }

    async fn attach_loop(&self, backing: &Path) -> Result<PathBuf, SimError> {
        // Concurrent tests race for the first free loop device; losetup
        // reports the loser as busy, and a retry gets the next one.
        let mut last = None;
        for attempt in 0..8u64 {
            match losetup(&["-f".as_ref(), "--show".as_ref(), backing.as_os_str()]).await {
                Ok(node) => return Ok(PathBuf::from(node)),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
        }
        Err(last.unwrap_or_else(|| SimError::Losetup {
            args: "-f --show".into(),
            reason: "no attempt made".into(),
        }))
    }

    fn make_links(&self, volume: &VolumeId, device: &SimDevice) -> Result<(), SimError> {
        replace_link(&device.loop_device, &device.path)?;
        let sys = self
            .sys_root
            .join("block")
            .join(&device.name)
            .join("device");
        std::fs::create_dir_all(&sys).map_err(io_err("create", &sys))?;
        let serial = sys.join("serial");
        std::fs::write(&serial, format!("{:<20}\n", volume.nvme_serial()))
            .map_err(io_err("write", &serial))?;
        replace_link(
            &Path::new("../..").join(&device.name),
            &self.by_id_path(volume),
        )?;
        if let Some(alias) = device
            .published
            .as_deref()
            .and_then(|p| p.strip_prefix("/dev/"))
        {
            replace_link(Path::new(&device.name), &self.dev_root.join(alias))?;
        }
        Ok(())
    }

    async fn remove(&self, device: &SimDevice) -> Result<(), SimError> {
        if let Ok(volume) = VolumeId::new(&device.volume_id) {
            remove_link_to(&self.by_id_path(&volume), &device.name)?;
        }
        if let Some(alias) = device
            .published
            .as_deref()
            .and_then(|p| p.strip_prefix("/dev/"))
        {
            remove_link_to(&self.dev_root.join(alias), &device.name)?;
        }
        let sys = self.sys_root.join("block").join(&device.name);
        match std::fs::remove_dir_all(&sys) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SimError::Io {
                    action: "remove",
                    path: sys,
                    source,
                });
            }
        }
        match std::fs::remove_file(&device.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SimError::Io {
                    action: "remove",
                    path: device.path.clone(),
                    source,
                });
            }
        }
        losetup(&["-d".as_ref(), device.loop_device.as_os_str()]).await?;
        tracing::debug!(volume = %device.volume_id, device = %device.name, "simulated detach");
        Ok(())
    }

    async fn grow(&self, volume: &VolumeId, device: &SimDevice, size: u64) -> Result<(), SimError> {
        let backing = self.backing_path(volume);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&backing)
            .and_then(|f| f.set_len(size))
            .map_err(io_err("grow", &backing))?;
        losetup(&["-c".as_ref(), device.loop_device.as_os_str()]).await?;
        tracing::debug!(volume = %volume, size, "simulated resize");
        Ok(())
    }

    /// Removes the files of volumes moto no longer knows (deleted), unless
    /// still exposed.
    fn remove_deleted_files(&self, known: &BTreeSet<VolumeId>) -> Result<(), SimError> {
        let entries =
            std::fs::read_dir(&self.backing_dir).map_err(io_err("list", &self.backing_dir))?;
        let exposed: BTreeSet<String> = self.exposed().keys().cloned().collect();
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.backing_dir))?;
            let file_name = entry.file_name();
            let Some(volume) = file_name
                .to_str()
                .and_then(|n| n.strip_suffix(".img"))
                .and_then(|n| VolumeId::new(n).ok())
            else {
                continue;
            };
            if !known.contains(&volume) && !exposed.contains(volume.as_str()) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ebs_data_device_names_become_aliases() {
        for good in ["/dev/xvdba", "/dev/sdf", "/dev/xvdz"] {
            assert!(is_published_name(good), "{good}");
        }
        for bad in [
            "/dev/sda1",
            "/dev/xvd",
            "/dev/xvdabc",
            "/dev/../etc",
            "xvdba",
            "/dev/nvme1n1",
        ] {
            assert!(!is_published_name(bad), "{bad}");
        }
    }

    #[test]
    fn only_nvme_namespace_names_are_device_names() {
        assert!(is_sim_device_name("nvme1n1"));
        assert!(is_sim_device_name("nvme12n1"));
        for bad in [
            "nvme1",
            "nvmen1",
            "../nvme1n1",
            "nvme1n1/x",
            "sda",
            "nvme99999n1",
        ] {
            assert!(!is_sim_device_name(bad), "{bad}");
        }
    }

    #[test]
    fn links_are_removed_only_while_they_name_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        symlink("../../nvme1n1", &link).unwrap();
        remove_link_to(&link, "nvme2n1").unwrap();
        assert!(link.symlink_metadata().is_ok(), "a link elsewhere stays");
        remove_link_to(&link, "nvme1n1").unwrap();
        assert!(
            link.symlink_metadata().is_err(),
            "a link to the device goes"
        );
        remove_link_to(&link, "nvme1n1").unwrap();
    }

    #[test]
    fn replacing_a_link_points_it_at_the_new_target() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("by-id");
        replace_link(Path::new("nvme1n1"), &link).unwrap();
        replace_link(Path::new("nvme2n1"), &link).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("nvme2n1"));
    }
}
