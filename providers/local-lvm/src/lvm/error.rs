//! Typed failures of lvm2 commands.
//!
//! lvm2 exits with status 5 (`ECMD_FAILED`) for nearly every failure, so the
//! exit status alone says little: the stderr text tells a missing LV from a
//! full volume group. The patterns below are the messages lvm2 2.03 prints
//! (captured on this project's machines; see `tests/fixtures/stderr_*.txt`).
//! Which [`ErrorKind`](omnidisk_provider_api::ErrorKind) each variant becomes
//! is decided in one place, the crate's `errors` module.

use std::process::ExitStatus;

use super::report::ReportError;

/// Longest stderr excerpt kept in an error; lvm can be chatty with `-v`.
const STDERR_LIMIT: usize = 4096;

/// What went wrong running `lvm <subcommand>`.
#[derive(Debug, thiserror::Error)]
pub enum LvmError {
    /// The lvm binary (or the command prefix) could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program that failed to start.
        program: String,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The command did not finish within the configured time and was killed.
    #[error("lvm {subcommand} did not finish within {seconds} s")]
    TimedOut {
        /// The lvm subcommand.
        subcommand: String,
        /// The limit that was exceeded.
        seconds: u64,
    },
    /// A logical volume named in the command does not exist.
    #[error("lvm {subcommand}: logical volume not found: {stderr}")]
    NotFound {
        /// The lvm subcommand.
        subcommand: String,
        /// What lvm printed.
        stderr: String,
    },
    /// The volume group does not exist (or none of its PVs are visible).
    #[error("lvm {subcommand}: volume group not found: {stderr}")]
    VolumeGroupNotFound {
        /// The lvm subcommand.
        subcommand: String,
        /// What lvm printed.
        stderr: String,
    },
    /// The configured thin pool does not exist in the volume group.
    #[error("lvm {subcommand}: thin pool not found: {stderr}")]
    ThinPoolNotFound {
        /// The lvm subcommand.
        subcommand: String,
        /// What lvm printed.
        stderr: String,
    },
    /// An LV of that name already exists.
    #[error("lvm {subcommand}: logical volume already exists: {stderr}")]
    AlreadyExists {
        /// The lvm subcommand.
        subcommand: String,
        /// What lvm printed.
        stderr: String,
    },
    /// Not enough free extents (or thin pool space) for the request.
    #[error("lvm {subcommand}: insufficient space: {stderr}")]
    InsufficientSpace {
        /// The lvm subcommand.
        subcommand: String,
        /// What lvm printed.
        stderr: String,
    },
    /// The LV is open (mounted, or used by another device).
    #[error("lvm {subcommand}: logical volume in use: {stderr}")]
    InUse {
        /// The lvm subcommand.
        subcommand: String,
        /// What lvm printed.
        stderr: String,
    },
    /// Another lvm command holds the volume group lock.
    #[error("lvm {subcommand}: volume group is locked: {stderr}")]
    Locked {
        /// The lvm subcommand.
        subcommand: String,
        /// What lvm printed.
        stderr: String,
    },
    /// Any other non-zero exit.
    #[error("lvm {subcommand} failed ({status}): {stderr}")]
    Failed {
        /// The lvm subcommand.
        subcommand: String,
        /// The exit status, as text (`exit status: 5`, `signal: 9`).
        status: String,
        /// What lvm printed.
        stderr: String,
    },
    /// The command succeeded but its JSON report could not be read.
    #[error("lvm {subcommand} printed a report this provider cannot read")]
    Report {
        /// The lvm subcommand.
        subcommand: String,
        /// Why the report was rejected (boxed: it is large and rare).
        #[source]
        source: Box<ReportError>,
    },
}

impl LvmError {
    /// Classifies a failed run of `lvm <subcommand>` from its exit status
    /// and stderr.
    pub fn from_failure(subcommand: &str, status: ExitStatus, stderr: &[u8]) -> Self {
        let status_text = status.to_string();
        Self::classify(subcommand, &status_text, status.code(), stderr)
    }

    /// The classification behind [`LvmError::from_failure`], on plain values
    /// so tests and fakes can use it without a real process.
    pub fn classify(subcommand: &str, status: &str, code: Option<i32>, stderr: &[u8]) -> Self {
        let stderr = tidy_stderr(stderr);
        let lower = stderr.to_ascii_lowercase();
        let subcommand = subcommand.to_owned();
        // Exit 5 is lvm's "command failed"; other codes (3 = invalid
        // parameters, signals) are never one of the specific cases.
        if code != Some(5) {
            return LvmError::Failed {
                subcommand,
                status: status.to_owned(),
                stderr,
            };
        }
        let has = |needle: &str| lower.contains(needle);
        if has("failed to find logical volume") {
            LvmError::NotFound { subcommand, stderr }
        } else if has("pool") && has("not found in volume group") {
            // Checked before the VG case: this message names the VG too.
            LvmError::ThinPoolNotFound { subcommand, stderr }
        } else if has("volume group") && has("not found") {
            LvmError::VolumeGroupNotFound { subcommand, stderr }
        } else if has("already exists") {
            LvmError::AlreadyExists { subcommand, stderr }
        } else if has("insufficient free space")
            || has("insufficient suitable")
            || has("insufficient free extents")
            || has("cannot create new thin volume, free space in thin pool")
        {
            LvmError::InsufficientSpace { subcommand, stderr }
        } else if has("in use") || has("open logical volume") || has("used by another device") {
            LvmError::InUse { subcommand, stderr }
        } else if has("can't get lock")
            || has("lock failed")
            || has("resource temporarily unavailable")
        {
            LvmError::Locked { subcommand, stderr }
        } else {
            LvmError::Failed {
                subcommand,
                status: status.to_owned(),
                stderr,
            }
        }
    }
}

/// Drops lvm's noise (warnings about activation being off, leaked file
/// descriptors) and bounds the length, keeping what explains the failure.
fn tidy_stderr(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut kept: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| !l.starts_with("File descriptor") && !l.contains("Activation disabled"))
        .collect();
    if kept.is_empty() {
        kept = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
    }
    let mut joined = kept.join("; ");
    if joined.len() > STDERR_LIMIT {
        let mut cut = STDERR_LIMIT;
        while !joined.is_char_boundary(cut) {
            cut -= 1;
        }
        joined.truncate(cut);
        joined.push_str(" ...");
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }

    fn classify(name: &str) -> LvmError {
        LvmError::classify("test", "exit status: 5", Some(5), &fixture(name))
    }

    #[test]
    fn real_lvm_messages_are_classified() {
        assert!(matches!(
            classify("stderr_lv_not_found.txt"),
            LvmError::NotFound { .. }
        ));
        assert!(matches!(
            classify("stderr_vg_not_found.txt"),
            LvmError::VolumeGroupNotFound { .. }
        ));
        assert!(matches!(
            classify("stderr_pool_not_found.txt"),
            LvmError::ThinPoolNotFound { .. }
        ));
        assert!(matches!(
            classify("stderr_already_exists.txt"),
            LvmError::AlreadyExists { .. }
        ));
        assert!(matches!(
            classify("stderr_insufficient_space.txt"),
            LvmError::InsufficientSpace { .. }
        ));
        assert!(matches!(
            classify("stderr_snapshot_no_dm.txt"),
            LvmError::Failed { .. }
        ));
    }

    #[test]
    fn noise_is_dropped_and_the_cause_kept() {
        let err = classify("stderr_lv_not_found.txt");
        let text = err.to_string();
        assert!(!text.contains("Activation disabled"), "{text}");
        assert!(text.contains("Failed to find logical volume"), "{text}");
    }

    #[test]
    fn other_exit_codes_are_never_specific() {
        let err = LvmError::classify(
            "lvcreate",
            "exit status: 3",
            Some(3),
            b"  Failed to find logical volume \"vg/x\"\n",
        );
        assert!(matches!(err, LvmError::Failed { .. }));
    }

    #[test]
    fn long_stderr_is_bounded() {
        let long = "x".repeat(10 * STDERR_LIMIT);
        let err = LvmError::classify("lvs", "exit status: 5", Some(5), long.as_bytes());
        match err {
            LvmError::Failed { stderr, .. } => assert!(stderr.len() <= STDERR_LIMIT + 4),
            other => panic!("unexpected {other:?}"),
        }
    }
}
