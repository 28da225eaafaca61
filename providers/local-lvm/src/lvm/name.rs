//! Validated LVM object names and tags: the only strings that reach an lvm
//! command line or a device path.

use std::fmt;

/// Longest LV or VG name lvm2 accepts.
pub const MAX_NAME_LEN: usize = 127;
/// Longest tag lvm2 2.03 accepts.
pub const MAX_TAG_LEN: usize = 1024;

/// Substrings lvm2 reserves for its internal sub-LVs (lvm(8), "VALID NAMES").
const RESERVED_LV_PARTS: [&str; 14] = [
    "_cdata", "_cmeta", "_corig", "_iorig", "_mimage", "_mlog", "_pmspare", "_rimage", "_rmeta",
    "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig",
];

/// Why a name or tag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty or longer than lvm allows.
    #[error("{what} {value:?} must be 1 to {max} characters long")]
    Length {
        /// What was being named.
        what: &'static str,
        /// The refused value.
        value: String,
        /// The limit.
        max: usize,
    },
    /// Contains a character lvm does not allow there.
    #[error("{what} {value:?} contains {bad:?}; allowed are {allowed}")]
    Character {
        /// What was being named.
        what: &'static str,
        /// The refused value.
        value: String,
        /// The first bad character.
        bad: char,
        /// The allowed set, for the message.
        allowed: &'static str,
    },
    /// Starts with '-', is "." or "..", or uses a reserved prefix/part.
    #[error("{what} {value:?} is reserved by lvm ({why})")]
    Reserved {
        /// What was being named.
        what: &'static str,
        /// The refused value.
        value: String,
        /// Which rule refused it.
        why: &'static str,
    },
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '_' | '.' | '-')
}

fn tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '_' | '+' | '.' | '-' | '/' | '=' | '!' | ':' | '&' | '#')
}

fn check_common(what: &'static str, value: &str) -> Result<(), NameError> {
    if value.is_empty() || value.len() > MAX_NAME_LEN {
        return Err(NameError::Length {
            what,
            value: value.to_owned(),
            max: MAX_NAME_LEN,
        });
    }
    if let Some(bad) = value.chars().find(|c| !name_char(*c)) {
        return Err(NameError::Character {
            what,
            value: value.to_owned(),
            bad,
            allowed: "A-Z a-z 0-9 + _ . -",
        });
    }
    let reserved = |why| NameError::Reserved {
        what,
        value: value.to_owned(),
        why,
    };
    if value.starts_with('-') {
        return Err(reserved("starts with '-'"));
    }
    if value == "." || value == ".." {
        return Err(reserved("'.' and '..' are not names"));
    }
    Ok(())
}

/// A volume group name lvm accepts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VgName(String);

impl VgName {
    /// Validates a VG name.
    pub fn new(value: &str) -> Result<Self, NameError> {
        check_common("volume group name", value)?;
        Ok(Self(value.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VgName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A logical volume name lvm accepts (also used for thin pools).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LvName(String);

impl LvName {
    /// Validates an LV name.
    pub fn new(value: &str) -> Result<Self, NameError> {
        const WHAT: &str = "logical volume name";
        check_common(WHAT, value)?;
        let reserved = |why| NameError::Reserved {
            what: WHAT,
            value: value.to_owned(),
            why,
        };
        if value.starts_with("snapshot") || value.starts_with("pvmove") {
            return Err(reserved("prefixes 'snapshot' and 'pvmove' are lvm's"));
        }
        if RESERVED_LV_PARTS.iter().any(|part| value.contains(part)) {
            return Err(reserved(
                "contains a sub-LV suffix such as _tdata or _rimage",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `vg/lv`, the way lvm commands address an LV.
    pub fn qualified(&self, vg: &VgName) -> String {
        format!("{}/{}", vg.0, self.0)
    }
}

impl fmt::Display for LvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An LVM tag (`--addtag`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(String);

impl Tag {
    /// Validates a tag.
    pub fn new(value: &str) -> Result<Self, NameError> {
        const WHAT: &str = "tag";
        if value.is_empty() || value.len() > MAX_TAG_LEN {
            return Err(NameError::Length {
                what: WHAT,
                value: value.to_owned(),
                max: MAX_TAG_LEN,
            });
        }
        if let Some(bad) = value.chars().find(|c| !tag_char(*c)) {
            return Err(NameError::Character {
                what: WHAT,
                value: value.to_owned(),
                bad,
                allowed: "A-Z a-z 0-9 _ + . - / = ! : & #",
            });
        }
        if value.starts_with('-') {
            return Err(NameError::Reserved {
                what: WHAT,
                value: value.to_owned(),
                why: "starts with '-'",
            });
        }
        Ok(Self(value.to_owned()))
    }

    /// The tag.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for ok in [
            "vg0",
            "omnidisk",
            "odv-pvc-1234",
            "a+b_c.d-e",
            &"x".repeat(127),
        ] {
            LvName::new(ok).unwrap();
            VgName::new(ok).unwrap();
        }
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        assert!(matches!(LvName::new(""), Err(NameError::Length { .. })));
        assert!(matches!(
            LvName::new(&"x".repeat(128)),
            Err(NameError::Length { .. })
        ));
        assert!(matches!(
            LvName::new("a b"),
            Err(NameError::Character { bad: ' ', .. })
        ));
        assert!(matches!(
            LvName::new("../etc"),
            Err(NameError::Character { bad: '/', .. })
        ));
        assert!(matches!(LvName::new("-x"), Err(NameError::Reserved { .. })));
        assert!(matches!(LvName::new(".."), Err(NameError::Reserved { .. })));
        assert!(matches!(
            LvName::new("snapshot1"),
            Err(NameError::Reserved { .. })
        ));
        assert!(matches!(
            LvName::new("x_tdata"),
            Err(NameError::Reserved { .. })
        ));
        assert!(matches!(
            VgName::new("vg;rm"),
            Err(NameError::Character { bad: ';', .. })
        ));
        // VG names may use lvm's LV-only reserved words.
        VgName::new("snapshots").unwrap();
    }

    #[test]
    fn tags_follow_lvm_charset() {
        Tag::new("omnidisk.csi.dev/name=abc-_").unwrap();
        assert!(matches!(
            Tag::new("a,b"),
            Err(NameError::Character { bad: ',', .. })
        ));
        assert!(matches!(Tag::new("a b"), Err(NameError::Character { .. })));
        assert!(matches!(Tag::new("-a"), Err(NameError::Reserved { .. })));
        assert!(matches!(
            Tag::new(&"t".repeat(1025)),
            Err(NameError::Length { .. })
        ));
    }

    #[test]
    fn qualified_names() {
        let vg = VgName::new("vg").unwrap();
        assert_eq!(LvName::new("lv").unwrap().qualified(&vg), "vg/lv");
    }
}
