//! What an omnidisk storage provider is.
//!
//! The driver core speaks CSI; a provider speaks storage: create a disk,
//! attach it to a node, snapshot it, find its device on the node. This crate
//! holds the [`Provider`] trait, the plain data that crosses it (prost
//! messages generated from `proto/provider.proto`, so the same values can be
//! sent through the C ABI of dylib providers), the [`ProviderError`] kinds,
//! and helpers for parsing StorageClass parameters and instance settings.
//!
//! It deliberately knows nothing of tonic, the CSI protobuf or any cloud SDK.

pub mod access;
pub mod error;
#[cfg(feature = "ffi")]
pub mod ffi;
pub mod observe;
pub mod params;
pub mod provider;
#[cfg(feature = "testing")]
pub mod testing;
pub mod types;

pub use error::{ErrorKind, ProviderError, Result};
pub use provider::{BoxFuture, Provider, ProviderFactory};

/// Re-exported so provider crates implement [`Provider`] with the same
/// `async_trait` version the trait was declared with.
pub use async_trait::async_trait;
