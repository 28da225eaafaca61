//! A local moto EC2 server for tests, benchmarks and the development
//! harness (feature `moto`).
//!
//! [`Moto::start`] runs `python -m moto.server` (the interpreter [`python`]
//! picks) on a free 127.0.0.1 port, waits until it answers HTTP, and kills
//! it when dropped. moto speaks the real EC2 query protocol, so the
//! provider's SDK client talks to it through `endpoint_url` exactly as it
//! talks to AWS. `scripts/install-test-deps` installs it into the project's
//! virtual environment.
//!
//! moto does not serve CopyVolumes: [`Moto::endpoint`] is a small proxy in
//! front of it ([`proxy`]) that answers CopyVolumes on the EC2 wire
//! protocol by asking moto for a volume like the source, and forwards every
//! other request unchanged.
//!
//! moto is not a faithful EC2: every state change completes at once and it
//! ships about a thousand public snapshots and a root volume per instance.
//! [`Moto::inventory`] lets a test compare what exists before and after.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod proxy;

/// The region moto is addressed in.
pub const REGION: &str = "us-east-1";

/// The zone [`Moto::run_instances`] places instances in.
pub const ZONE: &str = "us-east-1a";

/// The dummy credentials moto accepts (it checks no signatures).
pub const ACCESS_KEY_ID: &str = "testing";

/// The dummy secret key that goes with [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "testing";

/// How long a fresh moto may take to answer (its imports take a few
/// seconds on a busy two-core machine).
const START_WITHIN: Duration = Duration::from_secs(60);

/// What went wrong with the moto server.
#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    /// `python -m moto.server` cannot be imported.
    #[error(
        "moto is not installed: `{} -m moto.server` is unavailable \
         (run scripts/install-test-deps, or set OMNIDISK_PYTHON to a python with moto[server])",
        python().to_string_lossy()
    )]
    NotInstalled,
    /// The Python interpreter itself cannot be run.
    #[error("cannot run {} (moto needs it)", python().to_string_lossy())]
    Python(#[source] io::Error),
    /// The CopyVolumes proxy could not start.
    #[error("cannot start the CopyVolumes proxy in front of moto")]
    Proxy(#[source] io::Error),
    /// No free local port could be found.
    #[error("cannot find a free port on 127.0.0.1")]
    Port(#[source] io::Error),
    /// The server exited before it answered.
    #[error("moto exited before answering ({0})")]
    Exited(ExitStatus),
    /// The server did not answer in time.
    #[error("moto did not answer on {endpoint} within {waited:?}")]
    NotAnswering {
        /// The endpoint polled.
        endpoint: String,
        /// How long it was polled.
        waited: Duration,
    },
    /// An HTTP exchange with moto's own API failed.
    #[error("moto's {path} did not answer")]
    Http {
        /// The path requested.
        path: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// moto's own API answered with an error status.
    #[error("moto's {path} answered {status_line:?}")]
    Status {
        /// The path requested.
        path: &'static str,
        /// The first line of the answer.
        status_line: String,
    },
    /// An EC2 call against moto failed.
    #[error("EC2 {operation} against moto failed")]
    Ec2 {
        /// The EC2 action.
        operation: &'static str,
        /// The SDK error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// moto answered an EC2 call without what it must contain.
    #[error("EC2 {operation}: moto's answer lacks {what}")]
    Incomplete {
        /// The EC2 action.
        operation: &'static str,
        /// What was missing.
        what: &'static str,
    },
}

impl MotoError {
    fn ec2(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Ec2 {
            operation,
            source: Box::new(source),
        }
    }
}

/// The project's virtual environment that `scripts/install-test-deps` makes
/// (`OMNIDISK_VENV` moves it).
const DEFAULT_VENV: &str = "/var/cache/omnidisk/venv";

/// The Python that runs moto: `$OMNIDISK_PYTHON` when set, otherwise the
/// project's virtual environment's python when it exists, otherwise `python3`.
pub fn python() -> OsString {
    if let Some(python) = std::env::var_os("OMNIDISK_PYTHON").filter(|p| !p.is_empty()) {
        return python;
    }
    let venv = std::env::var_os("OMNIDISK_VENV")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_VENV), PathBuf::from);
    let venv_python = venv.join("bin").join("python");
    if venv_python.exists() {
        return venv_python.into_os_string();
    }
    OsString::from("python3")
}

/// Whether `python -m moto.server` can be imported here.
pub fn installed() -> Result<bool, MotoError> {
    Command::new(python())
        .arg("-c")
        .arg("import moto.server")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .map_err(MotoError::Python)
}

/// A moto server on a free 127.0.0.1 port, killed when dropped.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    port: u16,
    /// The CopyVolumes proxy in front of moto (what `endpoint` names).
    proxy: Option<proxy::CopyVolumesProxy>,
    endpoint: String,
}

impl Moto {
    /// Starts moto and waits until it answers HTTP. Blocks the calling
    /// thread for the second or two moto needs to start.
    pub fn start() -> Result<Self, MotoError> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(MotoError::Port)?;
        // moto logs a line per request on stderr: a pipe nobody drains would
        // stall it, so its output goes nowhere.
        let child = Command::new(python())
            .arg("-m")
            .arg("moto.server")
            .arg("-H")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(MotoError::Python)?;
        let mut moto = Self {
            child,
            port,
            proxy: None,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        moto.wait_until_answering()?;
        let proxy = proxy::CopyVolumesProxy::start(port).map_err(MotoError::Proxy)?;
        moto.endpoint = format!("http://127.0.0.1:{}", proxy.port());
        moto.proxy = Some(proxy);
        Ok(moto)
    }

    fn wait_until_answering(&mut self) -> Result<(), MotoError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        while started.elapsed() < START_WITHIN {
            if let Some(status) = self.child.try_wait().map_err(MotoError::Python)? {
                // Tell "not installed" from any other early death.
                return Err(if installed()? {
                    MotoError::Exited(status)
                } else {
                    MotoError::NotInstalled
                });
            }
            if self.request("GET", "/moto-api/").is_ok() {
                return Ok(());
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        Err(MotoError::NotAnswering {
            endpoint: self.endpoint.clone(),
            waited: START_WITHIN,
        })
    }

    /// `http://127.0.0.1:<port>` of the proxy in front of moto (which adds
    /// CopyVolumes), for `endpoint_url` settings.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// moto's own endpoint, without the proxy.
    pub fn moto_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port moto itself listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// One HTTP/1.0 exchange with moto's own API; returns the status line.
    fn request(&self, method: &str, path: &'static str) -> Result<String, MotoError> {
        let http = |source| MotoError::Http { path, source };
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(http)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(http)?;
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\r\n",
            self.port
        )
        .map_err(http)?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).map_err(http)?;
        let status_line = answer.lines().next().unwrap_or_default().to_owned();
        if status_line.split_whitespace().nth(1) == Some("200") {
            Ok(status_line)
        } else {
            Err(MotoError::Status { path, status_line })
        }
    }

    /// Forgets every resource (`POST /moto-api/reset`): instances, volumes
    /// and snapshots made since the start are gone.
    pub fn reset(&self) -> Result<(), MotoError> {
        self.request("POST", "/moto-api/reset").map(|_| ())
    }

    /// A plain SDK client with moto's dummy credentials, for arranging and
    /// checking state behind the provider's back.
    pub async fn client(&self) -> aws_sdk_ec2::Client {
        sdk_client(&self.endpoint).await
    }

    /// The provider settings (TOML) of an instance using this moto with
    /// static dummy keys; `extra` is appended verbatim (more keys, tables).
    /// No table header comes first, so the text also fits under a
    /// `[providers.<name>]` header of the driver's configuration.
    pub fn settings_toml(&self, extra: &str) -> String {
        format!(
            "region = \"{REGION}\"\nendpoint_url = \"{}\"\n\
             credentials = {{ source = \"static\", access_key_id = \"{ACCESS_KEY_ID}\", \
             secret_access_key = \"{SECRET_ACCESS_KEY}\" }}\n{extra}\n",
            self.endpoint
        )
    }

    /// Starts `count` m5.large instances in [`ZONE`] and returns their IDs.
    pub async fn run_instances(&self, count: usize) -> Result<Vec<String>, MotoError> {
        run_instances(&self.client().await, count).await
    }

    /// Every volume and every snapshot moto knows (including its built-in
    /// public snapshots and the instances' root volumes).
    pub async fn inventory(&self) -> Result<Inventory, MotoError> {
        let ec2 = self.client().await;
        // moto ignores paging: one call returns everything.
        let volumes = ec2
            .describe_volumes()
            .send()
            .await
            .map_err(|e| MotoError::ec2("DescribeVolumes", e))?
            .volumes()
            .iter()
            .filter_map(|v| v.volume_id())
            .map(str::to_owned)
            .collect();
        let snapshots = ec2
            .describe_snapshots()
            .send()
            .await
            .map_err(|e| MotoError::ec2("DescribeSnapshots", e))?
            .snapshots()
            .iter()
            .filter_map(|s| s.snapshot_id())
            .map(str::to_owned)
            .collect();
        Ok(Inventory { volumes, snapshots })
    }
}

impl Moto {
    /// The volumes and snapshots that exist now but did not in `before`:
    /// what a test left behind.
    pub async fn added_since(&self, before: &Inventory) -> Result<Inventory, MotoError> {
        Ok(self.inventory().await?.added_since(before))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // The proxy first, so nothing is forwarded to a dying moto.
        drop(self.proxy.take());
        if let Err(e) = self.child.kill() {
            tracing::warn!(pid = self.child.id(), error = %e, "cannot stop moto");
        }
        let _ = self.child.wait();
    }
}

/// Volume and snapshot IDs at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Volume IDs.
    pub volumes: BTreeSet<String>,
    /// Snapshot IDs.
    pub snapshots: BTreeSet<String>,
}

impl Inventory {
    /// What exists now but did not in `before`.
    pub fn added_since(&self, before: &Inventory) -> Inventory {
        Inventory {
            volumes: self.volumes.difference(&before.volumes).cloned().collect(),
            snapshots: self
                .snapshots
                .difference(&before.snapshots)
                .cloned()
                .collect(),
        }
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty() && self.snapshots.is_empty()
    }
}

/// A plain SDK client for `endpoint` with moto's dummy credentials.
pub async fn sdk_client(endpoint: &str) -> aws_sdk_ec2::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "moto",
        ))
        .load()
        .await;
    aws_sdk_ec2::Client::new(&config)
}

/// Starts `count` m5.large instances in [`ZONE`] through `ec2` and returns
/// their IDs.
pub async fn run_instances(
    ec2: &aws_sdk_ec2::Client,
    count: usize,
) -> Result<Vec<String>, MotoError> {
    let wanted = i32::try_from(count).map_err(|_| MotoError::Incomplete {
        operation: "RunInstances",
        what: "a count that fits an i32",
    })?;
    let images = ec2
        .describe_images()
        .send()
        .await
        .map_err(|e| MotoError::ec2("DescribeImages", e))?;
    let image = images
        .images()
        .first()
        .and_then(|i| i.image_id())
        .ok_or(MotoError::Incomplete {
            operation: "DescribeImages",
            what: "an image",
        })?
        .to_owned();
    let out = ec2
        .run_instances()
        .image_id(image)
        .min_count(wanted)
        .max_count(wanted)
        .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
        .placement(
            aws_sdk_ec2::types::Placement::builder()
                .availability_zone(ZONE)
                .build(),
        )
        .send()
        .await
        .map_err(|e| MotoError::ec2("RunInstances", e))?;
    let ids: Vec<String> = out
        .instances()
        .iter()
        .filter_map(|i| i.instance_id())
        .map(str::to_owned)
        .collect();
    if ids.len() != count {
        return Err(MotoError::Incomplete {
            operation: "RunInstances",
            what: "as many instances as asked for",
        });
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_difference_names_only_the_new_resources() {
        let before = Inventory {
            volumes: ["vol-root".to_owned()].into(),
            snapshots: ["snap-public".to_owned()].into(),
        };
        let after = Inventory {
            volumes: ["vol-root".to_owned(), "vol-new".to_owned()].into(),
            snapshots: ["snap-public".to_owned()].into(),
        };
        let added = after.added_since(&before);
        assert_eq!(added.volumes, ["vol-new".to_owned()].into());
        assert!(added.snapshots.is_empty());
        assert!(!added.is_empty());
        assert!(before.added_since(&before).is_empty());
    }
}
