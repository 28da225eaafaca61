//! Helpers shared by the moto-backed test and the budget benchmark: moto
//! installation and start-up, the provider's settings against it, and a
//! plain SDK client for arranging and checking state behind its back.
//!
//! `tests/moto.rs` predates this module and keeps its own copy.

#![allow(dead_code)] // each includer uses a different subset

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The zone every test instance and volume lives in.
pub const ZONE: &str = "us-east-1a";

/// Whether missing prerequisites must fail instead of skip.
pub fn require_all() -> bool {
    std::env::var("OMNIDISK_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

fn moto_available() -> bool {
    Command::new("python3")
        .args(["-c", "import moto.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure moto is importable, installing it with pip if needed.
pub fn ensure_moto() -> Result<(), String> {
    if moto_available() {
        return Ok(());
    }
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "moto[server]"])
        .status()
        .map_err(|e| format!("cannot run pip: {e}"))?;
    if status.success() && moto_available() {
        Ok(())
    } else {
        Err(format!("pip install 'moto[server]' failed ({status})"))
    }
}

/// A moto server on a free local port, stopped on drop.
pub struct Moto {
    child: Child,
    port: u16,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Moto {
    /// Starts moto and waits until it accepts connections.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start moto_server");
        let moto = Self {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return moto;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("moto_server did not start listening on port {port}");
    }

    /// Forgets every resource (`POST /moto-api/reset`), so a second
    /// measurement starts from the same empty state as the first.
    pub fn reset(&self) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        write!(
            stream,
            "POST /moto-api/reset HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send reset");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("read reset answer");
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
            "moto reset failed: {}",
            answer.lines().next().unwrap_or_default()
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Provider settings against `endpoint`; `waits` is appended verbatim
/// (empty for the production defaults).
pub fn settings_toml(endpoint: &str, waits: &str) -> String {
    format!(
        r#"
region = "us-east-1"
endpoint_url = "{endpoint}"
cluster_id = "test-cluster"
api_timeout_seconds = 10
[credentials]
source = "static"
access_key_id = "testing"
secret_access_key = "testing"
{waits}
"#
    )
}

/// Short waits for tests: moto answers in milliseconds.
pub const FAST_WAITS: &str = r#"
[waits]
poll_initial_ms = 50
poll_max_ms = 500
batch_window_ms = 20
create_seconds = 30
attach_seconds = 30
detach_seconds = 30
modify_seconds = 30
"#;

/// A plain SDK client with moto's dummy credentials.
pub async fn sdk_client(endpoint: &str) -> aws_sdk_ec2::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await;
    aws_sdk_ec2::Client::new(&config)
}

/// Starts `count` m5.large instances in [`ZONE`] and returns their IDs.
pub async fn run_instances(ec2: &aws_sdk_ec2::Client, count: i32) -> Vec<String> {
    let images = ec2.describe_images().send().await.expect("DescribeImages");
    let image = images
        .images()
        .first()
        .and_then(|i| i.image_id())
        .expect("moto has no images")
        .to_owned();
    let out = ec2
        .run_instances()
        .image_id(image)
        .min_count(count)
        .max_count(count)
        .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
        .placement(
            aws_sdk_ec2::types::Placement::builder()
                .availability_zone(ZONE)
                .build(),
        )
        .send()
        .await
        .expect("RunInstances");
    let ids: Vec<String> = out
        .instances()
        .iter()
        .filter_map(|i| i.instance_id())
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), count as usize, "moto started too few instances");
    ids
}
