//! Node-side discovery on real block devices: an attachment simulator turns
//! every attachment moto reports into a loop device exposed the way udev
//! and sysfs expose an EBS NVMe volume, under a temporary device root and
//! sysfs root, and the provider's `find_device` must find it and check its
//! serial. Stale by-id links must never lead to another volume's device.
//!
//! Needs root (losetup) and moto. Without them the test says SKIPPED; with
//! `OMNIDISK_REQUIRE_ALL=1` it fails instead.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{
    FAST_WAITS, Moto, ZONE, ensure_moto, require_all, run_instances, sdk_client, settings_toml,
};
use omnidisk_provider_api::types::*;
use omnidisk_provider_api::{ErrorKind, Provider};
use omnidisk_provider_aws_ebs::device::BY_ID_PREFIX;
use omnidisk_provider_aws_ebs::provider::{DEVICE_PATH_KEY, ZONE_KEY};

/// A loop device over a sparse file, detached on drop (also when the test
/// panics half-way).
struct LoopDevice {
    node: PathBuf,
}

impl LoopDevice {
    fn new(backing: &Path) -> Result<Self, String> {
        let file = std::fs::File::create(backing).map_err(|e| format!("backing file: {e}"))?;
        file.set_len(16 << 20)
            .map_err(|e| format!("backing file size: {e}"))?;
        let out = Command::new("losetup")
            .arg("-f")
            .arg("--show")
            .arg(backing)
            .output()
            .map_err(|e| format!("cannot run losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let node = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(Self { node })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let status = Command::new("losetup").arg("-d").arg(&self.node).status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("could not detach {}", self.node.display());
        }
    }
}

/// What udev and sysfs would show on a Nitro node, rooted in a temp dir.
struct AttachmentSimulator {
    dir: tempfile::TempDir,
    loops: Vec<LoopDevice>,
}

impl AttachmentSimulator {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("dev/disk/by-id")).expect("dev root");
        std::fs::create_dir_all(dir.path().join("sys/block")).expect("sys root");
        std::fs::create_dir_all(dir.path().join("backing")).expect("backing dir");
        Self {
            dir,
            loops: Vec::new(),
        }
    }

    fn dev_root(&self) -> PathBuf {
        self.dir.path().join("dev")
    }

    fn sys_root(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    fn by_id(&self, volume_id: &str) -> PathBuf {
        self.dev_root()
            .join("disk/by-id")
            .join(format!("{BY_ID_PREFIX}{}", volume_id.replace('-', "")))
    }

    /// Exposes a fresh loop device as NVMe namespace `name` holding
    /// `volume_id`: `/dev/<name>` (a link to the loop node), its sysfs serial
    /// (the volume ID without dash, space-padded to 20 like EBS), the by-id
    /// link, and udev's alias for the device name given at attach time.
    /// Returns the loop device node.
    fn attach(&mut self, name: &str, volume_id: &str, published: &str) -> PathBuf {
        let lo = LoopDevice::new(&self.dir.path().join("backing").join(name))
            .unwrap_or_else(|e| panic!("loop device for {volume_id}: {e}"));
        let node = lo.node.clone();
        self.loops.push(lo);
        symlink(&node, self.dev_root().join(name)).expect("device link");
        let sys = self.sys_root().join("block").join(name).join("device");
        std::fs::create_dir_all(&sys).expect("sysfs dir");
        let serial = volume_id.replace('-', "");
        std::fs::write(sys.join("serial"), format!("{serial:<20}\n")).expect("serial");
        self.link_by_id(volume_id, name);
        let alias = published
            .strip_prefix("/dev/")
            .expect("published under /dev");
        symlink(name, self.dev_root().join(alias)).expect("alias link");
        node
    }

    /// Points `volume_id`'s by-id link at device `name`, as a stale udev
    /// link left over from an earlier attachment would.
    fn link_by_id(&self, volume_id: &str, name: &str) {
        let link = self.by_id(volume_id);
        let _ = std::fs::remove_file(&link);
        symlink(format!("../../{name}"), link).expect("by-id link");
    }

    /// What a detach leaves: the device, its sysfs entry and its alias go,
    /// the by-id link may stay behind.
    fn detach(&self, name: &str, published: &str) {
        std::fs::remove_file(self.dev_root().join(name)).expect("remove device link");
        std::fs::remove_dir_all(self.sys_root().join("block").join(name)).expect("remove sysfs");
        let alias = published
            .strip_prefix("/dev/")
            .expect("published under /dev");
        std::fs::remove_file(self.dev_root().join(alias)).expect("remove alias");
    }
}

/// The reason this test cannot run here, if any.
fn missing_prerequisite() -> Option<String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.as_deref() != Some("0") {
        return Some("needs root for losetup".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control".into());
    }
    ensure_moto().err()
}

/// The same block device (device number), whatever links lead to it.
fn same_device(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    ma.file_type().is_block_device() && mb.file_type().is_block_device() && ma.rdev() == mb.rdev()
}

fn find(volume_id: &str, ctx: &AttachResponse) -> FindDeviceRequest {
    FindDeviceRequest {
        volume_id: volume_id.to_owned(),
        publish_context: ctx.publish_context.clone(),
        ..FindDeviceRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_serial_check_on_loop_devices() {
    if let Some(why) = missing_prerequisite() {
        if require_all() {
            panic!("attach_loop needs root, loop devices and moto (OMNIDISK_REQUIRE_ALL=1): {why}");
        }
        eprintln!("SKIPPED discovery_and_serial_check_on_loop_devices: {why}");
        return;
    }
    let moto = Moto::start();
    let ec2 = sdk_client(&moto.url).await;
    let mut sim = AttachmentSimulator::new();

    let controller: Arc<dyn Provider> = (omnidisk_provider_aws_ebs::FACTORY.create)(InitRequest {
        instance: "ebs".into(),
        settings_toml: settings_toml(&moto.url, FAST_WAITS),
        node_name: "node-1".into(),
        mode: "controller".into(),
    })
    .await
    .expect("controller provider");
    let node_section = format!(
        "[node]\ndev_root = {:?}\nsys_root = {:?}\ndevice_wait_seconds = 1\n",
        sim.dev_root().to_str().expect("utf-8 temp dir"),
        sim.sys_root().to_str().expect("utf-8 temp dir"),
    );
    let node: Arc<dyn Provider> = (omnidisk_provider_aws_ebs::FACTORY.create)(InitRequest {
        instance: "ebs".into(),
        settings_toml: settings_toml(&moto.url, &format!("{FAST_WAITS}\n{node_section}")),
        node_name: "node-1".into(),
        mode: "node".into(),
    })
    .await
    .expect("node provider");

    let instance = run_instances(&ec2, 1).await.remove(0);
    let mut volumes = Vec::new();
    for name in ["pvc-a", "pvc-b"] {
        let vol = controller
            .create_volume(CreateVolumeRequest {
                name: name.into(),
                required_bytes: GIB,
                requisite: vec![Topology::from_pairs([(ZONE_KEY, ZONE)])],
                ..CreateVolumeRequest::default()
            })
            .await
            .expect("create");
        let ctx = controller
            .attach_volume(AttachRequest {
                volume_id: vol.id.clone(),
                node_id: instance.clone(),
                ..AttachRequest::default()
            })
            .await
            .expect("attach");
        volumes.push((vol.id, ctx));
    }
    let (a, ctx_a) = &volumes[0];
    let (b, ctx_b) = &volumes[1];
    let published_a = ctx_a.publish_context[DEVICE_PATH_KEY].clone();
    let published_b = ctx_b.publish_context[DEVICE_PATH_KEY].clone();
    assert_ne!(published_a, published_b);

    // Only now, after moto reports the attachments, do the devices appear.
    let loop_a = sim.attach("nvme1n1", a, &published_a);
    let loop_b = sim.attach("nvme2n1", b, &published_b);

    for (vol, ctx, lo, name) in [
        (a, ctx_a, &loop_a, "nvme1n1"),
        (b, ctx_b, &loop_b, "nvme2n1"),
    ] {
        let found = node.find_device(find(vol, ctx)).await.expect("find_device");
        assert_eq!(PathBuf::from(&found.device_path), sim.dev_root().join(name));
        assert!(
            same_device(Path::new(&found.device_path), lo),
            "{} is not {}",
            found.device_path,
            lo.display()
        );
    }

    // A stale link to B's device while A's device is present elsewhere:
    // the serial scan finds A's real device.
    sim.link_by_id(a, "nvme2n1");
    let found = node
        .find_device(find(a, ctx_a))
        .await
        .expect("find_device after scan");
    assert!(
        same_device(Path::new(&found.device_path), &loop_a),
        "{found:?}"
    );
    assert!(
        !same_device(Path::new(&found.device_path), &loop_b),
        "{found:?}"
    );

    // A detached, its by-id link left pointing at B's device: nothing is
    // returned, the wait runs out.
    controller
        .detach_volume(DetachRequest {
            volume_id: a.clone(),
            node_id: instance.clone(),
        })
        .await
        .expect("detach");
    sim.detach("nvme1n1", &published_a);
    let err = node
        .find_device(find(a, ctx_a))
        .await
        .expect_err("a stale link must not be followed to another volume");
    assert_eq!(
        err.kind(),
        ErrorKind::DeadlineExceeded,
        "{}",
        err.full_message()
    );

    // Worse: A's published name now aliases B's device too. Refused outright.
    symlink(
        "nvme2n1",
        sim.dev_root().join(published_a.trim_start_matches("/dev/")),
    )
    .expect("stale alias");
    let err = node
        .find_device(find(a, ctx_a))
        .await
        .expect_err("an alias to another volume's device must be refused");
    assert_eq!(
        err.kind(),
        ErrorKind::FailedPrecondition,
        "{}",
        err.full_message()
    );
    assert!(
        err.full_message().contains(&b.replace('-', "")),
        "{}",
        err.full_message()
    );

    // B is unaffected.
    let found = node.find_device(find(b, ctx_b)).await.expect("find B");
    assert!(same_device(Path::new(&found.device_path), &loop_b));
}
