//! Finding an attached volume's block device on the node.
//!
//! On Nitro instances EBS volumes are NVMe namespaces whose controller
//! serial is the volume ID without its dash, and udev links them as
//! `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<hex>`. A link can be
//! stale (a detached volume's name left behind pointing at a device that now
//! holds another volume), so no NVMe device is returned unless its sysfs
//! serial names the volume: the link is a hint, the serial is the proof. If
//! the link is missing or wrong, every NVMe block device's serial is
//! scanned. Xen instances have no serials; there the device name given at
//! attach time (`/dev/xvdba`, or its `sd` alias) is used as published.
//!
//! `/dev` and `/sys` are configurable so tests can use a temporary tree.

use std::io;
use std::path::{Path, PathBuf};

use crate::ids::VolumeId;

/// The by-id prefix udev gives EBS NVMe devices.
pub const BY_ID_PREFIX: &str = "nvme-Amazon_Elastic_Block_Store_";

/// Why device discovery failed (not "not there yet", which is `Ok(None)`).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A file under /dev or /sys could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The published device path is not an EBS device name.
    #[error("the published device path {0:?} is not of the form /dev/xvdXX or /dev/sdXX")]
    BadPublishedPath(String),
    /// The published device exists but holds another volume.
    #[error("{path} holds the volume with serial {found:?}, not {expected}")]
    WrongVolume {
        /// The device.
        path: PathBuf,
        /// The serial found.
        found: String,
        /// The serial expected.
        expected: String,
    },
}

/// Finds EBS devices under a device root and a sysfs root.
#[derive(Debug, Clone)]
pub struct DeviceFinder {
    dev_root: PathBuf,
    sys_root: PathBuf,
}

fn is_plain_device_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn read_optional(path: &Path) -> Result<Option<String>, DeviceError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DeviceError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

impl DeviceFinder {
    /// A finder over `dev_root` (normally `/dev`) and `sys_root` (`/sys`).
    pub fn new(dev_root: impl Into<PathBuf>, sys_root: impl Into<PathBuf>) -> Self {
        Self {
            dev_root: dev_root.into(),
            sys_root: sys_root.into(),
        }
    }

    /// The by-id link of a volume.
    pub fn by_id_path(&self, volume: &VolumeId) -> PathBuf {
        self.dev_root
            .join("disk/by-id")
            .join(format!("{BY_ID_PREFIX}{}", volume.nvme_serial()))
    }

    /// The serial sysfs reports for block device `name`, trimmed (EBS pads
    /// it with spaces), or `None` if the device has none.
    fn serial_of(&self, name: &str) -> Result<Option<String>, DeviceError> {
        let path = self.sys_root.join("block").join(name).join("device/serial");
        Ok(read_optional(&path)?.map(|s| s.trim().to_owned()))
    }

    /// The device name a link points at, if it is a plain name (`nvme1n1`).
    fn link_target_name(&self, link: &Path) -> Result<Option<String>, DeviceError> {
        let target = match std::fs::read_link(link) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            // Not a link (a plain device node): use its own name.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => link.to_path_buf(),
            Err(source) => {
                return Err(DeviceError::Read {
                    path: link.to_owned(),
                    source,
                });
            }
        };
        Ok(target
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| is_plain_device_name(n))
            .map(str::to_owned))
    }

    /// Looks once. `Ok(None)` means "not there (yet)".
    pub fn find(
        &self,
        volume: &VolumeId,
        published: Option<&str>,
    ) -> Result<Option<PathBuf>, DeviceError> {
        let serial = volume.nvme_serial();
        let link = self.by_id_path(volume);
        if let Some(name) = self.link_target_name(&link)? {
            match self.serial_of(&name)? {
                Some(found) if found == serial => return Ok(Some(self.dev_root.join(name))),
                found => tracing::warn!(
                    link = %link.display(),
                    device = %name,
                    ?found,
                    expected = %serial,
                    "by-id link does not lead to the volume's device; scanning serials"
                ),
            }
        }
        if let Some(name) = self.scan_for_serial(&serial)? {
            return Ok(Some(self.dev_root.join(name)));
        }
        match published {
            Some(path) if !path.is_empty() => self.published_device(path, &serial),
            _ => Ok(None),
        }
    }

    fn scan_for_serial(&self, serial: &str) -> Result<Option<String>, DeviceError> {
        let block = self.sys_root.join("block");
        let entries = match std::fs::read_dir(&block) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(DeviceError::Read {
                    path: block,
                    source,
                });
            }
        };
        for entry in entries {
            let entry = entry.map_err(|source| DeviceError::Read {
                path: block.clone(),
                source,
            })?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !name.starts_with("nvme") || !is_plain_device_name(&name) {
                continue;
            }
            if self.serial_of(&name)?.as_deref() == Some(serial)
                && self.dev_root.join(&name).symlink_metadata().is_ok()
            {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    fn published_device(&self, path: &str, serial: &str) -> Result<Option<PathBuf>, DeviceError> {
        let name = path
            .strip_prefix("/dev/")
            .filter(|n| {
                let suffix = n.strip_prefix("xvd").or_else(|| n.strip_prefix("sd"));
                suffix.is_some_and(|s| {
                    (1..=2).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase())
                })
            })
            .ok_or_else(|| DeviceError::BadPublishedPath(path.to_owned()))?;
        let alias = match name.strip_prefix("xvd") {
            Some(rest) => format!("sd{rest}"),
            None => format!("xvd{}", name.trim_start_matches("sd")),
        };
        for candidate in [name.to_owned(), alias] {
            let full = self.dev_root.join(&candidate);
            let Some(target) = self.link_target_name(&full)? else {
                continue;
            };
            if target.starts_with("nvme") {
                // A udev alias to an NVMe device: only its serial can vouch for it.
                return match self.serial_of(&target)? {
                    Some(found) if found == serial => Ok(Some(self.dev_root.join(target))),
                    found => Err(DeviceError::WrongVolume {
                        path: full,
                        found: found.unwrap_or_default(),
                        expected: serial.to_owned(),
                    }),
                };
            }
            return Ok(Some(full));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    struct Tree {
        _dir: tempfile::TempDir,
        dev: PathBuf,
        sys: PathBuf,
    }

    impl Tree {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let dev = dir.path().join("dev");
            let sys = dir.path().join("sys");
            std::fs::create_dir_all(dev.join("disk/by-id")).unwrap();
            std::fs::create_dir_all(sys.join("block")).unwrap();
            Self {
                _dir: dir,
                dev,
                sys,
            }
        }

        fn nvme(&self, name: &str, serial: &str) {
            std::fs::write(self.dev.join(name), b"").unwrap();
            let d = self.sys.join("block").join(name).join("device");
            std::fs::create_dir_all(&d).unwrap();
            // EBS pads serials to 20 characters.
            std::fs::write(d.join("serial"), format!("{serial:<20}\n")).unwrap();
        }

        fn by_id(&self, volume: &VolumeId, target: &str) {
            symlink(
                format!("../../{target}"),
                self.dev
                    .join("disk/by-id")
                    .join(format!("{BY_ID_PREFIX}{}", volume.nvme_serial())),
            )
            .unwrap();
        }

        fn finder(&self) -> DeviceFinder {
            DeviceFinder::new(&self.dev, &self.sys)
        }
    }

    fn vol(id: &str) -> VolumeId {
        VolumeId::new(id).unwrap()
    }

    #[test]
    fn finds_the_nvme_device_through_a_verified_link() {
        let t = Tree::new();
        let v = vol("vol-0123456789abcdef0");
        t.nvme("nvme1n1", "vol0123456789abcdef0");
        t.by_id(&v, "nvme1n1");
        assert_eq!(
            t.finder().find(&v, Some("/dev/xvdba")).unwrap(),
            Some(t.dev.join("nvme1n1"))
        );
    }

    #[test]
    fn a_stale_link_never_leads_to_the_wrong_volume() {
        let t = Tree::new();
        let v = vol("vol-0123456789abcdef0");
        // The link points at nvme1n1, which now holds another volume; the
        // right one is nvme2n1.
        t.nvme("nvme1n1", "vol0aaaaaaaaaaaaaaaa");
        t.nvme("nvme2n1", "vol0123456789abcdef0");
        t.by_id(&v, "nvme1n1");
        assert_eq!(
            t.finder().find(&v, None).unwrap(),
            Some(t.dev.join("nvme2n1"))
        );
    }

    #[test]
    fn a_stale_link_and_no_matching_device_is_not_found() {
        let t = Tree::new();
        let v = vol("vol-0123456789abcdef0");
        t.nvme("nvme1n1", "vol0aaaaaaaaaaaaaaaa");
        t.by_id(&v, "nvme1n1");
        assert_eq!(t.finder().find(&v, None).unwrap(), None);
    }

    #[test]
    fn scans_serials_when_udev_made_no_link() {
        let t = Tree::new();
        let v = vol("vol-0123456789abcdef0");
        t.nvme("nvme0n1", "vol0bbbbbbbbbbbbbbbb");
        t.nvme("nvme3n1", "vol0123456789abcdef0");
        assert_eq!(
            t.finder().find(&v, None).unwrap(),
            Some(t.dev.join("nvme3n1"))
        );
    }

    #[test]
    fn falls_back_to_the_published_xen_device_and_its_alias() {
        let t = Tree::new();
        let v = vol("vol-0123456789abcdef0");
        assert_eq!(t.finder().find(&v, Some("/dev/xvdba")).unwrap(), None);
        std::fs::write(t.dev.join("sdba"), b"").unwrap();
        assert_eq!(
            t.finder().find(&v, Some("/dev/xvdba")).unwrap(),
            Some(t.dev.join("sdba"))
        );
        std::fs::write(t.dev.join("xvdba"), b"").unwrap();
        assert_eq!(
            t.finder().find(&v, Some("/dev/xvdba")).unwrap(),
            Some(t.dev.join("xvdba"))
        );
    }

    #[test]
    fn a_published_alias_to_another_nvme_volume_is_refused() {
        let t = Tree::new();
        let v = vol("vol-0123456789abcdef0");
        t.nvme("nvme1n1", "vol0aaaaaaaaaaaaaaaa");
        symlink("nvme1n1", t.dev.join("xvdba")).unwrap();
        let err = t.finder().find(&v, Some("/dev/xvdba")).unwrap_err();
        assert!(matches!(err, DeviceError::WrongVolume { .. }), "{err:?}");
    }

    #[test]
    fn published_paths_outside_the_ebs_names_are_refused() {
        let t = Tree::new();
        let v = vol("vol-0123456789abcdef0");
        for bad in [
            "/etc/passwd",
            "/dev/../etc/shadow",
            "/dev/xvd",
            "/dev/xvdabc",
            "/dev/nvme0n1",
        ] {
            assert!(
                matches!(
                    t.finder().find(&v, Some(bad)),
                    Err(DeviceError::BadPublishedPath(_))
                ),
                "{bad}"
            );
        }
    }
}
