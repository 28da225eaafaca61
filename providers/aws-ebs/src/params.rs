//! StorageClass and VolumeAttributesClass parameters of EBS volumes.
//!
//! The core has already removed `type` (it picked this instance) and the
//! filesystem keys (the node formats), so what is left here is EBS's own:
//! `volumeType`, `iops`, `iopsPerGB`, `allowAutoIOPSPerGBIncrease`,
//! `throughput`, `encrypted`, `kmsKeyId`, `tagSpecification_N`,
//! `volumeInitializationRate`, `multiAttach` (io1/io2) and the deprecated,
//! ignored `blockExpress`.
//! Keys match case-insensitively; unknown keys are refused by name.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use omnidisk_provider_api::params::Params;
use omnidisk_provider_api::types::GIB;
use omnidisk_provider_api::{ProviderError, Result};
use sha2::{Digest, Sha256};

use crate::settings::RESERVED_TAG_PREFIXES;

/// The EBS volume types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VolumeType {
    /// General purpose SSD, baseline 3000 IOPS / 125 MiB/s (the default).
    Gp3,
    /// General purpose SSD, burstable.
    Gp2,
    /// Provisioned IOPS SSD.
    Io1,
    /// Provisioned IOPS SSD, higher durability.
    Io2,
    /// Throughput-optimized HDD.
    St1,
    /// Cold HDD.
    Sc1,
    /// Magnetic (previous generation).
    Standard,
}

/// Size and performance limits of one volume type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeLimits {
    /// Smallest size, GiB.
    pub min_gib: i64,
    /// Largest size, GiB.
    pub max_gib: i64,
    /// IOPS range when IOPS can be provisioned.
    pub iops: Option<(i32, i32)>,
    /// Most IOPS per GiB of size.
    pub max_iops_per_gib: i32,
    /// Throughput range (MiB/s) when it can be provisioned.
    pub throughput: Option<(i32, i32)>,
}

impl VolumeType {
    /// Every type.
    pub const ALL: [VolumeType; 7] = [
        VolumeType::Gp3,
        VolumeType::Gp2,
        VolumeType::Io1,
        VolumeType::Io2,
        VolumeType::St1,
        VolumeType::Sc1,
        VolumeType::Standard,
    ];

    /// EC2's name for the type.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeType::Gp3 => "gp3",
            VolumeType::Gp2 => "gp2",
            VolumeType::Io1 => "io1",
            VolumeType::Io2 => "io2",
            VolumeType::St1 => "st1",
            VolumeType::Sc1 => "sc1",
            VolumeType::Standard => "standard",
        }
    }

    /// The documented limits of the type (EBS user guide, volume types).
    pub fn limits(self) -> TypeLimits {
        match self {
            VolumeType::Gp3 => TypeLimits {
                min_gib: 1,
                max_gib: 16_384,
                iops: Some((3_000, 16_000)),
                max_iops_per_gib: 500,
                throughput: Some((125, 1_000)),
            },
            VolumeType::Gp2 => TypeLimits {
                min_gib: 1,
                max_gib: 16_384,
                iops: None,
                max_iops_per_gib: 0,
                throughput: None,
            },
            VolumeType::Io1 => TypeLimits {
                min_gib: 4,
                max_gib: 16_384,
                iops: Some((100, 64_000)),
                max_iops_per_gib: 50,
                throughput: None,
            },
            VolumeType::Io2 => TypeLimits {
                min_gib: 4,
                max_gib: 65_536,
                iops: Some((100, 256_000)),
                max_iops_per_gib: 1_000,
                throughput: None,
            },
            VolumeType::St1 | VolumeType::Sc1 => TypeLimits {
                min_gib: 125,
                max_gib: 16_384,
                iops: None,
                max_iops_per_gib: 0,
                throughput: None,
            },
            VolumeType::Standard => TypeLimits {
                min_gib: 1,
                max_gib: 1_024,
                iops: None,
                max_iops_per_gib: 0,
                throughput: None,
            },
        }
    }

    /// True for the types EBS Multi-Attach supports (io1, io2).
    pub fn multi_attach(self) -> bool {
        matches!(self, VolumeType::Io1 | VolumeType::Io2)
    }

    /// True when IOPS must be given (io1, io2).
    pub fn requires_iops(self) -> bool {
        matches!(self, VolumeType::Io1 | VolumeType::Io2)
    }
}

impl fmt::Display for VolumeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VolumeType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        VolumeType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| "expected one of gp3, gp2, io1, io2, st1, sc1, standard".to_owned())
    }
}

/// How IOPS were asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IopsRequest {
    /// Not given: the type's default.
    Default,
    /// A fixed number.
    Fixed(i32),
    /// Per GiB of size, optionally raised to the type's minimum.
    PerGib {
        /// IOPS per GiB.
        per_gib: i32,
        /// Raise to the type's minimum when the product falls short.
        allow_increase: bool,
    },
}

/// Parsed StorageClass parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeParams {
    /// Volume type.
    pub volume_type: VolumeType,
    /// IOPS.
    pub iops: IopsRequest,
    /// Throughput in MiB/s (gp3 only).
    pub throughput: Option<i32>,
    /// Encrypt at rest.
    pub encrypted: bool,
    /// KMS key (ID, alias or ARN).
    pub kms_key_id: Option<String>,
    /// Tags from `tagSpecification_N` and the sidecars' PVC/PV names.
    pub tags: BTreeMap<String, String>,
    /// Restore rate in MiB/s when created from a snapshot.
    pub initialization_rate: Option<i32>,
    /// EBS Multi-Attach (io1/io2 only).
    pub multi_attach: bool,
}

/// A fully resolved volume spec: what goes to CreateVolume except size,
/// zone and tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSpec {
    /// Volume type.
    pub volume_type: VolumeType,
    /// IOPS to provision.
    pub iops: Option<i32>,
    /// Throughput to provision.
    pub throughput: Option<i32>,
    /// Encrypt at rest.
    pub encrypted: bool,
    /// KMS key.
    pub kms_key_id: Option<String>,
    /// Initialization rate.
    pub initialization_rate: Option<i32>,
    /// EBS Multi-Attach.
    pub multi_attach: bool,
}

const WHAT: &str = "aws-ebs StorageClass parameter";
const WHAT_MUTABLE: &str = "aws-ebs mutable parameter";

/// The sidecars' PVC/PV name keys, turned into tags like the upstream driver does.
const NAME_TAGS: [(&str, &str); 3] = [
    (
        "csi.storage.k8s.io/pvc/name",
        "kubernetes.io/created-for/pvc/name",
    ),
    (
        "csi.storage.k8s.io/pvc/namespace",
        "kubernetes.io/created-for/pvc/namespace",
    ),
    (
        "csi.storage.k8s.io/pv/name",
        "kubernetes.io/created-for/pv/name",
    ),
];

fn positive(key: &str, value: Option<i32>) -> Result<Option<i32>> {
    match value {
        Some(v) if v <= 0 => Err(ProviderError::invalid_argument(format!(
            "{WHAT} `{key}` must be positive, got {v}"
        ))),
        other => Ok(other),
    }
}

/// Parses `key=value` tag specifications.
pub fn parse_tag(key: &str, raw: &str) -> Result<(String, String)> {
    let (k, v) = raw.split_once('=').ok_or_else(|| {
        ProviderError::invalid_argument(format!("{WHAT} `{key}`: expected key=value, got {raw:?}"))
    })?;
    let k = k.trim();
    if k.is_empty() || k.len() > 128 || v.len() > 256 {
        return Err(ProviderError::invalid_argument(format!(
            "{WHAT} `{key}`: tag keys are 1 to 128 characters and values at most 256"
        )));
    }
    if k.starts_with("aws:") || RESERVED_TAG_PREFIXES.iter().any(|p| k.starts_with(p)) {
        return Err(ProviderError::invalid_argument(format!(
            "{WHAT} `{key}`: the tag key {k:?} is reserved"
        )));
    }
    Ok((k.to_owned(), v.trim().to_owned()))
}

impl VolumeParams {
    /// Parses a StorageClass parameter map.
    pub fn parse(map: &BTreeMap<String, String>) -> Result<Self> {
        let mut p = Params::new(WHAT, map);
        let volume_type = p
            .take_parsed::<VolumeType>("volumeType")?
            .unwrap_or(VolumeType::Gp3);
        let iops = positive("iops", p.take_parsed::<i32>("iops")?)?;
        let per_gib = positive("iopsPerGB", p.take_parsed::<i32>("iopsPerGB")?)?;
        let allow_increase = p.take_bool("allowAutoIOPSPerGBIncrease")?.unwrap_or(false);
        let throughput = positive("throughput", p.take_parsed::<i32>("throughput")?)?;
        let encrypted = p.take_bool("encrypted")?;
        let kms_key_id = p
            .take("kmsKeyId")
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty());
        let initialization_rate = positive(
            "volumeInitializationRate",
            p.take_parsed::<i32>("volumeInitializationRate")?,
        )?;
        let multi_attach = p.take_bool("multiAttach")?.unwrap_or(false);
        // Deprecated upstream and meaningless now that io2 is always Block Express.
        let _ = p.take("blockExpress");
        let mut tags = BTreeMap::new();
        for (suffix, raw) in p.take_prefixed("tagSpecification_") {
            let (k, v) = parse_tag(&format!("tagSpecification_{suffix}"), &raw)?;
            tags.insert(k, v);
        }
        p.finish()?;
        for (param, tag) in NAME_TAGS {
            if let Some(v) = map.get(param) {
                tags.insert(tag.to_owned(), v.clone());
            }
        }

        let iops = match (iops, per_gib) {
            (Some(_), Some(_)) => {
                return Err(ProviderError::invalid_argument(format!(
                    "{WHAT}s `iops` and `iopsPerGB` are mutually exclusive"
                )));
            }
            (Some(n), None) => IopsRequest::Fixed(n),
            (None, Some(per_gib)) => IopsRequest::PerGib {
                per_gib,
                allow_increase,
            },
            (None, None) => IopsRequest::Default,
        };
        if encrypted == Some(false) && kms_key_id.is_some() {
            return Err(ProviderError::invalid_argument(
                "`kmsKeyId` needs `encrypted` to be true",
            ));
        }
        let params = Self {
            volume_type,
            iops,
            throughput,
            encrypted: encrypted.unwrap_or(false) || kms_key_id.is_some(),
            kms_key_id,
            tags,
            initialization_rate,
            multi_attach,
        };
        params.check_type()?;
        Ok(params)
    }

    /// Checks that IOPS and throughput fit the volume type.
    fn check_type(&self) -> Result<()> {
        let volume_type = self.volume_type;
        let limits = volume_type.limits();
        if self.iops != IopsRequest::Default && limits.iops.is_none() {
            return Err(ProviderError::invalid_argument(format!(
                "volume type {volume_type} does not take provisioned IOPS"
            )));
        }
        if volume_type.requires_iops() && self.iops == IopsRequest::Default {
            return Err(ProviderError::invalid_argument(format!(
                "volume type {volume_type} needs `iops` or `iopsPerGB`"
            )));
        }
        if self.throughput.is_some() && limits.throughput.is_none() {
            return Err(ProviderError::invalid_argument(format!(
                "volume type {volume_type} does not take `throughput`"
            )));
        }
        if self.multi_attach && !volume_type.multi_attach() {
            return Err(ProviderError::invalid_argument(format!(
                "`multiAttach` needs volume type io1 or io2 (EBS Multi-Attach), not {volume_type}"
            )));
        }
        Ok(())
    }

    /// Applies the mutable parameters of a CreateVolume request (the
    /// VolumeAttributesClass the claim names): they win over the
    /// StorageClass values, and the result is checked as a whole, so that
    /// a volume is created only with parameters ControllerModifyVolume
    /// would also accept.
    pub fn apply_mutable(&mut self, m: &ModifyParams) -> Result<()> {
        if let Some(t) = m.volume_type {
            self.volume_type = t;
        }
        if let Some(n) = m.iops {
            self.iops = IopsRequest::Fixed(n);
        }
        if let Some(t) = m.throughput {
            self.throughput = Some(t);
        }
        self.tags
            .extend(m.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.check_type().map_err(|e| {
            ProviderError::invalid_argument(format!(
                "the StorageClass and mutable parameters together are not valid: {}",
                e.message()
            ))
        })
    }

    /// Resolves IOPS for a size and checks every limit of the type.
    pub fn resolve(&self, size_gib: i64) -> Result<ResolvedSpec> {
        let limits = self.volume_type.limits();
        let iops = match (self.iops, limits.iops) {
            (IopsRequest::Default, _) | (_, None) => None,
            (IopsRequest::Fixed(n), Some(_)) => Some(n),
            (
                IopsRequest::PerGib {
                    per_gib,
                    allow_increase,
                },
                Some((min, max)),
            ) => {
                let wanted = i64::from(per_gib).saturating_mul(size_gib);
                // Upstream caps iopsPerGB at the type maximum rather than failing.
                let capped = wanted.min(i64::from(max));
                let value = if capped < i64::from(min) && allow_increase {
                    i64::from(min)
                } else {
                    capped
                };
                Some(i32::try_from(value).unwrap_or(max))
            }
        };
        if let (Some(n), Some((min, max))) = (iops, limits.iops) {
            if n < min || n > max {
                return Err(ProviderError::invalid_argument(format!(
                    "{n} IOPS is outside {min}..={max} for {}",
                    self.volume_type
                )));
            }
            let ceiling = i64::from(limits.max_iops_per_gib).saturating_mul(size_gib);
            if i64::from(n) > ceiling && i64::from(n) > i64::from(min) {
                return Err(ProviderError::invalid_argument(format!(
                    "{n} IOPS exceeds {} IOPS per GiB for a {size_gib} GiB {} volume",
                    limits.max_iops_per_gib, self.volume_type
                )));
            }
        }
        if let (Some(t), Some((min, max))) = (self.throughput, limits.throughput) {
            if t < min || t > max {
                return Err(ProviderError::invalid_argument(format!(
                    "throughput {t} MiB/s is outside {min}..={max} for {}",
                    self.volume_type
                )));
            }
        }
        Ok(ResolvedSpec {
            volume_type: self.volume_type,
            iops,
            throughput: self.throughput,
            encrypted: self.encrypted,
            kms_key_id: self.kms_key_id.clone(),
            initialization_rate: self.initialization_rate,
            multi_attach: self.multi_attach,
        })
    }
}

/// A stable digest of what a create request asked for besides its size,
/// stored as a tag so that a retry with different parameters is noticed
/// even after EC2 has forgotten the client token.
pub fn spec_fingerprint(
    spec: &ResolvedSpec,
    zone: &str,
    snapshot: Option<&str>,
    tags: &BTreeMap<String, String>,
) -> String {
    let mut h = Sha256::new();
    let mut fields = vec![
        ("type", spec.volume_type.as_str().to_owned()),
        ("iops", spec.iops.map(|v| v.to_string()).unwrap_or_default()),
        (
            "throughput",
            spec.throughput.map(|v| v.to_string()).unwrap_or_default(),
        ),
        ("encrypted", spec.encrypted.to_string()),
        ("kms", spec.kms_key_id.clone().unwrap_or_default()),
        (
            "rate",
            spec.initialization_rate
                .map(|v| v.to_string())
                .unwrap_or_default(),
        ),
        ("zone", zone.to_owned()),
        ("snapshot", snapshot.unwrap_or_default().to_owned()),
    ];
    // Only when set, so fingerprints of volumes made before it existed hold.
    if spec.multi_attach {
        fields.push(("multiAttach", "true".to_owned()));
    }
    for (k, v) in fields
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// EC2's ClientToken for a CSI name: the SHA-256 of the name in hex (64
/// characters, EC2's limit), or of `name-attempt` once a token is burnt.
pub fn client_token(name: &str, attempt: u32) -> String {
    let input = if attempt == 0 {
        name.to_owned()
    } else {
        format!("{name}-{attempt}")
    };
    hex::encode(Sha256::digest(input.as_bytes()))
}

/// The largest EBS volume of any type, GiB (io2).
pub const LARGEST_GIB: i64 = 65_536;

/// `bytes` rounded up to whole GiB, with checked arithmetic: negative
/// sizes are `InvalidArgument`, and nothing near `i64::MAX` wraps.
pub fn ceil_gib(bytes: i64) -> Result<i64> {
    if bytes < 0 {
        return Err(ProviderError::invalid_argument(
            "sizes must not be negative",
        ));
    }
    let whole = bytes.checked_div(GIB);
    let partial = bytes.checked_rem(GIB).map(|r| i64::from(r != 0));
    whole
        .zip(partial)
        .and_then(|(w, p)| w.checked_add(p))
        .ok_or_else(|| ProviderError::out_of_range(format!("{bytes} bytes is not a size")))
}

/// `gib` in bytes, `OutOfRange` when that does not fit an `i64`.
pub fn checked_gib_bytes(gib: i64) -> Result<i64> {
    gib.checked_mul(GIB).ok_or_else(|| {
        ProviderError::out_of_range(format!("{gib} GiB does not fit a 64-bit byte count"))
    })
}

/// Whole GiB for a request: at least `required` (rounded up), at least the
/// type's minimum, at most `limit` and the type's maximum. Zero `required`
/// means "no preference", which gives the type's minimum.
pub fn size_gib(required_bytes: i64, limit_bytes: i64, volume_type: VolumeType) -> Result<i64> {
    if required_bytes < 0 || limit_bytes < 0 {
        return Err(ProviderError::invalid_argument(
            "sizes must not be negative",
        ));
    }
    let limits = volume_type.limits();
    let wanted = ceil_gib(required_bytes)?.max(limits.min_gib);
    if wanted > limits.max_gib {
        return Err(ProviderError::out_of_range(format!(
            "{wanted} GiB exceeds the {} GiB maximum of {volume_type}",
            limits.max_gib
        )));
    }
    if limit_bytes > 0 && checked_gib_bytes(wanted)? > limit_bytes {
        return Err(ProviderError::out_of_range(format!(
            "a {volume_type} volume needs at least {wanted} GiB, more than the limit of {limit_bytes} bytes"
        )));
    }
    Ok(wanted)
}

/// Parsed VolumeAttributesClass parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModifyParams {
    /// New type.
    pub volume_type: Option<VolumeType>,
    /// New IOPS.
    pub iops: Option<i32>,
    /// New throughput.
    pub throughput: Option<i32>,
    /// Tags to add (`tagSpecification_N`).
    pub tags: BTreeMap<String, String>,
}

impl ModifyParams {
    /// Parses a mutable parameter map (`volumeType`, `iops`, `throughput`,
    /// `tagSpecification_N`), for ControllerModifyVolume and for the
    /// mutable parameters of CreateVolume alike.
    pub fn parse(map: &BTreeMap<String, String>) -> Result<Self> {
        let mut p = Params::new(WHAT_MUTABLE, map);
        let volume_type = p.take_parsed::<VolumeType>("volumeType")?;
        let iops = positive("iops", p.take_parsed::<i32>("iops")?)?;
        let throughput = positive("throughput", p.take_parsed::<i32>("throughput")?)?;
        let mut tags = BTreeMap::new();
        for (suffix, raw) in p.take_prefixed("tagSpecification_") {
            let (k, v) = parse_tag(&format!("tagSpecification_{suffix}"), &raw)?;
            tags.insert(k, v);
        }
        p.finish()?;
        Ok(Self {
            volume_type,
            iops,
            throughput,
            tags,
        })
    }

    /// True when nothing would change.
    pub fn is_empty(&self) -> bool {
        self.volume_type.is_none()
            && self.iops.is_none()
            && self.throughput.is_none()
            && self.tags.is_empty()
    }

    /// Checks the result against the limits of the type it ends with.
    pub fn check(&self, current_type: &str, size_gib: i64) -> Result<()> {
        let target = match self.volume_type {
            Some(t) => t,
            None => current_type.parse::<VolumeType>().map_err(|e| {
                ProviderError::internal(format!("volume has unknown type {current_type:?}: {e}"))
            })?,
        };
        let limits = target.limits();
        if size_gib < limits.min_gib {
            return Err(ProviderError::invalid_argument(format!(
                "a {size_gib} GiB volume is too small for {target} (minimum {} GiB)",
                limits.min_gib
            )));
        }
        match (self.iops, limits.iops) {
            (Some(_), None) => {
                return Err(ProviderError::invalid_argument(format!(
                    "volume type {target} does not take provisioned IOPS"
                )));
            }
            (Some(n), Some((min, max))) if n < min || n > max => {
                return Err(ProviderError::invalid_argument(format!(
                    "{n} IOPS is outside {min}..={max} for {target}"
                )));
            }
            _ => {}
        }
        match (self.throughput, limits.throughput) {
            (Some(_), None) => Err(ProviderError::invalid_argument(format!(
                "volume type {target} does not take `throughput`"
            ))),
            (Some(t), Some((min, max))) if t < min || t > max => {
                Err(ProviderError::invalid_argument(format!(
                    "throughput {t} MiB/s is outside {min}..={max} for {target}"
                )))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use omnidisk_provider_api::ErrorKind;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_to_unencrypted_gp3() {
        let p = VolumeParams::parse(&BTreeMap::new()).unwrap();
        assert_eq!(p.volume_type, VolumeType::Gp3);
        assert_eq!(p.iops, IopsRequest::Default);
        assert!(!p.encrypted);
        let spec = p.resolve(10).unwrap();
        assert_eq!(spec.iops, None);
    }

    #[test]
    fn all_parameters_parse() {
        let p = VolumeParams::parse(&map(&[
            ("volumeType", "GP3"),
            ("iops", "4000"),
            ("throughput", "250"),
            ("encrypted", "true"),
            ("kmsKeyId", "arn:aws:kms:us-east-1:123456789012:key/abc"),
            ("tagSpecification_1", "team=storage"),
            ("tagspecification_2", "env = prod"),
            ("volumeInitializationRate", "200"),
            ("blockExpress", "true"),
            ("csi.storage.k8s.io/pvc/name", "data"),
        ]))
        .unwrap();
        assert_eq!(p.iops, IopsRequest::Fixed(4000));
        assert_eq!(p.throughput, Some(250));
        assert!(p.encrypted);
        assert_eq!(p.tags.get("team").map(String::as_str), Some("storage"));
        assert_eq!(p.tags.get("env").map(String::as_str), Some("prod"));
        assert_eq!(
            p.tags
                .get("kubernetes.io/created-for/pvc/name")
                .map(String::as_str),
            Some("data")
        );
        let spec = p.resolve(100).unwrap();
        assert_eq!(spec.iops, Some(4000));
        assert_eq!(spec.initialization_rate, Some(200));
    }

    #[test]
    fn kms_key_implies_encryption_but_not_against_an_explicit_false() {
        let p = VolumeParams::parse(&map(&[("kmsKeyId", "alias/x")])).unwrap();
        assert!(p.encrypted);
        let err = VolumeParams::parse(&map(&[("kmsKeyId", "alias/x"), ("encrypted", "false")]))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn bad_combinations_are_invalid_arguments() {
        for bad in [
            vec![("iops", "3000"), ("iopsPerGB", "10")],
            vec![("volumeType", "gp2"), ("iops", "3000")],
            vec![("volumeType", "io2")],
            vec![
                ("volumeType", "io1"),
                ("throughput", "200"),
                ("iops", "1000"),
            ],
            vec![("volumeType", "nvme-magic")],
            vec![("iops", "-5")],
            vec![("iops", "many")],
            vec![("tagSpecification_1", "novalue")],
            vec![("tagSpecification_1", "CSIVolumeName=x")],
            vec![("multiAttach", "true")],
            vec![("volumeType", "gp2"), ("multiAttach", "true")],
            vec![
                ("volumeType", "io2"),
                ("iops", "100"),
                ("multiAttach", "yes please"),
            ],
        ] {
            let err = VolumeParams::parse(&map(&bad)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn iops_limits_are_checked_per_type_and_size() {
        let p = VolumeParams::parse(&map(&[("iops", "20000")])).unwrap();
        assert!(p.resolve(100).is_err());
        let p = VolumeParams::parse(&map(&[("volumeType", "io1"), ("iops", "5000")])).unwrap();
        // io1 allows 50 IOPS per GiB: 100 GiB carries 5000, 50 GiB does not.
        assert_eq!(p.resolve(100).unwrap().iops, Some(5000));
        assert!(p.resolve(50).is_err());
        let p = VolumeParams::parse(&map(&[("throughput", "2000")])).unwrap();
        assert!(p.resolve(100).is_err());
    }

    #[test]
    fn iops_per_gb_scales_caps_and_raises_when_allowed() {
        let p = VolumeParams::parse(&map(&[("volumeType", "io2"), ("iopsPerGB", "50")])).unwrap();
        assert_eq!(p.resolve(100).unwrap().iops, Some(5000));
        assert_eq!(p.resolve(10_000).unwrap().iops, Some(256_000));
        let p = VolumeParams::parse(&map(&[("iopsPerGB", "10")])).unwrap();
        assert!(p.resolve(10).is_err(), "100 IOPS is below gp3's minimum");
        let p = VolumeParams::parse(&map(&[
            ("iopsPerGB", "10"),
            ("allowAutoIOPSPerGBIncrease", "true"),
        ]))
        .unwrap();
        assert_eq!(p.resolve(10).unwrap().iops, Some(3000));
    }

    #[test]
    fn sizes_round_up_and_respect_type_and_limit() {
        assert_eq!(size_gib(1, 0, VolumeType::Gp3).unwrap(), 1);
        assert_eq!(size_gib(GIB + 1, 0, VolumeType::Gp3).unwrap(), 2);
        assert_eq!(size_gib(0, 0, VolumeType::St1).unwrap(), 125);
        assert_eq!(size_gib(10 * GIB, 0, VolumeType::Io2).unwrap(), 10);
        assert_eq!(size_gib(GIB, 0, VolumeType::Io1).unwrap(), 4);
        let err = size_gib(GIB + 1, GIB + 100, VolumeType::Gp3).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutOfRange);
        let err = size_gib(2000 * GIB, 0, VolumeType::Standard).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutOfRange);
        let err = size_gib(GIB, 10 * GIB, VolumeType::Sc1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutOfRange);
        assert!(size_gib(-1, 0, VolumeType::Gp3).is_err());
    }

    #[test]
    fn client_token_is_a_64_char_sha256_and_attempts_differ() {
        let t = client_token("pvc-0001", 0);
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(t, hex::encode(Sha256::digest(b"pvc-0001")));
        assert_ne!(client_token("pvc-0001", 1), t);
        assert_eq!(
            client_token("pvc-0001", 1),
            hex::encode(Sha256::digest(b"pvc-0001-1"))
        );
        let long = "x".repeat(500);
        assert_eq!(client_token(&long, 0).len(), 64);
    }

    #[test]
    fn fingerprint_changes_with_any_field() {
        let p = VolumeParams::parse(&map(&[("iops", "4000")])).unwrap();
        let spec = p.resolve(10).unwrap();
        let tags = BTreeMap::new();
        let base = spec_fingerprint(&spec, "us-east-1a", None, &tags);
        assert_eq!(
            base,
            spec_fingerprint(&spec.clone(), "us-east-1a", None, &tags)
        );
        assert_ne!(base, spec_fingerprint(&spec, "us-east-1b", None, &tags));
        let mut other = spec.clone();
        other.iops = Some(5000);
        assert_ne!(base, spec_fingerprint(&other, "us-east-1a", None, &tags));
        let tagged = map(&[("a", "b")]);
        assert_ne!(base, spec_fingerprint(&spec, "us-east-1a", None, &tagged));
        assert_ne!(
            base,
            spec_fingerprint(&spec, "us-east-1a", Some("snap-12345678"), &tags)
        );
    }

    #[test]
    fn mutable_parameters() {
        let m = ModifyParams::parse(&map(&[("volumeType", "io2"), ("iops", "8000")])).unwrap();
        assert_eq!(m.volume_type, Some(VolumeType::Io2));
        m.check("gp3", 100).unwrap();
        assert!(ModifyParams::parse(&map(&[("size", "1")])).is_err());
        let m = ModifyParams::parse(&map(&[("throughput", "500")])).unwrap();
        m.check("gp3", 100).unwrap();
        assert!(m.check("io1", 100).is_err());
        let m = ModifyParams::parse(&map(&[("volumeType", "st1")])).unwrap();
        assert!(m.check("gp3", 10).is_err(), "st1 needs 125 GiB");
        assert!(ModifyParams::parse(&BTreeMap::new()).unwrap().is_empty());
    }
}
