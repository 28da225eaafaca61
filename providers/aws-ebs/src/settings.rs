//! Instance settings: the TOML table of one `kind = "aws-ebs"` instance.
//!
//! Every table refuses unknown keys, so a misspelt setting is a start-up
//! error naming the key rather than a silently ignored default. Secrets are
//! held in [`Secret`], whose `Debug` never shows the value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Why the settings are unusable (beyond what deserialization checks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A static credential field is empty.
    #[error("credentials: `{0}` is empty")]
    EmptyCredential(&'static str),
    /// A profile name is empty.
    #[error("credentials: the profile name is empty")]
    EmptyProfile,
    /// A duration is zero where a wait needs time.
    #[error("`{0}` must be greater than zero")]
    ZeroDuration(&'static str),
    /// The endpoint is not an http(s) URL.
    #[error("`{key}` must be an http:// or https:// URL, got {value:?}")]
    BadUrl {
        /// The setting.
        key: &'static str,
        /// Its value.
        value: String,
    },
    /// A node override is malformed.
    #[error("node.{key}: {reason}")]
    BadNodeOverride {
        /// The setting.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A tag collides with the tags the provider sets itself.
    #[error("extra_tags: the key {0:?} is reserved for the provider's own tags")]
    ReservedTag(String),
}

/// A secret string. Its `Debug` and `Display` print a placeholder.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is handed to the SDK.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where AWS credentials come from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum Credentials {
    /// Keys written in the settings (mount the file from a Kubernetes Secret).
    Static {
        /// The access key ID.
        access_key_id: Secret,
        /// The secret access key.
        secret_access_key: Secret,
        /// A session token for temporary credentials.
        #[serde(default)]
        session_token: Option<Secret>,
    },
    /// A named profile from the shared config and credentials files.
    Profile {
        /// The profile name.
        name: String,
    },
    /// The default chain: environment, web identity (IRSA), EKS Pod
    /// Identity, ECS container credentials, instance metadata.
    #[default]
    Default,
}

/// How long the provider waits for EC2, and how it polls.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Waits {
    /// Overall deadline for a new volume to become `available`.
    pub create_seconds: u64,
    /// Overall deadline for an attachment to become `attached`.
    pub attach_seconds: u64,
    /// Overall deadline for a detachment to finish.
    pub detach_seconds: u64,
    /// Overall deadline for a modification to reach `optimizing`.
    pub modify_seconds: u64,
    /// First poll interval; it grows by half each round.
    pub poll_initial_ms: u64,
    /// Longest poll interval.
    pub poll_max_ms: u64,
    /// How long concurrent describe requests are collected into one call.
    pub batch_window_ms: u64,
    /// Starting pause after EC2 throttles a request; it doubles on each
    /// further throttle and decays on success.
    pub throttle_base_ms: u64,
    /// Longest pause after throttling.
    pub throttle_max_ms: u64,
}

impl Default for Waits {
    fn default() -> Self {
        Self {
            create_seconds: 300,
            attach_seconds: 300,
            detach_seconds: 300,
            modify_seconds: 1800,
            poll_initial_ms: 500,
            poll_max_ms: 10_000,
            batch_window_ms: 200,
            throttle_base_ms: 250,
            throttle_max_ms: 30_000,
        }
    }
}

/// Node-side settings and overrides of what IMDS would say.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSettings {
    /// The EC2 instance ID (skips IMDS for it).
    pub instance_id: Option<String>,
    /// The availability zone (skips IMDS for it).
    pub zone: Option<String>,
    /// The instance type (skips IMDS for it).
    pub instance_type: Option<String>,
    /// The IMDS endpoint.
    pub imds_endpoint: String,
    /// IMDS request timeout.
    pub imds_timeout_seconds: u64,
    /// Fixed maximum of volumes this provider may attach to the node.
    pub max_volumes_per_node: Option<i64>,
    /// Attachment slots to keep free for volumes not managed here (on top
    /// of the root volume and the ENIs, which are counted from IMDS).
    pub reserved_attachments: i64,
    /// Where device nodes live.
    pub dev_root: PathBuf,
    /// Where sysfs is mounted.
    pub sys_root: PathBuf,
    /// How long to wait for an attached volume's device to appear.
    pub device_wait_seconds: u64,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            instance_id: None,
            zone: None,
            instance_type: None,
            imds_endpoint: "http://169.254.169.254".into(),
            imds_timeout_seconds: 5,
            max_volumes_per_node: None,
            reserved_attachments: 0,
            dev_root: PathBuf::from("/dev"),
            sys_root: PathBuf::from("/sys"),
            device_wait_seconds: 60,
        }
    }
}

/// The settings of one aws-ebs instance.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// AWS region; absent = from the environment or profile.
    pub region: Option<String>,
    /// EC2 endpoint override (moto, EC2-compatible clouds, VPC endpoints).
    pub endpoint_url: Option<String>,
    /// Where credentials come from.
    pub credentials: Credentials,
    /// Tags added to every volume and snapshot.
    pub extra_tags: BTreeMap<String, String>,
    /// Cluster ID: tags `kubernetes.io/cluster/<id>=owned` and
    /// `omnidisk.csi.dev/cluster=<id>`, and scopes ListVolumes.
    pub cluster_id: Option<String>,
    /// Zone used when a create request carries no topology.
    pub default_zone: Option<String>,
    /// Timeout of every single EC2 call.
    pub api_timeout_seconds: u64,
    /// Wait deadlines and polling.
    pub waits: Waits,
    /// Node settings.
    pub node: NodeSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            region: None,
            endpoint_url: None,
            credentials: Credentials::Default,
            extra_tags: BTreeMap::new(),
            cluster_id: None,
            default_zone: None,
            api_timeout_seconds: 30,
            waits: Waits::default(),
            node: NodeSettings::default(),
        }
    }
}

/// Tag keys the provider sets itself; extra tags may not override them.
pub const RESERVED_TAG_PREFIXES: [&str; 3] = [
    "CSIVolumeName",
    "CSIVolumeSnapshotName",
    "omnidisk.csi.dev/",
];

fn check_url(key: &'static str, value: &str) -> Result<(), SettingsError> {
    if value.starts_with("http://") || value.starts_with("https://") {
        Ok(())
    } else {
        Err(SettingsError::BadUrl {
            key,
            value: value.to_owned(),
        })
    }
}

impl Settings {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), SettingsError> {
        match &self.credentials {
            Credentials::Static {
                access_key_id,
                secret_access_key,
                ..
            } => {
                if access_key_id.expose().trim().is_empty() {
                    return Err(SettingsError::EmptyCredential("access_key_id"));
                }
                if secret_access_key.expose().trim().is_empty() {
                    return Err(SettingsError::EmptyCredential("secret_access_key"));
                }
            }
            Credentials::Profile { name } if name.trim().is_empty() => {
                return Err(SettingsError::EmptyProfile);
            }
            _ => {}
        }
        for (key, value) in [
            ("api_timeout_seconds", self.api_timeout_seconds),
            ("waits.create_seconds", self.waits.create_seconds),
            ("waits.attach_seconds", self.waits.attach_seconds),
            ("waits.detach_seconds", self.waits.detach_seconds),
            ("waits.modify_seconds", self.waits.modify_seconds),
            ("waits.poll_initial_ms", self.waits.poll_initial_ms),
            ("waits.poll_max_ms", self.waits.poll_max_ms),
            ("waits.throttle_base_ms", self.waits.throttle_base_ms),
            ("node.imds_timeout_seconds", self.node.imds_timeout_seconds),
        ] {
            if value == 0 {
                return Err(SettingsError::ZeroDuration(key));
            }
        }
        if let Some(url) = &self.endpoint_url {
            check_url("endpoint_url", url)?;
        }
        check_url("node.imds_endpoint", &self.node.imds_endpoint)?;
        if let Some(id) = &self.node.instance_id {
            crate::ids::InstanceId::new(id).map_err(|e| SettingsError::BadNodeOverride {
                key: "instance_id",
                reason: e.to_string(),
            })?;
        }
        if let Some(max) = self.node.max_volumes_per_node {
            if max < 0 {
                return Err(SettingsError::BadNodeOverride {
                    key: "max_volumes_per_node",
                    reason: "must not be negative".into(),
                });
            }
        }
        if self.node.reserved_attachments < 0 {
            return Err(SettingsError::BadNodeOverride {
                key: "reserved_attachments",
                reason: "must not be negative".into(),
            });
        }
        if let Some(key) = self
            .extra_tags
            .keys()
            .find(|k| RESERVED_TAG_PREFIXES.iter().any(|p| k.starts_with(p)))
        {
            return Err(SettingsError::ReservedTag(key.clone()));
        }
        Ok(())
    }

    /// The per-call timeout.
    pub fn api_timeout(&self) -> Duration {
        Duration::from_secs(self.api_timeout_seconds)
    }
}

#[cfg(test)]
mod tests {
    use omnidisk_provider_api::params::parse_settings;

    use super::*;

    #[test]
    fn defaults_apply_to_an_empty_table() {
        let s: Settings = parse_settings("").unwrap();
        assert_eq!(s.api_timeout_seconds, 30);
        assert_eq!(s.credentials, Credentials::Default);
        assert_eq!(s.node.dev_root, PathBuf::from("/dev"));
        s.validate().unwrap();
    }

    #[test]
    fn static_keys_parse_and_never_show_in_debug() {
        let s: Settings = parse_settings(
            r#"
            region = "us-east-1"
            endpoint_url = "http://127.0.0.1:5000"
            [credentials]
            source = "static"
            access_key_id = "AKIDEXAMPLE"
            secret_access_key = "wJalrXUtnFEMI-very-secret"
            session_token = "token-also-secret"
            "#,
        )
        .unwrap();
        s.validate().unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("very-secret"), "{debug}");
        assert!(!debug.contains("also-secret"), "{debug}");
        assert!(!debug.contains("AKIDEXAMPLE"), "{debug}");
        match s.credentials {
            Credentials::Static {
                secret_access_key, ..
            } => {
                assert_eq!(secret_access_key.expose(), "wJalrXUtnFEMI-very-secret")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse_settings::<Settings>("regoin = \"x\"").unwrap_err();
        assert!(err.message().contains("regoin"), "{}", err.message());
        let err = parse_settings::<Settings>(
            "[credentials]\nsource = \"profile\"\nname = \"a\"\nextra = 1\n",
        )
        .unwrap_err();
        assert!(err.message().contains("extra"), "{}", err.message());
        let err = parse_settings::<Settings>("[waits]\ncreate_secs = 1\n").unwrap_err();
        assert!(err.message().contains("create_secs"), "{}", err.message());
        let err = parse_settings::<Settings>("[credentials]\nsource = \"magic\"\n").unwrap_err();
        assert!(err.message().contains("credentials"), "{}", err.message());
    }

    #[test]
    fn validation_catches_empty_keys_bad_urls_and_reserved_tags() {
        let s: Settings = parse_settings(
            "[credentials]\nsource = \"static\"\naccess_key_id = \"\"\nsecret_access_key = \"x\"\n",
        )
        .unwrap();
        assert_eq!(
            s.validate(),
            Err(SettingsError::EmptyCredential("access_key_id"))
        );
        let s: Settings = parse_settings("endpoint_url = \"127.0.0.1:5000\"").unwrap();
        assert!(matches!(s.validate(), Err(SettingsError::BadUrl { .. })));
        let s: Settings = parse_settings("[extra_tags]\nCSIVolumeName = \"x\"\n").unwrap();
        assert!(matches!(s.validate(), Err(SettingsError::ReservedTag(_))));
        let s: Settings = parse_settings("[node]\ninstance_id = \"../etc\"\n").unwrap();
        assert!(matches!(
            s.validate(),
            Err(SettingsError::BadNodeOverride { .. })
        ));
        let s: Settings = parse_settings("api_timeout_seconds = 0").unwrap();
        assert_eq!(
            s.validate(),
            Err(SettingsError::ZeroDuration("api_timeout_seconds"))
        );
    }
}
