//! The compiled-in provider kinds and the construction of the configured
//! instances.

use std::sync::Arc;

use omnidisk_provider_api::types::InitRequest;
use omnidisk_provider_api::{Provider, ProviderFactory};

use crate::Mode;
use crate::config::{Config, ConfigError, InstanceConfig};
use crate::routing::Registry;

/// The provider kinds compiled into this binary (cargo features).
// One push per feature: with every provider feature off the list is empty.
#[allow(clippy::vec_init_then_push)]
pub fn builtin() -> Vec<ProviderFactory> {
    #[allow(unused_mut)]
    let mut kinds: Vec<ProviderFactory> = Vec::new();
    #[cfg(feature = "local-lvm")]
    kinds.push(omnidisk_provider_local_lvm::FACTORY);
    #[cfg(feature = "aliyun-disk")]
    kinds.push(omnidisk_provider_aliyun_disk::FACTORY);
    #[cfg(feature = "aws-ebs")]
    kinds.push(omnidisk_provider_aws_ebs::FACTORY);
    #[cfg(feature = "fake")]
    kinds.push(omnidisk_provider_api::testing::FACTORY);
    kinds
}

/// Names of the compiled-in kinds, for messages.
pub fn builtin_names() -> String {
    let names: Vec<&str> = builtin().iter().map(|f| f.kind).collect();
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

fn init_request(instance: &str, settings_toml: &str, node_name: &str, mode: Mode) -> InitRequest {
    InitRequest {
        instance: instance.to_owned(),
        settings_toml: settings_toml.to_owned(),
        node_name: node_name.to_owned(),
        mode: mode.as_str().to_owned(),
    }
}

/// The instances the driver would run: the configured ones, or with none
/// configured, each compiled-in kind under its own name with defaults.
pub fn planned_instances(config: &Config) -> Vec<InstanceConfig> {
    if !config.instances.is_empty() {
        return config.instances.clone();
    }
    builtin()
        .into_iter()
        .map(|f| InstanceConfig {
            name: f.kind.to_owned(),
            kind: Some(f.kind.to_owned()),
            library: None,
            settings_toml: String::new(),
        })
        .collect()
}

/// Creates one instance (a built-in kind or a dylib) and checks the kind it
/// reports.
pub async fn build_instance(
    config: &Config,
    instance: &InstanceConfig,
    node_name: &str,
    mode: Mode,
) -> Result<Arc<dyn Provider>, ConfigError> {
    let init = init_request(&instance.name, &instance.settings_toml, node_name, mode);
    let provider: Arc<dyn Provider> = if let Some(library) = &instance.library {
        crate::plugin::load(
            library,
            &config.driver.plugin_dir,
            instance.kind.as_deref(),
            init,
            std::time::Duration::from_secs(config.driver.provider_call_timeout_seconds),
        )
        .await
        .map_err(|e| {
            config.key_error(&["providers", &instance.name, "library"], &error_chain(&e))
        })?
    } else {
        let kind = instance.kind.as_deref().unwrap_or_default();
        let factory = builtin()
            .into_iter()
            .find(|f| f.kind == kind)
            .ok_or_else(|| {
                config.key_error(
                    &["providers", &instance.name, "kind"],
                    &format!(
                        "unknown provider kind {kind:?}; this build has: {}",
                        builtin_names()
                    ),
                )
            })?;
        (factory.create)(init)
            .await
            .map_err(|e| config.instance_error(&instance.name, &e.full_message()))?
    };
    let info = provider.info();
    if let Some(kind) = &instance.kind {
        if &info.kind != kind {
            return Err(config.key_error(
                &["providers", &instance.name, "kind"],
                &format!(
                    "the provider reports kind {:?}, configured {kind:?}",
                    info.kind
                ),
            ));
        }
    }
    Ok(provider)
}

/// Creates every configured instance. With no instances configured, each
/// compiled-in kind is created under its own name with default settings;
/// in that case a kind that cannot start (no volume group, no credentials)
/// is left out with a warning rather than stopping the driver.
pub async fn build_registry(
    config: &Config,
    node_name: &str,
    mode: Mode,
) -> Result<Registry, ConfigError> {
    let mut registry = Registry::default();
    let defaults = config.instances.is_empty();
    for instance in planned_instances(config) {
        match build_instance(config, &instance, node_name, mode).await {
            Ok(provider) => {
                let info = provider.info();
                tracing::info!(instance = %instance.name, kind = %info.kind, version = %info.version, "provider instance ready");
                registry.insert(&instance.name, provider);
            }
            Err(err) if defaults => tracing::warn!(
                kind = %instance.name,
                error = %err,
                "built-in provider with default settings is not available"
            ),
            Err(err) => return Err(err),
        }
    }
    Ok(registry)
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}
