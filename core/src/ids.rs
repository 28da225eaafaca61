//! The volume, snapshot and node ID encodings.
//!
//! A CSI volume or snapshot ID is `v1.<instance>.<provider id>`: the version
//! of this encoding, the provider instance that owns the object, and the
//! provider's own ID (which may itself contain dots). Calls that carry only
//! an ID route with it alone.
//!
//! A CSI node ID is what the attaching providers call the node: the node
//! name when no instance names it differently; the one ID they agree on
//! (an EC2 instance ID, say) otherwise, so that the published node IDs a
//! provider reports are CSI node IDs as they are; and only when instances
//! disagree, `v1;node=<name>;<instance>=<id>...`.

use std::collections::BTreeMap;
use std::fmt;

/// Longest ID the driver issues; the CSI spec lets COs cap IDs at 128 bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest node ID (CSI caps node IDs at 256 bytes).
pub const MAX_NODE_ID_BYTES: usize = 256;
const VERSION_PREFIX: &str = "v1.";

/// Why an ID did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The ID is empty.
    #[error("the ID is empty")]
    Empty,
    /// The ID is longer than the driver ever issues.
    #[error("the ID is longer than {MAX_ID_BYTES} bytes")]
    TooLong,
    /// The ID does not start with a known encoding version.
    #[error("the ID {0:?} is not one this driver issued (expected v1.<instance>.<id>)")]
    UnknownFormat(String),
    /// The instance part is not a valid instance name.
    #[error("the ID names an invalid provider instance {0:?}")]
    BadInstance(String),
    /// The node ID is malformed.
    #[error("malformed node ID {0:?}")]
    BadNodeId(String),
}

/// At most [`MAX_ID_BYTES`] of `raw` (at a character boundary), so an error
/// never carries an oversized caller value.
fn cut(raw: &str) -> String {
    let mut end = raw.len().min(MAX_ID_BYTES);
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    raw[..end].to_owned()
}

fn bad_node_id(raw: &str) -> IdError {
    IdError::BadNodeId(cut(raw))
}

/// True for names usable as provider instance names: lower-case DNS labels.
pub fn is_valid_instance_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A provider-scoped object ID: a volume ID or a snapshot ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScopedId {
    instance: String,
    local: String,
}

impl ScopedId {
    /// Wraps a provider's own ID. Fails if the result would be unusable.
    pub fn new(instance: &str, local: &str) -> Result<Self, IdError> {
        if !is_valid_instance_name(instance) {
            return Err(IdError::BadInstance(instance.to_owned()));
        }
        if local.is_empty() {
            return Err(IdError::Empty);
        }
        if local.chars().any(char::is_control) {
            return Err(IdError::UnknownFormat(local.to_owned()));
        }
        let id = Self {
            instance: instance.to_owned(),
            local: local.to_owned(),
        };
        if id.to_string().len() > MAX_ID_BYTES {
            return Err(IdError::TooLong);
        }
        Ok(id)
    }

    /// Parses a CSI ID.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        if raw.is_empty() {
            return Err(IdError::Empty);
        }
        if raw.len() > MAX_ID_BYTES {
            return Err(IdError::TooLong);
        }
        let rest = raw
            .strip_prefix(VERSION_PREFIX)
            .ok_or_else(|| IdError::UnknownFormat(cut(raw)))?;
        let (instance, local) = rest
            .split_once('.')
            .ok_or_else(|| IdError::UnknownFormat(cut(raw)))?;
        Self::new(instance, local)
    }

    /// The provider instance that owns the object.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The provider's own ID.
    pub fn local(&self) -> &str {
        &self.local
    }
}

impl fmt::Display for ScopedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{VERSION_PREFIX}{}.{}", self.instance, self.local)
    }
}

/// The CSI node ID: the node name plus the provider instances' own names
/// for the node where they differ from it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeId {
    /// The node name (Kubernetes node name / host name).
    pub name: String,
    /// instance -> the provider's node ID.
    pub per_instance: BTreeMap<String, String>,
}

impl NodeId {
    /// The provider's node ID for `instance`: its own entry, or the node
    /// name when the instance identifies nodes by name.
    pub fn for_instance(&self, instance: &str) -> Option<&str> {
        self.per_instance.get(instance).map(String::as_str)
    }

    /// Parses a CSI node ID.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        if raw.is_empty() {
            return Err(IdError::Empty);
        }
        if raw.len() > MAX_NODE_ID_BYTES || raw.chars().any(char::is_control) {
            return Err(bad_node_id(raw));
        }
        let Some(rest) = raw.strip_prefix("v1;") else {
            if raw.contains(';') {
                return Err(bad_node_id(raw));
            }
            return Ok(Self {
                name: raw.to_owned(),
                per_instance: BTreeMap::new(),
            });
        };
        let mut id = NodeId::default();
        for part in rest.split(';') {
            let (k, v) = part.split_once('=').ok_or_else(|| bad_node_id(raw))?;
            if v.is_empty() {
                return Err(bad_node_id(raw));
            }
            if k == "node" {
                id.name = v.to_owned();
            } else if is_valid_instance_name(k) {
                id.per_instance.insert(k.to_owned(), v.to_owned());
            } else {
                return Err(bad_node_id(raw));
            }
        }
        if id.name.is_empty() {
            return Err(bad_node_id(raw));
        }
        Ok(id)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids = self.per_instance.values();
        match ids.next() {
            None => return f.write_str(&self.name),
            Some(first) if ids.all(|id| id == first) => return f.write_str(first),
            Some(_) => {}
        }
        write!(f, "v1;node={}", self.name)?;
        for (k, v) in &self.per_instance {
            write!(f, ";{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_ids_round_trip() {
        let id = ScopedId::new("ebs-prod", "vol-0abc.def").unwrap();
        assert_eq!(id.to_string(), "v1.ebs-prod.vol-0abc.def");
        let back = ScopedId::parse(&id.to_string()).unwrap();
        assert_eq!(back, id);
        assert_eq!(back.instance(), "ebs-prod");
        assert_eq!(back.local(), "vol-0abc.def");
    }

    #[test]
    fn malformed_scoped_ids_are_refused() {
        for bad in [
            "", "vol-1", "v2.a.b", "v1.", "v1.a", "v1.a.", "v1.UP.x", "v1.-a.x", "v1.a.x\n",
        ] {
            assert!(ScopedId::parse(bad).is_err(), "{bad:?} parsed");
        }
        let long = format!("v1.a.{}", "x".repeat(200));
        assert_eq!(ScopedId::parse(&long), Err(IdError::TooLong));
        assert_eq!(ScopedId::new("a", &"x".repeat(200)), Err(IdError::TooLong));
    }

    #[test]
    fn instance_names_are_dns_labels() {
        assert!(is_valid_instance_name("lvm"));
        assert!(is_valid_instance_name("ebs-us-east-1"));
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_valid_instance_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn node_ids_round_trip() {
        let plain = NodeId::parse("worker-1").unwrap();
        assert_eq!(plain.name, "worker-1");
        assert_eq!(plain.to_string(), "worker-1");
        assert_eq!(plain.for_instance("lvm"), None);

        // One attaching identity: the CSI node ID is that identity, so the
        // provider's published node IDs are CSI node IDs as they are.
        let mut id = NodeId {
            name: "ip-10-0-0-1".into(),
            ..Default::default()
        };
        id.per_instance.insert("ebs".into(), "i-0123".into());
        id.per_instance.insert("ebs-2".into(), "i-0123".into());
        assert_eq!(id.to_string(), "i-0123");
        assert_eq!(NodeId::parse("i-0123").unwrap().name, "i-0123");

        // Instances that disagree need the long form.
        id.per_instance.insert("other".into(), "n-9".into());
        let text = id.to_string();
        assert_eq!(
            text,
            "v1;node=ip-10-0-0-1;ebs=i-0123;ebs-2=i-0123;other=n-9"
        );
        let back = NodeId::parse(&text).unwrap();
        assert_eq!(back, id);
        assert_eq!(back.for_instance("ebs"), Some("i-0123"));
    }

    #[test]
    fn malformed_node_ids_are_refused() {
        for bad in [
            "",
            "a;b",
            "v1;",
            "v1;ebs=i-1",
            "v1;node=",
            "v1;node=a;BAD=x",
            "v1;node=a;x",
        ] {
            assert!(NodeId::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
