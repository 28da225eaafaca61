//! A volume group on a loop device, for local-lvm runs without
//! device-mapper: lvm2 runs with `global{activation=0}`, so metadata
//! operations work and nothing is ever activated.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Why the loop-device VG cannot be made here, if it cannot.
pub fn missing_prerequisite() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (losetup, lvm)".into());
    }
    for (tool, arg) in [("lvm", "version"), ("losetup", "--version")] {
        let runs = Command::new(tool)
            .arg(arg)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output()
            .is_ok_and(|o| o.status.success());
        if !runs {
            return Some(format!(
                "`{tool} {arg}` does not run (install lvm2 and util-linux)"
            ));
        }
    }
    None
}

/// A sparse file on a loop device holding one VG; removed on drop, also
/// when the test panics.
pub struct LoopVg {
    _dir: tempfile::TempDir,
    loop_dev: String,
    vg: String,
    config: String,
}

impl LoopVg {
    /// A VG of `size` bytes (less the PV metadata).
    pub fn new(size: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("pv.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(size))
            .expect("sparse PV image");
        let out = Command::new("losetup")
            .arg("--find")
            .arg("--show")
            .arg(&image)
            .output()
            .expect("losetup runs");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let loop_dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let vg = format!(
            "odconf{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        // Only this loop device is scanned, nothing is activated, and udev
        // (absent in containers) is not waited for.
        let config = format!(
            "global{{activation=0}} devices{{use_devicesfile=0 obtain_device_list_from_udev=0 \
             global_filter=[\"a|^{loop_dev}$|\",\"r|.*|\"]}} \
             activation{{udev_sync=0 udev_rules=0 monitoring=0}}"
        );
        let this = Self {
            _dir: dir,
            loop_dev,
            vg,
            config,
        };
        this.lvm(&["pvcreate", &this.loop_dev]);
        this.lvm(&["vgcreate", &this.vg, &this.loop_dev]);
        this
    }

    fn lvm_output(&self, args: &[&str]) -> std::process::Output {
        Command::new("lvm")
            .arg(args[0])
            .arg("--config")
            .arg(&self.config)
            .args(&args[1..])
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .env("LC_ALL", "C")
            .output()
            .expect("lvm runs")
    }

    fn lvm(&self, args: &[&str]) {
        let out = self.lvm_output(args);
        assert!(
            out.status.success(),
            "lvm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Names of the logical volumes in the VG.
    pub fn logical_volumes(&self) -> Vec<String> {
        let out = self.lvm_output(&["lvs", "--noheadings", "-o", "lv_name", &self.vg]);
        assert!(
            out.status.success(),
            "lvs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// The instance settings (TOML lines) of a local-lvm instance on this VG.
    pub fn settings(&self) -> String {
        format!(
            "volume_group = {:?}\nlvm_config = '{}'\n",
            self.vg, self.config
        )
    }
}

impl Drop for LoopVg {
    fn drop(&mut self) {
        let _ = self.lvm_output(&["vgremove", "--yes", "--force", &self.vg]);
        let _ = self.lvm_output(&["pvremove", "--yes", &self.loop_dev]);
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(&self.loop_dev)
            .status();
    }
}
