//! Canary credentials: every secret the driver is given (static AWS keys and
//! session tokens, Alibaba Cloud STS secrets and tokens, CSI `secrets`
//! maps) is a distinct `CANARY...` string, and after failing and
//! succeeding calls at trace level none of them may show in any gRPC
//! answer, the driver's logs, `doctor`'s output or `/metrics`.
//!
//! The real driver binary runs as a subprocess (`--log-level trace`,
//! `--metrics-address`) with seven instances:
//!
//! * `ebs-ok`: aws-ebs against moto, static keys with a session token;
//! * `ebs-down`: aws-ebs with canary keys against a closed port;
//! * `ali-sts`: aliyun-disk with an STS key (V3 signature, token in a
//!   header) against the fake ECS, which checks the secret and the token;
//! * `ali-sts-rpc`: the same with RPC signing (token and signature in the
//!   URL query);
//! * `ali-key`: aliyun-disk with a long-lived AccessKey pair (V3);
//! * `ali-rpc-down`: aliyun-disk with an STS key and RPC signing (secret
//!   token and signature in the URL query) against a closed port;
//! * `ali-badsig`: aliyun-disk with RPC signing and a secret the fake ECS
//!   does not hold: it answers SignatureDoesNotMatch quoting its string to
//!   sign, which holds the STS token.
//!
//! Access key IDs are not secrets: where they show is reported, not failed.
//!
//! ```sh
//! cargo test -p omnidisk --features "all-providers fake" --test canary
//! ```
//!
//! Needs the `aws-ebs` and `aliyun-disk` features and moto
//! (`OMNIDISK_PYTHON`, see `scripts/test`); without them it prints SKIPPED
//! and passes, unless `OMNIDISK_REQUIRE_ALL=1`, where it fails. No root.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fmt::{Debug, Write as _};
use std::future::Future;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use omnidisk::client::{CsiClient, connect};
use omnidisk::generated::csi;
use omnidisk_provider_aliyun_disk::fake_ecs::verify::AcceptedKey;
use omnidisk_provider_aliyun_disk::fake_ecs::{FakeEcs, FakeEcsConfig};
use omnidisk_provider_aws_ebs::moto::{Moto, REGION, ZONE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Response, Status};

// Secrets: none may appear anywhere. They share the prefix the scan looks
// for, so a cut-off copy is caught too.
const EBS_SECRET: &str = "CANARYebsSecret0001";
const EBS_TOKEN: &str = "CANARYebsToken0002";
const ALI_SECRET: &str = "CANARYaliSecret0003";
const STS_TOKEN: &str = "CANARYstsToken0004";
const CSI_SECRET: &str = "CANARYcsiSecret0005";
const RPC_SECRET: &str = "CANARYrpcSecret0006";
const RPC_TOKEN: &str = "CANARYrpcToken0007";
const EBS_DOWN_SECRET: &str = "CANARYebsDownSecret0008";
const EBS_DOWN_TOKEN: &str = "CANARYebsDownToken0009";
const BADSIG_SECRET: &str = "CANARYbadSigSecret0010";
const BADSIG_TOKEN: &str = "CANARYbadSigToken0011";
const STS_RPC_SECRET: &str = "CANARYstsRpcSecret0012";
const STS_RPC_TOKEN: &str = "CANARYstsRpcToken0013";
const ALI_KEY_SECRET: &str = "CANARYaliKeySecret0014";
const PREFIX: &str = "CANARY";

// Access key IDs (lower-case `canary`, so the scan above skips them).
const EBS_OK_ID: &str = "AKIDcanaryEbsOk";
const EBS_DOWN_ID: &str = "AKIDcanaryEbsDown";
const ALI_STS_ID: &str = "STS.canaryAliSts";
const ALI_RPC_ID: &str = "STS.canaryAliRpc";
const ALI_BADSIG_ID: &str = "STS.canaryAliBadSig";
const ALI_STS_RPC_ID: &str = "STS.canaryAliStsRpc";
const ALI_KEY_ID: &str = "LTAIcanaryAliKey";

const GIB: i64 = 1 << 30;

/// Every instance and its kind.
const INSTANCES: &[(&str, &str)] = &[
    ("ebs-ok", "aws-ebs"),
    ("ebs-down", "aws-ebs"),
    ("ali-sts", "aliyun-disk"),
    ("ali-sts-rpc", "aliyun-disk"),
    ("ali-key", "aliyun-disk"),
    ("ali-rpc-down", "aliyun-disk"),
    ("ali-badsig", "aliyun-disk"),
];

/// Passes with a SKIPPED line, or fails under `OMNIDISK_REQUIRE_ALL=1`.
fn skip(reason: &str) {
    assert!(
        std::env::var("OMNIDISK_REQUIRE_ALL").as_deref() != Ok("1"),
        "canary cannot run: {reason}; OMNIDISK_REQUIRE_ALL=1 forbids skipping"
    );
    eprintln!("SKIPPED canary: {reason}");
}

/// A local port nothing listens on now (bound, then released): the closed
/// endpoints, and the metrics address.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The driver's configuration: the instances the module comment lists.
fn config_text(dir: &Path, moto: &Moto, ec2_instance: &str, ecs: &FakeEcs) -> String {
    let dead = |scheme: &str| format!("{scheme}://127.0.0.1:{}", free_port());
    let ebs_waits = "[providers.{name}.waits]\npoll_initial_ms = 20\npoll_max_ms = 200\n\
                     batch_window_ms = 10\nthrottle_base_ms = 20\nthrottle_max_ms = 200\n\
                     create_seconds = 20\nattach_seconds = 5\ndetach_seconds = 5\n";
    let ali_waits = "[providers.{name}.waits]\ncreate_seconds = 10\nattach_seconds = 5\n\
                     detach_seconds = 5\nmodify_seconds = 5\npoll_interval_ms = 20\n\
                     batch_window_ms = 10\ndevice_seconds = 1\n";
    let ebs = |name: &str, endpoint: &str, id: &str, secret: &str, token: &str, node: &str| {
        format!(
            r#"
[providers.{name}]
kind = "aws-ebs"
region = "{REGION}"
endpoint_url = "{endpoint}"
default_zone = "{ZONE}"
cluster_id = "canary"
api_timeout_seconds = 5
[providers.{name}.credentials]
source = "static"
access_key_id = "{id}"
secret_access_key = "{secret}"
session_token = "{token}"
[providers.{name}.node]
instance_id = "{node}"
zone = "{ZONE}"
instance_type = "m5.large"
max_volumes_per_node = 25
imds_endpoint = "{imds}"
imds_timeout_seconds = 1
dev_root = "{dev}"
sys_root = "{sys}"
device_wait_seconds = 1
{waits}"#,
            imds = dead("http"),
            dev = dir.join("dev").display(),
            sys = dir.join("sys").display(),
            waits = ebs_waits.replace("{name}", name),
        )
    };
    let ali = |name: &str, endpoint: &str, signature: &str, credentials: &str| {
        format!(
            r#"
[providers.{name}]
kind = "aliyun-disk"
region_id = "cn-hangzhou"
endpoint = "{endpoint}"
metadata_base_url = "{metadata}"
signature_version = "{signature}"
default_zone_id = "cn-hangzhou-a"
api_timeout_seconds = 5
max_retries = 1
[providers.{name}.credentials]
{credentials}
[providers.{name}.node]
instance_id = "i-fake0001"
zone_id = "cn-hangzhou-a"
max_volumes_per_node = 16
device_root = "{dev}"
sys_root = "{sys}"
{waits}"#,
            metadata = ecs.metadata_base_url(),
            dev = dir.join("dev").display(),
            sys = dir.join("sys").display(),
            waits = ali_waits.replace("{name}", name),
        )
    };
    let sts = |id: &str, secret: &str, token: &str| {
        format!(
            "source = \"sts\"\naccess_key_id = \"{id}\"\naccess_key_secret = \"{secret}\"\n\
             security_token = \"{token}\"\nexpiration = \"2099-01-01T00:00:00Z\""
        )
    };
    let mut text = format!("[node]\nstate_dir = \"{}\"\n", dir.join("state").display());
    text.push_str(&ebs(
        "ebs-ok",
        moto.endpoint(),
        EBS_OK_ID,
        EBS_SECRET,
        EBS_TOKEN,
        ec2_instance,
    ));
    text.push_str(&ebs(
        "ebs-down",
        &dead("http"),
        EBS_DOWN_ID,
        EBS_DOWN_SECRET,
        EBS_DOWN_TOKEN,
        "i-0123456789abcdef0",
    ));
    text.push_str(&ali(
        "ali-sts",
        &ecs.endpoint(),
        "v3",
        &sts(ALI_STS_ID, ALI_SECRET, STS_TOKEN),
    ));
    text.push_str(&ali(
        "ali-sts-rpc",
        &ecs.endpoint(),
        "rpc",
        &sts(ALI_STS_RPC_ID, STS_RPC_SECRET, STS_RPC_TOKEN),
    ));
    text.push_str(&ali(
        "ali-key",
        &ecs.endpoint(),
        "v3",
        &format!(
            "source = \"access_key\"\naccess_key_id = \"{ALI_KEY_ID}\"\n\
             access_key_secret = \"{ALI_KEY_SECRET}\""
        ),
    ));
    text.push_str(&ali(
        "ali-rpc-down",
        &format!("{}/", dead("http")),
        "rpc",
        &sts(ALI_RPC_ID, RPC_SECRET, RPC_TOKEN),
    ));
    text.push_str(&ali(
        "ali-badsig",
        &ecs.endpoint(),
        "rpc",
        &sts(ALI_BADSIG_ID, BADSIG_SECRET, BADSIG_TOKEN),
    ));
    text
}

/// The driver subprocess; killed when dropped (also on a failed assertion).
struct DriverProcess {
    child: Child,
}

impl DriverProcess {
    /// Stops it with SIGTERM (so it logs its shutdown), SIGKILL after 5 s.
    fn stop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DriverProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every gRPC answer as text, and how many calls of each instance passed
/// and failed.
#[derive(Default)]
struct Transcript {
    text: String,
    /// instance -> (ok, failed).
    outcomes: BTreeMap<String, (u32, u32)>,
    /// (instance, call, code, message) of each failure.
    failures: Vec<(String, String, Code, String)>,
}

impl Transcript {
    fn note<T: Debug>(
        &mut self,
        instance: &str,
        call: &str,
        result: Result<Response<T>, Status>,
    ) -> Option<T> {
        let counts = self.outcomes.entry(instance.to_owned()).or_default();
        match result {
            Ok(response) => {
                counts.0 += 1;
                let _ = writeln!(self.text, "[{instance}] {call}: OK {response:?}");
                Some(response.into_inner())
            }
            Err(status) => {
                counts.1 += 1;
                let _ = writeln!(self.text, "[{instance}] {call}: {status}\n  {status:?}");
                self.failures.push((
                    instance.to_owned(),
                    call.to_owned(),
                    status.code(),
                    status.message().to_owned(),
                ));
                None
            }
        }
    }

    /// Repeats `call` while it fails with a code that says "not yet"
    /// (clean-up right after a snapshot), noting every attempt.
    async fn settle<T, F, Fut>(&mut self, instance: &str, what: &str, mut call: F) -> Option<T>
    where
        T: Debug,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        for _ in 0..50 {
            let result = call().await;
            let again = result.as_ref().is_err_and(|s| {
                matches!(
                    s.code(),
                    Code::Aborted | Code::Unavailable | Code::FailedPrecondition
                )
            });
            let out = self.note(instance, what, result);
            if !again {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// One short line per call, for assertion messages.
    fn summary(&self) -> String {
        self.text
            .lines()
            .filter(|l| l.starts_with('['))
            .map(|l| l.chars().take(200).collect::<String>() + "\n")
            .collect()
    }

    fn failure(&self, instance: &str, call: &str) -> Option<(Code, &str)> {
        self.failures
            .iter()
            .find(|(i, c, _, _)| i == instance && c == call)
            .map(|(_, _, code, message)| (*code, message.as_str()))
    }
}

fn secrets() -> BTreeMap<String, String> {
    [
        (
            "csi.storage.k8s.io/provisioner-secret".to_owned(),
            CSI_SECRET.to_owned(),
        ),
        ("password".to_owned(), CSI_SECRET.to_owned()),
    ]
    .into()
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn create_request(
    name: &str,
    bytes: i64,
    parameters: BTreeMap<String, String>,
) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![common::mount_cap()],
        parameters,
        secrets: secrets(),
        ..Default::default()
    }
}

/// An instance whose backend works: a full life cycle plus refused calls.
async fn drive_working(
    t: &mut Transcript,
    client: &CsiClient,
    instance: &str,
    bytes: i64,
    bad_param: (&str, &str),
    unknown_node: &str,
) {
    let mut ctl = client.controller.clone();
    let created = t.note(
        instance,
        "CreateVolume",
        ctl.create_volume(create_request(
            &format!("canary-{instance}-vol"),
            bytes,
            params(&[("type", instance)]),
        ))
        .await,
    );
    t.note(
        instance,
        "CreateVolume(bad parameter)",
        ctl.create_volume(create_request(
            &format!("canary-{instance}-bad"),
            bytes,
            params(&[("type", instance), bad_param]),
        ))
        .await,
    );
    let Some(volume) = created.and_then(|c| c.volume) else {
        return;
    };
    let volume_id = volume.volume_id;
    t.note(
        instance,
        "ControllerGetVolume",
        ctl.controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: volume_id.clone(),
        })
        .await,
    );
    let snapshot = t.note(
        instance,
        "CreateSnapshot",
        ctl.create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: volume_id.clone(),
            name: format!("canary-{instance}-snap"),
            secrets: secrets(),
            ..Default::default()
        })
        .await,
    );
    t.note(
        instance,
        "ControllerPublishVolume(unknown node)",
        ctl.controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: volume_id.clone(),
            node_id: unknown_node.into(),
            volume_capability: Some(common::mount_cap()),
            secrets: secrets(),
            ..Default::default()
        })
        .await,
    );
    if let Some(snapshot_id) = snapshot.and_then(|s| s.snapshot).map(|s| s.snapshot_id) {
        t.settle(instance, "DeleteSnapshot", || {
            let (mut ctl, snapshot_id) = (ctl.clone(), snapshot_id.clone());
            async move {
                ctl.delete_snapshot(csi::DeleteSnapshotRequest {
                    snapshot_id,
                    secrets: secrets(),
                })
                .await
            }
        })
        .await;
    }
    t.settle(instance, "DeleteVolume", || {
        let (mut ctl, volume_id) = (ctl.clone(), volume_id.clone());
        async move {
            ctl.delete_volume(csi::DeleteVolumeRequest {
                volume_id,
                secrets: secrets(),
            })
            .await
        }
    })
    .await;
    get_capacity(t, client, instance).await;
}

/// An instance whose backend fails (closed port, refused signature): every
/// call that reaches it, on made-up object IDs where one is needed.
async fn drive_failing(
    t: &mut Transcript,
    client: &CsiClient,
    instance: &str,
    bytes: i64,
    local_volume: &str,
    local_snapshot: &str,
    node: &str,
) {
    let mut ctl = client.controller.clone();
    let volume_id = format!("v1.{instance}.{local_volume}");
    let snapshot_id = format!("v1.{instance}.{local_snapshot}");
    t.note(
        instance,
        "CreateVolume",
        ctl.create_volume(create_request(
            &format!("canary-{instance}-vol"),
            bytes,
            params(&[("type", instance)]),
        ))
        .await,
    );
    t.note(
        instance,
        "ControllerGetVolume",
        ctl.controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: volume_id.clone(),
        })
        .await,
    );
    t.note(
        instance,
        "CreateSnapshot",
        ctl.create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: volume_id.clone(),
            name: format!("canary-{instance}-snap"),
            secrets: secrets(),
            ..Default::default()
        })
        .await,
    );
    t.note(
        instance,
        "ControllerPublishVolume",
        ctl.controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: volume_id.clone(),
            node_id: node.into(),
            volume_capability: Some(common::mount_cap()),
            secrets: secrets(),
            ..Default::default()
        })
        .await,
    );
    t.note(
        instance,
        "DeleteSnapshot",
        ctl.delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id,
            secrets: secrets(),
        })
        .await,
    );
    t.note(
        instance,
        "DeleteVolume",
        ctl.delete_volume(csi::DeleteVolumeRequest {
            volume_id,
            secrets: secrets(),
        })
        .await,
    );
    get_capacity(t, client, instance).await;
}

async fn get_capacity(t: &mut Transcript, client: &CsiClient, instance: &str) {
    let mut ctl = client.controller.clone();
    t.note(
        instance,
        "GetCapacity",
        ctl.get_capacity(csi::GetCapacityRequest {
            volume_capabilities: vec![common::mount_cap()],
            parameters: params(&[("type", instance)]),
            ..Default::default()
        })
        .await,
    );
}

/// Calls that span instances or are the node's.
async fn drive_shared(t: &mut Transcript, client: &CsiClient, dir: &Path) {
    let mut ctl = client.controller.clone();
    t.note(
        "*",
        "ListVolumes",
        ctl.list_volumes(csi::ListVolumesRequest::default()).await,
    );
    t.note(
        "*",
        "ListSnapshots",
        ctl.list_snapshots(csi::ListSnapshotsRequest::default())
            .await,
    );
    t.note(
        "*",
        "GetCapacity(no type)",
        ctl.get_capacity(csi::GetCapacityRequest::default()).await,
    );
    let mut node = client.node.clone();
    t.note(
        "*",
        "NodeGetInfo",
        node.node_get_info(csi::NodeGetInfoRequest {}).await,
    );
    // No such device: fails after the instance's 1 s device wait.
    t.note(
        "ebs-ok",
        "NodeStageVolume(no device)",
        node.node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: "v1.ebs-ok.vol-0fedcba9876543210".into(),
            staging_target_path: dir
                .join("kubelet/plugins/kubernetes.io/csi/omnidisk/canary/globalmount")
                .display()
                .to_string(),
            volume_capability: Some(common::mount_cap()),
            secrets: secrets(),
            ..Default::default()
        })
        .await,
    );
}

/// `GET /metrics` over a plain HTTP/1.0 exchange.
async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_string(&mut answer))
        .await
        .expect("/metrics did not answer within 20 s")
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "/metrics answered: {}",
        answer.lines().next().unwrap_or_default()
    );
    answer
}

/// Each line holding `needle`, with two lines either side, at most five
/// per channel. Lines are cut to 300 characters; the line holding it is
/// cut around the first occurrence.
fn sightings(channel: &str, text: &str, needle: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let cut = |line: &str, from: usize| line.chars().skip(from).take(300).collect::<String>();
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .take(5)
        .map(|(i, _)| {
            let mut out = format!("--- {channel}, line {}:\n", i + 1);
            let first = i.saturating_sub(2);
            for (j, line) in lines.iter().enumerate().take(i + 3).skip(first) {
                if j == i {
                    let at = line.find(needle).map_or(0, |b| line[..b].chars().count());
                    let from = at.saturating_sub(150);
                    let _ = writeln!(out, ">> [from character {from}] {}", cut(line, from));
                } else {
                    let _ = writeln!(out, "   {}", cut(line, 0));
                }
            }
            out
        })
        .collect()
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_credentials_show_nowhere() {
    if !cfg!(feature = "aws-ebs") || !cfg!(feature = "aliyun-disk") {
        return skip("the core's cargo features `aws-ebs` and `aliyun-disk` are needed");
    }
    let started = Instant::now();
    let moto = match tokio::task::spawn_blocking(Moto::start).await.unwrap() {
        Ok(moto) => moto,
        Err(e) => return skip(&e.to_string()),
    };
    let ec2_instance = moto.run_instances(1).await.unwrap().remove(0);
    let mut ecs_config = FakeEcsConfig::standard();
    ecs_config.keys.insert(
        ALI_STS_ID.into(),
        AcceptedKey {
            secret: ALI_SECRET.into(),
            security_token: Some(STS_TOKEN.into()),
        },
    );
    // Known key, other secret: every request's signature is refused.
    ecs_config.keys.insert(
        ALI_BADSIG_ID.into(),
        AcceptedKey {
            secret: "the-secret-the-cloud-holds".into(),
            security_token: Some(BADSIG_TOKEN.into()),
        },
    );
    ecs_config.keys.insert(
        ALI_STS_RPC_ID.into(),
        AcceptedKey {
            secret: STS_RPC_SECRET.into(),
            security_token: Some(STS_RPC_TOKEN.into()),
        },
    );
    ecs_config.keys.insert(
        ALI_KEY_ID.into(),
        AcceptedKey {
            secret: ALI_KEY_SECRET.into(),
            security_token: None,
        },
    );
    let ecs = FakeEcs::start(ecs_config).await.unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    for sub in ["kubelet", "dev", "sys", "state"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let config = dir.join("config.toml");
    std::fs::write(&config, config_text(&dir, &moto, &ec2_instance, &ecs)).unwrap();
    let socket = dir.join("csi.sock");
    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (stdout_path, stderr_path) = (dir.join("driver.out"), dir.join("driver.err"));
    let binary = env!("CARGO_BIN_EXE_omnidisk");
    let config_arg = config.display().to_string();
    let kubelet_arg = dir.join("kubelet").display().to_string();
    let mut driver = DriverProcess {
        child: Command::new(binary)
            .args(["--config", &config_arg])
            .args(["--endpoint", &format!("unix://{}", socket.display())])
            .args(["--mode", "all", "--node-id", "canary-node"])
            .args(["--log-level", "trace", "--kubelet-dir", &kubelet_arg])
            .args(["--metrics-address", &metrics_addr.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if let Some(status) = driver.child.try_wait().unwrap() {
            panic!(
                "the driver exited ({status}) before serving:\n{}",
                read(&stderr_path)
            );
        }
        assert!(
            Instant::now() < deadline,
            "the driver did not create {} within 20 s",
            socket.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = connect(&socket).await.unwrap();

    let mut t = Transcript::default();
    let mut identity = client.identity.clone();
    t.note(
        "*",
        "GetPluginInfo",
        identity.get_plugin_info(csi::GetPluginInfoRequest {}).await,
    );
    drive_working(
        &mut t,
        &client,
        "ebs-ok",
        GIB,
        ("canaryBogusParameter", "1"),
        "i-0000000000000dead",
    )
    .await;
    for instance in ["ali-sts", "ali-sts-rpc", "ali-key"] {
        drive_working(
            &mut t,
            &client,
            instance,
            20 * GIB,
            ("category", "no_such_category"),
            "i-nosuchnode",
        )
        .await;
    }
    drive_failing(
        &mut t,
        &client,
        "ebs-down",
        GIB,
        "vol-0123456789abcdef0",
        "snap-0123456789abcdef0",
        "i-0123456789abcdef0",
    )
    .await;
    for instance in ["ali-rpc-down", "ali-badsig"] {
        drive_failing(
            &mut t,
            &client,
            instance,
            20 * GIB,
            "d-canary0000000000",
            "s-canary0000000000",
            "i-fake0002",
        )
        .await;
    }
    drive_shared(&mut t, &client, &dir).await;
    let metrics = scrape(metrics_addr).await;

    let doctor = {
        let (config_arg, kubelet_arg) = (config_arg.clone(), kubelet_arg.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(binary)
                .args(["--config", &config_arg, "--mode", "all"])
                .args(["--node-id", "canary-node", "--kubelet-dir", &kubelet_arg])
                .args(["--log-level", "trace", "doctor"])
                .stdin(Stdio::null())
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    drop(client);
    driver.stop();
    let driver_err = read(&stderr_path);
    let driver_out = read(&stdout_path);
    let doctor_out = String::from_utf8_lossy(&doctor.stdout).into_owned();
    let doctor_err = String::from_utf8_lossy(&doctor.stderr).into_owned();
    let channels = [
        ("gRPC answers", &t.text),
        ("driver stderr", &driver_err),
        ("driver stdout", &driver_out),
        ("doctor stdout", &doctor_out),
        ("doctor stderr", &doctor_err),
        ("/metrics", &metrics),
    ];

    // The secrets, anywhere.
    let leaks: Vec<String> = channels
        .iter()
        .flat_map(|(channel, text)| sightings(channel, text, PREFIX))
        .collect();
    assert!(
        leaks.is_empty(),
        "canary secrets leaked:\n{}",
        leaks.join("\n")
    );

    // The test looked at real output.
    assert!(
        driver_err.contains(" DEBUG ") || driver_err.contains(" TRACE "),
        "the driver logged nothing at debug or trace:\n{}",
        driver_err.chars().take(2000).collect::<String>()
    );
    assert!(
        metrics.contains("omnidisk_csi_operations_total"),
        "no operation counter in /metrics"
    );
    for kind in ["aws-ebs", "aliyun-disk"] {
        let (ok, failed) = INSTANCES
            .iter()
            .filter(|(_, k)| *k == kind)
            .filter_map(|(i, _)| t.outcomes.get(*i))
            .fold((0, 0), |(a, b), (ok, failed)| (a + ok, b + failed));
        assert!(
            ok > 0 && failed > 0,
            "{kind}: {ok} calls passed, {failed} failed; both must happen:\n{}",
            t.summary()
        );
    }
    for (instance, _) in INSTANCES {
        let (ok, failed) = t.outcomes.get(*instance).copied().unwrap_or_default();
        assert!(ok + failed > 0, "{instance}: no call reached it");
        let doctor_line = doctor_out
            .lines()
            .any(|l| l.split_whitespace().next() == Some(*instance));
        assert!(
            doctor_line,
            "doctor printed no line for {instance}:\n{doctor_out}"
        );
    }
    // The failing backends failed where the credentials travel: on the wire,
    // and in the service's refusal that quotes the signed request.
    for instance in ["ebs-down", "ali-rpc-down"] {
        let (code, message) = t.failure(instance, "CreateVolume").unwrap();
        assert!(
            matches!(code, Code::Unavailable | Code::DeadlineExceeded),
            "{instance}: CreateVolume failed with {code:?}: {message}"
        );
    }
    let (_, message) = t.failure("ali-badsig", "CreateVolume").unwrap();
    assert!(
        message.contains("SignatureDoesNotMatch"),
        "ali-badsig: CreateVolume did not meet the refused signature: {message}"
    );
    for instance in ["ebs-ok", "ali-sts", "ali-sts-rpc", "ali-key"] {
        let (ok, _) = t.outcomes[instance];
        assert!(
            ok >= 4,
            "{instance}: only {ok} calls passed:\n{}",
            t.summary()
        );
    }

    // Access key IDs are not secret; say where they show.
    for id in [
        EBS_OK_ID,
        EBS_DOWN_ID,
        ALI_STS_ID,
        ALI_STS_RPC_ID,
        ALI_KEY_ID,
        ALI_RPC_ID,
        ALI_BADSIG_ID,
    ] {
        let seen: Vec<&str> = channels
            .iter()
            .filter(|(_, text)| text.contains(id))
            .map(|(channel, _)| *channel)
            .collect();
        if !seen.is_empty() {
            eprintln!("access key ID {id} shows in: {}", seen.join(", "));
            for (channel, text) in &channels {
                for s in sightings(channel, text, id).iter().take(1) {
                    eprintln!("{s}");
                }
            }
        }
    }
    let (calls, failed) = t
        .outcomes
        .values()
        .fold((0, 0), |(a, b), (ok, f)| (a + ok + f, b + f));
    eprintln!(
        "canary: {calls} gRPC calls ({failed} failed), {} log lines, doctor {}, {:.1} s",
        driver_err.lines().count(),
        doctor.status,
        started.elapsed().as_secs_f64()
    );
}
