//! Parsing `/proc/self/mountinfo` (see proc(5)).
//!
//! A line is
//! `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`:
//! mount ID, parent ID, major:minor, root, mount point, mount options, zero
//! or more optional fields ended by `-`, filesystem type, source, super
//! options. The kernel escapes space, tab, newline and backslash in paths
//! as three-digit octal (`\040`), so fields split on single spaces.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use super::{DeviceNumber, MountInfo};

/// Why a mountinfo line did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct MountInfoError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub reason: String,
}

/// Parses the whole text of a mountinfo file.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>, MountInfoError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            parse_line(l).map_err(|reason| MountInfoError {
                line: i + 1,
                reason,
            })
        })
        .collect()
}

fn parse_line(line: &str) -> Result<MountInfo, String> {
    let mut fields = line.split(' ');
    let mut next = |name: &str| {
        fields
            .next()
            .filter(|f| !f.is_empty())
            .ok_or_else(|| format!("missing {name}"))
    };
    let mount_id = parse_u32(next("mount ID")?, "mount ID")?;
    let parent_id = parse_u32(next("parent ID")?, "parent ID")?;
    let device = parse_device(next("major:minor")?)?;
    let root = unescape_path(next("root")?)?;
    let mount_point = unescape_path(next("mount point")?)?;
    let mount_options = split_options(next("mount options")?);
    let mut optional_fields = Vec::new();
    loop {
        let field = next("the `-` separator")?;
        if field == "-" {
            break;
        }
        optional_fields.push(field.to_owned());
    }
    let fs_type = unescape_text(next("filesystem type")?)?;
    let source = unescape_text(next("mount source")?)?;
    // Old kernels print no super options for some filesystems.
    let super_options = fields.next().map(split_options).unwrap_or_default();
    Ok(MountInfo {
        mount_id,
        parent_id,
        device,
        root,
        mount_point,
        mount_options,
        optional_fields,
        fs_type,
        source,
        super_options,
    })
}

fn parse_u32(field: &str, name: &str) -> Result<u32, String> {
    field
        .parse()
        .map_err(|_| format!("{name} {field:?} is not a number"))
}

fn parse_device(field: &str) -> Result<DeviceNumber, String> {
    let (major, minor) = field
        .split_once(':')
        .ok_or_else(|| format!("device {field:?} is not major:minor"))?;
    Ok(DeviceNumber {
        major: parse_u32(major, "major")?,
        minor: parse_u32(minor, "minor")?,
    })
}

fn split_options(field: &str) -> Vec<String> {
    field
        .split(',')
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Undoes the kernel's `\ooo` escapes, byte for byte (paths need not be UTF-8).
fn unescape(field: &str) -> Result<Vec<u8>, String> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let digits = bytes
                .get(i + 1..i + 4)
                .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
                .ok_or_else(|| format!("bad escape in {field:?}"))?;
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(u8::try_from(value).map_err(|_| format!("bad escape in {field:?}"))?);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn unescape_path(field: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(OsString::from_vec(unescape(field)?)))
}

fn unescape_text(field: &str) -> Result<String, String> {
    Ok(String::from_utf8_lossy(&unescape(field)?).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 22 7:3 / /var/lib/kubelet/pods/a\\040b/vol\\134x ro,relatime shared:1 master:2 - xfs /dev/loop3 ro,attr2,inode64
41 22 0:5 /loop3 /var/lib/kubelet/dev\\011file rw,nosuid - devtmpfs udev rw,size=1k
";

    #[test]
    fn parses_fields_optional_tags_and_escapes() {
        let table = parse_mountinfo(SAMPLE).unwrap();
        assert_eq!(table.len(), 4);

        let proc = &table[0];
        assert_eq!((proc.mount_id, proc.parent_id), (22, 1));
        assert_eq!(
            proc.device,
            DeviceNumber {
                major: 0,
                minor: 21
            }
        );
        assert_eq!(proc.optional_fields, ["shared:12"]);
        assert_eq!(proc.fs_type, "proc");
        assert!(!proc.is_read_only());

        let ext = &table[1];
        assert_eq!(ext.root, Path::new("/mnt1"));
        assert_eq!(ext.mount_point, Path::new("/mnt2"));
        assert_eq!(ext.mount_options, ["rw", "noatime"]);
        assert_eq!(ext.source, "/dev/root");
        assert_eq!(ext.super_options, ["rw", "errors=continue"]);

        let xfs = &table[2];
        assert_eq!(
            xfs.mount_point,
            Path::new("/var/lib/kubelet/pods/a b/vol\\x")
        );
        assert_eq!(xfs.optional_fields, ["shared:1", "master:2"]);
        assert_eq!(xfs.device.to_string(), "7:3");
        assert!(xfs.is_read_only());

        let dev = &table[3];
        assert_eq!(dev.root, Path::new("/loop3"));
        assert_eq!(dev.mount_point, Path::new("/var/lib/kubelet/dev\tfile"));
        assert!(dev.optional_fields.is_empty());
    }

    #[test]
    fn escapes_may_produce_non_utf8_paths() {
        let line = "1 0 8:1 / /mnt/\\377 rw - ext4 /dev/sda1 rw\n";
        let table = parse_mountinfo(line).unwrap();
        assert_eq!(table[0].mount_point.as_os_str().as_bytes(), b"/mnt/\xff");
    }

    #[test]
    fn malformed_lines_name_the_line_and_problem() {
        let cases = [
            ("x 1 8:1 / /a rw - ext4 /dev/a rw", "mount ID"),
            ("1 1 81 / /a rw - ext4 /dev/a rw", "major:minor"),
            ("1 1 8:1 / /a rw shared:1 ext4 /dev/a rw", "separator"),
            ("1 1 8:1 / /a\\09 rw - ext4 /dev/a rw", "escape"),
            ("1 1 8:1 / /a\\400 rw - ext4 /dev/a rw", "escape"),
            ("1 1 8:1 / /a rw -", "filesystem type"),
        ];
        for (line, expected) in cases {
            let text = format!("22 1 0:21 / /proc rw - proc proc rw\n{line}\n");
            let err = parse_mountinfo(&text).unwrap_err();
            assert_eq!(err.line, 2, "{line}");
            assert!(err.reason.contains(expected), "{line}: {err}");
        }
    }

    #[test]
    fn missing_super_options_are_tolerated() {
        let table = parse_mountinfo("5 1 0:3 / /sys rw - sysfs sysfs\n").unwrap();
        assert!(table[0].super_options.is_empty());
        assert_eq!(table[0].source, "sysfs");
    }

    #[test]
    fn this_process_mount_table_parses() {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let table = parse_mountinfo(&text).unwrap();
        assert!(
            table.iter().any(|m| m.mount_point == Path::new("/")),
            "no root mount"
        );
    }
}
