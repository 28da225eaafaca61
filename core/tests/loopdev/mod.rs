//! Loop devices and mount cleanup for the node tests that run as root.
//!
//! A [`Sandbox`] owns a temp directory, the loop devices backed by files in
//! it and every mount below it. Dropping it (also when a test panics)
//! unmounts what is still mounted there, detaches its loop devices and
//! removes the directory.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Environment variable that turns "skip" into "fail" for tests whose
/// prerequisites are missing.
pub const REQUIRE_ALL: &str = "OMNIDISK_REQUIRE_ALL";

/// True when the test can run: it needs root for losetup and mount(2).
/// Otherwise prints why it skips, or panics when `OMNIDISK_REQUIRE_ALL=1`.
pub fn have_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    let reason = format!("{test}: needs root (loop devices, mkfs, mount)");
    if std::env::var(REQUIRE_ALL).as_deref() == Ok("1") {
        panic!("{reason}, and {REQUIRE_ALL}=1 forbids skipping");
    }
    eprintln!("SKIPPED {reason}");
    false
}

/// Whether this process has capability number `bit` in its effective set.
#[allow(dead_code)]
pub fn has_capability(bit: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    effective & (1u64 << bit) != 0
}

fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{program} {:?} failed ({}): {}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A loop device over a sparse file.
#[derive(Debug)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: PathBuf,
    /// The backing file.
    pub backing: PathBuf,
}

impl LoopDevice {
    /// Grows the backing file and tells the loop driver about it.
    pub fn grow(&self, size: u64) {
        let file = OpenOptions::new()
            .write(true)
            .open(&self.backing)
            .expect("open backing file");
        file.set_len(size).expect("grow backing file");
        run("losetup", &["-c".as_ref(), self.path.as_os_str()]).expect("losetup -c");
    }
}

/// A temp directory with loop devices and mounts that are cleaned up on drop.
pub struct Sandbox {
    dir: tempfile::TempDir,
    loops: Vec<LoopDevice>,
}

impl Sandbox {
    /// A fresh sandbox.
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("omnidisk-node-")
                .tempdir()
                .expect("temp dir"),
            loops: Vec::new(),
        }
    }

    /// The sandbox directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The loop devices made so far, in creation order.
    pub fn loops(&self) -> &[LoopDevice] {
        &self.loops
    }

    /// A path inside the sandbox (not created).
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new loop device of `size` bytes (sparse), owned by the sandbox.
    pub fn loop_device(&mut self, size: u64) -> &LoopDevice {
        let backing = self.join(&format!("disk{}.img", self.loops.len()));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&backing)
            .expect("create backing file");
        file.set_len(size).expect("size backing file");
        drop(file);
        // Concurrent tests race for the first free device; losetup reports
        // the loser as busy, and a retry gets the next one.
        let mut last = String::new();
        for attempt in 0..8 {
            match run(
                "losetup",
                &["-f".as_ref(), "--show".as_ref(), backing.as_os_str()],
            ) {
                Ok(dev) => {
                    self.loops.push(LoopDevice {
                        path: PathBuf::from(dev),
                        backing,
                    });
                    return self.loops.last().expect("just pushed");
                }
                Err(e) => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(50 * (attempt + 1)));
                }
            }
        }
        panic!("cannot set up a loop device: {last}");
    }

    /// Mount points under the sandbox, deepest and newest first.
    pub fn mounts_inside(&self) -> Vec<PathBuf> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let table = omnidisk::mount::parse_mountinfo(&text).unwrap_or_default();
        let root = std::fs::canonicalize(self.path()).unwrap_or_else(|_| self.path().to_path_buf());
        let mut inside: Vec<PathBuf> = table
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&root))
            .collect();
        inside.reverse();
        inside
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for _ in 0..4 {
            let mounts = self.mounts_inside();
            if mounts.is_empty() {
                break;
            }
            for m in mounts {
                // Lazy: a test that failed may still hold a file open there.
                if let Err(e) = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH) {
                    eprintln!("cleanup: cannot unmount {}: {e}", m.display());
                }
            }
        }
        for dev in self.loops.drain(..) {
            if let Err(e) = run("losetup", &["-d".as_ref(), dev.path.as_os_str()]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// What `blkid` says the filesystem type on `device` is (empty if none).
pub fn blkid_type(device: &Path) -> String {
    run(
        "blkid",
        &[
            "-p".as_ref(),
            "-s".as_ref(),
            "TYPE".as_ref(),
            "-o".as_ref(),
            "value".as_ref(),
            device.as_os_str(),
        ],
    )
    .unwrap_or_default()
}

/// Runs a tool the test needs for its setup, panicking on failure.
pub fn must_run(program: &str, args: &[&str]) -> String {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    run(program, &args).unwrap_or_else(|e| panic!("{e}"))
}
