//! The provider through the `Provider` trait against the signature-checking
//! fake ECS endpoint.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use omnidisk_provider_aliyun_disk::fake_ecs::oplog::{OpConcurrency, OpEdge, OpKind};
use omnidisk_provider_aliyun_disk::fake_ecs::verify::AcceptedKey;
use omnidisk_provider_aliyun_disk::fake_ecs::{Delays, FakeEcs, FakeEcsConfig};
use omnidisk_provider_aliyun_disk::{DISK_ZONE_KEY, FACTORY, ZONE_KEY};
use omnidisk_provider_api::types::*;
use omnidisk_provider_api::{ErrorKind, Provider};

const ZONE_A: &str = "cn-hangzhou-a";
const ZONE_B: &str = "cn-hangzhou-b";

fn settings(fake: &FakeEcs, extra: &str) -> String {
    format!(
        r#"
region_id = "cn-hangzhou"
endpoint = "{}"
metadata_base_url = "{}"
api_timeout_seconds = 5
{extra}
[credentials]
source = "access_key"
access_key_id = "fake-key-id"
access_key_secret = "fake-key-secret"
[waits]
create_seconds = 10
attach_seconds = 10
detach_seconds = 10
modify_seconds = 10
poll_interval_ms = 20
batch_window_ms = 10
"#,
        fake.endpoint(),
        fake.metadata_base_url()
    )
}

async fn provider_with(_fake: &FakeEcs, toml: String, mode: &str) -> Arc<dyn Provider> {
    (FACTORY.create)(InitRequest {
        instance: "ali-test".into(),
        settings_toml: toml,
        node_name: "node-1".into(),
        mode: mode.into(),
    })
    .await
    .unwrap()
}

async fn start() -> (FakeEcs, Arc<dyn Provider>) {
    let fake = FakeEcs::start(FakeEcsConfig::standard()).await.unwrap();
    let p = provider_with(&fake, settings(&fake, ""), "all").await;
    (fake, p)
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn create_req(name: &str, gib: i64, zone: &str, pairs: &[(&str, &str)]) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        required_bytes: gib * GIB,
        parameters: params(pairs),
        requisite: vec![Topology::from_pairs([(ZONE_KEY, zone)])],
        ..CreateVolumeRequest::default()
    }
}

fn attach(volume: &str, node: &str) -> AttachRequest {
    AttachRequest {
        volume_id: volume.into(),
        node_id: node.into(),
        ..AttachRequest::default()
    }
}

#[tokio::test]
async fn controller_life_cycle() {
    let (fake, p) = start().await;
    assert!(p.info().attach_required);
    let vol = p
        .create_volume(create_req(
            "pvc-life",
            20,
            ZONE_A,
            &[("category", "cloud_essd"), ("diskTags", "team:storage")],
        ))
        .await
        .unwrap();
    assert_eq!(vol.capacity_bytes, 20 * GIB);
    assert_eq!(vol.accessible_topology[0].segments[DISK_ZONE_KEY], ZONE_A);
    let disk = fake.disk(&vol.id).unwrap();
    assert_eq!(disk.status, "Available");
    assert_eq!(disk.category, "cloud_essd");
    assert_eq!(disk.tags["team"], "storage");
    assert_eq!(disk.tags["omnidisk.csi.dev/volume-name"], "pvc-life");

    let ctx = p
        .attach_volume(attach(&vol.id, "i-fake0001"))
        .await
        .unwrap();
    assert_eq!(
        ctx.publish_context["serial"],
        vol.id.trim_start_matches("d-")
    );
    assert_eq!(fake.disk(&vol.id).unwrap().status, "In_use");
    // Idempotent, and exclusive.
    assert_eq!(
        p.attach_volume(attach(&vol.id, "i-fake0001"))
            .await
            .unwrap(),
        ctx
    );
    let err = p
        .attach_volume(attach(&vol.id, "i-fake0002"))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::FailedPrecondition,
        "{}",
        err.full_message()
    );
    let other = p
        .create_volume(create_req("pvc-other", 20, ZONE_A, &[]))
        .await
        .unwrap();
    let err = p
        .attach_volume(attach(&other.id, "i-nosuch"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{}", err.full_message());
    p.delete_volume(VolumeRef {
        volume_id: other.id.clone(),
    })
    .await
    .unwrap();
    let err = p
        .delete_volume(VolumeRef {
            volume_id: vol.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);

    let status = p
        .get_volume(VolumeRef {
            volume_id: vol.id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(status.published_nodes, vec!["i-fake0001".to_owned()]);
    let listed = p.list_volumes(ListRequest::default()).await.unwrap();
    assert_eq!(listed.entries.len(), 1);
    assert_eq!(
        listed.entries[0].published_nodes,
        vec!["i-fake0001".to_owned()]
    );

    // Online resize while attached.
    let grown = p
        .expand_volume(ExpandVolumeRequest {
            volume_id: vol.id.clone(),
            required_bytes: 40 * GIB - 5,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(grown.capacity_bytes, 40 * GIB);
    assert!(grown.node_expansion_required);
    assert_eq!(fake.disk(&vol.id).unwrap().size_gib, 40);
    let err = p
        .expand_volume(ExpandVolumeRequest {
            volume_id: vol.id.clone(),
            required_bytes: 70_000 * GIB,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange);

    // Modify: PL2 needs 461 GiB, PL0 fits.
    let err = p
        .modify_volume(ModifyVolumeRequest {
            volume_id: vol.id.clone(),
            mutable_parameters: params(&[("performanceLevel", "PL2")]),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange, "{}", err.full_message());
    p.modify_volume(ModifyVolumeRequest {
        volume_id: vol.id.clone(),
        mutable_parameters: params(&[("performanceLevel", "PL0")]),
    })
    .await
    .unwrap();
    assert_eq!(fake.disk(&vol.id).unwrap().performance_level, "PL0");
    let err = p
        .modify_volume(ModifyVolumeRequest {
            volume_id: vol.id.clone(),
            mutable_parameters: params(&[("size", "1")]),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);

    p.detach_volume(DetachRequest {
        volume_id: vol.id.clone(),
        node_id: "i-fake0001".into(),
    })
    .await
    .unwrap();
    assert_eq!(fake.disk(&vol.id).unwrap().status, "Available");
    p.detach_volume(DetachRequest {
        volume_id: vol.id.clone(),
        node_id: "i-fake0001".into(),
    })
    .await
    .unwrap();
    p.delete_volume(VolumeRef {
        volume_id: vol.id.clone(),
    })
    .await
    .unwrap();
    p.delete_volume(VolumeRef {
        volume_id: vol.id.clone(),
    })
    .await
    .unwrap();
    assert!(fake.disks().is_empty());
    let err = p
        .get_volume(VolumeRef {
            volume_id: vol.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(fake.errors().get("InvalidOperation.Conflict"), None);
}

#[tokio::test]
async fn category_fallback_skips_what_the_zone_does_not_sell() {
    let (fake, p) = start().await;
    let vol = p
        .create_volume(create_req(
            "pvc-fallback",
            30,
            ZONE_B,
            &[("category", "cloud_essd,cloud_ssd,cloud_efficiency")],
        ))
        .await
        .unwrap();
    let disk = fake.disk(&vol.id).unwrap();
    assert_eq!(disk.category, "cloud_ssd");
    assert_eq!(disk.zone, ZONE_B);
    assert_eq!(
        fake.errors().get("InvalidDataDiskCategory.NotSupported"),
        Some(&1)
    );
    // Nothing on sale at all: ResourceExhausted, nothing left behind.
    let err = p
        .create_volume(create_req(
            "pvc-none",
            30,
            ZONE_B,
            &[("category", "cloud_essd,cloud_auto")],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::ResourceExhausted,
        "{}",
        err.full_message()
    );
    assert_eq!(fake.disks().len(), 1);
}

#[tokio::test]
async fn size_limits_are_enforced_per_category() {
    let (fake, p) = start().await;
    let err = p
        .create_volume(create_req(
            "pvc-huge",
            3000,
            ZONE_A,
            &[("category", "cloud")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange, "{}", err.full_message());
    // Too big for `cloud`, so the next category is used without asking ECS.
    let vol = p
        .create_volume(create_req(
            "pvc-big",
            3000,
            ZONE_A,
            &[("category", "cloud,cloud_ssd")],
        ))
        .await
        .unwrap();
    assert_eq!(fake.disk(&vol.id).unwrap().category, "cloud_ssd");
    // A small request is rounded up to the category minimum when the limit allows...
    let vol = p
        .create_volume(create_req(
            "pvc-small",
            1,
            ZONE_A,
            &[("category", "cloud_ssd")],
        ))
        .await
        .unwrap();
    assert_eq!(vol.capacity_bytes, 20 * GIB);
    // ...and refused when it does not.
    let mut req = create_req("pvc-capped", 1, ZONE_A, &[("category", "cloud_ssd")]);
    req.limit_bytes = 10 * GIB;
    let err = p.create_volume(req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange);
    assert_eq!(fake.disks().len(), 2);
    assert_eq!(fake.calls().get("CreateDisk"), Some(&2));
}

#[tokio::test]
async fn creation_is_idempotent_by_name() {
    let (fake, p) = start().await;
    let req = create_req("pvc-idem", 20, ZONE_A, &[("category", "cloud_essd")]);
    let a = p.create_volume(req.clone()).await.unwrap();
    let b = p.create_volume(req.clone()).await.unwrap();
    assert_eq!(a.id, b.id);
    assert_eq!(fake.disks().len(), 1);
    let err = p
        .create_volume(create_req(
            "pvc-idem",
            50,
            ZONE_A,
            &[("category", "cloud_essd")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    // After deletion the old ClientToken points at a dead disk; a new
    // create with the same name must still yield exactly one live disk.
    p.delete_volume(VolumeRef {
        volume_id: a.id.clone(),
    })
    .await
    .unwrap();
    let c = p.create_volume(req.clone()).await.unwrap();
    assert_ne!(c.id, a.id);
    assert_eq!(fake.disks().len(), 1);
    // Same name, other parameters after deletion: IdempotentParameterMismatch
    // from ECS, handled with a fresh token and no leaked disk.
    p.delete_volume(VolumeRef {
        volume_id: c.id.clone(),
    })
    .await
    .unwrap();
    let d = p
        .create_volume(create_req(
            "pvc-idem",
            25,
            ZONE_A,
            &[("category", "cloud_essd")],
        ))
        .await
        .unwrap();
    // Both earlier tokens (generation 0 and the burned-token generation 1)
    // were bound to 20 GiB, so both answer with a mismatch.
    assert_eq!(fake.errors().get("IdempotentParameterMismatch"), Some(&2));
    assert_eq!(fake.disks().len(), 1);
    assert_eq!(fake.disk(&d.id).unwrap().size_gib, 25);
}

#[tokio::test]
async fn concurrent_attaches_to_one_instance_do_not_conflict() {
    let (fake, p) = start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            p.create_volume(create_req(&format!("pvc-c{i}"), 20, ZONE_A, &[]))
                .await
                .unwrap()
                .id,
        );
    }
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let p = Arc::clone(&p);
            let id = id.clone();
            tokio::spawn(async move { p.attach_volume(attach(&id, "i-fake0001")).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(
        ids.iter()
            .all(|id| fake.disk(id).unwrap().status == "In_use")
    );
    assert_eq!(fake.errors().get("InvalidOperation.Conflict"), None);
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let p = Arc::clone(&p);
            let id = id.clone();
            tokio::spawn(async move {
                p.detach_volume(DetachRequest {
                    volume_id: id,
                    node_id: String::new(),
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(
        ids.iter()
            .all(|id| fake.disk(id).unwrap().status == "Available")
    );
    assert_eq!(fake.errors().get("InvalidOperation.Conflict"), None);
}

#[tokio::test]
async fn an_outside_conflict_is_waited_out() {
    let (fake, p) = start().await;
    let id = p
        .create_volume(create_req("pvc-conf", 20, ZONE_A, &[]))
        .await
        .unwrap()
        .id;
    fake.fail_next("AttachDisk", 403, "InvalidOperation.Conflict");
    p.attach_volume(attach(&id, "i-fake0002")).await.unwrap();
    assert_eq!(fake.errors().get("InvalidOperation.Conflict"), Some(&1));
    assert_eq!(fake.calls().get("AttachDisk"), Some(&2));
}

#[tokio::test]
async fn attaching_across_zones_is_refused() {
    let (_fake, p) = start().await;
    let id = p
        .create_volume(create_req("pvc-zone", 20, ZONE_A, &[]))
        .await
        .unwrap()
        .id;
    let err = p
        .attach_volume(attach(&id, "i-fake0004"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(
        err.full_message().contains("ResourcesNotInSameZone"),
        "{}",
        err.full_message()
    );
}

#[tokio::test]
async fn snapshots_progress_then_restore() {
    let (fake, p) = start().await;
    fake.set_delays(Delays {
        snapshot: Duration::from_millis(400),
        ..Delays::default()
    });
    let vol = p
        .create_volume(create_req("pvc-src", 30, ZONE_A, &[]))
        .await
        .unwrap();
    let req = CreateSnapshotRequest {
        name: "snap-1".into(),
        source_volume_id: vol.id.clone(),
        parameters: params(&[("snapshotTags/app", "db")]),
    };
    let snap = p.create_snapshot(req.clone()).await.unwrap();
    assert!(!snap.ready_to_use);
    assert_eq!(snap.size_bytes, 30 * GIB);
    assert!(snap.creation_time_seconds > 1_600_000_000);
    let again = p.create_snapshot(req.clone()).await.unwrap();
    assert_eq!(again.id, snap.id);
    assert_eq!(fake.snapshot_count(), 1);
    let err = p
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: "d-other".into(),
            ..req.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    // Restoring from an unfinished snapshot is refused with a retryable kind.
    let mut restore = create_req("pvc-restore", 10, ZONE_A, &[]);
    restore.source = Some(create_volume_request::Source::SourceSnapshotId(
        snap.id.clone(),
    ));
    assert_eq!(
        p.create_volume(restore.clone()).await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        p.get_snapshot(SnapshotRef {
            snapshot_id: snap.id.clone()
        })
        .await
        .unwrap()
        .ready_to_use
    );
    let listed = p
        .list_snapshots(ListSnapshotsRequest {
            source_volume_id: vol.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.entries.len(), 1);
    let restored = p.create_volume(restore).await.unwrap();
    assert_eq!(
        restored.capacity_bytes,
        30 * GIB,
        "grown to the snapshot's size"
    );
    assert_eq!(
        restored.source,
        Some(volume::Source::SourceSnapshotId(snap.id.clone()))
    );
    p.delete_snapshot(SnapshotRef {
        snapshot_id: snap.id.clone(),
    })
    .await
    .unwrap();
    p.delete_snapshot(SnapshotRef {
        snapshot_id: snap.id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(fake.snapshot_count(), 0);
    let err = p
        .get_snapshot(SnapshotRef {
            snapshot_id: snap.id,
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn a_wait_that_runs_out_is_deadline_exceeded_and_resumable() {
    let fake = FakeEcs::start(FakeEcsConfig::standard()).await.unwrap();
    let toml = settings(&fake, "").replace("create_seconds = 10", "create_seconds = 1");
    let p = provider_with(&fake, toml, "controller").await;
    fake.set_delays(Delays {
        create: Duration::from_millis(2500),
        ..Delays::default()
    });
    let req = create_req("pvc-slow", 20, ZONE_A, &[]);
    let err = p.create_volume(req.clone()).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::DeadlineExceeded,
        "{}",
        err.full_message()
    );
    assert_eq!(
        fake.disks().len(),
        1,
        "the disk is kept for the repeat, not leaked"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let vol = p.create_volume(req).await.unwrap();
    assert_eq!(fake.disks().len(), 1);
    assert_eq!(fake.disk(&vol.id).unwrap().status, "Available");
}

#[tokio::test]
async fn throttling_is_absorbed() {
    let (fake, p) = start().await;
    fake.throttle_next(3, 30);
    let vol = p
        .create_volume(create_req("pvc-throttle", 20, ZONE_A, &[]))
        .await
        .unwrap();
    assert_eq!(fake.errors().get("Throttling.User"), Some(&3));
    assert!(fake.disk(&vol.id).is_some());
    // A write without a ClientToken is repeated after throttling too: the
    // service refused it before acting.
    fake.throttle_next(2, 30);
    p.attach_volume(attach(&vol.id, "i-fake0003"))
        .await
        .unwrap();
    assert_eq!(fake.errors().get("Throttling.User"), Some(&5));
}

#[tokio::test]
async fn authentication_failures_are_classified() {
    let fake = FakeEcs::start(FakeEcsConfig::standard()).await.unwrap();
    let bad = settings(&fake, "").replace("fake-key-secret", "wrong-secret");
    let p = provider_with(&fake, bad, "controller").await;
    let err = p
        .create_volume(create_req("pvc-auth", 20, ZONE_A, &[]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(
        err.full_message().contains("SignatureDoesNotMatch"),
        "{}",
        err.full_message()
    );

    let p = provider_with(&fake, settings(&fake, ""), "controller").await;
    fake.set_clock_offset(20 * 60);
    let err = p
        .create_volume(create_req("pvc-auth", 20, ZONE_A, &[]))
        .await
        .unwrap_err();
    assert!(
        err.full_message().contains("InvalidTimeStamp.Expired"),
        "{}",
        err.full_message()
    );
    fake.set_clock_offset(10 * 60);
    p.create_volume(create_req("pvc-auth", 20, ZONE_A, &[]))
        .await
        .unwrap();
    assert!(!fake.errors().contains_key("SignatureNonceUsed"));
}

#[tokio::test]
async fn rpc_signatures_and_sts_tokens_work_too() {
    let fake = FakeEcs::start(FakeEcsConfig::standard()).await.unwrap();
    fake.add_key(
        "STS.temp",
        AcceptedKey {
            secret: "temp-secret".into(),
            security_token: Some("tok-123".into()),
        },
    );
    let toml = settings(&fake, "signature_version = \"rpc\"").replace(
        "source = \"access_key\"\naccess_key_id = \"fake-key-id\"\naccess_key_secret = \"fake-key-secret\"",
        "source = \"sts\"\naccess_key_id = \"STS.temp\"\naccess_key_secret = \"temp-secret\"\nsecurity_token = \"tok-123\"\nexpiration = \"2200-01-01T00:00:00Z\"",
    );
    let p = provider_with(&fake, toml, "controller").await;
    let vol = p
        .create_volume(create_req(
            "pvc-rpc",
            20,
            ZONE_A,
            &[("diskTags", "名前:値")],
        ))
        .await
        .unwrap();
    assert_eq!(fake.disk(&vol.id).unwrap().tags["名前"], "値");
    assert!(!fake.calls().contains_key("(auth)"));
}

#[tokio::test]
async fn ram_role_credentials_come_from_metadata() {
    let mut config = FakeEcsConfig::standard();
    config.keys.insert(
        "STS.role".into(),
        AcceptedKey {
            secret: "role-secret".into(),
            security_token: Some("role-token".into()),
        },
    );
    config.metadata.ram_role = Some(("csi-role".into(), "STS.role".into()));
    let fake = FakeEcs::start(config).await.unwrap();
    let toml = settings(&fake, "").replace(
        "source = \"access_key\"\naccess_key_id = \"fake-key-id\"\naccess_key_secret = \"fake-key-secret\"",
        "source = \"ram_role\"",
    );
    let p = provider_with(&fake, toml, "controller").await;
    p.create_volume(create_req("pvc-role", 20, ZONE_A, &[]))
        .await
        .unwrap();
    assert!(!fake.calls().contains_key("(auth)"));
}

#[tokio::test]
async fn node_identity_comes_from_metadata() {
    let fake = FakeEcs::start(FakeEcsConfig::standard()).await.unwrap();
    let toml = settings(&fake, "").replace("region_id = \"cn-hangzhou\"", "");
    let p = provider_with(&fake, toml, "node").await;
    let info = p.node_info().await.unwrap();
    assert_eq!(info.node_id, "i-fake0001");
    let topology = info.topology.unwrap();
    assert_eq!(topology.segments[ZONE_KEY], ZONE_A);
    assert_eq!(topology.segments[DISK_ZONE_KEY], ZONE_A);
    assert_eq!(info.max_volumes, 16);
    let toml = settings(
        &fake,
        "[node]\ninstance_id = \"i-override\"\nzone_id = \"z-9\"\nmax_volumes_per_node = 7\n",
    );
    let p = provider_with(&fake, toml, "node").await;
    let info = p.node_info().await.unwrap();
    assert_eq!((info.node_id.as_str(), info.max_volumes), ("i-override", 7));
}

#[tokio::test]
async fn list_volumes_pages_without_gaps_or_repeats() {
    let (_fake, p) = start().await;
    let mut want = Vec::new();
    for i in 0..12 {
        want.push(
            p.create_volume(create_req(&format!("pvc-l{i:02}"), 20, ZONE_A, &[]))
                .await
                .unwrap()
                .id,
        );
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = p
            .list_volumes(ListRequest {
                max_entries: 5,
                starting_token: token,
            })
            .await
            .unwrap();
        assert!(page.entries.len() <= 5);
        seen.extend(page.entries.into_iter().map(|e| e.volume.unwrap().id));
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    seen.sort();
    want.sort();
    assert_eq!(seen, want);
    let err = p
        .list_volumes(ListRequest {
            max_entries: 5,
            starting_token: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Aborted);
}

#[tokio::test]
async fn describe_calls_are_batched_across_waiters() {
    let (fake, p) = start().await;
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let p = Arc::clone(&p);
            tokio::spawn(async move {
                p.create_volume(create_req(&format!("pvc-b{i}"), 20, ZONE_A, &[]))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let calls = fake.calls();
    let describes = calls.get("DescribeDisks").copied().unwrap_or(0);
    // Each create also looks its name up once (a tag query, unbatchable);
    // the waits themselves must share calls.
    assert!(
        describes < 30 * 2,
        "{describes} DescribeDisks calls for 30 creates: {calls:?}"
    );
}

/// A fake with `count` instances `i-<prefix>NN` in zone A, whose attaches
/// and detaches take the given times.
async fn fake_with_instances(prefix: &str, count: usize, delays: Delays) -> FakeEcs {
    let mut config = FakeEcsConfig::standard();
    config.instances = (1..=count)
        .map(|i| (format!("i-{prefix}{i:02}"), ZONE_A.to_owned()))
        .collect();
    config.delays = delays;
    FakeEcs::start(config).await.unwrap()
}

/// The budget from issue 5: 100 disks created and attached concurrently
/// across 10 instances, counting API calls by action, and checking from the
/// fake's operation log that no instance waited behind another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_100_disks_across_10_instances() {
    let delays = Delays {
        create: Duration::from_millis(300),
        attach: Duration::from_millis(200),
        ..Delays::default()
    };
    let fake = fake_with_instances("budget", 10, delays).await;
    let toml = settings(&fake, "")
        .replace("poll_interval_ms = 20", "poll_interval_ms = 100")
        .replace("batch_window_ms = 10", "batch_window_ms = 50");
    let p = provider_with(&fake, toml, "controller").await;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let p = Arc::clone(&p);
            tokio::spawn(async move {
                let vol = p
                    .create_volume(create_req(&format!("pvc-budget-{i:03}"), 20, ZONE_A, &[]))
                    .await?;
                p.attach_volume(attach(&vol.id, &format!("i-budget{:02}", i % 10 + 1)))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let calls = fake.calls();
    eprintln!("budget: API calls by action for 100 disks / 10 instances: {calls:?}");
    assert_eq!(calls.get("CreateDisk"), Some(&100));
    assert_eq!(calls.get("AttachDisk"), Some(&100));
    let describes = calls.get("DescribeDisks").copied().unwrap_or(0);
    assert!(
        describes as f64 / 100.0 <= 1.5,
        "{describes} DescribeDisks calls for 100 disks"
    );
    assert_eq!(fake.errors().get("InvalidOperation.Conflict"), None);
    assert!(fake.disks().iter().all(|d| d.status == "In_use"));
    let c = fake.op_concurrency();
    eprintln!(
        "budget: {describes} DescribeDisks = {:.2} per disk; peak distinct instances with an attach in flight: {} of 10; most attaches in flight on one instance: {}",
        describes as f64 / 100.0,
        c.peak_instances,
        c.max_per_instance
    );
    assert_eq!((c.started, c.unfinished), (100, 0), "{c:?}");
    // ECS allows one operation per instance; the provider's per-instance
    // lock must keep to that without serializing instances. The fake refuses
    // an overlapping attempt (counted above as InvalidOperation.Conflict,
    // none) and logs only accepted ones, so the two checks together cover
    // attempts and accepted operations. The creates all finish in the same
    // poll round, so the first attach of every instance is accepted before
    // any attach (200 ms) can finish: the peak is every instance.
    assert_eq!(c.max_per_instance, 1, "{c:?}");
    assert_eq!(c.peak_instances, 10, "{c:?}");
}

/// Negative control for the budget's concurrency figure: the same provider
/// driven with one global lock around every attach (as a driver that
/// serialized all instances would) shows a peak of one instance, and the
/// unlocked detaches that follow show every instance busy at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operation_log_tells_serialized_instances_apart() {
    let delays = Delays {
        attach: Duration::from_millis(100),
        detach: Duration::from_millis(200),
        ..Delays::default()
    };
    let fake = fake_with_instances("ctl", 5, delays).await;
    let p = provider_with(&fake, settings(&fake, ""), "controller").await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let vol = p
            .create_volume(create_req(&format!("pvc-ctl-{i}"), 20, ZONE_A, &[]))
            .await
            .unwrap();
        ids.push((vol.id, format!("i-ctl{:02}", i % 5 + 1)));
    }
    let global = Arc::new(tokio::sync::Mutex::new(()));
    let tasks: Vec<_> = ids
        .iter()
        .cloned()
        .map(|(id, node)| {
            let (p, global) = (Arc::clone(&p), Arc::clone(&global));
            tokio::spawn(async move {
                let _one_at_a_time = global.lock().await;
                p.attach_volume(attach(&id, &node)).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let attaches = fake.op_log();
    assert!(attaches.iter().all(|e| e.kind == OpKind::Attach));
    let serialized = OpConcurrency::of(&attaches);
    eprintln!("control: globally serialized attaches: {serialized:?}");
    assert_eq!(
        serialized,
        OpConcurrency {
            started: 10,
            unfinished: 0,
            peak_instances: 1,
            max_per_instance: 1,
        }
    );

    let tasks: Vec<_> = ids
        .iter()
        .cloned()
        .map(|(id, node)| {
            let p = Arc::clone(&p);
            tokio::spawn(async move {
                p.detach_volume(DetachRequest {
                    volume_id: id,
                    node_id: node,
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let log = fake.op_log();
    let detaches = &log[attaches.len()..];
    assert!(detaches.iter().all(|e| e.kind == OpKind::Detach));
    assert_eq!(
        detaches.iter().filter(|e| e.edge == OpEdge::End).count(),
        10
    );
    let parallel = OpConcurrency::of(detaches);
    eprintln!("control: detaches under the provider's own locking: {parallel:?}");
    assert_eq!(parallel.max_per_instance, 1, "{parallel:?}");
    assert_eq!(parallel.peak_instances, 5, "{parallel:?}");
    assert_eq!(fake.errors().get("InvalidOperation.Conflict"), None);
}

#[tokio::test]
async fn mutable_parameters_are_checked_before_any_disk_is_created() {
    let (fake, p) = start().await;
    let with_mutable = |name: &str, sc: &[(&str, &str)], vac: &[(&str, &str)]| {
        let mut req = create_req(name, 20, ZONE_A, sc);
        req.mutable_parameters = params(vac);
        req
    };
    // An unknown key: refused by name, no disk, not even a CreateDisk call.
    let err = p
        .create_volume(with_mutable(
            "pvc-vac-bad",
            &[("category", "cloud_essd")],
            &[("XXX_FakeKey", "1")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(
        err.full_message().contains("XXX_FakeKey"),
        "{}",
        err.full_message()
    );
    // A key ECS cannot apply to the StorageClass's categories.
    let err = p
        .create_volume(with_mutable(
            "pvc-vac-pl",
            &[("category", "cloud_ssd")],
            &[("performanceLevel", "PL2")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(
        err.full_message().contains("performanceLevel"),
        "{}",
        err.full_message()
    );
    let err = p
        .create_volume(with_mutable(
            "pvc-vac-iops",
            &[("category", "cloud_essd")],
            &[("provisionedIops", "5000")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(fake.disks().is_empty(), "{:?}", fake.disks());
    assert_eq!(fake.calls().get("CreateDisk"), None);

    // Valid ones are applied by CreateDisk itself.
    let vol = p
        .create_volume(with_mutable(
            "pvc-vac-ok",
            &[("category", "cloud_essd"), ("diskTags", "team:db")],
            &[("performanceLevel", "PL0")],
        ))
        .await
        .unwrap();
    let disk = fake.disk(&vol.id).unwrap();
    assert_eq!(disk.performance_level, "PL0");
    assert_eq!(disk.tags["team"], "db");
    let vol = p
        .create_volume(with_mutable(
            "pvc-vac-auto",
            &[("category", "cloud_essd"), ("diskTags", "team:db")],
            &[("category", "cloud_auto"), ("provisionedIops", "5000")],
        ))
        .await
        .unwrap();
    let disk = fake.disk(&vol.id).unwrap();
    assert_eq!(disk.category, "cloud_auto");
    assert_eq!(disk.provisioned_iops, 5000);
    assert_eq!(fake.disks().len(), 2);
    assert_eq!(fake.calls().get("ModifyDiskSpec"), None);
}

#[tokio::test]
async fn sizes_near_i64_max_are_out_of_range_for_create_and_expand() {
    let (fake, p) = start().await;
    let vol = p
        .create_volume(create_req("pvc-huge-base", 20, ZONE_A, &[]))
        .await
        .unwrap();
    // (required bytes, limit bytes)
    let cases: &[(i64, i64)] = &[
        (i64::MAX, 0),
        (i64::MAX - 1, 0),
        (i64::MAX - GIB + 2, 0),
        (i64::MAX - GIB + 1, 0),
        (1 << 62, 0),
        ((1 << 62) + 1, i64::MAX),
        (65_537 * GIB, 0),
        (i64::MAX, i64::MAX),
    ];
    for (i, &(required, limit)) in cases.iter().enumerate() {
        let mut req = create_req(&format!("pvc-huge-{i}"), 1, ZONE_A, &[]);
        req.required_bytes = required;
        req.limit_bytes = limit;
        let err = p.create_volume(req).await.unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::OutOfRange,
            "create {required}/{limit}: {}",
            err.full_message()
        );
        let err = p
            .expand_volume(ExpandVolumeRequest {
                volume_id: vol.id.clone(),
                required_bytes: required,
                limit_bytes: limit,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::OutOfRange,
            "expand {required}/{limit}: {}",
            err.full_message()
        );
    }
    // A limit of i64::MAX is no obstacle to an ordinary size.
    let mut req = create_req("pvc-huge-limit", 30, ZONE_A, &[]);
    req.limit_bytes = i64::MAX;
    assert_eq!(p.create_volume(req).await.unwrap().capacity_bytes, 30 * GIB);
    assert_eq!(fake.disks().len(), 2);
    assert_eq!(fake.calls().get("ResizeDisk"), None);
}

#[tokio::test]
async fn zones_of_other_clouds_are_never_chosen() {
    let (fake, p) = start().await;
    let foreign = Topology::from_pairs([(ZONE_KEY, "us-east-1a")]);
    // Only an EC2 zone: refused before any CreateDisk, naming the requirement.
    let mut req = create_req("pvc-ec2-only", 20, ZONE_A, &[]);
    req.requisite = vec![foreign.clone()];
    req.preferred = vec![foreign.clone()];
    let err = p.create_volume(req).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::ResourceExhausted,
        "{}",
        err.full_message()
    );
    assert!(
        err.full_message().contains("us-east-1a"),
        "{}",
        err.full_message()
    );
    assert_eq!(fake.calls().get("CreateDisk"), None);
    assert!(fake.disks().is_empty());
    // The EC2 zone first in both lists: the Alibaba zone is chosen.
    let mut req = create_req("pvc-mixed", 20, ZONE_A, &[]);
    req.requisite = vec![foreign.clone(), Topology::from_pairs([(ZONE_KEY, ZONE_B)])];
    req.preferred = vec![foreign.clone()];
    let vol = p.create_volume(req).await.unwrap();
    assert_eq!(fake.disk(&vol.id).unwrap().zone, ZONE_B);
    assert_eq!(vol.accessible_topology[0].segments[DISK_ZONE_KEY], ZONE_B);
    // A node's segments (own key plus well-known key) as the provisioner
    // passes them, with the well-known key taken by another cloud.
    let mut req = create_req("pvc-node", 20, ZONE_A, &[]);
    req.requisite = vec![Topology::from_pairs([
        (DISK_ZONE_KEY, ZONE_A),
        (ZONE_KEY, "us-east-1a"),
    ])];
    let vol = p.create_volume(req).await.unwrap();
    assert_eq!(fake.disk(&vol.id).unwrap().zone, ZONE_A);
    assert_eq!(fake.errors().get("InvalidZoneId.NotFound"), None);
}

fn block(mode: AccessMode) -> Capability {
    Capability {
        access_type: AccessType::Block as i32,
        access_mode: mode as i32,
        fs_type: String::new(),
    }
}

#[tokio::test]
async fn multi_attach_disks_serve_several_instances() {
    let mut config = FakeEcsConfig::standard();
    for i in 5..=20 {
        config
            .instances
            .insert(format!("i-fake{i:04}"), ZONE_A.to_owned());
    }
    let fake = FakeEcs::start(config).await.unwrap();
    let p = provider_with(&fake, settings(&fake, ""), "all").await;
    let info = p.info();
    assert!(
        info.access_modes
            .contains(&(AccessMode::MultiNodeMultiWriter as i32))
    );

    // Refusals before anything is created.
    let err = p
        .create_volume(create_req(
            "pvc-ma-ssd",
            20,
            ZONE_A,
            &[("category", "cloud_ssd"), ("multiAttach", "true")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(
        err.full_message().contains("cloud_ssd"),
        "{}",
        err.full_message()
    );
    let mut req = create_req("pvc-ma-nomulti", 20, ZONE_A, &[("category", "cloud_essd")]);
    req.capabilities = vec![block(AccessMode::MultiNodeMultiWriter)];
    let err = p.create_volume(req).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidArgument,
        "{}",
        err.full_message()
    );
    let mut req = create_req(
        "pvc-ma-fs",
        20,
        ZONE_A,
        &[("category", "cloud_essd"), ("multiAttach", "true")],
    );
    req.capabilities = vec![Capability {
        access_type: AccessType::Mount as i32,
        access_mode: AccessMode::MultiNodeMultiWriter as i32,
        fs_type: "ext4".into(),
    }];
    let err = p.create_volume(req).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidArgument,
        "{}",
        err.full_message()
    );
    assert!(fake.disks().is_empty());

    // A multi-attach ESSD attached to 16 instances, refused on the 17th.
    let mut req = create_req(
        "pvc-ma",
        20,
        ZONE_A,
        &[("category", "cloud_essd"), ("multiAttach", "true")],
    );
    req.capabilities = vec![block(AccessMode::MultiNodeMultiWriter)];
    let vol = p.create_volume(req).await.unwrap();
    assert!(vol.multi_attach);
    assert!(fake.disk(&vol.id).unwrap().multi_attach);
    let nodes: Vec<String> = (1..=18)
        .filter(|i| *i != 4)
        .map(|i| format!("i-fake{i:04}"))
        .collect();
    let attach_req = |node: &str| AttachRequest {
        capability: Some(block(AccessMode::MultiNodeMultiWriter)),
        ..attach(&vol.id, node)
    };
    for node in &nodes[..16] {
        p.attach_volume(attach_req(node)).await.unwrap();
    }
    // Idempotent on a node that holds it.
    p.attach_volume(attach_req(&nodes[0])).await.unwrap();
    let err = p.attach_volume(attach_req(&nodes[16])).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::ResourceExhausted,
        "{}",
        err.full_message()
    );
    let status = p
        .get_volume(VolumeRef {
            volume_id: vol.id.clone(),
        })
        .await
        .unwrap();
    let mut published = status.published_nodes.clone();
    published.sort();
    let mut want = nodes[..16].to_vec();
    want.sort();
    assert_eq!(published, want);
    assert!(status.volume.unwrap().multi_attach);
    let listed = p.list_volumes(ListRequest::default()).await.unwrap();
    assert_eq!(listed.entries[0].published_nodes.len(), 16);

    // Detach from one instance only.
    p.detach_volume(DetachRequest {
        volume_id: vol.id.clone(),
        node_id: nodes[3].clone(),
    })
    .await
    .unwrap();
    let disk = fake.disk(&vol.id).unwrap();
    assert_eq!(disk.attached.len(), 15);
    assert!(!disk.attached.contains(&nodes[3]));
    assert_eq!(disk.status, "In_use");
    // Now the 17th fits.
    p.attach_volume(attach_req(&nodes[16])).await.unwrap();
    assert_eq!(fake.disk(&vol.id).unwrap().attached.len(), 16);
    assert!(fake.op_concurrency().max_per_instance <= 1);

    // A plain disk keeps to one instance, with the fake's refusal code.
    let plain = p
        .create_volume(create_req(
            "pvc-plain",
            20,
            ZONE_A,
            &[("category", "cloud_essd")],
        ))
        .await
        .unwrap();
    assert!(!plain.multi_attach);
    p.attach_volume(attach(&plain.id, "i-fake0001"))
        .await
        .unwrap();
    let err = p
        .attach_volume(attach(&plain.id, "i-fake0002"))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::FailedPrecondition,
        "{}",
        err.full_message()
    );
    assert!(
        err.full_message().contains("not a multi-attach disk"),
        "{}",
        err.full_message()
    );
    assert_eq!(fake.disk(&plain.id).unwrap().instance, "i-fake0001");
}
