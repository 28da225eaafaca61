//! The stable C ABI of dylib providers (feature `ffi`).
//!
//! A provider crate becomes a dylib provider with one line,
//! `omnidisk_provider_api::export_provider!(FACTORY);`, plus
//! `crate-type = ["rlib", "cdylib"]`. The driver core loads it, checks its
//! version and adapts it back into an `Arc<dyn Provider>`, so nothing past
//! the loader can tell it from a compiled-in provider.
//!
//! - [`abi`]: the contract, shared by both sides: symbol names, versions,
//!   `#[repr(C)]` tables, buffers, status and method numbers.
//! - [`export`]: the dylib side behind `export_provider!`.
//!
//! All `unsafe` of the export side is in this module; provider crates need
//! none. `docs/provider-abi.md` is the guide for provider authors.

#![allow(unsafe_code)]

pub mod abi;
pub mod export;
mod log;

use prost::Message;

use crate::error::{ErrorKind, ProviderError};
use crate::types::AbiError;

/// Reads an `AbiError` a dylib sent as a [`ProviderError`]; bytes that do not
/// decode become an internal error saying so.
pub fn decode_abi_error(bytes: &[u8]) -> ProviderError {
    match AbiError::decode(bytes) {
        Ok(e) => ProviderError::new(ErrorKind::from_u32(e.kind), e.message),
        Err(e) => ProviderError::internal(format!("malformed error from the provider: {e}")),
    }
}

/// Exports a [`ProviderFactory`](crate::ProviderFactory) through the stable C
/// ABI, making the crate's cdylib loadable by the driver.
///
/// Use it once per cdylib, at the crate root, usually behind a feature so
/// the rlib linked into the driver does not carry the exports:
///
/// ```ignore
/// #[cfg(feature = "dylib")]
/// omnidisk_provider_api::export_provider!(FACTORY);
/// ```
///
/// It defines the unmangled symbols `omnidisk_provider_abi_version` and
/// `omnidisk_provider_v1_entry`; every function reachable through them
/// catches panics.
#[macro_export]
macro_rules! export_provider {
    ($factory:expr $(,)?) => {
        $crate::__export_provider_with!($factory, $crate::ffi::export::ExportOptions::CURRENT);
    };
}

/// `export_provider!` with explicit [`ExportOptions`](export::ExportOptions);
/// for the ABI's own tests.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_provider_with {
    ($factory:expr, $options:expr) => {
        $crate::__export_abi_version!(($options).version);
        const _: () = {
            #[unsafe(no_mangle)]
            extern "C" fn omnidisk_provider_v1_entry() -> *const $crate::ffi::abi::ProviderApi {
                $crate::ffi::export::entry($factory, $options)
            }
        };
    };
}

/// Exports only the version symbol; for the ABI's own tests (a dylib of
/// another major, a dylib without an entry).
#[doc(hidden)]
#[macro_export]
macro_rules! __export_abi_version {
    ($version:expr) => {
        const _: () = {
            #[unsafe(no_mangle)]
            extern "C" fn omnidisk_provider_abi_version() -> $crate::ffi::abi::AbiVersion {
                $version
            }
        };
    };
}
