//! How many EBS volumes this provider may attach to an instance.
//!
//! Getting this wrong leaves pods stuck (upstream issues on ENIs, Nitro's
//! shared limit and instance store). The model:
//!
//! - Xen instances: 40 attachments (AWS's Linux recommendation); the root
//!   volume and launch-time volumes take slots.
//! - Nitro instances with a *shared* limit: 28 slots shared by ENIs, EBS
//!   volumes (root included) and NVMe instance store.
//! - Nitro instances with a *dedicated* EBS limit (7th generation onward):
//!   ENIs do not count. The limit grows with the size on some types; this
//!   table uses the smallest documented figure, 32, so it never promises
//!   slots that are not there. Set `node.max_volumes_per_node` to use more.
//!
//! NVMe instance store volumes are not visible in IMDS on Nitro; count them
//! in `node.reserved_attachments` on `d` types that have them.

/// How an instance type counts attachments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachmentModel {
    /// Xen: a fixed count of block devices.
    Xen,
    /// Nitro with one limit shared with network interfaces.
    NitroShared,
    /// Nitro with an EBS-only limit.
    NitroDedicated,
}

/// Instance families built on Xen (the previous generations).
const XEN_FAMILIES: &[&str] = &[
    "t1", "t2", "m1", "m2", "m3", "m4", "c1", "c3", "c4", "r3", "r4", "x1", "x1e", "d2", "h1",
    "i2", "i3", "g2", "g3", "g3s", "p2", "p3", "f1", "cc2", "cr1", "hs1",
];

/// Nitro families with a dedicated EBS attachment limit.
const DEDICATED_FAMILIES: &[&str] = &[
    "m7i",
    "m7i-flex",
    "m7a",
    "c7i",
    "c7i-flex",
    "c7a",
    "r7i",
    "r7a",
    "r7iz",
    "m8g",
    "m8gd",
    "c8g",
    "c8gd",
    "r8g",
    "r8gd",
    "x8g",
    "m8i",
    "m8i-flex",
    "c8i",
    "c8i-flex",
    "r8i",
    "r8i-flex",
    "i7ie",
    "i7i",
    "i8g",
    "u7i-12tb",
    "u7i-8tb",
    "u7i-6tb",
    "u7in-16tb",
    "u7in-24tb",
    "u7in-32tb",
];

const XEN_TOTAL: i64 = 40;
const NITRO_SHARED_TOTAL: i64 = 28;
const NITRO_DEDICATED_MIN: i64 = 32;

/// The family of an instance type (`m5d` for `m5d.2xlarge`).
pub fn family(instance_type: &str) -> &str {
    instance_type.split('.').next().unwrap_or(instance_type)
}

/// The attachment model of an instance type. Unknown families are assumed
/// to be Nitro with a shared limit, the more conservative Nitro reading.
pub fn model(instance_type: &str) -> AttachmentModel {
    let fam = family(instance_type);
    // p3dn and i3.metal run on Nitro although their families are Xen.
    if instance_type == "p3dn.24xlarge" || instance_type == "i3.metal" {
        return AttachmentModel::NitroShared;
    }
    if XEN_FAMILIES.contains(&fam) {
        AttachmentModel::Xen
    } else if DEDICATED_FAMILIES.contains(&fam) {
        AttachmentModel::NitroDedicated
    } else {
        AttachmentModel::NitroShared
    }
}

/// What is already using attachment slots on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotUsage {
    /// Network interfaces attached to the instance.
    pub network_interfaces: i64,
    /// EBS volumes from the launch block device mapping, root included.
    pub launch_volumes: i64,
    /// Extra slots kept free by configuration.
    pub reserved: i64,
}

/// The number of volumes this provider may attach: the type's total minus
/// what is in use, never negative.
pub fn max_volumes(instance_type: &str, usage: SlotUsage) -> i64 {
    let launch = usage.launch_volumes.max(1);
    let free = match model(instance_type) {
        AttachmentModel::Xen => XEN_TOTAL - launch,
        AttachmentModel::NitroShared => {
            NITRO_SHARED_TOTAL - launch - usage.network_interfaces.max(1)
        }
        AttachmentModel::NitroDedicated => NITRO_DEDICATED_MIN - launch,
    };
    (free - usage.reserved).max(0)
}

/// Counts launch-time EBS volumes from the names IMDS lists under
/// `block-device-mapping/` (`ami`, `root`, `ebs1`, `ephemeral0`, ...): the
/// root once (listed as both `ami` and `root`), plus every `ebsN`.
pub fn launch_volumes_from_mapping<'a>(names: impl IntoIterator<Item = &'a str>) -> i64 {
    let ebs = names
        .into_iter()
        .map(|n| n.trim().trim_end_matches('/'))
        .filter(|n| {
            n.strip_prefix("ebs")
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .count();
    1 + i64::try_from(ebs).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_by_family() {
        assert_eq!(model("m4.large"), AttachmentModel::Xen);
        assert_eq!(model("t2.micro"), AttachmentModel::Xen);
        assert_eq!(model("i3.metal"), AttachmentModel::NitroShared);
        assert_eq!(model("m5.large"), AttachmentModel::NitroShared);
        assert_eq!(model("m5d.2xlarge"), AttachmentModel::NitroShared);
        assert_eq!(model("m7i.large"), AttachmentModel::NitroDedicated);
        assert_eq!(model("c8g.medium"), AttachmentModel::NitroDedicated);
        assert_eq!(model("brand-new.large"), AttachmentModel::NitroShared);
    }

    #[test]
    fn shared_nitro_limit_counts_enis_and_root() {
        let usage = SlotUsage {
            network_interfaces: 3,
            launch_volumes: 1,
            reserved: 0,
        };
        assert_eq!(max_volumes("m5.xlarge", usage), 28 - 1 - 3);
        // Dedicated limits ignore network interfaces.
        assert_eq!(max_volumes("m7i.xlarge", usage), 32 - 1);
        assert_eq!(max_volumes("m4.xlarge", usage), 40 - 1);
    }

    #[test]
    fn reserved_slots_and_floors() {
        let usage = SlotUsage {
            network_interfaces: 0,
            launch_volumes: 0,
            reserved: 2,
        };
        // At least one ENI and the root volume always exist.
        assert_eq!(max_volumes("m5.large", usage), 28 - 1 - 1 - 2);
        let crowded = SlotUsage {
            network_interfaces: 30,
            launch_volumes: 1,
            reserved: 0,
        };
        assert_eq!(max_volumes("m5.large", crowded), 0);
    }

    #[test]
    fn launch_volumes_count_root_once() {
        assert_eq!(launch_volumes_from_mapping(["ami", "root"]), 1);
        assert_eq!(
            launch_volumes_from_mapping(["ami", "root", "ebs1", "ebs2", "ephemeral0"]),
            3
        );
        assert_eq!(launch_volumes_from_mapping(["ebsx", "ebs"]), 1);
    }
}
