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

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn mutable_parameters_are_checked_before_creation_and_applied() {
    let (fake, p) = setup();
    // (mutable parameters, the text the error must contain)
    let refused: [(&[(&str, &str)], &str); 4] = [
        (&[("XXX_FakeKey", "x")], "XXX_FakeKey"),
        (&[("throughput", "2000")], "throughput 2000"),
        (&[("volumeType", "gp2"), ("iops", "4000")], "gp2"),
        (&[("tagSpecification_1", "CSIVolumeName=x")], "reserved"),
    ];
    for (mutable, text) in refused {
        let mut req = create_req("pvc-vac", 100, &[]);
        req.mutable_parameters = map(mutable);
        let err = p.create_volume(req).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{mutable:?}: {err}");
        assert!(err.message().contains(text), "{mutable:?}: {err}");
    }
    assert!(
        fake.live_volumes().is_empty(),
        "a refused request created a volume"
    );
    assert_eq!(fake.count("CreateVolume"), 0);

    let mut req = create_req("pvc-vac", 100, &[("tagSpecification_1", "team=a")]);
    req.mutable_parameters = map(&[
        ("volumeType", "io2"),
        ("iops", "5000"),
        ("tagSpecification_1", "tier=gold"),
    ]);
    let v = p.create_volume(req.clone()).await.unwrap();
    let d = &fake.live_volumes()[0];
    assert_eq!(d.id.as_str(), v.id);
    assert_eq!((d.volume_type.as_str(), d.iops), ("io2", Some(5000)));
    assert_eq!(d.tags.get("tier").map(String::as_str), Some("gold"));
    assert_eq!(d.tags.get("team").map(String::as_str), Some("a"));
    // Idempotent with the same mutable parameters, AlreadyExists with others.
    assert_eq!(p.create_volume(req.clone()).await.unwrap().id, v.id);
    req.mutable_parameters = map(&[("throughput", "300")]);
    let err = p.create_volume(req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let mut gp3 = create_req("pvc-gp3", 100, &[]);
    gp3.mutable_parameters = map(&[("throughput", "300"), ("iops", "4000")]);
    p.create_volume(gp3).await.unwrap();
    let d = fake
        .live_volumes()
        .into_iter()
        .find(|d| d.tags.get(NAME_TAG).map(String::as_str) == Some("pvc-gp3"))
        .unwrap();
    assert_eq!((d.throughput, d.iops), (Some(300), Some(4000)));
}

#[tokio::test(start_paused = true)]
async fn modify_adds_tags() {
    let (fake, p) = setup();
    let v = p.create_volume(create_req("pvc-1", 10, &[])).await.unwrap();
    p.modify_volume(ModifyVolumeRequest {
        volume_id: v.id,
        mutable_parameters: map(&[("tagSpecification_9", "tier=silver")]),
    })
    .await
    .unwrap();
    let d = &fake.live_volumes()[0];
    assert_eq!(d.tags.get("tier").map(String::as_str), Some("silver"));
    assert_eq!(fake.count("CreateTags"), 1);
    assert_eq!(
        fake.count("ModifyVolume"),
        0,
        "tags alone need no ModifyVolume"
    );
}

#[tokio::test(start_paused = true)]
async fn zones_come_only_from_this_region() {
    let mut s = settings();
    s.region = Some("us-east-1".into());
    s.default_zone = Some("us-east-1c".into());
    let (fake, p) = setup_with(s);
    const EBS: &str = EBS_ZONE_KEY;
    const WK: &str = ZONE_KEY;
    fn topo(pairs: &[(&str, &str)]) -> Topology {
        Topology::from_pairs(pairs.iter().copied())
    }
    // (requisite, preferred, expected zone, or None for ResourceExhausted)
    let cases: Vec<(Vec<Topology>, Vec<Topology>, Option<&str>)> = vec![
        (vec![], vec![], Some("us-east-1c")),
        (
            vec![topo(&[(WK, "us-east-1a")])],
            vec![],
            Some("us-east-1a"),
        ),
        (
            vec![topo(&[(WK, "cn-hangzhou-b")]), topo(&[(WK, "us-east-1b")])],
            vec![topo(&[(WK, "cn-hangzhou-b")])],
            Some("us-east-1b"),
        ),
        (vec![topo(&[(WK, "cn-hangzhou-b")])], vec![], None),
        (vec![topo(&[(WK, "us-west-2a")])], vec![], None),
        (
            vec![topo(&[("kubernetes.io/hostname", "n1")])],
            vec![],
            None,
        ),
        (
            vec![topo(&[(WK, "us-east-1b"), (EBS, "us-east-1d")])],
            vec![],
            Some("us-east-1d"),
        ),
        (
            vec![topo(&[(WK, "us-east-1b"), (EBS, "eu-west-1a")])],
            vec![],
            Some("us-east-1b"),
        ),
        (
            vec![topo(&[(WK, "us-east-1a")]), topo(&[(EBS, "us-east-1b")])],
            vec![topo(&[(EBS, "us-east-1b")])],
            Some("us-east-1b"),
        ),
        (
            vec![topo(&[(WK, "us-east-1a")])],
            vec![topo(&[(WK, "us-east-1f")])],
            Some("us-east-1a"),
        ),
        (
            vec![],
            vec![topo(&[(WK, "cn-hangzhou-b")])],
            Some("us-east-1c"),
        ),
        (
            vec![topo(&[(WK, "us-east-1-bos-1a")])],
            vec![],
            Some("us-east-1-bos-1a"),
        ),
        (vec![topo(&[(WK, "us-east-10a")])], vec![], None),
    ];
    for (i, (requisite, preferred, want)) in cases.into_iter().enumerate() {
        let name = format!("pvc-zone-{i}");
        let mut req = create_req(&name, 1, &[]);
        req.requisite = requisite.clone();
        req.preferred = preferred;
        match (p.create_volume(req).await, want) {
            (Ok(v), Some(zone)) => {
                assert_eq!(
                    v.accessible_topology,
                    vec![Topology::from_pairs([(ZONE_KEY, zone)])],
                    "case {i}"
                );
                let d = fake
                    .live_volumes()
                    .into_iter()
                    .find(|d| d.id.as_str() == v.id)
                    .unwrap();
                assert_eq!(d.zone, zone, "case {i}");
            }
            (Err(e), None) => {
                assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "case {i}: {e}");
                let first = requisite[0].segments.values().next().unwrap();
                assert!(e.message().contains(first.as_str()), "case {i}: {e}");
            }
            (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
        }
    }
    assert!(
        fake.live_volumes()
            .iter()
            .all(|d| d.zone.starts_with("us-east-1")),
        "a volume outside the region"
    );
}

#[test]
fn zone_names_and_regions() {
    assert_eq!(region_of_zone("us-east-1a").as_deref(), Some("us-east-1"));
    assert_eq!(
        region_of_zone("us-west-2-lax-1a").as_deref(),
        Some("us-west-2-lax-1")
    );
    assert_eq!(region_of_zone("cn-hangzhou-b"), None);
    assert!(zone_in_region("us-east-1a", Some("us-east-1")));
    assert!(!zone_in_region("us-east-10a", Some("us-east-1")));
    assert!(!zone_in_region("us-east-1", Some("us-east-1")));
    assert!(!zone_in_region("cn-hangzhou-b", None));
    assert!(zone_in_region("eu-west-1b", None));
}

#[tokio::test(start_paused = true)]
async fn sizes_near_i64_max_are_out_of_range() {
    let (fake, p) = setup();
    let max = i64::MAX;
    // (required, limit, expected error kind or None for success)
    let cases = [
        (max, 0, Some(ErrorKind::OutOfRange)),
        (max, max, Some(ErrorKind::OutOfRange)),
        (max - 1, 0, Some(ErrorKind::OutOfRange)),
        (max - GIB + 1, 0, Some(ErrorKind::OutOfRange)),
        ((max / GIB) * GIB, 0, Some(ErrorKind::OutOfRange)),
        (GIB, max, None),
        (0, max, None),
        (-1, 0, Some(ErrorKind::InvalidArgument)),
        (GIB, -1, Some(ErrorKind::InvalidArgument)),
    ];
    for (i, (required, limit, want)) in cases.into_iter().enumerate() {
        let mut req = create_req(&format!("pvc-size-{i}"), 0, &[]);
        req.required_bytes = required;
        req.limit_bytes = limit;
        match (p.create_volume(req).await, want) {
            (Ok(v), None) => assert!(v.capacity_bytes >= required && v.capacity_bytes > 0),
            (Err(e), Some(kind)) => assert_eq!(e.kind(), kind, "create case {i}: {e}"),
            (got, want) => panic!("create case {i}: got {got:?}, want {want:?}"),
        }
    }
    let created = fake.count("CreateVolume");
    let v = p
        .create_volume(create_req("pvc-grow", 10, &[]))
        .await
        .unwrap();
    for (i, (required, limit, want)) in cases.into_iter().enumerate() {
        let want = if required <= 10 * GIB && want.is_none() {
            None
        } else {
            want
        };
        let got = p
            .expand_volume(ExpandVolumeRequest {
                volume_id: v.id.clone(),
                required_bytes: required,
                limit_bytes: limit,
                ..ExpandVolumeRequest::default()
            })
            .await;
        match (got, want) {
            (Ok(r), None) => assert_eq!(r.capacity_bytes, 10 * GIB, "expand case {i}"),
            (Err(e), Some(kind)) => assert_eq!(e.kind(), kind, "expand case {i}: {e}"),
            (got, want) => panic!("expand case {i}: got {got:?}, want {want:?}"),
        }
    }
    assert_eq!(fake.count("CreateVolume"), created + 1);
    assert_eq!(fake.count("ModifyVolume"), 0, "no huge size reached EC2");
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
async fn a_clone_of_an_absent_volume_and_bad_ids_are_not_found() {
    let (_fake, p) = setup();
    let mut req = create_req("pvc-1", 10, &[]);
    req.source = Some(create_volume_request::Source::SourceVolumeId(
        "vol-12345678".into(),
    ));
    assert_eq!(
        p.create_volume(req).await.unwrap_err().kind(),
        ErrorKind::NotFound
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

fn clone_req(name: &str, gib: i64, source: &str, params: &[(&str, &str)]) -> CreateVolumeRequest {
    let mut req = create_req(name, gib, params);
    req.source = Some(create_volume_request::Source::SourceVolumeId(source.into()));
    req
}

#[tokio::test(start_paused = true)]
async fn clones_are_copies_in_the_source_zone_waited_for_and_idempotent() {
    let (fake, p) = setup();
    assert!(p.info().clone);
    let src = p
        .create_volume(create_req("pvc-src", 10, &[]))
        .await
        .unwrap();
    fake.configure(|c| c.create_delay = Duration::from_secs(30));
    let req = clone_req(
        "pvc-clone",
        5,
        &src.id,
        &[
            ("volumeType", "io2"),
            ("iops", "1000"),
            ("encrypted", "true"),
            ("tagSpecification_1", "team=a"),
        ],
    );
    let v = p.create_volume(req.clone()).await.unwrap();
    assert_eq!(v.capacity_bytes, 10 * GIB, "a copy is at least its source");
    assert_eq!(
        v.source,
        Some(volume::Source::SourceVolumeId(src.id.clone()))
    );
    assert_eq!(fake.count("CopyVolumes"), 1);
    let d = fake
        .live_volumes()
        .into_iter()
        .find(|d| d.id.as_str() == v.id)
        .unwrap();
    assert_eq!(d.state, DiskState::Available, "the copy was waited for");
    assert_eq!(d.source_volume_id.as_deref(), Some(src.id.as_str()));
    assert_eq!(
        (d.volume_type.as_str(), d.iops, d.encrypted),
        ("io2", Some(1000), true)
    );
    assert_eq!(d.tags.get("team").map(String::as_str), Some("a"));
    assert_eq!(d.tags.get(NAME_TAG).map(String::as_str), Some("pvc-clone"));
    assert_eq!(d.zone, ZONE);
    // The same request again finds the copy.
    assert_eq!(p.create_volume(req.clone()).await.unwrap().id, v.id);
    assert_eq!(fake.count("CopyVolumes"), 1);
    // A larger copy.
    let big = p
        .create_volume(clone_req("pvc-big", 20, &src.id, &[]))
        .await
        .unwrap();
    assert_eq!(big.capacity_bytes, 20 * GIB);

    let copies = fake.count("CopyVolumes");
    // Absent source.
    let err = p
        .create_volume(clone_req("pvc-x", 10, "vol-0000000000000dead", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // A requirement that excludes the source's zone.
    let mut other_zone = clone_req("pvc-x", 10, &src.id, &[]);
    other_zone.requisite = vec![Topology::from_pairs([(ZONE_KEY, "us-east-1b")])];
    other_zone.preferred = other_zone.requisite.clone();
    let err = p.create_volume(other_zone).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted, "{err}");
    assert!(err.message().contains(ZONE), "{err}");
    // A limit below the source's size.
    let mut small = clone_req("pvc-x", 1, &src.id, &[]);
    small.limit_bytes = 5 * GIB;
    let err = p.create_volume(small).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange, "{err}");
    assert_eq!(
        fake.count("CopyVolumes"),
        copies,
        "refused clones reached EC2"
    );
}

#[tokio::test(start_paused = true)]
async fn a_clone_whose_token_is_burnt_moves_on() {
    let (fake, p) = setup();
    let src = p
        .create_volume(create_req("pvc-src", 10, &[]))
        .await
        .unwrap();
    let first = p
        .create_volume(clone_req("pvc-c", 10, &src.id, &[]))
        .await
        .unwrap();
    p.delete_volume(VolumeRef {
        volume_id: first.id.clone(),
    })
    .await
    .unwrap();
    // Same name, other parameters: the old token is refused, the next used.
    let second = p
        .create_volume(clone_req("pvc-c", 10, &src.id, &[("volumeType", "gp2")]))
        .await
        .unwrap();
    assert_ne!(first.id, second.id);
    assert_eq!(fake.count("CopyVolumes"), 3);
}

#[tokio::test(start_paused = true)]
async fn the_fake_copy_volumes_models_ec2s_errors() {
    let (fake, _p) = setup();
    let api: &dyn Ec2Api = fake.as_ref();
    let input = |size: i64, token: &str| CreateDiskInput {
        zone: "us-east-1b".into(),
        size_gib: size,
        volume_type: "gp3".into(),
        iops: None,
        throughput: None,
        encrypted: false,
        kms_key_id: None,
        snapshot_id: None,
        initialization_rate: None,
        multi_attach: false,
        tags: BTreeMap::new(),
        client_token: token.into(),
    };
    let missing = VolumeId::new("vol-0000000000000dead").unwrap();
    let err = api.copy_disk(&missing, input(10, "t0")).await.unwrap_err();
    assert_eq!(err.code(), Some("InvalidVolume.NotFound"));
    fake.configure(|c| c.create_delay = Duration::from_secs(10));
    let src = api.create_disk(input(10, "src")).await.unwrap();
    let err = api.copy_disk(&src.id, input(10, "t1")).await.unwrap_err();
    assert_eq!(err.code(), Some("IncorrectState"), "source still creating");
    tokio::time::sleep(Duration::from_secs(11)).await;
    let err = api.copy_disk(&src.id, input(5, "t2")).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some("InvalidParameterValue"),
        "smaller than the source"
    );
    let copy = api.copy_disk(&src.id, input(12, "t3")).await.unwrap();
    assert_eq!(copy.state, DiskState::Creating);
    assert_eq!(copy.zone, src.zone, "made in the source's zone");
    assert_eq!(copy.size_gib, 12);
    let again = api.copy_disk(&src.id, input(12, "t3")).await.unwrap();
    assert_eq!(again.id, copy.id, "same token, same parameters");
    let err = api.copy_disk(&src.id, input(13, "t3")).await.unwrap_err();
    assert_eq!(err.code(), Some("IdempotentParameterMismatch"));
    tokio::time::sleep(Duration::from_secs(11)).await;
    let done = fake
        .live_volumes()
        .into_iter()
        .find(|d| d.id == copy.id)
        .unwrap();
    assert_eq!(done.state, DiskState::Available);
}

fn capability(access: AccessType, mode: AccessMode) -> Capability {
    Capability {
        access_type: access as i32,
        access_mode: mode as i32,
        fs_type: String::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn multi_attach_is_io1_io2_only_and_checks_capabilities() {
    let (fake, p) = setup();
    let info = p.info();
    for mode in [
        AccessMode::MultiNodeReaderOnly,
        AccessMode::MultiNodeSingleWriter,
        AccessMode::MultiNodeMultiWriter,
    ] {
        assert!(info.access_modes.contains(&(mode as i32)), "{mode:?}");
    }
    // (parameters, capability, text of the refusal)
    let refused: [(&[(&str, &str)], Capability, &str); 3] = [
        (
            &[("multiAttach", "true")],
            capability(AccessType::Block, AccessMode::MultiNodeMultiWriter),
            "gp3",
        ),
        (
            &[
                ("volumeType", "io2"),
                ("iops", "1000"),
                ("multiAttach", "true"),
            ],
            capability(AccessType::Mount, AccessMode::MultiNodeMultiWriter),
            "block volumes only",
        ),
        (
            &[("volumeType", "io2"), ("iops", "1000")],
            capability(AccessType::Block, AccessMode::MultiNodeMultiWriter),
            "multiAttach",
        ),
    ];
    for (params, cap, text) in refused {
        let mut req = create_req("pvc-ma", 10, params);
        req.capabilities = vec![cap];
        let err = p.create_volume(req).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{params:?}: {err}");
        assert!(err.message().contains(text), "{params:?}: {err}");
    }
    assert!(fake.live_volumes().is_empty());
    let mut req = create_req(
        "pvc-ma",
        10,
        &[
            ("volumeType", "io1"),
            ("iops", "500"),
            ("multiAttach", "true"),
        ],
    );
    req.capabilities = vec![capability(
        AccessType::Mount,
        AccessMode::MultiNodeReaderOnly,
    )];
    let v = p.create_volume(req).await.unwrap();
    assert!(v.multi_attach);
    assert!(fake.live_volumes()[0].multi_attach);
    let plain = p
        .create_volume(create_req("pvc-plain", 10, &[]))
        .await
        .unwrap();
    assert!(!plain.multi_attach);
    // A Multi-Attach volume keeps an io type.
    let err = p
        .modify_volume(ModifyVolumeRequest {
            volume_id: v.id,
            mutable_parameters: map(&[("volumeType", "gp3")]),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
}

#[tokio::test(start_paused = true)]
async fn multi_attach_volumes_attach_to_up_to_16_nodes_and_detach_one_at_a_time() {
    let (fake, p) = setup();
    let nodes: Vec<String> = (0..17).map(|i| format!("i-{:017x}", 0x100 + i)).collect();
    for n in &nodes {
        fake.add_instance(n, ZONE);
    }
    let v = p
        .create_volume(create_req(
            "pvc-ma",
            10,
            &[
                ("volumeType", "io2"),
                ("iops", "1000"),
                ("multiAttach", "true"),
            ],
        ))
        .await
        .unwrap();
    for n in &nodes[..16] {
        p.attach_volume(attach_req(&v.id, n)).await.unwrap();
    }
    let status = p
        .get_volume(VolumeRef {
            volume_id: v.id.clone(),
        })
        .await
        .unwrap();
    let mut published = status.published_nodes.clone();
    published.sort();
    assert_eq!(published, nodes[..16].to_vec());
    let err = p
        .attach_volume(attach_req(&v.id, &nodes[16]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted, "{err}");
    // Attaching to a node it is on again is idempotent.
    p.attach_volume(attach_req(&v.id, &nodes[0])).await.unwrap();
    p.detach_volume(DetachRequest {
        volume_id: v.id.clone(),
        node_id: nodes[0].clone(),
    })
    .await
    .unwrap();
    let listed = p.list_volumes(ListRequest::default()).await.unwrap();
    let entry = listed
        .entries
        .iter()
        .find(|e| e.volume.as_ref().is_some_and(|x| x.id == v.id))
        .unwrap();
    assert_eq!(entry.published_nodes.len(), 15);
    assert!(!entry.published_nodes.contains(&nodes[0]));
    assert!(entry.volume.as_ref().unwrap().multi_attach);
    p.attach_volume(attach_req(&v.id, &nodes[16]))
        .await
        .unwrap();

    // A volume without Multi-Attach: the provider refuses a second node,
    // and so does the fake EC2 behind its back.
    let plain = p
        .create_volume(create_req("pvc-plain", 10, &[]))
        .await
        .unwrap();
    p.attach_volume(attach_req(&plain.id, NODE_A))
        .await
        .unwrap();
    let err = p
        .attach_volume(attach_req(&plain.id, NODE_B))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    let id = VolumeId::new(&plain.id).unwrap();
    let node_b = InstanceId::new(NODE_B).unwrap();
    let err = fake
        .attach_disk(&id, &node_b, "/dev/xvdbz")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("VolumeInUse"));
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
