//! Finding an attached disk's block device on the node by its serial, and
//! proving that the device really is that disk before anyone formats it.
//!
//! ECS exposes a data disk's serial (its ID without `d-`) to the guest. The
//! udev names are tried first (`disk/by-id/virtio-<serial>`, then the NVMe
//! form); a link's target is accepted only when its sysfs serial matches,
//! so a stale link left by an earlier disk is refused. When no link works,
//! every `block/*` entry in sysfs is scanned for the serial.

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

/// The `by-id` prefix of NVMe cloud disks.
pub const NVME_BY_ID_PREFIX: &str = "nvme-Alibaba_Cloud_Elastic_Block_Storage_";
/// The `by-id` prefix of virtio cloud disks.
pub const VIRTIO_BY_ID_PREFIX: &str = "virtio-";
/// virtio-blk truncates serials to this many bytes.
const VIRTIO_SERIAL_MAX: usize = 20;

/// Why a device could not be found or trusted.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The disk ID is not of the form `d-<lower-case alphanumerics>`.
    #[error("{0:?} is not an ECS disk ID")]
    BadDiskId(String),
    /// No device with the disk's serial appeared in time.
    #[error("no block device with serial {serial} appeared within {waited:?}")]
    NotFound {
        /// The serial looked for.
        serial: String,
        /// How long it was waited for.
        waited: Duration,
    },
    /// A by-id link leads to a device whose serial is another disk's.
    #[error("{link} leads to {device}, whose serial is {found:?}, not {expected:?}; refusing it")]
    WrongSerial {
        /// The link.
        link: PathBuf,
        /// Where it leads.
        device: PathBuf,
        /// The serial found there.
        found: String,
        /// The serial wanted.
        expected: String,
    },
    /// The device root or sysfs could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The serial the guest sees for `disk_id`.
pub fn serial_of(disk_id: &str) -> Result<String, DeviceError> {
    let rest = disk_id
        .strip_prefix("d-")
        .ok_or_else(|| DeviceError::BadDiskId(disk_id.to_owned()))?;
    if rest.is_empty()
        || rest.len() > 64
        || !rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(DeviceError::BadDiskId(disk_id.to_owned()));
    }
    Ok(rest.to_owned())
}

/// Where to look.
#[derive(Debug, Clone)]
pub struct DeviceFinder {
    dev_root: PathBuf,
    sys_root: PathBuf,
    poll: Duration,
}

/// Whether `found` (as read from sysfs) is the serial `wanted`, allowing for
/// virtio's 20-byte truncation.
fn serial_matches(found: &str, wanted: &str) -> bool {
    let found = found.trim();
    !found.is_empty()
        && (found == wanted
            || (found.len() == VIRTIO_SERIAL_MAX
                && wanted.len() > VIRTIO_SERIAL_MAX
                && wanted.starts_with(found)))
}

impl DeviceFinder {
    /// A finder over `dev_root` (normally `/dev`) and `sys_root` (`/sys`).
    pub fn new(dev_root: impl Into<PathBuf>, sys_root: impl Into<PathBuf>) -> Self {
        Self {
            dev_root: dev_root.into(),
            sys_root: sys_root.into(),
            poll: Duration::from_millis(200),
        }
    }

    /// Sets the poll interval.
    #[must_use]
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// The serial sysfs reports for the block device `name` (`vdb`, `nvme1n1`).
    fn sysfs_serial(&self, name: &str) -> Option<String> {
        let base = self.sys_root.join("block").join(name);
        [base.join("serial"), base.join("device").join("serial")]
            .iter()
            .find_map(|p| fs::read_to_string(p).ok())
            .map(|s| s.trim().to_owned())
    }

    fn is_block_device(path: &Path) -> bool {
        fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
    }

    /// One look, without waiting.
    pub fn find_once(&self, disk_id: &str) -> Result<Option<PathBuf>, DeviceError> {
        let serial = serial_of(disk_id)?;
        let by_id = self.dev_root.join("disk").join("by-id");
        let virtio_serial: String = serial.chars().take(VIRTIO_SERIAL_MAX).collect();
        let links = [
            by_id.join(format!("{VIRTIO_BY_ID_PREFIX}{virtio_serial}")),
            by_id.join(format!("{NVME_BY_ID_PREFIX}{serial}")),
        ];
        let mut refused = None;
        for link in links {
            let Ok(target) = fs::canonicalize(&link) else {
                continue;
            };
            if !Self::is_block_device(&target) {
                continue;
            }
            let Some(name) = target.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            match self.sysfs_serial(name) {
                Some(found) if serial_matches(&found, &serial) => return Ok(Some(target)),
                Some(found) => {
                    refused = Some(DeviceError::WrongSerial {
                        link,
                        device: target,
                        found,
                        expected: serial.clone(),
                    });
                }
                // No serial to check against: the link alone is not proof.
                None => {}
            }
        }
        if let Some(found) = self.scan(&serial)? {
            return Ok(Some(found));
        }
        match refused {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Scans `block/*` in sysfs for the serial.
    fn scan(&self, serial: &str) -> Result<Option<PathBuf>, DeviceError> {
        let block = self.sys_root.join("block");
        let entries = match fs::read_dir(&block) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(DeviceError::Io {
                    path: block,
                    source,
                });
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        names.sort();
        for name in names {
            if self
                .sysfs_serial(&name)
                .is_some_and(|found| serial_matches(&found, serial))
            {
                let device = self.dev_root.join(&name);
                if Self::is_block_device(&device) {
                    return Ok(Some(device));
                }
            }
        }
        Ok(None)
    }

    /// Waits up to `timeout` for the device of `disk_id`. A wrong-serial
    /// link is refused at once: waiting will not make it right.
    pub async fn wait_for(&self, disk_id: &str, timeout: Duration) -> Result<PathBuf, DeviceError> {
        let start = Instant::now();
        loop {
            match self.find_once(disk_id) {
                Ok(Some(path)) => return Ok(path),
                Ok(None) => {}
                Err(e) => return Err(e),
            }
            if start.elapsed() >= timeout {
                return Err(DeviceError::NotFound {
                    serial: serial_of(disk_id)?,
                    waited: start.elapsed(),
                });
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_come_from_disk_ids() {
        assert_eq!(serial_of("d-bp1abc").unwrap(), "bp1abc");
        for bad in ["", "d-", "bp1abc", "d-BP1", "d-../x", "d-a b", "d-a/b"] {
            assert!(serial_of(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn virtio_truncation_is_allowed_only_at_twenty_bytes() {
        let long = "bp1234567890abcdefghijk"; // 23 bytes
        assert!(serial_matches("bp1234567890abcdefgh", long));
        assert!(!serial_matches("bp1234567890abcdefg", long));
        assert!(serial_matches("bp1abc\n", "bp1abc"));
        assert!(!serial_matches("", "bp1abc"));
        assert!(!serial_matches("bp1abd", "bp1abc"));
    }

    #[test]
    fn nothing_found_in_an_empty_tree() {
        let dir = tempfile::tempdir().unwrap();
        let finder = DeviceFinder::new(dir.path().join("dev"), dir.path().join("sys"));
        assert!(finder.find_once("d-bp1abc").unwrap().is_none());
    }

    #[test]
    fn regular_files_are_not_devices() {
        // A by-id link to a plain file with a matching serial is not a disk.
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev");
        let sys = dir.path().join("sys");
        fs::create_dir_all(dev.join("disk/by-id")).unwrap();
        fs::create_dir_all(sys.join("block/vdb")).unwrap();
        fs::write(dev.join("vdb"), b"").unwrap();
        fs::write(sys.join("block/vdb/serial"), "bp1abc\n").unwrap();
        std::os::unix::fs::symlink(dev.join("vdb"), dev.join("disk/by-id/virtio-bp1abc")).unwrap();
        let finder = DeviceFinder::new(&dev, &sys);
        assert!(finder.find_once("d-bp1abc").unwrap().is_none());
    }
}
