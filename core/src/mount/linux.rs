//! The real mounter: mount(2)/umount(2)/statvfs(2) through rustix, and
//! blkid, mkfs.*, resize2fs and xfs_growfs as argument vectors.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::fs::StatVfsMountFlags;
use rustix::mount::{MountFlags, UnmountFlags};

use super::{
    DeviceNumber, FormatOptions, FsStats, FsType, MountError, MountInfo, MountOptions, Mounter,
    Probe, parse_mountinfo,
};
use crate::NodeSettings;

/// How much of a tool's output is kept in an error message.
const MAX_TOOL_OUTPUT: usize = 2048;
/// How much of a device is read before probing: enough for the ext
/// superblock (offset 1024) and the XFS one (offset 0).
const PROBE_BYTES: usize = 4096;

/// Mounts and formats for real on this host.
#[derive(Debug, Clone)]
pub struct LinuxMounter {
    tools_dir: PathBuf,
    mountinfo: PathBuf,
}

impl LinuxMounter {
    /// A mounter using the tools in `settings.tools_dir` (PATH when empty).
    pub fn new(settings: NodeSettings) -> Self {
        Self {
            tools_dir: settings.tools_dir,
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
        }
    }

    fn tool(&self, name: &str) -> PathBuf {
        if self.tools_dir.as_os_str().is_empty() {
            PathBuf::from(name)
        } else {
            self.tools_dir.join(name)
        }
    }

    /// Runs a tool to completion; `Ok` carries its exit status and output
    /// whether or not it succeeded, so callers can interpret exit codes.
    fn run(&self, name: &str, args: &[&OsStr]) -> Result<ToolOutput, MountError> {
        let program = self.tool(name);
        let output = Command::new(&program)
            .args(args)
            // Parsed output must not depend on the host's locale, and no
            // tool may wait for an answer on a terminal.
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| MountError::Spawn {
                program: program.clone(),
                source,
            })?;
        Ok(ToolOutput { program, output })
    }

    fn run_checked(&self, name: &str, args: &[&OsStr]) -> Result<ToolOutput, MountError> {
        let out = self.run(name, args)?;
        if out.output.status.success() {
            Ok(out)
        } else {
            Err(out.failure())
        }
    }
}

struct ToolOutput {
    program: PathBuf,
    output: std::process::Output,
}

impl ToolOutput {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn failure(self) -> MountError {
        let stderr = String::from_utf8_lossy(&self.output.stderr);
        let text = if stderr.trim().is_empty() {
            String::from_utf8_lossy(&self.output.stdout).into_owned()
        } else {
            stderr.into_owned()
        };
        MountError::ToolFailed {
            program: self.program,
            status: self.output.status,
            output: tail(text.trim(), MAX_TOOL_OUTPUT),
        }
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

fn inspect(path: &Path) -> impl FnOnce(std::io::Error) -> MountError + '_ {
    move |source| MountError::Inspect {
        path: path.to_path_buf(),
        source,
    }
}

/// Interprets `blkid -p -o export` output: TYPE with USAGE=filesystem is a
/// filesystem; any other TYPE or a partition table is "something else".
fn classify_blkid(export: &str) -> Option<Probe> {
    let mut fs_type = None;
    let mut usage = None;
    let mut pt_type = None;
    for line in export.lines() {
        match line.split_once('=') {
            Some(("TYPE", v)) => fs_type = Some(v.to_owned()),
            Some(("USAGE", v)) => usage = Some(v.to_owned()),
            Some(("PTTYPE", v)) => pt_type = Some(v.to_owned()),
            _ => {}
        }
    }
    match (fs_type, usage.as_deref(), pt_type) {
        (Some(t), Some("filesystem"), _) => Some(Probe::Filesystem(t)),
        (Some(t), _, _) => Some(Probe::Other(t)),
        (None, _, Some(pt)) => Some(Probe::Other(format!("a {pt} partition table"))),
        (None, _, None) => None,
    }
}

/// Signatures blkid must agree with before a device counts as empty.
fn known_magic(head: &[u8]) -> Option<&'static str> {
    if head.get(1080..1082) == Some(&[0x53, 0xEF]) {
        return Some("ext2/3/4");
    }
    if head.get(0..4) == Some(b"XFSB") {
        return Some("xfs");
    }
    None
}

/// The filesystem size a superblock at the start of `head` records.
/// ext2/3/4 (superblock at 1024, little-endian): `s_blocks_count_lo` (4),
/// `s_log_block_size` (24), `s_feature_incompat` (96, bit 0x80 = 64bit)
/// and `s_blocks_count_hi` (0x150). XFS (superblock at 0, big-endian):
/// `sb_blocksize` (4) and `sb_dblocks` (8). Sources: the ext4 disk layout
/// and XFS on-disk format documentation.
fn superblock_size(head: &[u8], fs_type: &str) -> Option<u64> {
    let le32 = |at: usize| -> Option<u64> {
        let b = head.get(at..at + 4)?;
        Some(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
    };
    match fs_type {
        "ext2" | "ext3" | "ext4" => {
            let sb = 1024;
            if head.get(sb + 56..sb + 58)? != [0x53, 0xEF] {
                return None;
            }
            let lo = le32(sb + 4)?;
            let log = le32(sb + 24)?;
            let incompat = le32(sb + 96)?;
            let hi = if incompat & 0x80 != 0 {
                le32(sb + 0x150)?
            } else {
                0
            };
            let block = 1024u64.checked_shl(u32::try_from(log).ok()?)?;
            ((hi << 32) | lo).checked_mul(block)
        }
        "xfs" => {
            if head.get(0..4)? != b"XFSB" {
                return None;
            }
            let b = head.get(4..8)?;
            let block = u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            let d = head.get(8..16)?;
            let blocks = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
            blocks.checked_mul(block)
        }
        _ => None,
    }
}

/// `MS_*` flags for the generic option words; everything else goes to the
/// filesystem as data.
fn split_mount_options(options: &MountOptions) -> (MountFlags, Vec<String>) {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for word in options.words() {
        match word.as_str() {
            "ro" => flags |= MountFlags::RDONLY,
            "rw" => flags -= MountFlags::RDONLY,
            "nosuid" => flags |= MountFlags::NOSUID,
            "suid" => flags -= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "dev" => flags -= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "exec" => flags -= MountFlags::NOEXEC,
            "sync" => flags |= MountFlags::SYNCHRONOUS,
            "async" => flags -= MountFlags::SYNCHRONOUS,
            "dirsync" => flags |= MountFlags::DIRSYNC,
            "noatime" => flags |= MountFlags::NOATIME,
            "atime" => flags -= MountFlags::NOATIME,
            "nodiratime" => flags |= MountFlags::NODIRATIME,
            "diratime" => flags -= MountFlags::NODIRATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            "norelatime" => flags -= MountFlags::RELATIME,
            "strictatime" => flags |= MountFlags::STRICTATIME,
            "lazytime" => flags |= MountFlags::LAZYTIME,
            "nolazytime" => flags -= MountFlags::LAZYTIME,
            "nosymfollow" => flags |= MountFlags::NOSYMFOLLOW,
            "silent" => flags |= MountFlags::SILENT,
            "defaults" => {}
            other => data.push(other.to_owned()),
        }
    }
    (flags, data)
}

/// The per-mount flags a read-only bind remount must keep: the kernel
/// refuses to drop locked ones in user namespaces, and dropping them
/// elsewhere would silently weaken the mount.
fn kept_flags(current: StatVfsMountFlags) -> MountFlags {
    let pairs = [
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
        (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
        (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
    ];
    pairs
        .into_iter()
        .filter(|(st, _)| current.contains(*st))
        .fold(MountFlags::empty(), |acc, (_, ms)| acc | ms)
}

impl Mounter for LinuxMounter {
    fn mount_table(&self) -> Result<Vec<MountInfo>, MountError> {
        let text = std::fs::read_to_string(&self.mountinfo).map_err(|source| {
            MountError::ReadMountTable {
                path: self.mountinfo.clone(),
                source,
            }
        })?;
        parse_mountinfo(&text).map_err(MountError::ParseMountTable)
    }

    fn device_number(&self, path: &Path) -> Result<DeviceNumber, MountError> {
        let meta = std::fs::metadata(path).map_err(inspect(path))?;
        if !meta.file_type().is_block_device() {
            return Err(MountError::NotBlockDevice(path.to_path_buf()));
        }
        let rdev = meta.rdev();
        Ok(DeviceNumber {
            major: rustix::fs::major(rdev),
            minor: rustix::fs::minor(rdev),
        })
    }

    fn probe(&self, device: &Path) -> Result<Probe, MountError> {
        self.device_number(device)?;
        // blkid says "nothing found" (exit 2) also for devices it could not
        // read, so reading the head first separates "empty" from "unknown".
        let mut head = vec![0u8; PROBE_BYTES];
        let mut file = File::open(device).map_err(inspect(device))?;
        file.read_exact(&mut head).map_err(inspect(device))?;

        let out = self.run(
            "blkid",
            &[
                OsStr::new("-p"),
                OsStr::new("-o"),
                OsStr::new("export"),
                device.as_os_str(),
            ],
        )?;
        match out.output.status.code() {
            Some(0) => classify_blkid(&out.stdout()).ok_or_else(|| MountError::ProbeUndecided {
                device: device.to_path_buf(),
                reason: "blkid found a signature but reported neither TYPE nor PTTYPE".into(),
            }),
            Some(2) => match known_magic(&head) {
                None => Ok(Probe::Unformatted),
                Some(magic) => Err(MountError::ProbeUndecided {
                    device: device.to_path_buf(),
                    reason: format!(
                        "blkid found nothing but the device carries a {magic} superblock magic"
                    ),
                }),
            },
            Some(8) => Err(MountError::ProbeUndecided {
                device: device.to_path_buf(),
                reason: "blkid found ambiguous signatures".into(),
            }),
            _ => Err(out.failure()),
        }
    }

    fn format(&self, device: &Path, fs: FsType, options: &FormatOptions) -> Result<(), MountError> {
        let args = options
            .mkfs_args(fs)
            .map_err(|e| MountError::InvalidFormatOptions(e.to_string()))?;
        let mut argv: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        argv.push(device.as_os_str());
        self.run_checked(fs.mkfs_program(), &argv).map(|_| ())
    }

    fn mount(
        &self,
        device: &Path,
        target: &Path,
        fs_type: &str,
        options: &MountOptions,
    ) -> Result<(), MountError> {
        let (flags, data) = split_mount_options(options);
        let fail = |source| MountError::Mount {
            source_path: device.to_path_buf(),
            target: target.to_path_buf(),
            fs_type: fs_type.to_owned(),
            source,
        };
        let data = CString::new(data.join(","))
            .map_err(|_| MountError::InvalidMountOption(data.join(",")))?;
        rustix::mount::mount(device, target, fs_type, flags, Some(data.as_c_str()))
            .map_err(|e| fail(e.into()))
    }

    fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
        let fail = |e: rustix::io::Errno| MountError::Bind {
            source_path: source.to_path_buf(),
            target: target.to_path_buf(),
            source: e.into(),
        };
        rustix::mount::mount_bind(source, target).map_err(fail)?;
        if !read_only {
            return Ok(());
        }
        // A bind mount takes the flags of its source; read-only needs a
        // second, remounting call.
        let remount = rustix::fs::statvfs(target).and_then(|st| {
            rustix::mount::mount_remount(
                target,
                MountFlags::BIND | MountFlags::RDONLY | kept_flags(st.f_flag),
                "",
            )
        });
        if let Err(e) = remount {
            // Never leave a writable mount where a read-only one was asked for.
            if let Err(undo) = rustix::mount::unmount(target, UnmountFlags::empty()) {
                tracing::error!(target = %target.display(), error = %undo, "cannot undo a bind mount whose read-only remount failed");
            }
            return Err(fail(e));
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        rustix::mount::unmount(target, UnmountFlags::NOFOLLOW).map_err(|e| MountError::Unmount {
            target: target.to_path_buf(),
            source: e.into(),
        })
    }

    fn grow_filesystem(
        &self,
        device: &Path,
        mount_point: &Path,
        fs_type: &str,
    ) -> Result<(), MountError> {
        match fs_type {
            "ext2" | "ext3" | "ext4" => self
                .run_checked("resize2fs", &[device.as_os_str()])
                .map(|_| ()),
            "xfs" => self
                .run_checked("xfs_growfs", &[OsStr::new("-d"), mount_point.as_os_str()])
                .map(|_| ()),
            other => Err(MountError::UnsupportedFilesystem(other.to_owned())),
        }
    }

    fn grow_unmounted(&self, device: &Path, fs_type: &str) -> Result<(), MountError> {
        if !matches!(fs_type, "ext2" | "ext3" | "ext4") {
            return Err(MountError::UnsupportedFilesystem(fs_type.to_owned()));
        }
        // e2fsck -p: 0 nothing wrong, 1 errors corrected; anything else
        // means the filesystem needs a human.
        let check = self.run(
            "e2fsck",
            &[OsStr::new("-f"), OsStr::new("-p"), device.as_os_str()],
        )?;
        if !matches!(check.output.status.code(), Some(0 | 1)) {
            return Err(check.failure());
        }
        self.run_checked("resize2fs", &[device.as_os_str()])
            .map(|_| ())
    }

    fn filesystem_size(&self, device: &Path, fs_type: &str) -> Result<Option<u64>, MountError> {
        self.device_number(device)?;
        let mut head = vec![0u8; PROBE_BYTES];
        let mut file = File::open(device).map_err(inspect(device))?;
        file.read_exact(&mut head).map_err(inspect(device))?;
        Ok(superblock_size(&head, fs_type))
    }

    fn filesystem_stats(&self, path: &Path) -> Result<FsStats, MountError> {
        let st = rustix::fs::statvfs(path).map_err(|e| MountError::Inspect {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        let unit = if st.f_frsize > 0 {
            st.f_frsize
        } else {
            st.f_bsize
        };
        Ok(FsStats {
            total_bytes: st.f_blocks.saturating_mul(unit),
            available_bytes: st.f_bavail.saturating_mul(unit),
            used_bytes: st.f_blocks.saturating_sub(st.f_bfree).saturating_mul(unit),
            total_inodes: st.f_files,
            free_inodes: st.f_ffree,
            used_inodes: st.f_files.saturating_sub(st.f_ffree),
        })
    }

    fn device_size(&self, device: &Path) -> Result<u64, MountError> {
        self.device_number(device)?;
        // Seeking to the end of a block device yields its size without an ioctl.
        let mut file = File::open(device).map_err(inspect(device))?;
        file.seek(SeekFrom::End(0)).map_err(inspect(device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_export_is_classified() {
        let ext = "DEVNAME=/dev/loop1\nUUID=4488\nBLOCK_SIZE=1024\nTYPE=ext4\nUSAGE=filesystem\n";
        assert_eq!(classify_blkid(ext), Some(Probe::Filesystem("ext4".into())));
        let lvm = "DEVNAME=/dev/sdb\nTYPE=LVM2_member\nUSAGE=raid\n";
        assert_eq!(
            classify_blkid(lvm),
            Some(Probe::Other("LVM2_member".into()))
        );
        let gpt = "DEVNAME=/dev/sdc\nPTUUID=x\nPTTYPE=gpt\n";
        assert_eq!(
            classify_blkid(gpt),
            Some(Probe::Other("a gpt partition table".into()))
        );
        assert_eq!(classify_blkid("DEVNAME=/dev/sdd\n"), None);
    }

    #[test]
    fn superblock_magic_is_recognised() {
        let mut head = vec![0u8; PROBE_BYTES];
        assert_eq!(known_magic(&head), None);
        head[1080] = 0x53;
        head[1081] = 0xEF;
        assert_eq!(known_magic(&head), Some("ext2/3/4"));
        let mut xfs = vec![0u8; PROBE_BYTES];
        xfs[..4].copy_from_slice(b"XFSB");
        assert_eq!(known_magic(&xfs), Some("xfs"));
    }

    #[test]
    fn superblocks_give_filesystem_sizes() {
        let mut ext = vec![0u8; PROBE_BYTES];
        ext[1024 + 56] = 0x53;
        ext[1024 + 57] = 0xEF;
        ext[1024 + 4..1024 + 8].copy_from_slice(&262_144u32.to_le_bytes());
        ext[1024 + 24..1024 + 28].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(superblock_size(&ext, "ext4"), Some(1 << 30));
        ext[1024 + 96..1024 + 100].copy_from_slice(&0x80u32.to_le_bytes());
        ext[1024 + 0x150..1024 + 0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            superblock_size(&ext, "ext4"),
            Some(((1 << 32) + 262_144) * 4096)
        );
        assert_eq!(superblock_size(&ext, "xfs"), None);
        let mut xfs = vec![0u8; PROBE_BYTES];
        xfs[..4].copy_from_slice(b"XFSB");
        xfs[4..8].copy_from_slice(&4096u32.to_be_bytes());
        xfs[8..16].copy_from_slice(&524_288u64.to_be_bytes());
        assert_eq!(superblock_size(&xfs, "xfs"), Some(2 << 30));
        assert_eq!(superblock_size(&xfs, "btrfs"), None);
        assert_eq!(superblock_size(&[0u8; 16], "ext4"), None);
    }

    #[test]
    fn generic_options_become_flags_and_the_rest_data() {
        let opts = MountOptions::parse(&[
            "ro,noatime,nodev".to_owned(),
            "discard".to_owned(),
            "defaults".to_owned(),
            "nouuid".to_owned(),
        ])
        .unwrap();
        let (flags, data) = split_mount_options(&opts);
        assert_eq!(
            flags,
            MountFlags::RDONLY | MountFlags::NOATIME | MountFlags::NODEV
        );
        assert_eq!(data, ["discard", "nouuid"]);
    }

    #[test]
    fn read_only_remounts_keep_restricting_flags() {
        let kept = kept_flags(
            StatVfsMountFlags::NOSUID | StatVfsMountFlags::RDONLY | StatVfsMountFlags::NODEV,
        );
        assert_eq!(kept, MountFlags::NOSUID | MountFlags::NODEV);
    }

    #[test]
    fn long_tool_output_keeps_its_tail() {
        let text = format!("{}END", "x".repeat(5000));
        let cut = tail(&text, 100);
        assert!(cut.ends_with("END") && cut.len() <= 104, "{}", cut.len());
        assert_eq!(tail("short", 100), "short");
    }

    #[test]
    fn the_real_mount_table_and_root_statistics_are_readable() {
        let m = LinuxMounter::new(NodeSettings::default());
        let root = m.find_mount(Path::new("/")).unwrap().expect("/ is mounted");
        assert_eq!(root.mount_point, Path::new("/"));
        let stats = m.filesystem_stats(Path::new("/")).unwrap();
        assert!(stats.total_bytes > 0 && stats.used_bytes <= stats.total_bytes);
        assert!(matches!(
            m.device_number(Path::new("/proc")),
            Err(MountError::NotBlockDevice(_))
        ));
    }
}
