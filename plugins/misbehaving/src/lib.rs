//! A provider dylib that misbehaves on request, for the driver's ABI tests.
//!
//! Its instance settings choose what `create_volume` does:
//! `behaviour = "ok" | "panic" | "hang" | "garbage"`; every other method
//! behaves, so a test can check that the driver keeps working afterwards.
//! `kind` sets the kind it reports (to test the kind check). Cargo features
//! build it as a dylib of another ABI major (`abi-v2`), without an entry
//! symbol (`no-entry`) or claiming a newer minor version (`newer-minor`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use omnidisk_provider_api::ffi::abi::Method;
use omnidisk_provider_api::params::parse_settings;
use omnidisk_provider_api::types::*;
use omnidisk_provider_api::{Provider, ProviderError, ProviderFactory, Result, async_trait};
use serde::Deserialize;

/// What `create_volume` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Behaviour {
    /// Create a (pretend) volume.
    #[default]
    Ok,
    /// Panic inside the provider.
    Panic,
    /// Never return.
    Hang,
    /// Return bytes that are not a `Volume`.
    Garbage,
    /// Wait a little (on the dylib's timer), then create.
    Slow,
    /// Wait a little, then panic: the panic happens on the dylib's own
    /// threads, after the call was handed back as pending.
    #[serde(rename = "panic-later")]
    PanicLater,
}

/// How long `slow` and `panic-later` wait.
const WAIT: std::time::Duration = std::time::Duration::from_millis(30);

/// Instance settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// What `create_volume` does.
    pub behaviour: Behaviour,
    /// The kind reported by `info`.
    pub kind: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            behaviour: Behaviour::Ok,
            kind: "misbehaving".into(),
        }
    }
}

/// Instances whose `create_volume` responses are replaced by garbage.
static GARBAGE_INSTANCES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

struct Misbehaving {
    settings: Settings,
    node_name: String,
}

/// The factory (kind `misbehaving`, though instances may claim another).
pub const FACTORY: ProviderFactory = ProviderFactory {
    kind: "misbehaving",
    create: |init| {
        Box::pin(async move {
            let settings: Settings = parse_settings(&init.settings_toml)?;
            if settings.behaviour == Behaviour::Garbage {
                GARBAGE_INSTANCES
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(init.instance.clone());
            }
            Ok(Arc::new(Misbehaving {
                settings,
                node_name: init.node_name,
            }) as Arc<dyn Provider>)
        })
    },
};

#[cfg_attr(any(feature = "abi-v2", feature = "no-entry"), allow(dead_code))]
fn corrupt(instance: &str, method: Method, response: Vec<u8>) -> Vec<u8> {
    let garbage = GARBAGE_INSTANCES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(instance);
    if garbage && method == Method::CreateVolume {
        // Field 1 with wire type 7, which protobuf does not have.
        vec![0x0f, 0xff, 0xff, 0xff]
    } else {
        response
    }
}

#[async_trait]
impl Provider for Misbehaving {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            kind: self.settings.kind.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }
    }

    async fn create_volume(&self, req: CreateVolumeRequest) -> Result<Volume> {
        match self.settings.behaviour {
            Behaviour::Panic => panic!("misbehaving provider panics on purpose in create_volume"),
            Behaviour::Hang => std::future::pending().await,
            Behaviour::PanicLater => {
                tokio::time::sleep(WAIT).await;
                panic!("misbehaving provider panics on purpose after waiting")
            }
            Behaviour::Slow => {
                tokio::time::sleep(WAIT).await;
                Ok(Volume {
                    id: req.name,
                    capacity_bytes: req.required_bytes,
                    ..Default::default()
                })
            }
            Behaviour::Ok | Behaviour::Garbage => Ok(Volume {
                id: req.name,
                capacity_bytes: req.required_bytes,
                ..Default::default()
            }),
        }
    }

    async fn delete_volume(&self, _req: VolumeRef) -> Result<()> {
        Ok(())
    }

    async fn get_volume(&self, req: VolumeRef) -> Result<VolumeStatus> {
        Err(ProviderError::not_found(format!(
            "volume {} not found",
            req.volume_id
        )))
    }

    async fn node_info(&self) -> Result<NodeInfo> {
        Ok(NodeInfo {
            node_id: self.node_name.clone(),
            ..Default::default()
        })
    }

    async fn find_device(&self, req: FindDeviceRequest) -> Result<FindDeviceResponse> {
        Err(ProviderError::not_found(format!(
            "no device for {}",
            req.volume_id
        )))
    }
}

#[cfg(not(any(
    feature = "abi-v2",
    feature = "no-entry",
    feature = "newer-minor",
    feature = "abi-1-0"
)))]
omnidisk_provider_api::__export_provider_with!(
    FACTORY,
    omnidisk_provider_api::ffi::export::ExportOptions {
        version: omnidisk_provider_api::ffi::abi::AbiVersion::CURRENT,
        response_hook: Some(corrupt),
    }
);

#[cfg(feature = "newer-minor")]
omnidisk_provider_api::__export_provider_with!(
    FACTORY,
    omnidisk_provider_api::ffi::export::ExportOptions {
        version: omnidisk_provider_api::ffi::abi::AbiVersion {
            major: omnidisk_provider_api::ffi::abi::ABI_MAJOR,
            minor: omnidisk_provider_api::ffi::abi::ABI_MINOR + 7,
        },
        response_hook: Some(corrupt),
    }
);

#[cfg(feature = "abi-1-0")]
omnidisk_provider_api::__export_provider_with!(
    FACTORY,
    omnidisk_provider_api::ffi::export::ExportOptions {
        version: omnidisk_provider_api::ffi::abi::AbiVersion { major: 1, minor: 0 },
        response_hook: Some(corrupt),
    }
);

#[cfg(feature = "abi-v2")]
omnidisk_provider_api::__export_abi_version!(omnidisk_provider_api::ffi::abi::AbiVersion {
    major: 2,
    minor: 0
});

#[cfg(feature = "no-entry")]
omnidisk_provider_api::__export_abi_version!(omnidisk_provider_api::ffi::abi::AbiVersion::CURRENT);
