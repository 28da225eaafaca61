//! Device nodes of LVs on this node: where they are, waiting for them to
//! appear after activation, and copying one device onto another (restoring
//! or cloning thick volumes).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::lvm::{LvName, VgName};

/// Copy buffer size: large enough for sequential throughput, small enough
/// to keep memory flat.
const COPY_CHUNK: usize = 4 << 20;

/// A device-level failure.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The device node did not appear in time.
    #[error("device {path} did not appear within {waited:?}")]
    NotAppeared {
        /// The expected device path.
        path: PathBuf,
        /// How long was waited.
        waited: Duration,
    },
    /// A device could not be opened.
    #[error("cannot open {path}")]
    Open {
        /// The device.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading the source or writing the target failed.
    #[error("copying {from} to {to} failed after {copied} bytes")]
    Copy {
        /// The source device.
        from: PathBuf,
        /// The target device.
        to: PathBuf,
        /// Bytes copied before the failure.
        copied: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The source ended before the requested length.
    #[error("{from} ended after {copied} of {wanted} bytes")]
    ShortSource {
        /// The source device.
        from: PathBuf,
        /// Bytes copied.
        copied: u64,
        /// Bytes wanted.
        wanted: u64,
    },
}

/// `<root>/<vg>/<lv>`: the udev-made symlink (or, in tests, a file). Only
/// validated names are joined, so the result stays under `root`.
pub fn device_path(root: &Path, vg: &VgName, lv: &LvName) -> PathBuf {
    root.join(vg.as_str()).join(lv.as_str())
}

/// Waits until `path` exists, polling with a growing interval, for at most
/// `timeout`.
pub async fn wait_for(path: &Path, timeout: Duration) -> Result<(), DeviceError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        if tokio::fs::metadata(path).await.is_ok() {
            return Ok(());
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(DeviceError::NotAppeared {
                path: path.to_owned(),
                waited,
            });
        }
        tokio::time::sleep(pause.min(timeout - waited)).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Copies the first `bytes` of `from` onto `to` and flushes `to` to stable
/// storage. Both are opened without truncation (they are block devices;
/// in tests, files of the right size).
pub async fn copy(from: &Path, to: &Path, bytes: u64) -> Result<(), DeviceError> {
    let mut src = tokio::fs::File::open(from)
        .await
        .map_err(|source| DeviceError::Open {
            path: from.to_owned(),
            source,
        })?;
    let mut dst = tokio::fs::OpenOptions::new()
        .write(true)
        .open(to)
        .await
        .map_err(|source| DeviceError::Open {
            path: to.to_owned(),
            source,
        })?;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut copied: u64 = 0;
    let fail = |copied, source| DeviceError::Copy {
        from: from.to_owned(),
        to: to.to_owned(),
        copied,
        source,
    };
    while copied < bytes {
        let want = usize::try_from(bytes - copied)
            .unwrap_or(usize::MAX)
            .min(COPY_CHUNK);
        let n = src
            .read(&mut buf[..want])
            .await
            .map_err(|e| fail(copied, e))?;
        if n == 0 {
            return Err(DeviceError::ShortSource {
                from: from.to_owned(),
                copied,
                wanted: bytes,
            });
        }
        dst.write_all(&buf[..n])
            .await
            .map_err(|e| fail(copied, e))?;
        copied += n as u64;
    }
    dst.flush().await.map_err(|e| fail(copied, e))?;
    dst.sync_all().await.map_err(|e| fail(copied, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_vg_and_lv() {
        let p = device_path(
            Path::new("/dev"),
            &VgName::new("vg").unwrap(),
            &LvName::new("odv-x").unwrap(),
        );
        assert_eq!(p, PathBuf::from("/dev/vg/odv-x"));
    }

    #[tokio::test]
    async fn waiting_succeeds_when_the_device_appears_and_times_out_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev");
        let later = path.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            std::fs::write(later, b"").unwrap();
        });
        wait_for(&path, Duration::from_secs(5)).await.unwrap();
        writer.await.unwrap();
        let err = wait_for(&dir.path().join("never"), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, DeviceError::NotAppeared { .. }));
    }

    #[tokio::test]
    async fn copy_writes_the_prefix_without_truncating() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        let to = dir.path().join("to");
        let data: Vec<u8> = (0..(9 << 20)).map(|i: u32| (i % 251) as u8).collect();
        std::fs::write(&from, &data).unwrap();
        std::fs::write(&to, vec![0xffu8; 10 << 20]).unwrap();
        copy(&from, &to, 9 << 20).await.unwrap();
        let out = std::fs::read(&to).unwrap();
        assert_eq!(out.len(), 10 << 20);
        assert_eq!(&out[..9 << 20], &data[..]);
        assert!(out[9 << 20..].iter().all(|b| *b == 0xff));
        let err = copy(&from, &to, 10 << 20).await.unwrap_err();
        assert!(matches!(err, DeviceError::ShortSource { .. }), "{err:?}");
        let err = copy(&dir.path().join("none"), &to, 1).await.unwrap_err();
        assert!(matches!(err, DeviceError::Open { .. }));
    }
}
