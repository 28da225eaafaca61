//! The AccessKey used to sign each request, from whichever source the
//! settings name; RAM role credentials are cached and refreshed before they
//! expire.

use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;

use crate::metadata::{MetadataClient, MetadataError};
use crate::settings::{CredentialSettings, Secret};

/// Environment variable holding the AccessKey ID.
pub const ENV_ACCESS_KEY_ID: &str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
/// Environment variable holding the AccessKey secret.
pub const ENV_ACCESS_KEY_SECRET: &str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";
/// Environment variable holding an STS security token.
pub const ENV_SECURITY_TOKEN: &str = "ALIBABA_CLOUD_SECURITY_TOKEN";

/// Why no credentials could be produced.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// An environment variable is missing.
    #[error("environment variable {0} is not set")]
    MissingEnv(&'static str),
    /// The STS token has expired.
    #[error("the STS token expired at {0}")]
    Expired(String),
    /// An expiry time does not parse.
    #[error("cannot parse the credential expiry {value:?}")]
    BadExpiration {
        /// The value.
        value: String,
        /// What the parser said.
        #[source]
        source: humantime::TimestampError,
    },
    /// The metadata service could not hand out the role's credentials.
    #[error("cannot fetch the RAM role credentials")]
    Metadata(#[source] MetadataError),
}

/// One set of credentials.
#[derive(Clone)]
pub struct Credentials {
    /// The AccessKey ID (not secret, but logged only when needed).
    pub access_key_id: String,
    /// The AccessKey secret.
    pub access_key_secret: Secret,
    /// STS security token, for temporary credentials.
    pub security_token: Option<Secret>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("sts", &self.security_token.is_some())
            .finish_non_exhaustive()
    }
}

fn parse_expiration(value: &str) -> Result<SystemTime, CredentialsError> {
    humantime::parse_rfc3339_weak(value.trim_end_matches('Z')).map_err(|source| {
        CredentialsError::BadExpiration {
            value: value.to_owned(),
            source,
        }
    })
}

struct Cached {
    credentials: Credentials,
    expires: SystemTime,
}

/// Produces the credentials for each request.
pub struct CredentialSource {
    settings: CredentialSettings,
    metadata: Option<MetadataClient>,
    cache: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialSource")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl CredentialSource {
    /// A source following `settings`; `metadata` serves the RAM role.
    pub fn new(settings: CredentialSettings, metadata: Option<MetadataClient>) -> Self {
        Self {
            settings,
            metadata,
            cache: Mutex::new(None),
        }
    }

    /// The credentials to sign the next request with.
    pub async fn current(&self) -> Result<Credentials, CredentialsError> {
        match &self.settings {
            CredentialSettings::AccessKey {
                access_key_id,
                access_key_secret,
            } => Ok(Credentials {
                access_key_id: access_key_id.clone(),
                access_key_secret: access_key_secret.clone(),
                security_token: None,
            }),
            CredentialSettings::Sts {
                access_key_id,
                access_key_secret,
                security_token,
                expiration,
            } => {
                if parse_expiration(expiration)? <= SystemTime::now() {
                    return Err(CredentialsError::Expired(expiration.clone()));
                }
                Ok(Credentials {
                    access_key_id: access_key_id.clone(),
                    access_key_secret: access_key_secret.clone(),
                    security_token: Some(security_token.clone()),
                })
            }
            CredentialSettings::Env => {
                let id = std::env::var(ENV_ACCESS_KEY_ID)
                    .map_err(|_| CredentialsError::MissingEnv(ENV_ACCESS_KEY_ID))?;
                let secret = std::env::var(ENV_ACCESS_KEY_SECRET)
                    .map_err(|_| CredentialsError::MissingEnv(ENV_ACCESS_KEY_SECRET))?;
                let token = std::env::var(ENV_SECURITY_TOKEN)
                    .ok()
                    .filter(|t| !t.is_empty());
                Ok(Credentials {
                    access_key_id: id,
                    access_key_secret: Secret::new(secret),
                    security_token: token.map(Secret::new),
                })
            }
            CredentialSettings::RamRole {
                role_name,
                refresh_before_seconds,
            } => {
                let refresh_before = Duration::from_secs(*refresh_before_seconds);
                // One refresher at a time: concurrent callers wait for it
                // instead of all hitting the metadata service.
                let mut cache = self.cache.lock().await;
                if let Some(cached) = cache.as_ref() {
                    if SystemTime::now() + refresh_before < cached.expires {
                        return Ok(cached.credentials.clone());
                    }
                }
                let fresh = self.fetch_role(role_name).await;
                match fresh {
                    Ok(c) => {
                        let credentials = c.credentials.clone();
                        *cache = Some(c);
                        Ok(credentials)
                    }
                    // A refresh that fails early keeps using what still works.
                    Err(e) => match cache.as_ref() {
                        Some(cached) if SystemTime::now() < cached.expires => {
                            tracing::warn!(error = %e, "refreshing the RAM role credentials failed; using the cached ones until they expire");
                            Ok(cached.credentials.clone())
                        }
                        _ => Err(e),
                    },
                }
            }
        }
    }

    async fn fetch_role(&self, role_name: &str) -> Result<Cached, CredentialsError> {
        let metadata = self.metadata.as_ref().ok_or_else(|| {
            CredentialsError::Metadata(MetadataError::Invalid {
                url: String::new(),
                reason: "no metadata client".into(),
            })
        })?;
        let role = if role_name.is_empty() {
            metadata
                .ram_role_name()
                .await
                .map_err(CredentialsError::Metadata)?
        } else {
            role_name.to_owned()
        };
        let creds = metadata
            .role_credentials(&role)
            .await
            .map_err(CredentialsError::Metadata)?;
        let expires = parse_expiration(&creds.expiration)?;
        Ok(Cached {
            credentials: Credentials {
                access_key_id: creds.access_key_id,
                access_key_secret: creds.access_key_secret,
                security_token: Some(creds.security_token),
            },
            expires,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn expired_sts_tokens_are_refused() {
        let source = CredentialSource::new(
            CredentialSettings::Sts {
                access_key_id: "STS.a".into(),
                access_key_secret: Secret::new("s"),
                security_token: Secret::new("t"),
                expiration: "2001-01-01T00:00:00Z".into(),
            },
            None,
        );
        let err = source.current().await.unwrap_err();
        assert!(matches!(err, CredentialsError::Expired(_)), "{err}");
        let source = CredentialSource::new(
            CredentialSettings::Sts {
                access_key_id: "STS.a".into(),
                access_key_secret: Secret::new("s"),
                security_token: Secret::new("t"),
                expiration: "2200-01-01T00:00:00Z".into(),
            },
            None,
        );
        let creds = source.current().await.unwrap();
        assert_eq!(creds.security_token.unwrap().expose(), "t");
    }

    #[test]
    fn expirations_parse_with_and_without_fraction() {
        assert!(parse_expiration("2030-01-01T00:00:00Z").is_ok());
        assert!(parse_expiration("2030-01-01T00:00:00.5Z").is_ok());
        assert!(parse_expiration("tomorrow").is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let c = Credentials {
            access_key_id: "LTAIxx".into(),
            access_key_secret: Secret::new("topsecret"),
            security_token: Some(Secret::new("tokentoken")),
        };
        let d = format!("{c:?}");
        assert!(d.contains("LTAIxx") && !d.contains("topsecret") && !d.contains("tokentoken"));
    }
}
