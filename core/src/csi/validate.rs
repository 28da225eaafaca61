//! Request validation shared by the controller and node services. Every
//! failure names the field.

use omnidisk_provider_api::types::ProviderInfo;

use crate::error::{CoreError, CoreResult};
use crate::generated::csi;
use crate::generated::csi::volume_capability::AccessType;
use crate::generated::csi::volume_capability::access_mode::Mode;
use crate::ids::ScopedId;

/// Filesystems the node can create and mount.
pub const SUPPORTED_FS_TYPES: [&str; 3] = ["ext4", "ext3", "xfs"];

/// Fails with `InvalidArgument` naming `field` when `value` is empty.
pub fn required<'a>(field: &str, value: &'a str) -> CoreResult<&'a str> {
    if value.is_empty() {
        Err(CoreError::missing(field))
    } else {
        Ok(value)
    }
}

/// Parses a volume or snapshot ID that must exist: malformed is `NotFound`.
pub fn existing_id(what: &'static str, field: &str, raw: &str) -> CoreResult<ScopedId> {
    required(field, raw)?;
    ScopedId::parse(raw).map_err(|source| CoreError::MalformedId {
        what,
        id: shown(raw),
        source,
    })
}

/// Checks one capability is well formed: an access type, a known access
/// mode, a supported filesystem.
pub fn capability(field: &str, c: &csi::VolumeCapability) -> CoreResult<()> {
    match &c.access_type {
        None => {
            return Err(CoreError::InvalidArgument(format!(
                "{field}.access_type is required (block or mount)"
            )));
        }
        Some(AccessType::Mount(m)) => {
            if !m.fs_type.is_empty() && !SUPPORTED_FS_TYPES.contains(&m.fs_type.as_str()) {
                return Err(CoreError::InvalidArgument(format!(
                    "{field}.mount.fs_type {:?} is not supported (supported: {})",
                    m.fs_type,
                    SUPPORTED_FS_TYPES.join(", ")
                )));
            }
            if let Some(flag) = m
                .mount_flags
                .iter()
                .find(|f| f.chars().any(char::is_control))
            {
                return Err(CoreError::InvalidArgument(format!(
                    "{field}.mount.mount_flags contains an invalid flag {flag:?}"
                )));
            }
        }
        Some(AccessType::Block(_)) => {}
    }
    match c.access_mode.as_ref().map(|m| Mode::try_from(m.mode)) {
        None | Some(Ok(Mode::Unknown)) => Err(CoreError::InvalidArgument(format!(
            "{field}.access_mode is required"
        ))),
        Some(Err(_)) => Err(CoreError::InvalidArgument(format!(
            "{field}.access_mode has an unknown value"
        ))),
        Some(Ok(_)) => Ok(()),
    }
}

/// Checks a non-empty capability list.
pub fn capabilities(field: &str, caps: &[csi::VolumeCapability]) -> CoreResult<()> {
    if caps.is_empty() {
        return Err(CoreError::missing(field));
    }
    for (i, c) in caps.iter().enumerate() {
        capability(&format!("{field}[{i}]"), c)?;
    }
    Ok(())
}

/// Why an instance cannot serve a (well-formed) capability, if it cannot.
pub fn unsupported_by(info: &ProviderInfo, c: &csi::VolumeCapability) -> Option<String> {
    if matches!(c.access_type, Some(AccessType::Block(_))) && !info.block {
        return Some(format!("{} volumes do not support block access", info.kind));
    }
    let mode = c.access_mode.as_ref().map_or(0, |m| m.mode);
    if !info.access_modes.contains(&mode) {
        let name = Mode::try_from(mode).map_or("unknown", |m| m.as_str_name());
        return Some(format!(
            "{} volumes do not support access mode {name}",
            info.kind
        ));
    }
    None
}

/// Checks a capacity range: non-negative, limit not below required.
pub fn capacity_range(range: Option<&csi::CapacityRange>) -> CoreResult<(i64, i64)> {
    let Some(r) = range else { return Ok((0, 0)) };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(CoreError::InvalidArgument(
            "capacity_range values must not be negative".into(),
        ));
    }
    if r.limit_bytes > 0 && r.limit_bytes < r.required_bytes {
        return Err(CoreError::InvalidArgument(format!(
            "capacity_range.limit_bytes {} is below required_bytes {}",
            r.limit_bytes, r.required_bytes
        )));
    }
    Ok((r.required_bytes, r.limit_bytes))
}

/// Longest part of a caller's value quoted back in a message or log.
pub const SHOWN_BYTES: usize = 128;

/// A value from a request as messages and logs quote it: escaped (a `\n`
/// cannot start a forged log line) and cut to [`SHOWN_BYTES`] with its
/// full length noted, so a megabyte ID does not become a megabyte of log
/// or push a gRPC status past its metadata limit.
pub fn shown(raw: &str) -> String {
    if raw.len() <= SHOWN_BYTES {
        return format!("{raw:?}");
    }
    let mut end = SHOWN_BYTES;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &raw[..end], raw.len())
}

/// Checks a CSI name: non-empty, at most 128 bytes, no control characters.
pub fn name(field: &str, value: &str) -> CoreResult<()> {
    required(field, value)?;
    if value.len() > 128 || value.chars().any(|c| c.is_control()) {
        return Err(CoreError::InvalidArgument(format!(
            "{field} must be at most 128 bytes without control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn cap(access: Option<AccessType>, mode: i32) -> csi::VolumeCapability {
        csi::VolumeCapability {
            access_type: access,
            access_mode: Some(AccessMode { mode }),
        }
    }

    #[test]
    fn capabilities_name_the_bad_field() {
        let err = capabilities("volume_capabilities", &[]).unwrap_err();
        assert_eq!(err.to_string(), "volume_capabilities is required");
        let err = capability("c", &cap(None, 1)).unwrap_err();
        assert!(err.to_string().contains("c.access_type"));
        let err = capability("c", &cap(Some(AccessType::Block(BlockVolume {})), 0)).unwrap_err();
        assert!(err.to_string().contains("c.access_mode"));
        let bad_fs = AccessType::Mount(MountVolume {
            fs_type: "ntfs".into(),
            ..Default::default()
        });
        let err = capability("c", &cap(Some(bad_fs), 1)).unwrap_err();
        assert!(err.to_string().contains("ntfs"));
        capability("c", &cap(Some(AccessType::Block(BlockVolume {})), 1)).unwrap();
    }

    #[test]
    fn capacity_ranges_are_checked() {
        assert_eq!(capacity_range(None).unwrap(), (0, 0));
        let r = csi::CapacityRange {
            required_bytes: 10,
            limit_bytes: 5,
        };
        assert!(capacity_range(Some(&r)).is_err());
        let r = csi::CapacityRange {
            required_bytes: -1,
            limit_bytes: 0,
        };
        assert!(capacity_range(Some(&r)).is_err());
        let r = csi::CapacityRange {
            required_bytes: 10,
            limit_bytes: 0,
        };
        assert_eq!(capacity_range(Some(&r)).unwrap(), (10, 0));
    }

    #[test]
    fn shown_values_are_escaped_and_bounded() {
        assert_eq!(shown("v1.a.b"), "\"v1.a.b\"");
        assert_eq!(shown("a\nINFO forged"), "\"a\\nINFO forged\"");
        let long = "x".repeat(1 << 20);
        let out = shown(&long);
        assert!(out.len() < 200 && out.ends_with("(1048576 bytes)"), "{out}");
        let wide = "é".repeat(100);
        assert!(shown(&wide).contains("(200 bytes)"));
    }

    #[test]
    fn malformed_ids_are_not_found_and_empty_ones_invalid() {
        let err = existing_id("volume", "volume_id", "").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let err = existing_id("volume", "volume_id", "garbage").unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(existing_id("volume", "volume_id", "v1.lvm.x").is_ok());
    }
}
