//! The EBS node life cycle for real: the driver built from configuration
//! text (an aws-ebs instance on a local moto), served over gRPC on a unix
//! socket with the real Linux mounter, and the EBS attachment simulator
//! (`omnidisk_provider_aws_ebs::attach_sim`) playing the node's side of
//! attachments on loop devices: a device appears under the instance's
//! device root some time after ControllerPublish, grows after
//! ControllerExpand and goes after ControllerUnpublish.
//!
//! Covered: CreateVolume → ControllerPublish → NodeStage (real mkfs) →
//! NodePublish → write → ControllerExpand → NodeExpand (the filesystem sees
//! the new size in NodeGetVolumeStats) → NodeUnpublish → NodeUnstage →
//! ControllerUnpublish → DeleteVolume, for xfs and ext4 (online ext4
//! growth needs CAP_SYS_RESOURCE; without it the test checks that
//! NodeExpand reports resize2fs's refusal and keeps the data), and a stale
//! by-id link to another volume's device: NodeStage fails clearly, formats
//! and mounts nothing.
//!
//! Needs root (loop devices, mkfs, mount) and moto; without them the tests
//! print SKIPPED, and fail under `OMNIDISK_REQUIRE_ALL=1`. Build with
//! `--features aws-ebs` (e.g. `--features "all-providers fake"`).

#![allow(clippy::unwrap_used)]

mod loopdev;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use loopdev::{Sandbox, blkid_type, has_capability, have_root};
use omnidisk::client::{CsiClient, connect};
use omnidisk::config::Config;
use omnidisk::generated::csi;
use omnidisk::generated::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use omnidisk::mount::Mounter;
use omnidisk::mount::linux::LinuxMounter;
use omnidisk::providers::build_registry;
use omnidisk::{Driver, Mode, NodeSettings, server};
use omnidisk_provider_aws_ebs::attach_sim::{AttachSimulator, SimDevice};
use omnidisk_provider_aws_ebs::moto::{Inventory, Moto, ZONE};
use tokio::sync::oneshot;
use tonic::Code;

const GIB: i64 = 1 << 30;
const INSTANCE: &str = "ebs";
const SINGLE_NODE_WRITER: i32 = 1;
/// How often the simulator looks at moto: devices appear within this.
const SIM_PERIOD: Duration = Duration::from_millis(100);
/// How long the tests wait for the simulator to catch up.
const SIM_WAIT: Duration = Duration::from_secs(20);

/// A driver serving one aws-ebs instance on moto, on a node played by the
/// attachment simulator. Field order is drop order: the server stops, the
/// sandbox unmounts what is left under it, then the simulator detaches its
/// loop devices and moto stops.
struct Rig {
    client: CsiClient,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    sandbox: Sandbox,
    sim: AttachSimulator,
    moto: Moto,
    before: Inventory,
}

/// Root and loop devices: skip (or fail under OMNIDISK_REQUIRE_ALL=1).
fn prerequisites(test: &str) -> bool {
    if !have_root(test) {
        return false;
    }
    if !Path::new("/dev/loop-control").exists() {
        let reason = format!("{test}: no /dev/loop-control");
        assert!(
            std::env::var(loopdev::REQUIRE_ALL).as_deref() != Ok("1"),
            "{reason}, and {}=1 forbids skipping",
            loopdev::REQUIRE_ALL
        );
        eprintln!("SKIPPED {reason}");
        return false;
    }
    true
}

fn start_moto(test: &str) -> Option<Moto> {
    match Moto::start() {
        Ok(moto) => Some(moto),
        Err(e) => {
            assert!(
                std::env::var(loopdev::REQUIRE_ALL).as_deref() != Ok("1"),
                "{test}: moto is unavailable ({e}), and {}=1 forbids skipping",
                loopdev::REQUIRE_ALL
            );
            eprintln!("SKIPPED {test}: {e}");
            None
        }
    }
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

impl Rig {
    /// Everything up and serving; `None` after SKIPPED.
    async fn start(test: &str, watch: bool, device_wait_seconds: u64) -> Option<Self> {
        if !prerequisites(test) {
            return None;
        }
        let moto = start_moto(test)?;
        let instance = moto.run_instances(1).await.unwrap().remove(0);
        let before = moto.inventory().await.unwrap();
        let sandbox = Sandbox::new();
        let mut sim = AttachSimulator::new(moto.endpoint(), &instance, &sandbox.join("node"))
            .await
            .unwrap();
        if watch {
            sim.watch(SIM_PERIOD);
        }
        let settings = moto.settings_toml(&format!(
            r#"cluster_id = "ebs-node"
api_timeout_seconds = 10
waits = {{ poll_initial_ms = 20, poll_max_ms = 200, batch_window_ms = 10, create_seconds = 20, attach_seconds = 20, detach_seconds = 20, modify_seconds = 20 }}
node = {{ instance_id = "{instance}", zone = "{ZONE}", instance_type = "m5.large", dev_root = "{}", sys_root = "{}", device_wait_seconds = {device_wait_seconds} }}
"#,
            utf8(sim.dev_root()),
            utf8(sim.sys_root()),
        ));
        let text = format!(
            "[node]\nstate_dir = \"{}\"\nkubelet_dir = \"{}\"\n\n[providers.{INSTANCE}]\nkind = \"aws-ebs\"\n{settings}",
            utf8(&sandbox.join("state")),
            utf8(&sandbox.join(""))
        );
        let config = Config::parse(&text, Some(Path::new("ebs-node.toml"))).unwrap();
        let registry = build_registry(&config, "ebs-node", Mode::All)
            .await
            .unwrap();
        let driver = Arc::new(Driver::new(
            registry,
            "ebs-node".into(),
            Mode::All,
            config.node.clone(),
            Arc::new(LinuxMounter::new(config.node.clone())),
        ));
        let socket = sandbox.join("csi.sock");
        let listener = server::bind_socket(&socket).unwrap();
        driver.set_ready();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::serve(driver, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        let client = connect(&socket).await.unwrap();
        Some(Self {
            client,
            stop: Some(stop),
            task: Some(task),
            sandbox,
            sim,
            moto,
            before,
        })
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn controller(&self) -> csi::controller_client::ControllerClient<tonic::transport::Channel> {
        self.client.controller.clone()
    }

    fn node(&self) -> csi::node_client::NodeClient<tonic::transport::Channel> {
        self.client.node.clone()
    }

    async fn node_info(&self) -> csi::NodeGetInfoResponse {
        self.node()
            .node_get_info(csi::NodeGetInfoRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    async fn create(&self, name: &str, topology: Option<csi::Topology>) -> csi::Volume {
        self.controller()
            .create_volume(csi::CreateVolumeRequest {
                name: name.into(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: GIB,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![mount_cap("")],
                parameters: [("type".to_owned(), INSTANCE.to_owned())].into(),
                accessibility_requirements: topology.map(|t| csi::TopologyRequirement {
                    requisite: vec![t.clone()],
                    preferred: vec![t],
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
    }

    async fn publish(
        &self,
        volume_id: &str,
        node_id: &str,
    ) -> csi::ControllerPublishVolumeResponse {
        self.controller()
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: volume_id.into(),
                node_id: node_id.into(),
                volume_capability: Some(mount_cap("")),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn unpublish(&self, volume_id: &str, node_id: &str) {
        self.controller()
            .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                volume_id: volume_id.into(),
                node_id: node_id.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn delete(&self, volume_id: &str) {
        self.controller()
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: volume_id.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn stage(
        &self,
        volume_id: &str,
        context: &csi::ControllerPublishVolumeResponse,
        staging: &Path,
        fs: &str,
    ) -> Result<(), tonic::Status> {
        self.node()
            .node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: volume_id.into(),
                publish_context: context.publish_context.clone(),
                staging_target_path: utf8(staging).into(),
                volume_capability: Some(mount_cap(fs)),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    async fn total_bytes(&self, volume_id: &str, path: &Path) -> i64 {
        let stats = self
            .node()
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: volume_id.into(),
                volume_path: utf8(path).into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        stats
            .usage
            .iter()
            .find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32)
            .unwrap_or_else(|| panic!("no byte usage in {stats:?}"))
            .total
    }

    /// Waits until the simulator's view of `volume_id` satisfies `done`
    /// (the background watcher acts on its own schedule).
    async fn await_device(
        &self,
        volume_id: &str,
        what: &str,
        done: impl Fn(Option<&SimDevice>) -> bool,
    ) -> Option<SimDevice> {
        let deadline = tokio::time::Instant::now() + SIM_WAIT;
        loop {
            let device = self.sim.device(volume_id);
            if done(device.as_ref()) {
                return device;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} within {SIM_WAIT:?}; simulator error: {:?}",
                self.sim.last_error()
            );
            tokio::time::sleep(SIM_PERIOD / 2).await;
        }
    }

    /// Fails if a volume or snapshot was left behind in moto.
    async fn assert_moto_clean(&self) {
        let left = self.moto.added_since(&self.before).await.unwrap();
        assert!(left.is_empty(), "left behind in moto: {left:?}");
    }
}

fn mount_cap(fs: &str) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: SINGLE_NODE_WRITER,
        }),
    }
}

fn mounted(path: &Path) -> bool {
    LinuxMounter::new(NodeSettings::default())
        .find_mount(path)
        .expect("mount table")
        .is_some()
}

/// Mount points of the filesystem on block device `device`, from the
/// kernel's mount table (by device number: the recorded source is whatever
/// link the driver mounted through).
fn mounts_of(device: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(device).unwrap().rdev();
    let number = omnidisk::mount::DeviceNumber {
        major: rustix::fs::major(rdev),
        minor: rustix::fs::minor(rdev),
    };
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    omnidisk::mount::parse_mountinfo(&text)
        .unwrap()
        .into_iter()
        .filter(|m| m.device == number)
        .map(|m| m.mount_point)
        .collect()
}

/// `path` as the mount table spells it.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap()
}

async fn life_cycle(test: &str, fs: &str, can_grow: bool) {
    let Some(rig) = Rig::start(test, true, 20).await else {
        return;
    };
    let info = rig.node_info().await;
    assert_eq!(info.node_id, rig.sim.instance_id());
    let volume = rig
        .create(&format!("pvc-{fs}"), info.accessible_topology.clone())
        .await;
    let id = volume.volume_id.clone();
    assert_eq!(volume.capacity_bytes, GIB);

    let context = rig.publish(&id, &info.node_id).await;
    let staging = rig.sandbox.join("staging");
    let target = rig.sandbox.join("pods/a/mount");
    // NodeStage itself waits for the device the simulator brings up.
    rig.stage(&id, &context, &staging, fs).await.expect("stage");
    let provider_id = id.rsplit('.').next().unwrap().to_owned();
    let device = rig
        .sim
        .device(&provider_id)
        .expect("the attached volume's device");
    assert_eq!(blkid_type(&device.loop_device), fs);
    assert!(mounted(&staging));
    assert_eq!(mounts_of(&device.loop_device), vec![canonical(&staging)]);
    // Staging again is a no-op.
    rig.stage(&id, &context, &staging, fs)
        .await
        .expect("stage again");

    rig.node()
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: id.clone(),
            publish_context: context.publish_context.clone(),
            staging_target_path: utf8(&staging).into(),
            target_path: utf8(&target).into(),
            volume_capability: Some(mount_cap(fs)),
            ..Default::default()
        })
        .await
        .expect("publish");
    std::fs::write(target.join("data.txt"), b"kept through growth").unwrap();
    let before = rig.total_bytes(&id, &target).await;
    assert!(before > 0 && before <= GIB, "{before}");

    let expanded = rig
        .controller()
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: id.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 2 * GIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(mount_cap(fs)),
            ..Default::default()
        })
        .await
        .expect("ControllerExpandVolume")
        .into_inner();
    assert_eq!(expanded.capacity_bytes, 2 * GIB);
    assert!(expanded.node_expansion_required);
    rig.await_device(&provider_id, "the device grows to 2 GiB", |d| {
        d.is_some_and(|d| d.size_bytes == 2 * GIB as u64)
    })
    .await;

    let result = rig
        .node()
        .node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: utf8(&target).into(),
            staging_target_path: utf8(&staging).into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 2 * GIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(mount_cap(fs)),
            ..Default::default()
        })
        .await;
    if can_grow {
        let grown = result.expect("NodeExpandVolume").into_inner();
        assert_eq!(grown.capacity_bytes, 2 * GIB);
        let after = rig.total_bytes(&id, &target).await;
        assert!(
            after > before + GIB / 2,
            "{fs}: the filesystem grew from {before} to only {after} bytes"
        );
    } else {
        let err = result.expect_err("growing ext4 online needs CAP_SYS_RESOURCE");
        assert_eq!(err.code(), Code::Internal, "{err:?}");
        assert!(err.message().contains("resize2fs"), "{}", err.message());
    }
    assert_eq!(
        std::fs::read(target.join("data.txt")).unwrap(),
        b"kept through growth"
    );

    rig.node()
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: utf8(&target).into(),
        })
        .await
        .expect("unpublish");
    assert!(!mounted(&target));
    rig.node()
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: utf8(&staging).into(),
        })
        .await
        .expect("unstage");
    assert!(!mounted(&staging));
    assert!(mounts_of(&device.loop_device).is_empty());

    rig.unpublish(&id, &info.node_id).await;
    rig.await_device(&provider_id, "the device goes after the detach", |d| {
        d.is_none()
    })
    .await;
    assert!(!device.path.exists());
    rig.delete(&id).await;
    rig.assert_moto_clean().await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_life_cycle_on_a_simulated_ebs_node() {
    if !cfg!(feature = "aws-ebs") {
        // The aws-ebs kind is not compiled in: nothing to drive.
        return must_have_aws_ebs("xfs_life_cycle_on_a_simulated_ebs_node");
    }
    life_cycle("xfs_life_cycle_on_a_simulated_ebs_node", "xfs", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_life_cycle_on_a_simulated_ebs_node() {
    const TEST: &str = "ext4_life_cycle_on_a_simulated_ebs_node";
    if !cfg!(feature = "aws-ebs") {
        return must_have_aws_ebs(TEST);
    }
    // Online ext4 growth (EXT4_IOC_RESIZE_FS) needs CAP_SYS_RESOURCE, which
    // some sandboxes drop even for root.
    let can_grow = has_capability(24);
    if !can_grow {
        eprintln!("{TEST}: no CAP_SYS_RESOURCE: checking that NodeExpand reports the refusal");
    }
    life_cycle(TEST, "ext4", can_grow).await;
}

/// Nothing is mounted at `staging`, and `other` is neither mounted nor
/// formatted: a refused stage did no harm.
fn assert_untouched(staging: &Path, other: &SimDevice) {
    assert!(!mounted(staging), "{} is mounted", staging.display());
    assert!(
        mounts_of(&other.loop_device).is_empty(),
        "{} is mounted",
        other.name
    );
    assert_eq!(
        blkid_type(&other.loop_device),
        "",
        "{} must not be formatted",
        other.name
    );
}

fn must_have_aws_ebs(test: &str) {
    assert!(
        std::env::var(loopdev::REQUIRE_ALL).as_deref() != Ok("1"),
        "{test}: the core's cargo feature `aws-ebs` is off, and {}=1 forbids skipping",
        loopdev::REQUIRE_ALL
    );
    eprintln!("SKIPPED {test}: the core's cargo feature `aws-ebs` is off (use --features aws-ebs)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_by_id_link_to_another_volume_formats_and_mounts_nothing() {
    const TEST: &str = "a_stale_by_id_link_to_another_volume_formats_and_mounts_nothing";
    if !cfg!(feature = "aws-ebs") {
        return must_have_aws_ebs(TEST);
    }
    // No watcher: the test decides when devices appear. A short device
    // wait, since the first stage is meant to run out of it.
    let Some(rig) = Rig::start(TEST, false, 2).await else {
        return;
    };
    let info = rig.node_info().await;
    let a = rig.create("pvc-a", info.accessible_topology.clone()).await;
    let b = rig.create("pvc-b", info.accessible_topology.clone()).await;
    let local = |v: &csi::Volume| v.volume_id.rsplit('.').next().unwrap().to_owned();
    let (a_local, b_local) = (local(&a), local(&b));

    // B is attached and its device is up, unformatted.
    rig.publish(&b.volume_id, &info.node_id).await;
    rig.sim.sync().await.unwrap();
    let dev_b = rig.sim.device(&b_local).expect("B's device");
    assert_eq!(blkid_type(&dev_b.loop_device), "");

    // A is attached in EC2, but its device has not appeared yet; a by-id
    // link left from an earlier attachment names B's device.
    let context_a = rig.publish(&a.volume_id, &info.node_id).await;
    rig.sim.point_by_id(&a_local, &dev_b.name).unwrap();
    let staging = rig.sandbox.join("staging-a");
    let err = rig
        .stage(&a.volume_id, &context_a, &staging, "ext4")
        .await
        .expect_err("a stale link must not lead to B's device");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains(&a_local) && err.message().contains("did not appear"),
        "{}",
        err.message()
    );
    assert_untouched(&staging, &dev_b);

    // Worse: A's attach-time device name is also a stale alias of B's
    // device. Refused at once, naming the volume found there.
    let published_a = &context_a.publish_context["devicePath"];
    std::os::unix::fs::symlink(
        &dev_b.name,
        rig.sim
            .dev_root()
            .join(published_a.trim_start_matches("/dev/")),
    )
    .unwrap();
    let err = rig
        .stage(&a.volume_id, &context_a, &staging, "ext4")
        .await
        .expect_err("an alias to B's device must be refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains(&b_local.replace('-', "")),
        "the message names the volume on that device: {}",
        err.message()
    );
    assert_untouched(&staging, &dev_b);

    // Once A's device really appears (udev rewrites its links), staging
    // works and lands on A's device, not B's.
    rig.sim.sync().await.unwrap();
    let dev_a = rig.sim.device(&a_local).expect("A's device");
    rig.stage(&a.volume_id, &context_a, &staging, "ext4")
        .await
        .expect("stage A on its own device");
    assert_eq!(mounts_of(&dev_a.loop_device), vec![canonical(&staging)]);
    assert_eq!(blkid_type(&dev_a.loop_device), "ext4");
    assert_eq!(
        blkid_type(&dev_b.loop_device),
        "",
        "B must not be formatted"
    );

    rig.node()
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: a.volume_id.clone(),
            staging_target_path: utf8(&staging).into(),
        })
        .await
        .unwrap();
    for volume in [&a, &b] {
        rig.unpublish(&volume.volume_id, &info.node_id).await;
        rig.delete(&volume.volume_id).await;
    }
    rig.sim.sync().await.unwrap();
    assert!(rig.sim.devices().is_empty());
    rig.assert_moto_clean().await;
    rig.stop().await;
}
