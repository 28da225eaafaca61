//! Node-side device discovery on real loop devices, exposed under a
//! temporary device root with Aliyun's by-id names and sysfs serials.
//!
//! Needs root and `losetup`. Without them it says so and does nothing,
//! unless `OMNIDISK_REQUIRE_ALL=1`, when it fails.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use omnidisk_provider_aliyun_disk::FACTORY;
use omnidisk_provider_api::types::*;
use omnidisk_provider_api::{ErrorKind, Provider};

struct Loop {
    device: PathBuf,
    _backing: tempfile::NamedTempFile,
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

fn require_all() -> bool {
    std::env::var("OMNIDISK_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

fn make_loop() -> Result<Loop, String> {
    let backing = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    backing
        .as_file()
        .set_len(8 << 20)
        .map_err(|e| e.to_string())?;
    let out = Command::new("losetup")
        .arg("--find")
        .arg("--show")
        .arg(backing.path())
        .output()
        .map_err(|e| format!("cannot run losetup: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(Loop {
        device,
        _backing: backing,
    })
}

fn loops(n: usize) -> Option<Vec<Loop>> {
    let mut out = Vec::new();
    for _ in 0..n {
        match make_loop() {
            Ok(l) => out.push(l),
            Err(e) => {
                if require_all() {
                    panic!("OMNIDISK_REQUIRE_ALL=1 but loop devices are unavailable: {e}");
                }
                eprintln!(
                    "NOT RUN: loop devices are unavailable ({e}); set OMNIDISK_REQUIRE_ALL=1 to make this fatal"
                );
                return None;
            }
        }
    }
    Some(out)
}

fn name_of(device: &Path) -> String {
    device.file_name().unwrap().to_string_lossy().into_owned()
}

async fn node_provider(dev: &Path, sys: &Path) -> Arc<dyn Provider> {
    let toml = format!(
        "region_id = \"cn-hangzhou\"\n[waits]\ndevice_seconds = 1\n[node]\ninstance_id = \"i-node1\"\nzone_id = \"cn-hangzhou-a\"\ndevice_root = \"{}\"\nsys_root = \"{}\"\n",
        dev.display(),
        sys.display()
    );
    (FACTORY.create)(InitRequest {
        instance: "ali-node".into(),
        settings_toml: toml,
        node_name: "node-1".into(),
        mode: "node".into(),
    })
    .await
    .unwrap()
}

fn find(volume: &str) -> FindDeviceRequest {
    FindDeviceRequest {
        volume_id: volume.into(),
        ..FindDeviceRequest::default()
    }
}

#[tokio::test]
async fn devices_are_found_by_serial_and_verified() {
    let Some(devices) = loops(3) else { return };
    let root = tempfile::tempdir().unwrap();
    let dev = root.path().join("dev");
    let sys = root.path().join("sys");
    std::fs::create_dir_all(dev.join("disk/by-id")).unwrap();
    let serials = [
        "bp1virtio000000000001",
        "bp1nvme00000000000002",
        "bp1scan00000000000003",
    ];

    // 1: virtio by-id link (serial truncated to 20 bytes by virtio-blk).
    let n0 = name_of(&devices[0].device);
    std::fs::create_dir_all(sys.join("block").join(&n0)).unwrap();
    std::fs::write(
        sys.join("block").join(&n0).join("serial"),
        &serials[0][..20],
    )
    .unwrap();
    std::os::unix::fs::symlink(
        &devices[0].device,
        dev.join("disk/by-id")
            .join(format!("virtio-{}", &serials[0][..20])),
    )
    .unwrap();

    // 2: NVMe by-id link, serial under device/.
    let n1 = name_of(&devices[1].device);
    std::fs::create_dir_all(sys.join("block").join(&n1).join("device")).unwrap();
    std::fs::write(
        sys.join("block").join(&n1).join("device/serial"),
        format!("{}\n", serials[1]),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        &devices[1].device,
        dev.join("disk/by-id").join(format!(
            "nvme-Alibaba_Cloud_Elastic_Block_Storage_{}",
            serials[1]
        )),
    )
    .unwrap();

    // 3: no link at all; only sysfs knows the serial.
    let n2 = name_of(&devices[2].device);
    std::fs::create_dir_all(sys.join("block").join(&n2)).unwrap();
    std::fs::write(sys.join("block").join(&n2).join("serial"), serials[2]).unwrap();
    std::os::unix::fs::symlink(&devices[2].device, dev.join(&n2)).unwrap();

    let p = node_provider(&dev, &sys).await;
    let got = p
        .find_device(find(&format!("d-{}", serials[0])))
        .await
        .unwrap();
    assert_eq!(Path::new(&got.device_path), devices[0].device);
    let got = p
        .find_device(find(&format!("d-{}", serials[1])))
        .await
        .unwrap();
    assert_eq!(Path::new(&got.device_path), devices[1].device);
    let got = p
        .find_device(find(&format!("d-{}", serials[2])))
        .await
        .unwrap();
    assert_eq!(Path::new(&got.device_path), dev.join(&n2));

    // A stale link: named for one disk, leading to another disk's device.
    let stale = "bp1stale0000000000009";
    std::os::unix::fs::symlink(
        &devices[0].device,
        dev.join("disk/by-id")
            .join(format!("virtio-{}", &stale[..20])),
    )
    .unwrap();
    let err = p
        .find_device(find(&format!("d-{stale}")))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::FailedPrecondition,
        "{}",
        err.full_message()
    );
    assert!(
        err.full_message().contains("refusing"),
        "{}",
        err.full_message()
    );

    // A disk that never shows up: bounded wait, then DeadlineExceeded.
    let err = p
        .find_device(find("d-bp1absent00000000000"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
    // Not a disk ID: nothing reaches the filesystem.
    let err = p.find_device(find("d-../../etc")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}
