//! The omnidisk provider for AWS Elastic Block Store.
//!
//! Kind `aws-ebs`. The controller side talks to EC2 through aws-sdk-ec2
//! behind the narrow [`client::Ec2Api`] trait; the node side finds NVMe
//! devices by serial and learns its identity from settings or IMDSv2.
//! See `README.md` for parameters, settings and the topology scheme.
//!
//! With the `moto` feature, [`moto`] runs a local moto EC2 server and
//! [`attach_sim`] plays a node's side of attachments on loop devices, for
//! tests and the development harness.

// The dylib export macro expands `#[no_mangle]` exports here; everything
// else in this crate is safe code.
#![cfg_attr(not(feature = "dylib"), forbid(unsafe_code))]

#[cfg(feature = "moto")]
pub mod attach_sim;
pub mod batcher;
pub mod client;
pub mod device;
pub mod errors;
pub mod ids;
pub mod imds;
pub mod limits;
#[cfg(feature = "moto")]
pub mod moto;
pub mod params;
pub mod provider;
pub mod retry;
pub mod settings;

use std::sync::Arc;

use omnidisk_provider_api::params::parse_settings;
use omnidisk_provider_api::{Provider, ProviderError, ProviderFactory};

pub use provider::EbsProvider;
pub use settings::Settings;

/// The kind name in the configuration.
pub const KIND: &str = "aws-ebs";

/// Creates aws-ebs instances. In `node` mode no EC2 client is built (the
/// node plugin needs no AWS credentials); otherwise it is built when a call
/// first needs it, so an idle driver carries none of the SDK's state (`omnidisk
/// doctor` and the first call report credentials that do not resolve).
pub const FACTORY: ProviderFactory = ProviderFactory {
    kind: KIND,
    create: |init| {
        Box::pin(async move {
            let settings: Settings = parse_settings(&init.settings_toml)?;
            settings.validate().map_err(|e| {
                ProviderError::invalid_argument(format!(
                    "aws-ebs instance {}: invalid settings",
                    init.instance
                ))
                .with_source(e)
            })?;
            let provider = if init.mode == "node" {
                EbsProvider::new(&init.instance, settings, None)
            } else {
                EbsProvider::connecting(&init.instance, settings)
            };
            Ok(Arc::new(provider) as Arc<dyn Provider>)
        })
    },
};

#[cfg(feature = "dylib")]
omnidisk_provider_api::export_provider!(FACTORY);

#[cfg(test)]
mod tests {
    use super::*;

    /// The example configuration must stay loadable: every key in it is a
    /// real setting.
    #[test]
    fn the_example_config_parses_as_settings() {
        let text = include_str!("../../../config/aws-ebs.toml");
        let doc: toml::Table = toml::from_str(text).unwrap();
        let mut instance = doc["providers"]["ebs-prod"].as_table().unwrap().clone();
        assert_eq!(
            instance
                .remove("kind")
                .and_then(|k| k.as_str().map(str::to_owned))
                .as_deref(),
            Some(KIND)
        );
        let settings: Settings = parse_settings(&toml::to_string(&instance).unwrap()).unwrap();
        settings.validate().unwrap();
        assert_eq!(settings.region.as_deref(), Some("us-east-1"));
        assert_eq!(
            settings.extra_tags.get("team").map(String::as_str),
            Some("storage")
        );
        let expected = Settings {
            region: settings.region.clone(),
            cluster_id: settings.cluster_id.clone(),
            extra_tags: settings.extra_tags.clone(),
            ..Settings::default()
        };
        assert_eq!(
            settings, expected,
            "the example documents the defaults for every other key"
        );
    }
}
