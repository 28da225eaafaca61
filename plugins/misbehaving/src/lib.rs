//! A provider dylib that misbehaves on request, for the driver's ABI tests.
//!
//! Its instance settings choose what `create_volume` does:
//! `behaviour = "ok" | "panic" | "hang" | "garbage"`; every other method
//! behaves, so a test can check that the driver keeps working afterwards.
//! `kind` sets the kind it reports (to test the kind check). Cargo features
//! build it as a dylib of another ABI major (`abi-v2`), without an entry
//! symbol (`no-entry`), claiming a newer minor version (`newer-minor`), or
//! declaring a table size that ends inside a field (`torn-table`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use omnidisk_provider_api::ffi::abi::Method;
use omnidisk_provider_api::ffi::export::Abuse;
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
    /// Wait a little, then complete the call twice with the same buffer.
    #[serde(rename = "complete-twice")]
    CompleteTwice,
    /// Answer at once, then also complete the call with the same buffer.
    #[serde(rename = "complete-after-answer")]
    CompleteAfterAnswer,
    /// Answer at once with a null buffer that claims a length.
    #[serde(rename = "null-buffer")]
    NullBuffer,
    /// Answer at once with a buffer longer than the host accepts.
    #[serde(rename = "huge-buffer")]
    HugeBuffer,
    /// Block the polling thread (`std::thread::sleep`) for `block_ms` in the
    /// first poll, then create.
    #[serde(rename = "block")]
    Block,
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
    /// How long `block` blocks its thread, in milliseconds.
    pub block_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            behaviour: Behaviour::Ok,
            kind: "misbehaving".into(),
            block_ms: 2_000,
        }
    }
}

/// Instances whose `create_volume` responses are replaced by garbage.
static GARBAGE_INSTANCES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Instances whose `create_volume` breaks the completion or buffer rules.
static ABUSING_INSTANCES: Mutex<BTreeMap<String, Abuse>> = Mutex::new(BTreeMap::new());

struct Misbehaving {
    settings: Settings,
    node_name: String,
}

/// The factory (kind `misbehaving`, though instances may claim another).
/// Its panics are on purpose: one line each instead of a backtrace, so a
/// test log shows them as what they are. The hook is this library's own
/// (a dylib carries its own copy of std); the host's panics keep theirs.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(not a string)");
            eprintln!("misbehaving provider: deliberate panic: {message}");
        }));
    });
}

pub const FACTORY: ProviderFactory = ProviderFactory {
    kind: "misbehaving",
    create: |init| {
        Box::pin(async move {
            quiet_panics();
            let settings: Settings = parse_settings(&init.settings_toml)?;
            if settings.behaviour == Behaviour::Garbage {
                GARBAGE_INSTANCES
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(init.instance.clone());
            }
            let abuse = match settings.behaviour {
                Behaviour::CompleteTwice => Abuse::CompleteTwice,
                Behaviour::CompleteAfterAnswer => Abuse::CompleteAfterAnswer,
                Behaviour::NullBuffer => Abuse::NullBuffer,
                Behaviour::HugeBuffer => Abuse::OversizedBuffer,
                _ => Abuse::None,
            };
            ABUSING_INSTANCES
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(init.instance.clone(), abuse);
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

#[cfg_attr(any(feature = "abi-v2", feature = "no-entry"), allow(dead_code))]
fn abuse(instance: &str, method: Method) -> Abuse {
    if method != Method::CreateVolume {
        return Abuse::None;
    }
    ABUSING_INSTANCES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(instance)
        .copied()
        .unwrap_or(Abuse::None)
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
            Behaviour::Block => {
                std::thread::sleep(std::time::Duration::from_millis(self.settings.block_ms));
                Ok(Volume {
                    id: req.name,
                    capacity_bytes: req.required_bytes,
                    ..Default::default()
                })
            }
            Behaviour::Slow | Behaviour::CompleteTwice => {
                tokio::time::sleep(WAIT).await;
                Ok(Volume {
                    id: req.name,
                    capacity_bytes: req.required_bytes,
                    ..Default::default()
                })
            }
            Behaviour::Ok
            | Behaviour::Garbage
            | Behaviour::CompleteAfterAnswer
            | Behaviour::NullBuffer
            | Behaviour::HugeBuffer => Ok(Volume {
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
    feature = "abi-1-0",
    feature = "torn-table"
)))]
omnidisk_provider_api::__export_provider_with!(
    FACTORY,
    omnidisk_provider_api::ffi::export::ExportOptions {
        version: omnidisk_provider_api::ffi::abi::AbiVersion::CURRENT,
        response_hook: Some(corrupt),
        declared_table_size: None,
        abuse_hook: Some(abuse),
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
        declared_table_size: None,
        abuse_hook: Some(abuse),
    }
);

#[cfg(feature = "abi-1-0")]
omnidisk_provider_api::__export_provider_with!(
    FACTORY,
    omnidisk_provider_api::ffi::export::ExportOptions {
        version: omnidisk_provider_api::ffi::abi::AbiVersion { major: 1, minor: 0 },
        response_hook: Some(corrupt),
        declared_table_size: None,
        abuse_hook: Some(abuse),
    }
);

// A 1.2 table that declares a size ending inside its `start` field, so a
// host reading whole fields only sees a 1.0 table (`start` absent).
#[cfg(feature = "torn-table")]
omnidisk_provider_api::__export_provider_with!(
    FACTORY,
    omnidisk_provider_api::ffi::export::ExportOptions {
        version: omnidisk_provider_api::ffi::abi::AbiVersion::CURRENT,
        response_hook: Some(corrupt),
        declared_table_size: Some(omnidisk_provider_api::ffi::abi::ProviderApi::V1_1_SIZE - 3),
        abuse_hook: Some(abuse),
    }
);

#[cfg(feature = "abi-v2")]
omnidisk_provider_api::__export_abi_version!(omnidisk_provider_api::ffi::abi::AbiVersion {
    major: 2,
    minor: 0
});

#[cfg(feature = "no-entry")]
omnidisk_provider_api::__export_abi_version!(omnidisk_provider_api::ffi::abi::AbiVersion::CURRENT);
