//! The node service for real, as root, on loop devices: mkfs, mount, bind
//! mounts, read-only publishing, block volumes, statistics, expansion,
//! idempotent repeats and ephemeral inline volumes.
//!
//! Each test skips with a printed reason when not run as root, and fails
//! instead when `OMNIDISK_REQUIRE_ALL=1`.

#![allow(clippy::unwrap_used)]

mod loopdev;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use loopdev::{Sandbox, blkid_type, have_root, must_run};
use omnidisk::csi::node::NodeService;
use omnidisk::generated::csi;
use omnidisk::generated::csi::node_server::Node;
use omnidisk::generated::csi::volume_capability::{
    AccessMode, AccessType, BlockVolume, MountVolume,
};
use omnidisk::mount::linux::LinuxMounter;
use omnidisk::mount::{Mounter, fake::FakeMounter};
use omnidisk::routing::Registry;
use omnidisk::{Driver, Mode, NodeSettings};
use omnidisk_provider_api::Provider;
use omnidisk_provider_api::testing::{FAKE_NODE_KEY, FAKE_ZONE_KEY, FakeProvider, FakeSettings};
use omnidisk_provider_api::types::CreateVolumeRequest;
use tonic::{Code, Request};

const MIB: u64 = 1 << 20;
const NODE: &str = "node-1";
const SINGLE_NODE_WRITER: i32 = 1;
const SINGLE_NODE_READER_ONLY: i32 = 2;

struct Env {
    sandbox: Sandbox,
    driver: Arc<Driver>,
    node: NodeService,
    provider: FakeProvider,
}

fn settings(sandbox: &Sandbox) -> NodeSettings {
    NodeSettings {
        state_dir: sandbox.join("state"),
        kubelet_dir: sandbox.join(""),
        ..NodeSettings::default()
    }
}

fn node_local_fake() -> FakeProvider {
    FakeProvider::new(
        "fake",
        NODE,
        FakeSettings {
            attach_required: false,
            node_local: true,
            ..FakeSettings::default()
        },
    )
}

fn driver_over(
    provider: &FakeProvider,
    settings: NodeSettings,
    mounter: Arc<dyn Mounter>,
) -> Arc<Driver> {
    let mut registry = Registry::default();
    registry.insert("fake", Arc::new(provider.clone()));
    Arc::new(Driver::new(
        registry,
        NODE.into(),
        Mode::Node,
        settings,
        mounter,
    ))
}

fn env() -> Env {
    let sandbox = Sandbox::new();
    let provider = node_local_fake();
    let settings = settings(&sandbox);
    let driver = driver_over(
        &provider,
        settings.clone(),
        Arc::new(LinuxMounter::new(settings)),
    );
    Env {
        sandbox,
        node: NodeService::new(driver.clone()),
        driver,
        provider,
    }
}

impl Env {
    /// A volume of the fake provider whose device is `device`; returns its CSI ID.
    async fn volume(&self, name: &str, device: &Path) -> String {
        let volume = self
            .provider
            .create_volume(CreateVolumeRequest {
                name: name.into(),
                required_bytes: 1 << 30,
                parameters: BTreeMap::from([("device".to_owned(), device.display().to_string())]),
                ..Default::default()
            })
            .await
            .expect("create volume");
        format!("v1.fake.{}", volume.id)
    }

    /// A restarted driver: same provider backend, same state directory,
    /// nothing in memory.
    fn restarted(&self) -> NodeService {
        let settings = settings(&self.sandbox);
        NodeService::new(driver_over(
            &self.provider,
            settings.clone(),
            Arc::new(LinuxMounter::new(settings)),
        ))
    }
}

fn mount_cap(fs_type: &str, mode: i32) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs_type.into(),
            mount_flags: vec!["noatime".into()],
            ..Default::default()
        })),
        access_mode: Some(AccessMode { mode }),
    }
}

fn block_cap(mode: i32) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode { mode }),
    }
}

fn stage_req(
    volume_id: &str,
    staging: &Path,
    cap: csi::VolumeCapability,
) -> csi::NodeStageVolumeRequest {
    csi::NodeStageVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap),
        ..Default::default()
    }
}

fn publish_req(
    volume_id: &str,
    staging: &Path,
    target: &Path,
    cap: csi::VolumeCapability,
    readonly: bool,
) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap),
        readonly,
        ..Default::default()
    }
}

async fn stage(node: &NodeService, req: csi::NodeStageVolumeRequest) -> Result<(), tonic::Status> {
    node.node_stage_volume(Request::new(req)).await.map(|_| ())
}

async fn publish(
    node: &NodeService,
    req: csi::NodePublishVolumeRequest,
) -> Result<(), tonic::Status> {
    node.node_publish_volume(Request::new(req))
        .await
        .map(|_| ())
}

async fn unpublish(node: &NodeService, volume_id: &str, target: &Path) {
    node.node_unpublish_volume(Request::new(csi::NodeUnpublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.display().to_string(),
    }))
    .await
    .expect("unpublish");
}

async fn unstage(node: &NodeService, volume_id: &str, staging: &Path) {
    node.node_unstage_volume(Request::new(csi::NodeUnstageVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: staging.display().to_string(),
    }))
    .await
    .expect("unstage");
}

async fn stats(
    node: &NodeService,
    volume_id: &str,
    path: &Path,
) -> Result<csi::NodeGetVolumeStatsResponse, tonic::Status> {
    node.node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
        volume_id: volume_id.into(),
        volume_path: path.display().to_string(),
        ..Default::default()
    }))
    .await
    .map(|r| r.into_inner())
}

fn usage(
    resp: &csi::NodeGetVolumeStatsResponse,
    unit: csi::volume_usage::Unit,
) -> csi::VolumeUsage {
    resp.usage
        .iter()
        .find(|u| u.unit == unit as i32)
        .cloned()
        .unwrap_or_else(|| panic!("no {unit:?} usage in {resp:?}"))
}

fn mounted(path: &Path) -> bool {
    LinuxMounter::new(NodeSettings::default())
        .find_mount(path)
        .expect("mount table")
        .is_some()
}

fn erofs(result: std::io::Result<()>) -> bool {
    matches!(result, Err(e) if e.raw_os_error() == Some(libc::EROFS))
}

#[tokio::test]
async fn ext4_stage_publish_read_write_and_read_only_then_tear_down() {
    if !have_root("ext4_stage_publish_read_write_and_read_only_then_tear_down") {
        return;
    }
    let mut env = env();
    let device = env.sandbox.loop_device(256 * MIB).path.clone();
    let id = env.volume("pvc-ext4", &device).await;
    let staging = env.sandbox.join("staging");
    let rw_target = env.sandbox.join("pods/a/volume");
    let ro_target = env.sandbox.join("pods/b/volume");
    let cap = mount_cap("ext4", SINGLE_NODE_WRITER);

    stage(&env.node, stage_req(&id, &staging, cap.clone()))
        .await
        .expect("stage");
    assert_eq!(blkid_type(&device), "ext4");
    assert!(mounted(&staging));
    // A repeat finds the mount and changes nothing.
    stage(&env.node, stage_req(&id, &staging, cap.clone()))
        .await
        .expect("stage again");
    assert_eq!(env.sandbox.mounts_inside().len(), 1);

    publish(
        &env.node,
        publish_req(&id, &staging, &rw_target, cap.clone(), false),
    )
    .await
    .expect("publish rw");
    publish(
        &env.node,
        publish_req(&id, &staging, &ro_target, cap.clone(), true),
    )
    .await
    .expect("publish ro");
    publish(
        &env.node,
        publish_req(&id, &staging, &rw_target, cap.clone(), false),
    )
    .await
    .expect("publish rw again");
    let conflict = publish(
        &env.node,
        publish_req(&id, &staging, &rw_target, cap.clone(), true),
    )
    .await
    .expect_err("rw target republished read-only");
    assert_eq!(conflict.code(), Code::AlreadyExists, "{conflict:?}");

    std::fs::write(rw_target.join("hello.txt"), b"written through rw").expect("write through rw");
    assert_eq!(
        std::fs::read(ro_target.join("hello.txt")).unwrap(),
        b"written through rw"
    );
    assert!(
        erofs(std::fs::write(ro_target.join("nope.txt"), b"x")),
        "write through ro must fail with EROFS"
    );

    let resp = stats(&env.node, &id, &rw_target).await.expect("stats");
    let bytes = usage(&resp, csi::volume_usage::Unit::Bytes);
    let inodes = usage(&resp, csi::volume_usage::Unit::Inodes);
    assert!(
        bytes.total > 200 * MIB as i64 && bytes.total <= 256 * MIB as i64,
        "{bytes:?}"
    );
    assert!(
        bytes.used > 0 && bytes.available > 0 && bytes.available <= bytes.total - bytes.used,
        "{bytes:?}"
    );
    assert!(
        inodes.total > 1000 && inodes.used >= 12 && inodes.available == inodes.total - inodes.used,
        "{inodes:?}"
    );
    let condition = resp.volume_condition.expect("condition");
    assert!(!condition.abnormal, "{condition:?}");

    unpublish(&env.node, &id, &rw_target).await;
    unpublish(&env.node, &id, &ro_target).await;
    unpublish(&env.node, &id, &rw_target).await;
    assert!(
        !rw_target.exists() && !ro_target.exists(),
        "targets removed"
    );
    unstage(&env.node, &id, &staging).await;
    unstage(&env.node, &id, &staging).await;
    assert!(!mounted(&staging));
    assert!(env.sandbox.mounts_inside().is_empty());
    assert!(env.driver.inflight.is_empty());
}

#[tokio::test]
async fn an_existing_filesystem_keeps_its_data_across_restage_and_restart() {
    if !have_root("an_existing_filesystem_keeps_its_data_across_restage_and_restart") {
        return;
    }
    let mut env = env();
    let device = env.sandbox.loop_device(256 * MIB).path.clone();
    let id = env.volume("pvc-keep", &device).await;
    let staging = env.sandbox.join("staging");
    let target = env.sandbox.join("target");
    let cap = mount_cap("", SINGLE_NODE_WRITER);

    stage(&env.node, stage_req(&id, &staging, cap.clone()))
        .await
        .expect("stage");
    assert_eq!(blkid_type(&device), "ext4", "the default filesystem");
    let uuid = must_run(
        "blkid",
        &[
            "-p",
            "-s",
            "UUID",
            "-o",
            "value",
            &device.display().to_string(),
        ],
    );
    publish(
        &env.node,
        publish_req(&id, &staging, &target, cap.clone(), false),
    )
    .await
    .expect("publish");
    std::fs::write(target.join("keep.txt"), b"precious").unwrap();
    unpublish(&env.node, &id, &target).await;
    unstage(&env.node, &id, &staging).await;

    let node = env.restarted();
    stage(&node, stage_req(&id, &staging, cap.clone()))
        .await
        .expect("stage after restart");
    publish(
        &node,
        publish_req(&id, &staging, &target, cap.clone(), false),
    )
    .await
    .expect("publish");
    assert_eq!(std::fs::read(target.join("keep.txt")).unwrap(), b"precious");
    let again = must_run(
        "blkid",
        &[
            "-p",
            "-s",
            "UUID",
            "-o",
            "value",
            &device.display().to_string(),
        ],
    );
    assert_eq!(uuid, again, "the filesystem was not recreated");

    // Asking for another filesystem explicitly never reformats.
    unpublish(&node, &id, &target).await;
    unstage(&node, &id, &staging).await;
    let err = stage(
        &node,
        stage_req(&id, &staging, mount_cap("xfs", SINGLE_NODE_WRITER)),
    )
    .await
    .expect_err("xfs over ext4");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(blkid_type(&device), "ext4");
}

#[tokio::test]
async fn unknown_signatures_are_never_formatted_over() {
    if !have_root("unknown_signatures_are_never_formatted_over") {
        return;
    }
    let mut env = env();
    // (what is written on the device, the command, what the refusal names)
    let cases: [(&str, &[&str], &str); 5] = [
        ("swap", &["mkswap"], "swap"),
        (
            "a dos partition table",
            &["sh", "-c", "echo 'label: dos' | sfdisk -q"],
            "dos",
        ),
        (
            "a gpt partition table",
            &["sh", "-c", "echo 'label: gpt' | sfdisk -q"],
            "gpt",
        ),
        (
            "an LVM physical volume",
            &[
                "pvcreate",
                "-q",
                "--config",
                "global{activation=0} devices{use_devicesfile=0}",
            ],
            "LVM2_member",
        ),
        ("a LUKS header", &["luks"], "crypto_LUKS"),
    ];
    for (i, (what, command, named)) in cases.into_iter().enumerate() {
        let device = env.sandbox.loop_device(64 * MIB).path.clone();
        let dev = device.display().to_string();
        match command {
            ["luks"] => {
                // A LUKS1 header's magic and version, as cryptsetup writes
                // them at the start of the device.
                let mut header = vec![0u8; 4096];
                header[..6].copy_from_slice(b"LUKS\xba\xbe");
                header[6..8].copy_from_slice(&1u16.to_be_bytes());
                header[8..13].copy_from_slice(b"aes\0\0");
                header[40..44].copy_from_slice(b"xts-");
                header[72..78].copy_from_slice(b"sha256");
                header[104..108].copy_from_slice(&4096u32.to_be_bytes());
                header[108..112].copy_from_slice(&32u32.to_be_bytes());
                header[168..172].copy_from_slice(b"0123");
                std::fs::write(&device, &header).unwrap();
            }
            ["sh", "-c", script] => {
                must_run("sh", &["-c", &format!("{script} {dev}")]);
            }
            [program, args @ ..] => {
                let mut argv: Vec<&str> = args.to_vec();
                argv.push(&dev);
                must_run(program, &argv);
            }
            [] => unreachable!(),
        }
        let found_before = blkid_type(&device);
        let id = env.volume(&format!("pvc-sig-{i}"), &device).await;
        let staging = env.sandbox.join(&format!("staging-{i}"));
        let err = stage(
            &env.node,
            stage_req(&id, &staging, mount_cap("ext4", SINGLE_NODE_WRITER)),
        )
        .await
        .expect_err(what);
        assert_eq!(err.code(), Code::FailedPrecondition, "{what}: {err:?}");
        assert!(err.message().contains(named), "{what}: {}", err.message());
        assert_eq!(blkid_type(&device), found_before, "{what} was changed");
    }
    // btrfs is a filesystem, but not the one asked for: never reformatted.
    {
        let device = env.sandbox.loop_device(128 * MIB).path.clone();
        must_run("mkfs.btrfs", &["-q", &device.display().to_string()]);
        let id = env.volume("pvc-btrfs", &device).await;
        let err = stage(
            &env.node,
            stage_req(
                &id,
                &env.sandbox.join("staging-btrfs"),
                mount_cap("ext4", SINGLE_NODE_WRITER),
            ),
        )
        .await
        .expect_err("btrfs");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("btrfs"), "{}", err.message());
        assert_eq!(blkid_type(&device), "btrfs");
    }
}

/// A volume restored or cloned into a larger size: the device is larger
/// than its filesystem, and staging grows the filesystem (Kubernetes calls
/// no NodeExpandVolume then).
#[tokio::test]
async fn filesystems_smaller_than_their_device_grow_at_stage() {
    if !have_root("filesystems_smaller_than_their_device_grow_at_stage") {
        return;
    }
    let mut env = env();
    for (fs, small, large) in [("ext4", 64 * MIB, 128 * MIB), ("xfs", 320 * MIB, 480 * MIB)] {
        let (device, index) = {
            let dev = env.sandbox.loop_device(small);
            (dev.path.clone(), env.sandbox.loops().len() - 1)
        };
        let id = env.volume(&format!("pvc-grow-{fs}"), &device).await;
        let staging = env.sandbox.join(&format!("grow-{fs}"));
        let cap = mount_cap(fs, SINGLE_NODE_WRITER);
        stage(&env.node, stage_req(&id, &staging, cap.clone()))
            .await
            .unwrap();
        unstage(&env.node, &id, &staging).await;
        // The "restore": same filesystem, a larger device.
        env.sandbox.loops()[index].grow(large);
        stage(&env.node, stage_req(&id, &staging, cap))
            .await
            .unwrap();
        let st = rustix::fs::statvfs(&staging).unwrap();
        let total = st.f_blocks * st.f_frsize;
        assert!(
            total > small + (large - small) / 2,
            "{fs}: {total} bytes after staging on a {large}-byte device"
        );
        unstage(&env.node, &id, &staging).await;
    }
}

/// Copies of an XFS volume carry its UUID; they stage beside it.
#[tokio::test]
async fn xfs_copies_stage_beside_their_origin() {
    if !have_root("xfs_copies_stage_beside_their_origin") {
        return;
    }
    let mut env = env();
    let origin = env.sandbox.loop_device(320 * MIB).path.clone();
    let copy = env.sandbox.loop_device(320 * MIB).path.clone();
    let a = env.volume("pvc-xfs-origin", &origin).await;
    let cap = mount_cap("xfs", SINGLE_NODE_WRITER);
    let staging_a = env.sandbox.join("xfs-origin");
    stage(&env.node, stage_req(&a, &staging_a, cap.clone()))
        .await
        .unwrap();
    must_run(
        "dd",
        &[
            &format!("if={}", origin.display()),
            &format!("of={}", copy.display()),
            "bs=1M",
            "status=none",
        ],
    );
    let b = env.volume("pvc-xfs-copy", &copy).await;
    let staging_b = env.sandbox.join("xfs-copy");
    stage(&env.node, stage_req(&b, &staging_b, cap))
        .await
        .expect("a copy stages beside its origin");
    unstage(&env.node, &b, &staging_b).await;
    unstage(&env.node, &a, &staging_a).await;
}

#[tokio::test]
async fn stage_conflicts_and_concurrent_calls_are_refused() {
    if !have_root("stage_conflicts_and_concurrent_calls_are_refused") {
        return;
    }
    let mut env = env();
    let first = env.sandbox.loop_device(64 * MIB).path.clone();
    let second = env.sandbox.loop_device(64 * MIB).path.clone();
    let a = env.volume("pvc-a", &first).await;
    let b = env.volume("pvc-b", &second).await;
    let staging = env.sandbox.join("staging");
    let cap = mount_cap("ext4", SINGLE_NODE_WRITER);
    stage(&env.node, stage_req(&a, &staging, cap.clone()))
        .await
        .expect("stage a");
    let err = stage(&env.node, stage_req(&b, &staging, cap.clone()))
        .await
        .expect_err("b on a's path");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(
        blkid_type(&second),
        "",
        "the refused volume was not formatted"
    );

    let held = env.driver.inflight.try_acquire(&b).expect("claim");
    let err = stage(
        &env.node,
        stage_req(&b, &env.sandbox.join("other"), cap.clone()),
    )
    .await
    .expect_err("busy");
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    drop(held);

    let err = publish(
        &env.node,
        publish_req(
            &b,
            &env.sandbox.join("unstaged"),
            &env.sandbox.join("t"),
            cap,
            false,
        ),
    )
    .await
    .expect_err("publish before stage");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}

async fn expand_case(fs: &str, initial: u64, grown: u64, context: &[(&str, &str)]) {
    expand_case_with(fs, initial, grown, context, true).await;
}

/// `can_grow` false: the process lacks what growing needs (CAP_SYS_RESOURCE
/// for online ext4), so NodeExpand must fail with the tool's complaint and
/// leave the data alone.
async fn expand_case_with(
    fs: &str,
    initial: u64,
    grown: u64,
    context: &[(&str, &str)],
    can_grow: bool,
) {
    let mut env = env();
    let device = env.sandbox.loop_device(initial).path.clone();
    let id = env.volume(&format!("pvc-grow-{fs}"), &device).await;
    let staging = env.sandbox.join("staging");
    let target = env.sandbox.join("target");
    let cap = mount_cap(fs, SINGLE_NODE_WRITER);
    let mut req = stage_req(&id, &staging, cap.clone());
    req.volume_context = context
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    stage(&env.node, req).await.expect("stage");
    assert_eq!(blkid_type(&device), fs);
    publish(
        &env.node,
        publish_req(&id, &staging, &target, cap.clone(), false),
    )
    .await
    .expect("publish");
    std::fs::write(target.join("before.txt"), b"still here").unwrap();
    let before = usage(
        &stats(&env.node, &id, &target).await.unwrap(),
        csi::volume_usage::Unit::Bytes,
    )
    .total;

    env.sandbox.loops()[0].grow(grown);
    let result = env
        .node
        .node_expand_volume(Request::new(csi::NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            staging_target_path: staging.display().to_string(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: grown as i64,
                limit_bytes: 0,
            }),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        }))
        .await;
    if !can_grow {
        let err = result.expect_err("growing cannot work without the capability");
        assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
        assert!(err.message().contains("resize2fs"), "{}", err.message());
        assert_eq!(
            std::fs::read(target.join("before.txt")).unwrap(),
            b"still here"
        );
        return;
    }
    let resp = result.expect("expand").into_inner();
    assert_eq!(resp.capacity_bytes, grown as i64);
    let after = usage(
        &stats(&env.node, &id, &target).await.unwrap(),
        csi::volume_usage::Unit::Bytes,
    )
    .total;
    assert!(
        after > before + (grown - initial) as i64 / 2,
        "{fs}: filesystem grew from {before} to only {after}"
    );
    assert_eq!(
        std::fs::read(target.join("before.txt")).unwrap(),
        b"still here"
    );

    // Expanding again is a no-op that reports the same size.
    let again = env
        .node
        .node_expand_volume(Request::new(csi::NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        }))
        .await
        .expect("expand again")
        .into_inner();
    assert_eq!(again.capacity_bytes, grown as i64);
    unpublish(&env.node, &id, &target).await;
    unstage(&env.node, &id, &staging).await;
}

#[tokio::test]
async fn ext4_grows_online() {
    // Online ext4 resizing (EXT4_IOC_RESIZE_FS) needs CAP_SYS_RESOURCE,
    // which some sandboxes drop even for root.
    if !have_root("ext4_grows_online") {
        return;
    }
    let can_grow = loopdev::has_capability(24);
    if !can_grow {
        // Growth itself runs in the VM life cycle (tests/vm/lifecycle.sh,
        // step expand-thin-online); here the failure must surface clearly.
        eprintln!(
            "ext4_grows_online: no CAP_SYS_RESOURCE here: checking that NodeExpand reports resize2fs's refusal instead"
        );
    }
    // The blockSize key also checks that format options reach mkfs.
    expand_case_with(
        "ext4",
        128 * MIB,
        384 * MIB,
        &[("blockSize", "4096")],
        can_grow,
    )
    .await;
}

#[tokio::test]
async fn xfs_is_formatted_published_and_grown() {
    if !have_root("xfs_is_formatted_published_and_grown") {
        return;
    }
    // Current xfsprogs refuse filesystems below 300 MiB.
    expand_case("xfs", 320 * MIB, 640 * MIB, &[]).await;
}

#[tokio::test]
async fn block_volumes_bind_the_device_node() {
    if !have_root("block_volumes_bind_the_device_node") {
        return;
    }
    let mut env = env();
    let device = env.sandbox.loop_device(32 * MIB).path.clone();
    let id = env.volume("pvc-block", &device).await;
    let staging = env.sandbox.join("staging");
    let target = env.sandbox.join("pods/a/volumeDevices/dev");
    let ro_target = env.sandbox.join("pods/b/volumeDevices/dev");
    stage(
        &env.node,
        stage_req(&id, &staging, block_cap(SINGLE_NODE_WRITER)),
    )
    .await
    .expect("stage block");
    assert!(!mounted(&staging), "block staging mounts nothing");
    assert_eq!(blkid_type(&device), "", "block volumes are never formatted");

    publish(
        &env.node,
        publish_req(&id, &staging, &target, block_cap(SINGLE_NODE_WRITER), false),
    )
    .await
    .expect("publish");
    publish(
        &env.node,
        publish_req(&id, &staging, &target, block_cap(SINGLE_NODE_WRITER), false),
    )
    .await
    .expect("publish again");
    publish(
        &env.node,
        publish_req(
            &id,
            &staging,
            &ro_target,
            block_cap(SINGLE_NODE_READER_ONLY),
            false,
        ),
    )
    .await
    .expect("publish ro");

    let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .expect("open bound device");
        file.seek(SeekFrom::Start(MIB)).unwrap();
        file.write_all(&pattern).unwrap();
        file.sync_all().unwrap();
    }
    let mut read_back = vec![0u8; pattern.len()];
    let mut raw = std::fs::File::open(&device).unwrap();
    raw.seek(SeekFrom::Start(MIB)).unwrap();
    raw.read_exact(&mut read_back).unwrap();
    assert_eq!(
        read_back, pattern,
        "bytes written through the target reach the device"
    );
    // The kernel does not apply a read-only mount to writes through device
    // nodes; what the node can do is make the binding read-only, and the
    // container runtime's device rules enforce it.
    let ro_binding = LinuxMounter::new(NodeSettings::default())
        .find_mount(&ro_target)
        .unwrap()
        .expect("ro target bound");
    assert!(ro_binding.is_read_only(), "{ro_binding:?}");
    let rw_binding = LinuxMounter::new(NodeSettings::default())
        .find_mount(&target)
        .unwrap()
        .unwrap();
    assert!(!rw_binding.is_read_only(), "{rw_binding:?}");

    let resp = stats(&env.node, &id, &target).await.expect("stats");
    assert_eq!(resp.usage.len(), 1, "{resp:?}");
    assert_eq!(
        usage(&resp, csi::volume_usage::Unit::Bytes).total,
        32 * MIB as i64
    );

    unpublish(&env.node, &id, &target).await;
    unpublish(&env.node, &id, &ro_target).await;
    assert!(!target.exists() && !ro_target.exists());
    unstage(&env.node, &id, &staging).await;
    assert!(env.sandbox.mounts_inside().is_empty());
}

#[tokio::test]
async fn stats_report_lost_mounts_and_unknown_paths() {
    if !have_root("stats_report_lost_mounts_and_unknown_paths") {
        return;
    }
    let mut env = env();
    let device = env.sandbox.loop_device(64 * MIB).path.clone();
    let id = env.volume("pvc-stats", &device).await;
    let staging = env.sandbox.join("staging");
    let target = env.sandbox.join("target");
    let cap = mount_cap("ext4", SINGLE_NODE_WRITER);
    stage(&env.node, stage_req(&id, &staging, cap.clone()))
        .await
        .unwrap();
    publish(&env.node, publish_req(&id, &staging, &target, cap, false))
        .await
        .unwrap();

    let resp = stats(&env.node, &id, &target).await.expect("stats");
    assert!(!resp.volume_condition.expect("condition").abnormal);
    // The device node of the volume still reports its size through the
    // staging mount's source; another volume's path is not this one's.
    let err = stats(&env.node, &id, &env.sandbox.join(""))
        .await
        .expect_err("kubelet dir itself");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Someone unmounts the volume behind the driver's back: the empty
    // directory left is not a mount of the volume.
    rustix::mount::unmount(&target, rustix::mount::UnmountFlags::empty()).unwrap();
    let err = stats(&env.node, &id, &target)
        .await
        .expect_err("unmounted target");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("not a mount"), "{err:?}");
    let err = stats(&env.node, &id, Path::new("/"))
        .await
        .expect_err("host root");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let err = stats(&env.node, &id, &env.sandbox.join("nowhere"))
        .await
        .expect_err("unknown path");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = stats(&env.node, "not-an-id", &target)
        .await
        .expect_err("unknown volume");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn ephemeral_inline_volumes_are_created_and_deleted_across_a_restart() {
    if !have_root("ephemeral_inline_volumes_are_created_and_deleted_across_a_restart") {
        return;
    }
    let mut env = env();
    let device = env.sandbox.loop_device(128 * MIB).path.clone();
    let target = env.sandbox.join("pods/eph/volumes/scratch");
    let kubelet_id = "csi-5f1c0ffee";
    let context = BTreeMap::from([
        ("csi.storage.k8s.io/ephemeral".to_owned(), "true".to_owned()),
        ("csi.storage.k8s.io/pod.name".to_owned(), "eph".to_owned()),
        ("type".to_owned(), "fake".to_owned()),
        ("size".to_owned(), "64Mi".to_owned()),
        ("device".to_owned(), device.display().to_string()),
        ("blockSize".to_owned(), "1024".to_owned()),
    ]);
    let req = csi::NodePublishVolumeRequest {
        volume_id: kubelet_id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_cap("", SINGLE_NODE_WRITER)),
        volume_context: context.clone(),
        ..Default::default()
    };
    publish(&env.node, req.clone())
        .await
        .expect("publish ephemeral");
    publish(&env.node, req.clone())
        .await
        .expect("publish ephemeral again");
    assert_eq!(env.provider.volume_count(), 1);
    assert!(mounted(&target));
    assert_eq!(blkid_type(&device), "ext4");
    let block_size = must_run(
        "blkid",
        &[
            "-p",
            "-s",
            "BLOCK_SIZE",
            "-o",
            "value",
            &device.display().to_string(),
        ],
    );
    assert_eq!(block_size, "1024", "blockSize reached mkfs");
    std::fs::write(target.join("scratch"), b"tmp").unwrap();
    let state_file = env
        .sandbox
        .join("state/ephemeral")
        .join(format!("{kubelet_id}.json"));
    assert!(state_file.exists());

    let restarted = env.restarted();
    unpublish(&restarted, kubelet_id, &target).await;
    assert!(!mounted(&target) && !target.exists());
    assert_eq!(env.provider.volume_count(), 0, "the volume was deleted");
    assert!(!state_file.exists());
    unpublish(&restarted, kubelet_id, &target).await;

    let mut bad = req.clone();
    bad.volume_id = "../../etc".into();
    let err = publish(&env.node, bad)
        .await
        .expect_err("path-like kubelet id");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let mut untyped = req;
    untyped.volume_context.remove("type");
    let err = publish(&env.node, untyped).await.expect_err("no type");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

/// Needs no root: node identity and capabilities over two instances.
#[tokio::test]
async fn node_info_merges_instances_and_capabilities_are_advertised() {
    let sandbox = Sandbox::new();
    let local = node_local_fake();
    let cloud = FakeProvider::new(
        "cloud",
        "i-0123",
        FakeSettings {
            zone: "zone-b".into(),
            max_volumes_per_node: 8,
            ..FakeSettings::default()
        },
    );
    let mut registry = Registry::default();
    registry.insert("fake", Arc::new(local));
    registry.insert("cloud", Arc::new(cloud));
    let mounter: Arc<dyn Mounter> = Arc::new(FakeMounter::new());
    let driver = Arc::new(Driver::new(
        registry.clone(),
        NODE.into(),
        Mode::Node,
        settings(&sandbox),
        mounter.clone(),
    ));
    let node = NodeService::new(driver);
    let info = node
        .node_get_info(Request::new(csi::NodeGetInfoRequest {}))
        .await
        .expect("info")
        .into_inner();
    // The node-local instance knows the node by its name; the only other
    // identity, the cloud's, becomes the CSI node ID (see ids.rs).
    assert_eq!(info.node_id, "i-0123");
    assert_eq!(info.max_volumes_per_node, 8, "the smallest provider limit");
    let segments = info.accessible_topology.expect("topology").segments;
    assert_eq!(segments.get(FAKE_NODE_KEY).map(String::as_str), Some(NODE));
    assert_eq!(
        segments.get(FAKE_ZONE_KEY).map(String::as_str),
        Some("zone-b")
    );

    let overridden = NodeSettings {
        max_volumes_per_node: 3,
        ..settings(&sandbox)
    };
    let node = NodeService::new(Arc::new(Driver::new(
        registry,
        NODE.into(),
        Mode::Node,
        overridden,
        mounter,
    )));
    let info = node
        .node_get_info(Request::new(csi::NodeGetInfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.max_volumes_per_node, 3);

    let caps = node
        .node_get_capabilities(Request::new(csi::NodeGetCapabilitiesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|csi::node_service_capability::Type::Rpc(rpc)| rpc.r#type)
        })
        .collect();
    assert_eq!(kinds, [1, 2, 3, 4, 5]);
}

/// Needs no root: field validation with the fake mounter.
#[tokio::test]
async fn missing_and_malformed_fields_are_invalid_arguments() {
    let sandbox = Sandbox::new();
    let provider = node_local_fake();
    let driver = driver_over(&provider, settings(&sandbox), Arc::new(FakeMounter::new()));
    let node = NodeService::new(driver);
    let staging: PathBuf = sandbox.join("s");
    let cap = mount_cap("ext4", SINGLE_NODE_WRITER);

    let mut req = stage_req("v1.fake.vol-1", &staging, cap.clone());
    req.volume_capability = None;
    let err = stage(&node, req).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "volume_capability is required")
    );
    let err = stage(&node, stage_req("", &staging, cap.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = stage(
        &node,
        stage_req("v1.fake.vol-1", Path::new("relative"), cap.clone()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("staging_target_path"),
        "{}",
        err.message()
    );
    let err = stage(&node, stage_req("v1.nope.vol-1", &staging, cap.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let mut bad_flags = cap.clone();
    if let Some(AccessType::Mount(m)) = &mut bad_flags.access_type {
        m.mount_flags = vec!["bind".into()];
    }
    let volume = provider
        .create_volume(CreateVolumeRequest {
            name: "pvc-flags".into(),
            parameters: BTreeMap::from([("device".to_owned(), "/dev/fake-flags".to_owned())]),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = stage(
        &node,
        stage_req(&format!("v1.fake.{}", volume.id), &staging, bad_flags),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("bind"), "{}", err.message());
}
