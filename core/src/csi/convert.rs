//! Conversions between the CSI protobuf and the provider-api types.

use omnidisk_provider_api::types as p;

use crate::error::{CoreError, CoreResult};
use crate::generated::csi;
use crate::generated::csi::volume_capability::AccessType;
use crate::ids::ScopedId;

/// CSI topology -> provider topology.
pub fn topology_in(t: &csi::Topology) -> p::Topology {
    p::Topology {
        segments: t.segments.clone(),
    }
}

/// Provider topology -> CSI topology.
pub fn topology_out(t: &p::Topology) -> csi::Topology {
    csi::Topology {
        segments: t.segments.clone(),
    }
}

/// CSI access mode -> provider access mode (same numbering by design).
pub fn access_mode_in(mode: i32) -> p::AccessMode {
    p::AccessMode::try_from(mode).unwrap_or(p::AccessMode::Unspecified)
}

/// CSI capability -> provider capability.
pub fn capability_in(c: &csi::VolumeCapability) -> p::Capability {
    let (access_type, fs_type) = match &c.access_type {
        Some(AccessType::Block(_)) => (p::AccessType::Block, String::new()),
        Some(AccessType::Mount(m)) => (p::AccessType::Mount, m.fs_type.clone()),
        None => (p::AccessType::Unspecified, String::new()),
    };
    p::Capability {
        access_type: access_type as i32,
        access_mode: c
            .access_mode
            .as_ref()
            .map_or(p::AccessMode::Unspecified, |m| access_mode_in(m.mode))
            as i32,
        fs_type,
    }
}

/// True for a block-access capability.
pub fn is_block(c: &csi::VolumeCapability) -> bool {
    matches!(c.access_type, Some(AccessType::Block(_)))
}

/// Wraps a provider's volume into a CSI volume owned by `instance`.
/// `extra_context` (filesystem settings from the StorageClass) is merged
/// into the volume context.
pub fn volume_out(
    instance: &str,
    v: &p::Volume,
    extra_context: &std::collections::BTreeMap<String, String>,
) -> CoreResult<csi::Volume> {
    let id = scoped(instance, &v.id)?;
    let mut volume_context = v.context.clone();
    volume_context.extend(extra_context.iter().map(|(k, v)| (k.clone(), v.clone())));
    let content_source = match &v.source {
        None => None,
        Some(p::volume::Source::SourceSnapshotId(s)) => Some(csi::VolumeContentSource {
            r#type: Some(csi::volume_content_source::Type::Snapshot(
                csi::volume_content_source::SnapshotSource {
                    snapshot_id: scoped(instance, s)?.to_string(),
                },
            )),
        }),
        Some(p::volume::Source::SourceVolumeId(s)) => Some(csi::VolumeContentSource {
            r#type: Some(csi::volume_content_source::Type::Volume(
                csi::volume_content_source::VolumeSource {
                    volume_id: scoped(instance, s)?.to_string(),
                },
            )),
        }),
    };
    Ok(csi::Volume {
        capacity_bytes: v.capacity_bytes,
        volume_id: id.to_string(),
        volume_context,
        content_source,
        accessible_topology: v.accessible_topology.iter().map(topology_out).collect(),
    })
}

/// Wraps a provider's snapshot into a CSI snapshot owned by `instance`.
pub fn snapshot_out(instance: &str, s: &p::Snapshot) -> CoreResult<csi::Snapshot> {
    Ok(csi::Snapshot {
        size_bytes: s.size_bytes,
        snapshot_id: scoped(instance, &s.id)?.to_string(),
        source_volume_id: if s.source_volume_id.is_empty() {
            String::new()
        } else {
            scoped(instance, &s.source_volume_id)?.to_string()
        },
        creation_time: Some(prost_types::Timestamp {
            seconds: s.creation_time_seconds,
            nanos: s.creation_time_nanos,
        }),
        ready_to_use: s.ready_to_use,
        group_snapshot_id: if s.group_snapshot_id.is_empty() {
            String::new()
        } else {
            scoped(instance, &s.group_snapshot_id)?.to_string()
        },
    })
}

/// Wraps a provider's group snapshot into a CSI group snapshot owned by
/// `instance`; its members carry the group's CSI ID.
pub fn group_snapshot_out(
    instance: &str,
    g: &p::GroupSnapshot,
) -> CoreResult<csi::VolumeGroupSnapshot> {
    let id = scoped(instance, &g.id)?.to_string();
    let snapshots = g
        .snapshots
        .iter()
        .map(|member| {
            let mut snap = snapshot_out(instance, member)?;
            snap.group_snapshot_id = id.clone();
            Ok(snap)
        })
        .collect::<CoreResult<Vec<_>>>()?;
    Ok(csi::VolumeGroupSnapshot {
        group_snapshot_id: id,
        snapshots,
        creation_time: Some(prost_types::Timestamp {
            seconds: g.creation_time_seconds,
            nanos: g.creation_time_nanos,
        }),
        ready_to_use: g.ready_to_use,
    })
}

/// A provider ID wrapped with its instance; a provider returning an ID that
/// cannot be encoded is a provider bug.
pub fn scoped(instance: &str, local: &str) -> CoreResult<ScopedId> {
    ScopedId::new(instance, local).map_err(|e| {
        CoreError::Internal(format!(
            "provider instance {instance} returned an unusable ID {local:?}: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn volumes_carry_scoped_ids_sources_and_context() {
        let v = p::Volume {
            id: "lv-1".into(),
            capacity_bytes: 5,
            accessible_topology: vec![p::Topology::from_pairs([("k", "v")])],
            context: BTreeMap::from([("a".to_string(), "1".to_string())]),
            source: Some(p::volume::Source::SourceSnapshotId("snap-1".into())),
            multi_attach: false,
        };
        let extra = BTreeMap::from([("fsType".to_string(), "xfs".to_string())]);
        let out = volume_out("lvm", &v, &extra).unwrap();
        assert_eq!(out.volume_id, "v1.lvm.lv-1");
        assert_eq!(
            out.volume_context.get("fsType").map(String::as_str),
            Some("xfs")
        );
        assert_eq!(out.volume_context.get("a").map(String::as_str), Some("1"));
        match out.content_source.and_then(|s| s.r#type) {
            Some(csi::volume_content_source::Type::Snapshot(s)) => {
                assert_eq!(s.snapshot_id, "v1.lvm.snap-1")
            }
            other => panic!("unexpected source {other:?}"),
        }
        assert_eq!(out.accessible_topology[0].segments["k"], "v");
    }

    #[test]
    fn unusable_provider_ids_are_internal_errors() {
        let v = p::Volume {
            id: String::new(),
            ..Default::default()
        };
        let err = volume_out("lvm", &v, &BTreeMap::new()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
    }

    #[test]
    fn capabilities_convert() {
        let c = csi::VolumeCapability {
            access_type: Some(AccessType::Mount(csi::volume_capability::MountVolume {
                fs_type: "xfs".into(),
                ..Default::default()
            })),
            access_mode: Some(csi::volume_capability::AccessMode { mode: 7 }),
        };
        let pc = capability_in(&c);
        assert_eq!(pc.access_type, p::AccessType::Mount as i32);
        assert_eq!(pc.access_mode, p::AccessMode::SingleNodeMultiWriter as i32);
        assert_eq!(pc.fs_type, "xfs");
        assert!(!is_block(&c));
    }
}
