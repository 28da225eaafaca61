//! Node-side discovery on real block devices: the crate's attachment
//! simulator turns every attachment moto reports into a loop device exposed
//! the way udev and sysfs expose an EBS NVMe volume, under a temporary
//! device root and sysfs root, and the provider's `find_device` must find
//! it and check its serial. Stale by-id links must never lead to another
//! volume's device. The simulator itself is checked too: devices go on
//! detach, grow when moto reports a larger size, keep their data across
//! re-attach, and lose their file when the volume is deleted.
//!
//! Needs root (losetup) and moto. Without them the test says SKIPPED; with
//! `OMNIDISK_REQUIRE_ALL=1` it fails instead.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, symlink};
use std::path::Path;
use std::sync::Arc;

use common::{FAST_WAITS, ZONE, require_all, settings_toml, start_moto};
use omnidisk_provider_api::types::*;
use omnidisk_provider_api::{ErrorKind, Provider};
use omnidisk_provider_aws_ebs::attach_sim::AttachSimulator;
use omnidisk_provider_aws_ebs::provider::{DEVICE_PATH_KEY, ZONE_KEY};

/// The reason this test cannot run here (moto aside), if any.
fn missing_prerequisite() -> Option<String> {
    let uid = std::process::Command::new("id")
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
    None
}

/// The same block device (device number), whatever links lead to it.
fn same_device(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    ma.file_type().is_block_device() && mb.file_type().is_block_device() && ma.rdev() == mb.rdev()
}

/// The size the kernel gives a loop device, in bytes.
fn kernel_size(loop_device: &Path) -> u64 {
    let name = loop_device.file_name().expect("loop device name");
    let sectors = std::fs::read_to_string(Path::new("/sys/class/block").join(name).join("size"))
        .expect("loop device size in sysfs");
    sectors.trim().parse::<u64>().expect("sectors") * 512
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
    const TEST: &str = "discovery_and_serial_check_on_loop_devices";
    if let Some(why) = missing_prerequisite() {
        if require_all() {
            panic!("attach_loop needs root and loop devices (OMNIDISK_REQUIRE_ALL=1): {why}");
        }
        eprintln!("SKIPPED {TEST}: {why}");
        return;
    }
    let Some(moto) = start_moto(TEST) else {
        return;
    };
    let instance = moto.run_instances(1).await.expect("RunInstances").remove(0);
    let root = tempfile::tempdir().expect("tempdir");
    let sim = AttachSimulator::new(moto.endpoint(), &instance, root.path())
        .await
        .expect("simulator");

    let controller: Arc<dyn Provider> = (omnidisk_provider_aws_ebs::FACTORY.create)(InitRequest {
        instance: "ebs".into(),
        settings_toml: settings_toml(&moto, FAST_WAITS),
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
        settings_toml: settings_toml(&moto, &format!("{FAST_WAITS}\n{node_section}")),
        node_name: "node-1".into(),
        mode: "node".into(),
    })
    .await
    .expect("node provider");

    // The instance's root volume is not simulated.
    let first = sim.sync().await.expect("first pass");
    assert!(first.is_empty(), "{first:?}");

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
    assert!(sim.device(a).is_none());
    let report = sim.sync().await.expect("pass after attach");
    let mut appeared = report.appeared.clone();
    appeared.sort();
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(appeared, expected, "{report:?}");
    let dev_a = sim.device(a).expect("A's device");
    let dev_b = sim.device(b).expect("B's device");
    assert_ne!(dev_a.name, dev_b.name);
    assert_eq!(dev_a.size_bytes, GIB as u64);
    assert_eq!(kernel_size(&dev_a.loop_device), GIB as u64);
    assert_eq!(dev_a.published.as_deref(), Some(published_a.as_str()));
    assert!(sim.sync().await.expect("idle pass").is_empty());

    for (vol, ctx, dev) in [(a, ctx_a, &dev_a), (b, ctx_b, &dev_b)] {
        let found = node.find_device(find(vol, ctx)).await.expect("find_device");
        assert_eq!(Path::new(&found.device_path), dev.path);
        assert!(
            same_device(Path::new(&found.device_path), &dev.loop_device),
            "{} is not {}",
            found.device_path,
            dev.loop_device.display()
        );
    }

    // A stale link to B's device while A's device is present elsewhere:
    // the serial scan finds A's real device.
    sim.point_by_id(a, &dev_b.name).expect("stale link");
    let found = node
        .find_device(find(a, ctx_a))
        .await
        .expect("find_device after scan");
    assert!(
        same_device(Path::new(&found.device_path), &dev_a.loop_device),
        "{found:?}"
    );
    assert!(
        !same_device(Path::new(&found.device_path), &dev_b.loop_device),
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
    let report = sim.sync().await.expect("pass after detach");
    assert_eq!(report.removed, vec![a.clone()], "{report:?}");
    assert!(sim.device(a).is_none());
    assert!(!dev_a.path.exists(), "A's device node went with the detach");
    assert_eq!(
        std::fs::read_link(sim.by_id_path(a).expect("path")).expect("the stale link stays"),
        Path::new("../..").join(&dev_b.name)
    );
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
        &dev_b.name,
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
    assert!(same_device(
        Path::new(&found.device_path),
        &dev_b.loop_device
    ));

    // Growing B in moto grows its loop device.
    let grown = controller
        .expand_volume(ExpandVolumeRequest {
            volume_id: b.clone(),
            required_bytes: 2 * GIB,
            ..ExpandVolumeRequest::default()
        })
        .await
        .expect("expand");
    assert_eq!(grown.capacity_bytes, 2 * GIB);
    let report = sim.sync().await.expect("pass after expand");
    assert_eq!(report.grown, vec![b.clone()], "{report:?}");
    assert_eq!(kernel_size(&dev_b.loop_device), 2 * GIB as u64);
    assert_eq!(sim.device(b).expect("B").size_bytes, 2 * GIB as u64);

    // Data written to B survives detach and re-attach, as on EBS.
    let marker = b"written before the detach";
    {
        let mut disk = std::fs::OpenOptions::new()
            .write(true)
            .open(&dev_b.loop_device)
            .expect("open B's device");
        disk.seek(SeekFrom::Start(1 << 20)).expect("seek");
        disk.write_all(marker).expect("write");
        disk.sync_all().expect("sync");
    }
    controller
        .detach_volume(DetachRequest {
            volume_id: b.clone(),
            node_id: instance.clone(),
        })
        .await
        .expect("detach B");
    assert_eq!(sim.sync().await.expect("pass").removed, vec![b.clone()]);
    controller
        .attach_volume(AttachRequest {
            volume_id: b.clone(),
            node_id: instance.clone(),
            ..AttachRequest::default()
        })
        .await
        .expect("re-attach B");
    assert_eq!(sim.sync().await.expect("pass").appeared, vec![b.clone()]);
    let again = sim.device(b).expect("B's device again");
    let mut read = vec![0u8; marker.len()];
    let mut disk = std::fs::File::open(&again.loop_device).expect("open B's device");
    disk.seek(SeekFrom::Start(1 << 20)).expect("seek");
    disk.read_exact(&mut read).expect("read");
    assert_eq!(&read, marker);
    drop(disk);

    // Deleting the volumes removes their files.
    controller
        .detach_volume(DetachRequest {
            volume_id: b.clone(),
            node_id: instance.clone(),
        })
        .await
        .expect("detach B again");
    for (vol, _) in &volumes {
        controller
            .delete_volume(VolumeRef {
                volume_id: vol.clone(),
            })
            .await
            .expect("delete");
    }
    sim.sync().await.expect("pass after delete");
    assert!(sim.devices().is_empty());
    let files = std::fs::read_dir(root.path().join("volumes"))
        .expect("volume files")
        .count();
    assert_eq!(files, 0, "volume files left after delete");
}
