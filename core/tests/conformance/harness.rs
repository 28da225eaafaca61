//! A driver built the way `main.rs` builds it — configuration text parsed by
//! `Config::parse`, instances created by `providers::build_registry` (so a
//! `library = ...` instance goes through the real dylib loader) — served on a
//! unix socket in a temp dir and driven by the generated CSI clients.
//!
//! Only the mounter is a fake: these runs exercise the controller path and
//! NodeGetInfo, not mounts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use omnidisk::client::{CsiClient, connect};
use omnidisk::config::Config;
use omnidisk::mount::fake::FakeMounter;
use omnidisk::providers::build_registry;
use omnidisk::{Driver, Mode, server};
use tokio::sync::oneshot;

/// The node name the driver runs as.
pub const NODE_NAME: &str = "conformance-node";

/// How a provider instance is configured: compiled in, or as a library.
#[derive(Debug, Clone)]
pub enum Source {
    /// `kind = "<kind>"`: a kind compiled into this build.
    Builtin { kind: String },
    /// `library = "<file>"` in `plugin_dir`, which must report `kind`.
    Library {
        plugin_dir: PathBuf,
        file: String,
        kind: String,
    },
}

/// The configuration text of a driver with one instance `name` whose own
/// settings are `settings` (TOML key/value lines, sub-tables inline).
pub fn config_text(name: &str, source: &Source, settings: &str, state_dir: &Path) -> String {
    let (driver, instance_head) = match source {
        Source::Builtin { kind } => (String::new(), format!("kind = {kind:?}\n")),
        Source::Library {
            plugin_dir,
            file,
            kind,
        } => (
            format!(
                "[driver]\nplugin_dir = {:?}\nprovider_call_timeout_seconds = 120\n\n",
                plugin_dir.display().to_string()
            ),
            format!("library = {file:?}\nkind = {kind:?}\n"),
        ),
    };
    format!(
        "{driver}[node]\nstate_dir = {:?}\nkubelet_dir = {:?}\n\n[providers.{name}]\n{instance_head}{settings}\n",
        state_dir.display().to_string(),
        state_dir
            .parent()
            .unwrap_or(state_dir)
            .display()
            .to_string()
    )
}

/// A running driver and a client connected to it.
pub struct Served {
    pub client: CsiClient,
    pub driver: Arc<Driver>,
    /// Holds the socket and the node state; removed when the run ends.
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Served {
    /// Builds the driver from `config` and serves it in mode `all`.
    pub async fn start(
        instance: &str,
        source: &Source,
        settings: &str,
    ) -> Result<Self, omnidisk::config::ConfigError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = config_text(instance, source, settings, &dir.path().join("state"));
        let config = Config::parse(&text, Some(Path::new("conformance.toml")))?;
        let registry = build_registry(&config, NODE_NAME, Mode::All).await?;
        let driver = Arc::new(Driver::new(
            registry,
            NODE_NAME.into(),
            Mode::All,
            config.node.clone(),
            Arc::new(FakeMounter::new()),
        ));
        let socket = dir.path().join("csi.sock");
        let listener = server::bind_socket(&socket).expect("bind the CSI socket");
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
        let client = connect(&socket).await.expect("connect to the CSI socket");
        Ok(Self {
            client,
            driver,
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        })
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
