//! omnidisk: one CSI driver for AWS EBS, Alibaba Cloud disks and local LVM.
//!
//! The crate is laid out along the path of a call: [`server`] accepts gRPC on
//! a unix socket, [`csi`] holds one module per CSI service plus the
//! conversions and validation, [`routing`] finds the provider instance that
//! owns a volume, and [`mount`] does the node's filesystem work. Providers are
//! reached only through `omnidisk_provider_api::Provider`.

pub mod cli;
pub mod client;
pub mod config;
pub mod csi;
pub mod doctor;
pub mod error;
pub mod generated;
pub mod ids;
pub mod locks;
pub mod logging;
pub mod metrics;
pub mod mount;
pub mod plugin;
pub mod providers;
pub mod routing;
pub mod server;

/// The CSI driver name every component registers under.
pub const DRIVER_NAME: &str = "omnidisk.csi.dev";
/// The driver's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::locks::InFlight;
use crate::mount::Mounter;
use crate::routing::Registry;

/// Which services this process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Controller service for instances that are not node-local.
    Controller,
    /// Node service, plus controller calls of this node's node-local instances.
    Node,
    /// Everything (single-node setups and tests).
    All,
}

impl Mode {
    /// The name used on the command line and in `InitRequest::mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Controller => "controller",
            Mode::Node => "node",
            Mode::All => "all",
        }
    }

    /// True when the node service is served.
    pub fn serves_node(self) -> bool {
        matches!(self, Mode::Node | Mode::All)
    }
}

/// Node-side settings: where devices live and which tools format and grow
/// filesystems. Tests point these at loop devices and temp dirs.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSettings {
    /// Root of the device tree (`/dev`).
    pub device_root: PathBuf,
    /// Filesystem created when a volume asks for none.
    pub default_fs_type: String,
    /// Overrides the max volumes per node reported by the providers (0 = theirs).
    pub max_volumes_per_node: i64,
    /// Directory holding mkfs.*, blkid, resize2fs, xfs_growfs (empty = search PATH).
    pub tools_dir: PathBuf,
    /// Where the node keeps state that must outlive a restart (the
    /// ephemeral inline volumes it created).
    pub state_dir: PathBuf,
    /// The kubelet's root directory: every staging, target and volume path
    /// must lie under it (the `--kubelet-dir` flag overrides it).
    pub kubelet_dir: PathBuf,
    /// Limits on CSI ephemeral inline volumes.
    pub ephemeral: EphemeralSettings,
}

/// `[node.ephemeral]`: which instances may serve CSI ephemeral inline
/// volumes (any pod author can ask for one) and how large they may be.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EphemeralSettings {
    /// Instances allowed to serve inline volumes. Absent: every node-local
    /// instance whose provider supports them; cloud instances only when
    /// listed here.
    pub instances: Option<Vec<String>>,
    /// Largest inline volume, a Kubernetes quantity (`10Gi`).
    pub max_size: String,
}

impl Default for EphemeralSettings {
    fn default() -> Self {
        Self {
            instances: None,
            max_size: "10Gi".into(),
        }
    }
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            device_root: PathBuf::from("/dev"),
            default_fs_type: "ext4".into(),
            max_volumes_per_node: 0,
            tools_dir: PathBuf::new(),
            state_dir: PathBuf::from("/var/lib/omnidisk"),
            kubelet_dir: PathBuf::from("/var/lib/kubelet"),
            ephemeral: EphemeralSettings::default(),
        }
    }
}

/// Everything the CSI services share.
pub struct Driver {
    /// Configured provider instances.
    pub registry: Registry,
    /// Per-volume in-flight guard.
    pub inflight: InFlight,
    /// This node's name (the `--node-id` flag).
    pub node_name: String,
    /// Which services run.
    pub mode: Mode,
    /// Node-side settings.
    pub node: NodeSettings,
    /// Mount, format and filesystem operations.
    pub mounter: Arc<dyn Mounter>,
    /// `node.kubelet_dir`, resolved once: where node paths must lie.
    pub kubelet: crate::mount::confine::KubeletDir,
    /// When `/metrics` last sampled capacity, and the lock its one refresh
    /// in flight holds (see `server::refresh_gauges`).
    pub(crate) capacity_sample: server::CapacitySample,
    ready: AtomicBool,
}

impl Driver {
    /// Assembles a driver from its parts.
    pub fn new(
        registry: Registry,
        node_name: String,
        mode: Mode,
        node: NodeSettings,
        mounter: Arc<dyn Mounter>,
    ) -> Self {
        let kubelet = crate::mount::confine::KubeletDir::new(&node.kubelet_dir);
        crate::metrics::global().allow_instances(registry.iter().map(|i| i.name.as_str()));
        Self {
            registry,
            inflight: InFlight::default(),
            node_name,
            mode,
            node,
            mounter,
            kubelet,
            capacity_sample: server::CapacitySample::default(),
            ready: AtomicBool::new(false),
        }
    }

    /// Marks the providers as initialised: Probe answers ready from now on.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Whether Probe reports ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}
