//! The whole controller life cycle over the real EC2 wire protocol, against
//! a `moto_server` on 127.0.0.1 started here (the crate's `moto` module).
//!
//! With `OMNIDISK_REQUIRE_ALL=1` a missing moto is a failure; otherwise the
//! test says loudly that it did not run.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{Moto, ZONE, start_moto};

use omnidisk_provider_api::types::*;
use omnidisk_provider_api::{ErrorKind, Provider};
use omnidisk_provider_aws_ebs::provider::{DEVICE_PATH_KEY, NAME_TAG, ZONE_KEY};

fn settings_toml(moto: &Moto) -> String {
    common::settings_toml(
        moto,
        &format!(
            "[extra_tags]\nowner = \"omnidisk-tests\"\n{}",
            common::FAST_WAITS
        ),
    )
}

async fn run_instance(moto: &Moto) -> String {
    moto.run_instances(1).await.expect("RunInstances").remove(0)
}

async fn describe(ec2: &aws_sdk_ec2::Client, id: &str) -> aws_sdk_ec2::types::Volume {
    ec2.describe_volumes()
        .volume_ids(id)
        .send()
        .await
        .expect("DescribeVolumes")
        .volumes()[0]
        .clone()
}

fn tag<'a>(v: &'a aws_sdk_ec2::types::Volume, key: &str) -> Option<&'a str> {
    v.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn create(name: &str, gib: i64, p: &[(&str, &str)]) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        required_bytes: gib * GIB,
        parameters: params(p),
        requisite: vec![Topology::from_pairs([(ZONE_KEY, ZONE)])],
        preferred: vec![Topology::from_pairs([(ZONE_KEY, ZONE)])],
        ..CreateVolumeRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_life_cycle_against_moto() {
    let Some(moto) = start_moto("controller_life_cycle_against_moto") else {
        return;
    };
    let ec2 = moto.client().await;

    let provider: Arc<dyn Provider> = (omnidisk_provider_aws_ebs::FACTORY.create)(InitRequest {
        instance: "ebs".into(),
        settings_toml: settings_toml(&moto),
        node_name: "node-1".into(),
        mode: "controller".into(),
    })
    .await
    .expect("provider");
    let info = provider.info();
    assert!(info.attach_required && !info.node_local && info.published_nodes);

    // Create with every parameter.
    let all = [
        ("volumeType", "gp3"),
        ("iops", "4000"),
        ("throughput", "250"),
        ("encrypted", "true"),
        ("kmsKeyId", "arn:aws:kms:us-east-1:123456789012:key/test"),
        ("tagSpecification_1", "team=storage"),
        ("csi.storage.k8s.io/pvc/name", "data"),
    ];
    let vol = provider
        .create_volume(create("pvc-a", 10, &all))
        .await
        .expect("create");
    assert_eq!(vol.capacity_bytes, 10 * GIB);
    assert_eq!(
        vol.accessible_topology[0]
            .segments
            .get(ZONE_KEY)
            .map(String::as_str),
        Some(ZONE)
    );
    let d = describe(&ec2, &vol.id).await;
    assert_eq!(d.size(), Some(10));
    assert_eq!(d.iops(), Some(4000));
    assert_eq!(d.throughput(), Some(250));
    assert_eq!(d.encrypted(), Some(true));
    assert_eq!(
        d.kms_key_id(),
        Some("arn:aws:kms:us-east-1:123456789012:key/test")
    );
    assert_eq!(d.availability_zone(), Some(ZONE));
    assert_eq!(tag(&d, NAME_TAG), Some("pvc-a"));
    assert_eq!(tag(&d, "team"), Some("storage"));
    assert_eq!(tag(&d, "owner"), Some("omnidisk-tests"));
    assert_eq!(tag(&d, "kubernetes.io/cluster/test-cluster"), Some("owned"));
    assert_eq!(tag(&d, "kubernetes.io/created-for/pvc/name"), Some("data"));

    // Idempotent re-create (moto ignores ClientToken: the name tag finds it).
    let again = provider
        .create_volume(create("pvc-a", 10, &all))
        .await
        .expect("re-create");
    assert_eq!(again.id, vol.id);
    let named = ec2
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:CSIVolumeName")
                .values("pvc-a")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(named.volumes().len(), 1, "a duplicate volume was created");

    // Same name, different parameters.
    let err = provider
        .create_volume(create("pvc-a", 10, &[("volumeType", "gp2")]))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::AlreadyExists,
        "{}",
        err.full_message()
    );

    // Attach.
    let node_a = run_instance(&moto).await;
    let node_b = run_instance(&moto).await;
    let attach = |node: &str| AttachRequest {
        volume_id: vol.id.clone(),
        node_id: node.to_owned(),
        ..AttachRequest::default()
    };
    let ctx = provider
        .attach_volume(attach(&node_a))
        .await
        .expect("attach");
    let device = ctx
        .publish_context
        .get(DEVICE_PATH_KEY)
        .cloned()
        .expect("devicePath");
    assert!(device.starts_with("/dev/xvd"), "{device}");
    let ctx2 = provider
        .attach_volume(attach(&node_a))
        .await
        .expect("idempotent attach");
    assert_eq!(ctx, ctx2);
    let err = provider.attach_volume(attach(&node_b)).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::FailedPrecondition,
        "{}",
        err.full_message()
    );
    let d = describe(&ec2, &vol.id).await;
    assert_eq!(d.attachments().len(), 1);
    assert_eq!(d.attachments()[0].instance_id(), Some(node_a.as_str()));
    assert_eq!(d.attachments()[0].device(), Some(device.as_str()));

    // A second volume on the same node gets another device name.
    let vol2 = provider
        .create_volume(create("pvc-b", 1, &[]))
        .await
        .expect("create b");
    let ctx_b = provider
        .attach_volume(AttachRequest {
            volume_id: vol2.id.clone(),
            node_id: node_a.clone(),
            ..AttachRequest::default()
        })
        .await
        .expect("attach b");
    assert_ne!(ctx_b.publish_context[DEVICE_PATH_KEY], device);

    // List with published nodes.
    let listed = provider
        .list_volumes(ListRequest::default())
        .await
        .expect("list");
    let entry = listed
        .entries
        .iter()
        .find(|e| e.volume.as_ref().is_some_and(|v| v.id == vol.id))
        .expect("pvc-a listed");
    assert_eq!(entry.published_nodes, vec![node_a.clone()]);
    let paged = provider
        .list_volumes(ListRequest {
            max_entries: 1,
            starting_token: String::new(),
        })
        .await
        .expect("list page");
    assert_eq!(paged.entries.len(), 1);
    assert!(!paged.next_token.is_empty());
    let rest = provider
        .list_volumes(ListRequest {
            max_entries: 1,
            starting_token: paged.next_token.clone(),
        })
        .await
        .expect("list page 2");
    assert_eq!(rest.entries.len(), 1);
    assert_ne!(
        rest.entries[0].volume.as_ref().map(|v| &v.id),
        paged.entries[0].volume.as_ref().map(|v| &v.id)
    );

    // Delete while attached.
    let err = provider
        .delete_volume(VolumeRef {
            volume_id: vol.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);

    // Detach, twice.
    for _ in 0..2 {
        provider
            .detach_volume(DetachRequest {
                volume_id: vol.id.clone(),
                node_id: node_a.clone(),
            })
            .await
            .expect("detach");
    }
    assert!(describe(&ec2, &vol.id).await.attachments().is_empty());

    // Snapshots: create (idempotent), list with paging, restore, delete.
    let mut snaps = Vec::new();
    for i in 0..3 {
        let req = CreateSnapshotRequest {
            name: format!("snap-{i}"),
            source_volume_id: vol.id.clone(),
            parameters: params(&[("tagSpecification_1", "purpose=test")]),
        };
        let s = provider
            .create_snapshot(req.clone())
            .await
            .expect("snapshot");
        assert_eq!(s.source_volume_id, vol.id);
        assert_eq!(s.size_bytes, 10 * GIB);
        assert!(s.creation_time_seconds > 0);
        let s2 = provider.create_snapshot(req).await.expect("snapshot again");
        assert_eq!(s.id, s2.id);
        snaps.push(s.id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = provider
            .list_snapshots(ListSnapshotsRequest {
                max_entries: 2,
                starting_token: token.clone(),
                ..ListSnapshotsRequest::default()
            })
            .await
            .expect("list snapshots");
        assert!(page.entries.len() <= 2);
        seen.extend(page.entries.into_iter().map(|s| s.id));
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    seen.sort();
    let mut expected = snaps.clone();
    expected.sort();
    assert_eq!(seen, expected);
    let by_volume = provider
        .list_snapshots(ListSnapshotsRequest {
            source_volume_id: vol.id.clone(),
            ..ListSnapshotsRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(by_volume.entries.len(), 3);
    let one = provider
        .list_snapshots(ListSnapshotsRequest {
            snapshot_id: snaps[1].clone(),
            ..ListSnapshotsRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(one.entries.len(), 1);
    assert!(one.entries[0].ready_to_use);

    let mut restore = create("pvc-restored", 5, &[]);
    restore.source = Some(create_volume_request::Source::SourceSnapshotId(
        snaps[0].clone(),
    ));
    let restored = provider.create_volume(restore).await.expect("restore");
    assert_eq!(restored.capacity_bytes, 10 * GIB);
    assert_eq!(
        describe(&ec2, &restored.id).await.snapshot_id(),
        Some(snaps[0].as_str())
    );
    let mut missing = create("pvc-missing", 5, &[]);
    missing.source = Some(create_volume_request::Source::SourceSnapshotId(
        "snap-0123456789abcdef0".into(),
    ));
    assert_eq!(
        provider.create_volume(missing).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // Expand.
    let grown = provider
        .expand_volume(ExpandVolumeRequest {
            volume_id: vol.id.clone(),
            required_bytes: 20 * GIB,
            ..ExpandVolumeRequest::default()
        })
        .await
        .expect("expand");
    assert_eq!(grown.capacity_bytes, 20 * GIB);
    assert_eq!(describe(&ec2, &vol.id).await.size(), Some(20));

    // Modify (VolumeAttributesClass).
    provider
        .modify_volume(ModifyVolumeRequest {
            volume_id: vol.id.clone(),
            mutable_parameters: params(&[("volumeType", "io2"), ("iops", "5000")]),
        })
        .await
        .expect("modify");
    let d = describe(&ec2, &vol.id).await;
    assert_eq!(d.volume_type().map(|t| t.as_str()), Some("io2"));
    assert_eq!(d.iops(), Some(5000));

    // Delete snapshots (twice), then volumes (absent is fine).
    for s in &snaps {
        for _ in 0..2 {
            provider
                .delete_snapshot(SnapshotRef {
                    snapshot_id: s.clone(),
                })
                .await
                .expect("delete snapshot");
        }
    }
    assert_eq!(
        provider
            .get_snapshot(SnapshotRef {
                snapshot_id: snaps[0].clone()
            })
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    provider
        .detach_volume(DetachRequest {
            volume_id: vol2.id.clone(),
            node_id: String::new(),
        })
        .await
        .expect("detach b from all");
    for id in [&vol.id, &vol2.id, &restored.id] {
        for _ in 0..2 {
            provider
                .delete_volume(VolumeRef {
                    volume_id: id.clone(),
                })
                .await
                .expect("delete");
        }
        let err = provider
            .get_volume(VolumeRef {
                volume_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }
    drop(moto);
}

#[tokio::test]
async fn bad_settings_fail_at_start_and_node_mode_needs_no_aws() {
    let make = |toml: &str| {
        (omnidisk_provider_aws_ebs::FACTORY.create)(InitRequest {
            instance: "ebs".into(),
            settings_toml: toml.into(),
            node_name: "n".into(),
            mode: "controller".into(),
        })
    };
    let err = make("regoin = \"us-east-1\"")
        .await
        .err()
        .expect("a misspelt key must fail");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("regoin"));
    let err = make("[credentials]\nsource = \"static\"\naccess_key_id = \"\"\nsecret_access_key = \"s3cr3t-value\"\n")
        .await
        .err()
        .expect("an empty key must fail");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(
        !err.full_message().contains("s3cr3t-value"),
        "{}",
        err.full_message()
    );
    // Node mode needs no AWS access at all.
    let p = node_provider().await;
    let info = p.node_info().await.unwrap();
    assert_eq!(info.node_id, "i-0123456789abcdef0");
    assert_eq!(info.max_volumes, 20);
    assert_eq!(
        info.topology
            .unwrap()
            .segments
            .get(ZONE_KEY)
            .map(String::as_str),
        Some("us-east-1a")
    );
    assert_eq!(
        p.create_volume(create("x", 1, &[]))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::FailedPrecondition
    );
}

#[tokio::test]
async fn credentials_are_resolved_by_the_first_call_not_at_start() {
    // A profile that no AWS config file holds: the instance starts (it
    // builds nothing of the SDK), and each call that needs EC2 says why it
    // cannot reach it.
    let settings = format!(
        "region = \"us-east-1\"\n[credentials]\nsource = \"profile\"\nname = \"omnidisk-no-such-profile-{}\"\n",
        std::process::id()
    );
    let p = (omnidisk_provider_aws_ebs::FACTORY.create)(InitRequest {
        instance: "ebs".into(),
        settings_toml: settings,
        node_name: "n".into(),
        mode: "controller".into(),
    })
    .await
    .expect("the start does not resolve credentials");
    for _ in 0..2 {
        let err = p.create_volume(create("x", 1, &[])).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
        assert!(
            err.full_message().contains("cannot set up EC2 access"),
            "{}",
            err.full_message()
        );
    }
}

async fn node_provider() -> Arc<dyn Provider> {
    (omnidisk_provider_aws_ebs::FACTORY.create)(InitRequest {
        instance: "ebs".into(),
        settings_toml: "[node]\ninstance_id = \"i-0123456789abcdef0\"\nzone = \"us-east-1a\"\ninstance_type = \"m5.large\"\nmax_volumes_per_node = 20\n".into(),
        node_name: "n".into(),
        mode: "node".into(),
    })
    .await
    .expect("node provider")
}

async fn moto_provider(moto: &Moto) -> Arc<dyn Provider> {
    (omnidisk_provider_aws_ebs::FACTORY.create)(InitRequest {
        instance: "ebs".into(),
        settings_toml: settings_toml(moto),
        node_name: "node-1".into(),
        mode: "controller".into(),
    })
    .await
    .expect("provider")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_checks_mutable_parameters_zones_and_sizes_against_moto() {
    let Some(moto) = start_moto("create_checks_mutable_parameters_zones_and_sizes_against_moto")
    else {
        return;
    };
    let ec2 = moto.client().await;
    let provider = moto_provider(&moto).await;
    let before = moto.inventory().await.expect("inventory");

    // Refused before anything exists: unknown key, foreign zone, huge sizes.
    let mut req = create("pvc-vac", 10, &[]);
    req.mutable_parameters = params(&[("XXX_FakeKey", "x")]);
    let err = provider.create_volume(req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.message().contains("XXX_FakeKey"), "{err}");
    let mut req = create("pvc-foreign", 10, &[]);
    req.requisite = vec![Topology::from_pairs([(ZONE_KEY, "cn-hangzhou-b")])];
    req.preferred = req.requisite.clone();
    let err = provider.create_volume(req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted, "{err}");
    assert!(err.message().contains("cn-hangzhou-b"), "{err}");
    for required in [i64::MAX, i64::MAX - GIB + 1] {
        let mut req = create("pvc-huge", 0, &[]);
        req.required_bytes = required;
        let err = provider.create_volume(req).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutOfRange, "{err}");
    }
    let added = moto
        .added_since(&before)
        .await
        .expect("inventory after refusals");
    assert!(added.is_empty(), "refused requests left {added:?}");

    // Valid VolumeAttributesClass keys apply at creation; the EBS key
    // wins over the well-known one, and a foreign first segment is skipped.
    let mut req = create("pvc-vac", 10, &[("tagSpecification_1", "team=a")]);
    req.mutable_parameters = params(&[
        ("volumeType", "io2"),
        ("iops", "500"),
        ("tagSpecification_2", "tier=gold"),
    ]);
    let zone_b = format!("{}b", &ZONE[..ZONE.len() - 1]);
    req.requisite = vec![
        Topology::from_pairs([(ZONE_KEY, "cn-hangzhou-b")]),
        Topology::from_pairs([
            (ZONE_KEY, ZONE),
            ("topology.ebs.csi.aws.com/zone", zone_b.as_str()),
        ]),
    ];
    req.preferred = vec![req.requisite[0].clone()];
    let vol = provider.create_volume(req).await.expect("create with VAC");
    let d = describe(&ec2, &vol.id).await;
    assert_eq!(d.volume_type().map(|t| t.as_str()), Some("io2"));
    assert_eq!(d.iops(), Some(500));
    assert_eq!(tag(&d, "tier"), Some("gold"));
    assert_eq!(tag(&d, "team"), Some("a"));
    assert_eq!(d.availability_zone(), Some(zone_b.as_str()));

    // Expansion near i64::MAX is refused before EC2 is asked.
    let err = provider
        .expand_volume(ExpandVolumeRequest {
            volume_id: vol.id.clone(),
            required_bytes: i64::MAX,
            ..ExpandVolumeRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange, "{err}");
    assert_eq!(describe(&ec2, &vol.id).await.size(), Some(10));

    // Tags from a VolumeAttributesClass change apply through CreateTags.
    provider
        .modify_volume(ModifyVolumeRequest {
            volume_id: vol.id.clone(),
            mutable_parameters: params(&[("tagSpecification_1", "tier=silver")]),
        })
        .await
        .expect("modify tags");
    assert_eq!(tag(&describe(&ec2, &vol.id).await, "tier"), Some("silver"));
    provider
        .delete_volume(VolumeRef {
            volume_id: vol.id.clone(),
        })
        .await
        .expect("delete");
    let added = moto
        .added_since(&before)
        .await
        .expect("inventory at the end");
    assert!(added.is_empty(), "left behind: {added:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_use_copy_volumes_through_the_proxy() {
    let Some(moto) = start_moto("clones_use_copy_volumes_through_the_proxy") else {
        return;
    };
    let ec2 = moto.client().await;
    let provider = moto_provider(&moto).await;
    assert!(provider.info().clone);
    let before = moto.inventory().await.expect("inventory");
    let src = provider
        .create_volume(create("pvc-src", 3, &[]))
        .await
        .expect("source");
    let mut req = create(
        "pvc-clone",
        1,
        &[
            ("volumeType", "io1"),
            ("iops", "150"),
            ("tagSpecification_1", "team=clones"),
        ],
    );
    req.source = Some(create_volume_request::Source::SourceVolumeId(
        src.id.clone(),
    ));
    let clone = provider.create_volume(req.clone()).await.expect("clone");
    assert_ne!(clone.id, src.id);
    assert_eq!(
        clone.capacity_bytes,
        4 * GIB,
        "io1's minimum, above the source"
    );
    assert_eq!(
        clone.source,
        Some(volume::Source::SourceVolumeId(src.id.clone()))
    );
    let d = describe(&ec2, &clone.id).await;
    assert_eq!(d.availability_zone(), Some(ZONE));
    assert_eq!(d.volume_type().map(|t| t.as_str()), Some("io1"));
    assert_eq!(d.iops(), Some(150));
    assert_eq!(tag(&d, NAME_TAG), Some("pvc-clone"));
    assert_eq!(tag(&d, "team"), Some("clones"));
    let again = provider.create_volume(req).await.expect("clone again");
    assert_eq!(again.id, clone.id);
    let mut missing = create("pvc-missing", 1, &[]);
    missing.source = Some(create_volume_request::Source::SourceVolumeId(
        "vol-0123456789abcdef0".into(),
    ));
    assert_eq!(
        provider.create_volume(missing).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // The proxy's CopyVolumes on the wire, through the SDK's own encoding.
    let copy = |size: i32, token: &str| {
        ec2.copy_volumes()
            .source_volume_id(&src.id)
            .size(size)
            .volume_type(aws_sdk_ec2::types::VolumeType::Gp3)
            .client_token(token)
            .tag_specifications(
                aws_sdk_ec2::types::TagSpecification::builder()
                    .resource_type(aws_sdk_ec2::types::ResourceType::Volume)
                    .tags(
                        aws_sdk_ec2::types::Tag::builder()
                            .key("k")
                            .value("v w&x")
                            .build(),
                    )
                    .build(),
            )
            .send()
    };
    let first = copy(5, "token-1").await.expect("CopyVolumes");
    let v = &first.volumes()[0];
    let id = v.volume_id().expect("volume ID").to_owned();
    assert_eq!(v.size(), Some(5));
    assert_eq!(v.source_volume_id(), Some(src.id.as_str()));
    assert_eq!(v.availability_zone(), Some(ZONE));
    assert_eq!(tag(&describe(&ec2, &id).await, "k"), Some("v w&x"));
    let second = copy(5, "token-1").await.expect("CopyVolumes again");
    assert_eq!(second.volumes()[0].volume_id(), Some(id.as_str()));
    use aws_sdk_ec2::error::ProvideErrorMetadata;
    let err = copy(6, "token-1").await.unwrap_err();
    assert_eq!(err.code(), Some("IdempotentParameterMismatch"), "{err:?}");
    let err = copy(2, "token-2").await.unwrap_err();
    assert_eq!(err.code(), Some("InvalidParameterValue"), "{err:?}");
    let err = ec2
        .copy_volumes()
        .source_volume_id("vol-0123456789abcdef0")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidVolume.NotFound"), "{err:?}");

    for id in [&clone.id, &src.id, &id] {
        provider
            .delete_volume(VolumeRef {
                volume_id: id.clone(),
            })
            .await
            .expect("delete");
    }
    let added = moto
        .added_since(&before)
        .await
        .expect("inventory at the end");
    assert!(added.is_empty(), "left behind: {added:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_attach_volumes_against_moto() {
    let Some(moto) = start_moto("multi_attach_volumes_against_moto") else {
        return;
    };
    let ec2 = moto.client().await;
    let provider = moto_provider(&moto).await;
    let mut req = create(
        "pvc-shared",
        10,
        &[
            ("volumeType", "io2"),
            ("iops", "1000"),
            ("multiAttach", "true"),
        ],
    );
    req.capabilities = vec![Capability {
        access_type: AccessType::Block as i32,
        access_mode: AccessMode::MultiNodeMultiWriter as i32,
        fs_type: String::new(),
    }];
    let vol = provider.create_volume(req).await.expect("create");
    assert!(vol.multi_attach);
    assert_eq!(
        describe(&ec2, &vol.id).await.multi_attach_enabled(),
        Some(true)
    );
    let status = provider
        .get_volume(VolumeRef {
            volume_id: vol.id.clone(),
        })
        .await
        .expect("get");
    assert!(status.volume.expect("volume").multi_attach);
    let err = provider
        .create_volume(create("pvc-gp3-shared", 10, &[("multiAttach", "true")]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.message().contains("gp3"), "{err}");
    provider
        .delete_volume(VolumeRef { volume_id: vol.id })
        .await
        .expect("delete");
}
