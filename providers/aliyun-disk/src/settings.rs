//! Instance settings: the TOML table of one `aliyun-disk` instance.
//!
//! Every key has a default except the credentials' secrets; see
//! `config/aliyun-disk.toml` for a commented example.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::sign::SignatureVersion;

/// The default instance metadata service.
pub const DEFAULT_METADATA_BASE_URL: &str = "http://100.100.100.200";

/// A secret string: deserialises like a string, never prints.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the instance gets its AccessKey from.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialSettings {
    /// A long-lived AccessKey pair written in the settings (mounted from a
    /// Kubernetes Secret).
    AccessKey {
        /// The AccessKey ID.
        access_key_id: String,
        /// The AccessKey secret.
        access_key_secret: Secret,
    },
    /// A temporary STS token; calls fail once it expires.
    Sts {
        /// The temporary AccessKey ID (`STS.` prefix).
        access_key_id: String,
        /// The temporary AccessKey secret.
        access_key_secret: Secret,
        /// The security token.
        security_token: Secret,
        /// When the token expires (RFC 3339, UTC).
        expiration: String,
    },
    /// `ALIBABA_CLOUD_ACCESS_KEY_ID`, `ALIBABA_CLOUD_ACCESS_KEY_SECRET` and
    /// optionally `ALIBABA_CLOUD_SECURITY_TOKEN`, read at each call, so a
    /// rotated value is used without a restart.
    #[default]
    Env,
    /// The ECS RAM role of the instance, from the metadata service,
    /// refreshed before it expires.
    RamRole {
        /// The role name; empty = the one the metadata service lists.
        #[serde(default)]
        role_name: String,
        /// Refresh this many seconds before expiry.
        #[serde(default = "default_refresh_before_seconds")]
        refresh_before_seconds: u64,
    },
}

fn default_refresh_before_seconds() -> u64 {
    300
}

/// Overall deadlines of the waits that follow an asynchronous call.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WaitSettings {
    /// CreateDisk until `Available`.
    pub create_seconds: u64,
    /// AttachDisk until `In_use`.
    pub attach_seconds: u64,
    /// DetachDisk until `Available`.
    pub detach_seconds: u64,
    /// ResizeDisk / ModifyDiskSpec until the new size or spec shows.
    pub modify_seconds: u64,
    /// Delay between two status polls of one waiter.
    pub poll_interval_ms: u64,
    /// How long DescribeDisks requests are gathered into one call.
    pub batch_window_ms: u64,
    /// NodeStage: how long to wait for the device to appear.
    pub device_seconds: u64,
}

impl Default for WaitSettings {
    fn default() -> Self {
        Self {
            create_seconds: 300,
            attach_seconds: 120,
            detach_seconds: 120,
            modify_seconds: 300,
            poll_interval_ms: 1000,
            batch_window_ms: 100,
            device_seconds: 60,
        }
    }
}

impl WaitSettings {
    /// `create_seconds` as a duration.
    pub fn create(&self) -> Duration {
        Duration::from_secs(self.create_seconds)
    }
    /// `attach_seconds` as a duration.
    pub fn attach(&self) -> Duration {
        Duration::from_secs(self.attach_seconds)
    }
    /// `detach_seconds` as a duration.
    pub fn detach(&self) -> Duration {
        Duration::from_secs(self.detach_seconds)
    }
    /// `modify_seconds` as a duration.
    pub fn modify(&self) -> Duration {
        Duration::from_secs(self.modify_seconds)
    }
    /// `poll_interval_ms` as a duration.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(1))
    }
    /// `batch_window_ms` as a duration.
    pub fn batch_window(&self) -> Duration {
        Duration::from_millis(self.batch_window_ms)
    }
    /// `device_seconds` as a duration.
    pub fn device(&self) -> Duration {
        Duration::from_secs(self.device_seconds)
    }
}

/// Node-side overrides; anything left empty comes from the metadata service.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSettings {
    /// The ECS instance ID of this node.
    pub instance_id: String,
    /// The zone of this node.
    pub zone_id: String,
    /// Data disks this node may hold; 0 = the default for its family.
    pub max_volumes_per_node: i64,
    /// Data-disk limits by instance family (`g7`, `t6-c1m1`, ...), used when
    /// `max_volumes_per_node` is 0; families not listed get 16.
    pub max_volumes_by_family: BTreeMap<String, i64>,
    /// Where device nodes live (tests point it at a temporary tree).
    pub device_root: String,
    /// Where sysfs is mounted.
    pub sys_root: String,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            instance_id: String::new(),
            zone_id: String::new(),
            max_volumes_per_node: 0,
            max_volumes_by_family: BTreeMap::new(),
            device_root: "/dev".into(),
            sys_root: "/sys".into(),
        }
    }
}

/// The settings of one `aliyun-disk` instance.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AliyunSettings {
    /// The region, e.g. `cn-hangzhou`; empty = from the metadata service.
    pub region_id: String,
    /// Endpoint URL override; empty = `https://ecs.<region>.aliyuncs.com`.
    pub endpoint: String,
    /// Where the AccessKey comes from.
    pub credentials: CredentialSettings,
    /// Which request signature to send.
    pub signature_version: SignatureVersion,
    /// Timeout of one API call, in seconds.
    pub api_timeout_seconds: u64,
    /// How many times one call is repeated after throttling or a transient
    /// failure (within the caller's deadline).
    pub max_retries: u32,
    /// Wait deadlines and poll intervals.
    pub waits: WaitSettings,
    /// The zone used when a request carries no topology; empty = refuse such
    /// requests.
    pub default_zone_id: String,
    /// Category fallback list used when a StorageClass names none.
    pub default_categories: Vec<String>,
    /// Resource group for new disks and snapshots when the StorageClass names none.
    pub resource_group_id: String,
    /// Tags put on every disk and snapshot this instance creates.
    pub extra_tags: BTreeMap<String, String>,
    /// Node-side settings.
    pub node: NodeSettings,
    /// Base URL of the instance metadata service.
    pub metadata_base_url: String,
}

impl Default for AliyunSettings {
    fn default() -> Self {
        Self {
            region_id: String::new(),
            endpoint: String::new(),
            credentials: CredentialSettings::default(),
            signature_version: SignatureVersion::default(),
            api_timeout_seconds: 30,
            max_retries: 8,
            waits: WaitSettings::default(),
            default_zone_id: String::new(),
            default_categories: vec![
                "cloud_essd".into(),
                "cloud_ssd".into(),
                "cloud_efficiency".into(),
            ],
            resource_group_id: String::new(),
            extra_tags: BTreeMap::new(),
            node: NodeSettings::default(),
            metadata_base_url: DEFAULT_METADATA_BASE_URL.into(),
        }
    }
}

impl AliyunSettings {
    /// `api_timeout_seconds` as a duration.
    pub fn api_timeout(&self) -> Duration {
        Duration::from_secs(self.api_timeout_seconds.max(1))
    }

    /// The endpoint for `region`.
    pub fn endpoint_for(&self, region: &str) -> String {
        if self.endpoint.is_empty() {
            format!("https://ecs.{region}.aliyuncs.com/")
        } else {
            self.endpoint.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnidisk_provider_api::params::parse_settings;

    #[test]
    fn defaults_apply_to_an_empty_table() {
        let s: AliyunSettings = parse_settings("").unwrap();
        assert_eq!(s.api_timeout(), Duration::from_secs(30));
        assert_eq!(s.credentials, CredentialSettings::Env);
        assert_eq!(s.signature_version, SignatureVersion::V3);
        assert_eq!(s.metadata_base_url, DEFAULT_METADATA_BASE_URL);
        assert_eq!(
            s.endpoint_for("cn-beijing"),
            "https://ecs.cn-beijing.aliyuncs.com/"
        );
    }

    #[test]
    fn every_credential_source_parses() {
        let s: AliyunSettings = parse_settings(
            "region_id = \"cn-hangzhou\"\n[credentials]\nsource = \"access_key\"\naccess_key_id = \"LTAI\"\naccess_key_secret = \"s3cret\"\n",
        )
        .unwrap();
        assert!(matches!(
            s.credentials,
            CredentialSettings::AccessKey { .. }
        ));
        let s: AliyunSettings = parse_settings(
            "[credentials]\nsource = \"sts\"\naccess_key_id = \"STS.x\"\naccess_key_secret = \"s\"\nsecurity_token = \"t\"\nexpiration = \"2030-01-01T00:00:00Z\"\n",
        )
        .unwrap();
        assert!(matches!(s.credentials, CredentialSettings::Sts { .. }));
        let s: AliyunSettings =
            parse_settings("[credentials]\nsource = \"ram_role\"\nrole_name = \"csi\"\n").unwrap();
        assert_eq!(
            s.credentials,
            CredentialSettings::RamRole {
                role_name: "csi".into(),
                refresh_before_seconds: 300
            }
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let err = parse_settings::<AliyunSettings>("regoin_id = \"x\"\n").unwrap_err();
        assert!(err.message().contains("regoin_id"), "{}", err.message());
        let err = parse_settings::<AliyunSettings>("[waits]\ncreate = 3\n").unwrap_err();
        assert!(err.message().contains("create"), "{}", err.message());
        let err = parse_settings::<AliyunSettings>(
            "[credentials]\nsource = \"access_key\"\naccess_key_id = \"a\"\naccess_key_secret = \"b\"\ntoken = \"c\"\n",
        )
        .unwrap_err();
        assert!(err.message().contains("token"), "{}", err.message());
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let s: AliyunSettings = parse_settings(
            "[credentials]\nsource = \"sts\"\naccess_key_id = \"STS.id\"\naccess_key_secret = \"very-secret-value\"\nsecurity_token = \"token-value-xyz\"\nexpiration = \"2030-01-01T00:00:00Z\"\n",
        )
        .unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("very-secret-value"), "{debug}");
        assert!(!debug.contains("token-value-xyz"), "{debug}");
        assert!(debug.contains("STS.id"), "{debug}");
    }
}
