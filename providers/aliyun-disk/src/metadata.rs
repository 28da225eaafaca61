//! The ECS instance metadata service: who this node is, and the RAM role's
//! temporary credentials.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Deserialize;

use crate::settings::Secret;

/// Why a metadata lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The metadata service could not be reached.
    #[error("the instance metadata service at {url} could not be reached")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// What the HTTP client said.
        #[source]
        source: reqwest::Error,
    },
    /// It answered with an error status.
    #[error("the instance metadata service answered {status} for {url}")]
    Status {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// It answered with something unusable.
    #[error("the instance metadata service answered {url} with an unusable value: {reason}")]
    Invalid {
        /// The URL asked.
        url: String,
        /// Why the value is unusable.
        reason: String,
    },
}

/// Temporary credentials of the instance's RAM role.
#[derive(Clone, Deserialize)]
pub struct RoleCredentials {
    /// `Success` when the rest is usable.
    #[serde(rename = "Code", default)]
    pub code: String,
    /// Temporary AccessKey ID.
    #[serde(rename = "AccessKeyId")]
    pub access_key_id: String,
    /// Temporary AccessKey secret.
    #[serde(rename = "AccessKeySecret")]
    pub access_key_secret: Secret,
    /// STS token.
    #[serde(rename = "SecurityToken")]
    pub security_token: Secret,
    /// Expiry, RFC 3339 UTC.
    #[serde(rename = "Expiration")]
    pub expiration: String,
}

impl std::fmt::Debug for RoleCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// A client of the metadata service.
#[derive(Debug, Clone)]
pub struct MetadataClient {
    base: String,
    timeout: Duration,
    /// Built by the first request (shared by clones): an idle driver that
    /// was told its identity never builds it.
    http: Arc<OnceLock<reqwest::Client>>,
}

impl MetadataClient {
    /// A client of the service at `base_url` (e.g. `http://100.100.100.200`).
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, MetadataError> {
        Ok(Self {
            base: base_url.trim_end_matches('/').to_owned(),
            timeout,
            http: Arc::default(),
        })
    }

    fn http(&self) -> Result<&reqwest::Client, MetadataError> {
        if let Some(http) = self.http.get() {
            return Ok(http);
        }
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|source| MetadataError::Unreachable {
                url: self.base.clone(),
                source: source.without_url(),
            })?;
        Ok(self.http.get_or_init(|| http))
    }

    async fn get(&self, path: &str) -> Result<String, MetadataError> {
        let url = format!("{}/latest/meta-data/{path}", self.base);
        let response =
            self.http()?
                .get(&url)
                .send()
                .await
                .map_err(|source| MetadataError::Unreachable {
                    url: url.clone(),
                    source: source.without_url(),
                })?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(MetadataError::Status { url, status });
        }
        let text = response
            .text()
            .await
            .map_err(|source| MetadataError::Unreachable {
                url: url.clone(),
                source: source.without_url(),
            })?;
        let value = text.trim().to_owned();
        if value.is_empty() {
            return Err(MetadataError::Invalid {
                url,
                reason: "empty".into(),
            });
        }
        Ok(value)
    }

    /// Gets a value that must be a plain identifier (letters, digits, `-`,
    /// `_`, `.`), so nothing odd reaches the API or a path.
    async fn get_identifier(&self, path: &str) -> Result<String, MetadataError> {
        let value = self.get(path).await?;
        if value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && value.len() <= 128
        {
            Ok(value)
        } else {
            Err(MetadataError::Invalid {
                url: format!("{}/latest/meta-data/{path}", self.base),
                reason: format!("{value:?} is not an identifier"),
            })
        }
    }

    /// The ECS instance ID (`i-...`).
    pub async fn instance_id(&self) -> Result<String, MetadataError> {
        self.get_identifier("instance-id").await
    }

    /// The region ID.
    pub async fn region_id(&self) -> Result<String, MetadataError> {
        self.get_identifier("region-id").await
    }

    /// The zone ID.
    pub async fn zone_id(&self) -> Result<String, MetadataError> {
        self.get_identifier("zone-id").await
    }

    /// The instance type, e.g. `ecs.g7.large`.
    pub async fn instance_type(&self) -> Result<String, MetadataError> {
        self.get_identifier("instance/instance-type").await
    }

    /// The name of the RAM role attached to the instance.
    pub async fn ram_role_name(&self) -> Result<String, MetadataError> {
        let listing = self.get("ram/security-credentials/").await?;
        let name = listing.lines().next().unwrap_or_default().trim().to_owned();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(MetadataError::Invalid {
                url: format!("{}/latest/meta-data/ram/security-credentials/", self.base),
                reason: "no usable role name".into(),
            });
        }
        Ok(name)
    }

    /// The current temporary credentials of `role`.
    pub async fn role_credentials(&self, role: &str) -> Result<RoleCredentials, MetadataError> {
        let path = format!("ram/security-credentials/{role}");
        let body = self.get(&path).await?;
        let url = format!("{}/latest/meta-data/{path}", self.base);
        let creds: RoleCredentials =
            serde_json::from_str(&body).map_err(|e| MetadataError::Invalid {
                url: url.clone(),
                // serde_json's message can quote a field's value, and
                // these values are secrets: report where, not what.
                reason: format!(
                    "not the credentials document ({:?} error at line {} column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            })?;
        if creds.code != "Success" {
            return Err(MetadataError::Invalid {
                url,
                reason: format!("Code is {:?}", creds.code),
            });
        }
        Ok(creds)
    }
}

/// Data disks an instance accepts when nothing says otherwise: 16 is what
/// ECS documents for its common families; the per-family table in the
/// settings (`node.max_volumes_by_family`) overrides it for others.
pub const DEFAULT_MAX_DATA_DISKS: i64 = 16;

/// The data-disk limit for `instance_type` (`ecs.<family>.<size>`), looked
/// up by family in `by_family`, else [`DEFAULT_MAX_DATA_DISKS`].
pub fn default_max_volumes(
    instance_type: &str,
    by_family: &std::collections::BTreeMap<String, i64>,
) -> i64 {
    let family = instance_type.split('.').nth(1).unwrap_or_default();
    by_family
        .get(family)
        .copied()
        .unwrap_or(DEFAULT_MAX_DATA_DISKS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_family_defaults() {
        let table: std::collections::BTreeMap<String, i64> =
            [("t6-c1m1".to_owned(), 8), ("g8i".to_owned(), 64)].into();
        assert_eq!(default_max_volumes("ecs.g7.large", &table), 16);
        assert_eq!(default_max_volumes("ecs.t6-c1m1.large", &table), 8);
        assert_eq!(default_max_volumes("ecs.g8i.xlarge", &table), 64);
        assert_eq!(default_max_volumes("", &table), 16);
    }

    #[test]
    fn role_credentials_debug_hides_secrets() {
        let creds: RoleCredentials = serde_json::from_str(
            r#"{"Code":"Success","AccessKeyId":"STS.abc","AccessKeySecret":"sek","SecurityToken":"tok","Expiration":"2030-01-01T00:00:00Z","LastUpdated":"x"}"#,
        )
        .unwrap();
        let debug = format!("{creds:?}");
        assert!(debug.contains("STS.abc"));
        assert!(
            !debug.contains("sek") && !debug.contains("tok\""),
            "{debug}"
        );
    }
}
