//! The provider conformance checks: one list, run through the CSI gRPC API
//! against one provider instance, each check enabled by what the instance's
//! `ProviderInfo` says it supports. A check the instance supports but that
//! cannot run on this host is left out only when the backend says so, with
//! its reason, and the report names it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use omnidisk::generated::csi;
use omnidisk::generated::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use omnidisk_provider_api::types::ProviderInfo;
use tonic::Code;

use super::harness::Served;

/// The checks, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    Capabilities,
    Create,
    IdempotentCreate,
    ConflictingCreate,
    Get,
    List,
    Capacity,
    Expand,
    AttachDetach,
    Snapshot,
    Restore,
    Delete,
    ErrorKinds,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Check::Capabilities => "controller capabilities match ProviderInfo",
            Check::Create => "create",
            Check::IdempotentCreate => "idempotent re-create",
            Check::ConflictingCreate => "AlreadyExists on a conflicting re-create",
            Check::Get => "get + validate capabilities",
            Check::List => "list with paging",
            Check::Capacity => "capacity",
            Check::Expand => "expand",
            Check::AttachDetach => "attach/detach",
            Check::Snapshot => "snapshot create/get/list/delete",
            Check::Restore => "restore from snapshot",
            Check::Delete => "delete and delete again",
            Check::ErrorKinds => "error kinds (NotFound, InvalidArgument)",
        })
    }
}

/// What the suite needs to know about one instance beyond its ProviderInfo.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The instance name (StorageClass `type`).
    pub instance: String,
    /// StorageClass parameters besides `type`.
    pub parameters: BTreeMap<String, String>,
    /// Size of the test volumes, at least the backend's minimum.
    pub volume_bytes: i64,
    /// Checks the instance supports but this host cannot run, with why.
    pub host_limits: Vec<(Check, String)>,
}

/// What ran and what was left out.
#[derive(Debug, Default)]
pub struct Report {
    pub ran: Vec<Check>,
    pub left_out: Vec<(Check, String)>,
}

impl Report {
    fn print(&self, instance: &str) {
        for check in &self.ran {
            eprintln!("conformance [{instance}] ok: {check}");
        }
        for (check, why) in &self.left_out {
            eprintln!("conformance [{instance}] LEFT OUT: {check}: {why}");
        }
    }
}

/// How long snapshots may take to become ready to use.
const SNAPSHOT_READY_WITHIN: Duration = Duration::from_secs(60);

fn mount_cap() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

fn code_of<T: fmt::Debug>(what: &str, result: Result<T, tonic::Status>) -> tonic::Status {
    match result {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(status) => status,
    }
}

fn assert_code<T: fmt::Debug>(
    what: &str,
    result: Result<tonic::Response<T>, tonic::Status>,
    want: Code,
) -> tonic::Status {
    let status = code_of(what, result.map(tonic::Response::into_inner));
    assert_eq!(status.code(), want, "{what}: {status:?}");
    status
}

struct Run<'a> {
    served: &'a Served,
    subject: &'a Subject,
    info: ProviderInfo,
    report: Report,
    node_id: String,
    topology: Option<csi::Topology>,
}

impl Run<'_> {
    fn controller(
        &self,
    ) -> omnidisk::generated::csi::controller_client::ControllerClient<tonic::transport::Channel>
    {
        self.served.client.controller.clone()
    }

    fn prefix(&self) -> String {
        format!("v1.{}.", self.subject.instance)
    }

    /// Whether `check` runs; records why not otherwise.
    fn wants(&mut self, check: Check, supported: bool, unsupported_reason: &str) -> bool {
        if !supported {
            self.report
                .left_out
                .push((check, unsupported_reason.to_owned()));
            return false;
        }
        if let Some((_, why)) = self.subject.host_limits.iter().find(|(c, _)| *c == check) {
            self.report.left_out.push((check, why.clone()));
            return false;
        }
        true
    }

    fn create_request(&self, name: &str, bytes: i64) -> csi::CreateVolumeRequest {
        let mut parameters = self.subject.parameters.clone();
        parameters.insert("type".into(), self.subject.instance.clone());
        csi::CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_cap()],
            parameters,
            accessibility_requirements: self.topology.clone().map(|t| csi::TopologyRequirement {
                requisite: vec![t.clone()],
                preferred: vec![t],
            }),
            ..Default::default()
        }
    }

    async fn create(&self, name: &str, bytes: i64) -> csi::Volume {
        self.controller()
            .create_volume(self.create_request(name, bytes))
            .await
            .unwrap_or_else(|e| panic!("CreateVolume {name}: {e:?}"))
            .into_inner()
            .volume
            .expect("CreateVolume returns a volume")
    }

    async fn get(
        &self,
        volume_id: &str,
    ) -> Result<csi::ControllerGetVolumeResponse, tonic::Status> {
        self.controller()
            .controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: volume_id.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn delete(&self, volume_id: &str) {
        self.controller()
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: volume_id.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("DeleteVolume {volume_id}: {e:?}"));
    }

    async fn capabilities(&mut self) {
        use csi::controller_service_capability::rpc::Type;
        let caps = self
            .controller()
            .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
            .await
            .expect("ControllerGetCapabilities")
            .into_inner();
        let got: BTreeSet<i32> = caps
            .capabilities
            .iter()
            .filter_map(|c| c.r#type.as_ref())
            .map(|csi::controller_service_capability::Type::Rpc(r)| r.r#type)
            .collect();
        let info = &self.info;
        for (rpc, supported) in [
            (Type::CreateDeleteVolume, true),
            (Type::PublishUnpublishVolume, info.attach_required),
            (Type::ListVolumes, info.list_volumes),
            (Type::GetCapacity, info.capacity),
            (Type::CreateDeleteSnapshot, info.snapshots),
            (Type::ListSnapshots, info.snapshots),
            (Type::CloneVolume, info.clone),
            (Type::ExpandVolume, info.expand),
        ] {
            assert_eq!(
                got.contains(&(rpc as i32)),
                supported,
                "{rpc:?} advertised must match ProviderInfo {info:?}"
            );
        }
        self.report.ran.push(Check::Capabilities);
    }

    async fn node(&mut self) {
        let info = self
            .served
            .client
            .node
            .clone()
            .node_get_info(csi::NodeGetInfoRequest {})
            .await
            .expect("NodeGetInfo")
            .into_inner();
        assert!(!info.node_id.is_empty(), "NodeGetInfo gives a node ID");
        self.node_id = info.node_id;
        self.topology = info.accessible_topology;
    }

    /// Lists every volume with pages of one entry, following the tokens.
    async fn list_all_volumes(&self) -> Vec<String> {
        let mut ids = Vec::new();
        let mut token = String::new();
        for _page in 0..1000 {
            let page = self
                .controller()
                .list_volumes(csi::ListVolumesRequest {
                    max_entries: 1,
                    starting_token: token.clone(),
                })
                .await
                .expect("ListVolumes")
                .into_inner();
            assert!(
                page.entries.len() <= 1,
                "max_entries 1 gave {} entries",
                page.entries.len()
            );
            ids.extend(
                page.entries
                    .into_iter()
                    .filter_map(|e| e.volume)
                    .map(|v| v.volume_id),
            );
            if page.next_token.is_empty() {
                return ids;
            }
            token = page.next_token;
        }
        panic!("ListVolumes did not end after 1000 pages");
    }

    async fn list_all_snapshots(&self, source_volume_id: &str) -> Vec<csi::Snapshot> {
        let mut snaps = Vec::new();
        let mut token = String::new();
        for _page in 0..1000 {
            let page = self
                .controller()
                .list_snapshots(csi::ListSnapshotsRequest {
                    max_entries: 1,
                    starting_token: token.clone(),
                    source_volume_id: source_volume_id.into(),
                    ..Default::default()
                })
                .await
                .expect("ListSnapshots")
                .into_inner();
            assert!(
                page.entries.len() <= 1,
                "max_entries 1 gave {} entries",
                page.entries.len()
            );
            snaps.extend(page.entries.into_iter().filter_map(|e| e.snapshot));
            if page.next_token.is_empty() {
                return snaps;
            }
            token = page.next_token;
        }
        panic!("ListSnapshots did not end after 1000 pages");
    }

    async fn create_snapshot(
        &self,
        name: &str,
        source: &str,
    ) -> Result<csi::Snapshot, tonic::Status> {
        self.controller()
            .create_snapshot(csi::CreateSnapshotRequest {
                name: name.into(),
                source_volume_id: source.into(),
                ..Default::default()
            })
            .await
            .map(|r| {
                r.into_inner()
                    .snapshot
                    .expect("CreateSnapshot returns a snapshot")
            })
    }

    async fn get_snapshot(&self, id: &str) -> Result<csi::Snapshot, tonic::Status> {
        self.controller()
            .get_snapshot(csi::GetSnapshotRequest {
                snapshot_id: id.into(),
                ..Default::default()
            })
            .await
            .map(|r| {
                r.into_inner()
                    .snapshot
                    .expect("GetSnapshot returns a snapshot")
            })
    }

    async fn wait_ready(&self, id: &str) -> csi::Snapshot {
        let deadline = tokio::time::Instant::now() + SNAPSHOT_READY_WITHIN;
        loop {
            let snap = self.get_snapshot(id).await.expect("GetSnapshot");
            if snap.ready_to_use {
                return snap;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "snapshot {id} not ready to use within {SNAPSHOT_READY_WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs the suite against `subject`, served by `served`; panics on the
/// first failing assertion, prints and returns what ran.
pub async fn run(served: &Served, subject: &Subject) -> Report {
    let info = served
        .driver
        .registry
        .get(&subject.instance)
        .expect("the instance is configured")
        .info
        .clone();
    let mut run = Run {
        served,
        subject,
        info,
        report: Report::default(),
        node_id: String::new(),
        topology: None,
    };
    let size = subject.volume_bytes;
    run.node().await;
    run.capabilities().await;

    // Create, re-create, conflict.
    let a = run.create("conformance-a", size).await;
    assert!(a.volume_id.starts_with(&run.prefix()), "{}", a.volume_id);
    assert!(
        a.capacity_bytes >= size,
        "{} bytes for a request of {size}",
        a.capacity_bytes
    );
    run.report.ran.push(Check::Create);

    let again = run.create("conformance-a", size).await;
    assert_eq!(
        again.volume_id, a.volume_id,
        "re-create returns the same volume"
    );
    assert_eq!(again.capacity_bytes, a.capacity_bytes);
    run.report.ran.push(Check::IdempotentCreate);

    let conflict = run
        .controller()
        .create_volume(run.create_request("conformance-a", a.capacity_bytes + size))
        .await;
    assert_code("conflicting re-create", conflict, Code::AlreadyExists);
    run.report.ran.push(Check::ConflictingCreate);

    let b = run.create("conformance-b", size).await;
    assert_ne!(b.volume_id, a.volume_id);

    // Get.
    let got = run.get(&a.volume_id).await.expect("ControllerGetVolume");
    let got_volume = got.volume.expect("ControllerGetVolume returns the volume");
    assert_eq!(got_volume.volume_id, a.volume_id);
    assert_eq!(got_volume.capacity_bytes, a.capacity_bytes);
    let validated = run
        .controller()
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: a.volume_id.clone(),
            volume_capabilities: vec![mount_cap()],
            ..Default::default()
        })
        .await
        .expect("ValidateVolumeCapabilities")
        .into_inner();
    assert!(validated.confirmed.is_some(), "{validated:?}");
    run.report.ran.push(Check::Get);

    // List.
    if run.wants(
        Check::List,
        run.info.list_volumes,
        "the provider does not list volumes",
    ) {
        let ids = run.list_all_volumes().await;
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "paging repeated a volume: {ids:?}");
        assert!(
            ids.contains(&a.volume_id) && ids.contains(&b.volume_id),
            "{ids:?}"
        );
        // A token in the driver's format whose provider part was never
        // issued: the provider must refuse it (CSI: ABORTED).
        let bad = run
            .controller()
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 1,
                starting_token: format!("{}/no-such-token", subject.instance),
            })
            .await;
        assert_code("ListVolumes with a token never issued", bad, Code::Aborted);
        run.report.ran.push(Check::List);
    }

    // Capacity.
    if run.wants(
        Check::Capacity,
        run.info.capacity,
        "the provider does not report capacity",
    ) {
        let cap = run
            .controller()
            .get_capacity(csi::GetCapacityRequest {
                volume_capabilities: vec![mount_cap()],
                parameters: run.create_request("", 0).parameters,
                accessible_topology: run.topology.clone(),
            })
            .await
            .expect("GetCapacity")
            .into_inner();
        assert!(cap.available_capacity > 0, "{cap:?}");
        run.report.ran.push(Check::Capacity);
    }

    // Expand.
    if run.wants(
        Check::Expand,
        run.info.expand,
        "the provider cannot expand volumes",
    ) {
        let wanted = a.capacity_bytes + size;
        let grown = run
            .controller()
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: a.volume_id.clone(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: wanted,
                    limit_bytes: 0,
                }),
                volume_capability: Some(mount_cap()),
                ..Default::default()
            })
            .await
            .expect("ControllerExpandVolume")
            .into_inner();
        assert!(grown.capacity_bytes >= wanted, "{grown:?}");
        let now = run
            .get(&a.volume_id)
            .await
            .expect("ControllerGetVolume")
            .volume
            .expect("volume");
        assert!(now.capacity_bytes >= wanted, "{now:?}");
        run.report.ran.push(Check::Expand);
    }

    // Attach and detach, with the node ID NodeGetInfo gave.
    if run.wants(
        Check::AttachDetach,
        run.info.attach_required,
        "the provider needs no attachment (ControllerPublish is a no-op)",
    ) {
        let publish = csi::ControllerPublishVolumeRequest {
            volume_id: a.volume_id.clone(),
            node_id: run.node_id.clone(),
            volume_capability: Some(mount_cap()),
            ..Default::default()
        };
        let first = run
            .controller()
            .controller_publish_volume(publish.clone())
            .await
            .expect("ControllerPublishVolume")
            .into_inner();
        let second = run
            .controller()
            .controller_publish_volume(publish)
            .await
            .expect("ControllerPublishVolume again")
            .into_inner();
        assert_eq!(
            first.publish_context, second.publish_context,
            "re-attach returns the same context"
        );
        if run.info.published_nodes {
            let status = run
                .get(&a.volume_id)
                .await
                .expect("ControllerGetVolume")
                .status
                .expect("status");
            assert_eq!(status.published_node_ids, vec![run.node_id.clone()]);
        }
        let busy = run
            .controller()
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: a.volume_id.clone(),
                ..Default::default()
            })
            .await;
        assert_code(
            "deleting an attached volume",
            busy,
            Code::FailedPrecondition,
        );
        let unpublish = csi::ControllerUnpublishVolumeRequest {
            volume_id: a.volume_id.clone(),
            node_id: run.node_id.clone(),
            ..Default::default()
        };
        run.controller()
            .controller_unpublish_volume(unpublish.clone())
            .await
            .expect("ControllerUnpublishVolume");
        run.controller()
            .controller_unpublish_volume(unpublish)
            .await
            .expect("ControllerUnpublishVolume again");
        if run.info.published_nodes {
            let status = run
                .get(&a.volume_id)
                .await
                .expect("ControllerGetVolume")
                .status
                .expect("status");
            assert!(status.published_node_ids.is_empty(), "{status:?}");
        }
        run.report.ran.push(Check::AttachDetach);
    } else {
        // The attacher still calls when another instance needs attachment:
        // it must succeed without doing anything.
        let noop = run
            .controller()
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: a.volume_id.clone(),
                node_id: run.node_id.clone(),
                volume_capability: Some(mount_cap()),
                ..Default::default()
            })
            .await
            .expect("ControllerPublishVolume on a volume that needs no attachment")
            .into_inner();
        assert!(noop.publish_context.is_empty(), "{noop:?}");
    }

    // Snapshots and restore.
    let snapshots = run.wants(
        Check::Snapshot,
        run.info.snapshots,
        "the provider has no snapshots",
    );
    if snapshots {
        let snap = run
            .create_snapshot("conformance-snap-a", &a.volume_id)
            .await
            .expect("CreateSnapshot");
        assert!(
            snap.snapshot_id.starts_with(&run.prefix()),
            "{}",
            snap.snapshot_id
        );
        assert_eq!(snap.source_volume_id, a.volume_id);
        let again = run
            .create_snapshot("conformance-snap-a", &a.volume_id)
            .await
            .expect("CreateSnapshot again");
        assert_eq!(
            again.snapshot_id, snap.snapshot_id,
            "re-create returns the same snapshot"
        );
        let conflict = run
            .create_snapshot("conformance-snap-a", &b.volume_id)
            .await;
        let status = code_of("snapshot re-created from another volume", conflict);
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        let snap_b = run
            .create_snapshot("conformance-snap-b", &b.volume_id)
            .await
            .expect("CreateSnapshot of b");

        let ready = run.wait_ready(&snap.snapshot_id).await;
        assert_eq!(ready.snapshot_id, snap.snapshot_id);
        assert_eq!(ready.source_volume_id, a.volume_id);
        run.wait_ready(&snap_b.snapshot_id).await;

        let of_a = run.list_all_snapshots(&a.volume_id).await;
        assert_eq!(
            of_a.iter().map(|s| &s.snapshot_id).collect::<Vec<_>>(),
            vec![&snap.snapshot_id],
            "snapshots of a"
        );
        let all: Vec<String> = run
            .list_all_snapshots("")
            .await
            .into_iter()
            .map(|s| s.snapshot_id)
            .collect();
        assert!(
            all.contains(&snap.snapshot_id) && all.contains(&snap_b.snapshot_id),
            "{all:?}"
        );
        assert_eq!(
            all.iter().collect::<BTreeSet<_>>().len(),
            all.len(),
            "paging repeated a snapshot: {all:?}"
        );
        run.report.ran.push(Check::Snapshot);

        // Every provider with snapshots restores them (ProviderInfo has no
        // separate flag); a host may still be unable to.
        if run.wants(Check::Restore, true, "") {
            // The external-provisioner never asks for less than the
            // snapshot's size (it refuses such a claim itself).
            let mut req = run.create_request("conformance-restored", ready.size_bytes.max(size));
            req.volume_content_source = Some(csi::VolumeContentSource {
                r#type: Some(csi::volume_content_source::Type::Snapshot(
                    csi::volume_content_source::SnapshotSource {
                        snapshot_id: snap.snapshot_id.clone(),
                    },
                )),
            });
            let restored = run
                .controller()
                .create_volume(req)
                .await
                .expect("CreateVolume from a snapshot")
                .into_inner()
                .volume
                .expect("volume");
            assert!(restored.volume_id.starts_with(&run.prefix()));
            assert!(
                restored.capacity_bytes >= ready.size_bytes,
                "{restored:?} from {ready:?}"
            );
            match restored.content_source.and_then(|s| s.r#type) {
                Some(csi::volume_content_source::Type::Snapshot(s)) => {
                    assert_eq!(s.snapshot_id, snap.snapshot_id)
                }
                other => panic!("restored volume names its source snapshot, got {other:?}"),
            }
            run.delete(&restored.volume_id).await;
            run.report.ran.push(Check::Restore);
        }

        for id in [&snap.snapshot_id, &snap_b.snapshot_id] {
            for _ in 0..2 {
                run.controller()
                    .delete_snapshot(csi::DeleteSnapshotRequest {
                        snapshot_id: id.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("DeleteSnapshot {id} (twice): {e:?}"));
            }
        }
        let gone = run.get_snapshot(&snap.snapshot_id).await;
        let status = code_of("GetSnapshot after delete", gone);
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    } else {
        let why = run
            .report
            .left_out
            .iter()
            .find(|(c, _)| *c == Check::Snapshot)
            .map(|(_, why)| why.clone())
            .unwrap_or_default();
        run.report
            .left_out
            .push((Check::Restore, format!("needs snapshots: {why}")));
    }

    // Errors a CO relies on, before the volumes go away.
    let unknown = {
        let mut req = run.create_request("conformance-bad-param", size);
        req.parameters
            .insert("conformanceNoSuchKey".into(), "1".into());
        run.controller().create_volume(req).await
    };
    let status = assert_code(
        "an unknown StorageClass parameter",
        unknown,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains("conformanceNoSuchKey"),
        "the message names the key: {status:?}"
    );
    let stranger = run.get(&format!("v1.{}-nosuch.x", subject.instance)).await;
    let status = code_of("a volume of an instance not configured", stranger);
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Delete, twice; the deleted volume is NotFound from now on.
    for volume in [&a, &b] {
        run.delete(&volume.volume_id).await;
        run.delete(&volume.volume_id).await;
    }
    run.report.ran.push(Check::Delete);
    let status = code_of(
        "ControllerGetVolume of a deleted volume",
        run.get(&a.volume_id).await,
    );
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    if run.info.expand {
        let status = code_of(
            "expanding a deleted volume",
            run.controller()
                .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                    volume_id: a.volume_id.clone(),
                    capacity_range: Some(csi::CapacityRange {
                        required_bytes: size * 4,
                        limit_bytes: 0,
                    }),
                    ..Default::default()
                })
                .await
                .map(tonic::Response::into_inner),
        );
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    if snapshots {
        let status = code_of(
            "a snapshot of a deleted volume",
            run.create_snapshot("conformance-snap-gone", &a.volume_id)
                .await,
        );
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    if run.info.list_volumes {
        let left = run.list_all_volumes().await;
        assert!(
            !left.contains(&a.volume_id) && !left.contains(&b.volume_id),
            "{left:?}"
        );
    }
    run.report.ran.push(Check::ErrorKinds);

    run.report.print(&subject.instance);
    run.report
}
