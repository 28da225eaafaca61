//! The `aliyun-disk` provider: Alibaba Cloud ECS cloud disks for omnidisk.
//!
//! It speaks the ECS OpenAPI (version 2014-05-26) over reqwest, signing with
//! the V3 (ACS3-HMAC-SHA256) or RPC (HMAC-SHA1) algorithm. Volumes are ECS
//! data disks, node IDs are ECS instance IDs, and the topology key is
//! `topology.kubernetes.io/zone`. See `README.md` for the parameters.
//!
//! Modules: [`settings`] (instance TOML), [`credentials`], [`sign`],
//! [`client`] (the narrow [`client::EcsApi`] trait and its HTTP client),
//! [`errors`] (ECS codes to error kinds), [`params`] (StorageClass keys),
//! [`device`] (finding the disk on the node by serial), [`metadata`], and
//! with the `fake-ecs` feature, [`fake_ecs`]: a signature-checking fake ECS
//! endpoint for tests.

#![forbid(unsafe_code)]

pub mod batch;
pub mod client;
pub mod credentials;
pub mod device;
pub mod errors;
#[cfg(feature = "fake-ecs")]
pub mod fake_ecs;
pub mod metadata;
pub mod params;
pub mod provider;
pub mod settings;
pub mod sign;

use std::sync::Arc;

use omnidisk_provider_api::params::parse_settings;
use omnidisk_provider_api::types::InitRequest;
use omnidisk_provider_api::{ErrorKind, Provider, ProviderError, ProviderFactory, Result};

pub use provider::{AliyunDiskProvider, DISK_ZONE_KEY, ZONE_KEY};
pub use settings::AliyunSettings;

/// The provider kind name used in configurations.
pub const KIND: &str = "aliyun-disk";

/// The factory for kind `aliyun-disk`.
pub const FACTORY: ProviderFactory = ProviderFactory {
    kind: KIND,
    create: |init| Box::pin(create(init)),
};

/// Builds an instance from its `InitRequest`.
pub async fn create(init: InitRequest) -> Result<Arc<dyn Provider>> {
    let mut settings: AliyunSettings = parse_settings(&init.settings_toml)?;
    let metadata =
        metadata::MetadataClient::new(&settings.metadata_base_url, settings.api_timeout())
            .map_err(|e| {
                ProviderError::internal("cannot build the metadata client").with_source(e)
            })?;
    let region = if !settings.region_id.is_empty() {
        settings.region_id.clone()
    } else {
        match metadata.region_id().await {
            Ok(r) => r,
            // A node plugin told who it is needs no region.
            Err(_)
                if init.mode == "node"
                    && !settings.node.instance_id.is_empty()
                    && !settings.node.zone_id.is_empty() =>
            {
                String::new()
            }
            Err(e) => {
                return Err(ProviderError::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "instance {}: region_id is not set and the metadata service cannot tell it",
                        init.instance
                    ),
                )
                .with_source(e));
            }
        }
    };
    let credentials = Arc::new(credentials::CredentialSource::new(
        settings.credentials.clone(),
        Some(metadata.clone()),
    ));
    let client = client::HttpEcsClient::new(
        client::ClientConfig {
            instance: init.instance.clone(),
            endpoint: settings.endpoint_for(if region.is_empty() {
                "cn-hangzhou"
            } else {
                &region
            }),
            region: region.clone(),
            signature: settings.signature_version,
            timeout: settings.api_timeout(),
            max_retries: settings.max_retries,
        },
        credentials,
    )
    .map_err(|e| {
        ProviderError::invalid_argument(format!(
            "instance {}: cannot build the ECS client",
            init.instance
        ))
        .with_source(e)
    })?;
    // The provider chooses zones of this region only.
    settings.region_id = region;
    Ok(Arc::new(AliyunDiskProvider::new(
        &init.instance,
        settings,
        Arc::new(client),
        Some(metadata),
    )))
}

#[cfg(feature = "dylib")]
omnidisk_provider_api::export_provider!(FACTORY);
