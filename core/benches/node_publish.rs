//! NodePublishVolume + NodeUnpublishVolume of a staged ext4 volume on a
//! loop device, with real bind mounts, as gRPC round trips over the CSI unix
//! socket: what a pod start and stop cost the node plugin. Needs root.
//!
//! `cargo bench -p omnidisk --bench node_publish` (set
//! `OMNIDISK_BENCH_ITERATIONS` to change the default of 300). Prints the
//! median, p99 and extremes of each call and of the pair, and the peak
//! resident memory of the process.

#[path = "../tests/loopdev/mod.rs"]
mod loopdev;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use omnidisk::generated::csi;
use omnidisk::generated::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use omnidisk::mount::linux::LinuxMounter;
use omnidisk::routing::Registry;
use omnidisk::{Driver, Mode, NodeSettings};
use omnidisk_provider_api::Provider;
use omnidisk_provider_api::testing::{FakeProvider, FakeSettings};
use omnidisk_provider_api::types::CreateVolumeRequest;

const WARMUP: usize = 20;

fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * pct / 100.0).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{name:<22} n={:<5} median={:>9.1?} p99={:>9.1?} mean={:>9.1?} min={:>9.1?} max={:>9.1?}",
        samples.len(),
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        mean,
        samples[0],
        samples[samples.len() - 1],
    );
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    if !loopdev::have_root("node_publish benchmark") {
        return;
    }
    let iterations: usize = std::env::var("OMNIDISK_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(iterations));
}

async fn run(iterations: usize) {
    let mut sandbox = loopdev::Sandbox::new();
    let device = sandbox.loop_device(128 << 20).path.clone();
    let provider = FakeProvider::new(
        "fake",
        "bench-node",
        FakeSettings {
            attach_required: false,
            node_local: true,
            ..FakeSettings::default()
        },
    );
    let volume = provider
        .create_volume(CreateVolumeRequest {
            name: "bench".into(),
            parameters: BTreeMap::from([("device".to_owned(), device.display().to_string())]),
            ..Default::default()
        })
        .await
        .expect("create volume");
    let volume_id = format!("v1.fake.{}", volume.id);
    let mut registry = Registry::default();
    registry.insert("fake", Arc::new(provider));
    let settings = NodeSettings {
        state_dir: sandbox.join("state"),
        kubelet_dir: sandbox.join(""),
        ..NodeSettings::default()
    };
    let mounter = Arc::new(LinuxMounter::new(settings.clone()));
    let driver = Arc::new(Driver::new(
        registry,
        "bench-node".into(),
        Mode::Node,
        settings,
        mounter,
    ));
    // Through the real server on a unix socket: the round trip the kubelet sees.
    let socket = sandbox.join("csi.sock");
    let listener = omnidisk::server::bind_socket(&socket).expect("bind");
    driver.set_ready();
    tokio::spawn(omnidisk::server::serve(
        driver,
        listener,
        std::future::pending(),
    ));
    let mut node = omnidisk::client::connect(&socket)
        .await
        .expect("connect")
        .node;

    let capability = csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode { mode: 1 }),
    };
    let staging = sandbox.join("staging");
    let target = sandbox.join("pod/volume");
    node.node_stage_volume(csi::NodeStageVolumeRequest {
        volume_id: volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(capability.clone()),
        ..Default::default()
    })
    .await
    .expect("stage");

    let publish_req = csi::NodePublishVolumeRequest {
        volume_id: volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(capability),
        ..Default::default()
    };
    let unpublish_req = csi::NodeUnpublishVolumeRequest {
        volume_id: volume_id.clone(),
        target_path: target.display().to_string(),
    };

    let rss_before = peak_rss_kib();
    let mut publish = Vec::with_capacity(iterations);
    let mut unpublish = Vec::with_capacity(iterations);
    let mut pair = Vec::with_capacity(iterations);
    for i in 0..WARMUP + iterations {
        let start = Instant::now();
        node.node_publish_volume(publish_req.clone())
            .await
            .expect("publish");
        let published = Instant::now();
        node.node_unpublish_volume(unpublish_req.clone())
            .await
            .expect("unpublish");
        let done = Instant::now();
        if i >= WARMUP {
            publish.push(published - start);
            unpublish.push(done - published);
            pair.push(done - start);
        }
    }
    assert!(
        sandbox.mounts_inside().len() == 1,
        "only the staging mount is left"
    );

    println!(
        "node_publish: {iterations} iterations after {WARMUP} warm-up, ext4 on {}",
        device.display()
    );
    report("NodePublishVolume", publish);
    report("NodeUnpublishVolume", unpublish);
    report("publish+unpublish", pair);
    println!(
        "peak RSS: {} KiB before the loop, {} KiB after",
        rss_before,
        peak_rss_kib()
    );

    node.node_unstage_volume(csi::NodeUnstageVolumeRequest {
        volume_id,
        staging_target_path: staging.display().to_string(),
    })
    .await
    .expect("unstage");
}
