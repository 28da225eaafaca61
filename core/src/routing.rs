//! Routing: from a StorageClass `type` or an ID to the provider instance
//! that serves it.

use std::collections::BTreeMap;
use std::sync::Arc;

use omnidisk_provider_api::Provider;
use omnidisk_provider_api::types::ProviderInfo;

use crate::Mode;
use crate::error::{CoreError, CoreResult};
use crate::ids::ScopedId;

/// One configured provider instance.
#[derive(Clone)]
pub struct Instance {
    /// The instance name (what StorageClass `type` names).
    pub name: String,
    /// The provider serving it.
    pub provider: Arc<dyn Provider>,
    /// What the provider said it can do, read once at start.
    pub info: ProviderInfo,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("name", &self.name)
            .field("kind", &self.info.kind)
            .finish_non_exhaustive()
    }
}

/// The configured instances, by name.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    instances: BTreeMap<String, Instance>,
}

impl Registry {
    /// Adds an instance (names are unique; a second insert replaces).
    pub fn insert(&mut self, name: &str, provider: Arc<dyn Provider>) {
        let info = provider.info();
        self.instances.insert(
            name.to_owned(),
            Instance {
                name: name.to_owned(),
                provider,
                info,
            },
        );
    }

    /// All instances in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values()
    }

    /// True when no instance is configured.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The configured names, comma-separated, for error messages.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.instances.keys().map(String::as_str).collect();
        if names.is_empty() {
            "(none)".into()
        } else {
            names.join(", ")
        }
    }

    /// The instance called `name`.
    pub fn get(&self, name: &str) -> CoreResult<&Instance> {
        self.instances
            .get(name)
            .ok_or_else(|| CoreError::UnknownInstance {
                name: crate::csi::validate::shown(name),
                known: self.names(),
            })
    }

    /// The instance a StorageClass names with `type`; when only one instance
    /// is configured, `type` may be left out.
    pub fn for_type(&self, type_param: Option<&str>) -> CoreResult<&Instance> {
        let mut all = self.instances.values();
        match (type_param, all.next(), all.next()) {
            (Some(name), _, _) => self.get(name),
            (None, Some(only), None) => Ok(only),
            (None, _, _) => Err(CoreError::InvalidArgument(format!(
                "parameter `type` is required to choose a provider instance; configured instances: {}",
                self.names()
            ))),
        }
    }

    /// The instance owning an object ID, with the ID's provider-local part.
    pub fn for_id(&self, id: &ScopedId) -> CoreResult<&Instance> {
        self.instances.get(id.instance()).ok_or_else(|| {
            CoreError::NotFound(format!(
                "{id} belongs to provider instance {:?}, which is not configured here (configured: {})",
                id.instance(),
                self.names()
            ))
        })
    }

    /// Whether this process serves controller calls for `instance` in `mode`:
    /// the central controller serves shared instances, node plugins serve the
    /// node-local ones for their own node.
    pub fn serves_controller(instance: &Instance, mode: Mode) -> bool {
        match mode {
            Mode::All => true,
            Mode::Controller => !instance.info.node_local,
            Mode::Node => instance.info.node_local,
        }
    }
}
