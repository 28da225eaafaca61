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
//! It needs `python3 -m moto.server` (`scripts/install-test-deps`, or
//! `pip install 'moto[server]'`), started through the EBS provider's `moto`
//! module, which puts a small proxy in front of moto that answers EC2
//! CopyVolumes (moto has none), so EBS clones (CreateVolume from a volume)
//! work here too; the driver talks to the proxy. The node identities are fixed in the configuration (an EC2
//! instance created in moto, `i-fake0001` in the fake ECS), so
//! ControllerPublish works. Run as root, EBS node calls work too: the EBS
//! attachment simulator watches moto and exposes each volume attached to
//! the instance as a loop device under `<dir>/ebs-node/dev` (with the
//! by-id link and serial a Nitro node has), grows it after an expansion and
//! removes it on detach, so NodeStage/NodePublish/NodeExpand run for real.
//! The Aliyun node side is not simulated.
//!
//! With `--clouds-only` it serves the two clouds and writes
//! `<dir>/config.toml` without starting a driver, for a driver binary
//! started separately (`omnidisk --config <dir>/config.toml`), as
//! `scripts/bench-memory` does to measure the release binary.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use omnidisk::config::Config;
use omnidisk::mount::linux::LinuxMounter;
use omnidisk::{Driver, Mode, providers, server};
use omnidisk_provider_aliyun_disk::fake_ecs::{FakeEcs, FakeEcsConfig};
use omnidisk_provider_aws_ebs::attach_sim::AttachSimulator;
use omnidisk_provider_aws_ebs::moto::{Moto, ZONE};

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
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let clouds_only = args.iter().any(|a| a == "--clouds-only");
    args.retain(|a| a != "--clouds-only");
    let dir = PathBuf::from(
        args.first()
            .cloned()
            .unwrap_or_else(|| "/tmp/omnidisk-dev".into()),
    );
    std::fs::create_dir_all(&dir)?;

    // moto takes a second or two to come up; nothing else runs yet.
    let moto = tokio::task::spawn_blocking(Moto::start).await??;
    let ec2_instance = moto.run_instances(1).await?.remove(0);
    // The node side of EBS needs loop devices, so root.
    let sim = if rustix::process::geteuid().is_root() {
        let mut sim =
            AttachSimulator::new(moto.endpoint(), &ec2_instance, &dir.join("ebs-node")).await?;
        sim.watch(Duration::from_millis(200));
        Some(sim)
    } else {
        None
    };
    let ebs_node_roots = match &sim {
        Some(sim) => format!(
            "dev_root = {:?}\nsys_root = {:?}\n",
            sim.dev_root().display().to_string(),
            sim.sys_root().display().to_string()
        ),
        None => String::new(),
    };

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
{ebs_settings}default_zone = "{ZONE}"
[providers.ebs.node]
instance_id = "{ec2_instance}"
zone = "{ZONE}"
instance_type = "m5.large"
{ebs_node_roots}
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
        ebs_settings = moto.settings_toml(""),
        ecs_endpoint = ecs.endpoint(),
        ecs_metadata = ecs.metadata_base_url(),
    );
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, &config_text)?;
    if clouds_only {
        println!("omnidisk dev clouds ready");
        println!("  config:       {}", config_path.display());
        println!(
            "  EC2 (moto):   {} (instance {ec2_instance})",
            moto.endpoint()
        );
        println!("  ECS (fake):   {} (instance i-fake0001)", ecs.endpoint());
        println!("Ctrl-C or SIGTERM stops them.");
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        return Ok(());
    }
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
    println!(
        "  EC2 (moto):   {} (instance {ec2_instance}; CopyVolumes proxy in front of moto at {})",
        moto.endpoint(),
        moto.moto_endpoint()
    );
    match &sim {
        Some(sim) => println!(
            "  EBS node:     devices appear under {} after ControllerPublish",
            sim.dev_root().display()
        ),
        None => println!("  EBS node:     not simulated (needs root for loop devices)"),
    }
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
