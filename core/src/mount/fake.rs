//! An in-memory mounter for tests that run the node service without root.
//!
//! It keeps block devices (size, filesystem) and a mount table in a mutex
//! and behaves like the kernel where the node service can tell: mounting an
//! unformatted device fails, unmounting something not mounted fails, a bind
//! mount of a mount shows the same device, read-only binds show `ro`.
//! Mount points must exist on the real filesystem (tests use temp dirs), so
//! the node service's own directory handling runs for real.
//!
//! Unknown device paths are created on first use as blank devices of
//! [`FakeMounter::DEFAULT_DEVICE_SIZE`] unless that is switched off, so a
//! fake provider can hand out any `/dev/...` path.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::{
    DeviceNumber, FormatOptions, FsStats, FsType, MountError, MountInfo, MountOptions, Mounter,
    Probe, canonical,
};

/// Operations a test can make fail once with [`FakeMounter::fail_next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FakeOp {
    /// [`Mounter::probe`].
    Probe,
    /// [`Mounter::format`].
    Format,
    /// [`Mounter::mount`].
    Mount,
    /// [`Mounter::bind_mount`].
    Bind,
    /// [`Mounter::unmount`].
    Unmount,
    /// [`Mounter::grow_filesystem`].
    Grow,
}

#[derive(Debug, Clone)]
struct FakeDevice {
    number: DeviceNumber,
    size: u64,
    fs: Option<String>,
    fs_size: u64,
    formats: u32,
    used_bytes: u64,
}

#[derive(Debug, Default)]
struct State {
    devices: BTreeMap<PathBuf, FakeDevice>,
    mounts: Vec<MountInfo>,
    /// Block bind mounts: mount point -> device path.
    bound: BTreeMap<PathBuf, PathBuf>,
    next_mount_id: u32,
    next_minor: u32,
    fail_next: BTreeMap<FakeOp, i32>,
}

/// The fake. Share it behind an `Arc`.
#[derive(Debug)]
pub struct FakeMounter {
    state: Mutex<State>,
    auto_devices: bool,
}

impl Default for FakeMounter {
    fn default() -> Self {
        Self::new()
    }
}

/// Major number the fake gives its devices (the loop driver's).
const FAKE_MAJOR: u32 = 7;
/// The device number devtmpfs shows for block bind mounts.
const DEVTMPFS: DeviceNumber = DeviceNumber { major: 0, minor: 5 };
const TOTAL_INODES: u64 = 65536;

impl FakeMounter {
    /// Size of devices created on first use.
    pub const DEFAULT_DEVICE_SIZE: u64 = 1 << 30;

    /// A fake that creates unknown devices on first use.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                next_mount_id: 100,
                ..State::default()
            }),
            auto_devices: true,
        }
    }

    /// A fake that knows only devices added with [`FakeMounter::add_device`].
    pub fn strict() -> Self {
        Self {
            auto_devices: false,
            ..Self::new()
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked mid-call leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or resets) a blank device.
    pub fn add_device(&self, path: impl AsRef<Path>, size: u64) {
        let mut state = self.lock();
        Self::insert_device(&mut state, path.as_ref(), size);
    }

    fn insert_device<'a>(state: &'a mut State, path: &Path, size: u64) -> &'a mut FakeDevice {
        state.next_minor += 1;
        let fresh = FakeDevice {
            number: DeviceNumber {
                major: FAKE_MAJOR,
                minor: state.next_minor,
            },
            size,
            fs: None,
            fs_size: 0,
            formats: 0,
            used_bytes: 0,
        };
        let slot = state
            .devices
            .entry(path.to_path_buf())
            .or_insert_with(|| fresh.clone());
        *slot = fresh;
        slot
    }

    /// Removes a device, as if it was detached (mounts stay, like the kernel's).
    pub fn remove_device(&self, path: impl AsRef<Path>) {
        self.lock().devices.remove(path.as_ref());
    }

    /// Changes a device's size (the filesystem keeps its size until grown).
    pub fn set_device_size(&self, path: impl AsRef<Path>, size: u64) {
        if let Some(dev) = self.lock().devices.get_mut(path.as_ref()) {
            dev.size = size;
        }
    }

    /// Writes a filesystem signature directly, as if the device came formatted.
    pub fn set_filesystem(&self, path: impl AsRef<Path>, fs: &str) {
        if let Some(dev) = self.lock().devices.get_mut(path.as_ref()) {
            dev.fs = Some(fs.to_owned());
            dev.fs_size = dev.size;
        }
    }

    /// The filesystem on a device, if any.
    pub fn filesystem(&self, path: impl AsRef<Path>) -> Option<String> {
        self.lock()
            .devices
            .get(path.as_ref())
            .and_then(|d| d.fs.clone())
    }

    /// How many times a device was formatted.
    pub fn format_count(&self, path: impl AsRef<Path>) -> u32 {
        self.lock()
            .devices
            .get(path.as_ref())
            .map_or(0, |d| d.formats)
    }

    /// Pretends `bytes` are in use on the device's filesystem.
    pub fn set_used_bytes(&self, path: impl AsRef<Path>, bytes: u64) {
        if let Some(dev) = self.lock().devices.get_mut(path.as_ref()) {
            dev.used_bytes = bytes;
        }
    }

    /// The next call of `op` fails with the OS error `errno`.
    pub fn fail_next(&self, op: FakeOp, errno: i32) {
        self.lock().fail_next.insert(op, errno);
    }

    /// A copy of the mount table.
    pub fn mounts(&self) -> Vec<MountInfo> {
        self.lock().mounts.clone()
    }

    fn injected(state: &mut State, op: FakeOp) -> Option<io::Error> {
        state
            .fail_next
            .remove(&op)
            .map(io::Error::from_raw_os_error)
    }

    fn device<'a>(
        &self,
        state: &'a mut State,
        path: &Path,
    ) -> Result<&'a mut FakeDevice, MountError> {
        if !state.devices.contains_key(path) {
            if !self.auto_devices || !path.is_absolute() {
                return Err(MountError::Inspect {
                    path: path.to_path_buf(),
                    source: io::Error::from(io::ErrorKind::NotFound),
                });
            }
            return Ok(Self::insert_device(state, path, Self::DEFAULT_DEVICE_SIZE));
        }
        state
            .devices
            .get_mut(path)
            .ok_or_else(|| MountError::Inspect {
                path: path.to_path_buf(),
                source: io::Error::from(io::ErrorKind::NotFound),
            })
    }

    fn push_mount(state: &mut State, entry: MountInfo) {
        state.next_mount_id += 1;
        state.mounts.push(MountInfo {
            mount_id: state.next_mount_id,
            ..entry
        });
    }

    fn topmost<'a>(state: &'a State, path: &Path) -> Option<&'a MountInfo> {
        state.mounts.iter().rev().find(|m| m.mount_point == path)
    }
}

fn mount_point_missing(target: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("mount point {} does not exist", target.display()),
    )
}

impl Mounter for FakeMounter {
    fn mount_table(&self) -> Result<Vec<MountInfo>, MountError> {
        Ok(self.mounts())
    }

    fn device_number(&self, path: &Path) -> Result<DeviceNumber, MountError> {
        let mut state = self.lock();
        let key = canonical(path);
        if let Some(device) = state.bound.get(&key).cloned() {
            return self.device(&mut state, &device).map(|d| d.number);
        }
        if path.is_dir() || path.is_file() {
            return Err(MountError::NotBlockDevice(path.to_path_buf()));
        }
        self.device(&mut state, path).map(|d| d.number)
    }

    fn probe(&self, device: &Path) -> Result<Probe, MountError> {
        let mut state = self.lock();
        if let Some(e) = Self::injected(&mut state, FakeOp::Probe) {
            return Err(MountError::Inspect {
                path: device.to_path_buf(),
                source: e,
            });
        }
        let dev = self.device(&mut state, device)?;
        Ok(match &dev.fs {
            None => Probe::Unformatted,
            Some(fs) => Probe::Filesystem(fs.clone()),
        })
    }

    fn format(&self, device: &Path, fs: FsType, options: &FormatOptions) -> Result<(), MountError> {
        options
            .mkfs_args(fs)
            .map_err(|e| MountError::InvalidFormatOptions(e.to_string()))?;
        let mut state = self.lock();
        if let Some(e) = Self::injected(&mut state, FakeOp::Format) {
            return Err(MountError::Spawn {
                program: fs.mkfs_program().into(),
                source: e,
            });
        }
        let dev = self.device(&mut state, device)?;
        dev.fs = Some(fs.as_str().to_owned());
        dev.fs_size = dev.size;
        dev.formats += 1;
        Ok(())
    }

    fn mount(
        &self,
        device: &Path,
        target: &Path,
        fs_type: &str,
        options: &MountOptions,
    ) -> Result<(), MountError> {
        let fail = |source| MountError::Mount {
            source_path: device.to_path_buf(),
            target: target.to_path_buf(),
            fs_type: fs_type.to_owned(),
            source,
        };
        let mut state = self.lock();
        if let Some(e) = Self::injected(&mut state, FakeOp::Mount) {
            return Err(fail(e));
        }
        if !target.is_dir() {
            return Err(fail(mount_point_missing(target)));
        }
        let dev = self.device(&mut state, device)?;
        let compatible = match dev.fs.as_deref() {
            Some(fs) => fs == fs_type || (fs == "ext3" && fs_type == "ext4"),
            None => false,
        };
        if !compatible {
            return Err(fail(io::Error::from_raw_os_error(libc::EINVAL)));
        }
        let number = dev.number;
        let read_only = options.read_only();
        Self::push_mount(
            &mut state,
            MountInfo {
                mount_id: 0,
                parent_id: 1,
                device: number,
                root: PathBuf::from("/"),
                mount_point: canonical(target),
                mount_options: vec![
                    if read_only { "ro" } else { "rw" }.to_owned(),
                    "relatime".to_owned(),
                ],
                optional_fields: Vec::new(),
                fs_type: fs_type.to_owned(),
                source: device.to_string_lossy().into_owned(),
                super_options: options.words().to_vec(),
            },
        );
        Ok(())
    }

    fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
        let fail = |source_err| MountError::Bind {
            source_path: source.to_path_buf(),
            target: target.to_path_buf(),
            source: source_err,
        };
        let mut state = self.lock();
        if let Some(e) = Self::injected(&mut state, FakeOp::Bind) {
            return Err(fail(e));
        }
        if !target.exists() {
            return Err(fail(mount_point_missing(target)));
        }
        let mode = if read_only { "ro" } else { "rw" }.to_owned();
        let target_key = canonical(target);
        let source_key = canonical(source);
        if let Some(staged) = Self::topmost(&state, &source_key).cloned() {
            if !target.is_dir() {
                return Err(fail(io::Error::from_raw_os_error(libc::ENOTDIR)));
            }
            let mut mount_options = staged.mount_options.clone();
            mount_options.retain(|o| o != "rw" && o != "ro");
            mount_options.insert(0, mode);
            Self::push_mount(
                &mut state,
                MountInfo {
                    mount_point: target_key,
                    mount_options,
                    ..staged
                },
            );
            return Ok(());
        }
        if state.devices.contains_key(source) || (self.auto_devices && !source.exists()) {
            if !target.is_file() {
                return Err(fail(io::Error::from_raw_os_error(libc::ENOTDIR)));
            }
            self.device(&mut state, source)?;
            let name = source.file_name().map(PathBuf::from).unwrap_or_default();
            Self::push_mount(
                &mut state,
                MountInfo {
                    mount_id: 0,
                    parent_id: 1,
                    device: DEVTMPFS,
                    root: Path::new("/").join(name),
                    mount_point: target_key.clone(),
                    mount_options: vec![mode, "nosuid".to_owned()],
                    optional_fields: Vec::new(),
                    fs_type: "devtmpfs".to_owned(),
                    source: "udev".to_owned(),
                    super_options: vec!["rw".to_owned()],
                },
            );
            state.bound.insert(target_key, source.to_path_buf());
            return Ok(());
        }
        // Binding a plain directory is something the node service never does.
        Err(fail(io::Error::new(
            io::ErrorKind::Unsupported,
            "the fake mounter binds only mounts and devices",
        )))
    }

    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        let fail = |source| MountError::Unmount {
            target: target.to_path_buf(),
            source,
        };
        let mut state = self.lock();
        if let Some(e) = Self::injected(&mut state, FakeOp::Unmount) {
            return Err(fail(e));
        }
        let key = canonical(target);
        let Some(index) = state.mounts.iter().rposition(|m| m.mount_point == key) else {
            return Err(fail(io::Error::from_raw_os_error(libc::EINVAL)));
        };
        state.mounts.remove(index);
        if Self::topmost(&state, &key).is_none() {
            state.bound.remove(&key);
        }
        Ok(())
    }

    fn grow_filesystem(
        &self,
        device: &Path,
        mount_point: &Path,
        fs_type: &str,
    ) -> Result<(), MountError> {
        let mut state = self.lock();
        if let Some(e) = Self::injected(&mut state, FakeOp::Grow) {
            return Err(MountError::Spawn {
                program: "resize2fs".into(),
                source: e,
            });
        }
        if Self::topmost(&state, &canonical(mount_point)).is_none() {
            return Err(MountError::Inspect {
                path: mount_point.to_path_buf(),
                source: io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        if !matches!(fs_type, "ext3" | "ext4" | "xfs") {
            return Err(MountError::UnsupportedFilesystem(fs_type.to_owned()));
        }
        let dev = self.device(&mut state, device)?;
        dev.fs_size = dev.size;
        Ok(())
    }

    fn grow_unmounted(&self, device: &Path, fs_type: &str) -> Result<(), MountError> {
        let mut state = self.lock();
        if let Some(e) = Self::injected(&mut state, FakeOp::Grow) {
            return Err(MountError::Spawn {
                program: "resize2fs".into(),
                source: e,
            });
        }
        if !matches!(fs_type, "ext2" | "ext3" | "ext4") {
            return Err(MountError::UnsupportedFilesystem(fs_type.to_owned()));
        }
        let dev = self.device(&mut state, device)?;
        dev.fs_size = dev.size;
        Ok(())
    }

    fn filesystem_size(&self, device: &Path, fs_type: &str) -> Result<Option<u64>, MountError> {
        let mut state = self.lock();
        let dev = self.device(&mut state, device)?;
        Ok((dev.fs.as_deref() == Some(fs_type)).then_some(dev.fs_size))
    }

    fn filesystem_stats(&self, path: &Path) -> Result<FsStats, MountError> {
        let state = self.lock();
        let key = canonical(path);
        let not_mounted = || MountError::Inspect {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotFound, "not a mount of the fake mounter"),
        };
        let mount = Self::topmost(&state, &key).ok_or_else(not_mounted)?;
        let dev = state
            .devices
            .values()
            .find(|d| d.number == mount.device)
            .ok_or_else(not_mounted)?;
        let used = dev.used_bytes.min(dev.fs_size);
        let used_inodes = 11 + used / (1 << 20);
        Ok(FsStats {
            total_bytes: dev.fs_size,
            available_bytes: dev.fs_size - used,
            used_bytes: used,
            total_inodes: TOTAL_INODES,
            free_inodes: TOTAL_INODES.saturating_sub(used_inodes),
            used_inodes,
        })
    }

    fn device_size(&self, device: &Path) -> Result<u64, MountError> {
        let mut state = self.lock();
        let key = canonical(device);
        let path = state
            .bound
            .get(&key)
            .cloned()
            .unwrap_or_else(|| device.to_path_buf());
        self.device(&mut state, &path).map(|d| d.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_goes_through_format_mount_bind_and_unmount() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging");
        let target = dir.path().join("target");
        std::fs::create_dir(&staging).unwrap();
        std::fs::create_dir(&target).unwrap();
        let m = FakeMounter::strict();
        let dev = Path::new("/dev/fake0");
        assert!(
            m.probe(dev).is_err(),
            "unknown devices cannot be probed in strict mode"
        );
        m.add_device(dev, 10 << 30);
        assert_eq!(m.probe(dev).unwrap(), Probe::Unformatted);

        let opts = MountOptions::default();
        assert!(
            m.mount(dev, &staging, "ext4", &opts).is_err(),
            "unformatted devices do not mount"
        );
        m.format(dev, FsType::Ext4, &FormatOptions::default())
            .unwrap();
        assert_eq!(m.probe(dev).unwrap(), Probe::Filesystem("ext4".into()));
        m.mount(dev, &staging, "ext4", &opts).unwrap();
        let staged = m.find_mount(&staging).unwrap().unwrap();
        assert_eq!(staged.device, m.device_number(dev).unwrap());

        m.bind_mount(&staging, &target, true).unwrap();
        let published = m.find_mount(&target).unwrap().unwrap();
        assert_eq!(published.device, staged.device);
        assert!(published.is_read_only() && !staged.is_read_only());
        assert_eq!(m.filesystem_stats(&target).unwrap().total_bytes, 10 << 30);

        m.set_device_size(dev, 20 << 30);
        assert_eq!(m.filesystem_stats(&target).unwrap().total_bytes, 10 << 30);
        m.grow_filesystem(dev, &staging, "ext4").unwrap();
        assert_eq!(m.filesystem_stats(&target).unwrap().total_bytes, 20 << 30);

        m.unmount(&target).unwrap();
        assert!(m.unmount(&target).is_err(), "second unmount finds nothing");
        m.unmount(&staging).unwrap();
        assert!(m.mounts().is_empty());
        assert_eq!(m.format_count(dev), 1);
    }

    #[test]
    fn block_binds_resolve_to_their_device() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("block");
        std::fs::write(&target, b"").unwrap();
        let m = FakeMounter::new();
        let dev = Path::new("/dev/fake-block");
        m.bind_mount(dev, &target, false).unwrap();
        assert_eq!(
            m.device_number(&target).unwrap(),
            m.device_number(dev).unwrap()
        );
        assert_eq!(
            m.device_size(&target).unwrap(),
            FakeMounter::DEFAULT_DEVICE_SIZE
        );
        m.unmount(&target).unwrap();
        assert!(matches!(
            m.device_number(&target),
            Err(MountError::NotBlockDevice(_))
        ));
    }

    #[test]
    fn injected_failures_fire_once() {
        let dir = tempfile::tempdir().unwrap();
        let m = FakeMounter::new();
        let dev = Path::new("/dev/fake1");
        m.add_device(dev, 1 << 30);
        m.set_filesystem(dev, "xfs");
        m.fail_next(FakeOp::Mount, libc::EIO);
        let err = m
            .mount(dev, dir.path(), "xfs", &MountOptions::default())
            .unwrap_err();
        assert!(matches!(err, MountError::Mount { .. }), "{err}");
        m.mount(dev, dir.path(), "xfs", &MountOptions::default())
            .unwrap();
    }
}
