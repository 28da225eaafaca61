//! How CSI names become LV names, and the tags that mark omnidisk's LVs.
//!
//! * Volume LVs are `odv-<csi name>` when the CSI name is a short, plain
//!   LVM name (the usual `pvc-<uuid>` is), else `odvh-<40 hex digits of
//!   SHA-256(csi name)>`. Snapshots use `ods-` and `odsh-`. The prefixes
//!   cannot collide with each other, so a verbatim name never equals a
//!   hashed one. The LV name is the provider's volume/snapshot ID.
//! * Every LV omnidisk creates carries [`MANAGED_TAG`] (list and get ignore
//!   LVs without it) and `omnidisk.csi.dev/name=<base64url(csi name)>`
//!   (the tag charset has no room for arbitrary names), so a retried create
//!   recognises its own LV after a restart, and a hash collision or a
//!   stranger's LV of the same name is detected instead of reused.
//! * Volumes made from a snapshot or volume carry
//!   `omnidisk.csi.dev/source=<source LV name>`; a snapshot carries the LV
//!   it was taken of the same way (thin snapshots lose `origin` once the
//!   origin is deleted).
//! * [`PENDING_TAG`] marks a volume whose creation has more steps (copy,
//!   grow) than one lvcreate; it is removed when they are done, and a
//!   retried create finishes the steps.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::lvm::{LogicalVolume, LvName, NameError, Tag};

/// Marks LVs created by omnidisk.
pub const MANAGED_TAG: &str = "omnidisk.csi.dev/managed";
/// Prefix of the tag holding the encoded CSI name.
pub const NAME_TAG_PREFIX: &str = "omnidisk.csi.dev/name=";
/// Prefix of the tag holding the source LV (snapshot origin, restore or
/// clone source).
pub const SOURCE_TAG_PREFIX: &str = "omnidisk.csi.dev/source=";
/// Marks a volume whose creation is not finished.
pub const PENDING_TAG: &str = "omnidisk.csi.dev/pending";
/// Prefix of the tag naming the provider instance that owns an LV, so
/// several instances can share one volume group without seeing each
/// other's volumes.
pub const INSTANCE_TAG_PREFIX: &str = "omnidisk.csi.dev/instance=";

/// Longest CSI name accepted: its tag must stay under lvm's 1024.
pub const MAX_CSI_NAME_LEN: usize = 512;
/// Longest LV name used verbatim. dm doubles every '-' in device names
/// (`vg-lv` -> `vg--lv` style escaping) and caps them at 127 bytes, so keep
/// well clear of it.
const MAX_VERBATIM_LV_LEN: usize = 48;

/// Volumes or snapshots: they have separate name spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A volume (`odv-`, `odvh-`).
    Volume,
    /// A snapshot (`ods-`, `odsh-`).
    Snapshot,
}

impl ObjectKind {
    fn prefixes(self) -> (&'static str, &'static str) {
        match self {
            ObjectKind::Volume => ("odv-", "odvh-"),
            ObjectKind::Snapshot => ("ods-", "odsh-"),
        }
    }

    /// "volume" or "snapshot", for messages.
    pub fn noun(self) -> &'static str {
        match self {
            ObjectKind::Volume => "volume",
            ObjectKind::Snapshot => "snapshot",
        }
    }
}

/// A CSI name that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CsiNameError {
    /// Empty.
    #[error("the {0} name is empty")]
    Empty(&'static str),
    /// Too long to record in a tag.
    #[error("the {0} name is longer than {MAX_CSI_NAME_LEN} bytes")]
    TooLong(&'static str),
    /// The derived LV name or tag was refused (a bug: derivation ensures
    /// validity).
    #[error("cannot derive an LVM name")]
    Derive(#[source] NameError),
}

/// The LV name for the CSI name `csi_name`.
pub fn lv_name_for(kind: ObjectKind, csi_name: &str) -> Result<LvName, CsiNameError> {
    check_csi_name(kind, csi_name)?;
    let (plain, hashed) = kind.prefixes();
    let verbatim = format!("{plain}{csi_name}");
    if verbatim.len() <= MAX_VERBATIM_LV_LEN {
        if let Ok(name) = LvName::new(&verbatim) {
            return Ok(name);
        }
    }
    let digest = Sha256::digest(csi_name.as_bytes());
    let hex = hex::encode(digest);
    LvName::new(&format!("{hashed}{}", &hex[..40])).map_err(CsiNameError::Derive)
}

fn check_csi_name(kind: ObjectKind, csi_name: &str) -> Result<(), CsiNameError> {
    if csi_name.is_empty() {
        return Err(CsiNameError::Empty(kind.noun()));
    }
    if csi_name.len() > MAX_CSI_NAME_LEN {
        return Err(CsiNameError::TooLong(kind.noun()));
    }
    Ok(())
}

/// The LV name behind a provider ID, if the ID can be one of ours of that
/// kind. IDs that are not (another kind, foreign names, malformed text)
/// give `None`: such objects do not exist as far as this provider knows.
pub fn parse_id(kind: ObjectKind, id: &str) -> Option<LvName> {
    let (plain, hashed) = kind.prefixes();
    if !id.starts_with(plain) && !id.starts_with(hashed) {
        return None;
    }
    LvName::new(id).ok()
}

/// The kind of an ID by its prefix.
pub fn kind_of_id(id: &str) -> Option<ObjectKind> {
    [ObjectKind::Volume, ObjectKind::Snapshot]
        .into_iter()
        .find(|k| parse_id(*k, id).is_some())
}

/// The tags a new LV gets: marker, name, and optionally source and pending.
pub fn tags_for(
    instance: &str,
    csi_name: &str,
    source: Option<&LvName>,
    pending: bool,
) -> Result<Vec<Tag>, CsiNameError> {
    let mut tags = vec![
        Tag::new(MANAGED_TAG).map_err(CsiNameError::Derive)?,
        instance_tag(instance)?,
        name_tag(csi_name)?,
    ];
    if let Some(source) = source {
        tags.push(Tag::new(&format!("{SOURCE_TAG_PREFIX}{source}")).map_err(CsiNameError::Derive)?);
    }
    if pending {
        tags.push(pending_tag()?);
    }
    Ok(tags)
}

/// The tag naming the owning instance (instance names are DNS labels,
/// which LVM accepts in tags as they are).
pub fn instance_tag(instance: &str) -> Result<Tag, CsiNameError> {
    Tag::new(&format!("{INSTANCE_TAG_PREFIX}{instance}")).map_err(CsiNameError::Derive)
}

/// True when `lv` is managed by omnidisk on behalf of another instance.
pub fn belongs_to_other_instance(lv: &LogicalVolume, instance: &str) -> bool {
    lv.has_tag(MANAGED_TAG) && lv.tag_value(INSTANCE_TAG_PREFIX) != Some(instance)
}

/// The tag recording `csi_name`.
pub fn name_tag(csi_name: &str) -> Result<Tag, CsiNameError> {
    Tag::new(&format!(
        "{NAME_TAG_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(csi_name)
    ))
    .map_err(CsiNameError::Derive)
}

/// The pending marker.
pub fn pending_tag() -> Result<Tag, CsiNameError> {
    Tag::new(PENDING_TAG).map_err(CsiNameError::Derive)
}

/// What omnidisk's tags say about an LV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// The CSI name it was created for (`None` if the tag is unreadable).
    pub csi_name: Option<String>,
    /// The source LV name.
    pub source: Option<String>,
    /// Creation steps remain.
    pub pending: bool,
}

/// The ownership of an LV, or `None` if omnidisk did not create it.
pub fn ownership(lv: &LogicalVolume) -> Option<Ownership> {
    if !lv.has_tag(MANAGED_TAG) {
        return None;
    }
    let csi_name = lv
        .tag_value(NAME_TAG_PREFIX)
        .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
        .and_then(|b| String::from_utf8(b).ok());
    Some(Ownership {
        csi_name,
        source: lv.tag_value(SOURCE_TAG_PREFIX).map(str::to_owned),
        pending: lv.has_tag(PENDING_TAG),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_kept_readable() {
        let name = lv_name_for(
            ObjectKind::Volume,
            "pvc-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
        )
        .unwrap();
        assert_eq!(
            name.as_str(),
            "odv-pvc-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
        );
        let snap = lv_name_for(ObjectKind::Snapshot, "snapshot-1").unwrap();
        assert_eq!(snap.as_str(), "ods-snapshot-1");
    }

    #[test]
    fn odd_or_long_names_are_hashed_deterministically() {
        for odd in [
            "has space",
            "slash/name",
            "ünïcode",
            "x_tdata",
            &"p".repeat(45),
            "comma,name",
        ] {
            let a = lv_name_for(ObjectKind::Volume, odd).unwrap();
            let b = lv_name_for(ObjectKind::Volume, odd).unwrap();
            assert_eq!(a, b);
            assert!(a.as_str().starts_with("odvh-"), "{odd}: {a}");
            assert_eq!(a.as_str().len(), 5 + 40);
            assert_eq!(parse_id(ObjectKind::Volume, a.as_str()), Some(a.clone()));
        }
        assert_ne!(
            lv_name_for(ObjectKind::Volume, "a b").unwrap(),
            lv_name_for(ObjectKind::Volume, "a c").unwrap()
        );
        assert!(
            lv_name_for(ObjectKind::Snapshot, "a b")
                .unwrap()
                .as_str()
                .starts_with("odsh-")
        );
    }

    #[test]
    fn bad_csi_names_are_refused() {
        assert!(matches!(
            lv_name_for(ObjectKind::Volume, ""),
            Err(CsiNameError::Empty(_))
        ));
        assert!(matches!(
            lv_name_for(ObjectKind::Volume, &"x".repeat(513)),
            Err(CsiNameError::TooLong(_))
        ));
    }

    #[test]
    fn ids_are_ours_only_with_the_right_prefix() {
        assert!(parse_id(ObjectKind::Volume, "odv-pvc-1").is_some());
        assert!(parse_id(ObjectKind::Volume, "ods-pvc-1").is_none());
        assert!(parse_id(ObjectKind::Snapshot, "ods-pvc-1").is_some());
        assert!(parse_id(ObjectKind::Volume, "not-ours").is_none());
        assert!(parse_id(ObjectKind::Volume, "odv-../../etc").is_none());
        assert!(parse_id(ObjectKind::Volume, "odv-a b").is_none());
        assert_eq!(kind_of_id("odsh-00"), Some(ObjectKind::Snapshot));
        assert_eq!(kind_of_id("vol-1"), None);
    }

    #[test]
    fn tags_round_trip_any_csi_name() {
        let name = "weird name/with,commas=and ünïcode";
        let tags = tags_for("lvm", name, Some(&LvName::new("ods-x").unwrap()), true).unwrap();
        let lv = crate::lvm::report::parse_lvs(
            serde_json::json!({"report":[{"lv":[{
                "lv_name":"odvh-x","vg_name":"vg","lv_size":"4194304","lv_attr":"-wi-a-----",
                "lv_tags": tags.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(","),
            }]}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
        .remove(0);
        let own = ownership(&lv).unwrap();
        assert_eq!(own.csi_name.as_deref(), Some(name));
        assert_eq!(own.source.as_deref(), Some("ods-x"));
        assert!(own.pending);
    }

    #[test]
    fn tags_written_by_real_lvm_decode() {
        let json = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/lvs_thick.json"
        ))
        .unwrap();
        let lvs = crate::lvm::report::parse_lvs(&json).unwrap();
        let csi = |name: &str| {
            let lv = lvs.iter().find(|lv| lv.name == name).unwrap();
            ownership(lv).map(|o| o.csi_name)
        };
        assert_eq!(
            csi("odv-pvc-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"),
            Some(Some("pvc-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0".to_owned()))
        );
        assert_eq!(
            csi("odvh-5f2a9c3e1b7d4e6f8a0b2c4d6e8f0a1b3c5d7e9f"),
            Some(Some("weird name with spaces".to_owned()))
        );
        assert_eq!(csi("not-ours"), None);
    }

    #[test]
    fn longest_csi_name_fits_in_a_tag() {
        name_tag(&"\u{10FFFF}".repeat(MAX_CSI_NAME_LEN / 4)).unwrap();
        name_tag(&"x".repeat(MAX_CSI_NAME_LEN)).unwrap();
    }
}
