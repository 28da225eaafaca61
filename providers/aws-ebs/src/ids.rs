//! Validated EC2 identifiers.
//!
//! Every ID that comes from a request is checked here before it reaches an
//! EC2 call, a filesystem path or a log line, so a hostile or mangled ID can
//! never name a device file or smuggle characters into a filter.

use std::fmt;

/// Why a string is not a valid EC2 identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not `<prefix>-` followed by 8 to 17 lower-case hex digits.
    #[error("{value:?} is not a valid EC2 {what} ID (expected {prefix}-<8 to 17 hex digits>)")]
    Malformed {
        /// What kind of ID was expected.
        what: &'static str,
        /// The expected prefix.
        prefix: &'static str,
        /// The rejected text (bounded, control characters escaped by Debug).
        value: String,
    },
}

fn check(value: &str, prefix: &'static str, what: &'static str) -> Result<(), IdError> {
    let ok = value
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hex| {
            (8..=17).contains(&hex.len())
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(IdError::Malformed {
            what,
            prefix,
            value: value.chars().take(64).collect(),
        })
    }
}

macro_rules! ec2_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates `value`.
            pub fn new(value: &str) -> Result<Self, IdError> {
                check(value, $prefix, $what)?;
                Ok(Self(value.to_owned()))
            }

            /// The ID as EC2 spells it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
    };
}

ec2_id!(
    /// An EBS volume ID, `vol-0123456789abcdef0`.
    VolumeId,
    "vol",
    "volume"
);
ec2_id!(
    /// An EBS snapshot ID, `snap-0123456789abcdef0`.
    SnapshotId,
    "snap",
    "snapshot"
);
ec2_id!(
    /// An EC2 instance ID, `i-0123456789abcdef0`.
    InstanceId,
    "i",
    "instance"
);

impl VolumeId {
    /// The NVMe serial number EBS gives the volume's controller: the ID
    /// without its dash (`vol0123456789abcdef0`).
    pub fn nvme_serial(&self) -> String {
        self.0.replacen('-', "", 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_short_and_long_ids() {
        assert!(VolumeId::new("vol-1234abcd").is_ok());
        assert!(VolumeId::new("vol-0123456789abcdef0").is_ok());
        assert!(SnapshotId::new("snap-0123456789abcdef0").is_ok());
        assert!(InstanceId::new("i-0123456789abcdef0").is_ok());
    }

    #[test]
    fn rejects_anything_that_could_escape_a_path_or_filter() {
        for bad in [
            "",
            "vol-",
            "vol-123",
            "vol-0123456789abcdef01",
            "vol-../../sda",
            "vol-ABCDEF12",
            "snap-0123456789abcdef0",
            "vol-1234abcd\n",
            "xvol-1234abcd",
        ] {
            assert!(VolumeId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(InstanceId::new("vol-1234abcd").is_err());
    }

    #[test]
    fn nvme_serial_drops_the_dash() {
        let id = VolumeId::new("vol-0123456789abcdef0").unwrap();
        assert_eq!(id.nvme_serial(), "vol0123456789abcdef0");
    }
}
