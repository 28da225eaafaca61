//! The CSI services over a real unix socket with fake providers: routing,
//! idempotency, error codes per field, paging, in-flight conflicts.

mod common;

use std::collections::BTreeMap;

use common::{block_cap, mount_cap, start};
use omnidisk::Mode;
use omnidisk::generated::csi;
use omnidisk_provider_api::testing::FakeSettings;
use tonic::Code;

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn create_req(name: &str, size: i64, pairs: &[(&str, &str)]) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: size,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap()],
        parameters: params(pairs),
        ..Default::default()
    }
}

const GIB: i64 = 1 << 30;

fn two_instances() -> Vec<(&'static str, FakeSettings)> {
    vec![
        ("alpha", FakeSettings::default()),
        ("beta", FakeSettings::default()),
    ]
}

#[tokio::test]
async fn identity_reports_name_readiness_and_capabilities() {
    let h = start(Mode::All, &two_instances()).await;
    let mut c = h.client.clone();
    let info = c
        .identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, omnidisk::DRIVER_NAME);
    assert_eq!(info.vendor_version, omnidisk::VERSION);
    assert!(info.manifest.contains_key("instance/alpha"));
    let probe = c
        .identity
        .probe(csi::ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));
    let caps = c
        .identity
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    // Controller, topology, group controller (the fakes take group
    // snapshots) and online expansion.
    assert_eq!(caps.capabilities.len(), 4, "{caps:?}");
    let ctrl = c
        .controller
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    use csi::controller_service_capability::rpc::Type;
    let got: Vec<i32> = ctrl
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|csi::controller_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    for want in [
        Type::CreateDeleteVolume,
        Type::PublishUnpublishVolume,
        Type::ListVolumes,
        Type::GetCapacity,
        Type::CreateDeleteSnapshot,
        Type::ListSnapshots,
        Type::CloneVolume,
        Type::ExpandVolume,
        Type::GetVolume,
    ] {
        assert!(got.contains(&(want as i32)), "missing {want:?}");
    }
    h.stop().await;
}

#[tokio::test]
async fn create_is_idempotent_and_conflicting_recreate_is_already_exists() {
    let h = start(Mode::Controller, &two_instances()).await;
    let mut c = h.client.controller.clone();
    let first = c
        .create_volume(create_req("pvc-1", GIB, &[("type", "alpha")]))
        .await
        .unwrap()
        .into_inner();
    let again = c
        .create_volume(create_req("pvc-1", GIB, &[("type", "alpha")]))
        .await
        .unwrap()
        .into_inner();
    let v1 = first.volume.unwrap();
    assert!(v1.volume_id.starts_with("v1.alpha."), "{}", v1.volume_id);
    assert_eq!(v1.volume_id, again.volume.unwrap().volume_id);
    assert_eq!(h.fake("alpha").volume_count(), 1);

    let err = c
        .create_volume(create_req("pvc-1", 5 * GIB, &[("type", "alpha")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(h.fake("alpha").volume_count(), 1);
    h.stop().await;
}

#[tokio::test]
async fn routing_by_type_and_unknown_type() {
    let h = start(Mode::Controller, &two_instances()).await;
    let mut c = h.client.controller.clone();
    let v = c
        .create_volume(create_req("pvc-b", GIB, &[("type", "beta")]))
        .await
        .unwrap()
        .into_inner();
    assert!(v.volume.unwrap().volume_id.starts_with("v1.beta."));
    assert_eq!(h.fake("beta").volume_count(), 1);
    assert_eq!(h.fake("alpha").volume_count(), 0);

    let err = c
        .create_volume(create_req("pvc-x", GIB, &[("type", "gamma")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("gamma") && err.message().contains("alpha, beta"),
        "{}",
        err.message()
    );

    let err = c
        .create_volume(create_req("pvc-x", GIB, &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("`type`"), "{}", err.message());
    h.stop().await;
}

#[tokio::test]
async fn missing_fields_are_invalid_argument_naming_the_field() {
    let h = start(Mode::All, &two_instances()).await;
    let mut c = h.client.clone();
    let mut req = create_req("", GIB, &[("type", "alpha")]);
    let err = c.controller.create_volume(req.clone()).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "name is required")
    );

    req.name = "pvc".into();
    req.volume_capabilities.clear();
    let err = c.controller.create_volume(req.clone()).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "volume_capabilities is required")
    );

    req.volume_capabilities = vec![mount_cap()];
    req.capacity_range = Some(csi::CapacityRange {
        required_bytes: 2 * GIB,
        limit_bytes: GIB,
    });
    let err = c.controller.create_volume(req.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit_bytes"));

    let err = c
        .controller
        .delete_volume(csi::DeleteVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "volume_id is required")
    );

    let err = c
        .controller
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: "v1.alpha.vol-1".into(),
            volume_capability: Some(mount_cap()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "node_id is required")
    );

    let err = c
        .controller
        .create_snapshot(csi::CreateSnapshotRequest {
            name: "s".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "source_volume_id is required")
    );

    let err = c
        .node
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: "v1.alpha.vol-1".into(),
            volume_capability: Some(mount_cap()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("staging_target_path"),
        "{}",
        err.message()
    );

    let err = c
        .controller
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: "v1.alpha.vol-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "capacity_range is required")
    );
    h.stop().await;
}

#[tokio::test]
async fn malformed_and_foreign_ids_get_the_spec_codes() {
    let h = start(Mode::All, &two_instances()).await;
    let mut c = h.client.clone();
    for bad in ["garbage", "v2.alpha.x", "v1.alpha."] {
        // Deleting something that cannot exist is success.
        c.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: bad.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        c.controller
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: bad.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let err = c
            .controller
            .controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{bad}");
        let err = c
            .controller
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: bad.into(),
                node_id: "node-1".into(),
                volume_capability: Some(mount_cap()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{bad}");
        let err = c
            .controller
            .create_snapshot(csi::CreateSnapshotRequest {
                name: "s".into(),
                source_volume_id: bad.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{bad}");
        let listed = c
            .controller
            .list_snapshots(csi::ListSnapshotsRequest {
                snapshot_id: bad.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(listed.entries.is_empty());
        let err = c
            .node
            .node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: bad.into(),
                staging_target_path: h.dir.path().join("stage").to_string_lossy().into(),
                volume_capability: Some(mount_cap()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{bad}");
    }
    // Well-formed, but the volume does not exist.
    let err = c
        .controller
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: "v1.alpha.vol-9999".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // An instance that is not configured here: deleting would lose track of a
    // real volume, so it is refused rather than reported as done.
    let err = c
        .controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: "v1.elsewhere.vol-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    h.stop().await;
}

#[tokio::test]
async fn a_second_operation_on_a_busy_volume_is_aborted() {
    let slow = FakeSettings {
        delay_ms: 400,
        ..FakeSettings::default()
    };
    let h = start(Mode::Controller, &[("slow", slow)]).await;
    let c1 = h.client.controller.clone();
    let mut c2 = h.client.controller.clone();
    let first = tokio::spawn(async move {
        let mut c1 = c1;
        c1.create_volume(create_req("pvc-slow", GIB, &[("type", "slow")]))
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let err = c2
        .create_volume(create_req("pvc-slow", GIB, &[("type", "slow")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    let v = first.await.unwrap().unwrap().into_inner().volume.unwrap();
    // Once the first is done the volume is free again.
    c2.delete_volume(csi::DeleteVolumeRequest {
        volume_id: v.volume_id,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(h.driver.inflight.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn attach_detach_and_delete_attached() {
    let h = start(Mode::Controller, &two_instances()).await;
    let mut c = h.client.controller.clone();
    let v = c
        .create_volume(create_req("pvc-a", GIB, &[("type", "alpha")]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let publish = csi::ControllerPublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        node_id: "node-1".into(),
        volume_capability: Some(mount_cap()),
        ..Default::default()
    };
    let ctx1 = c
        .controller_publish_volume(publish.clone())
        .await
        .unwrap()
        .into_inner();
    let ctx2 = c
        .controller_publish_volume(publish.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ctx1.publish_context, ctx2.publish_context);
    assert!(!ctx1.publish_context.is_empty());

    let err = c
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            node_id: "node-2".into(),
            ..publish.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let got = c
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: v.volume_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.status.unwrap().published_node_ids,
        vec!["node-1".to_string()]
    );

    let err = c
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let unpublish = csi::ControllerUnpublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        node_id: "node-1".into(),
        ..Default::default()
    };
    c.controller_unpublish_volume(unpublish.clone())
        .await
        .unwrap();
    c.controller_unpublish_volume(unpublish).await.unwrap();
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: v.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: v.volume_id,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(h.fake("alpha").volume_count(), 0);
    h.stop().await;
}

#[tokio::test]
async fn list_volumes_pages_across_instances() {
    let h = start(Mode::Controller, &two_instances()).await;
    let mut c = h.client.controller.clone();
    let mut created = Vec::new();
    for (i, instance) in ["alpha", "alpha", "beta", "beta", "beta"]
        .iter()
        .enumerate()
    {
        let v = c
            .create_volume(create_req(&format!("pvc-{i}"), GIB, &[("type", instance)]))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        created.push(v.volume_id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 2,
                starting_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 2);
        pages += 1;
        seen.extend(
            page.entries
                .into_iter()
                .map(|e| e.volume.unwrap().volume_id),
        );
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    seen.sort();
    created.sort();
    assert_eq!(seen, created);
    assert!(pages >= 3, "{pages} pages");

    let all = c
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.entries.len(), 5);
    assert!(all.next_token.is_empty());

    let err = c
        .list_volumes(csi::ListVolumesRequest {
            max_entries: 1,
            starting_token: "nonsense".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    let err = c
        .list_volumes(csi::ListVolumesRequest {
            max_entries: -1,
            starting_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    h.stop().await;
}

#[tokio::test]
async fn snapshots_restore_and_clone_within_an_instance() {
    let h = start(Mode::Controller, &two_instances()).await;
    let mut c = h.client.controller.clone();
    let v = c
        .create_volume(create_req("src", GIB, &[("type", "alpha")]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let snap_req = csi::CreateSnapshotRequest {
        source_volume_id: v.volume_id.clone(),
        name: "snap-1".into(),
        ..Default::default()
    };
    let s = c
        .create_snapshot(snap_req.clone())
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    let again = c
        .create_snapshot(snap_req)
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(s.snapshot_id, again.snapshot_id);
    assert_eq!(s.source_volume_id, v.volume_id);
    assert!(s.ready_to_use);
    assert!(s.creation_time.is_some());

    let got = c
        .get_snapshot(csi::GetSnapshotRequest {
            snapshot_id: s.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.snapshot.unwrap().snapshot_id, s.snapshot_id);

    let by_volume = c
        .list_snapshots(csi::ListSnapshotsRequest {
            source_volume_id: v.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_volume.entries.len(), 1);

    let mut restore = create_req("restored", GIB, &[("type", "alpha")]);
    restore.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: s.snapshot_id.clone(),
            },
        )),
    });
    let r = c
        .create_volume(restore.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    match r.content_source.and_then(|s| s.r#type) {
        Some(csi::volume_content_source::Type::Snapshot(src)) => {
            assert_eq!(src.snapshot_id, s.snapshot_id)
        }
        other => panic!("restored volume has source {other:?}"),
    }

    // A source from another instance cannot be used.
    restore.name = "restored-beta".into();
    restore.parameters = params(&[("type", "beta")]);
    let err = c.create_volume(restore).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("same instance"), "{}", err.message());

    let mut clone = create_req("clone", GIB, &[("type", "alpha")]);
    clone.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: v.volume_id.clone(),
            },
        )),
    });
    c.create_volume(clone).await.unwrap();

    let mut missing = create_req("from-missing", GIB, &[("type", "alpha")]);
    missing.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: "v1.alpha.snap-404".into(),
            },
        )),
    });
    let err = c.create_volume(missing).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    c.delete_snapshot(csi::DeleteSnapshotRequest {
        snapshot_id: s.snapshot_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.delete_snapshot(csi::DeleteSnapshotRequest {
        snapshot_id: s.snapshot_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = c
        .get_snapshot(csi::GetSnapshotRequest {
            snapshot_id: s.snapshot_id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    h.stop().await;
}

#[tokio::test]
async fn expand_modify_capacity_and_provider_error_kinds() {
    let limited = FakeSettings {
        capacity_bytes: 10 * GIB,
        max_volume_bytes: 4 * GIB,
        ..FakeSettings::default()
    };
    let h = start(Mode::Controller, &[("small", limited)]).await;
    let mut c = h.client.controller.clone();
    let v = c
        .create_volume(create_req("pvc", GIB, &[]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();

    let r = c
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 3 * GIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(mount_cap()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 3 * GIB);
    assert!(r.node_expansion_required);
    let r = c
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 3 * GIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(block_cap()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !r.node_expansion_required,
        "block volumes need no node expansion"
    );

    c.controller_modify_volume(csi::ControllerModifyVolumeRequest {
        volume_id: v.volume_id.clone(),
        mutable_parameters: params(&[("tier", "gold")]),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = c
        .controller_modify_volume(csi::ControllerModifyVolumeRequest {
            volume_id: v.volume_id.clone(),
            mutable_parameters: params(&[("colour", "red")]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("colour"));

    let cap = c
        .get_capacity(csi::GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cap.available_capacity, 7 * GIB);
    assert_eq!(cap.maximum_volume_size, Some(4 * GIB));

    let err = c
        .create_volume(create_req("too-big", 5 * GIB, &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    let err = c
        .create_volume(create_req("down", GIB, &[("fail", "unavailable")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().starts_with("small: create volume: "),
        "{}",
        err.message()
    );
    let err = c
        .create_volume(create_req("bad-param", GIB, &[("sped", "fast")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("`sped`"), "{}", err.message());
    let err = c
        .create_volume(create_req("bad-fs", GIB, &[("fsType", "ntfs")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    h.stop().await;
}

#[tokio::test]
async fn node_local_instances_are_served_by_the_node_plugin_only() {
    let local = FakeSettings {
        node_local: true,
        attach_required: false,
        ..FakeSettings::default()
    };
    let shared = FakeSettings::default();
    let controller = start(
        Mode::Controller,
        &[("local", local.clone()), ("shared", shared.clone())],
    )
    .await;
    let mut c = controller.client.controller.clone();
    let err = c
        .create_volume(create_req("pvc", GIB, &[("type", "local")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("node-local"), "{}", err.message());
    c.create_volume(create_req("pvc", GIB, &[("type", "shared")]))
        .await
        .unwrap();
    // The attacher publishes every volume of the driver; local ones need nothing.
    let r = c
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: "v1.local.vol-0001".into(),
            node_id: "node-1".into(),
            volume_capability: Some(mount_cap()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.publish_context.is_empty());
    controller.stop().await;

    let node = start(Mode::Node, &[("local", local), ("shared", shared)]).await;
    let mut c = node.client.controller.clone();
    let v = c
        .create_volume(create_req("pvc", GIB, &[("type", "local")]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        v.accessible_topology[0].segments["fake.omnidisk.io/node"],
        "node-1"
    );
    let err = c
        .create_volume(create_req("pvc2", GIB, &[("type", "shared")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut elsewhere = create_req("pvc3", GIB, &[("type", "local")]);
    elsewhere.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![csi::Topology {
            segments: params(&[("fake.omnidisk.io/node", "node-2")]),
        }],
        preferred: vec![],
    });
    let err = c.create_volume(elsewhere).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);

    let info = node
        .client
        .node
        .clone()
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "node-1");
    let topo = info.accessible_topology.unwrap().segments;
    assert_eq!(
        topo.get("fake.omnidisk.io/node").map(String::as_str),
        Some("node-1")
    );
    node.stop().await;
}

#[tokio::test]
async fn node_stage_publish_round_trip_with_the_fake_mounter() {
    let local = FakeSettings {
        node_local: true,
        attach_required: false,
        ..FakeSettings::default()
    };
    let h = start(Mode::All, &[("local", local)]).await;
    let mut c = h.client.clone();
    let v = c
        .controller
        .create_volume(create_req("pvc", GIB, &[("device", "/dev/fake0")]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let staging = h.dir.path().join("staging");
    let target = h.dir.path().join("pods/target");
    let stage = csi::NodeStageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging.to_string_lossy().into(),
        volume_capability: Some(mount_cap()),
        volume_context: v.volume_context.clone(),
        ..Default::default()
    };
    c.node.node_stage_volume(stage.clone()).await.unwrap();
    c.node.node_stage_volume(stage.clone()).await.unwrap();
    assert_eq!(h.mounter.format_count("/dev/fake0"), 1);
    let publish = csi::NodePublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging.to_string_lossy().into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: Some(mount_cap()),
        volume_context: v.volume_context.clone(),
        ..Default::default()
    };
    c.node.node_publish_volume(publish.clone()).await.unwrap();
    c.node.node_publish_volume(publish).await.unwrap();
    let stats = c
        .node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: v.volume_id.clone(),
            volume_path: target.to_string_lossy().into(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.usage.len(), 2);
    assert!(!stats.volume_condition.unwrap().abnormal);
    let unpublish = csi::NodeUnpublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        target_path: target.to_string_lossy().into(),
    };
    c.node
        .node_unpublish_volume(unpublish.clone())
        .await
        .unwrap();
    c.node.node_unpublish_volume(unpublish).await.unwrap();
    let unstage = csi::NodeUnstageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging.to_string_lossy().into(),
    };
    c.node.node_unstage_volume(unstage.clone()).await.unwrap();
    c.node.node_unstage_volume(unstage).await.unwrap();
    assert!(h.mounter.mounts().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn metrics_are_scraped_after_a_life_cycle() {
    use tower::ServiceExt;
    let h = start(Mode::All, &two_instances()).await;
    let mut c = h.client.controller.clone();
    let v = c
        .create_volume(create_req("pvc-metrics", GIB, &[("type", "beta")]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let err = c
        .create_volume(create_req("pvc-metrics-2", GIB, &[("type", "gamma")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: v.volume_id,
        ..Default::default()
    })
    .await
    .unwrap();

    let router = omnidisk::server::http_router(h.driver.clone());
    let response = router
        .clone()
        .oneshot(
            axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        text.contains(
            r#"omnidisk_csi_operations_total{method="CreateVolume",instance="beta",code="Ok"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"omnidisk_csi_operations_total{method="DeleteVolume",instance="beta",code="Ok"}"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"code="InvalidArgument""#), "{text}");
    assert!(
        text.contains(r#"omnidisk_capacity_total_bytes{instance="beta"}"#),
        "{text}"
    );
    assert!(text.contains("omnidisk_inflight_operations 0"), "{text}");

    // Capacity is sampled at most once per TTL: a volume created now does
    // not show in the next scrape's free space (no provider call is made).
    let available = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(r#"omnidisk_capacity_available_bytes{instance="beta"} "#))
            .map(str::to_owned)
            .expect("an available-bytes sample for beta")
    };
    let before = available(&text);
    c.create_volume(create_req("pvc-metrics-3", GIB, &[("type", "beta")]))
        .await
        .unwrap();
    let scrape = |router: axum::Router| async move {
        let response = router
            .oneshot(
                axum::http::Request::get("/metrics")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    };
    let again = scrape(router.clone()).await;
    assert_eq!(available(&again), before, "{again}");

    let health = router
        .oneshot(
            axum::http::Request::get("/healthz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    h.stop().await;
}

#[tokio::test]
async fn group_snapshots_span_one_instance_and_restore_like_snapshots() {
    use csi::group_controller_service_capability::{Type as G, rpc::Type as GroupRpc};
    use csi::plugin_capability::{Type as P, service::Type as S};
    let h = start(Mode::Controller, &two_instances()).await;
    let mut c = h.client.controller.clone();
    let mut g = h.client.group.clone();

    let caps = h
        .client
        .identity
        .clone()
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        caps.capabilities.iter().any(|c| matches!(
            &c.r#type,
            Some(P::Service(s)) if s.r#type == S::GroupControllerService as i32
        )),
        "{caps:?}"
    );
    let gcaps = g
        .group_controller_get_capabilities(csi::GroupControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        gcaps.capabilities.first().and_then(|c| c.r#type.as_ref()),
        Some(G::Rpc(r)) if r.r#type == GroupRpc::CreateDeleteGetVolumeGroupSnapshot as i32
    ));

    let mut ids = Vec::new();
    for (name, ty) in [("g-a", "alpha"), ("g-b", "alpha"), ("g-c", "beta")] {
        let v = c
            .create_volume(create_req(name, GIB, &[("type", ty)]))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        ids.push(v.volume_id);
    }
    let req = |name: &str, sources: &[&String]| csi::CreateVolumeGroupSnapshotRequest {
        name: name.into(),
        source_volume_ids: sources.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };

    // Table of refused requests: (request, code, text in the message).
    let refused = [
        (req("", &[&ids[0]]), Code::InvalidArgument, "name"),
        (req("grp", &[]), Code::InvalidArgument, "source_volume_ids"),
        (
            req("grp", &[&ids[0], &ids[0]]),
            Code::InvalidArgument,
            "twice",
        ),
        (
            req("grp", &[&ids[0], &ids[2]]),
            Code::InvalidArgument,
            "one provider instance",
        ),
        (
            req("grp", &[&"v1.alpha.vol-404".to_string()]),
            Code::NotFound,
            "vol-404",
        ),
        (
            req("grp", &[&"not-ours".to_string()]),
            Code::NotFound,
            "not-ours",
        ),
    ];
    for (r, code, text) in refused {
        let err = g.create_volume_group_snapshot(r.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{r:?}: {err:?}");
        assert!(err.message().contains(text), "{r:?}: {}", err.message());
    }

    let group = g
        .create_volume_group_snapshot(req("grp", &[&ids[0], &ids[1]]))
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert!(
        group.group_snapshot_id.starts_with("v1.alpha."),
        "{group:?}"
    );
    assert_eq!(group.snapshots.len(), 2);
    assert!(group.ready_to_use);
    for snap in &group.snapshots {
        assert_eq!(snap.group_snapshot_id, group.group_snapshot_id);
        assert!(snap.snapshot_id.starts_with("v1.alpha."));
    }
    let again = g
        .create_volume_group_snapshot(req("grp", &[&ids[1], &ids[0]]))
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(again.group_snapshot_id, group.group_snapshot_id);
    let err = g
        .create_volume_group_snapshot(req("grp", &[&ids[0]]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    let member_ids: Vec<String> = group
        .snapshots
        .iter()
        .map(|s| s.snapshot_id.clone())
        .collect();
    let got = g
        .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: group.group_snapshot_id.clone(),
            snapshot_ids: member_ids.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(got.group_snapshot_id, group.group_snapshot_id);

    // A member is an ordinary snapshot: it names its group and restores.
    let member = c
        .get_snapshot(csi::GetSnapshotRequest {
            snapshot_id: member_ids[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(member.group_snapshot_id, group.group_snapshot_id);
    let mut restore = create_req("from-member", GIB, &[("type", "alpha")]);
    restore.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: member_ids[0].clone(),
            },
        )),
    });
    c.create_volume(restore).await.unwrap();

    // Members of another instance are refused before anything is deleted.
    let err = g
        .delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: group.group_snapshot_id.clone(),
            snapshot_ids: vec!["v1.beta.snap-1".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    for _ in 0..2 {
        g.delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: group.group_snapshot_id.clone(),
            snapshot_ids: member_ids.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let err = c
        .get_snapshot(csi::GetSnapshotRequest {
            snapshot_id: member_ids[1].clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = g
        .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: group.group_snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Unknown groups delete as success; groups of unconfigured instances do not.
    g.delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
        group_snapshot_id: "not-ours".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = g
        .delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: "v1.gamma.group-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    h.stop().await;
}

/// Node calls that must change nothing: required fields first, paths
/// confined to the kubelet directory, and only the named volume's mounts
/// touched (table of request, expected code).
#[tokio::test]
async fn node_calls_refuse_hostile_and_incomplete_requests() {
    let local = FakeSettings {
        node_local: true,
        attach_required: false,
        ..FakeSettings::default()
    };
    let h = start(Mode::All, &[("local", local)]).await;
    let mut c = h.client.clone();
    let mut ids = Vec::new();
    for (name, dev) in [("a", "/dev/fake-a"), ("b", "/dev/fake-b")] {
        let v = c
            .controller
            .create_volume(create_req(name, GIB, &[("device", dev)]))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        ids.push(v.volume_id);
    }
    let root = h.dir.path();
    let p = |rel: &str| root.join(rel).to_string_lossy().into_owned();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.join("pods")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("pods/escape")).unwrap();
    std::fs::write(root.join("pods/precious"), b"keep").unwrap();

    for (id, stage) in [(&ids[0], "staging-a"), (&ids[1], "staging-b")] {
        c.node
            .node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: p(stage),
                volume_capability: Some(mount_cap()),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let sn_sw = || {
        let mut cap = mount_cap();
        cap.access_mode = Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::SingleNodeSingleWriter as i32,
        });
        cap
    };
    let publish = |id: &str, staging: &str, target: &str| csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.into(),
        target_path: target.into(),
        volume_capability: Some(mount_cap()),
        ..Default::default()
    };
    c.node
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_capability: Some(sn_sw()),
            ..publish(&ids[0], &p("staging-a"), &p("pods/t1"))
        })
        .await
        .unwrap();
    let before = h.mounter.mounts();

    let foreign = "foreign-id-1".to_string();
    let publish_cases = vec![
        // Required fields before IDs.
        (
            publish(&foreign, &p("staging-a"), ""),
            Code::InvalidArgument,
            "target_path",
        ),
        (
            csi::NodePublishVolumeRequest {
                volume_capability: None,
                ..publish(&foreign, &p("staging-a"), &p("pods/x"))
            },
            Code::InvalidArgument,
            "volume_capability",
        ),
        (
            publish(&foreign, "", &p("pods/x")),
            Code::InvalidArgument,
            "staging_target_path",
        ),
        (
            publish(&foreign, &p("staging-a"), &p("pods/x")),
            Code::NotFound,
            "foreign-id-1",
        ),
        // Paths outside the kubelet directory or through a symlink.
        (
            publish(&ids[0], &p("staging-a"), "/tmp/x"),
            Code::InvalidArgument,
            "kubelet directory",
        ),
        (
            publish(&ids[0], "/", &p("pods/x")),
            Code::InvalidArgument,
            "staging_target_path",
        ),
        (
            publish(&ids[0], "/proc", &p("pods/x")),
            Code::InvalidArgument,
            "staging_target_path",
        ),
        (
            publish(&ids[0], &p("staging-a"), "relative/x"),
            Code::InvalidArgument,
            "absolute",
        ),
        (
            publish(&ids[0], &p("staging-a"), &p("pods/escape")),
            Code::InvalidArgument,
            "symbolic link",
        ),
        (
            publish(&ids[0], &p("staging-a"), &p("pods/escape/deeper")),
            Code::InvalidArgument,
            "symbolic link",
        ),
        // Another volume's staging mount, or a path nothing is staged at.
        (
            publish(&ids[0], &p("staging-b"), &p("pods/x")),
            Code::FailedPrecondition,
            "staging",
        ),
        (
            publish(&ids[1], &p("pods"), &p("pods/x")),
            Code::FailedPrecondition,
            "not staged",
        ),
        // SINGLE_NODE_SINGLE_WRITER: a second target is refused.
        (
            csi::NodePublishVolumeRequest {
                volume_capability: Some(sn_sw()),
                ..publish(&ids[0], &p("staging-a"), &p("pods/t2"))
            },
            Code::FailedPrecondition,
            "SINGLE_NODE_SINGLE_WRITER",
        ),
        // The same target with another volume.
        (
            publish(&ids[1], &p("staging-b"), &p("pods/t1")),
            Code::AlreadyExists,
            "pods/t1",
        ),
    ];
    for (req, code, text) in publish_cases {
        let err = c.node.node_publish_volume(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
        assert!(err.message().contains(text), "{req:?}: {}", err.message());
    }
    assert_eq!(
        h.mounter.mounts(),
        before,
        "a refused publish changed the mounts"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    assert!(!root.join("pods/x").exists() && !root.join("pods/t2").exists());
    // The same publication again is fine.
    c.node
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_capability: Some(sn_sw()),
            ..publish(&ids[0], &p("staging-a"), &p("pods/t1"))
        })
        .await
        .unwrap();

    // Re-staging with another capability.
    let mut ro = mount_cap();
    ro.access_mode = Some(csi::volume_capability::AccessMode {
        mode: csi::volume_capability::access_mode::Mode::SingleNodeReaderOnly as i32,
    });
    let mut xfs = mount_cap();
    if let Some(csi::volume_capability::AccessType::Mount(m)) = &mut xfs.access_type {
        m.fs_type = "xfs".into();
    }
    let mut flagged = mount_cap();
    if let Some(csi::volume_capability::AccessType::Mount(m)) = &mut flagged.access_type {
        m.mount_flags = vec!["noatime".into()];
    }
    let stage =
        |id: &str, staging: &str, cap: Option<csi::VolumeCapability>| csi::NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.into(),
            volume_capability: cap,
            ..Default::default()
        };
    let stage_cases = vec![
        (
            stage(&foreign, "", Some(mount_cap())),
            Code::InvalidArgument,
            "staging_target_path",
        ),
        (
            stage(&foreign, &p("s"), None),
            Code::InvalidArgument,
            "volume_capability",
        ),
        (
            stage(&foreign, &p("s"), Some(mount_cap())),
            Code::NotFound,
            "foreign-id-1",
        ),
        (
            stage(&ids[0], &p("pods/escape"), Some(mount_cap())),
            Code::InvalidArgument,
            "symbolic link",
        ),
        (
            stage(&ids[0], "/mnt/outside", Some(mount_cap())),
            Code::InvalidArgument,
            "kubelet directory",
        ),
        (
            stage(&ids[0], &p("staging-a"), Some(ro)),
            Code::AlreadyExists,
            "another capability",
        ),
        (
            stage(&ids[0], &p("staging-a"), Some(xfs)),
            Code::AlreadyExists,
            "another capability",
        ),
        (
            stage(&ids[0], &p("staging-a"), Some(flagged)),
            Code::AlreadyExists,
            "noatime",
        ),
        (
            stage(&ids[0], &p("staging-a"), Some(block_cap())),
            Code::AlreadyExists,
            "block",
        ),
        (
            stage(&ids[0], &p("staging-b"), Some(mount_cap())),
            Code::AlreadyExists,
            "staging-b",
        ),
    ];
    let before = h.mounter.mounts();
    for (req, code, text) in stage_cases {
        let err = c.node.node_stage_volume(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
        assert!(err.message().contains(text), "{req:?}: {}", err.message());
    }
    assert_eq!(
        h.mounter.mounts(),
        before,
        "a refused stage changed the mounts"
    );

    // Stats answer only for the volume's own mounts.
    let stats = |id: &str, path: &str| csi::NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        staging_target_path: String::new(),
    };
    let stats_cases = vec![
        (stats(&foreign, ""), Code::InvalidArgument, "volume_path"),
        (
            stats(&foreign, &p("pods/t1")),
            Code::NotFound,
            "foreign-id-1",
        ),
        (stats(&ids[0], "some/path"), Code::NotFound, "not a mount"),
        (stats(&ids[0], "/"), Code::NotFound, "not a mount"),
        (stats(&ids[0], &p("pods")), Code::NotFound, "not a mount"),
        (
            stats(&ids[0], &p("staging-b")),
            Code::NotFound,
            "not a mount",
        ),
        (stats(&ids[1], &p("pods/t1")), Code::NotFound, "not a mount"),
    ];
    for (req, code, text) in stats_cases {
        let err = c.node.node_get_volume_stats(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
        assert!(err.message().contains(text), "{req:?}: {}", err.message());
    }
    let ok = c
        .node
        .node_get_volume_stats(stats(&ids[0], &p("pods/t1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.usage.len(), 2);

    // Expand only grows the volume's own mount.
    let err = c
        .node
        .node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: ids[1].clone(),
            volume_path: p("staging-a"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Unpublish and unstage leave what is not the volume's.
    let before = h.mounter.mounts();
    let err = c
        .node
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: ids[1].clone(),
            target_path: p("pods/t1"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = c
        .node
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: ids[1].clone(),
            staging_target_path: p("staging-a"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    c.node
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: ids[0].clone(),
            target_path: p("pods/precious"),
        })
        .await
        .unwrap();
    assert_eq!(std::fs::read(root.join("pods/precious")).unwrap(), b"keep");
    let err = c
        .node
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: ids[0].clone(),
            target_path: "/etc/passwd".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(h.mounter.mounts(), before);

    // Inline volumes: a kubelet ID shaped like this driver's IDs, or a
    // target where something is mounted, create nothing.
    let inline = |id: &str, target: &str| csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.into(),
        volume_capability: Some(mount_cap()),
        volume_context: params(&[
            ("csi.storage.k8s.io/ephemeral", "true"),
            ("type", "local"),
            ("device", "/dev/fake-inline"),
        ]),
        ..Default::default()
    };
    let volumes = h.fake("local").volume_count();
    for (req, code, text) in [
        (
            inline(&ids[0], &p("pods/i1")),
            Code::InvalidArgument,
            "csi-<hash>",
        ),
        (
            inline("csi-0123abcd", &p("pods/t1")),
            Code::AlreadyExists,
            "not stacked",
        ),
    ] {
        let err = c.node.node_publish_volume(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
        assert!(err.message().contains(text), "{req:?}: {}", err.message());
    }
    assert_eq!(h.fake("local").volume_count(), volumes);
    assert_eq!(h.mounter.mounts(), before);
    h.stop().await;
}

/// GetCapacity without `type` answers for everything this process serves;
/// with `type` for that instance only.
#[tokio::test]
async fn capacity_without_type_spans_the_served_instances() {
    let sized = |capacity_bytes, max_volume_bytes| FakeSettings {
        capacity_bytes,
        max_volume_bytes,
        ..FakeSettings::default()
    };
    let h = start(
        Mode::Controller,
        &[
            ("one", sized(10 * GIB, 4 * GIB)),
            ("two", sized(6 * GIB, 0)),
        ],
    )
    .await;
    let mut c = h.client.controller.clone();
    let all = c
        .get_capacity(csi::GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.available_capacity, 16 * GIB, "{all:?}");
    assert_eq!(all.maximum_volume_size, Some(4 * GIB), "{all:?}");
    let one = c
        .get_capacity(csi::GetCapacityRequest {
            parameters: params(&[("type", "two")]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.available_capacity, 6 * GIB, "{one:?}");
    let err = c
        .get_capacity(csi::GetCapacityRequest {
            parameters: params(&[("type", "three")]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    h.stop().await;
}
