//! csictl: a small CSI client for people and scripts. It talks to any CSI
//! driver's unix socket; see `csictl --help`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use omnidisk::client::{CsiClient, connect};
use omnidisk::generated::csi;
use omnidisk::generated::csi::volume_capability::{
    AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode,
};
use serde_json::{Value, json};

/// A CSI client: probe a driver, create, stage, publish and snapshot volumes.
#[derive(Debug, Parser)]
#[command(name = "csictl", version, about)]
struct Cli {
    /// The driver's socket.
    #[arg(
        long,
        env = "CSI_ENDPOINT",
        default_value = "unix:///run/omnidisk/csi.sock"
    )]
    endpoint: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
    /// Deadline for each call, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AccessModeArg {
    SingleNodeWriter,
    SingleNodeReaderOnly,
    MultiNodeReaderOnly,
    MultiNodeSingleWriter,
    MultiNodeMultiWriter,
    SingleNodeSingleWriter,
    SingleNodeMultiWriter,
}

impl AccessModeArg {
    fn mode(self) -> Mode {
        match self {
            AccessModeArg::SingleNodeWriter => Mode::SingleNodeWriter,
            AccessModeArg::SingleNodeReaderOnly => Mode::SingleNodeReaderOnly,
            AccessModeArg::MultiNodeReaderOnly => Mode::MultiNodeReaderOnly,
            AccessModeArg::MultiNodeSingleWriter => Mode::MultiNodeSingleWriter,
            AccessModeArg::MultiNodeMultiWriter => Mode::MultiNodeMultiWriter,
            AccessModeArg::SingleNodeSingleWriter => Mode::SingleNodeSingleWriter,
            AccessModeArg::SingleNodeMultiWriter => Mode::SingleNodeMultiWriter,
        }
    }
}

/// How the volume is accessed.
#[derive(Debug, Clone, clap::Args)]
struct Access {
    /// Raw block access instead of a filesystem.
    #[arg(long)]
    block: bool,
    /// Filesystem type (mount access).
    #[arg(long)]
    fs_type: Option<String>,
    /// Mount flag, repeatable (mount access).
    #[arg(long = "mount-flag")]
    mount_flags: Vec<String>,
    /// Access mode.
    #[arg(long, value_enum, default_value = "single-node-writer")]
    access_mode: AccessModeArg,
}

impl Access {
    fn capability(&self) -> csi::VolumeCapability {
        let access_type = if self.block {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume {
                fs_type: self.fs_type.clone().unwrap_or_default(),
                mount_flags: self.mount_flags.clone(),
                volume_mount_group: String::new(),
            })
        };
        csi::VolumeCapability {
            access_type: Some(access_type),
            access_mode: Some(AccessMode {
                mode: self.access_mode.mode() as i32,
            }),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Whether the driver is ready.
    Probe,
    /// Plugin name and version.
    Info,
    /// Identity, controller and node capabilities.
    Caps,
    /// Node ID, topology and volume limit.
    NodeInfo,
    /// Create a volume; prints its ID.
    Create {
        /// The volume name (idempotency key).
        name: String,
        /// Size: bytes, or with K/M/G/T (powers of 1024).
        #[arg(long, value_parser = parse_size)]
        size: i64,
        /// Provider instance (StorageClass `type`).
        #[arg(long = "type")]
        instance: Option<String>,
        /// StorageClass parameter K=V, repeatable.
        #[arg(long = "param", value_parser = parse_kv)]
        params: Vec<(String, String)>,
        #[command(flatten)]
        access: Access,
        /// Restore from this snapshot.
        #[arg(long)]
        from_snapshot: Option<String>,
        /// Clone this volume.
        #[arg(long)]
        from_volume: Option<String>,
        /// Require the volume on this node (topology.omnidisk.csi.dev/node).
        #[arg(long)]
        node: Option<String>,
    },
    /// Delete a volume.
    Delete { volume_id: String },
    /// List volumes.
    List {
        /// Page size (0 = all at once).
        #[arg(long, default_value_t = 0)]
        max: i32,
    },
    /// Describe a volume (ControllerGetVolume).
    Get { volume_id: String },
    /// Grow a volume (ControllerExpandVolume); prints the new size.
    Expand {
        volume_id: String,
        #[arg(long, value_parser = parse_size)]
        size: i64,
        #[arg(long)]
        block: bool,
    },
    /// Stage a volume on this node.
    Stage {
        volume_id: String,
        #[arg(long)]
        staging_path: PathBuf,
        #[command(flatten)]
        access: Access,
        /// Volume context K=V, repeatable.
        #[arg(long = "context", value_parser = parse_kv)]
        context: Vec<(String, String)>,
        /// Publish context K=V, repeatable.
        #[arg(long = "publish-context", value_parser = parse_kv)]
        publish_context: Vec<(String, String)>,
    },
    /// Unstage a volume.
    Unstage {
        volume_id: String,
        #[arg(long)]
        staging_path: PathBuf,
    },
    /// Publish a staged volume at a target path.
    Publish {
        volume_id: String,
        #[arg(long)]
        target: PathBuf,
        #[arg(long)]
        staging_path: Option<PathBuf>,
        #[arg(long)]
        readonly: bool,
        #[command(flatten)]
        access: Access,
        #[arg(long = "context", value_parser = parse_kv)]
        context: Vec<(String, String)>,
        #[arg(long = "publish-context", value_parser = parse_kv)]
        publish_context: Vec<(String, String)>,
    },
    /// Unpublish a volume from a target path.
    Unpublish {
        volume_id: String,
        #[arg(long)]
        target: PathBuf,
    },
    /// Grow the filesystem on the node; prints the new size.
    NodeExpand {
        volume_id: String,
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        staging_path: Option<PathBuf>,
        #[arg(long, value_parser = parse_size)]
        size: Option<i64>,
        #[arg(long)]
        block: bool,
    },
    /// Usage and condition of a published or staged volume.
    Stats {
        volume_id: String,
        #[arg(long)]
        path: PathBuf,
    },
    /// Snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Available capacity for an instance, optionally on one node.
    Capacity {
        #[arg(long = "type")]
        instance: Option<String>,
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Snapshot a volume; prints the snapshot ID.
    Create {
        name: String,
        #[arg(long)]
        volume: String,
    },
    /// Delete a snapshot.
    Delete { snapshot_id: String },
    /// List snapshots.
    List {
        #[arg(long)]
        volume: Option<String>,
        #[arg(long, default_value_t = 0)]
        max: i32,
    },
}

fn parse_kv(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected K=V, got {raw:?}"))
}

fn parse_size(raw: &str) -> Result<i64, String> {
    let raw = raw.trim();
    let trimmed = raw.trim_end_matches(['i', 'B', 'b']);
    let (digits, unit) = match trimmed.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => trimmed.split_at(i),
        None => (trimmed, ""),
    };
    let value: i64 = digits
        .parse()
        .map_err(|_| format!("invalid size {raw:?}"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("invalid size unit in {raw:?}")),
    };
    value
        .checked_mul(1i64 << shift)
        .ok_or_else(|| format!("size {raw:?} is too large"))
}

fn map(pairs: &[(String, String)]) -> BTreeMap<String, String> {
    pairs.iter().cloned().collect()
}

fn path_str(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

fn volume_json(v: &csi::Volume) -> Value {
    json!({
        "volume_id": v.volume_id,
        "capacity_bytes": v.capacity_bytes,
        "volume_context": v.volume_context,
        "accessible_topology": v.accessible_topology.iter().map(|t| &t.segments).collect::<Vec<_>>(),
    })
}

fn snapshot_json(s: &csi::Snapshot) -> Value {
    json!({
        "snapshot_id": s.snapshot_id,
        "source_volume_id": s.source_volume_id,
        "size_bytes": s.size_bytes,
        "ready_to_use": s.ready_to_use,
        "creation_time": s.creation_time.as_ref().map(|t| t.seconds),
    })
}

/// What a command prints: a line for people, a value for `--output json`.
struct Printed {
    text: String,
    json: Value,
}

fn printed(text: impl Into<String>, json: Value) -> Printed {
    Printed {
        text: text.into(),
        json,
    }
}

async fn run(cli: &Cli, mut c: CsiClient) -> Result<Printed, tonic::Status> {
    Ok(match &cli.command {
        Command::Probe => {
            let r = c.identity.probe(csi::ProbeRequest {}).await?.into_inner();
            let ready = r.ready.unwrap_or(true);
            printed(
                if ready { "ready" } else { "not ready" },
                json!({ "ready": ready }),
            )
        }
        Command::Info => {
            let r = c
                .identity
                .get_plugin_info(csi::GetPluginInfoRequest {})
                .await?
                .into_inner();
            printed(
                format!("{} {}", r.name, r.vendor_version),
                json!({ "name": r.name, "vendor_version": r.vendor_version, "manifest": r.manifest }),
            )
        }
        Command::Caps => {
            let id = c
                .identity
                .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
                .await?
                .into_inner();
            let ctrl = c
                .controller
                .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
                .await?
                .into_inner();
            let node = c
                .node
                .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
                .await;
            let identity: Vec<String> = id
                .capabilities
                .iter()
                .map(|c| format!("{:?}", c.r#type))
                .collect();
            let controller: Vec<String> = ctrl
                .capabilities
                .iter()
                .filter_map(|c| match &c.r#type {
                    Some(csi::controller_service_capability::Type::Rpc(r)) => {
                        csi::controller_service_capability::rpc::Type::try_from(r.r#type)
                            .ok()
                            .map(|t| t.as_str_name().to_owned())
                    }
                    None => None,
                })
                .collect();
            let node: Vec<String> = match node {
                Ok(n) => n
                    .into_inner()
                    .capabilities
                    .iter()
                    .filter_map(|c| match &c.r#type {
                        Some(csi::node_service_capability::Type::Rpc(r)) => {
                            csi::node_service_capability::rpc::Type::try_from(r.r#type)
                                .ok()
                                .map(|t| t.as_str_name().to_owned())
                        }
                        None => None,
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            printed(
                format!(
                    "identity: {}\ncontroller: {}\nnode: {}",
                    identity.join(" "),
                    controller.join(" "),
                    node.join(" ")
                ),
                json!({ "identity": identity, "controller": controller, "node": node }),
            )
        }
        Command::NodeInfo => {
            let r = c
                .node
                .node_get_info(csi::NodeGetInfoRequest {})
                .await?
                .into_inner();
            let topo = r
                .accessible_topology
                .map(|t| t.segments)
                .unwrap_or_default();
            printed(
                format!(
                    "{} max_volumes={} topology={:?}",
                    r.node_id, r.max_volumes_per_node, topo
                ),
                json!({ "node_id": r.node_id, "max_volumes_per_node": r.max_volumes_per_node, "topology": topo }),
            )
        }
        Command::Create {
            name,
            size,
            instance,
            params,
            access,
            from_snapshot,
            from_volume,
            node,
        } => {
            let mut parameters = map(params);
            if let Some(i) = instance {
                parameters.insert("type".into(), i.clone());
            }
            let volume_content_source = match (from_snapshot, from_volume) {
                (Some(s), _) => Some(csi::VolumeContentSource {
                    r#type: Some(csi::volume_content_source::Type::Snapshot(
                        csi::volume_content_source::SnapshotSource {
                            snapshot_id: s.clone(),
                        },
                    )),
                }),
                (None, Some(v)) => Some(csi::VolumeContentSource {
                    r#type: Some(csi::volume_content_source::Type::Volume(
                        csi::volume_content_source::VolumeSource {
                            volume_id: v.clone(),
                        },
                    )),
                }),
                (None, None) => None,
            };
            let accessibility_requirements = node.as_ref().map(|n| {
                let t = csi::Topology {
                    segments: BTreeMap::from([(
                        "topology.omnidisk.csi.dev/node".to_owned(),
                        n.clone(),
                    )]),
                };
                csi::TopologyRequirement {
                    requisite: vec![t.clone()],
                    preferred: vec![t],
                }
            });
            let r = c
                .controller
                .create_volume(csi::CreateVolumeRequest {
                    name: name.clone(),
                    capacity_range: Some(csi::CapacityRange {
                        required_bytes: *size,
                        limit_bytes: 0,
                    }),
                    volume_capabilities: vec![access.capability()],
                    parameters,
                    volume_content_source,
                    accessibility_requirements,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let v = r.volume.unwrap_or_default();
            printed(v.volume_id.clone(), volume_json(&v))
        }
        Command::Delete { volume_id } => {
            c.controller
                .delete_volume(csi::DeleteVolumeRequest {
                    volume_id: volume_id.clone(),
                    ..Default::default()
                })
                .await?;
            printed(
                format!("deleted {volume_id}"),
                json!({ "deleted": volume_id }),
            )
        }
        Command::List { max } => {
            let mut token = String::new();
            let mut lines = Vec::new();
            let mut values = Vec::new();
            loop {
                let r = c
                    .controller
                    .list_volumes(csi::ListVolumesRequest {
                        max_entries: *max,
                        starting_token: token.clone(),
                    })
                    .await?
                    .into_inner();
                for e in &r.entries {
                    let v = e.volume.clone().unwrap_or_default();
                    let nodes = e
                        .status
                        .as_ref()
                        .map(|s| s.published_node_ids.clone())
                        .unwrap_or_default();
                    lines.push(format!(
                        "{} {} {}",
                        v.volume_id,
                        v.capacity_bytes,
                        nodes.join(",")
                    ));
                    let mut j = volume_json(&v);
                    j["published_node_ids"] = json!(nodes);
                    values.push(j);
                }
                if r.next_token.is_empty() {
                    break;
                }
                token = r.next_token;
            }
            printed(lines.join("\n"), json!(values))
        }
        Command::Get { volume_id } => {
            let r = c
                .controller
                .controller_get_volume(csi::ControllerGetVolumeRequest {
                    volume_id: volume_id.clone(),
                })
                .await?
                .into_inner();
            let v = r.volume.unwrap_or_default();
            let status = r.status.unwrap_or_default();
            let cond = status.volume_condition.unwrap_or_default();
            printed(
                format!(
                    "{} {} abnormal={} {}",
                    v.volume_id, v.capacity_bytes, cond.abnormal, cond.message
                ),
                json!({ "volume": volume_json(&v), "published_node_ids": status.published_node_ids, "abnormal": cond.abnormal, "message": cond.message }),
            )
        }
        Command::Expand {
            volume_id,
            size,
            block,
        } => {
            let capability = Access {
                block: *block,
                fs_type: None,
                mount_flags: vec![],
                access_mode: AccessModeArg::SingleNodeWriter,
            }
            .capability();
            let r = c
                .controller
                .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                    volume_id: volume_id.clone(),
                    capacity_range: Some(csi::CapacityRange {
                        required_bytes: *size,
                        limit_bytes: 0,
                    }),
                    volume_capability: Some(capability),
                    ..Default::default()
                })
                .await?
                .into_inner();
            printed(
                r.capacity_bytes.to_string(),
                json!({ "capacity_bytes": r.capacity_bytes, "node_expansion_required": r.node_expansion_required }),
            )
        }
        Command::Stage {
            volume_id,
            staging_path,
            access,
            context,
            publish_context,
        } => {
            c.node
                .node_stage_volume(csi::NodeStageVolumeRequest {
                    volume_id: volume_id.clone(),
                    publish_context: map(publish_context),
                    staging_target_path: path_str(staging_path),
                    volume_capability: Some(access.capability()),
                    volume_context: map(context),
                    ..Default::default()
                })
                .await?;
            printed(
                format!("staged {volume_id} at {}", staging_path.display()),
                json!({ "staged": volume_id }),
            )
        }
        Command::Unstage {
            volume_id,
            staging_path,
        } => {
            c.node
                .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                    volume_id: volume_id.clone(),
                    staging_target_path: path_str(staging_path),
                })
                .await?;
            printed(
                format!("unstaged {volume_id}"),
                json!({ "unstaged": volume_id }),
            )
        }
        Command::Publish {
            volume_id,
            target,
            staging_path,
            readonly,
            access,
            context,
            publish_context,
        } => {
            c.node
                .node_publish_volume(csi::NodePublishVolumeRequest {
                    volume_id: volume_id.clone(),
                    publish_context: map(publish_context),
                    staging_target_path: staging_path.as_deref().map(path_str).unwrap_or_default(),
                    target_path: path_str(target),
                    volume_capability: Some(access.capability()),
                    readonly: *readonly,
                    volume_context: map(context),
                    ..Default::default()
                })
                .await?;
            printed(
                format!("published {volume_id} at {}", target.display()),
                json!({ "published": volume_id }),
            )
        }
        Command::Unpublish { volume_id, target } => {
            c.node
                .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                    volume_id: volume_id.clone(),
                    target_path: path_str(target),
                })
                .await?;
            printed(
                format!("unpublished {volume_id}"),
                json!({ "unpublished": volume_id }),
            )
        }
        Command::NodeExpand {
            volume_id,
            path,
            staging_path,
            size,
            block,
        } => {
            let capability = Access {
                block: *block,
                fs_type: None,
                mount_flags: vec![],
                access_mode: AccessModeArg::SingleNodeWriter,
            }
            .capability();
            let r = c
                .node
                .node_expand_volume(csi::NodeExpandVolumeRequest {
                    volume_id: volume_id.clone(),
                    volume_path: path_str(path),
                    capacity_range: size.map(|s| csi::CapacityRange {
                        required_bytes: s,
                        limit_bytes: 0,
                    }),
                    staging_target_path: staging_path.as_deref().map(path_str).unwrap_or_default(),
                    volume_capability: Some(capability),
                    ..Default::default()
                })
                .await?
                .into_inner();
            printed(
                r.capacity_bytes.to_string(),
                json!({ "capacity_bytes": r.capacity_bytes }),
            )
        }
        Command::Stats { volume_id, path } => {
            let r = c
                .node
                .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                    volume_id: volume_id.clone(),
                    volume_path: path_str(path),
                    staging_target_path: String::new(),
                })
                .await?
                .into_inner();
            let mut lines = Vec::new();
            let mut usage = Vec::new();
            for u in &r.usage {
                let unit = csi::volume_usage::Unit::try_from(u.unit)
                    .map_or("UNKNOWN", |x| x.as_str_name());
                lines.push(format!(
                    "{unit} total={} used={} available={}",
                    u.total, u.used, u.available
                ));
                usage.push(json!({ "unit": unit, "total": u.total, "used": u.used, "available": u.available }));
            }
            let cond = r.volume_condition.unwrap_or_default();
            lines.push(format!("abnormal={} {}", cond.abnormal, cond.message));
            printed(
                lines.join("\n"),
                json!({ "usage": usage, "abnormal": cond.abnormal, "message": cond.message }),
            )
        }
        Command::Snapshot(SnapshotCommand::Create { name, volume }) => {
            let r = c
                .controller
                .create_snapshot(csi::CreateSnapshotRequest {
                    source_volume_id: volume.clone(),
                    name: name.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let s = r.snapshot.unwrap_or_default();
            printed(s.snapshot_id.clone(), snapshot_json(&s))
        }
        Command::Snapshot(SnapshotCommand::Delete { snapshot_id }) => {
            c.controller
                .delete_snapshot(csi::DeleteSnapshotRequest {
                    snapshot_id: snapshot_id.clone(),
                    ..Default::default()
                })
                .await?;
            printed(
                format!("deleted {snapshot_id}"),
                json!({ "deleted": snapshot_id }),
            )
        }
        Command::Snapshot(SnapshotCommand::List { volume, max }) => {
            let mut token = String::new();
            let mut lines = Vec::new();
            let mut values = Vec::new();
            loop {
                let r = c
                    .controller
                    .list_snapshots(csi::ListSnapshotsRequest {
                        max_entries: *max,
                        starting_token: token.clone(),
                        source_volume_id: volume.clone().unwrap_or_default(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                for e in &r.entries {
                    let s = e.snapshot.clone().unwrap_or_default();
                    lines.push(format!(
                        "{} {} {} ready={}",
                        s.snapshot_id, s.source_volume_id, s.size_bytes, s.ready_to_use
                    ));
                    values.push(snapshot_json(&s));
                }
                if r.next_token.is_empty() {
                    break;
                }
                token = r.next_token;
            }
            printed(lines.join("\n"), json!(values))
        }
        Command::Capacity { instance, node } => {
            let mut parameters = BTreeMap::new();
            if let Some(i) = instance {
                parameters.insert("type".to_owned(), i.clone());
            }
            let accessible_topology = node.as_ref().map(|n| csi::Topology {
                segments: BTreeMap::from([(
                    "topology.omnidisk.csi.dev/node".to_owned(),
                    n.clone(),
                )]),
            });
            let r = c
                .controller
                .get_capacity(csi::GetCapacityRequest {
                    volume_capabilities: vec![],
                    parameters,
                    accessible_topology,
                })
                .await?
                .into_inner();
            printed(
                r.available_capacity.to_string(),
                json!({ "available_capacity": r.available_capacity, "maximum_volume_size": r.maximum_volume_size }),
            )
        }
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = match omnidisk::cli::socket_path(&cli.endpoint) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let client = match tokio::time::timeout(Duration::from_secs(cli.timeout), connect(&path)).await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            eprintln!("error: cannot connect to {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        Err(_) => {
            eprintln!("error: timed out connecting to {}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match tokio::time::timeout(Duration::from_secs(cli.timeout), run(&cli, client)).await {
        Ok(Ok(out)) => {
            match cli.output {
                Output::Text => {
                    if !out.text.is_empty() {
                        println!("{}", out.text);
                    }
                }
                Output::Json => println!("{}", out.json),
            }
            ExitCode::SUCCESS
        }
        Ok(Err(status)) => {
            eprintln!("error: {:?}: {}", status.code(), status.message());
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("error: the call did not finish within {} s", cli.timeout);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_size("64Mi").unwrap(), 64 << 20);
        assert_eq!(parse_size("2T").unwrap(), 2i64 << 40);
        assert!(parse_size("1X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn key_values_parse() {
        assert_eq!(parse_kv("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_kv("ab").is_err());
    }
}
