//! Node-side filesystem work: the mount table, formatting, mounting,
//! growing filesystems and usage statistics.
//!
//! The [`Mounter`] trait is what the node service needs from the host. Its
//! methods block (syscalls, `mkfs`), so the service calls them from
//! `spawn_blocking`. [`linux::LinuxMounter`] does the real work;
//! [`fake::FakeMounter`] keeps an in-memory mount table for the in-process
//! gRPC tests.
//!
//! Every idempotency decision the node service makes reads the mount table
//! through this trait, never a cache of its own, so a restarted driver sees
//! the same state as the one before it.

pub mod confine;
pub mod fake;
pub mod format;
pub mod linux;
mod mountinfo;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub use format::{FormatOptions, FsType};
pub use mountinfo::{MountInfoError, parse_mountinfo};

/// A device number (`major:minor`), as `stat` reports for a device node and
/// the mount table reports for the filesystem mounted from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceNumber {
    /// The major number (the driver).
    pub major: u32,
    /// The minor number (the unit).
    pub minor: u32,
}

impl fmt::Display for DeviceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Unique ID of the mount.
    pub mount_id: u32,
    /// ID of the parent mount.
    pub parent_id: u32,
    /// `st_dev` of files on this mount: the block device for disk filesystems.
    pub device: DeviceNumber,
    /// The directory of the filesystem that forms the root of this mount
    /// (`/` unless it is a bind mount of a subdirectory or a file).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`/`ro`, `nosuid`, ...).
    pub mount_options: Vec<String>,
    /// Propagation tags (`shared:N`, `master:N`, ...).
    pub optional_fields: Vec<String>,
    /// Filesystem type (`ext4`, `xfs`, `devtmpfs`, ...).
    pub fs_type: String,
    /// Mount source as given at mount time (a device path for disks).
    pub source: String,
    /// Per-superblock options.
    pub super_options: Vec<String>,
}

impl MountInfo {
    /// True when this mount is read-only (per mount, not per superblock).
    pub fn is_read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro")
    }
}

/// What a device holds, as far as probing can tell. Probing that cannot
/// decide is an error, never one of these: formatting happens only on
/// [`Probe::Unformatted`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No filesystem, partition table or other signature was found.
    Unformatted,
    /// A filesystem of this type.
    Filesystem(String),
    /// Something that is not a mountable filesystem (a partition table,
    /// an LVM or RAID member, swap, LUKS...): never to be formatted over.
    Other(String),
}

/// Usage of a mounted filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsStats {
    /// Size of the filesystem in bytes.
    pub total_bytes: u64,
    /// Bytes an unprivileged user can still write.
    pub available_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Number of inodes.
    pub total_inodes: u64,
    /// Inodes still free.
    pub free_inodes: u64,
    /// Inodes in use.
    pub used_inodes: u64,
}

/// Mount options the node applies, from a capability's `mount_flags`.
/// Each entry is one option word; the Linux mounter turns the generic ones
/// (`ro`, `noatime`, ...) into `MS_*` flags and passes the rest to the
/// filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    words: Vec<String>,
}

/// Options that change what kind of mount is made; a StorageClass has no
/// business asking for them.
const FORBIDDEN_OPTIONS: &[&str] = &[
    "bind",
    "rbind",
    "remount",
    "move",
    "shared",
    "rshared",
    "private",
    "rprivate",
    "slave",
    "rslave",
    "unbindable",
    "runbindable",
];

impl MountOptions {
    /// Parses CSI mount flags. Each flag may itself hold several
    /// comma-separated options (`"noatime,nodiscard"`).
    pub fn parse(flags: &[String]) -> Result<Self, MountError> {
        let mut words = Vec::new();
        for flag in flags {
            for word in flag.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                let bad_char = word
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace() || c == '\\');
                let key = word.split('=').next().unwrap_or(word);
                if bad_char
                    || word.len() > 256
                    || FORBIDDEN_OPTIONS.contains(&key)
                    || key.starts_with("make-")
                    || key.starts_with('-')
                {
                    return Err(MountError::InvalidMountOption(word.to_owned()));
                }
                if !words.iter().any(|w| w == word) {
                    words.push(word.to_owned());
                }
            }
        }
        Ok(Self { words })
    }

    /// The option words in order.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// True when the options ask for a read-only mount.
    pub fn read_only(&self) -> bool {
        self.words.iter().any(|w| w == "ro")
    }

    /// Adds an option word the node itself needs (e.g. `nouuid`), once.
    pub fn add(&mut self, word: &str) {
        if !self.words.iter().any(|w| w == word) {
            self.words.push(word.to_owned());
        }
    }

    /// Adds `ro` (and drops `rw`).
    pub fn make_read_only(&mut self) {
        self.words.retain(|w| w != "rw");
        if !self.read_only() {
            self.words.push("ro".into());
        }
    }
}

/// Why a mount, format or probe failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount table could not be read.
    #[error("cannot read the mount table {path}")]
    ReadMountTable {
        /// The file read.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The mount table did not parse.
    #[error("malformed mount table")]
    ParseMountTable(#[source] MountInfoError),
    /// A path that must be a block device is not one.
    #[error("{0} is not a block device")]
    NotBlockDevice(PathBuf),
    /// `stat`, `statvfs` or opening a path failed.
    #[error("cannot inspect {path}")]
    Inspect {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Probing could not decide whether the device holds data.
    #[error("cannot tell whether {device} holds a filesystem: {reason}")]
    ProbeUndecided {
        /// The device probed.
        device: PathBuf,
        /// What was unclear.
        reason: String,
    },
    /// An external tool could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An external tool failed.
    #[error("{program} failed ({status}): {output}")]
    ToolFailed {
        /// The program.
        program: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The tail of its standard error (or output).
        output: String,
    },
    /// mount(2) failed.
    #[error("cannot mount {source_path} on {target} as {fs_type}")]
    Mount {
        /// The device.
        source_path: PathBuf,
        /// The mount point.
        target: PathBuf,
        /// The filesystem type.
        fs_type: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A bind mount (or its read-only remount) failed.
    #[error("cannot bind-mount {source_path} on {target}")]
    Bind {
        /// What was bound.
        source_path: PathBuf,
        /// Where.
        target: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// umount(2) failed.
    #[error("cannot unmount {target}")]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A mount option is refused.
    #[error("mount option {0:?} is not allowed")]
    InvalidMountOption(String),
    /// The filesystem type cannot be formatted or grown here.
    #[error("filesystem type {0:?} is not supported")]
    UnsupportedFilesystem(String),
    /// The format options do not apply to this filesystem.
    #[error("{0}")]
    InvalidFormatOptions(String),
    /// A mount point directory could not be created.
    #[error("cannot create mount point {path}")]
    CreateMountPoint {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A blocking task died (a bug or a panic in the mounter).
    #[error("the mount task did not finish: {0}")]
    TaskFailed(String),
}

impl MountError {
    /// The closest `io::ErrorKind`, so callers can tell "absent" from
    /// "failed" without matching every variant.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            MountError::ReadMountTable { source, .. }
            | MountError::Inspect { source, .. }
            | MountError::Spawn { source, .. }
            | MountError::Mount { source, .. }
            | MountError::Bind { source, .. }
            | MountError::Unmount { source, .. }
            | MountError::CreateMountPoint { source, .. } => source.kind(),
            MountError::InvalidMountOption(_)
            | MountError::UnsupportedFilesystem(_)
            | MountError::InvalidFormatOptions(_) => io::ErrorKind::InvalidInput,
            MountError::NotBlockDevice(_) => io::ErrorKind::InvalidInput,
            MountError::ParseMountTable(_)
            | MountError::ProbeUndecided { .. }
            | MountError::ToolFailed { .. }
            | MountError::TaskFailed(_) => io::ErrorKind::Other,
        }
    }

    /// True when the failure is that a path does not exist.
    pub fn is_not_found(&self) -> bool {
        self.io_kind() == io::ErrorKind::NotFound
    }
}

impl From<MountError> for io::Error {
    fn from(err: MountError) -> Self {
        io::Error::new(err.io_kind(), err)
    }
}

/// The path as the mount table shows it: symlinks resolved where the path
/// exists (kubelet's directories may sit behind a symlinked
/// `/var/lib/kubelet`), unchanged otherwise.
pub fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The topmost mount at each of `paths` in `table` (one read of the mount
/// table answers several questions).
pub fn top_mounts<const N: usize>(
    table: &[MountInfo],
    paths: [&Path; N],
) -> [Option<MountInfo>; N] {
    paths.map(|path| {
        let wanted = canonical(path);
        table
            .iter()
            .rev()
            .find(|m| m.mount_point == wanted)
            .cloned()
    })
}

/// Mount, format and filesystem operations, behind a trait so the gRPC
/// tests can use a fake while the node tests use the real thing. All
/// methods block.
pub trait Mounter: Send + Sync {
    /// Every mount visible to this process, in mount order.
    fn mount_table(&self) -> Result<Vec<MountInfo>, MountError>;

    /// The topmost mount at exactly `path`, if any.
    fn find_mount(&self, path: &Path) -> Result<Option<MountInfo>, MountError> {
        let [found] = top_mounts(&self.mount_table()?, [path]);
        Ok(found)
    }

    /// The device number of the block device node at `path` (symlinks
    /// followed); fails with [`MountError::NotBlockDevice`] for anything else.
    fn device_number(&self, path: &Path) -> Result<DeviceNumber, MountError>;

    /// What `device` holds. Errors when it cannot tell.
    fn probe(&self, device: &Path) -> Result<Probe, MountError>;

    /// Creates a filesystem on `device`. Callers must have probed it first.
    fn format(&self, device: &Path, fs: FsType, options: &FormatOptions) -> Result<(), MountError>;

    /// Mounts the filesystem on `device` at the existing directory `target`.
    fn mount(
        &self,
        device: &Path,
        target: &Path,
        fs_type: &str,
        options: &MountOptions,
    ) -> Result<(), MountError>;

    /// Bind-mounts `source` (a directory or a device node) on `target` (an
    /// existing directory or file of the same kind), read-only if asked.
    fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError>;

    /// Unmounts the topmost mount at `target`.
    fn unmount(&self, target: &Path) -> Result<(), MountError>;

    /// Grows the filesystem of `fs_type` on `device`, mounted at
    /// `mount_point`, to fill the device.
    fn grow_filesystem(
        &self,
        device: &Path,
        mount_point: &Path,
        fs_type: &str,
    ) -> Result<(), MountError>;

    /// Grows the unmounted filesystem of `fs_type` on `device` to fill the
    /// device (ext2/3/4: checked with `e2fsck -f -p` first, as resize2fs
    /// demands). XFS grows only while mounted: `UnsupportedFilesystem`.
    fn grow_unmounted(&self, device: &Path, fs_type: &str) -> Result<(), MountError>;

    /// Size in bytes of the filesystem of `fs_type` on `device`, from its
    /// superblock (ext: block count times block size; XFS: data blocks
    /// times block size); `None` for other filesystems.
    fn filesystem_size(&self, device: &Path, fs_type: &str) -> Result<Option<u64>, MountError>;

    /// Usage of the filesystem holding `path`.
    fn filesystem_stats(&self, path: &Path) -> Result<FsStats, MountError>;

    /// Size in bytes of the block device at `device`.
    fn device_size(&self, device: &Path) -> Result<u64, MountError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn mount_options_split_dedupe_and_track_read_only() {
        let mut opts =
            MountOptions::parse(&flags(&["noatime,nodiscard", "rw", "noatime"])).unwrap();
        assert_eq!(opts.words(), ["noatime", "nodiscard", "rw"]);
        assert!(!opts.read_only());
        opts.make_read_only();
        assert_eq!(opts.words(), ["noatime", "nodiscard", "ro"]);
        assert!(opts.read_only());
        let empty = MountOptions::parse(&flags(&["", " , "])).unwrap();
        assert!(empty.words().is_empty());
    }

    #[test]
    fn mount_options_refuse_mount_kind_changes_and_odd_characters() {
        for bad in [
            "bind",
            "rbind",
            "remount",
            "make-shared",
            "a b",
            "x\ny",
            "--bind",
            "a\\b",
        ] {
            let err = MountOptions::parse(&flags(&[bad])).unwrap_err();
            assert!(
                matches!(err, MountError::InvalidMountOption(_)),
                "{bad:?}: {err}"
            );
        }
        assert!(
            MountOptions::parse(&flags(&["context=\"system_u:object_r:x\"", "sb=8193"])).is_ok()
        );
    }

    #[test]
    fn errors_keep_their_io_kind() {
        let err = MountError::Inspect {
            path: "/x".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(err.is_not_found());
        let io: io::Error = err.into();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        assert!(io.to_string().contains("/x"), "{io}");
    }
}
