//! What the node remembers about the ephemeral inline volumes it created.
//!
//! Kubelet names an inline volume with its own ID (`csi-<hash>`) and calls
//! only NodePublish/NodeUnpublish with it. The node creates a real volume
//! on publish, so it must find that volume again on unpublish, also after
//! a restart: one small JSON file per inline volume under the state
//! directory maps the kubelet ID to the CSI volume ID.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CoreError;

/// Volume context key kubelet sets to `"true"` for inline volumes.
pub const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";
/// Volume attribute with the inline volume's size (`"1Gi"`).
pub const SIZE_KEY: &str = "size";

/// Why the state of an inline volume could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing a state file failed.
    #[error("cannot access the ephemeral volume state {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A state file does not hold a record.
    #[error("ephemeral volume state {path} is corrupt")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
}

impl From<StateError> for CoreError {
    fn from(err: StateError) -> Self {
        let message = err.to_string();
        let kind = match &err {
            StateError::Io { source, .. } => source.kind(),
            StateError::Corrupt { .. } => io::ErrorKind::InvalidData,
        };
        CoreError::node(message, io::Error::new(kind, err))
    }
}

/// A kubelet volume ID, checked to be usable as a file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletVolumeId(String);

impl KubeletVolumeId {
    /// Accepts letters, digits, `-`, `_` and `.` (not leading), at most 128 bytes.
    pub fn parse(raw: &str) -> Result<Self, CoreError> {
        let ok = !raw.is_empty()
            && raw.len() <= 128
            && !raw.starts_with('.')
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(CoreError::InvalidArgument(format!(
                "volume_id {raw:?} of an ephemeral inline volume must be 1-128 letters, digits, '-', '_' or '.'"
            )))
        }
    }

    /// The ID.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KubeletVolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What is remembered about one inline volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The CSI volume ID of the volume created for it.
    pub volume_id: String,
    /// Where it is published.
    pub target_path: PathBuf,
    /// The provider's node ID it was attached to, when the provider needs attaching.
    #[serde(default)]
    pub attached_node: Option<String>,
}

/// The directory of records.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Records live in `<state_dir>/ephemeral`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("ephemeral"),
        }
    }

    fn path(&self, id: &KubeletVolumeId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// The record of `id`, if there is one.
    pub fn load(&self, id: &KubeletVolumeId) -> Result<Option<Record>, StateError> {
        let path = self.path(id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Stores the record of `id`; a crash leaves either the old or the new one.
    pub fn save(&self, id: &KubeletVolumeId, record: &Record) -> Result<(), StateError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.path(id);
        let tmp = self.dir.join(format!(".{id}.json.tmp"));
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        let mut file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(&bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        // The rename is durable only once the directory is.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }

    /// Forgets `id` (absent is fine).
    pub fn remove(&self, id: &KubeletVolumeId) -> Result<(), StateError> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StateError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }
}

/// Parses a Kubernetes quantity (`"1Gi"`, `"500M"`, `"1.5Gi"`, `"1073741824"`)
/// into bytes, rounding fractions up.
pub fn parse_size(raw: &str) -> Result<i64, String> {
    let text = raw.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return Err(format!("size {raw:?} has an unknown unit {suffix:?}")),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty()
        || !digits_ok(whole)
        || !digits_ok(fraction)
        || fraction.len() > 9
    {
        return Err(format!("size {raw:?} is not a quantity like 1Gi or 500M"));
    }
    let too_big = || format!("size {raw:?} is too large");
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_big())?
    };
    let scale = 10u128.pow(u32::try_from(fraction.len()).map_err(|_| too_big())?);
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| too_big())?
    };
    let bytes = whole
        .checked_mul(multiplier)
        .and_then(|w| w.checked_add((fraction * multiplier).div_ceil(scale)))
        .ok_or_else(too_big)?;
    i64::try_from(bytes).map_err(|_| too_big())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_kubernetes_quantities() {
        assert_eq!(parse_size("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_size(" 512Mi ").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("1.5Ki").unwrap(), 1536);
        assert_eq!(parse_size("0.001k").unwrap(), 1);
        assert_eq!(parse_size("0.0001k").unwrap(), 1, "fractions round up");
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "Gi", "1 Gi", "1gi", "-1Gi", "1.2.3", "9999999Pi", "1e3"] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn kubelet_ids_must_be_plain_file_names() {
        assert!(KubeletVolumeId::parse("csi-0f3a9c1d2e").is_ok());
        for bad in [
            "",
            "..",
            ".hidden",
            "a/b",
            "../../etc/passwd",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(KubeletVolumeId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn records_survive_a_new_store_and_removal_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let id = KubeletVolumeId::parse("csi-abc").unwrap();
        let record = Record {
            volume_id: "v1.lvm.lv-1".into(),
            target_path: "/var/lib/kubelet/pods/p/volumes/v".into(),
            attached_node: None,
        };
        let store = StateStore::new(dir.path());
        assert_eq!(store.load(&id).unwrap(), None);
        store.save(&id, &record).unwrap();
        // A second store over the same directory is a restarted driver.
        let again = StateStore::new(dir.path());
        assert_eq!(again.load(&id).unwrap(), Some(record));
        again.remove(&id).unwrap();
        again.remove(&id).unwrap();
        assert_eq!(store.load(&id).unwrap(), None);
    }

    #[test]
    fn corrupt_records_are_errors_not_absent() {
        let dir = tempfile::tempdir().unwrap();
        let id = KubeletVolumeId::parse("csi-bad").unwrap();
        let store = StateStore::new(dir.path());
        std::fs::create_dir_all(dir.path().join("ephemeral")).unwrap();
        std::fs::write(dir.path().join("ephemeral/csi-bad.json"), b"{not json").unwrap();
        let err = store.load(&id).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        let core: CoreError = err.into();
        assert_eq!(core.code(), tonic::Code::Internal);
    }
}
