//! A development cloud on one machine: a moto EC2 endpoint, the fake ECS
//! endpoint (with its instance metadata), and the driver serving both clouds
//! (plus local LVM when this machine has a volume group `omnidisk`) behind
//! one CSI socket, so any CSI client or conformance suite can be pointed at
//! a working multi-cloud driver.
//!
//! ```sh
//! cargo run -p omnidisk --example dev_cloud --features all-providers -- /tmp/omnidisk-dev
//! csictl --endpoint unix:///tmp/omnidisk-dev/csi.sock create v1 --size 1Gi --type ebs
//! csictl --endpoint unix:///tmp/omnidisk-dev/csi.sock create v2 --size 20Gi --type aliyun
//! ```
//!
//! It needs `python3 -m moto.server` (`pip install 'moto[server]'`). The node
//! identities are fixed in the configuration (an EC2 instance created in moto,
//! `i-fake0001` in the fake ECS), so ControllerPublish works; the node side of
//! the clouds (devices appearing after an attach) is not simulated here: the
//! providers' tests do that on loop devices.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use omnidisk::config::Config;
use omnidisk::mount::linux::LinuxMounter;
use omnidisk::{Driver, Mode, providers, server};
use omnidisk_provider_aliyun_disk::fake_ecs::{FakeEcs, FakeEcsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One EC2 query call to moto without signing (moto does not check
/// signatures; the Authorization header only tells it the service).
async fn ec2_query(port: u16, body: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}

fn lvm_has_omnidisk_vg() -> bool {
    Command::new("vgs")
        .arg("omnidisk")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/tmp/omnidisk-dev".into()),
    );
    std::fs::create_dir_all(&dir)?;

    let moto_port = free_port()?;
    let _moto = Moto(
        Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &moto_port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start moto (pip install 'moto[server]'): {e}"))?,
    );
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", moto_port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !up {
        return Err("moto did not start".into());
    }
    let run = ec2_query(
        moto_port,
        "Action=RunInstances&Version=2016-11-15&ImageId=ami-12c6146b&MinCount=1&MaxCount=1&Placement.AvailabilityZone=us-east-1a",
    )
    .await?;
    let ec2_instance = between(&run, "<instanceId>", "</instanceId>")
        .ok_or("moto did not return an instance ID")?
        .to_owned();

    let ecs = FakeEcs::start(FakeEcsConfig::standard()).await?;
    let lvm = if lvm_has_omnidisk_vg() {
        "\n[providers.lvm]\nkind = \"local-lvm\"\nvolume_group = \"omnidisk\"\n"
    } else {
        ""
    };
    let config_text = format!(
        r#"[node]
state_dir = "{state}"

[providers.ebs]
kind = "aws-ebs"
region = "us-east-1"
endpoint_url = "http://127.0.0.1:{moto_port}"
default_zone = "us-east-1a"
[providers.ebs.credentials]
source = "static"
access_key_id = "testing"
secret_access_key = "testing"
[providers.ebs.node]
instance_id = "{ec2_instance}"
zone = "us-east-1a"
instance_type = "m5.large"

[providers.aliyun]
kind = "aliyun-disk"
region_id = "cn-hangzhou"
endpoint = "{ecs_endpoint}"
metadata_base_url = "{ecs_metadata}"
default_zone_id = "cn-hangzhou-a"
[providers.aliyun.credentials]
source = "access_key"
access_key_id = "fake-key-id"
access_key_secret = "fake-key-secret"
[providers.aliyun.node]
instance_id = "i-fake0001"
zone_id = "cn-hangzhou-a"
{lvm}"#,
        state = dir.join("state").display(),
        ecs_endpoint = ecs.endpoint(),
        ecs_metadata = ecs.metadata_base_url(),
    );
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = Config::load(&config_path)?;
    let registry = providers::build_registry(&config, "dev-node", Mode::All).await?;
    let mounter = Arc::new(LinuxMounter::new(config.node.clone()));
    let driver = Arc::new(Driver::new(
        registry,
        "dev-node".into(),
        Mode::All,
        config.node.clone(),
        mounter,
    ));
    let socket = dir.join("csi.sock");
    let listener = server::bind_socket(&socket)?;
    driver.set_ready();
    println!("omnidisk dev cloud ready");
    println!("  CSI socket:   unix://{}", socket.display());
    println!("  config:       {}", config_path.display());
    println!("  EC2 (moto):   http://127.0.0.1:{moto_port} (instance {ec2_instance})");
    println!("  ECS (fake):   {} (instance i-fake0001)", ecs.endpoint());
    println!(
        "  types:        ebs, aliyun{}",
        if lvm.is_empty() { "" } else { ", lvm" }
    );
    println!("Ctrl-C stops everything.");
    server::serve(driver, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
