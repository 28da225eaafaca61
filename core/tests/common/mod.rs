//! The in-process gRPC harness: the real server on a unix socket in a temp
//! dir, fake provider instances and a fake mounter, driven by the real
//! generated clients.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use omnidisk::client::{CsiClient, connect};
use omnidisk::mount::fake::FakeMounter;
use omnidisk::routing::Registry;
use omnidisk::{Driver, Mode, NodeSettings, server};
use omnidisk_provider_api::testing::{FakeProvider, FakeSettings};
use tokio::sync::oneshot;

/// A running driver and a client connected to it.
pub struct Harness {
    pub client: CsiClient,
    pub driver: Arc<Driver>,
    pub fakes: Vec<(String, FakeProvider)>,
    pub mounter: Arc<FakeMounter>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    /// The fake behind instance `name`.
    pub fn fake(&self, name: &str) -> &FakeProvider {
        &self
            .fakes
            .iter()
            .find(|(n, _)| n == name)
            .expect("no such fake")
            .1
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Starts a driver in `mode` on node `node-1` with the given fake instances.
pub async fn start(mode: Mode, instances: &[(&str, FakeSettings)]) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut registry = Registry::default();
    let mut fakes = Vec::new();
    for (name, settings) in instances {
        let fake = FakeProvider::new(name, "node-1", settings.clone());
        registry.insert(name, Arc::new(fake.clone()));
        fakes.push((name.to_string(), fake));
    }
    let mounter = Arc::new(FakeMounter::new());
    let node = NodeSettings {
        state_dir: dir.path().join("state"),
        kubelet_dir: dir.path().to_path_buf(),
        ..NodeSettings::default()
    };
    let driver = Arc::new(Driver::new(
        registry,
        "node-1".into(),
        mode,
        node,
        mounter.clone(),
    ));
    let socket = dir.path().join("csi.sock");
    let listener = server::bind_socket(&socket).expect("bind");
    driver.set_ready();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = driver.clone();
    let task = tokio::spawn(async move {
        server::serve(serving, listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    let client = connect(&socket).await.expect("connect");
    Harness {
        client,
        driver,
        fakes,
        mounter,
        dir,
        socket,
        stop: Some(stop),
        task: Some(task),
    }
}

/// A single-node-writer mount capability.
pub fn mount_cap() -> omnidisk::generated::csi::VolumeCapability {
    use omnidisk::generated::csi::volume_capability::{AccessMode, AccessType, MountVolume};
    omnidisk::generated::csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: 1 }),
    }
}

/// A single-node-writer block capability.
pub fn block_cap() -> omnidisk::generated::csi::VolumeCapability {
    use omnidisk::generated::csi::volume_capability::{AccessMode, AccessType, BlockVolume};
    omnidisk::generated::csi::VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode { mode: 1 }),
    }
}
