//! Provider behaviour on the stateful fake lvm (`lvm::fake`).

use std::collections::BTreeMap;
use std::path::Path;

use omnidisk_provider_api::types::{Capability, GIB};

use super::*;
use crate::lvm::fake::FakeLvm;

const MIB: u64 = 1 << 20;
const NODE: &str = "node-a";

fn init(settings: &str) -> InitRequest {
    InitRequest {
        instance: "lvm".into(),
        settings_toml: settings.into(),
        node_name: NODE.into(),
        mode: "all".into(),
    }
}

fn provider_with(fake: &FakeLvm, settings: &str) -> LvmProvider {
    let init = init(settings);
    let validated = Settings::from_toml(settings).unwrap();
    LvmProvider::new(&init, validated, Arc::new(fake.clone()))
}

fn thick(vg_bytes: u64) -> (FakeLvm, LvmProvider) {
    let fake = FakeLvm::new("omnidisk", vg_bytes);
    let p = provider_with(&fake, "");
    (fake, p)
}

fn thin(pool_bytes: u64, ratio: f64, data_percent: &str) -> (FakeLvm, LvmProvider) {
    let fake = FakeLvm::new("omnidisk", 100 * GIB as u64);
    fake.add_thin_pool("pool0", pool_bytes, data_percent);
    let p = provider_with(
        &fake,
        &format!("[thin_pool]\nname = \"pool0\"\noverprovision_ratio = {ratio:?}\n"),
    );
    (fake, p)
}

fn with_devices(fake: FakeLvm, dir: &Path, settings: &str) -> (FakeLvm, LvmProvider) {
    let fake = fake.with_device_root(dir.to_owned());
    let settings = format!(
        "device_root = {:?}\ndevice_wait_seconds = 1\n{settings}",
        dir
    );
    let p = provider_with(&fake, &settings);
    (fake, p)
}

fn create_req(name: &str, bytes: u64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        required_bytes: bytes as i64,
        ..Default::default()
    }
}

fn from_snapshot(name: &str, bytes: u64, snap: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        source: Some(create_volume_request::Source::SourceSnapshotId(snap.into())),
        ..create_req(name, bytes)
    }
}

fn from_volume(name: &str, bytes: u64, vol: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        source: Some(create_volume_request::Source::SourceVolumeId(vol.into())),
        ..create_req(name, bytes)
    }
}

fn snap_req(name: &str, source: &str) -> CreateSnapshotRequest {
    CreateSnapshotRequest {
        name: name.into(),
        source_volume_id: source.into(),
        parameters: BTreeMap::new(),
    }
}

fn vref(id: &str) -> VolumeRef {
    VolumeRef {
        volume_id: id.into(),
    }
}

fn tag_args(call: &[String]) -> Vec<String> {
    call.windows(2)
        .filter(|w| w[0] == "--addtag")
        .map(|w| w[1].clone())
        .collect()
}

#[test]
fn info_describes_a_node_local_provider() {
    let (_, p) = thick(GIB as u64);
    let info = p.info();
    assert_eq!(info.kind, "local-lvm");
    assert!(info.node_local && !info.attach_required);
    assert!(info.snapshots && info.clone && info.expand && info.list_volumes);
    assert!(info.capacity && info.block && info.ephemeral);
    assert!(!info.modify);
    let modes: Vec<i32> = info.access_modes.clone();
    assert!(modes.contains(&(AccessMode::SingleNodeWriter as i32)));
    assert!(!modes.contains(&(AccessMode::MultiNodeMultiWriter as i32)));
    assert!(!modes.contains(&(AccessMode::MultiNodeReaderOnly as i32)));
}

#[tokio::test]
async fn node_info_reports_the_node_topology() {
    let (_, p) = thick(GIB as u64);
    let info = p.node_info().await.unwrap();
    assert_eq!(info.node_id, NODE);
    assert_eq!(info.max_volumes, 0);
    assert_eq!(
        info.topology
            .unwrap()
            .segments
            .get(TOPOLOGY_KEY)
            .map(String::as_str),
        Some(NODE)
    );
}

#[tokio::test]
async fn thick_create_rounds_to_extents_and_tags_the_lv() {
    let (fake, p) = thick(GIB as u64);
    let vol = p
        .create_volume(create_req("pvc-1", 5 * MIB + 1))
        .await
        .unwrap();
    assert_eq!(vol.id, "odv-pvc-1");
    assert_eq!(vol.capacity_bytes, 8 * MIB as i64);
    assert_eq!(
        vol.accessible_topology[0]
            .segments
            .get(TOPOLOGY_KEY)
            .map(String::as_str),
        Some(NODE)
    );
    let creates = fake.calls_of("lvcreate");
    assert_eq!(creates.len(), 1);
    assert_eq!(
        creates[0],
        [
            "lvcreate",
            "--name",
            "odv-pvc-1",
            "--size",
            "8388608b",
            "--wipesignatures",
            "y",
            "--zero",
            "y",
            "--yes",
            "--addtag",
            "omnidisk.csi.dev/managed",
            "--addtag",
            "omnidisk.csi.dev/instance=lvm",
            "--addtag",
            "omnidisk.csi.dev/name=cHZjLTE",
            "omnidisk",
        ]
    );
    // Reports are always requested as JSON in bytes.
    let lvs = &fake.calls_of("lvs")[0];
    for arg in ["--reportformat", "json", "--units", "b", "--nosuffix"] {
        assert!(lvs.contains(&arg.to_owned()), "{lvs:?}");
    }
}

#[tokio::test]
async fn create_without_size_uses_the_default_or_the_limit() {
    let (_, p) = thick(4 * GIB as u64);
    let vol = p.create_volume(create_req("a", 0)).await.unwrap();
    assert_eq!(vol.capacity_bytes, GIB);
    let req = CreateVolumeRequest {
        limit_bytes: 100 * MIB as i64,
        ..create_req("b", 0)
    };
    assert_eq!(
        p.create_volume(req).await.unwrap().capacity_bytes,
        100 * MIB as i64
    );
    // 10 MiB rounds up to 12 MiB, beyond a 10 MiB + 1 limit.
    let req = CreateVolumeRequest {
        limit_bytes: 10 * MIB as i64 + 1,
        ..create_req("c", 10 * MIB - 1)
    };
    let err = p.create_volume(req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange, "{}", err.message());
}

#[tokio::test]
async fn create_is_idempotent_by_name() {
    let (fake, p) = thick(GIB as u64);
    let first = p
        .create_volume(create_req("pvc-1", 10 * MIB))
        .await
        .unwrap();
    let second = p
        .create_volume(create_req("pvc-1", 10 * MIB))
        .await
        .unwrap();
    assert_eq!(first, second);
    // A smaller request is satisfied by the existing volume too.
    let third = p.create_volume(create_req("pvc-1", MIB)).await.unwrap();
    assert_eq!(third, first);
    assert_eq!(fake.calls_of("lvcreate").len(), 1);
}

#[tokio::test]
async fn incompatible_recreate_is_already_exists() {
    let (fake, p) = thick(GIB as u64);
    p.create_volume(create_req("pvc-1", 10 * MIB))
        .await
        .unwrap();
    let err = p
        .create_volume(create_req("pvc-1", 100 * MIB))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    let req = CreateVolumeRequest {
        limit_bytes: 4 * MIB as i64,
        ..create_req("pvc-1", MIB)
    };
    assert_eq!(
        p.create_volume(req).await.unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    let err = p
        .create_volume(from_volume("pvc-1", 10 * MIB, "odv-other"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{}", err.message());
    // An LV of our naming scheme that omnidisk did not make is not reused.
    fake.add_foreign("odv-pvc-2", 8 * MIB);
    let err = p.create_volume(create_req("pvc-2", MIB)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(
        err.message().contains("not created by omnidisk"),
        "{}",
        err.message()
    );
    assert_eq!(fake.calls_of("lvcreate").len(), 1);
}

#[tokio::test]
async fn hashed_names_are_checked_against_the_name_tag() {
    let (fake, p) = thick(GIB as u64);
    let vol = p
        .create_volume(create_req("odd name", 4 * MIB))
        .await
        .unwrap();
    assert!(vol.id.starts_with("odvh-"), "{}", vol.id);
    // Pretend a different CSI name hashed to the same LV name.
    fake.edit(&vol.id, |lv| {
        lv.tags.retain(|t| !t.starts_with("omnidisk.csi.dev/name="));
        lv.tags.push("omnidisk.csi.dev/name=b3RoZXI".into());
    });
    let err = p
        .create_volume(create_req("odd name", 4 * MIB))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(err.message().contains("\"other\""), "{}", err.message());
}

#[tokio::test]
async fn bad_requests_are_invalid_arguments() {
    let (fake, p) = thick(GIB as u64);
    let err = p.create_volume(create_req("", MIB)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let mut req = create_req("a", MIB);
    req.parameters.insert("thin".into(), "true".into());
    let err = p.create_volume(req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("`thin`"), "{}", err.message());
    let mut req = create_req("a", MIB);
    req.parameters
        .insert("csi.storage.k8s.io/pvc/name".into(), "x".into());
    req.capabilities.push(Capability {
        access_type: AccessType::Mount as i32,
        access_mode: AccessMode::MultiNodeMultiWriter as i32,
        fs_type: String::new(),
    });
    let err = p.create_volume(req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(
        err.message().contains("MULTI_NODE_MULTI_WRITER"),
        "{}",
        err.message()
    );
    assert!(fake.calls_of("lvcreate").is_empty());
}

#[tokio::test]
async fn requisite_topology_must_include_this_node() {
    let (fake, p) = thick(GIB as u64);
    let elsewhere = Topology::from_pairs([(TOPOLOGY_KEY, "node-b")]);
    let here_with_zone =
        Topology::from_pairs([(TOPOLOGY_KEY, NODE), ("topology.kubernetes.io/zone", "z1")]);
    let mut req = create_req("a", MIB);
    req.requisite = vec![elsewhere.clone()];
    let err = p.create_volume(req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    assert!(err.message().contains(NODE), "{}", err.message());
    assert!(fake.calls().is_empty());
    let mut req = create_req("a", MIB);
    req.requisite = vec![elsewhere, here_with_zone];
    p.create_volume(req).await.unwrap();
}

#[tokio::test]
async fn thin_create_uses_the_pool() {
    let (fake, p) = thin(GIB as u64, 1.0, "0.00");
    let vol = p.create_volume(create_req("pvc-t", 3 * MIB)).await.unwrap();
    assert_eq!(vol.capacity_bytes, 4 * MIB as i64);
    let create = &fake.calls_of("lvcreate")[0];
    assert_eq!(
        create[..9],
        [
            "lvcreate",
            "--name",
            "odv-pvc-t",
            "--type",
            "thin",
            "--virtualsize",
            "4194304b",
            "--thinpool",
            "pool0"
        ]
    );
    assert!(!create.contains(&"--wipesignatures".to_owned()));
    assert_eq!(create.last().map(String::as_str), Some("omnidisk"));
}

#[tokio::test]
async fn thin_pool_missing_is_failed_precondition() {
    let fake = FakeLvm::new("omnidisk", GIB as u64);
    let p = provider_with(&fake, "[thin_pool]\nname = \"nopool\"\n");
    let err = p.create_volume(create_req("a", MIB)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    let err = p
        .get_capacity(CapacityRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
}

#[tokio::test]
async fn thick_capacity_is_vg_free_minus_spare() {
    let fake = FakeLvm::new("omnidisk", 20 * GIB as u64);
    let p = provider_with(&fake, "spare_gib = 2");
    let cap = p.get_capacity(CapacityRequest::default()).await.unwrap();
    assert_eq!(cap.available_bytes, 18 * GIB);
    assert_eq!(cap.maximum_volume_size, 18 * GIB);
    p.create_volume(create_req("a", 3 * GIB as u64))
        .await
        .unwrap();
    let cap = p.get_capacity(CapacityRequest::default()).await.unwrap();
    assert_eq!(cap.available_bytes, 15 * GIB);
    // The spare is enforced on create too.
    let err = p
        .create_volume(create_req("b", 16 * GIB as u64))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    p.create_volume(create_req("b", 15 * GIB as u64))
        .await
        .unwrap();
    // Another node's topology has no capacity here.
    let req = CapacityRequest {
        topology: Some(Topology::from_pairs([(TOPOLOGY_KEY, "node-b")])),
        ..Default::default()
    };
    assert_eq!(p.get_capacity(req).await.unwrap().available_bytes, 0);
}

#[tokio::test]
async fn thin_capacity_is_overprovisioned_pool_minus_virtual_use() {
    // 10 GiB pool, ratio 3: 30 GiB may be promised.
    let (fake, p) = thin(10 * GIB as u64, 3.0, "10.00");
    let cap = p.get_capacity(CapacityRequest::default()).await.unwrap();
    assert_eq!(
        cap.available_bytes,
        27 * GIB,
        "limited by free data (9 GiB) x 3"
    );
    p.create_volume(create_req("a", 8 * GIB as u64))
        .await
        .unwrap();
    // Virtual use now counts: 30 - 8 = 22 < 27.
    let cap = p.get_capacity(CapacityRequest::default()).await.unwrap();
    assert_eq!(cap.available_bytes, 22 * GIB);
    // Foreign thin LVs in the pool count as well.
    fake.add_foreign("x", 0);
    fake.edit("x", |lv| {
        lv.segtype = "thin".into();
        lv.pool = "pool0".into();
        lv.size = 2 * GIB as u64;
    });
    let cap = p.get_capacity(CapacityRequest::default()).await.unwrap();
    assert_eq!(cap.available_bytes, 20 * GIB);
    let err = p
        .create_volume(create_req("b", 21 * GIB as u64))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    // A nearly full pool stops taking volumes whatever the promises.
    fake.edit("pool0", |lv| lv.data_percent = "99.00".into());
    let cap = p.get_capacity(CapacityRequest::default()).await.unwrap();
    assert_eq!(cap.available_bytes as u64, (10 * GIB as u64 / 100) * 3);
}

#[test]
fn thin_headroom_never_goes_negative_and_honours_the_spare() {
    let lvs = crate::lvm::report::parse_lvs(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/handwritten_lvs_thin.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let pool = lvs.iter().find(|lv| lv.name == "pool0").unwrap();
    // Pool 1 GiB, 25% used; thin LVs: 512 + 512 + 256 MiB = 1.25 GiB virtual.
    assert_eq!(thin_headroom(&lvs, pool, 1.0, 0), 0);
    // Ratio 2: 2 GiB promised - 1.25 GiB = 0.75 GiB; free data 0.75 GiB x 2 is larger.
    assert_eq!(thin_headroom(&lvs, pool, 2.0, 0), 3 * GIB as u64 / 4);
    assert_eq!(
        thin_headroom(&lvs, pool, 2.0, 100 * MIB),
        3 * GIB as u64 / 4 - 100 * MIB
    );
    // Ratio 10: 10 - 1.25 GiB promised headroom, but free data 0.75 GiB x 10 caps it.
    assert_eq!(thin_headroom(&lvs, pool, 10.0, 0), 75 * GIB as u64 / 10);
}

#[tokio::test]
async fn lvm_insufficient_space_is_resource_exhausted() {
    let (fake, p) = thick(GIB as u64);
    fake.fail_next(
        "lvcreate",
        "  Volume group \"omnidisk\" has insufficient free space (1 extents): 2 required.",
    );
    let err = p.create_volume(create_req("a", MIB)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    assert!(
        err.full_message().contains("insufficient free space"),
        "{}",
        err.full_message()
    );
}

#[tokio::test]
async fn missing_vg_is_failed_precondition() {
    let fake = FakeLvm::new("other", GIB as u64);
    let p = provider_with(&fake, "");
    let err = p.create_volume(create_req("a", MIB)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(
        err.full_message().contains("omnidisk"),
        "{}",
        err.full_message()
    );
}

#[tokio::test]
async fn list_pages_through_our_volumes_only() {
    let (fake, p) = thick(GIB as u64);
    for i in 0..5 {
        p.create_volume(create_req(&format!("pvc-{i}"), MIB))
            .await
            .unwrap();
    }
    fake.add_foreign("not-ours", MIB);
    p.create_snapshot(snap_req("snap-0", "odv-pvc-0"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let resp = p
            .list_volumes(ListRequest {
                max_entries: 2,
                starting_token: token.clone(),
            })
            .await
            .unwrap();
        assert!(resp.entries.len() <= 2);
        seen.extend(resp.entries.iter().map(|e| e.volume.clone().unwrap().id));
        pages += 1;
        if resp.next_token.is_empty() {
            break;
        }
        token = resp.next_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        [
            "odv-pvc-0",
            "odv-pvc-1",
            "odv-pvc-2",
            "odv-pvc-3",
            "odv-pvc-4"
        ]
    );
    let all = p.list_volumes(ListRequest::default()).await.unwrap();
    assert_eq!(all.entries.len(), 5);
    assert!(all.next_token.is_empty());
    let err = p
        .list_volumes(ListRequest {
            max_entries: 1,
            starting_token: "garbage!".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Aborted);
}

#[tokio::test]
async fn a_page_token_survives_deletion_of_its_entry() {
    let (_, p) = thick(GIB as u64);
    for i in 0..4 {
        p.create_volume(create_req(&format!("pvc-{i}"), MIB))
            .await
            .unwrap();
    }
    let first = p
        .list_volumes(ListRequest {
            max_entries: 2,
            starting_token: String::new(),
        })
        .await
        .unwrap();
    p.delete_volume(vref("odv-pvc-1")).await.unwrap();
    let second = p
        .list_volumes(ListRequest {
            max_entries: 2,
            starting_token: first.next_token,
        })
        .await
        .unwrap();
    let ids: Vec<String> = second
        .entries
        .iter()
        .map(|e| e.volume.clone().unwrap().id)
        .collect();
    assert_eq!(ids, ["odv-pvc-2", "odv-pvc-3"]);
}

#[tokio::test]
async fn get_and_delete_volume() {
    let (fake, p) = thick(GIB as u64);
    p.create_volume(create_req("pvc-1", MIB)).await.unwrap();
    let status = p.get_volume(vref("odv-pvc-1")).await.unwrap();
    assert!(!status.abnormal, "{}", status.condition_message);
    assert_eq!(status.volume.unwrap().capacity_bytes, 4 * MIB as i64);
    p.delete_volume(vref("odv-pvc-1")).await.unwrap();
    assert!(fake.lv("odv-pvc-1").is_none());
    assert_eq!(
        fake.calls_of("lvremove").last().unwrap(),
        &["lvremove", "--yes", "omnidisk/odv-pvc-1"]
    );
    // Absent, foreign-looking and malformed IDs are deleted already.
    p.delete_volume(vref("odv-pvc-1")).await.unwrap();
    p.delete_volume(vref("vol-123")).await.unwrap();
    p.delete_volume(vref("odv-../../x")).await.unwrap();
    assert_eq!(fake.calls_of("lvremove").len(), 1);
    let err = p.get_volume(vref("odv-pvc-1")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    // An LV with our prefix but without our tags is neither shown nor removed.
    fake.add_foreign("odv-imposter", MIB);
    assert_eq!(
        p.get_volume(vref("odv-imposter")).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let err = p.delete_volume(vref("odv-imposter")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(fake.lv("odv-imposter").is_some());
}

#[tokio::test]
async fn a_delete_racing_another_delete_succeeds() {
    let (fake, p) = thick(GIB as u64);
    p.create_volume(create_req("pvc-1", MIB)).await.unwrap();
    fake.fail_next(
        "lvremove",
        "  Failed to find logical volume \"omnidisk/odv-pvc-1\"",
    );
    p.delete_volume(vref("odv-pvc-1")).await.unwrap();
    fake.fail_next("lvremove", "  Logical volume omnidisk/odv-pvc-1 in use.");
    let err = p.delete_volume(vref("odv-pvc-1")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
}

#[tokio::test]
async fn expand_grows_to_whole_extents() {
    let (fake, p) = thick(GIB as u64);
    p.create_volume(create_req("pvc-1", 4 * MIB)).await.unwrap();
    let resp = p
        .expand_volume(ExpandVolumeRequest {
            volume_id: "odv-pvc-1".into(),
            required_bytes: 9 * MIB as i64,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(resp.capacity_bytes, 12 * MIB as i64);
    assert!(resp.node_expansion_required);
    assert_eq!(
        fake.calls_of("lvextend")[0],
        ["lvextend", "--size", "12582912b", "omnidisk/odv-pvc-1"]
    );
    // Already large enough: no lvm call.
    let resp = p
        .expand_volume(ExpandVolumeRequest {
            volume_id: "odv-pvc-1".into(),
            required_bytes: 5 * MIB as i64,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(resp.capacity_bytes, 12 * MIB as i64);
    assert_eq!(fake.calls_of("lvextend").len(), 1);
    // Raw block volumes need no filesystem growth.
    let resp = p
        .expand_volume(ExpandVolumeRequest {
            volume_id: "odv-pvc-1".into(),
            required_bytes: 16 * MIB as i64,
            capability: Some(Capability {
                access_type: AccessType::Block as i32,
                access_mode: AccessMode::SingleNodeWriter as i32,
                fs_type: String::new(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!resp.node_expansion_required);
    let err = p
        .expand_volume(ExpandVolumeRequest {
            volume_id: "odv-pvc-1".into(),
            required_bytes: 2 * GIB,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    let err = p
        .expand_volume(ExpandVolumeRequest {
            volume_id: "odv-missing".into(),
            required_bytes: GIB,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn thick_snapshots_are_classic_and_block_growth_and_deletion() {
    let (fake, p) = thick(GIB as u64);
    p.create_volume(create_req("pvc-1", 40 * MIB))
        .await
        .unwrap();
    let snap = p
        .create_snapshot(snap_req("snap-1", "odv-pvc-1"))
        .await
        .unwrap();
    assert_eq!(snap.id, "ods-snap-1");
    assert_eq!(snap.source_volume_id, "odv-pvc-1");
    assert_eq!(snap.size_bytes, 40 * MIB as i64);
    assert!(snap.ready_to_use);
    assert!(snap.creation_time_seconds > 1_700_000_000);
    let create = fake.calls_of("lvcreate").pop().unwrap();
    assert_eq!(
        create[..7],
        [
            "lvcreate",
            "--name",
            "ods-snap-1",
            "--snapshot",
            "--size",
            "41943040b",
            "--addtag"
        ]
    );
    assert_eq!(
        create.last().map(String::as_str),
        Some("omnidisk/odv-pvc-1")
    );
    assert!(tag_args(&create).contains(&"omnidisk.csi.dev/source=odv-pvc-1".to_owned()));

    let err = p
        .expand_volume(ExpandVolumeRequest {
            volume_id: "odv-pvc-1".into(),
            required_bytes: 80 * MIB as i64,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(err.message().contains("snapshots"), "{}", err.message());
    let err = p.delete_volume(vref("odv-pvc-1")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(err.message().contains("ods-snap-1"), "{}", err.message());
    assert!(fake.calls_of("lvremove").is_empty());

    p.delete_snapshot(SnapshotRef {
        snapshot_id: "ods-snap-1".into(),
    })
    .await
    .unwrap();
    p.delete_volume(vref("odv-pvc-1")).await.unwrap();
}

#[tokio::test]
async fn snapshot_create_is_idempotent_and_checks_the_source() {
    let (fake, p) = thin(GIB as u64, 1.0, "0.00");
    p.create_volume(create_req("pvc-1", 8 * MIB)).await.unwrap();
    p.create_volume(create_req("pvc-2", 8 * MIB)).await.unwrap();
    let a = p.create_snapshot(snap_req("s", "odv-pvc-1")).await.unwrap();
    let b = p.create_snapshot(snap_req("s", "odv-pvc-1")).await.unwrap();
    assert_eq!(a, b);
    let err = p
        .create_snapshot(snap_req("s", "odv-pvc-2"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    let err = p
        .create_snapshot(snap_req("t", "odv-nope"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = p.create_snapshot(snap_req("t", "ods-s")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let snaps: Vec<Vec<String>> = fake
        .calls_of("lvcreate")
        .into_iter()
        .filter(|c| c.contains(&"--snapshot".to_owned()))
        .collect();
    assert_eq!(snaps.len(), 1);
    assert_eq!(
        snaps[0][..6],
        [
            "lvcreate",
            "--name",
            "ods-s",
            "--snapshot",
            "--setactivationskip",
            "y"
        ]
    );
    assert!(!snaps[0].contains(&"--size".to_owned()));
}

#[tokio::test]
async fn thin_restore_and_clone_are_thin_snapshots_grown_as_asked() {
    let (fake, p) = thin(GIB as u64, 1.0, "0.00");
    p.create_volume(create_req("pvc-1", 8 * MIB)).await.unwrap();
    p.create_snapshot(snap_req("s1", "odv-pvc-1"))
        .await
        .unwrap();

    let restored = p
        .create_volume(from_snapshot("pvc-r", 20 * MIB, "ods-s1"))
        .await
        .unwrap();
    assert_eq!(restored.capacity_bytes, 20 * MIB as i64);
    assert_eq!(
        restored.source,
        Some(volume::Source::SourceSnapshotId("ods-s1".into()))
    );
    let create = fake.calls_of("lvcreate").pop().unwrap();
    assert_eq!(
        create[..6],
        [
            "lvcreate",
            "--name",
            "odv-pvc-r",
            "--snapshot",
            "--setactivationskip",
            "n"
        ]
    );
    assert_eq!(create.last().map(String::as_str), Some("omnidisk/ods-s1"));
    assert!(tag_args(&create).contains(&"omnidisk.csi.dev/pending".to_owned()));
    assert_eq!(
        fake.calls_of("lvextend").pop().unwrap(),
        ["lvextend", "--size", "20971520b", "omnidisk/odv-pvc-r"]
    );
    let lv = fake.lv("odv-pvc-r").unwrap();
    assert!(
        !lv.tags.contains(&"omnidisk.csi.dev/pending".to_owned()),
        "{:?}",
        lv.tags
    );
    assert_eq!(lv.attr[4], 'a', "restored volumes are active");
    // No block copy for thin sources.
    assert!(
        fake.calls_of("lvchange")
            .iter()
            .all(|c| !c.contains(&"--activate".to_owned()))
    );

    let clone = p
        .create_volume(from_volume("pvc-c", 0, "odv-pvc-1"))
        .await
        .unwrap();
    assert_eq!(clone.capacity_bytes, 8 * MIB as i64);
    assert_eq!(
        clone.source,
        Some(volume::Source::SourceVolumeId("odv-pvc-1".into()))
    );
    assert_eq!(
        fake.calls_of("lvextend").len(),
        1,
        "same size needs no growth"
    );
    // Retrying the restore returns the same volume.
    let again = p
        .create_volume(from_snapshot("pvc-r", 20 * MIB, "ods-s1"))
        .await
        .unwrap();
    assert_eq!(again, restored);
    let err = p
        .create_volume(from_snapshot("pvc-x", 0, "ods-missing"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = p
        .create_volume(CreateVolumeRequest {
            limit_bytes: 4 * MIB as i64,
            ..from_snapshot("pvc-y", 0, "ods-s1")
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange);
}

#[tokio::test]
async fn thick_restore_copies_the_snapshot_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, p) = with_devices(FakeLvm::new("omnidisk", GIB as u64), dir.path(), "");
    p.create_volume(create_req("pvc-1", 8 * MIB)).await.unwrap();
    p.create_snapshot(snap_req("s1", "odv-pvc-1"))
        .await
        .unwrap();
    let snap_dev = dir.path().join("omnidisk/ods-s1");
    let pattern: Vec<u8> = (0..8 * MIB).map(|i| (i % 253) as u8).collect();
    std::fs::write(&snap_dev, &pattern).unwrap();

    let vol = p
        .create_volume(from_snapshot("pvc-r", 12 * MIB, "ods-s1"))
        .await
        .unwrap();
    assert_eq!(vol.capacity_bytes, 12 * MIB as i64);
    let create = fake.calls_of("lvcreate").pop().unwrap();
    assert_eq!(
        create[..5],
        ["lvcreate", "--name", "odv-pvc-r", "--size", "12582912b"]
    );
    assert_eq!(create.last().map(String::as_str), Some("omnidisk"));
    let copied = std::fs::read(dir.path().join("omnidisk/odv-pvc-r")).unwrap();
    assert_eq!(copied.len() as u64, 12 * MIB);
    assert_eq!(&copied[..8 * MIB as usize], &pattern[..]);
    let lv = fake.lv("odv-pvc-r").unwrap();
    assert!(
        !lv.tags.iter().any(|t| t.ends_with("pending")),
        "{:?}",
        lv.tags
    );
    assert!(
        lv.tags
            .contains(&"omnidisk.csi.dev/source=ods-s1".to_owned()),
        "{:?}",
        lv.tags
    );
}

#[tokio::test]
async fn an_interrupted_thick_clone_is_finished_by_the_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, p) = with_devices(FakeLvm::new("omnidisk", GIB as u64), dir.path(), "");
    p.create_volume(create_req("src", 4 * MIB)).await.unwrap();
    std::fs::write(
        dir.path().join("omnidisk/odv-src"),
        vec![7u8; 4 * MIB as usize],
    )
    .unwrap();
    fake.fail_next("lvchange", "  Can't get lock for omnidisk");
    let err = p
        .create_volume(from_volume("dst", 0, "odv-src"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Aborted, "{}", err.full_message());
    let lv = fake.lv("odv-dst").unwrap();
    assert!(lv.tags.contains(&"omnidisk.csi.dev/pending".to_owned()));
    let status = p.get_volume(vref("odv-dst")).await.unwrap();
    assert!(status.abnormal);
    assert!(
        status.condition_message.contains("not finished"),
        "{}",
        status.condition_message
    );

    let vol = p
        .create_volume(from_volume("dst", 0, "odv-src"))
        .await
        .unwrap();
    assert_eq!(vol.capacity_bytes, 4 * MIB as i64);
    let data = std::fs::read(dir.path().join("omnidisk/odv-dst")).unwrap();
    assert!(data.iter().all(|b| *b == 7));
    assert!(
        !fake
            .lv("odv-dst")
            .unwrap()
            .tags
            .iter()
            .any(|t| t.ends_with("pending"))
    );
    assert!(!p.get_volume(vref("odv-dst")).await.unwrap().abnormal);
}

#[tokio::test]
async fn list_and_get_snapshots() {
    let (_, p) = thin(GIB as u64, 1.0, "0.00");
    p.create_volume(create_req("v1", MIB)).await.unwrap();
    p.create_volume(create_req("v2", MIB)).await.unwrap();
    for (s, v) in [("a", "odv-v1"), ("b", "odv-v1"), ("c", "odv-v2")] {
        p.create_snapshot(snap_req(s, v)).await.unwrap();
    }
    // Deleting an origin keeps its thin snapshots and their source.
    p.delete_volume(vref("odv-v2")).await.unwrap();
    let all = p
        .list_snapshots(ListSnapshotsRequest::default())
        .await
        .unwrap();
    let ids: Vec<&str> = all.entries.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["ods-a", "ods-b", "ods-c"]);
    assert_eq!(all.entries[2].source_volume_id, "odv-v2");
    let by_source = p
        .list_snapshots(ListSnapshotsRequest {
            source_volume_id: "odv-v1".into(),
            max_entries: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_source.entries.len(), 1);
    assert_eq!(by_source.entries[0].id, "ods-a");
    let next = p
        .list_snapshots(ListSnapshotsRequest {
            source_volume_id: "odv-v1".into(),
            max_entries: 1,
            starting_token: by_source.next_token,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(next.entries[0].id, "ods-b");
    assert!(next.next_token.is_empty());
    let one = p
        .list_snapshots(ListSnapshotsRequest {
            snapshot_id: "ods-nope".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(one.entries.is_empty());
    let got = p
        .get_snapshot(SnapshotRef {
            snapshot_id: "ods-c".into(),
        })
        .await
        .unwrap();
    assert_eq!(got.size_bytes, 4 * MIB as i64);
    let err = p
        .get_snapshot(SnapshotRef {
            snapshot_id: "odv-v1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    // No volume listing shows snapshots.
    let vols = p.list_volumes(ListRequest::default()).await.unwrap();
    assert_eq!(vols.entries.len(), 1);
}

#[tokio::test]
async fn find_device_activates_and_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, p) = with_devices(
        FakeLvm::new("omnidisk", 100 * GIB as u64),
        dir.path(),
        "[thin_pool]\nname = \"pool0\"\n",
    );
    fake.add_thin_pool("pool0", GIB as u64, "0.00");
    p.create_volume(create_req("v", MIB)).await.unwrap();
    fake.edit("odv-v", |lv| lv.attr[4] = '-');
    let _ = std::fs::remove_file(dir.path().join("omnidisk/odv-v"));
    let resp = p
        .find_device(FindDeviceRequest {
            volume_id: "odv-v".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        resp.device_path,
        dir.path().join("omnidisk/odv-v").to_str().unwrap()
    );
    assert_eq!(
        fake.calls_of("lvchange").pop().unwrap(),
        [
            "lvchange",
            "--yes",
            "--activate",
            "y",
            "--ignoreactivationskip",
            "omnidisk/odv-v"
        ]
    );
    // Active already: no activation call.
    let before = fake.calls_of("lvchange").len();
    p.find_device(FindDeviceRequest {
        volume_id: "odv-v".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(fake.calls_of("lvchange").len(), before);
    let err = p
        .find_device(FindDeviceRequest {
            volume_id: "odv-none".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn a_device_that_never_appears_is_deadline_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeLvm::new("omnidisk", GIB as u64);
    let p = provider_with(
        &fake,
        &format!("device_root = {:?}\ndevice_wait_seconds = 1\n", dir.path()),
    );
    p.create_volume(create_req("v", MIB)).await.unwrap();
    let err = p
        .find_device(FindDeviceRequest {
            volume_id: "odv-v".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::DeadlineExceeded,
        "{}",
        err.full_message()
    );
}

#[tokio::test]
async fn volume_condition_reads_attributes() {
    let (fake, p) = thin(GIB as u64, 1.0, "0.00");
    p.create_volume(create_req("v", MIB)).await.unwrap();
    let ok = p.volume_condition(vref("odv-v")).await.unwrap();
    assert!(!ok.abnormal, "{}", ok.message);
    fake.edit("odv-v", |lv| {
        lv.attr[8] = 'p';
        lv.health = "partial".into();
    });
    let bad = p.volume_condition(vref("odv-v")).await.unwrap();
    assert!(bad.abnormal);
    assert!(bad.message.contains("partial"), "{}", bad.message);
    fake.edit("odv-v", |lv| {
        lv.attr[8] = '-';
        lv.health.clear();
        lv.attr[4] = '-';
    });
    let inactive = p.volume_condition(vref("odv-v")).await.unwrap();
    assert!(inactive.abnormal);
    assert!(
        inactive.message.contains("not active"),
        "{}",
        inactive.message
    );
    fake.edit("odv-v", |lv| lv.attr[4] = 'a');
    fake.edit("pool0", |lv| lv.attr[8] = 'D');
    let full = p.volume_condition(vref("odv-v")).await.unwrap();
    assert!(full.abnormal);
    assert!(full.message.contains("pool0"), "{}", full.message);
    // Unknown state (lvm without activation) is not reported as a fault.
    fake.edit("pool0", |lv| lv.attr[8] = '-');
    fake.edit("odv-v", |lv| lv.attr[4] = 'X');
    assert!(!p.volume_condition(vref("odv-v")).await.unwrap().abnormal);
    let err = p.volume_condition(vref("odv-gone")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn factory_works_with_empty_settings_and_refuses_bad_ones() {
    let provider = (crate::FACTORY.create)(init("")).await.unwrap();
    assert_eq!(provider.info().kind, "local-lvm");
    assert_eq!(crate::FACTORY.kind, "local-lvm");
    let err = (crate::FACTORY.create)(init("thin_pool = 3"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let err = (crate::FACTORY.create)(init("volume_group = \"-bad\""))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[tokio::test]
async fn instances_sharing_a_volume_group_see_only_their_own_volumes() {
    let (fake, first) = thick(GIB as u64);
    let mut other = init("");
    other.instance = "other".into();
    let second = LvmProvider::new(
        &other,
        Settings::from_toml("").unwrap(),
        Arc::new(fake.clone()),
    );
    first
        .create_volume(create_req("pvc-a", 8 * MIB))
        .await
        .unwrap();
    second
        .create_volume(create_req("pvc-b", 8 * MIB))
        .await
        .unwrap();
    let listed = first.list_volumes(ListRequest::default()).await.unwrap();
    let ids: Vec<_> = listed
        .entries
        .iter()
        .map(|e| e.volume.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(ids, vec!["odv-pvc-a".to_string()]);
    let err = first
        .get_volume(VolumeRef {
            volume_id: "odv-pvc-b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn new_volume_sizes_round_to_extents_within_the_limit() {
    const MIB: u64 = 1 << 20;
    let extent = 4 * MIB;
    // (required, limit, source size, expected size or None for OutOfRange)
    let cases = [
        (0, 5 * MIB, None, Some(4 * MIB)),
        (0, 0, None, Some(DEFAULT_VOLUME_BYTES)),
        (5 * MIB, 0, None, Some(8 * MIB)),
        (5 * MIB, 8 * MIB, None, Some(8 * MIB)),
        (5 * MIB, 7 * MIB, None, None),
        (4 * MIB, 5 * MIB, None, Some(4 * MIB)),
        (0, 3 * MIB, None, None),
        (0, 5 * MIB, Some(4 * MIB), Some(4 * MIB)),
        (0, 7 * MIB, Some(5 * MIB), None),
        (1, 5 * MIB, None, Some(4 * MIB)),
    ];
    for (required, limit, source, want) in cases {
        let got = LvmProvider::new_volume_size(required, limit, source, extent);
        match want {
            Some(size) => assert_eq!(got.unwrap(), size, "{required} {limit} {source:?}"),
            None => assert_eq!(
                got.unwrap_err().kind(),
                omnidisk_provider_api::ErrorKind::OutOfRange,
                "{required} {limit} {source:?}"
            ),
        }
    }
}
