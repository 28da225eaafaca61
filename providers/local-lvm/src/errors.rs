//! The one place where this provider's failures get an [`ErrorKind`].
//!
//! Kinds the sidecars retry forever (`Aborted`, `DeadlineExceeded`,
//! `Unavailable`) are used only where waiting can help: a VG lock held by
//! another command, a command or a device that was slow.

use omnidisk_provider_api::{ErrorKind, ProviderError};

use crate::device::DeviceError;
use crate::lvm::LvmError;
use crate::names::CsiNameError;
use crate::settings::SettingsError;

/// The kind of an lvm failure.
pub fn lvm_kind(err: &LvmError) -> ErrorKind {
    match err {
        LvmError::NotFound { .. } => ErrorKind::NotFound,
        // A missing VG or pool is a node or configuration problem, not a
        // missing volume; retrying does not fix it.
        LvmError::VolumeGroupNotFound { .. } | LvmError::ThinPoolNotFound { .. } => {
            ErrorKind::FailedPrecondition
        }
        LvmError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
        LvmError::InsufficientSpace { .. } => ErrorKind::ResourceExhausted,
        LvmError::InUse { .. } => ErrorKind::FailedPrecondition,
        LvmError::Locked { .. } => ErrorKind::Aborted,
        LvmError::TimedOut { .. } => ErrorKind::DeadlineExceeded,
        LvmError::Spawn { .. } | LvmError::Failed { .. } | LvmError::Report { .. } => {
            ErrorKind::Internal
        }
    }
}

/// An lvm failure while doing `what` (e.g. "creating volume odv-x").
pub fn lvm_error(what: impl Into<String>, err: LvmError) -> ProviderError {
    ProviderError::new(lvm_kind(&err), what).with_source(err)
}

/// The kind of a device failure.
pub fn device_kind(err: &DeviceError) -> ErrorKind {
    match err {
        DeviceError::NotAppeared { .. } => ErrorKind::DeadlineExceeded,
        DeviceError::Open { .. } | DeviceError::Copy { .. } | DeviceError::ShortSource { .. } => {
            ErrorKind::Internal
        }
    }
}

/// A device failure while doing `what`.
pub fn device_error(what: impl Into<String>, err: DeviceError) -> ProviderError {
    ProviderError::new(device_kind(&err), what).with_source(err)
}

/// A refused CSI name.
pub fn csi_name_error(err: CsiNameError) -> ProviderError {
    let kind = match err {
        CsiNameError::Empty(_) | CsiNameError::TooLong(_) => ErrorKind::InvalidArgument,
        CsiNameError::Derive(_) => ErrorKind::Internal,
    };
    ProviderError::new(kind, err.to_string()).with_source(err)
}

/// A refused setting.
pub fn settings_error(err: SettingsError) -> ProviderError {
    ProviderError::new(ErrorKind::InvalidArgument, "invalid local-lvm settings").with_source(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lvm(stderr: &str) -> LvmError {
        LvmError::classify("lvcreate", "exit status: 5", Some(5), stderr.as_bytes())
    }

    #[test]
    fn lvm_failures_map_to_kinds() {
        let cases = [
            (
                "  Failed to find logical volume \"vg/x\"",
                ErrorKind::NotFound,
            ),
            (
                "  Volume group \"vg\" not found",
                ErrorKind::FailedPrecondition,
            ),
            (
                "  Pool p not found in Volume group vg.",
                ErrorKind::FailedPrecondition,
            ),
            (
                "  Logical Volume \"x\" already exists in volume group \"vg\"",
                ErrorKind::AlreadyExists,
            ),
            (
                "  Volume group \"vg\" has insufficient free space (2 extents): 9 required.",
                ErrorKind::ResourceExhausted,
            ),
            (
                "  Logical volume vg/x in use.",
                ErrorKind::FailedPrecondition,
            ),
            ("  Can't get lock for vg", ErrorKind::Aborted),
            ("  something unexpected", ErrorKind::Internal),
        ];
        for (stderr, kind) in cases {
            assert_eq!(lvm_kind(&lvm(stderr)), kind, "{stderr}");
        }
        let timeout = LvmError::TimedOut {
            subcommand: "lvs".into(),
            seconds: 1,
        };
        assert_eq!(lvm_kind(&timeout), ErrorKind::DeadlineExceeded);
    }

    #[test]
    fn the_message_keeps_the_cause_chain() {
        let err = lvm_error(
            "creating volume odv-x",
            lvm("  Volume group \"vg\" has insufficient free space (2 extents): 9 required."),
        );
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
        let full = err.full_message();
        assert!(full.starts_with("creating volume odv-x: "), "{full}");
        assert!(full.contains("insufficient free space"), "{full}");
    }

    #[test]
    fn device_failures_map_to_kinds() {
        let err = DeviceError::NotAppeared {
            path: "/dev/vg/x".into(),
            waited: std::time::Duration::from_secs(1),
        };
        assert_eq!(device_kind(&err), ErrorKind::DeadlineExceeded);
        let err = DeviceError::ShortSource {
            from: "/a".into(),
            copied: 1,
            wanted: 2,
        };
        assert_eq!(device_kind(&err), ErrorKind::Internal);
    }
}
