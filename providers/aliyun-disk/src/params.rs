//! StorageClass, VolumeSnapshotClass and VolumeAttributesClass parameters.
//!
//! The core has already removed `type` (it picked this instance) and the
//! filesystem keys it handles on the node; what is left is ours, and any key
//! we do not know is an error naming it.

use std::collections::BTreeMap;
use std::fmt;

use omnidisk_provider_api::params::Params;
use omnidisk_provider_api::{ProviderError, Result};

/// An ECS disk category this provider knows, with its size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// Basic disk (previous generation).
    Cloud,
    /// Ultra disk.
    CloudEfficiency,
    /// Standard SSD.
    CloudSsd,
    /// Enhanced SSD (PL0-PL3).
    CloudEssd,
    /// ESSD AutoPL.
    CloudAuto,
    /// ESSD Entry.
    CloudEssdEntry,
    /// Regional ESSD (zone-redundant).
    CloudRegionalDiskAuto,
    /// Elastic ephemeral disk, standard.
    EphemeralStandard,
    /// Elastic ephemeral disk, premium.
    EphemeralPremium,
}

impl Category {
    const ALL: [Category; 9] = [
        Category::Cloud,
        Category::CloudEfficiency,
        Category::CloudSsd,
        Category::CloudEssd,
        Category::CloudAuto,
        Category::CloudEssdEntry,
        Category::CloudRegionalDiskAuto,
        Category::EphemeralStandard,
        Category::EphemeralPremium,
    ];

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Cloud => "cloud",
            Category::CloudEfficiency => "cloud_efficiency",
            Category::CloudSsd => "cloud_ssd",
            Category::CloudEssd => "cloud_essd",
            Category::CloudAuto => "cloud_auto",
            Category::CloudEssdEntry => "cloud_essd_entry",
            Category::CloudRegionalDiskAuto => "cloud_regional_disk_auto",
            Category::EphemeralStandard => "elastic_ephemeral_disk_standard",
            Category::EphemeralPremium => "elastic_ephemeral_disk_premium",
        }
    }

    /// Parses an API name.
    pub fn parse(raw: &str) -> Option<Category> {
        let raw = raw.trim();
        Self::ALL.into_iter().find(|c| c.as_str() == raw)
    }

    /// Data disk size limits in GiB, inclusive. For ESSD they depend on the
    /// performance level (PL1 when none is given, as ECS defaults to PL1).
    pub fn size_range_gib(self, performance_level: Option<PerformanceLevel>) -> (i64, i64) {
        match self {
            Category::Cloud => (5, 2000),
            Category::CloudEfficiency | Category::CloudSsd => (20, 32_768),
            Category::CloudEssd => match performance_level.unwrap_or(PerformanceLevel::Pl1) {
                PerformanceLevel::Pl0 => (1, 65_536),
                PerformanceLevel::Pl1 => (20, 65_536),
                PerformanceLevel::Pl2 => (461, 65_536),
                PerformanceLevel::Pl3 => (1261, 65_536),
            },
            Category::CloudAuto => (1, 65_536),
            Category::CloudEssdEntry => (10, 32_768),
            Category::CloudRegionalDiskAuto => (10, 65_536),
            Category::EphemeralStandard | Category::EphemeralPremium => (64, 8_192),
        }
    }

    /// True when online resizing (`ResizeDisk Type=online`) is supported.
    pub fn supports_online_resize(self) -> bool {
        !matches!(self, Category::Cloud)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// ESSD performance level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PerformanceLevel {
    /// PL0.
    Pl0,
    /// PL1.
    Pl1,
    /// PL2.
    Pl2,
    /// PL3.
    Pl3,
}

impl PerformanceLevel {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            PerformanceLevel::Pl0 => "PL0",
            PerformanceLevel::Pl1 => "PL1",
            PerformanceLevel::Pl2 => "PL2",
            PerformanceLevel::Pl3 => "PL3",
        }
    }

    /// Parses `PL0`..`PL3` (any case).
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_uppercase().as_str() {
            "PL0" => Some(PerformanceLevel::Pl0),
            "PL1" => Some(PerformanceLevel::Pl1),
            "PL2" => Some(PerformanceLevel::Pl2),
            "PL3" => Some(PerformanceLevel::Pl3),
            _ => None,
        }
    }
}

/// Parameters of a new disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateParams {
    /// Categories to try, in order.
    pub categories: Vec<Category>,
    /// ESSD performance level.
    pub performance_level: Option<PerformanceLevel>,
    /// cloud_auto provisioned IOPS.
    pub provisioned_iops: Option<i64>,
    /// cloud_auto bursting.
    pub bursting_enabled: Option<bool>,
    /// Encrypt the disk.
    pub encrypted: bool,
    /// KMS key for encryption.
    pub kms_key_id: Option<String>,
    /// Resource group.
    pub resource_group_id: Option<String>,
    /// Zone to use when the request has no topology.
    pub zone_id: Option<String>,
    /// User tags.
    pub tags: Vec<(String, String)>,
    /// `MultiAttach=Enabled`: the disk can be attached to several instances.
    pub multi_attach: bool,
}

impl Category {
    /// True for the categories ECS creates with `MultiAttach=Enabled`
    /// (ESSD at every level and ESSD AutoPL).
    pub fn supports_multi_attach(self) -> bool {
        matches!(self, Category::CloudEssd | Category::CloudAuto)
    }
}

/// Changes requested through a VolumeAttributesClass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModifyParams {
    /// New category.
    pub category: Option<Category>,
    /// New ESSD level.
    pub performance_level: Option<PerformanceLevel>,
    /// New provisioned IOPS.
    pub provisioned_iops: Option<i64>,
}

/// Parameters of a new snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotParams {
    /// Resource group.
    pub resource_group_id: Option<String>,
    /// Retention in days.
    pub retention_days: Option<i64>,
    /// User tags.
    pub tags: Vec<(String, String)>,
}

fn invalid(message: String) -> ProviderError {
    ProviderError::invalid_argument(message)
}

fn parse_categories(raw: &str) -> Result<Vec<Category>> {
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let c = Category::parse(part).ok_or_else(|| {
            invalid(format!(
                "aliyun-disk StorageClass parameter `category`: unknown disk category {part:?} (known: {})",
                Category::ALL.map(Category::as_str).join(", ")
            ))
        })?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    if out.is_empty() {
        return Err(invalid(
            "aliyun-disk StorageClass parameter `category` is empty".into(),
        ));
    }
    Ok(out)
}

fn parse_level(raw: &str) -> Result<PerformanceLevel> {
    PerformanceLevel::parse(raw).ok_or_else(|| {
        invalid(format!(
            "aliyun-disk parameter `performanceLevel`: expected PL0, PL1, PL2 or PL3, got {raw:?}"
        ))
    })
}

/// Checks an identifier-like value (KMS key, resource group, zone) so that
/// nothing unexpected is sent on.
fn plain_value(key: &str, raw: &str) -> Result<String> {
    let v = raw.trim();
    if v.is_empty()
        || v.len() > 256
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
    {
        return Err(invalid(format!(
            "aliyun-disk parameter `{key}`: {raw:?} is not a valid identifier"
        )));
    }
    Ok(v.to_owned())
}

/// Checks a tag against ECS's rules (key 1-128 characters, not starting
/// with `aliyun` or `acs:`, no `http://`/`https://`; value up to 128).
pub fn check_tag(key: &str, value: &str) -> Result<()> {
    let lower = key.to_ascii_lowercase();
    if key.is_empty()
        || key.chars().count() > 128
        || lower.starts_with("aliyun")
        || lower.starts_with("acs:")
        || lower.contains("http://")
        || lower.contains("https://")
    {
        return Err(invalid(format!(
            "disk tag key {key:?} is not allowed by ECS"
        )));
    }
    if value.chars().count() > 128 || value.to_ascii_lowercase().contains("http://") {
        return Err(invalid(format!(
            "disk tag value {value:?} for {key:?} is not allowed by ECS"
        )));
    }
    Ok(())
}

fn take_tags(
    p: &mut Params,
    list_key: &'static str,
    prefix: &'static str,
) -> Result<Vec<(String, String)>> {
    let mut tags: BTreeMap<String, String> = BTreeMap::new();
    if let Some(raw) = p.take(list_key) {
        for pair in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = pair
                .split_once(':')
                .or_else(|| pair.split_once('='))
                .ok_or_else(|| {
                    invalid(format!(
                        "aliyun-disk parameter `{list_key}`: {pair:?} is not key:value"
                    ))
                })?;
            tags.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    for (k, v) in p.take_prefixed(prefix) {
        tags.insert(k, v);
    }
    for (k, v) in &tags {
        check_tag(k, v)?;
    }
    Ok(tags.into_iter().collect())
}

impl CreateParams {
    /// Parses StorageClass parameters; `default_categories` applies when
    /// `category` is absent.
    pub fn parse(
        map: &BTreeMap<String, String>,
        default_categories: &[String],
        default_resource_group: &str,
    ) -> Result<Self> {
        let mut p = Params::new("aliyun-disk StorageClass parameter", map);
        let categories = match p.take("category") {
            Some(raw) => parse_categories(&raw)?,
            None => parse_categories(&default_categories.join(","))?,
        };
        let performance_level = p
            .take("performanceLevel")
            .map(|r| parse_level(&r))
            .transpose()?;
        let provisioned_iops = p.take_parsed::<i64>("provisionedIops")?;
        let bursting_enabled = p.take_bool("burstingEnabled")?;
        let encrypted = p.take_bool("encrypted")?.unwrap_or(false);
        let kms_key_id = p
            .take("kmsKeyId")
            .map(|r| plain_value("kmsKeyId", &r))
            .transpose()?;
        let resource_group_id = p
            .take("resourceGroupId")
            .map(|r| plain_value("resourceGroupId", &r))
            .transpose()?
            .or_else(|| {
                (!default_resource_group.is_empty()).then(|| default_resource_group.to_owned())
            });
        let zone_id = p
            .take("zoneId")
            .map(|r| plain_value("zoneId", &r))
            .transpose()?;
        let tags = take_tags(&mut p, "diskTags", "diskTags/")?;
        let multi_attach = p.take_bool("multiAttach")?.unwrap_or(false);
        p.finish()?;
        if multi_attach {
            if let Some(c) = categories.iter().find(|c| !c.supports_multi_attach()) {
                return Err(invalid(format!(
                    "aliyun-disk parameter `multiAttach`: category {c} cannot be multi-attached (only cloud_essd and cloud_auto can)"
                )));
            }
            if bursting_enabled == Some(true) {
                return Err(invalid(
                    "aliyun-disk parameter `burstingEnabled`: a multi-attach cloud_auto disk does not burst".into(),
                ));
            }
        }
        if performance_level.is_some() && !categories.contains(&Category::CloudEssd) {
            return Err(invalid(
                "aliyun-disk parameter `performanceLevel` applies to cloud_essd only, which `category` does not list".into(),
            ));
        }
        if (provisioned_iops.is_some() || bursting_enabled.is_some())
            && !categories.contains(&Category::CloudAuto)
        {
            return Err(invalid(
                "aliyun-disk parameters `provisionedIops` and `burstingEnabled` apply to cloud_auto only, which `category` does not list".into(),
            ));
        }
        if provisioned_iops.is_some_and(|v| v < 0) {
            return Err(invalid(
                "aliyun-disk parameter `provisionedIops` is negative".into(),
            ));
        }
        if kms_key_id.is_some() && !encrypted {
            return Err(invalid(
                "aliyun-disk parameter `kmsKeyId` needs `encrypted: \"true\"`".into(),
            ));
        }
        Ok(Self {
            categories,
            performance_level,
            provisioned_iops,
            bursting_enabled,
            encrypted,
            kms_key_id,
            resource_group_id,
            zone_id,
            tags,
            multi_attach,
        })
    }

    /// Applies a VolumeAttributesClass given at creation (its values win
    /// over the StorageClass's), then checks that the result is still a
    /// disk CreateDisk can make: a performance level needs `cloud_essd` and
    /// provisioned IOPS need `cloud_auto` among the categories, whichever
    /// side named them.
    pub fn apply(&mut self, modify: &ModifyParams) -> Result<()> {
        if let Some(c) = modify.category {
            self.categories = vec![c];
        }
        if let Some(l) = modify.performance_level {
            self.performance_level = Some(l);
        }
        if let Some(i) = modify.provisioned_iops {
            self.provisioned_iops = Some(i);
        }
        let categories = self
            .categories
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(",");
        if self.performance_level.is_some() && !self.categories.contains(&Category::CloudEssd) {
            return Err(invalid(format!(
                "aliyun-disk mutable parameter `performanceLevel` cannot be applied at creation: it needs a cloud_essd disk, and the categories are {categories}"
            )));
        }
        if self.provisioned_iops.is_some() && !self.categories.contains(&Category::CloudAuto) {
            return Err(invalid(format!(
                "aliyun-disk mutable parameter `provisionedIops` cannot be applied at creation: it needs a cloud_auto disk, and the categories are {categories}"
            )));
        }
        if self.multi_attach
            && let Some(c) = self.categories.iter().find(|c| !c.supports_multi_attach())
        {
            return Err(invalid(format!(
                "aliyun-disk mutable parameter `category`: {c} cannot be multi-attached, and the StorageClass asks for `multiAttach`"
            )));
        }
        if self.bursting_enabled.is_some() && !self.categories.contains(&Category::CloudAuto) {
            return Err(invalid(format!(
                "aliyun-disk parameter `burstingEnabled` needs a cloud_auto disk, and the mutable parameter `category` made the categories {categories}"
            )));
        }
        Ok(())
    }
}

impl ModifyParams {
    /// Parses VolumeAttributesClass parameters.
    pub fn parse(map: &BTreeMap<String, String>) -> Result<Self> {
        let mut p = Params::new("aliyun-disk mutable parameter", map);
        let category = p
            .take("category")
            .map(|raw| {
                let list = parse_categories(&raw)?;
                match list.as_slice() {
                    [one] => Ok(*one),
                    _ => Err(invalid(
                        "aliyun-disk mutable parameter `category` names one category".into(),
                    )),
                }
            })
            .transpose()?;
        let performance_level = p
            .take("performanceLevel")
            .map(|r| parse_level(&r))
            .transpose()?;
        let provisioned_iops = p.take_parsed::<i64>("provisionedIops")?;
        p.finish()?;
        if provisioned_iops.is_some_and(|v| v < 0) {
            return Err(invalid(
                "aliyun-disk parameter `provisionedIops` is negative".into(),
            ));
        }
        Ok(Self {
            category,
            performance_level,
            provisioned_iops,
        })
    }

    /// True when nothing is asked.
    pub fn is_empty(&self) -> bool {
        self.category.is_none()
            && self.performance_level.is_none()
            && self.provisioned_iops.is_none()
    }
}

impl SnapshotParams {
    /// Parses VolumeSnapshotClass parameters.
    pub fn parse(map: &BTreeMap<String, String>, default_resource_group: &str) -> Result<Self> {
        let mut p = Params::new("aliyun-disk VolumeSnapshotClass parameter", map);
        let resource_group_id = p
            .take("resourceGroupId")
            .map(|r| plain_value("resourceGroupId", &r))
            .transpose()?
            .or_else(|| {
                (!default_resource_group.is_empty()).then(|| default_resource_group.to_owned())
            });
        let retention_days = p.take_parsed::<i64>("retentionDays")?;
        if retention_days.is_some_and(|d| !(1..=65_536).contains(&d)) {
            return Err(invalid(
                "aliyun-disk parameter `retentionDays` must be 1..=65536".into(),
            ));
        }
        let tags = take_tags(&mut p, "snapshotTags", "snapshotTags/")?;
        p.finish()?;
        Ok(Self {
            resource_group_id,
            retention_days,
            tags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnidisk_provider_api::ErrorKind;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn defaults() -> Vec<String> {
        vec!["cloud_essd".into(), "cloud_ssd".into()]
    }

    #[test]
    fn full_storage_class() {
        let p = CreateParams::parse(
            &map(&[
                ("category", "cloud_essd, cloud_ssd,cloud_efficiency"),
                ("performanceLevel", "pl2"),
                ("encrypted", "true"),
                ("kmsKeyId", "0e478b7a-4262-4802-b8cb-00d3fb40826b"),
                ("resourceGroupId", "rg-acfm"),
                ("diskTags", "team:storage,env:prod"),
                ("diskTags/cost-center", "42"),
                ("csi.storage.k8s.io/pvc/name", "data"),
            ]),
            &defaults(),
            "",
        )
        .unwrap();
        assert_eq!(
            p.categories,
            vec![
                Category::CloudEssd,
                Category::CloudSsd,
                Category::CloudEfficiency
            ]
        );
        assert_eq!(p.performance_level, Some(PerformanceLevel::Pl2));
        assert!(p.encrypted);
        assert_eq!(
            p.tags,
            vec![
                ("cost-center".to_owned(), "42".to_owned()),
                ("env".to_owned(), "prod".to_owned()),
                ("team".to_owned(), "storage".to_owned())
            ]
        );
    }

    #[test]
    fn defaults_when_empty() {
        let p = CreateParams::parse(&map(&[]), &defaults(), "rg-default").unwrap();
        assert_eq!(p.categories, vec![Category::CloudEssd, Category::CloudSsd]);
        assert_eq!(p.resource_group_id.as_deref(), Some("rg-default"));
        assert!(!p.encrypted);
    }

    #[test]
    fn refusals_name_the_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("category", "cloud_fast")], "cloud_fast"),
            (&[("category", ",")], "category"),
            (&[("performanceLevel", "PL9")], "performanceLevel"),
            (
                &[("category", "cloud_ssd"), ("performanceLevel", "PL1")],
                "performanceLevel",
            ),
            (&[("provisionedIops", "100")], "provisionedIops"),
            (
                &[("category", "cloud_auto"), ("provisionedIops", "-1")],
                "provisionedIops",
            ),
            (&[("kmsKeyId", "k")], "kmsKeyId"),
            (&[("diskTags", "novalue")], "diskTags"),
            (&[("diskTags", "aliyun-x:1")], "aliyun-x"),
            (&[("resourceGroupId", "rg 1")], "resourceGroupId"),
            (&[("fsType", "ext4")], "fsType"),
            (&[("iops", "3000")], "iops"),
            (
                &[
                    ("category", "cloud_essd,cloud_ssd"),
                    ("multiAttach", "true"),
                ],
                "cloud_ssd",
            ),
            (&[("multiAttach", "yes please")], "multiAttach"),
        ];
        for (pairs, needle) in cases {
            let err = CreateParams::parse(&map(pairs), &defaults(), "").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(
                err.message().contains(needle),
                "{pairs:?}: {}",
                err.message()
            );
        }
    }

    #[test]
    fn size_limits_per_category() {
        assert_eq!(Category::CloudEssd.size_range_gib(None), (20, 65_536));
        assert_eq!(
            Category::CloudEssd.size_range_gib(Some(PerformanceLevel::Pl0)),
            (1, 65_536)
        );
        assert_eq!(
            Category::CloudEssd.size_range_gib(Some(PerformanceLevel::Pl3)),
            (1261, 65_536)
        );
        assert_eq!(Category::Cloud.size_range_gib(None), (5, 2000));
        assert_eq!(Category::CloudSsd.size_range_gib(None), (20, 32_768));
    }

    #[test]
    fn modify_parameters() {
        let m = ModifyParams::parse(&map(&[
            ("category", "cloud_auto"),
            ("provisionedIops", "5000"),
        ]))
        .unwrap();
        assert_eq!(m.category, Some(Category::CloudAuto));
        assert_eq!(m.provisioned_iops, Some(5000));
        assert!(ModifyParams::parse(&map(&[("category", "cloud_auto,cloud_essd")])).is_err());
        assert!(ModifyParams::parse(&map(&[("size", "5")])).is_err());
        assert!(ModifyParams::parse(&map(&[])).unwrap().is_empty());
    }

    #[test]
    fn mutable_parameters_at_creation_are_checked_against_the_categories() {
        let base =
            || CreateParams::parse(&map(&[("category", "cloud_ssd")]), &defaults(), "").unwrap();
        let mut p = base();
        let err = p
            .apply(&ModifyParams::parse(&map(&[("performanceLevel", "PL2")])).unwrap())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(
            err.message().contains("performanceLevel"),
            "{}",
            err.message()
        );
        let mut p = base();
        let err = p
            .apply(&ModifyParams::parse(&map(&[("provisionedIops", "100")])).unwrap())
            .unwrap_err();
        assert!(
            err.message().contains("provisionedIops"),
            "{}",
            err.message()
        );
        let mut p = base();
        p.apply(
            &ModifyParams::parse(&map(&[
                ("category", "cloud_essd"),
                ("performanceLevel", "PL0"),
            ]))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(p.categories, vec![Category::CloudEssd]);
        assert_eq!(p.performance_level, Some(PerformanceLevel::Pl0));
        let err = ModifyParams::parse(&map(&[("XXX_FakeKey", "1")])).unwrap_err();
        assert!(err.message().contains("XXX_FakeKey"), "{}", err.message());
    }

    #[test]
    fn snapshot_parameters() {
        let s = SnapshotParams::parse(
            &map(&[("retentionDays", "7"), ("snapshotTags/app", "db")]),
            "",
        )
        .unwrap();
        assert_eq!(s.retention_days, Some(7));
        assert_eq!(s.tags, vec![("app".to_owned(), "db".to_owned())]);
        assert!(SnapshotParams::parse(&map(&[("retentionDays", "0")]), "").is_err());
        assert!(SnapshotParams::parse(&map(&[("snapshotType", "x")]), "").is_err());
    }
}
