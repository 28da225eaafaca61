//! The provider over the stateful fake EC2, for the timing, throttling and
//! idempotency cases moto cannot show. Time is paused: waits that would
//! take minutes run instantly and deterministically.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use omnidisk_provider_api::types::*;
use omnidisk_provider_api::{ErrorKind, Provider};

use super::*;
use crate::client::fake::FakeEc2;

const NODE_A: &str = "i-0000000000000000a";
const NODE_B: &str = "i-0000000000000000b";
const ZONE: &str = "us-east-1a";

fn settings() -> Settings {
    let mut s = Settings {
        default_zone: Some(ZONE.into()),
        api_timeout_seconds: 5,
        ..Settings::default()
    };
    s.waits.poll_initial_ms = 200;
    s.waits.poll_max_ms = 2_000;
    s.waits.batch_window_ms = 100;
    s.waits.create_seconds = 60;
    s.waits.attach_seconds = 60;
    s.waits.detach_seconds = 60;
    s.waits.modify_seconds = 600;
    s
}

fn setup_with(settings: Settings) -> (Arc<FakeEc2>, EbsProvider) {
    let fake = Arc::new(FakeEc2::default());
    fake.add_instance(NODE_A, ZONE);
    fake.add_instance(NODE_B, ZONE);
    let provider = EbsProvider::new("ebs", settings, Some(Arc::clone(&fake) as Arc<dyn Ec2Api>));
    (fake, provider)
}

fn setup() -> (Arc<FakeEc2>, EbsProvider) {
    setup_with(settings())
}

fn create_req(name: &str, gib: i64, params: &[(&str, &str)]) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        required_bytes: gib * GIB,
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        preferred: vec![Topology::from_pairs([(ZONE_KEY, ZONE)])],
        ..CreateVolumeRequest::default()
    }
}

fn attach_req(vol: &str, node: &str) -> AttachRequest {
    AttachRequest {
        volume_id: vol.into(),
        node_id: node.into(),
        ..AttachRequest::default()
    }
}

#[tokio::test(start_paused = true)]
async fn create_is_idempotent_and_reports_zone_topology() {
    let (fake, p) = setup();
    let v1 = p
        .create_volume(create_req("pvc-1", 10, &[("iops", "4000")]))
        .await
        .unwrap();
    let v2 = p
        .create_volume(create_req("pvc-1", 10, &[("iops", "4000")]))
        .await
        .unwrap();
    assert_eq!(v1.id, v2.id);
    assert_eq!(v1.capacity_bytes, 10 * GIB);
    assert_eq!(
        v1.accessible_topology,
        vec![Topology::from_pairs([(ZONE_KEY, ZONE)])]
    );
    assert_eq!(fake.count("CreateVolume"), 1);
    let disk = &fake.live_volumes()[0];
    assert_eq!(disk.tags.get(NAME_TAG).map(String::as_str), Some("pvc-1"));
    assert_eq!(disk.iops, Some(4000));
}

#[tokio::test(start_paused = true)]
async fn same_name_with_other_parameters_is_already_exists() {
    let (_fake, p) = setup();
    p.create_volume(create_req("pvc-1", 10, &[])).await.unwrap();
    let err = p
        .create_volume(create_req("pvc-1", 10, &[("volumeType", "gp2")]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    let err = p
        .create_volume(create_req("pvc-1", 20, &[]))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::AlreadyExists,
        "larger size than the existing volume"
    );
}

#[tokio::test(start_paused = true)]
async fn an_ignored_client_token_is_covered_by_the_name_tag() {
    let (fake, p) = setup();
    fake.configure(|c| c.honour_tokens = false);
    let v1 = p.create_volume(create_req("pvc-1", 10, &[])).await.unwrap();
    // As after a driver restart: a new provider over the same EC2.
    let p2 = EbsProvider::new(
        "ebs",
        settings(),
        Some(Arc::clone(&fake) as Arc<dyn Ec2Api>),
    );
    let v2 = p2
        .create_volume(create_req("pvc-1", 10, &[]))
        .await
        .unwrap();
    assert_eq!(v1.id, v2.id);
    assert_eq!(fake.count("CreateVolume"), 1);
    assert_eq!(fake.live_volumes().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_burnt_token_moves_on_to_the_next_one() {
    let (fake, p) = setup();
    let v1 = p.create_volume(create_req("pvc-1", 10, &[])).await.unwrap();
    p.delete_volume(VolumeRef {
        volume_id: v1.id.clone(),
    })
    .await
    .unwrap();
    // Same name, other size: EC2 remembers the token with the old parameters.
    let v2 = p.create_volume(create_req("pvc-1", 20, &[])).await.unwrap();
    assert_ne!(v1.id, v2.id);
    assert_eq!(v2.capacity_bytes, 20 * GIB);
    assert_eq!(
        fake.count("CreateVolume"),
        3,
        "first, mismatch, second token"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_creation_is_waited_for_with_batched_polls() {
    let (fake, p) = setup();
    fake.configure(|c| c.create_delay = Duration::from_secs(8));
    let v = p.create_volume(create_req("pvc-1", 10, &[])).await.unwrap();
    let disk = fake
        .live_volumes()
        .into_iter()
        .find(|d| d.id.as_str() == v.id)
        .unwrap();
    assert_eq!(disk.state, DiskState::Available);
    // 200 ms growing by half up to 2 s: a handful of polls, not one per tick.
    let polls = fake.count("DescribeVolumes");
    assert!((3..=12).contains(&polls), "{polls} DescribeVolumes calls");
}

#[tokio::test(start_paused = true)]
async fn a_volume_that_fails_creation_is_deleted_and_the_retry_uses_a_new_token() {
    let (fake, p) = setup();
    fake.configure(|c| {
        c.create_delay = Duration::from_secs(2);
        c.fail_creation = true;
    });
    let err = p
        .create_volume(create_req("pvc-1", 10, &[]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{}", err.full_message());
    assert!(fake.live_volumes().is_empty(), "the failed volume leaked");
    fake.configure(|c| c.fail_creation = false);
    let v = p.create_volume(create_req("pvc-1", 10, &[])).await.unwrap();
    assert_eq!(fake.live_volumes().len(), 1);
    assert_eq!(fake.live_volumes()[0].id.as_str(), v.id);
    assert_eq!(fake.count("CreateVolume"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_create_that_runs_out_of_time_is_deadline_exceeded_and_cleaned_up() {
    let mut s = settings();
    s.waits.create_seconds = 10;
    let (fake, p) = setup_with(s);
    fake.configure(|c| c.create_delay = Duration::from_secs(3600));
    let err = p
        .create_volume(create_req("pvc-1", 10, &[]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
    assert!(fake.live_volumes().is_empty(), "the stuck volume leaked");
    assert_eq!(fake.count("DeleteVolume"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_api_call_is_deadline_exceeded() {
    let (fake, p) = setup();
    fake.configure(|c| {
        c.hang.insert("CreateVolume");
    });
    let err = p
        .create_volume(create_req("pvc-1", 10, &[]))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::DeadlineExceeded,
        "{}",
        err.full_message()
    );
    assert!(fake.live_volumes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn throttling_bursts_are_absorbed_by_backoff() {
    let mut s = settings();
    s.waits.throttle_max_ms = 2_000;
    let (fake, p) = setup_with(s);
    fake.configure(|c| c.throttle_next = 12);
    let v = p.create_volume(create_req("pvc-1", 10, &[])).await.unwrap();
    let ctx = p.attach_volume(attach_req(&v.id, NODE_A)).await.unwrap();
    assert!(ctx.publish_context.contains_key(DEVICE_PATH_KEY));
    assert_eq!(p.throttled_calls(), 12);
    assert_eq!(fake.config.lock().unwrap().throttle_next, 0);
}

#[tokio::test(start_paused = true)]
async fn concurrent_waiters_share_describe_calls() {
    let (fake, p) = setup();
    fake.configure(|c| c.create_delay = Duration::from_secs(5));
    let p = Arc::new(p);
    let mut tasks = Vec::new();
    for i in 0..60 {
        let p = Arc::clone(&p);
        tasks.push(tokio::spawn(async move {
            p.create_volume(create_req(&format!("pvc-{i}"), 10, &[]))
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(fake.count("CreateVolume"), 60);
    let describes = fake.count("DescribeVolumes");
    // One per volume for the name lookup plus several polls each would be
    // hundreds; batched it is a few rounds.
    assert!(
        describes <= 25,
        "{describes} DescribeVolumes calls for 60 volumes"
    );
}

#[tokio::test(start_paused = true)]
async fn attach_waits_is_idempotent_and_refuses_other_nodes() {
    let (fake, p) = setup();
    fake.configure(|c| c.attach_delay = Duration::from_secs(4));
    let v = p.create_volume(create_req("pvc-1", 10, &[])).await.unwrap();
    let first = p.attach_volume(attach_req(&v.id, NODE_A)).await.unwrap();
    let again = p.attach_volume(attach_req(&v.id, NODE_A)).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(fake.count("AttachVolume"), 1);
    let err = p
        .attach_volume(attach_req(&v.id, NODE_B))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    let status = p
        .get_volume(VolumeRef {
            volume_id: v.id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(status.published_nodes, vec![NODE_A.to_owned()]);
    let err = p
        .delete_volume(VolumeRef {
            volume_id: v.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
}

#[tokio::test(start_paused = true)]
async fn concurrent_attaches_to_one_instance_get_distinct_devices() {
    let (fake, p) = setup();
    fake.configure(|c| c.attach_delay = Duration::from_secs(2));
    let p = Arc::new(p);
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(
            p.create_volume(create_req(&format!("pvc-{i}"), 10, &[]))
                .await
                .unwrap()
                .id,
        );
    }
    let mut tasks = Vec::new();
    for id in ids {
        let p = Arc::clone(&p);
        tasks.push(tokio::spawn(async move {
            p.attach_volume(attach_req(&id, NODE_A)).await
        }));
    }
    let mut devices = std::collections::BTreeSet::new();
    for t in tasks {
        let ctx = t.await.unwrap().unwrap();
        devices.insert(ctx.publish_context[DEVICE_PATH_KEY].clone());
    }
    assert_eq!(devices.len(), 12, "{devices:?}");
    assert!(!devices.contains("/dev/xvda"));
}

#[tokio::test(start_paused = true)]
async fn an_attach_stuck_in_attaching_is_undone() {
    let mut s = settings();
    s.waits.attach_seconds = 10;
    let (fake, p) = setup_with(s);
    let v = p.create_volume(create_req("pvc-1", 10, &[])).await.unwrap();
    fake.configure(|c| c.attach_delay = Duration::from_secs(3600));
    let err = p
        .attach_volume(attach_req(&v.id, NODE_A))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
    assert_eq!(fake.count("DetachVolume"), 1);
    // The fake detaches at once; the next attempt starts clean.
    fake.configure(|c| c.attach_delay = Duration::ZERO);
    p.attach_volume(attach_req(&v.id, NODE_A)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn detach_waits_and_tolerates_absent_things() {
    let (fake, p) = setup();
    fake.configure(|c| c.detach_delay = Duration::from_secs(5));
    let v = p.create_volume(create_req("pvc-1", 10, &[])).await.unwrap();
    p.attach_volume(attach_req(&v.id, NODE_A)).await.unwrap();
    p.detach_volume(DetachRequest {
        volume_id: v.id.clone(),
        node_id: NODE_A.into(),
    })
    .await
    .unwrap();
    assert!(fake.live_volumes()[0].attachments.is_empty());
    // Already detached, unknown volume, unknown node: all success.
    for (vol, node) in [
        (v.id.as_str(), NODE_A),
        ("vol-00000000deadbeef", NODE_A),
        (v.id.as_str(), "not-a-node"),
    ] {
        p.detach_volume(DetachRequest {
            volume_id: vol.into(),
            node_id: node.into(),
        })
        .await
        .unwrap();
    }
    p.delete_volume(VolumeRef {
        volume_id: v.id.clone(),
    })
    .await
    .unwrap();
    p.delete_volume(VolumeRef { volume_id: v.id })
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn expand_waits_for_the_modification() {
    let (fake, p) = setup();
    fake.configure(|c| c.modify_delay = Duration::from_secs(30));
    let v = p.create_volume(create_req("pvc-1", 10, &[])).await.unwrap();
    let out = p
        .expand_volume(ExpandVolumeRequest {
            volume_id: v.id.clone(),
            required_bytes: 15 * GIB + 1,
            ..ExpandVolumeRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(out.capacity_bytes, 16 * GIB);
    assert!(out.node_expansion_required);
    assert_eq!(fake.live_volumes()[0].size_gib, 16);
    // Already that large: no second modification.
    p.expand_volume(ExpandVolumeRequest {
        volume_id: v.id.clone(),
        required_bytes: 12 * GIB,
        ..ExpandVolumeRequest::default()
    })
    .await
    .unwrap();
    assert_eq!(fake.count("ModifyVolume"), 1);
    let err = p
        .expand_volume(ExpandVolumeRequest {
            volume_id: v.id,
            required_bytes: 20 * GIB,
            limit_bytes: 19 * GIB,
            ..ExpandVolumeRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange);
}

#[tokio::test(start_paused = true)]
async fn modify_changes_performance_and_checks_limits() {
    let (fake, p) = setup();
    let v = p
        .create_volume(create_req("pvc-1", 100, &[]))
        .await
        .unwrap();
    let params = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    p.modify_volume(ModifyVolumeRequest {
        volume_id: v.id.clone(),
        mutable_parameters: params(&[("iops", "6000"), ("throughput", "500")]),
    })
    .await
    .unwrap();
    let d = &fake.live_volumes()[0];
    assert_eq!((d.iops, d.throughput), (Some(6000), Some(500)));
    let err = p
        .modify_volume(ModifyVolumeRequest {
            volume_id: v.id.clone(),
            mutable_parameters: params(&[("volumeType", "gp2"), ("iops", "6000")]),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    p.modify_volume(ModifyVolumeRequest {
        volume_id: v.id,
        mutable_parameters: params(&[("volumeType", "io2"), ("iops", "8000")]),
    })
    .await
    .unwrap();
    assert_eq!(fake.live_volumes()[0].volume_type, "io2");
}

#[tokio::test(start_paused = true)]
async fn list_volumes_pages_with_max_entries() {
    let (_fake, p) = setup();
    let mut created = std::collections::BTreeSet::new();
    for i in 0..7 {
        created.insert(
            p.create_volume(create_req(&format!("pvc-{i}"), 1, &[]))
                .await
                .unwrap()
                .id,
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = p
            .list_volumes(ListRequest {
                max_entries: 3,
                starting_token: token.clone(),
            })
            .await
            .unwrap();
        assert!(page.entries.len() <= 3);
        for e in page.entries {
            assert!(seen.insert(e.volume.unwrap().id), "an entry came twice");
        }
        pages += 1;
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
        assert!(pages < 10);
    }
    assert_eq!(seen, created);
    let err = p
        .list_volumes(ListRequest {
            max_entries: 3,
            starting_token: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Aborted);
}

#[tokio::test(start_paused = true)]
async fn snapshots_are_idempotent_pending_then_ready_and_restorable() {
    let (fake, p) = setup();
    fake.configure(|c| c.snapshot_delay = Duration::from_secs(60));
    let v = p.create_volume(create_req("pvc-1", 10, &[])).await.unwrap();
    let req = CreateSnapshotRequest {
        name: "snap-1".into(),
        source_volume_id: v.id.clone(),
        parameters: BTreeMap::from([("tagSpecification_1".to_owned(), "team=db".to_owned())]),
    };
    let s1 = p.create_snapshot(req.clone()).await.unwrap();
    assert!(!s1.ready_to_use);
    let s2 = p.create_snapshot(req.clone()).await.unwrap();
    assert_eq!(s1.id, s2.id);
    assert_eq!(fake.count("CreateSnapshot"), 1);
    let v2 = p.create_volume(create_req("pvc-2", 10, &[])).await.unwrap();
    let err = p
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: v2.id,
            ..req
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    // Restoring from a pending snapshot is refused, then works once ready.
    let mut restore = create_req("pvc-3", 5, &[]);
    restore.source = Some(create_volume_request::Source::SourceSnapshotId(
        s1.id.clone(),
    ));
    let err = p.create_volume(restore.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(
        p.get_snapshot(SnapshotRef {
            snapshot_id: s1.id.clone()
        })
        .await
        .unwrap()
        .ready_to_use
    );
    let restored = p.create_volume(restore).await.unwrap();
    assert_eq!(
        restored.capacity_bytes,
        10 * GIB,
        "grown to the snapshot's size"
    );
    assert_eq!(
        restored.source,
        Some(volume::Source::SourceSnapshotId(s1.id.clone()))
    );
    p.delete_snapshot(SnapshotRef {
        snapshot_id: s1.id.clone(),
    })
    .await
    .unwrap();
    p.delete_snapshot(SnapshotRef { snapshot_id: s1.id })
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn clone_is_unimplemented_and_bad_ids_are_not_found() {
    let (_fake, p) = setup();
    let mut req = create_req("pvc-1", 10, &[]);
    req.source = Some(create_volume_request::Source::SourceVolumeId(
        "vol-12345678".into(),
    ));
    assert_eq!(
        p.create_volume(req).await.unwrap_err().kind(),
        ErrorKind::Unimplemented
    );
    let err = p
        .get_volume(VolumeRef {
            volume_id: "../../etc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = p
        .attach_volume(attach_req("vol-12345678", NODE_A))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    p.delete_volume(VolumeRef {
        volume_id: "nonsense".into(),
    })
    .await
    .unwrap();
}

#[test]
fn device_names_never_collide_and_skip_used_ones() {
    let mut names = DeviceNames::default();
    let used = vec!["/dev/xvda".to_owned(), "/dev/sdba".to_owned()];
    let a = names.reserve("i-1", &used, "vol-a").unwrap();
    assert_eq!(a, "/dev/xvdbb", "xvdba is taken through its sd alias");
    assert_eq!(
        names.reserve("i-1", &used, "vol-a").unwrap(),
        a,
        "same volume, same name"
    );
    let b = names.reserve("i-1", &used, "vol-b").unwrap();
    assert_ne!(a, b);
    names.release("i-1", "vol-a");
    assert_eq!(names.reserve("i-1", &used, "vol-c").unwrap(), a);
    assert_eq!(names.reserve("i-2", &[], "vol-a").unwrap(), "/dev/xvdba");
}

#[test]
fn list_tokens_round_trip() {
    assert_eq!(parse_list_token("").unwrap(), (0, None));
    assert_eq!(parse_list_token("v1:3:").unwrap(), (3, None));
    assert_eq!(
        parse_list_token("v1:0:abc:def").unwrap(),
        (0, Some("abc:def".into()))
    );
    assert_eq!(
        parse_list_token("v2:0:").unwrap_err().kind(),
        ErrorKind::Aborted
    );
    let (out, next) = page_out(vec![1, 2, 3, 4, 5], 0, 2, Some("t".into()), None, "").unwrap();
    assert_eq!((out, next.as_str()), (vec![1, 2], "v1:2:t"));
    let (out, next) = page_out(vec![1, 2, 3, 4, 5], 4, 2, None, Some("n".into()), "").unwrap();
    assert_eq!((out, next.as_str()), (vec![5], "v1:0:n"));
    assert!(page_out(vec![1], 5, 2, None, None, "x").is_err());
}
